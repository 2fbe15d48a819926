//! Typed access to each map, and summaries of maps and programs for status.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, HashMap as BpfHashMap, Map, MapData, MapError, MapType, PerCpuArray, PerCpuValues, RingBuf,
    },
    programs::Program,
    sys::SyscallError,
};
use netpath_common::{
    family::AddrFamily,
    maps as names, owner,
    stats::IFACE_SLOT_FIRST_CONTAINER,
    uplink_guard::{GuardedPorts, GUARDED_PORT_WORDS},
    ContainerEntry, CtEntry, CtEntry4, CtKey, CtKey4, DatapathConfig, ForwardStats, FragEntry, FragEntry4, FragEntry6,
    FragKey, FragKey4, FragKey6, HostAddr, In6Addr, MappingEntry, MappingEntry4, MappingEntry6, MappingKey,
    MappingKey4, MappingKey6, PolicyEntry, PolicyKey, PolicyKey4, PolicyKey6, TrafficStats,
};

use super::Datapath;
use crate::route_mtu::RouteMtuEntry;

/// One map as `status` shows it.
#[derive(Clone, Debug)]
pub struct MapSummary {
    pub name: String,
    pub id: u32,
    pub kind: String,
    pub entries: u64,
    pub max_entries: u32,
    pub pin: String,
    /// The kernel's `memlock` accounting of the map, bytes: what it uses
    /// now for a map allocated as it fills (an LPM trie, a hash without
    /// preallocation), its preallocated size for the others.
    pub memory_bytes: u64,
    /// Allocated as it fills: `memory_bytes` is read again each time.
    pub grows: bool,
    /// None: `entries` is what the agent wrote. Some: the map is filled by
    /// the datapath too, and `entries` is the GC's count this long ago.
    pub counted_ms_ago: Option<u64>,
}

/// Keys of the maps only the agent writes, kept as it writes them, so that
/// `status` reads their fill levels without walking them.
#[derive(Default)]
pub struct Written {
    containers: HashSet<u32>,
    /// Mapping ids by how many entries (MAPPINGS4, MAPPINGS6) carry them:
    /// the live slots of MAPPING_IDS (a mapping on both families has two).
    mapping_ids: HashMap<u32, u32>,
    family4: WrittenFamily<[u8; 4]>,
    family6: WrittenFamily<In6Addr>,
    /// Bitmap words of GUARDED_PORTS that are not zero.
    guarded_words: usize,
    /// (prefix length, address) in DENIED_SOURCES4.
    denied_sources: HashSet<(u32, [u8; 4])>,
    /// Entries of ROUTE_MTUS4.
    route_mtus: usize,
}

impl Written {
    /// A mapping entry's id changed from `old` to `new` (None: no entry).
    fn note_mapping_id(&mut self, old: Option<u32>, new: Option<u32>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            if let Some(n) = self.mapping_ids.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.mapping_ids.remove(&old);
                }
            }
        }
        if let Some(new) = new {
            *self.mapping_ids.entry(new).or_default() += 1;
        }
    }
}

/// What the agent wrote into one family's host address, policy and
/// mapping maps.
#[derive(Default)]
pub struct WrittenFamily<A> {
    host_addrs: HashSet<A>,
    /// CONTAINER_IPS4/CONTAINER_IPS6: the containers' addresses.
    container_ips: HashSet<A>,
    policy: HashSet<(u32, PolicyKey<A>)>,
    /// MAPPINGS4/MAPPINGS6: the keys, with the id of their entry.
    mappings: HashMap<MappingKey<A>, u32>,
}

/// The maps of one address family, by name: the family-generic accessors
/// below (`ct_entries_of`, `set_policy`, ...) pick them through here, and the
/// `…4`/`…6` methods are their instances.
pub trait FamilyMaps: AddrFamily + aya::Pod {
    const MAPPINGS: &'static str;
    const CT: &'static str;
    const HOST_ADDRS: &'static str;
    const POLICY: &'static str;
    const FRAGS: &'static str;
    const CONTAINER_IPS: &'static str;

    #[doc(hidden)]
    fn written(w: &mut Written) -> &mut WrittenFamily<Self>;
}

impl FamilyMaps for [u8; 4] {
    const MAPPINGS: &'static str = names::MAPPINGS4;
    const CT: &'static str = names::CT4;
    const HOST_ADDRS: &'static str = names::HOST_ADDRS4;
    const POLICY: &'static str = names::POLICY4;
    const FRAGS: &'static str = names::FRAGS4;
    const CONTAINER_IPS: &'static str = names::CONTAINER_IPS4;

    fn written(w: &mut Written) -> &mut WrittenFamily<Self> {
        &mut w.family4
    }
}

impl FamilyMaps for In6Addr {
    const MAPPINGS: &'static str = names::MAPPINGS6;
    const CT: &'static str = names::CT6;
    const HOST_ADDRS: &'static str = names::HOST_ADDRS6;
    const POLICY: &'static str = names::POLICY6;
    const FRAGS: &'static str = names::FRAGS6;
    const CONTAINER_IPS: &'static str = names::CONTAINER_IPS6;

    fn written(w: &mut Written) -> &mut WrittenFamily<Self> {
        &mut w.family6
    }
}

/// The ids live in the owner tables (MAPPING_IDS, CONTAINER_IDS).
#[derive(Clone, Debug, Default)]
pub struct LiveOwners {
    pub mappings: HashSet<u32>,
    pub containers: HashSet<u32>,
}

impl LiveOwners {
    /// Are the owners of `entry` still there? See netpath_common::owner.
    pub fn owns<A>(&self, entry: &CtEntry<A>) -> bool {
        (entry.mapping_id == 0 || self.mappings.contains(&entry.mapping_id))
            && (entry.container_id == 0 || self.containers.contains(&entry.container_id))
    }
}

/// The non-zero ids of an owner table (one batched read).
pub(super) fn live_ids(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<HashSet<u32>> {
    Ok(super::batch::entries::<u32, u32>(fd)?.into_iter().map(|(_, id)| id).filter(|id| *id != 0).collect())
}

/// Fill levels of the maps the datapath fills, as the GC last counted them.
#[derive(Clone, Debug, Default)]
pub(super) struct Fills {
    pub at: Option<Instant>,
    pub entries: Vec<(&'static str, u64)>,
}

impl Fills {
    fn entries(&self, name: &str) -> u64 {
        self.entries.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c)
    }
}

pub(super) type SharedFills = Arc<Mutex<Fills>>;

/// Counts the maps the datapath fills (batched walks), on the GC's thread.
pub struct FillCounter {
    maps: Vec<(&'static str, MapData)>,
    fills: SharedFills,
}

impl FillCounter {
    /// Counts every map but the conntrack tables, whose counts `ct_entries`
    /// (by map name) the GC's walk gives, and records them for `status` as counted at `since`, the
    /// start of that walk: every change made before it is in the counts (a
    /// map removal landing while a count runs would otherwise pass for
    /// counted when it may not be).
    pub fn record(&self, ct_entries: &[(&str, u64)], since: Instant) -> Result<()> {
        let mut entries = vec![];
        for (name, data) in &self.maps {
            let n = match ct_entries.iter().find(|(ct, _)| ct == name) {
                Some((_, n)) => *n,
                None => count(data).with_context(|| format!("counting {name}"))?,
            };
            entries.push((*name, n));
        }
        if let Ok(mut fills) = self.fills.lock() {
            *fills = Fills { at: Some(since), entries };
        }
        Ok(())
    }
}

/// Entries of a hash map, counted in batches (per-CPU values are one per
/// possible CPU, each rounded up to 8 bytes).
fn count(data: &MapData) -> Result<u64> {
    let info = data.info()?;
    let mut value_size = info.value_size() as usize;
    if matches!(info.map_type()?, MapType::PerCpuHash | MapType::LruPerCpuHash) {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        value_size = value_size.div_ceil(8) * 8 * cpus;
    }
    Ok(super::batch::count(data.fd().as_fd(), info.key_size() as usize, value_size)?)
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

    pub(super) fn stats_map(&mut self) -> Result<PerCpuArray<&mut MapData, TrafficStats>> {
        Ok(PerCpuArray::try_from(self.map_mut(names::IFACE_STATS)?)?)
    }

    /// The published ports of family `A` (MAPPINGS4, MAPPINGS6).
    fn mappings_map<A: FamilyMaps>(&mut self) -> Result<BpfHashMap<&mut MapData, MappingKey<A>, MappingEntry<A>>>
    where
        MappingKey<A>: aya::Pod,
        MappingEntry<A>: aya::Pod,
    {
        Ok(BpfHashMap::try_from(self.map_mut(A::MAPPINGS)?)?)
    }

    fn host_addrs_map<A: FamilyMaps>(&mut self) -> Result<BpfHashMap<&mut MapData, A, HostAddr>> {
        Ok(BpfHashMap::try_from(self.map_mut(A::HOST_ADDRS)?)?)
    }

    pub(super) fn ct_map(&mut self) -> Result<BpfHashMap<&mut MapData, CtKey4, CtEntry4>> {
        self.ct_map_of()
    }

    /// The conntrack table of family `A` (CT4, CT6).
    pub(super) fn ct_map_of<A: FamilyMaps>(&mut self) -> Result<BpfHashMap<&mut MapData, CtKey<A>, CtEntry<A>>>
    where
        CtKey<A>: aya::Pod,
        CtEntry<A>: aya::Pod,
    {
        Ok(BpfHashMap::try_from(self.map_mut(A::CT)?)?)
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

    /// [`Datapath::frag_get4`] for IPv6 (FRAGS6).
    pub fn frag_get6(&self, key: &FragKey6) -> Result<Option<FragEntry6>> {
        self.get_one(names::FRAGS6, key)
    }

    /// Deletes the recorded first fragments `pred` selects; returns how many.
    pub fn frags_remove_where4(&mut self, pred: impl FnMut(&FragKey4, &FragEntry4) -> bool) -> Result<usize> {
        self.frags_remove_where(pred)
    }

    /// [`Datapath::frags_remove_where4`] for IPv6 (FRAGS6).
    pub fn frags_remove_where6(&mut self, pred: impl FnMut(&FragKey6, &FragEntry6) -> bool) -> Result<usize> {
        self.frags_remove_where(pred)
    }

    fn frags_remove_where<A: FamilyMaps>(
        &mut self,
        mut pred: impl FnMut(&FragKey<A>, &FragEntry<A>) -> bool,
    ) -> Result<usize>
    where
        FragKey<A>: aya::Pod,
        FragEntry<A>: aya::Pod,
    {
        let mut map: BpfHashMap<&mut MapData, FragKey<A>, FragEntry<A>> =
            BpfHashMap::try_from(self.map_mut(A::FRAGS)?)?;
        let doomed: Vec<FragKey<A>> =
            map.iter().filter_map(|item| item.ok()).filter(|(k, e)| pred(k, e)).map(|(k, _)| k).collect();
        let mut removed = 0;
        for key in doomed {
            match map.remove(&key) {
                Ok(()) => removed += 1,
                // Expired and evicted meanwhile (LRU): gone either way.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting from {}", A::FRAGS)),
            }
        }
        Ok(removed)
    }

    fn policy_map<A: FamilyMaps>(&mut self) -> Result<LpmTrie<&mut MapData, PolicyKey<A>, PolicyEntry>>
    where
        PolicyKey<A>: aya::Pod,
    {
        Ok(LpmTrie::try_from(self.map_mut(A::POLICY)?)?)
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

    fn container_ips_map<A: FamilyMaps>(&mut self) -> Result<BpfHashMap<&mut MapData, A, u32>> {
        Ok(BpfHashMap::try_from(self.map_mut(A::CONTAINER_IPS)?)?)
    }

    /// Writes a container's entry and its address index (the fast path
    /// finds containers by address). Its id becomes live in its owner slot
    /// first (flows the datapath tracks for it carry the id), and an id the
    /// entry replaces goes out of it; the entry goes before the index, so
    /// that an address never points at an interface without one.
    pub fn set_container(&mut self, ifindex: u32, entry: &ContainerEntry) -> Result<()> {
        let old: Option<ContainerEntry> = self.get_one(names::CONTAINERS, &ifindex)?;
        self.set_owner(names::CONTAINER_IDS, entry.id)?;
        self.containers_map()?
            .insert(ifindex, entry, 0)
            .with_context(|| format!("writing the container of ifindex {ifindex} into {}", names::CONTAINERS))?;
        let (ip4, ip6) = (entry.has_ipv4().then_some(entry.ipv4), entry.has_ipv6().then_some(entry.ipv6));
        if let Some(ip) = ip4 {
            self.set_container_ip(ip, ifindex)?;
        }
        if let Some(ip) = ip6 {
            self.set_container_ip(ip, ifindex)?;
        }
        if let Some(moved) = old.filter(|o| o.has_ipv4() && Some(o.ipv4) != ip4) {
            self.remove_container_ip(moved.ipv4, ifindex)?;
        }
        if let Some(moved) = old.filter(|o| o.has_ipv6() && Some(o.ipv6) != ip6) {
            self.remove_container_ip(moved.ipv6, ifindex)?;
        }
        if let Some(old) = old.filter(|o| o.id != entry.id) {
            self.clear_owner(names::CONTAINER_IDS, old.id)?;
        }
        self.written.containers.insert(ifindex);
        Ok(())
    }

    /// Removes a container's entry and its address index (the index
    /// first); its id leaves its owner slot, which makes every flow it owns
    /// stale at once (see netpath_common::owner).
    pub fn remove_container(&mut self, ifindex: u32) -> Result<()> {
        let old: Option<ContainerEntry> = self.get_one(names::CONTAINERS, &ifindex)?;
        if let Some(old) = old.filter(ContainerEntry::has_ipv4) {
            self.remove_container_ip(old.ipv4, ifindex)?;
        }
        if let Some(old) = old.filter(ContainerEntry::has_ipv6) {
            self.remove_container_ip(old.ipv6, ifindex)?;
        }
        ignore_missing(self.containers_map()?.remove(&ifindex))
            .with_context(|| format!("removing the container of ifindex {ifindex}"))?;
        if let Some(old) = old {
            self.clear_owner(names::CONTAINER_IDS, old.id)?;
        }
        self.written.containers.remove(&ifindex);
        Ok(())
    }

    /// Drops an address from the index, if it still points at `ifindex`
    /// (the address may have moved on to another container).
    fn remove_container_ip<A: FamilyMaps>(&mut self, addr: A, ifindex: u32) -> Result<()> {
        let mut ips = self.container_ips_map::<A>()?;
        if ips.get(&addr, 0).ok() == Some(ifindex) {
            ignore_missing(ips.remove(&addr))
                .with_context(|| format!("removing ifindex {ifindex} from {}", A::CONTAINER_IPS))?;
            A::written(&mut self.written).container_ips.remove(&addr);
        }
        Ok(())
    }

    /// Points a container's address at its interface in the family's index.
    fn set_container_ip<A: FamilyMaps>(&mut self, addr: A, ifindex: u32) -> Result<()> {
        self.container_ips_map::<A>()?
            .insert(addr, ifindex, 0)
            .with_context(|| format!("writing ifindex {ifindex} into {}", A::CONTAINER_IPS))?;
        A::written(&mut self.written).container_ips.insert(addr);
        Ok(())
    }

    /// Takes a container's id out of its owner slot (its flows go stale).
    pub fn retire_container(&mut self, id: u32) -> Result<()> {
        self.clear_owner(names::CONTAINER_IDS, id)
    }

    /// The CONTAINERS entry of a host-side veth, if any.
    pub fn container(&self, ifindex: u32) -> Result<Option<ContainerEntry>> {
        self.get_one(names::CONTAINERS, &ifindex)
    }

    fn owner_array(&mut self, name: &str) -> Result<Array<&mut MapData, u32>> {
        Ok(Array::try_from(self.map_mut(name)?)?)
    }

    /// Makes `id` the live owner of its slot in `table`.
    fn set_owner(&mut self, table: &str, id: u32) -> Result<()> {
        self.owner_array(table)?.set(owner::slot(id), id, 0).with_context(|| format!("writing id {id} into {table}"))
    }

    /// Takes `id` out of its slot in `table`, if it is the one there.
    fn clear_owner(&mut self, table: &str, id: u32) -> Result<()> {
        let mut arr = self.owner_array(table)?;
        let slot = owner::slot(id);
        if arr.get(&slot, 0).with_context(|| format!("reading {table}"))? == id {
            arr.set(slot, 0, 0).with_context(|| format!("clearing id {id} from {table}"))?;
        }
        Ok(())
    }

    /// The live owners of both tables, read in two batched calls.
    pub fn live_owners(&self) -> Result<LiveOwners> {
        let read = |name: &str| -> Result<HashSet<u32>> {
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
            live_ids(map_data(map)?.fd().as_fd()).with_context(|| format!("reading {name}"))
        };
        Ok(LiveOwners { mappings: read(names::MAPPING_IDS)?, containers: read(names::CONTAINER_IDS)? })
    }

    /// Clears every owner slot whose id is not among `mappings` or
    /// `containers` (at start: owners removed while the agent was away, or
    /// left by an interrupted removal).
    pub fn retain_owners(&mut self, mappings: &HashSet<u32>, containers: &HashSet<u32>) -> Result<usize> {
        let live = self.live_owners()?;
        let mut cleared = 0;
        for (table, held, wanted) in
            [(names::MAPPING_IDS, &live.mappings, mappings), (names::CONTAINER_IDS, &live.containers, containers)]
        {
            for id in held.difference(wanted) {
                self.clear_owner(table, *id)?;
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    /// The fast path's redirect and fallback counters, summed over CPUs.
    /// Drop events the datapath held back under floods (all CPUs).
    pub fn suppressed_events(&mut self) -> Result<u64> {
        let map: PerCpuArray<&mut MapData, netpath_common::EventBudget> =
            PerCpuArray::try_from(self.map_mut(names::EVENT_BUDGET)?)?;
        let mut total = netpath_common::EventBudget::default();
        for v in map.get(&0, 0)?.iter() {
            total.merge(v);
        }
        Ok(total.suppressed)
    }

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

    /// Starts the counters of an interface slot (`IFACE_SLOT_*`,
    /// `ContainerEntry::stats_slot`) at zero.
    pub fn reset_stats(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let values = PerCpuValues::try_from(vec![TrafficStats::default(); cpus])?;
        self.stats_map()?.set(slot, values, 0).with_context(|| format!("resetting the counters of slot {slot}"))
    }

    /// The counters of an interface slot, summed over CPUs.
    pub fn stats(&mut self, slot: u32) -> Result<TrafficStats> {
        let mut total = TrafficStats::default();
        let per_cpu =
            self.stats_map()?.get(&slot, 0).with_context(|| format!("reading the counters of slot {slot}"))?;
        per_cpu.iter().for_each(|s| total.merge(s));
        Ok(total)
    }

    /// Publishes a port (MAPPINGS4 or MAPPINGS6, by the key's family): the
    /// mapping's id becomes live in its owner slot first (new flows carry
    /// it), then the entry is written; the id of a mapping it replaces
    /// leaves its slot (unless its entry of the other family still carries
    /// it), which cuts that mapping's flows (their next packet follows the
    /// new entry).
    pub fn set_mapping<A: FamilyMaps>(&mut self, key: &MappingKey<A>, entry: &MappingEntry<A>) -> Result<()>
    where
        MappingKey<A>: aya::Pod,
        MappingEntry<A>: aya::Pod,
    {
        let old: Option<MappingEntry<A>> = self.get_one(A::MAPPINGS, key)?;
        self.set_owner(names::MAPPING_IDS, entry.id)?;
        let inserted = self.mappings_map::<A>().and_then(|mut map| Ok(map.insert(key, entry, 0)?));
        if let Err(e) = inserted {
            // The slot goes back as it was, unless an entry carries the id.
            if old.is_none_or(|o| o.id != entry.id) {
                let _ = self.retire_mapping_id(entry.id);
            }
            return Err(e.context(format!("writing into {}", A::MAPPINGS)));
        }
        let replaced = A::written(&mut self.written).mappings.insert(*key, entry.id);
        self.written.note_mapping_id(replaced, Some(entry.id));
        if let Some(old) = old.filter(|o| o.id != entry.id) {
            self.retire_mapping_id(old.id)?;
        }
        Ok(())
    }

    /// Unpublishes a port: the entry goes, then the mapping's id leaves its
    /// owner slot, which makes all its tracked flows stale at once (O(1),
    /// whatever the table holds; see netpath_common::owner). A mapping on
    /// both families keeps its slot until its last entry goes.
    pub fn remove_mapping<A: FamilyMaps>(&mut self, key: &MappingKey<A>) -> Result<()>
    where
        MappingKey<A>: aya::Pod,
        MappingEntry<A>: aya::Pod,
    {
        let old: Option<MappingEntry<A>> = self.get_one(A::MAPPINGS, key)?;
        ignore_missing(self.mappings_map::<A>()?.remove(key))
            .with_context(|| format!("removing from {}", A::MAPPINGS))?;
        let removed = A::written(&mut self.written).mappings.remove(key);
        self.written.note_mapping_id(removed, None);
        if let Some(old) = old {
            self.retire_mapping_id(old.id)?;
        }
        Ok(())
    }

    /// Clears a mapping id's owner slot once no entry of either family
    /// carries it.
    fn retire_mapping_id(&mut self, id: u32) -> Result<()> {
        if self.written.mapping_ids.contains_key(&id) {
            return Ok(());
        }
        self.clear_owner(names::MAPPING_IDS, id)
    }

    /// Every entry of MAPPINGS4.
    pub fn mapping_entries(&mut self) -> Result<Vec<(MappingKey4, MappingEntry4)>> {
        self.mapping_entries_of()
    }

    /// Every entry of MAPPINGS6.
    pub fn mapping_entries6(&mut self) -> Result<Vec<(MappingKey6, MappingEntry6)>> {
        self.mapping_entries_of()
    }

    /// Every entry of the published ports of family `A`.
    pub fn mapping_entries_of<A: FamilyMaps>(&mut self) -> Result<Vec<(MappingKey<A>, MappingEntry<A>)>>
    where
        MappingKey<A>: aya::Pod,
        MappingEntry<A>: aya::Pod,
    {
        self.mappings_map::<A>()?.iter().map(|r| r.map_err(Into::into)).collect()
    }

    /// Makes HOST_ADDRS4 hold exactly `addrs` (address, ifindex).
    pub fn sync_host_addrs4(&mut self, addrs: &[([u8; 4], u32)]) -> Result<()> {
        self.sync_host_addrs(addrs)
    }

    /// Makes HOST_ADDRS6 hold exactly `addrs` (address, ifindex).
    pub fn sync_host_addrs6(&mut self, addrs: &[(In6Addr, u32)]) -> Result<()> {
        self.sync_host_addrs(addrs)
    }

    fn sync_host_addrs<A: FamilyMaps>(&mut self, addrs: &[(A, u32)]) -> Result<()> {
        let mut map = self.host_addrs_map::<A>()?;
        let existing: Vec<A> = map.keys().collect::<Result<_, _>>()?;
        for old in existing {
            if !addrs.iter().any(|(a, _)| *a == old) {
                ignore_missing(map.remove(&old)).with_context(|| format!("removing from {}", A::HOST_ADDRS))?;
            }
        }
        for (addr, ifindex) in addrs {
            if map.get(addr, 0).ok() != Some(HostAddr { ifindex: *ifindex }) {
                map.insert(addr, HostAddr { ifindex: *ifindex }, 0)
                    .with_context(|| format!("writing into {}", A::HOST_ADDRS))?;
            }
        }
        A::written(&mut self.written).host_addrs = addrs.iter().map(|(a, _)| *a).collect();
        Ok(())
    }

    /// Writes the compiled rules of one prefix (a container, a direction and
    /// a CIDR); an empty entry removes the prefix.
    pub fn set_policy4(&mut self, prefix_len: u32, key: &PolicyKey4, entry: &PolicyEntry) -> Result<()> {
        self.set_policy(prefix_len, key, entry)
    }

    /// [`Datapath::set_policy4`] for IPv6 (POLICY6).
    pub fn set_policy6(&mut self, prefix_len: u32, key: &PolicyKey6, entry: &PolicyEntry) -> Result<()> {
        self.set_policy(prefix_len, key, entry)
    }

    /// Prefixes written into POLICY4 (`v6` false) or POLICY6.
    pub fn policy_prefixes(&self, v6: bool) -> usize {
        if v6 {
            self.written.family6.policy.len()
        } else {
            self.written.family4.policy.len()
        }
    }

    /// [`Datapath::set_policy4`] for either family.
    pub fn set_policy<A: FamilyMaps>(&mut self, prefix_len: u32, key: &PolicyKey<A>, entry: &PolicyEntry) -> Result<()>
    where
        PolicyKey<A>: aya::Pod,
    {
        let k = LpmKey::new(prefix_len, *key);
        if entry.count == 0 {
            ignore_missing(self.policy_map::<A>()?.remove(&k))
                .with_context(|| format!("removing from {}", A::POLICY))?;
            A::written(&mut self.written).policy.remove(&(prefix_len, *key));
            return Ok(());
        }
        self.policy_map::<A>()?.insert(&k, entry, 0).with_context(|| format!("writing into {}", A::POLICY))?;
        A::written(&mut self.written).policy.insert((prefix_len, *key));
        Ok(())
    }

    fn guarded_ports_map(&mut self) -> Result<Array<&mut MapData, u64>> {
        Ok(Array::try_from(self.map_mut(names::GUARDED_PORTS)?)?)
    }

    fn denied_sources_map(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 4], u32>> {
        Ok(LpmTrie::try_from(self.map_mut(names::DENIED_SOURCES4)?)?)
    }

    /// Makes GUARDED_PORTS hold exactly `ports`' bitmap, writing only the
    /// words that differ.
    pub fn write_guarded_ports(&mut self, ports: &GuardedPorts) -> Result<()> {
        let mut map = self.guarded_ports_map()?;
        for (i, want) in ports.words.iter().enumerate() {
            let i = i as u32;
            if map.get(&i, 0).with_context(|| format!("reading {}", names::GUARDED_PORTS))? != *want {
                map.set(i, *want, 0).with_context(|| format!("writing into {}", names::GUARDED_PORTS))?;
            }
        }
        self.written.guarded_words = ports.used_words();
        Ok(())
    }

    /// The bitmap GUARDED_PORTS holds.
    pub fn guarded_ports(&mut self) -> Result<GuardedPorts> {
        let map = self.guarded_ports_map()?;
        let mut out = GuardedPorts::default();
        for i in 0..GUARDED_PORT_WORDS {
            out.words[i as usize] = map.get(&i, 0)?;
        }
        Ok(out)
    }

    /// Makes DENIED_SOURCES4 hold exactly `prefixes` (prefix length,
    /// network address).
    pub fn sync_denied_sources4(&mut self, prefixes: &[(u32, [u8; 4])]) -> Result<()> {
        let mut map = self.denied_sources_map()?;
        let existing: Vec<(u32, [u8; 4])> =
            map.keys().map(|k| k.map(|k| (k.prefix_len(), k.data()))).collect::<Result<_, _>>()?;
        for old in existing {
            if !prefixes.contains(&old) {
                ignore_missing(map.remove(&LpmKey::new(old.0, old.1)))
                    .with_context(|| format!("removing from {}", names::DENIED_SOURCES4))?;
            }
        }
        for (len, addr) in prefixes {
            map.insert(&LpmKey::new(*len, *addr), *len, 0)
                .with_context(|| format!("writing into {}", names::DENIED_SOURCES4))?;
        }
        self.written.denied_sources = prefixes.iter().copied().collect();
        Ok(())
    }

    fn route_mtus_map(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 4], u32>> {
        Ok(LpmTrie::try_from(self.map_mut(names::ROUTE_MTUS4)?)?)
    }

    /// Makes ROUTE_MTUS4 hold exactly `entries` (prefix length, network
    /// address, MTU), writing only what differs.
    pub fn sync_route_mtus4(&mut self, entries: &[RouteMtuEntry]) -> Result<()> {
        let existing = self.route_mtus4()?;
        let mut map = self.route_mtus_map()?;
        for (len, addr, _) in &existing {
            if !entries.iter().any(|(l, a, _)| (l, a) == (len, addr)) {
                ignore_missing(map.remove(&LpmKey::new(*len, *addr)))
                    .with_context(|| format!("removing from {}", names::ROUTE_MTUS4))?;
            }
        }
        for entry @ (len, addr, mtu) in entries {
            if !existing.contains(entry) {
                map.insert(&LpmKey::new(*len, *addr), *mtu, 0)
                    .with_context(|| format!("writing into {}", names::ROUTE_MTUS4))?;
            }
        }
        self.written.route_mtus = entries.len();
        Ok(())
    }

    /// Every (prefix length, address, MTU) in ROUTE_MTUS4.
    pub fn route_mtus4(&mut self) -> Result<Vec<RouteMtuEntry>> {
        let map = self.route_mtus_map()?;
        let keys: Vec<LpmKey<[u8; 4]>> = map.keys().collect::<Result<_, _>>()?;
        keys.into_iter().map(|k| Ok((k.prefix_len(), k.data(), map.get(&k, 0)?))).collect()
    }

    /// Every (prefix length, address) in DENIED_SOURCES4.
    pub fn denied_sources4(&mut self) -> Result<Vec<(u32, [u8; 4])>> {
        Ok(self.denied_sources_map()?.keys().filter_map(Result::ok).map(|k| (k.prefix_len(), k.data())).collect())
    }

    /// Every (prefix length, key) in POLICY4.
    pub fn policy_keys4(&mut self) -> Result<Vec<(u32, PolicyKey4)>> {
        self.policy_keys()
    }

    /// Every (prefix length, key) in POLICY6.
    pub fn policy_keys6(&mut self) -> Result<Vec<(u32, PolicyKey6)>> {
        self.policy_keys()
    }

    /// Every (prefix length, key) in the policy trie of family `A`.
    pub fn policy_keys<A: FamilyMaps>(&mut self) -> Result<Vec<(u32, PolicyKey<A>)>>
    where
        PolicyKey<A>: aya::Pod,
    {
        Ok(self.policy_map::<A>()?.keys().filter_map(Result::ok).map(|k| (k.prefix_len(), k.data())).collect())
    }

    /// Takes the event ring buffer out of the object, for the agent's reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("map {} missing", names::EVENTS))?;
        let summary = self.summarize(names::EVENTS, &map, 0)?;
        self.taken.push(summary);
        Ok(RingBuf::try_from(map)?)
    }

    /// Every map with its fill level, without walking any: the maps only
    /// the agent writes by what it wrote, the ones the datapath fills too
    /// (conntrack, fragments, socket translations, counters) by the GC's
    /// last count, with its age.
    pub fn map_summaries(&mut self) -> Result<Vec<MapSummary>> {
        let counted = self.fills.lock().map(|f| f.clone()).unwrap_or_default();
        let age_ms = counted.at.map(|at| at.elapsed().as_millis() as u64);
        let of_gc = |name: &str| (counted.entries(name), age_ms);
        let owners = |n: usize| (n as u64, None);
        let counts = [
            (names::CONTAINERS, owners(self.written.containers.len())),
            // Slots in use: the containers', the uplink's and the unattributed one.
            (names::IFACE_STATS, owners(self.written.containers.len() + IFACE_SLOT_FIRST_CONTAINER as usize)),
            (names::MAPPINGS4, owners(self.written.family4.mappings.len())),
            (names::HOST_ADDRS4, owners(self.written.family4.host_addrs.len())),
            (names::CT4, of_gc(names::CT4)),
            (names::CT_STATS, (1, None)),
            (names::SOCK_REVNAT4, of_gc(names::SOCK_REVNAT4)),
            (names::CONFIG, (1, None)),
            (names::POLICY4, owners(self.written.family4.policy.len())),
            (names::FRAGS4, of_gc(names::FRAGS4)),
            (names::CONTAINER_IPS4, owners(self.written.family4.container_ips.len())),
            (names::FORWARD_STATS, (1, None)),
            // One slot per live owner.
            (names::MAPPING_IDS, owners(self.written.mapping_ids.len())),
            (names::CONTAINER_IDS, owners(self.written.containers.len())),
            (names::EVENT_BUDGET, (1, None)),
            (names::GUARDED_PORTS, owners(self.written.guarded_words)),
            (names::DENIED_SOURCES4, owners(self.written.denied_sources.len())),
            (names::ROUTE_MTUS4, owners(self.written.route_mtus)),
            (names::CT6, of_gc(names::CT6)),
            (names::HOST_ADDRS6, owners(self.written.family6.host_addrs.len())),
            (names::POLICY6, owners(self.written.family6.policy.len())),
            (names::FRAGS6, of_gc(names::FRAGS6)),
            (names::MAPPINGS6, owners(self.written.family6.mappings.len())),
            (names::SOCK_REVNAT6, of_gc(names::SOCK_REVNAT6)),
            (names::CONTAINER_IPS6, owners(self.written.family6.container_ips.len())),
        ];
        let mut out = vec![];
        for (name, (entries, counted_ms_ago)) in counts {
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
            out.push(MapSummary { counted_ms_ago, ..self.summarize(name, map, entries)? });
        }
        out.extend(self.taken.iter().cloned());
        Ok(out)
    }

    /// What the agent-written maps hold, read once when the datapath is
    /// loaded (pins adopted from a previous run); kept as it writes after.
    pub(super) fn read_written(&mut self) -> Result<()> {
        let containers = self.containers_map()?.keys().collect::<Result<_, _>>()?;
        let family4 = WrittenFamily {
            host_addrs: self.host_addrs_map::<[u8; 4]>()?.keys().collect::<Result<_, _>>()?,
            container_ips: self.container_ips_map::<[u8; 4]>()?.keys().collect::<Result<_, _>>()?,
            policy: self.policy_keys4()?.into_iter().collect(),
            mappings: self.mapping_entries()?.into_iter().map(|(k, e)| (k, e.id)).collect(),
        };
        let family6 = WrittenFamily {
            host_addrs: self.host_addrs_map::<In6Addr>()?.keys().collect::<Result<_, _>>()?,
            container_ips: self.container_ips_map::<In6Addr>()?.keys().collect::<Result<_, _>>()?,
            policy: self.policy_keys6()?.into_iter().collect(),
            mappings: self.mapping_entries6()?.into_iter().map(|(k, e)| (k, e.id)).collect(),
        };
        let guarded_words = self.guarded_ports()?.used_words();
        let denied_sources = self.denied_sources4()?.into_iter().collect();
        let route_mtus = self.route_mtus4()?.len();
        let mut written = Written {
            containers,
            mapping_ids: HashMap::new(),
            family4,
            family6,
            guarded_words,
            denied_sources,
            route_mtus,
        };
        let ids: Vec<u32> =
            written.family4.mappings.values().chain(written.family6.mappings.values()).copied().collect();
        for id in ids {
            written.note_mapping_id(None, Some(id));
        }
        self.written = written;
        Ok(())
    }

    /// Handles of their own on the maps the datapath fills, for counting
    /// beside the agent (the GC's thread).
    pub(super) fn fill_counter(&self) -> Result<FillCounter> {
        let mut maps = vec![];
        for name in [names::CT4, names::CT6, names::FRAGS4, names::FRAGS6, names::SOCK_REVNAT4, names::SOCK_REVNAT6] {
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
            let fd = map_data(map)?.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating {name}"))?;
            maps.push((name, MapData::from_fd(fd).with_context(|| format!("opening {name}"))?));
        }
        Ok(FillCounter { maps, fills: self.fills.clone() })
    }

    fn summarize(&self, name: &str, map: &Map, entries: u64) -> Result<MapSummary> {
        // What a map is does not change while it lives: read once (a status
        // or scrape would otherwise cost two syscalls and a procfs read per
        // map, under the agent's lock).
        if let Some(known) = self.summary_cache.lock().ok().and_then(|c| c.get(name).cloned()) {
            let memory_bytes =
                if known.grows { memlock(map_data(map)?.fd().as_fd()).unwrap_or(0) } else { known.memory_bytes };
            return Ok(MapSummary { entries, memory_bytes, ..known });
        }
        let data = map_data(map)?;
        let info = data.info()?;
        let memory_bytes = memlock(data.fd().as_fd()).unwrap_or(0);
        const BPF_F_NO_PREALLOC: u32 = 1;
        let grows =
            matches!(info.map_type()?, aya::maps::MapType::LpmTrie) || info.map_flags() & BPF_F_NO_PREALLOC != 0;
        let summary = MapSummary {
            grows,
            name: name.to_string(),
            id: info.id(),
            kind: format!("{:?}", info.map_type()?),
            entries,
            max_entries: info.max_entries(),
            pin: self.pin_dir.join("maps").join(name).display().to_string(),
            memory_bytes,
            counted_ms_ago: None,
        };
        if let Ok(mut cache) = self.summary_cache.lock() {
            cache.insert(name.to_string(), summary.clone());
        }
        Ok(summary)
    }

    /// The programs, their ids and kinds (read once: they do not change
    /// while the agent runs).
    pub fn program_summaries(&self) -> Result<Vec<ProgramSummary>> {
        if let Some(known) = self.program_cache.get() {
            return Ok(known.clone());
        }
        let mut out = vec![];
        for (name, prog) in self.loaded_programs() {
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
        let _ = self.program_cache.set(out.clone());
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
