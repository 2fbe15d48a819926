//! The plain Linux topology shared by the baselines: a bridge and a veth
//! pair per container set up with `ip` inside the namespaces, IPv4
//! forwarding on, no netpath and no BPF. `no-nat` adds a route in the world
//! and nothing else.
//!
//! br_netfilter, once loaded on a machine (Docker loads it), makes every
//! bridged packet walk the iptables hooks in every namespace whose
//! `bridge-nf-call-*` sysctls are on, and a new namespace starts with them
//! on. So whether the baselines paid for it would depend on what ran on the
//! machine before: every bed sets them explicitly ([`bridge_netfilter`]),
//! off except for Docker's layout, which turns them on itself.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, HOST_UPLINK_IP6};

use super::bed::{AddOne, Bed, CONTAINER_PORT};

/// The plain beds' IPv6 container subnet (see [`PlainNet::add_ipv6`]).
pub const SUBNET6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfd00, 0xb6, 0, 0, 0, 0, 0, 0), 64);
pub const CONTAINER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xb6, 0, 0, 0, 0, 0, 2);

/// The bridge, named as netpath names its own so that the shapes match.
pub const BRIDGE: &str = "np0";
pub struct PlainNet {
    pub topo: Topology,
    pub subnet: Ipv4Net,
    /// Container `c1`'s address.
    pub container_ip: Ipv4Addr,
    /// Every container's address, `c1` first.
    pub container_ips: Vec<Ipv4Addr>,
}

impl PlainNet {
    /// Host, world and one container namespace (the Topology harness),
    /// then bridge, veth pair, addresses and routes.
    pub fn new() -> Result<PlainNet> {
        Self::with_containers(1)
    }

    /// The same with `containers` containers on the bridge.
    pub fn with_containers(containers: usize) -> Result<PlainNet> {
        let topo = Topology::new(containers)?;
        let subnet: Ipv4Net = topo.subnet.parse().with_context(|| format!("subnet {}", topo.subnet))?;
        let mut hosts = subnet.hosts();
        let Some(gateway) = hosts.next() else {
            bail!("subnet {subnet} has no room for a gateway");
        };
        let container_ips: Vec<Ipv4Addr> = hosts.take(containers).collect();
        if container_ips.len() < containers.max(1) {
            bail!("subnet {subnet} has no room for {containers} containers");
        }
        let host = topo.host.clone();
        let gw = format!("{gateway}/{}", subnet.prefix_len());
        let host_steps: [&[&str]; 4] = [
            &["ip", "link", "add", BRIDGE, "type", "bridge"],
            &["ip", "addr", "add", &gw, "dev", BRIDGE],
            &["ip", "link", "set", BRIDGE, "up"],
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ];
        for step in host_steps {
            topo.exec(&host, step)?;
        }
        bridge_netfilter(&topo, false)?;
        let gateway = gateway.to_string();
        for (i, ip) in (1..).zip(&container_ips) {
            let (ctr, veth) = (topo.container_ns(i), format!("veth-c{i}"));
            let ctr_addr = format!("{ip}/{}", subnet.prefix_len());
            let host_steps: [&[&str]; 3] = [
                &["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ctr],
                &["ip", "link", "set", &veth, "master", BRIDGE],
                &["ip", "link", "set", &veth, "up"],
            ];
            for step in host_steps {
                topo.exec(&host, step)?;
            }
            let ctr_steps: [&[&str]; 4] = [
                &["ip", "addr", "add", &ctr_addr, "dev", "eth0"],
                &["ip", "link", "set", "eth0", "up"],
                &["ip", "link", "set", "lo", "up"],
                &["ip", "route", "add", "default", "via", &gateway],
            ];
            for step in ctr_steps {
                topo.exec(&ctr, step)?;
            }
        }
        Ok(PlainNet { topo, subnet, container_ip: container_ips[0], container_ips })
    }

    /// Docker's layout is loaded: bridged packets walk its chains, as
    /// Docker's bridge driver has them do.
    pub fn docker_bridge_netfilter(&self) -> Result<()> {
        bridge_netfilter(&self.topo, true).map(|_| ())
    }

    /// IPv6 beside IPv4 ([`SUBNET6`]: the bridge its `::1`, the container
    /// [`CONTAINER_IP6`] and a default route), IPv6 forwarding on, and the
    /// uplink pair's IPv6 addresses.
    pub fn add_ipv6(&self) -> Result<()> {
        let (host, ctr) = (&self.topo.host, self.topo.container_ns(1));
        let gateway6 = Ipv6Addr::from(u128::from(SUBNET6.network()) + 1);
        let gw = format!("{gateway6}/{}", SUBNET6.prefix_len());
        let ctr_addr = format!("{CONTAINER_IP6}/{}", SUBNET6.prefix_len());
        let gateway6 = gateway6.to_string();
        let host_steps: [&[&str]; 2] = [
            &["ip", "-6", "addr", "add", &gw, "dev", BRIDGE, "nodad"],
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        ];
        for step in host_steps {
            self.topo.exec(host, step)?;
        }
        let ctr_steps: [&[&str]; 2] = [
            &["ip", "-6", "addr", "add", &ctr_addr, "dev", "eth0", "nodad"],
            &["ip", "-6", "route", "add", "default", "via", &gateway6],
        ];
        for step in ctr_steps {
            self.topo.exec(&ctr, step)?;
        }
        self.topo.add_ipv6_uplink()
    }

    /// Plain IPv6 routing: the world reaches [`SUBNET6`] via the host.
    pub fn route6_from_world(&self) -> Result<()> {
        let via = HOST_UPLINK_IP6.to_string();
        self.topo.exec(&self.topo.world, &["ip", "-6", "route", "add", &SUBNET6.to_string(), "via", &via])?;
        Ok(())
    }

    /// Loads an `ip6tables-restore` file into the host namespace.
    pub fn ip6tables_restore(&self, name: &str, rules: &str) -> Result<Duration> {
        let file = ScratchFile::write(&self.topo, name, rules)?;
        timed_in_ns(&self.topo, &self.topo.host, "ip6tables-restore", &[], Some(&file.0))
    }

    /// Plain routing: the world reaches the container subnet via the host.
    pub fn route_from_world(&self) -> Result<()> {
        let (world, subnet) = (&self.topo.world, self.subnet.to_string());
        self.topo.exec(world, &["ip", "route", "add", &subnet, "via", &HOST_UPLINK_IP.to_string()])?;
        Ok(())
    }

    /// Loads an `iptables-restore` file into the host namespace; returns
    /// how long it took.
    pub fn iptables_restore(&self, name: &str, rules: &str) -> Result<Duration> {
        let file = ScratchFile::write(&self.topo, name, rules)?;
        timed_in_ns(&self.topo, &self.topo.host, "iptables-restore", &[], Some(&file.0))
    }

    /// Loads an `nft -f` file into the host namespace; returns how long it
    /// took.
    pub fn nft_file(&self, name: &str, ruleset: &str) -> Result<Duration> {
        let file = ScratchFile::write(&self.topo, name, ruleset)?;
        let path = file.0.display().to_string();
        timed_in_ns(&self.topo, &self.topo.host, "nft", &["-f", &path], None)
    }
}

/// br_netfilter's `bridge-nf-call-iptables` and `-ip6tables` in the host
/// namespace of `topo`, on or off (see the module's comment). Returns
/// whether br_netfilter is loaded at all: without it bridged packets never
/// meet netfilter and there is nothing to set.
pub fn bridge_netfilter(topo: &Topology, on: bool) -> Result<bool> {
    if !br_netfilter_loaded() {
        return Ok(false);
    }
    let v = u8::from(on);
    let (v4, v6) =
        (format!("net.bridge.bridge-nf-call-iptables={v}"), format!("net.bridge.bridge-nf-call-ip6tables={v}"));
    topo.exec(&topo.host, &["sysctl", "-qw", &v4, &v6])?;
    Ok(true)
}

/// br_netfilter's sysctls exist once the module is loaded (machine-wide).
pub fn br_netfilter_loaded() -> bool {
    Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

/// Plain routing, the ceiling: the world routes the container subnet via
/// the host and connects straight to the container.
pub struct NoNatBed {
    net: PlainNet,
}

impl NoNatBed {
    pub fn new() -> Result<NoNatBed> {
        let net = PlainNet::new()?;
        net.route_from_world()?;
        Ok(NoNatBed { net })
    }
}

impl Bed for NoNatBed {
    fn topology(&self) -> &Topology {
        &self.net.topo
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.net.container_ip, CONTAINER_PORT)
    }

    fn publish(&mut self, _ports: usize) -> Result<Duration> {
        Ok(Duration::ZERO)
    }

    fn add_one(&mut self, _port: u16) -> Result<Option<AddOne>> {
        Ok(None)
    }
}

/// Runs `program args` inside namespace `ns`, spawned from a thread that
/// entered it (so the wall time is the program's own, without `ip netns
/// exec`), with `stdin` from a file if given. Fails on a non-zero exit.
pub fn timed_in_ns(topo: &Topology, ns: &str, program: &str, args: &[&str], stdin: Option<&Path>) -> Result<Duration> {
    topo.in_ns(ns, || {
        let input = match stdin {
            Some(path) => Stdio::from(File::open(path).with_context(|| format!("opening {}", path.display()))?),
            None => Stdio::null(),
        };
        let start = Instant::now();
        let out =
            Command::new(program).args(args).stdin(input).output().with_context(|| format!("running {program}"))?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(took)
    })
}

/// A scratch file for a ruleset, named with the bed's prefix; removed on drop.
pub struct ScratchFile(pub std::path::PathBuf);

impl ScratchFile {
    pub fn write(topo: &Topology, name: &str, text: &str) -> Result<ScratchFile> {
        let path = std::env::temp_dir().join(format!("{}-{name}", topo.prefix));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(ScratchFile(path))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
