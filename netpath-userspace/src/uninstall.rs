//! `netpathd uninstall`: removes everything an instance created, with its
//! agent stopped, and puts back what it changed, so that the host is as it
//! was before netpath: the containers' veth pairs and the bridges (with the
//! addresses, routes and neighbour proxies on them), the pinned programs,
//! links and maps (which detaches every program, on interfaces and on the
//! cgroup), the ports reserved from the host's ephemeral range, the
//! sysctls it set, its state, socket and lock files.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    agent::{bridge_name, MAX_BRIDGES},
    config::{self, ResolvedConfig, RUN_ROOT},
    docker,
    host_ports::HostPorts,
    host_record::{HostChanges, HOST_RECORD_FILE},
    netlink::{link_controller, link_kind, Netlink},
    state::StateStore,
};

/// Files the agent keeps in its state directory.
const STATE_FILES: &[&str] =
    &["state.json", "state.json.tmp", "journal.jsonl", HOST_RECORD_FILE, "host.json.tmp", "docker-endpoints.json"];

/// bpffs's `f_type`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What was removed or restored, one line each, for the operator.
pub type Report = Vec<String>;

/// Removes the instance of `cfg` from the calling thread's network
/// namespace and the machine. Refuses while an agent runs the instance
/// (its locks are held) and changes nothing then.
pub async fn uninstall(cfg: &ResolvedConfig) -> Result<Report> {
    let mut report = Report::new();
    let locks = crate::lock::lock_instance(cfg).context("uninstall needs the instance's agent stopped")?;
    let state = if cfg.state_dir.exists() {
        // A state file that cannot be read does not stop the removal: the
        // interfaces are found by bridge as well.
        match StateStore::new(&cfg.state_dir).and_then(|mut s| s.load()) {
            Ok(state) => Some(state),
            Err(e) => {
                report.push(format!("state unreadable ({e:#}): containers are found by bridge"));
                None
            }
        }
    } else {
        None
    };

    let nl = Netlink::connect()?;
    let links = nl.links().await?;
    let name_of = |l: &netlink_packet_route::link::LinkMessage| crate::netlink::link_name(l).unwrap_or_default();
    let bridges: Vec<_> = (0..MAX_BRIDGES)
        .map(|n| bridge_name(&cfg.bridge, n))
        .filter_map(|name| links.iter().find(|l| name_of(l) == name && link_kind(l).as_deref() == Some("bridge")))
        .collect();
    let bridge_indexes: HashSet<u32> = bridges.iter().map(|b| b.header.index).collect();
    // The containers' host ends: by the state's names, and whatever else
    // is a port of the instance's bridges. Deleting one end of a veth pair
    // deletes the other, in the container.
    let mut veths: Vec<String> = state
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| std::iter::once(c.veth.clone()).chain(c.handoff_ifname.clone()))
        .collect();
    veths
        .extend(links.iter().filter(|l| link_controller(l).is_some_and(|c| bridge_indexes.contains(&c))).map(&name_of));
    veths.sort();
    veths.dedup();
    for name in veths {
        if let Some(link) = links.iter().find(|l| name_of(l) == name && link_kind(l).as_deref() == Some("veth")) {
            nl.delete_link(link.header.index).await?;
            report.push(format!("deleted veth {name} (and its peer in the container)"));
        }
    }
    for bridge in &bridges {
        nl.delete_link(bridge.header.index).await?;
        report.push(format!("deleted bridge {}", name_of(bridge)));
    }

    remove_pins(&cfg.pin_dir, &mut report)?;

    if let Some(state) = &state {
        let published: Vec<u16> = state.mappings.iter().map(|m| m.host_port).collect();
        let mut ports = HostPorts::load(published.iter().copied())?;
        if ports.reserved_by_netpath() > 0 {
            let n = ports.reserved_by_netpath();
            ports.reserve([], published)?;
            report.push(format!("released {n} ports reserved in net.ipv4.ip_local_reserved_ports"));
        }
    }
    if cfg.state_dir.exists() {
        let mut host = HostChanges::load(&cfg.state_dir)?;
        for (sysctl, value) in host.restore()? {
            report.push(format!("restored sysctl {sysctl} = {value}"));
        }
    }

    remove_file(&cfg.socket, &mut report)?;
    if cfg.socket == config::default_socket(&cfg.instance) {
        remove_empty_dir(cfg.socket.parent(), &mut report);
    }
    if let Some(name) = &cfg.docker_plugin {
        remove_file(&docker::socket_path(name), &mut report)?;
    }
    for file in STATE_FILES {
        remove_file(&cfg.state_dir.join(file), &mut report)?;
    }
    // Last: the locks, then the directories they leave empty.
    drop(locks);
    remove_empty_dir(Some(&cfg.state_dir), &mut report);
    if cfg.state_dir.exists() {
        report.push(format!("kept {}: it holds files netpath did not write", cfg.state_dir.display()));
    }
    remove_empty_dir(Some(Path::new(RUN_ROOT)), &mut report);
    Ok(report)
}

/// Removes the instance's pin directory: programs, maps and the pinned
/// links, whose removal detaches the programs (the pins hold the last
/// reference). Only on bpffs: a pin directory elsewhere is not netpath's.
fn remove_pins(pin_dir: &Path, report: &mut Report) -> Result<()> {
    let Ok(fs) = nix::sys::statfs::statfs(pin_dir) else { return Ok(()) };
    if fs.filesystem_type().0 != BPF_FS_MAGIC {
        bail!("pin directory {} is not on bpffs: not removing it", pin_dir.display());
    }
    let links = std::fs::read_dir(pin_dir.join("links")).map(|d| d.count()).unwrap_or(0);
    std::fs::remove_dir_all(pin_dir).with_context(|| format!("removing pins {}", pin_dir.display()))?;
    report.push(format!("removed pins {} ({links} attachments detached)", pin_dir.display()));
    remove_empty_dir(pin_dir.parent().filter(|p| *p == Path::new(config::BPFFS_ROOT)), report);
    Ok(())
}

fn remove_file(path: &Path, report: &mut Report) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            report.push(format!("removed {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes `dir` if it is empty (anything in it is someone else's).
fn remove_empty_dir(dir: Option<&Path>, report: &mut Report) {
    if let Some(dir) = dir {
        if std::fs::remove_dir(dir).is_ok() {
            report.push(format!("removed {}", PathBuf::from(dir).display()));
        }
    }
}
