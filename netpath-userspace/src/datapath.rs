//! Loading the BPF object, pinning its maps and links, and the map
//! operations the agent needs.
//!
//! Pins live under `<pin_dir>/maps/<MAP>` and `<pin_dir>/links/<hook>_<ifname>`
//! (bpffs refuses names with a '.', so a '.' in an interface name is
//! written as '%').
//! A restarted agent reuses the pinned maps (so state survives) and swaps its
//! freshly loaded programs into the pinned links atomically (so nothing is
//! attached twice and traffic never sees a gap).

use std::{
    fs,
    io,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use netpath_common::{maps as names, DropReason, Endpoint, TrafficStats};

use crate::model::{InterfaceStats, MapStatus, ProgramStatus};

/// The BPF object, built by build.rs and embedded in the binary.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// Where a program hangs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TcxIngress,
    TcxEgress,
    Xdp,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::TcxIngress => "tcx-ingress",
            Hook::TcxEgress => "tcx-egress",
            Hook::Xdp => "xdp",
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            Hook::TcxIngress => names::PROG_VETH_INGRESS,
            Hook::TcxEgress => names::PROG_VETH_EGRESS,
            Hook::Xdp => names::PROG_UPLINK_XDP,
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (a fresh machine).
pub fn ensure_bpffs() -> Result<()> {
    let target = Path::new("/sys/fs/bpf");
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo")?
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/sys/fs/bpf") && l.contains(" - bpf "));
    if !mounted {
        fs::create_dir_all(target).context("creating /sys/fs/bpf")?;
        nix::mount::mount(Some("bpf"), target, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(())
}

pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

fn not_found(err: &LinkError) -> bool {
    matches!(err, LinkError::SyscallError(SyscallError { io_error, .. }) if io_error.kind() == io::ErrorKind::NotFound)
}

impl Datapath {
    /// Loads the embedded object with every map pinned under `pin_dir`
    /// (reusing pins that exist) and loads the programs into the kernel.
    pub fn load(pin_dir: &Path) -> Result<Datapath> {
        Self::load_object(BPF_OBJECT, Some(pin_dir))
    }

    /// Loads `object`; with `pin_dir` None nothing is pinned (packet tests).
    pub fn load_object(object: &[u8], pin_dir: Option<&Path>) -> Result<Datapath> {
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                ensure_bpffs()?;
                for sub in ["maps", "links"] {
                    fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
                }
                names::PINNED_MAPS.iter().map(|m| (*m, dir.join("maps").join(m))).collect()
            }
            None => vec![],
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the BPF object")?;
        for hook in [Hook::TcxIngress, Hook::TcxEgress] {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, hook.program())?.try_into()?;
            prog.load().with_context(|| format!("loading program {}", hook.program()))?;
        }
        let xdp: &mut Xdp = program_mut(&mut ebpf, names::PROG_UPLINK_XDP)?.try_into()?;
        xdp.load().with_context(|| format!("loading program {}", names::PROG_UPLINK_XDP))?;
        Ok(Datapath { ebpf, pin_dir: pin_dir.map(Path::to_path_buf).unwrap_or_default() })
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn link_pin(&self, ifname: &str, hook: Hook) -> PathBuf {
        self.pin_dir.join("links").join(format!("{}_{}", hook.name(), ifname.replace('.', "%")))
    }

    /// Attaches the program for `hook` to `ifname` through a pinned link.
    /// If a pinned link is already there (restart), the new program replaces
    /// the old one inside that link atomically; if that link is dead (its
    /// interface was recreated), it is replaced by a fresh one.
    pub fn attach(&mut self, ifname: &str, hook: Hook) -> Result<()> {
        let pin = self.link_pin(ifname, hook);
        match PinnedLink::from_pin(&pin) {
            Ok(old) => match self.replace_in_link(hook, FdLink::from(old)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!("pinned link {} is stale ({e:#}); attaching a new one", pin.display());
                    fs::remove_file(&pin).with_context(|| format!("removing stale pin {}", pin.display()))?;
                }
            },
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
        }
        let link = self.attach_new(ifname, hook)?;
        link.pin(&pin).with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    fn replace_in_link(&mut self, hook: Hook, link: FdLink) -> Result<()> {
        match hook {
            Hook::TcxIngress | Hook::TcxEgress => {
                let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
                let id = prog.attach_to_link(link.try_into()?)?;
                // Keep the link alive through its pin only: forget our handle
                // without detaching.
                let _: FdLink = prog.take_link(id)?.try_into()?;
            }
            Hook::Xdp => {
                let prog: &mut Xdp = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
                let id = prog.attach_to_link(link.try_into()?)?;
                let _: FdLink = prog.take_link(id)?.try_into()?;
            }
        }
        Ok(())
    }

    fn attach_new(&mut self, ifname: &str, hook: Hook) -> Result<FdLink> {
        let what = || format!("attaching {} to {ifname} ({})", hook.program(), hook.name());
        let link: FdLink = match hook {
            Hook::TcxIngress | Hook::TcxEgress => {
                let attach_type = if hook == Hook::TcxIngress { TcAttachType::Ingress } else { TcAttachType::Egress };
                let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
                let id = prog
                    .attach_with_options(ifname, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .with_context(what)?;
                prog.take_link(id)?.try_into().with_context(what)?
            }
            Hook::Xdp => {
                let prog: &mut Xdp = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
                let id = prog.attach(ifname, XdpMode::default()).with_context(what)?;
                prog.take_link(id)?.try_into().with_context(what)?
            }
        };
        Ok(link)
    }

    /// Removes the pinned link, which detaches the program (the pin holds
    /// the last reference). A missing pin is fine.
    pub fn detach(&self, ifname: &str, hook: Hook) -> Result<()> {
        let pin = self.link_pin(ifname, hook);
        match fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing pinned link {}", pin.display())),
        }
    }

    /// Link pins that exist, as (file name) — for reconciliation.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        let dir = self.pin_dir.join("links");
        let mut out = vec![];
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Program ids on a tcx hook of `ifname` (all of them, netpath's or not).
    pub fn tcx_program_ids(ifname: &str, hook: Hook) -> Result<Vec<u32>> {
        let attach_type = match hook {
            Hook::TcxIngress => TcAttachType::Ingress,
            Hook::TcxEgress => TcAttachType::Egress,
            Hook::Xdp => bail!("not a tcx hook"),
        };
        let (_, progs) = SchedClassifier::query_tcx(ifname, attach_type)
            .with_context(|| format!("querying tcx programs on {ifname}"))?;
        Ok(progs.iter().map(|p| p.id()).collect())
    }

    /// Program id inside a pinned link.
    pub fn pinned_link_program(&self, ifname: &str, hook: Hook) -> Result<u32> {
        let pin = self.link_pin(ifname, hook);
        let link = FdLink::from(PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?);
        Ok(link.info()?.program_id())
    }

    fn endpoints_map(&mut self) -> Result<BpfHashMap<&mut MapData, u32, Endpoint>> {
        let map = self.ebpf.map_mut(names::ENDPOINTS).ok_or_else(|| anyhow!("map {} missing", names::ENDPOINTS))?;
        Ok(BpfHashMap::try_from(map)?)
    }

    fn stats_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, u32, TrafficStats>> {
        let map = self.ebpf.map_mut(names::IFACE_STATS).ok_or_else(|| anyhow!("map {} missing", names::IFACE_STATS))?;
        Ok(PerCpuHashMap::try_from(map)?)
    }

    pub fn set_endpoint(&mut self, ifindex: u32, ep: &Endpoint) -> Result<()> {
        self.endpoints_map()?
            .insert(ifindex, ep, 0)
            .with_context(|| format!("writing endpoint for ifindex {ifindex} into {}", names::ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.endpoints_map()?.remove(&ifindex))
            .with_context(|| format!("removing endpoint for ifindex {ifindex}"))
    }

    pub fn endpoints(&mut self) -> Result<Vec<(u32, Endpoint)>> {
        let map = self.endpoints_map()?;
        map.iter().map(|r| r.map_err(Into::into)).collect()
    }

    /// Starts the counters of an interface at zero.
    pub fn reset_stats(&mut self, ifindex: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let values = PerCpuValues::try_from(vec![TrafficStats::default(); cpus])?;
        self.stats_map()?
            .insert(ifindex, values, 0)
            .with_context(|| format!("resetting counters of ifindex {ifindex}"))
    }

    pub fn remove_stats(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.stats_map()?.remove(&ifindex)).with_context(|| format!("removing counters of ifindex {ifindex}"))
    }

    pub fn stats(&mut self, ifindex: u32) -> Result<TrafficStats> {
        let mut total = TrafficStats::default();
        match self.stats_map()?.get(&ifindex, 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|s| total.merge(s)),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading counters"),
        }
        Ok(total)
    }

    pub fn stat_keys(&mut self) -> Result<Vec<u32>> {
        self.stats_map()?.keys().map(|k| k.map_err(Into::into)).collect()
    }

    pub fn map_status(&mut self) -> Result<Vec<MapStatus>> {
        let endpoints = self.endpoints_map()?.keys().count() as u64;
        let stats = self.stats_map()?.keys().count() as u64;
        let mut out = vec![];
        for (name, entries) in [(names::ENDPOINTS, endpoints), (names::IFACE_STATS, stats)] {
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
            let info = map_data(map)?.info()?;
            out.push(MapStatus {
                name: name.to_string(),
                id: info.id(),
                kind: format!("{:?}", info.map_type()?),
                entries,
                max_entries: info.max_entries(),
                pin: self.pin_dir.join("maps").join(name).display().to_string(),
            });
        }
        Ok(out)
    }

    pub fn program_status(&self) -> Result<Vec<ProgramStatus>> {
        let mut out = vec![];
        for (name, prog) in self.ebpf.programs() {
            let info = prog.info()?;
            let kind = match prog {
                aya::programs::Program::SchedClassifier(_) => "tc",
                aya::programs::Program::Xdp(_) => "xdp",
                _ => "other",
            };
            out.push(ProgramStatus { name: name.to_string(), id: info.id(), kind: kind.into() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn program_fd(&self, name: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = self.ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing"))?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }
}

fn map_data(map: &aya::maps::Map) -> Result<&MapData> {
    use aya::maps::Map;
    match map {
        Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::LruHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => Ok(d),
        _ => bail!("unexpected map type"),
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(SyscallError { io_error, .. })) if io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Counters as the API shows them; `container_view` swaps directions so
/// that tx means "sent by the container".
pub fn interface_stats(s: &TrafficStats, container_view: bool) -> InterfaceStats {
    let (rx, tx) = if container_view { (s.egress, s.ingress) } else { (s.ingress, s.egress) };
    InterfaceStats {
        rx_packets: rx.packets,
        rx_bytes: rx.bytes,
        tx_packets: tx.packets,
        tx_bytes: tx.bytes,
        drops: DropReason::ALL
            .iter()
            .filter(|r| s.drops[**r as usize] > 0)
            .map(|r| (r.name().to_string(), s.drops[*r as usize]))
            .collect(),
    }
}
