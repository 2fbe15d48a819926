//! The maps, declared with BTF so that `bpftool map dump` shows field names.
//! The agent pins each one by name (see `netpath_common::maps`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    macros::btf_map,
};
use netpath_common::{
    maps::{
        EVENTS_BYTES, MAX_CONTAINERS, MAX_CT_ENTRIES, MAX_DENIED_SOURCES, MAX_FRAGS, MAX_HOST_ADDRS, MAX_IFACES,
        MAX_MAPPINGS, MAX_POLICY_PREFIXES, MAX_ROUTE_MTUS, MAX_SOCK_REVNAT,
    },
    owner::{self, OWNER_SLOTS},
    uplink_guard::GUARDED_PORT_WORDS,
    ContainerEntry, CtEntry4, CtEntry6, CtKey4, CtKey6, CtStats, DatapathConfig, Event4, EventBudget, ForwardStats,
    FragEntry4, FragEntry6, FragKey4, FragKey6, HostAddr, In6Addr, MappingEntry4, MappingEntry6, MappingKey4,
    MappingKey6, PolicyEntry, PolicyKey4, PolicyKey6, SockRevNatEntry4, SockRevNatEntry6, SockRevNatKey4,
    SockRevNatKey6, TrafficStats,
};

#[btf_map]
pub static CONTAINERS: HashMap<u32, ContainerEntry, MAX_CONTAINERS> = HashMap::new();

/// Containers by address, for the fast path (ifindex: the key of CONTAINERS).
#[btf_map]
pub static CONTAINER_IPS4: HashMap<[u8; 4], u32, MAX_CONTAINERS> = HashMap::new();
/// CONTAINER_IPS4 for IPv6.
#[btf_map]
pub static CONTAINER_IPS6: HashMap<In6Addr, u32, MAX_CONTAINERS> = HashMap::new();

#[btf_map]
pub static FORWARD_STATS: PerCpuArray<ForwardStats, 1> = PerCpuArray::new();

/// Interface counters by slot (netpath_common::stats::IFACE_SLOT_*).
#[btf_map]
pub static IFACE_STATS: PerCpuArray<TrafficStats, MAX_IFACES> = PerCpuArray::new();

#[btf_map]
pub static MAPPINGS4: HashMap<MappingKey4, MappingEntry4, MAX_MAPPINGS> = HashMap::new();

#[btf_map]
pub static HOST_ADDRS4: HashMap<[u8; 4], HostAddr, MAX_HOST_ADDRS> = HashMap::new();

#[btf_map]
pub static CT4: LruHashMap<CtKey4, CtEntry4, MAX_CT_ENTRIES> = LruHashMap::new();

#[btf_map]
/// IPv6 published ports.
#[btf_map]
pub static MAPPINGS6: HashMap<MappingKey6, MappingEntry6, MAX_MAPPINGS> = HashMap::new();

#[btf_map]
pub static CT6: LruHashMap<CtKey6, CtEntry6, MAX_CT_ENTRIES> = LruHashMap::new();

#[btf_map]
pub static HOST_ADDRS6: HashMap<In6Addr, HostAddr, MAX_HOST_ADDRS> = HashMap::new();

/// Conntrack pressure counters, one value per CPU at index 0.
#[btf_map]
pub static CT_STATS: PerCpuArray<CtStats, 1> = PerCpuArray::new();

#[btf_map]
pub static FRAGS4: LruHashMap<FragKey4, FragEntry4, MAX_FRAGS> = LruHashMap::new();

#[btf_map]
pub static FRAGS6: LruHashMap<FragKey6, FragEntry6, MAX_FRAGS> = LruHashMap::new();

#[btf_map]
pub static SOCK_REVNAT4: LruHashMap<SockRevNatKey4, SockRevNatEntry4, MAX_SOCK_REVNAT> = LruHashMap::new();

#[btf_map]
pub static SOCK_REVNAT6: LruHashMap<SockRevNatKey6, SockRevNatEntry6, MAX_SOCK_REVNAT> = LruHashMap::new();

#[btf_map]
pub static CONFIG: Array<DatapathConfig, 1> = Array::new();

/// Per-CPU room for IPv6's big values (family::Scratch): not pinned,
/// it holds nothing between runs.
#[btf_map]
pub static SCRATCH6: PerCpuArray<crate::family::Scratch<In6Addr>, 1> = PerCpuArray::new();

/// Each CPU's last reading of the coarse clock (clock::TickReading): not
/// pinned, a cache.
#[btf_map]
pub static TICK_CLOCK: PerCpuArray<crate::clock::TickReading, 1> = PerCpuArray::new();

/// The programs the entry points tail-call into (netpath_common::TAIL_CALLS).
#[btf_map]
pub static TAIL_CALLS: ProgramArray<{ netpath_common::TAIL_CALLS.len() }> = ProgramArray::new();

/// The fast path's judging programs (netpath_common::DELIVER_CALLS).
#[btf_map]
pub static DELIVER_CALLS: ProgramArray<{ netpath_common::DELIVER_CALLS.len() }> = ProgramArray::new();

#[btf_map]
pub static POLICY4: LpmTrie<PolicyKey4, PolicyEntry, MAX_POLICY_PREFIXES> = LpmTrie::new();

#[btf_map]
pub static POLICY6: LpmTrie<PolicyKey6, PolicyEntry, MAX_POLICY_PREFIXES> = LpmTrie::new();

#[btf_map]
pub static EVENTS: RingBuf<Event4, EVENTS_BYTES> = RingBuf::new();

/// Drop events each CPU may still send this second (netpath_common::EventBudget).
#[btf_map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget, 1> = PerCpuArray::new();

/// The live mapping id of each slot (netpath_common::owner).
#[btf_map]
pub static MAPPING_IDS: Array<u32, { OWNER_SLOTS as usize }> = Array::new();

/// The live container id of each slot (netpath_common::owner).
#[btf_map]
pub static CONTAINER_IDS: Array<u32, { OWNER_SLOTS as usize }> = Array::new();

/// Guarded ports of the uplink: a bitmap per protocol (netpath_common::uplink_guard).
#[btf_map]
pub static GUARDED_PORTS: Array<u64, { GUARDED_PORT_WORDS as usize }> = Array::new();

/// Sources the uplink never accepts (value: the prefix length).
#[btf_map]
pub static DENIED_SOURCES4: LpmTrie<[u8; 4], u32, MAX_DENIED_SOURCES> = LpmTrie::new();

/// Routes with an MTU of their own (value: the MTU, 0: none); see
/// `forward::route_mtu_exceeded4`.
#[btf_map]
pub static ROUTE_MTUS4: LpmTrie<[u8; 4], u32, MAX_ROUTE_MTUS> = LpmTrie::new();

/// The instance's settings (all zero until the agent writes them).
#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}

/// Is the mapping `id` (0: none) still published? See netpath_common::owner.
#[inline(always)]
pub fn mapping_live(id: u32) -> bool {
    id == 0 || owner::live(id, MAPPING_IDS.get(owner::slot(id)).copied())
}

/// Is the container `id` (0: none) still attached?
#[inline(always)]
pub fn container_live(id: u32) -> bool {
    id == 0 || owner::live(id, CONTAINER_IDS.get(owner::slot(id)).copied())
}
