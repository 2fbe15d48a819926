//! Typed access to each map, and summaries of maps and programs for status.

use std::{io, os::fd::AsFd as _};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf,
    },
    programs::Program,
    sys::SyscallError,
};
use netpath_common::{
    maps as names, ContainerEntry, CtEntry, CtKey4, DatapathConfig, ForwardStats, FragEntry4, FragKey4, HostAddr4,
    MappingEntry4, MappingKey4, PolicyEntry, PolicyKey4, SockRevNatEntry4, SockRevNatKey4, TrafficStats,
};

use super::Datapath;

/// One map as `status` shows it.
#[derive(Clone, Debug)]
pub struct MapSummary {
    pub name: String,
    pub id: u32,
    pub kind: String,
    pub entries: u64,
    pub max_entries: u32,
    pub pin: String,
    /// The kernel's `memlock` accounting of the map, bytes.
    pub memory_bytes: u64,
}

/// One loaded program as `status` shows it.
#[derive(Clone, Debug)]
pub struct ProgramSummary {
    pub name: String,
    pub id: u32,
    pub kind: String,
}

impl Datapath {
    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
    }

    fn containers_map(&mut self) -> Result<BpfHashMap<&mut MapData, u32, ContainerEntry>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::CONTAINERS)?)?)
    }

    fn stats_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, u32, TrafficStats>> {
        Ok(PerCpuHashMap::try_from(self.map_mut(names::IFACE_STATS)?)?)
    }

    fn mappings_map(&mut self) -> Result<BpfHashMap<&mut MapData, MappingKey4, MappingEntry4>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::MAPPINGS4)?)?)
    }

    fn host_addrs_map(&mut self) -> Result<BpfHashMap<&mut MapData, [u8; 4], HostAddr4>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::HOST_ADDRS4)?)?)
    }

    pub(super) fn ct_map(&mut self) -> Result<BpfHashMap<&mut MapData, CtKey4, CtEntry>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::CT4)?)?)
    }

    fn sock_revnat_map(&mut self) -> Result<BpfHashMap<&mut MapData, SockRevNatKey4, SockRevNatEntry4>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::SOCK_REVNAT4)?)?)
    }

    /// The entry of one key of a map, read without walking it.
    pub(super) fn get_one<K: aya::Pod, V: aya::Pod>(&self, name: &str, key: &K) -> Result<Option<V>> {
        let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
        let map: BpfHashMap<&MapData, K, V> = BpfHashMap::try_from(map)?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {name}")),
        }
    }

    /// The recorded first fragment at `key`, if any.
    pub fn frag_get4(&self, key: &FragKey4) -> Result<Option<FragEntry4>> {
        self.get_one(names::FRAGS4, key)
    }

    fn frags_map(&mut self) -> Result<BpfHashMap<&mut MapData, FragKey4, FragEntry4>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::FRAGS4)?)?)
    }

    /// Deletes the recorded first fragments `pred` selects; returns how many.
    pub fn frags_remove_where4(&mut self, mut pred: impl FnMut(&FragKey4, &FragEntry4) -> bool) -> Result<usize> {
        let mut map = self.frags_map()?;
        let doomed: Vec<FragKey4> =
            map.iter().filter_map(|item| item.ok()).filter(|(k, e)| pred(k, e)).map(|(k, _)| k).collect();
        let mut removed = 0;
        for key in doomed {
            match map.remove(&key) {
                Ok(()) => removed += 1,
                // Expired and evicted meanwhile (LRU): gone either way.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("deleting from FRAGS4"),
            }
        }
        Ok(removed)
    }

    fn policy_map(&mut self) -> Result<LpmTrie<&mut MapData, PolicyKey4, PolicyEntry>> {
        Ok(LpmTrie::try_from(self.map_mut(names::POLICY4)?)?)
    }

    /// What the CONFIG map holds (a previous run's settings, when its pin
    /// was reused; zeroes in a fresh one).
    pub fn read_config(&mut self) -> Result<DatapathConfig> {
        let arr: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        arr.get(&0, 0).context("reading the CONFIG map")
    }

    pub fn write_config(&mut self, cfg: &DatapathConfig) -> Result<()> {
        let mut arr: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        arr.set(0, cfg, 0).context("writing the CONFIG map")
    }

    fn container_ips_map(&mut self) -> Result<BpfHashMap<&mut MapData, [u8; 4], u32>> {
        Ok(BpfHashMap::try_from(self.map_mut(names::CONTAINER_IPS4)?)?)
    }

    /// Writes a container and its address index (the fast path finds
    /// containers by address). The entry goes first: an address never
    /// points at an interface without one.
    pub fn set_container(&mut self, ifindex: u32, entry: &ContainerEntry) -> Result<()> {
        self.containers_map()?
            .insert(ifindex, entry, 0)
            .with_context(|| format!("writing the container of ifindex {ifindex} into {}", names::CONTAINERS))?;
        if entry.has_ipv4() {
            self.container_ips_map()?
                .insert(entry.ipv4, ifindex, 0)
                .with_context(|| format!("writing ifindex {ifindex} into {}", names::CONTAINER_IPS4))?;
        }
        Ok(())
    }

    /// Removes a container and its address index (the index first).
    pub fn remove_container(&mut self, ifindex: u32) -> Result<()> {
        let addr = match self.containers_map()?.get(&ifindex, 0) {
            Ok(entry) if entry.has_ipv4() => Some(entry.ipv4),
            _ => None,
        };
        if let Some(addr) = addr {
            let mut ips = self.container_ips_map()?;
            // Only if it still points here (the address may have moved on).
            if ips.get(&addr, 0).ok() == Some(ifindex) {
                ignore_missing(ips.remove(&addr))
                    .with_context(|| format!("removing ifindex {ifindex} from {}", names::CONTAINER_IPS4))?;
            }
        }
        ignore_missing(self.containers_map()?.remove(&ifindex))
            .with_context(|| format!("removing the container of ifindex {ifindex}"))
    }

    /// The fast path's redirect and fallback counters, summed over CPUs.
    pub fn forward_stats(&mut self) -> Result<ForwardStats> {
        let map: PerCpuArray<&mut MapData, ForwardStats> = PerCpuArray::try_from(self.map_mut(names::FORWARD_STATS)?)?;
        let mut total = ForwardStats::default();
        map.get(&0, 0).context("reading FORWARD_STATS")?.iter().for_each(|s| total.merge(s));
        Ok(total)
    }

    pub fn containers(&mut self) -> Result<Vec<(u32, ContainerEntry)>> {
        let map = self.containers_map()?;
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

    /// The counters of an interface, summed over CPUs.
    pub fn stats(&mut self, ifindex: u32) -> Result<TrafficStats> {
        let mut total = TrafficStats::default();
        match self.stats_map()?.get(&ifindex, 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|s| total.merge(s)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading counters"),
        }
        Ok(total)
    }

    pub fn stat_keys(&mut self) -> Result<Vec<u32>> {
        self.stats_map()?.keys().map(|k| k.map_err(Into::into)).collect()
    }

    pub fn set_mapping(&mut self, key: &MappingKey4, entry: &MappingEntry4) -> Result<()> {
        self.mappings_map()?.insert(key, entry, 0).with_context(|| format!("writing into {}", names::MAPPINGS4))
    }

    pub fn remove_mapping(&mut self, key: &MappingKey4) -> Result<()> {
        ignore_missing(self.mappings_map()?.remove(key)).with_context(|| format!("removing from {}", names::MAPPINGS4))
    }

    pub fn mapping_entries(&mut self) -> Result<Vec<(MappingKey4, MappingEntry4)>> {
        self.mappings_map()?.iter().map(|r| r.map_err(Into::into)).collect()
    }

    /// Makes HOST_ADDRS4 hold exactly `addrs` (address, ifindex).
    pub fn sync_host_addrs4(&mut self, addrs: &[([u8; 4], u32)]) -> Result<()> {
        let mut map = self.host_addrs_map()?;
        let existing: Vec<[u8; 4]> = map.keys().collect::<Result<_, _>>()?;
        for old in existing {
            if !addrs.iter().any(|(a, _)| *a == old) {
                ignore_missing(map.remove(&old))?;
            }
        }
        for (addr, ifindex) in addrs {
            if map.get(addr, 0).ok() != Some(HostAddr4 { ifindex: *ifindex }) {
                map.insert(addr, HostAddr4 { ifindex: *ifindex }, 0)?;
            }
        }
        Ok(())
    }

    /// Writes the compiled rules of one prefix (a container, a direction and
    /// a CIDR); an empty entry removes the prefix.
    pub fn set_policy4(&mut self, prefix_len: u32, key: &PolicyKey4, entry: &PolicyEntry) -> Result<()> {
        let k = LpmKey::new(prefix_len, *key);
        if entry.count == 0 {
            return ignore_missing(self.policy_map()?.remove(&k))
                .with_context(|| format!("removing from {}", names::POLICY4));
        }
        self.policy_map()?.insert(&k, entry, 0).with_context(|| format!("writing into {}", names::POLICY4))
    }

    /// Every (prefix length, key) in POLICY4.
    pub fn policy_keys4(&mut self) -> Result<Vec<(u32, PolicyKey4)>> {
        Ok(self.policy_map()?.keys().filter_map(Result::ok).map(|k| (k.prefix_len(), k.data())).collect())
    }

    /// Forgets socket-level translations made for these mappings.
    pub fn sock_revnat_remove(&mut self, mapping_ids: &[u32]) -> Result<()> {
        let mut map = self.sock_revnat_map()?;
        let keys: Vec<SockRevNatKey4> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| mapping_ids.contains(&v.mapping_id))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            ignore_missing(map.remove(&k))?;
        }
        Ok(())
    }

    /// Takes the event ring buffer out of the object, for the agent's reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("map {} missing", names::EVENTS))?;
        let summary = self.summarize(names::EVENTS, &map, 0)?;
        self.taken.push(summary);
        Ok(RingBuf::try_from(map)?)
    }

    /// Every map with its fill level (hash maps counted in batches).
    pub fn map_summaries(&mut self) -> Result<Vec<MapSummary>> {
        let counts = [
            (names::CONTAINERS, self.count_hash(names::CONTAINERS)?),
            (names::IFACE_STATS, self.stats_map()?.keys().count() as u64),
            (names::MAPPINGS4, self.count_hash(names::MAPPINGS4)?),
            (names::HOST_ADDRS4, self.count_hash(names::HOST_ADDRS4)?),
            (names::CT4, self.count_hash(names::CT4)?),
            (names::CT_STATS, 1),
            (names::SOCK_REVNAT4, self.count_hash(names::SOCK_REVNAT4)?),
            (names::CONFIG, 1),
            (names::POLICY4, self.policy_map()?.keys().count() as u64),
            (names::FRAGS4, self.count_hash(names::FRAGS4)?),
            (names::CONTAINER_IPS4, self.count_hash(names::CONTAINER_IPS4)?),
            (names::FORWARD_STATS, 1),
        ];
        let mut out = vec![];
        for (name, entries) in counts {
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
            out.push(self.summarize(name, map, entries)?);
        }
        out.extend(self.taken.iter().cloned());
        Ok(out)
    }

    /// Entries of a (non-per-CPU) hash map, counted in batches.
    fn count_hash(&self, name: &str) -> Result<u64> {
        let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
        let data = map_data(map)?;
        let info = data.info()?;
        super::batch::count(data.fd().as_fd(), info.key_size() as usize, info.value_size() as usize)
            .with_context(|| format!("counting the entries of {name}"))
    }

    fn summarize(&self, name: &str, map: &Map, entries: u64) -> Result<MapSummary> {
        let data = map_data(map)?;
        let info = data.info()?;
        let memory_bytes = memlock(data.fd().as_fd()).unwrap_or(0);
        Ok(MapSummary {
            name: name.to_string(),
            id: info.id(),
            kind: format!("{:?}", info.map_type()?),
            entries,
            max_entries: info.max_entries(),
            pin: self.pin_dir.join("maps").join(name).display().to_string(),
            memory_bytes,
        })
    }

    pub fn program_summaries(&self) -> Result<Vec<ProgramSummary>> {
        let mut out = vec![];
        for (name, prog) in self.ebpf.programs() {
            let info = prog.info()?;
            let kind = match prog {
                Program::SchedClassifier(_) => "tc",
                Program::Xdp(_) => "xdp",
                Program::CgroupSockAddr(_) => "cgroup_sock_addr",
                _ => "other",
            };
            out.push(ProgramSummary { name: name.to_string(), id: info.id(), kind: kind.into() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn map_data(map: &Map) -> Result<&MapData> {
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

/// A key that is already gone is no error: removal is idempotent.
pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(SyscallError { io_error, .. })) if io_error.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// A BPF object's kernel memory, from the `memlock:` line of its fdinfo.
fn memlock(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}
