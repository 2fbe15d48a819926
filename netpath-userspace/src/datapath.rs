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
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, HashMap as BpfHashMap, MapData, MapInfo, PerCpuHashMap, PerCpuValues, RingBuf,
    },
    programs::{
        links::{CgroupAttachMode, FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use netpath_common::{
    maps as names, CtEntry, CtKey, DatapathConfig, DropReason, Endpoint, HostAddr, PolicyEntry, PolicyKey, ServiceKey,
    ServiceValue, SockRevNatKey, SockRevNatValue, TrafficStats,
};

use crate::model::{InterfaceStats, MapStatus, ProgramStatus};

/// The BPF object, built by build.rs and embedded in the binary.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// Where a program hangs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tcx ingress of a container's host-side veth.
    VethIngress,
    /// tcx egress of a container's host-side veth.
    VethEgress,
    /// tcx ingress of the uplink.
    UplinkIngress,
    /// tcx egress of the uplink.
    UplinkEgress,
    /// XDP on the uplink.
    UplinkXdp,
    /// cgroup socket hooks.
    SockConnect4,
    SockSendmsg4,
    SockRecvmsg4,
    SockGetpeername4,
}

/// The socket hooks, attached together to one cgroup.
pub const SOCK_HOOKS: [Hook; 4] = [Hook::SockConnect4, Hook::SockSendmsg4, Hook::SockRecvmsg4, Hook::SockGetpeername4];

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::VethIngress | Hook::UplinkIngress => "tcx-ingress",
            Hook::VethEgress | Hook::UplinkEgress => "tcx-egress",
            Hook::UplinkXdp => "xdp",
            Hook::SockConnect4 => "connect4",
            Hook::SockSendmsg4 => "sendmsg4",
            Hook::SockRecvmsg4 => "recvmsg4",
            Hook::SockGetpeername4 => "getpeername4",
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            Hook::VethIngress => names::PROG_VETH_INGRESS,
            Hook::VethEgress => names::PROG_VETH_EGRESS,
            Hook::UplinkIngress => names::PROG_UPLINK_INGRESS,
            Hook::UplinkEgress => names::PROG_UPLINK_EGRESS,
            Hook::UplinkXdp => names::PROG_UPLINK_XDP,
            Hook::SockConnect4 => names::PROG_SOCK_CONNECT4,
            Hook::SockSendmsg4 => names::PROG_SOCK_SENDMSG4,
            Hook::SockRecvmsg4 => names::PROG_SOCK_RECVMSG4,
            Hook::SockGetpeername4 => names::PROG_SOCK_GETPEERNAME4,
        }
    }

    fn tc_attach_type(self) -> Option<TcAttachType> {
        match self {
            Hook::VethIngress | Hook::UplinkIngress => Some(TcAttachType::Ingress),
            Hook::VethEgress | Hook::UplinkEgress => Some(TcAttachType::Egress),
            _ => None,
        }
    }

    fn is_sock(self) -> bool {
        SOCK_HOOKS.contains(&self)
    }
}

/// Pin name of the cgroup attachment target.
pub const CGROUP_TARGET: &str = "cgroup";

/// Expected key and value sizes of every pinned map: a pin left by an
/// incompatible build is refused instead of being reused with the wrong
/// layout.
fn map_layouts() -> [(&'static str, usize, usize); 9] {
    use netpath_common::*;
    use std::mem::size_of;
    [
        (names::ENDPOINTS, size_of::<u32>(), size_of::<Endpoint>()),
        (names::IFACE_STATS, size_of::<u32>(), size_of::<TrafficStats>()),
        (names::SERVICES, size_of::<ServiceKey>(), size_of::<ServiceValue>()),
        (names::HOST_ADDRS, 4, size_of::<HostAddr>()),
        (names::CT4, size_of::<CtKey>(), size_of::<CtEntry>()),
        (names::SOCK_REVNAT, size_of::<SockRevNatKey>(), size_of::<SockRevNatValue>()),
        (names::CONFIG, 4, size_of::<DatapathConfig>()),
        (names::POLICY, 4 + size_of::<PolicyKey>(), size_of::<PolicyEntry>()),
        (names::EVENTS, 0, 0),
    ]
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
    /// Status of maps taken out of the object (the event ring buffer).
    taken: Vec<MapStatus>,
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
                    fs::create_dir_all(dir.join(sub))
                        .with_context(|| format!("creating {}", dir.join(sub).display()))?;
                }
                names::PINNED_MAPS.iter().map(|m| (*m, dir.join("maps").join(m))).collect()
            }
            None => vec![],
        };
        for (name, path) in &map_paths {
            check_pinned_layout(name, path)?;
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the BPF object")?;
        for hook in [Hook::VethIngress, Hook::VethEgress, Hook::UplinkIngress, Hook::UplinkEgress] {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, hook.program())?.try_into()?;
            prog.load().with_context(|| format!("loading program {}", hook.program()))?;
        }
        let xdp: &mut Xdp = program_mut(&mut ebpf, names::PROG_UPLINK_XDP)?.try_into()?;
        xdp.load().with_context(|| format!("loading program {}", names::PROG_UPLINK_XDP))?;
        for hook in SOCK_HOOKS {
            let prog: &mut CgroupSockAddr = program_mut(&mut ebpf, hook.program())?.try_into()?;
            prog.load().with_context(|| format!("loading program {}", hook.program()))?;
        }
        Ok(Datapath { ebpf, pin_dir: pin_dir.map(Path::to_path_buf).unwrap_or_default(), taken: vec![] })
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

    /// Attaches the program for `hook` to `target` (an interface name, or a
    /// cgroup directory for the socket hooks) through a pinned link.
    /// If a pinned link is already there (restart), the new program replaces
    /// the old one inside that link atomically; if that link is dead (its
    /// interface was recreated), it is replaced by a fresh one.
    pub fn attach(&mut self, target: &str, hook: Hook) -> Result<()> {
        let pin = self.link_pin(if hook.is_sock() { CGROUP_TARGET } else { target }, hook);
        if hook.is_sock() {
            return self.attach_sock(target, hook, &pin);
        }
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
        let link = self.attach_new(target, hook)?;
        link.pin(&pin).with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    /// cgroup links cannot have their program swapped through aya, so a
    /// restart attaches the new program first and then drops the old link.
    /// Running both for a moment is harmless: the translations are
    /// idempotent (a rewritten address is no longer a published one).
    fn attach_sock(&mut self, cgroup: &str, hook: Hook, pin: &Path) -> Result<()> {
        let what = || format!("attaching {} to cgroup {cgroup}", hook.program());
        let dir = fs::File::open(cgroup).with_context(|| format!("opening cgroup {cgroup}"))?;
        let prog: &mut CgroupSockAddr = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
        let id = prog.attach(&dir, CgroupAttachMode::default()).with_context(what)?;
        let link: FdLink = prog.take_link(id)?.try_into().with_context(what)?;
        match fs::remove_file(pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing old pin {}", pin.display())),
        }
        link.pin(pin).with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    fn replace_in_link(&mut self, hook: Hook, link: FdLink) -> Result<()> {
        if hook.tc_attach_type().is_some() {
            let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
            let id = prog.attach_to_link(link.try_into()?)?;
            // Keep the link alive through its pin only: forget our handle
            // without detaching.
            let _: FdLink = prog.take_link(id)?.try_into()?;
        } else {
            let prog: &mut Xdp = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
            let id = prog.attach_to_link(link.try_into()?)?;
            let _: FdLink = prog.take_link(id)?.try_into()?;
        }
        Ok(())
    }

    fn attach_new(&mut self, ifname: &str, hook: Hook) -> Result<FdLink> {
        let what = || format!("attaching {} to {ifname} ({})", hook.program(), hook.name());
        let link: FdLink = match hook.tc_attach_type() {
            Some(attach_type) => {
                let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, hook.program())?.try_into()?;
                let id = prog
                    .attach_with_options(ifname, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .with_context(what)?;
                prog.take_link(id)?.try_into().with_context(what)?
            }
            None => {
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
        let Some(attach_type) = hook.tc_attach_type() else { bail!("{} is not a tcx hook", hook.name()) };
        let (_, progs) = SchedClassifier::query_tcx(ifname, attach_type)
            .with_context(|| format!("querying tcx programs on {ifname}"))?;
        Ok(progs.iter().map(|p| p.id()).collect())
    }

    /// Program id inside a pinned link.
    pub fn pinned_link_program(&self, target: &str, hook: Hook) -> Result<u32> {
        let pin = self.link_pin(if hook.is_sock() { CGROUP_TARGET } else { target }, hook);
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
        self.stats_map()?.insert(ifindex, values, 0).with_context(|| format!("resetting counters of ifindex {ifindex}"))
    }

    pub fn remove_stats(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.stats_map()?.remove(&ifindex))
            .with_context(|| format!("removing counters of ifindex {ifindex}"))
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
        let counts = [
            (names::ENDPOINTS, self.endpoints_map()?.keys().count() as u64),
            (names::IFACE_STATS, self.stats_map()?.keys().count() as u64),
            (names::SERVICES, self.services_map()?.keys().count() as u64),
            (names::HOST_ADDRS, self.host_addrs_map()?.keys().count() as u64),
            (names::CT4, self.ct_map()?.keys().count() as u64),
            (names::SOCK_REVNAT, self.sock_revnat_map()?.keys().count() as u64),
            (names::CONFIG, 1),
            (names::POLICY, self.policy_map()?.keys().count() as u64),
        ];
        let mut out = vec![];
        for (name, entries) in counts {
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
        out.extend(self.taken.iter().cloned());
        Ok(out)
    }

    fn services_map(&mut self) -> Result<BpfHashMap<&mut MapData, ServiceKey, ServiceValue>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::SERVICES)?)?)
    }

    fn host_addrs_map(&mut self) -> Result<BpfHashMap<&mut MapData, [u8; 4], HostAddr>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::HOST_ADDRS)?)?)
    }

    fn ct_map(&mut self) -> Result<BpfHashMap<&mut MapData, CtKey, CtEntry>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::CT4)?)?)
    }

    fn sock_revnat_map(&mut self) -> Result<BpfHashMap<&mut MapData, SockRevNatKey, SockRevNatValue>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::SOCK_REVNAT)?)?)
    }

    fn policy_map(&mut self) -> Result<LpmTrie<&mut MapData, PolicyKey, PolicyEntry>> {
        Ok(LpmTrie::try_from(self.map_mut(names::POLICY)?)?)
    }

    /// Writes the compiled rules of one prefix (an endpoint, a direction and
    /// a CIDR); an empty entry removes the prefix.
    pub fn set_policy(&mut self, prefix_len: u32, key: &PolicyKey, entry: &PolicyEntry) -> Result<()> {
        let k = LpmKey::new(prefix_len, *key);
        if entry.count == 0 {
            return ignore_missing(self.policy_map()?.remove(&k)).context("removing from POLICY");
        }
        self.policy_map()?.insert(&k, entry, 0).context("writing into POLICY")
    }

    /// Every (prefix length, key) in POLICY.
    pub fn policy_keys(&mut self) -> Result<Vec<(u32, PolicyKey)>> {
        Ok(self.policy_map()?.keys().filter_map(Result::ok).map(|k| (k.prefix_len(), k.data())).collect())
    }

    /// Takes the event ring buffer out of the object, for the agent's reader.
    pub fn take_events(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("map {} missing", names::EVENTS))?;
        let info = map_data(&map)?.info()?;
        self.taken.push(MapStatus {
            name: names::EVENTS.into(),
            id: info.id(),
            kind: format!("{:?}", info.map_type()?),
            entries: 0,
            max_entries: info.max_entries(),
            pin: self.pin_dir.join("maps").join(names::EVENTS).display().to_string(),
        });
        Ok(RingBuf::try_from(map)?)
    }

    pub fn remove_ct(&mut self, key: &CtKey) -> Result<()> {
        ignore_missing(self.ct_map()?.remove(key)).context("removing from CT4")
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
    }

    pub fn write_config(&mut self, cfg: &DatapathConfig) -> Result<()> {
        let mut arr: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        arr.set(0, cfg, 0).context("writing the CONFIG map")
    }

    pub fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services_map()?.insert(key, value, 0).context("writing into SERVICES")
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        ignore_missing(self.services_map()?.remove(key)).context("removing from SERVICES")
    }

    pub fn services(&mut self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services_map()?.iter().map(|r| r.map_err(Into::into)).collect()
    }

    /// Makes HOST_ADDRS hold exactly `addrs` (address, ifindex).
    pub fn sync_host_addrs(&mut self, addrs: &[([u8; 4], u32)]) -> Result<()> {
        let mut map = self.host_addrs_map()?;
        let existing: Vec<[u8; 4]> = map.keys().collect::<Result<_, _>>()?;
        for old in existing {
            if !addrs.iter().any(|(a, _)| *a == old) {
                ignore_missing(map.remove(&old))?;
            }
        }
        for (addr, ifindex) in addrs {
            if map.get(addr, 0).ok() != Some(HostAddr { ifindex: *ifindex }) {
                map.insert(addr, HostAddr { ifindex: *ifindex }, 0)?;
            }
        }
        Ok(())
    }

    pub fn ct_entries(&mut self) -> Result<Vec<(CtKey, CtEntry)>> {
        // Entries can vanish (LRU eviction, GC) while we walk: skip those.
        Ok(self.ct_map()?.iter().filter_map(Result::ok).collect())
    }

    /// Removes tracked flows (both directions) whose entry matches `pred`;
    /// returns how many flows went.
    pub fn ct_remove_where(&mut self, mut pred: impl FnMut(&CtKey, &CtEntry) -> bool) -> Result<usize> {
        let entries = self.ct_entries()?;
        let mut map = self.ct_map()?;
        let mut flows = 0;
        for (key, entry) in entries.iter().filter(|(k, e)| pred(k, e)) {
            let gone = ignore_missing(map.remove(key)).is_ok();
            let _ = ignore_missing(map.remove(&entry.peer));
            if gone && entry.flags & netpath_common::conntrack::CT_F_REPLY == 0 {
                flows += 1;
            }
        }
        Ok(flows)
    }

    /// Deletes the entries of these keys that are still expired at `now`,
    /// each re-read just before it goes: the datapath may have revived one
    /// (a reused tuple) since the table was read. Returns how many flows went.
    pub fn ct_remove_expired(&mut self, keys: &[CtKey], now: u64) -> Result<usize> {
        let mut map = self.ct_map()?;
        let mut flows = 0;
        for key in keys {
            let Ok(entry) = map.get(key, 0) else { continue };
            if entry.expires_ns >= now {
                continue;
            }
            if let Ok(peer) = map.get(&entry.peer, 0) {
                if peer.expires_ns >= now {
                    continue;
                }
                let _ = ignore_missing(map.remove(&entry.peer));
            }
            if ignore_missing(map.remove(key)).is_ok() && entry.flags & netpath_common::conntrack::CT_F_REPLY == 0 {
                flows += 1;
            }
        }
        Ok(flows)
    }

    /// Forgets socket-level translations made for these mappings.
    pub fn sock_revnat_remove(&mut self, service_ids: &[u32]) -> Result<()> {
        let mut map = self.sock_revnat_map()?;
        let keys: Vec<SockRevNatKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| service_ids.contains(&v.service_id))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            ignore_missing(map.remove(&k))?;
        }
        Ok(())
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

/// Refuses a pinned map whose key or value size differs from this build's.
fn check_pinned_layout(name: &str, path: &Path) -> Result<()> {
    let info = match MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(_) if !path.exists() => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
    };
    let (_, key, value) =
        map_layouts().into_iter().find(|(n, _, _)| *n == name).ok_or_else(|| anyhow!("unknown map {name}"))?;
    if info.key_size() as usize != key || info.value_size() as usize != value {
        bail!(
            "pinned map {} has key/value sizes {}/{} but this netpath expects {key}/{value}: it was left by an \
             incompatible build. Remove it (its state is lost) or run the matching netpath.",
            path.display(),
            info.key_size(),
            info.value_size()
        );
    }
    Ok(())
}

fn map_data(map: &aya::maps::Map) -> Result<&MapData> {
    use aya::maps::Map;
    match map {
        Map::HashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::LpmTrie(d)
        | Map::RingBuf(d) => Ok(d),
        _ => bail!("unexpected map type"),
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(())
        }
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
