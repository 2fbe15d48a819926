//! Loading the embedded object: maps pinned (or adopted from a previous
//! run), programs loaded as the hook table declares them, or adopted from
//! their pins when a previous run loaded the same object against the same
//! maps (a restart then verifies nothing).

use std::{
    collections::HashMap,
    fs,
    mem::size_of,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData, MapInfo, MapType},
    programs::{CgroupSockAddr, Program, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use aya_obj::generated::bpf_map_type;
use aya_obj::programs::{CgroupSockAddrAttachType, XdpAttachType};
use netpath_common::{
    hooks::{Attach, SockAddrHook},
    maps as names, ContainerEntry, CtEntry4, CtKey4, CtStats, DatapathConfig, HostAddr, In6Addr, MappingEntry4,
    MappingKey4, PolicyEntry, PolicyKey4, SockRevNatEntry4, SockRevNatKey4, TrafficStats, DELIVER_CALLS, HOOKS,
    TAIL_CALLS,
};

use super::Datapath;

/// The BPF object, built by build.rs and embedded in the binary.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// The layout version of the pinned maps. Bump it when a map's key or value
/// changes meaning without changing size (fields reordered, a flag bit
/// reused): pins stamped with another version are refused, except the
/// version `migrate` migrates from. Changes of type,
/// sizes or capacity are caught map by map against the object; a unit test
/// (`a_changed_layout_bumps_the_layout_version`) fails when a pinned type's
/// fields move without a bump.
pub const LAYOUT_VERSION: u32 = 8;

/// The stamp: a one-entry array map (`u32` -> `u32`, the layout version)
/// that the agent creates and pins beside the maps, under `maps/`.
pub const LAYOUT_MAP: &str = "LAYOUT";

/// Key and value sizes of every pinned map as the agent's types have them
/// (the object must declare the same; a unit test checks it).
const MAP_LAYOUTS: [(&str, usize, usize); 28] = [
    (names::CONTAINERS, size_of::<u32>(), size_of::<ContainerEntry>()),
    (names::IFACE_STATS, size_of::<u32>(), size_of::<TrafficStats>()),
    (names::MAPPINGS4, size_of::<MappingKey4>(), size_of::<MappingEntry4>()),
    (names::HOST_ADDRS4, size_of::<[u8; 4]>(), size_of::<HostAddr>()),
    (names::CT4, size_of::<CtKey4>(), size_of::<CtEntry4>()),
    (names::CT_STATS, size_of::<u32>(), size_of::<CtStats>()),
    (names::SOCK_REVNAT4, size_of::<SockRevNatKey4>(), size_of::<SockRevNatEntry4>()),
    (names::CONFIG, size_of::<u32>(), size_of::<DatapathConfig>()),
    // An LPM trie key is the prefix length (u32) and the data.
    (names::POLICY4, size_of::<u32>() + size_of::<PolicyKey4>(), size_of::<PolicyEntry>()),
    (names::FRAGS4, size_of::<netpath_common::FragKey4>(), size_of::<netpath_common::FragEntry4>()),
    (names::CONTAINER_IPS4, size_of::<[u8; 4]>(), size_of::<u32>()),
    (names::FORWARD_STATS, size_of::<u32>(), size_of::<netpath_common::ForwardStats>()),
    (names::EVENTS, 0, 0),
    // Arrays indexed by owner slot, holding the live owner's id.
    (names::MAPPING_IDS, size_of::<u32>(), size_of::<u32>()),
    (names::CONTAINER_IDS, size_of::<u32>(), size_of::<u32>()),
    // The guarded ports' bitmap words; the denied prefixes (LPM key: prefix
    // length and address) with their prefix length.
    (names::GUARDED_PORTS, size_of::<u32>(), size_of::<u64>()),
    (names::DENIED_SOURCES4, size_of::<u32>() + size_of::<[u8; 4]>(), size_of::<u32>()),
    (names::ROUTE_MTUS4, size_of::<u32>() + size_of::<[u8; 4]>(), size_of::<u32>()),
    (names::EVENT_BUDGET, size_of::<u32>(), size_of::<netpath_common::EventBudget>()),
    (names::CT6, size_of::<netpath_common::CtKey6>(), size_of::<netpath_common::CtEntry6>()),
    (names::HOST_ADDRS6, size_of::<In6Addr>(), size_of::<HostAddr>()),
    (names::POLICY6, size_of::<u32>() + size_of::<netpath_common::PolicyKey6>(), size_of::<PolicyEntry>()),
    (names::FRAGS6, size_of::<netpath_common::FragKey6>(), size_of::<netpath_common::FragEntry6>()),
    // Slot -> program fd.
    (names::TAIL_CALLS, size_of::<u32>(), size_of::<u32>()),
    (names::MAPPINGS6, size_of::<netpath_common::MappingKey6>(), size_of::<netpath_common::MappingEntry6>()),
    (names::SOCK_REVNAT6, size_of::<netpath_common::SockRevNatKey6>(), size_of::<netpath_common::SockRevNatEntry6>()),
    (names::CONTAINER_IPS6, size_of::<In6Addr>(), size_of::<u32>()),
    (names::DELIVER_CALLS, size_of::<u32>(), size_of::<u32>()),
];

/// Loads (has the kernel verify) every program the hook table and the
/// tail-call tables name, on as many threads as there are CPUs: the
/// verifier's work is per program and CPU-bound (veth_ingress alone takes
/// some 900k of its steps), and the kernel verifies privileged loads side
/// by side. One after the other they took ~10 s of every agent start here,
/// and of every restart and upgrade.
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let wanted = wanted_programs();
    let mut queue: Vec<(&str, &mut Program)> = ebpf.programs_mut().filter(|(name, _)| wanted.contains(name)).collect();
    if let Some(missing) = wanted.iter().find(|w| !queue.iter().any(|(name, _)| name == *w)) {
        bail!("program {missing} missing from the BPF object");
    }
    // Taken in the tables' order (popped from the end): the hook table
    // starts with veth_ingress, by far the longest to verify, which then
    // runs beside all the others rather than after them.
    queue.sort_by_key(|(name, _)| std::cmp::Reverse(wanted.iter().position(|w| w == name)));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(queue.len());
    let queue = Mutex::new(queue);
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some((name, program)) = next() {
                        load_program(name, program)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut result = Ok(());
        for worker in workers {
            let done = worker.join().unwrap_or_else(|_| Err(anyhow!("a program-loading thread panicked")));
            // The first error; a failed worker stops, the others finish
            // the queue (each load is independent).
            result = result.and(done);
        }
        result
    })
}

/// Every program the agent loads: the hook table's, then the tail-called
/// ones.
pub(super) fn wanted_programs() -> Vec<&'static str> {
    HOOKS.iter().map(|h| h.program).chain(TAIL_CALLS.iter().chain(&DELIVER_CALLS).map(|t| t.program)).collect()
}

/// Loads one program, as the kind of program it is.
fn load_program(name: &str, program: &mut Program) -> Result<()> {
    let loaded = match program {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        other => bail!("program {name} is a {:?} program, which netpath does not load", other.prog_type()),
    };
    loaded.with_context(|| format!("loading program {name}"))
}

impl Datapath {
    /// Puts each tail-called program (loaded or adopted) in its slot of its
    /// program array (`TAIL_CALLS`, `DELIVER_CALLS`), before any entry
    /// point of this load is attached: an entry point that jumps to an
    /// empty `TAIL_CALLS` slot drops the packet, the fast path leaves it to
    /// the stack. Adopted programs are put back too: the arrays are pinned,
    /// and an agent of another build that ran meanwhile on the same pins
    /// put its own programs there.
    fn fill_tail_calls(&mut self) -> Result<()> {
        for (array, table) in [(names::TAIL_CALLS, &TAIL_CALLS[..]), (names::DELIVER_CALLS, &DELIVER_CALLS[..])] {
            let mut fds = Vec::with_capacity(table.len());
            for tail in table {
                let prog = <&mut SchedClassifier>::try_from(self.program_mut(tail.program)?)?;
                fds.push((tail, prog.fd()?.try_clone()?));
            }
            let map = self.ebpf.map_mut(array).ok_or_else(|| anyhow!("the BPF object declares no map {array}"))?;
            let mut slots = aya::maps::ProgramArray::try_from(map)?;
            for (tail, fd) in &fds {
                slots.set(tail.slot, fd, 0).with_context(|| format!("putting {} in {array}", tail.program))?;
            }
        }
        Ok(())
    }

    /// The program `name`: adopted from its pin, or loaded from the object.
    pub(super) fn program_mut(&mut self, name: &str) -> Result<&mut Program> {
        if self.adopted.contains_key(name) {
            return self.adopted.get_mut(name).ok_or_else(|| anyhow!("program {name} missing"));
        }
        program_mut(&mut self.ebpf, name)
    }

    /// The programs in the kernel, by name: the adopted ones, or those this
    /// agent loaded.
    pub(super) fn loaded_programs(&self) -> Vec<(&str, &Program)> {
        if self.adopted.is_empty() {
            self.ebpf.programs().filter(|(_, p)| p.fd().is_ok()).collect()
        } else {
            self.adopted.iter().map(|(name, p)| (name.as_str(), p)).collect()
        }
    }

    /// Pins every loaded program whose pin is missing, under
    /// [`programs_dir`] (which names what they were loaded from and
    /// against); returns how many were pinned.
    pub(super) fn pin_programs(&mut self) -> Result<usize> {
        let dir = programs_dir(&self.pin_dir)?;
        pin_programs(&dir, |name, path| Ok(self.program_mut(name)?.pin(path)?))
    }
}

/// Pins each program this build attaches under `dir` where its pin is
/// missing, with `pin` (given the program's name and its pin path);
/// returns how many were pinned.
pub(super) fn pin_programs(dir: &Path, mut pin: impl FnMut(&str, &Path) -> Result<()>) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pinned = 0;
    for name in wanted_programs() {
        let path = dir.join(name);
        if path.exists() {
            continue;
        }
        pin(name, &path).with_context(|| format!("pinning program {name}"))?;
        pinned += 1;
    }
    Ok(pinned)
}

/// Where the loaded programs are pinned, beside `maps/` and `links/`.
const PROGS_DIR: &str = "progs";

/// The directory of the programs loaded from this build's object against
/// the maps pinned now: `progs/<digest>`, the SHA-256 of the object's own
/// digest and the id of every pinned map (ids are never reused while the
/// kernel runs). Programs hold the maps they were loaded with: the same
/// ids say the maps under `maps/` are those, not tables created since
/// (bpffs wiped, pins replaced). (bpffs holds no regular files, so the
/// stamp is the directory's name.)
pub(super) fn programs_dir(pin_dir: &Path) -> Result<PathBuf> {
    use sha2::{Digest as _, Sha256};
    let mut identity = format!("object sha256:{:x}\n", Sha256::digest(BPF_OBJECT));
    for name in names::PINNED_MAPS {
        let path = pin_dir.join("maps").join(name);
        let id = match MapInfo::from_pin(&path) {
            Ok(info) => info.id().to_string(),
            Err(_) if !path.exists() => "-".into(),
            Err(e) => return Err(e).with_context(|| format!("reading pinned map {}", path.display())),
        };
        identity.push_str(&format!("map {name} {id}\n"));
    }
    Ok(pin_dir.join(PROGS_DIR).join(format!("{:x}", Sha256::digest(identity))))
}

/// The programs pinned by an agent that loaded this very object against
/// the maps pinned now, if all of them are there; None otherwise, and the
/// caller loads the object's programs.
pub(super) fn adoptable_programs(pin_dir: &Path) -> Result<Option<HashMap<String, Program>>> {
    let dir = programs_dir(pin_dir)?;
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut adopted = HashMap::new();
    for name in wanted_programs() {
        let path = dir.join(name);
        let program = match HOOKS.iter().find(|h| h.program == name).map(|h| h.attach) {
            Some(Attach::Xdp) => Xdp::from_pin(&path, XdpAttachType::Interface).map(Program::Xdp),
            Some(Attach::SockAddr(hook)) => {
                CgroupSockAddr::from_pin(&path, sock_addr_attach_type(hook)).map(Program::CgroupSockAddr)
            }
            Some(Attach::Tcx(_)) | None => SchedClassifier::from_pin(&path).map(Program::SchedClassifier),
        };
        match program {
            Ok(p) => adopted.insert(name.to_string(), p),
            Err(e) => {
                tracing::warn!("pinned program {} cannot be adopted ({e}); loading the object's", path.display());
                return Ok(None);
            }
        };
    }
    Ok(Some(adopted))
}

/// The kernel's attach type of a socket hook.
fn sock_addr_attach_type(hook: SockAddrHook) -> CgroupSockAddrAttachType {
    match hook {
        SockAddrHook::Connect4 => CgroupSockAddrAttachType::Connect4,
        SockAddrHook::Sendmsg4 => CgroupSockAddrAttachType::UDPSendMsg4,
        SockAddrHook::Recvmsg4 => CgroupSockAddrAttachType::UDPRecvMsg4,
        SockAddrHook::Getpeername4 => CgroupSockAddrAttachType::GetPeerName4,
        SockAddrHook::Connect6 => CgroupSockAddrAttachType::Connect6,
        SockAddrHook::Sendmsg6 => CgroupSockAddrAttachType::UDPSendMsg6,
        SockAddrHook::Recvmsg6 => CgroupSockAddrAttachType::UDPRecvMsg6,
        SockAddrHook::Getpeername6 => CgroupSockAddrAttachType::GetPeerName6,
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

impl Datapath {
    /// Loads the embedded object with every map pinned under `pin_dir`
    /// (reusing pins that exist, migrating those of the previous layout)
    /// and loads the programs into the kernel. `uplink_ifindex`: the
    /// uplink's, whose counters a migration carries to its slot.
    pub fn load(pin_dir: &Path, ct_entries: u32, uplink_ifindex: Option<u32>) -> Result<Datapath> {
        Self::load_sized(BPF_OBJECT, Some(pin_dir), Some(ct_entries), uplink_ifindex)
    }

    /// Loads `object` with nothing pinned (packet tests).
    pub fn load_object(object: &[u8]) -> Result<Datapath> {
        Self::load_sized(object, None, None, None)
    }

    /// Loads `object` with the conntrack table sized to `ct_entries` (the
    /// object's declaration if None).
    fn load_sized(
        object: &[u8],
        pin_dir: Option<&Path>,
        ct_entries: Option<u32>,
        uplink_ifindex: Option<u32>,
    ) -> Result<Datapath> {
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
        let declared = declared_maps(object)?;
        let migrating = match pin_dir {
            Some(dir) => super::migrate::set_aside(dir)?,
            None => false,
        };
        if let Some(dir) = pin_dir {
            // A stamp there is read first: pins of a newer layout are a
            // downgrade, which it names, rather than the first map whose
            // shape this build does not know.
            if dir.join("maps").join(LAYOUT_MAP).exists() {
                check_layout_stamp(&dir.join("maps"), migrating)?;
            }
            check_pinned_maps(&declared, &map_paths, ct_entries)?;
            check_layout_stamp(&dir.join("maps"), migrating)?;
        }
        let mut loader = object_loader(&map_paths, ct_entries);
        // Programs another run of this build loaded against these very maps
        // are adopted from their pins: no verification (seconds, on every
        // restart). Anything else (another build's object, maps created
        // since, a pin missing) loads the object's programs. (Only the
        // embedded object is loaded with pins: the stamp names it.)
        let adopted = match pin_dir {
            Some(dir) => adoptable_programs(dir)?,
            None => None,
        };
        let mut ebpf = loader.load(object).context("loading the BPF object")?;
        let adopting = adopted.is_some();
        if adopting {
            if let Some(dir) = pin_dir {
                // Another build's programs (the one this upgrade replaces,
                // whose own start pinned them) are no longer wanted.
                remove_other_programs(dir)?;
            }
        } else {
            if let Some(dir) = pin_dir {
                // Stale from here on: the programs about to be loaded are
                // others.
                remove_programs(dir)?;
            }
            let since = std::time::Instant::now();
            load_programs(&mut ebpf)?;
            tracing::info!(seconds = since.elapsed().as_secs_f64(), "loaded and verified the object's programs");
        }
        // A handle on each pinned map, opened through its pin while it is there.
        let mut map_fds = vec![];
        for (name, path) in &map_paths {
            use std::os::fd::AsFd as _;
            let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
            map_fds.push((*name, data.fd().as_fd().try_clone_to_owned()?));
        }
        let mut dp = Datapath {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf).unwrap_or_default(),
            taken: vec![],
            written: Default::default(),
            fills: Default::default(),
            ct_removed: Default::default(),
            held_links: Default::default(),
            map_fds,
            summary_cache: Default::default(),
            program_cache: Default::default(),
            adopted: adopted.unwrap_or_default(),
        };
        if migrating {
            dp.finish_migration(uplink_ifindex)?;
        }
        dp.fill_tail_calls()?;
        if adopting {
            tracing::info!("adopted the programs a previous run loaded from this object against these maps");
        } else if pin_dir.is_some() {
            dp.pin_programs()?;
        }
        // Adopted pins: what they hold is read once here; after that the
        // agent's writes keep the counts, and the GC the datapath's.
        dp.read_written()?;
        let since = std::time::Instant::now();
        let ct4 = dp.ct_entries()?.len() as u64;
        let ct6 = dp.ct_entries6()?.len() as u64;
        dp.fill_counter()?.record(&[(names::CT4, ct4), (names::CT6, ct6)], since)?;
        Ok(dp)
    }

    /// Names of every program in the loaded object (declared or not).
    pub fn program_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.ebpf.programs().map(|(name, _)| name.to_string()).collect();
        names.sort();
        names
    }

    /// The fd of a loaded program (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self, name: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = self
            .adopted
            .get(name)
            .or_else(|| self.ebpf.program(name))
            .ok_or_else(|| anyhow!("program {name} missing"))?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }
}

/// What a map is, as the object declares it or the kernel reports a pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapDef {
    kind: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl MapDef {
    fn declared(m: &aya_obj::Map) -> MapDef {
        MapDef {
            kind: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        }
    }

    fn pinned(info: &MapInfo) -> MapDef {
        MapDef {
            // MapType's discriminants are the kernel's map type numbers.
            kind: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }
}

impl std::fmt::Display for MapDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = bpf_map_type::try_from(self.kind).ok().and_then(|t| MapType::try_from(t).ok());
        match kind {
            Some(k) => write!(f, "{k:?}")?,
            None => write!(f, "type {}", self.kind)?,
        }
        write!(f, ", key {} B, value {} B, {} entries", self.key_size, self.value_size, self.max_entries)?;
        if self.flags != 0 {
            write!(f, ", flags {:#x}", self.flags)?;
        }
        Ok(())
    }
}

/// The maps the object declares, by name, each checked against the sizes
/// of the agent's types (an object from another build is refused).
pub(super) fn declared_maps(object: &[u8]) -> Result<std::collections::HashMap<String, aya_obj::Map>> {
    let maps = aya_obj::Object::parse(object).context("parsing the BPF object's map definitions")?.maps;
    for (name, key, value) in MAP_LAYOUTS {
        let Some(def) = maps.get(name).map(MapDef::declared) else { continue };
        if (def.key_size as usize, def.value_size as usize) != (key, value) {
            bail!(
                "the BPF object declares map {name} as {def}, but the agent's types have key {key} B, value {value} B"
            );
        }
    }
    Ok(maps)
}

fn declared_map(declared: &std::collections::HashMap<String, aya_obj::Map>, name: &str) -> Result<MapDef> {
    declared.get(name).map(MapDef::declared).ok_or_else(|| anyhow!("the BPF object declares no map {name}"))
}

/// Refuses a pinned map that is not what this build declares (type, key and
/// value sizes, capacity, flags): reusing it would misread its entries, or
/// give the datapath another table than the one it was written for.
fn check_pinned_layout(name: &str, path: &Path, expected: MapDef) -> Result<()> {
    let info = match MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(_) if !path.exists() => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
    };
    let found = MapDef::pinned(&info);
    if found != expected {
        bail!(
            "pinned map {name} ({}) is {found}, but this netpath expects {expected}: it was left by an incompatible \
             build. Remove the instance's pins (their state is lost) or run the matching netpath.",
            path.display()
        );
    }
    Ok(())
}

/// A pinned conntrack table of another capacity than configured: named as
/// the configuration change it is (a pinned map cannot be resized).
fn check_ct_capacity(path: &Path, wanted: u32) -> Result<()> {
    let Ok(info) = MapInfo::from_pin(path) else { return Ok(()) };
    let pinned = info.max_entries();
    if pinned != wanted {
        bail!(
            "conntrack.max_entries is {wanted}, but the pinned conntrack table {} holds {pinned}: a pinned table \
             cannot be resized. Keep max_entries = {pinned}, or remove the instance's pins (tracked flows are lost) \
             to start with the new size.",
            path.display()
        );
    }
    Ok(())
}

/// Checks each pinned map of `map_paths` (those that exist) against the
/// object's declaration (`declared`), and the conntrack table's capacity
/// against the configured one (`ct_entries`).
pub(super) fn check_pinned_maps(
    declared: &std::collections::HashMap<String, aya_obj::Map>,
    map_paths: &[(&str, PathBuf)],
    ct_entries: Option<u32>,
) -> Result<()> {
    for (name, path) in map_paths {
        let mut expected = declared_map(declared, name)?;
        match ct_entries {
            Some(n) if *name == names::CT4 => {
                // Type and sizes first; then the capacity, named as the
                // configuration it is.
                expected.max_entries = MapInfo::from_pin(path).map_or(n, |info| info.max_entries());
                check_pinned_layout(name, path, expected)?;
                check_ct_capacity(path, n)?;
            }
            _ => check_pinned_layout(name, path, expected)?,
        }
    }
    Ok(())
}

/// The layout stamp's own shape.
const LAYOUT_DEF: MapDef =
    MapDef { kind: bpf_map_type::BPF_MAP_TYPE_ARRAY as u32, key_size: 4, value_size: 4, max_entries: 1, flags: 0 };

/// Checks the layout version stamped beside the pinned maps, and stamps a
/// fresh instance (before its maps are created, so that no pins exist
/// without a stamp). Pins without a stamp were left by a build that had
/// none: refused, since nothing says what they hold. `migrating`: the
/// stamp's version is the one this build migrates from (`migrate`), which
/// it stamps over once the maps are migrated.
pub(super) fn check_layout_stamp(maps_dir: &Path, migrating: bool) -> Result<()> {
    let path = maps_dir.join(LAYOUT_MAP);
    if !path.exists() {
        if let Some(name) = names::PINNED_MAPS.iter().find(|m| maps_dir.join(m).exists()) {
            bail!(
                "pinned map {name} in {} has no layout stamp ({LAYOUT_MAP}): it was left by an older netpath. \
                 Remove the instance's pins (their state is lost) or run the matching netpath.",
                maps_dir.display()
            );
        }
        let data = MapData::create(
            aya_obj::Map::new_from_params(
                LAYOUT_DEF.kind,
                LAYOUT_DEF.key_size,
                LAYOUT_DEF.value_size,
                LAYOUT_DEF.max_entries,
                LAYOUT_DEF.flags,
            ),
            LAYOUT_MAP,
            None,
        )
        .with_context(|| format!("creating the {LAYOUT_MAP} map"))?;
        let mut stamp: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
        stamp.set(0, LAYOUT_VERSION, 0).with_context(|| format!("writing {LAYOUT_MAP}"))?;
        // Written before it is pinned: the pin never holds another version.
        stamp.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        return Ok(());
    }
    check_pinned_layout(LAYOUT_MAP, &path, LAYOUT_DEF)?;
    let version = read_layout_stamp(&path)?;
    // Pins of another layout are never adopted: a map read with the wrong
    // layout would translate packets wrongly. Which way the versions
    // differ says what the operator is doing.
    if version != LAYOUT_VERSION && !(migrating && version == super::migrate::MIGRATES_FROM) {
        let (left_by, way_out) = if version > LAYOUT_VERSION {
            (
                "a newer netpath (a downgrade across a layout change)",
                format!(
                    "Run a netpath of layout version {version} or later, or remove the instance's pins (their state \
                     is lost)"
                ),
            )
        } else {
            (
                "an older netpath, and this build has no migration from that layout",
                "Run that netpath, or remove the instance's pins (established flows are cut) and start this one".into(),
            )
        };
        bail!(
            "pinned map {LAYOUT_MAP} ({}) says the pinned maps have layout version {version}, but this netpath \
             expects version {LAYOUT_VERSION}: they were left by {left_by}. {way_out}.",
            path.display(),
        );
    }
    Ok(())
}

/// The layout version in the stamp pinned at `path`.
pub fn read_layout_stamp(path: &Path) -> Result<u32> {
    let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let stamp: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
    stamp.get(&0, 0).with_context(|| format!("reading {}", path.display()))
}

/// Removes the pinned programs of every object and maps but this build's
/// against the maps pinned now.
fn remove_other_programs(pin_dir: &Path) -> Result<()> {
    let ours = programs_dir(pin_dir)?;
    let dir = pin_dir.join(PROGS_DIR);
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path != ours {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// A loader of the BPF object with the conntrack table sized to
/// `ct_entries` (the object's declaration if None) and each map of
/// `map_paths` pinned at its path (opened there if pinned already).
pub(super) fn object_loader<'a>(map_paths: &'a [(&str, PathBuf)], ct_entries: Option<u32>) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    if let Some(n) = ct_entries {
        loader.map_max_entries(names::CT4, n);
    }
    for (name, path) in map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
}

/// Removes every pinned program (those of another object or other maps:
/// stale once this run loads its own).
fn remove_programs(pin_dir: &Path) -> Result<()> {
    remove_dir_if_present(&pin_dir.join(PROGS_DIR))
}

/// Removes `dir` and everything under it; a directory not there is fine.
pub(super) fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

pub(super) fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time memory functions LLVM's BPF backend calls where
    /// it does not expand an intrinsic in line (see netpath-ebpf's `zero`).
    const MEMORY_BUILTINS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

    #[test]
    fn no_program_calls_a_byte_wise_memory_function() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
        let file = object::File::parse(BPF_OBJECT).unwrap();
        let mut calls = vec![];
        for section in file.sections() {
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else { continue };
                let name = file.symbol_by_index(index).and_then(|s| s.name()).unwrap_or_default();
                if MEMORY_BUILTINS.contains(&name) {
                    calls.push(format!("{} +{offset:#x}: {name}", section.name().unwrap_or_default()));
                }
            }
        }
        assert!(calls.is_empty(), "calls of a byte-wise memory function: {calls:#?}");
    }

    #[test]
    fn the_object_declares_every_pinned_map_as_the_agent_expects() {
        // declared_maps refuses size mismatches; every pinned map is there.
        let declared = declared_maps(BPF_OBJECT).unwrap();
        for name in names::PINNED_MAPS {
            declared_map(&declared, name).unwrap();
        }
    }

    #[test]
    fn map_definitions_read_like_bpftool() {
        let def = MapDef { kind: 9, key_size: 16, value_size: 72, max_entries: 1024, flags: 0 };
        assert_eq!(def.to_string(), "LruHash, key 16 B, value 72 B, 1024 entries");
        let def = MapDef { kind: 999, flags: 1, ..def };
        assert_eq!(def.to_string(), "type 999, key 16 B, value 72 B, 1024 entries, flags 0x1");
    }

    /// `Type(size){field@offset+size,...}` for the fields listed.
    macro_rules! layout {
        ($t:ty { $($f:ident),* $(,)? }) => {{
            let mut text = format!("{}({}){{", stringify!($t), size_of::<$t>());
            $(
                let v = <$t>::default();
                text += &format!("{}@{}+{},", stringify!($f), std::mem::offset_of!($t, $f), size_of_val(&v.$f));
            )*
            text + "}"
        }};
    }

    /// Every field of every pinned map's key and value, where it sits.
    fn pinned_layout() -> String {
        use netpath_common::{
            conntrack::CtTimeouts, policy::PolicyRule, stats::Counter, CtEntry6, CtKey6, EventBudget, ForwardStats,
            FragEntry4, FragEntry6, FragKey4, FragKey6, MappingEntry6, MappingKey6, PolicyKey6, SockRevNatEntry6,
            SockRevNatKey6,
        };
        [
            layout!(ContainerEntry { ipv4, ipv6, mac, flags, ifindex, id, policy_epoch, stats_slot }),
            layout!(Counter { packets, bytes }),
            layout!(TrafficStats { ingress, egress, drops }),
            layout!(MappingKey4 { addr, port, proto }),
            layout!(MappingEntry4 { container_addr, container_port, id, container_ifindex }),
            layout!(HostAddr { ifindex }),
            layout!(CtKey4 { saddr, daddr, sport, dport, proto, scope, icmp_type }),
            layout!(CtEntry4 {
                snat_addr,
                dnat_addr,
                snat_port,
                dnat_port,
                flags,
                state,
                mapping_id,
                policy_epoch,
                expires_ns,
                packets,
                bytes,
                peer,
                container_id
            }),
            layout!(CtStats { inserts, insert_failures, removals }),
            layout!(SockRevNatKey4 { cookie, container_addr, container_port }),
            layout!(SockRevNatEntry4 { host_addr, host_port, mapping_id }),
            layout!(CtTimeouts { tcp_new, tcp_established, tcp_closing, tcp_reset, udp, icmp, tcp_closed }),
            layout!(DatapathConfig {
                netns_cookie,
                subnet4,
                subnet4_prefix,
                gateway4,
                flags,
                timeouts,
                masq_addr4,
                masq_port_min,
                masq_port_max,
                gateway_mac,
                subnet6,
                subnet6_prefix,
                gateway6,
                masq_addr6
            }),
            layout!(PolicyKey4 { container_id, direction, addr }),
            layout!(PolicyRule { prefix_len, proto, action, has_ports, port_min, port_max }),
            layout!(PolicyEntry { count, rules }),
            layout!(FragKey4 { saddr, daddr, id, proto, scope }),
            layout!(FragEntry4 { sport, dport, nat_saddr, nat_daddr, expires_ns }),
            layout!(CtKey6 { saddr, daddr, sport, dport, proto, scope, icmp_type }),
            layout!(CtEntry6 {
                snat_addr,
                dnat_addr,
                snat_port,
                dnat_port,
                flags,
                state,
                mapping_id,
                policy_epoch,
                expires_ns,
                packets,
                bytes,
                peer,
                container_id
            }),
            layout!(PolicyKey6 { container_id, direction, addr }),
            layout!(FragKey6 { saddr, daddr, id, proto, scope }),
            layout!(FragEntry6 { sport, dport, nat_saddr, nat_daddr, expires_ns }),
            layout!(MappingKey6 { addr, port, proto }),
            layout!(MappingEntry6 { container_addr, container_port, id, container_ifindex }),
            layout!(SockRevNatKey6 { cookie, container_addr, container_port }),
            layout!(SockRevNatEntry6 { host_addr, host_port, mapping_id }),
            layout!(ForwardStats { redirected, fallbacks }),
            layout!(EventBudget { window_start_ns, sent, suppressed }),
            // Version 4: owner slots (MAPPING_IDS, CONTAINER_IDS) and
            // CtEntry4::container_id on masqueraded flows too; 5: policy
            // epochs (ContainerEntry, CtEntry4); 6: 131072 owner slots and
            // published ports, the uplink guard (GUARDED_PORTS,
            // DENIED_SOURCES4, DropReason::DeniedSource) and the drop
            // events' budget (EVENT_BUDGET); 7: IPv6 (CT6, HOST_ADDRS6,
            // POLICY6, FRAGS6, MAPPINGS6, DatapathConfig's IPv6 subnet,
            // 32-bit fragment ids, two more drop reasons and room for four).
            format!("owner slots {}: id", netpath_common::owner::OWNER_SLOTS),
            format!(
                "guarded ports {} words: tcp then udp, bit port%64 of word port/64; denied sources [u8; 4] -> u32; \
                 drop reasons {}",
                netpath_common::uplink_guard::GUARDED_PORT_WORDS,
                netpath_common::DropReason::ALL.len()
            ),
        ]
        .join("\n")
    }

    /// FNV-1a, 64 bits: stable across builds and Rust versions.
    fn fingerprint(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    }

    /// The layout this LAYOUT_VERSION stands for. When the test below fails,
    /// the pinned maps' layout changed: bump LAYOUT_VERSION (pins of the old
    /// layout are then refused unless `migrate` migrates them) and record
    /// the new pair here.
    const RECORDED_LAYOUT: (u32, u64) = (8, 0xc2d9a092e1729c84);

    #[test]
    fn a_changed_layout_bumps_the_layout_version() {
        let text = pinned_layout();
        assert_eq!(
            (LAYOUT_VERSION, fingerprint(&text)),
            RECORDED_LAYOUT,
            "the pinned maps' layout is now:\n{text}\nbump LAYOUT_VERSION if it changed, and record the pair"
        );
    }

    #[test]
    fn every_pinned_map_has_a_layout() {
        for name in names::PINNED_MAPS {
            assert!(MAP_LAYOUTS.iter().any(|(n, _, _)| n == name), "{name} has no expected layout");
        }
        assert_eq!(MAP_LAYOUTS.len(), names::PINNED_MAPS.len());
    }
}
