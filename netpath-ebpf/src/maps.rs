//! The maps, declared with BTF so that `bpftool map dump` shows field names.
//! The agent pins each one by name (see `netpath_common::maps`).

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use netpath_common::{
    maps::{
        EVENTS_BYTES, MAX_CT_ENTRIES, MAX_ENDPOINTS, MAX_HOST_ADDRS, MAX_IFACES, MAX_POLICY_PREFIXES, MAX_SERVICES,
        MAX_SOCK_REVNAT,
    },
    CtEntry, CtKey, DatapathConfig, Endpoint, Event, HostAddr, PolicyEntry, PolicyKey, ServiceKey, ServiceValue,
    SockRevNatKey, SockRevNatValue, TrafficStats,
};

#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, MAX_ENDPOINTS> = HashMap::new();

#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<u32, TrafficStats, MAX_IFACES> = PerCpuHashMap::new();

#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, MAX_SERVICES> = HashMap::new();

#[btf_map]
pub static HOST_ADDRS: HashMap<[u8; 4], HostAddr, MAX_HOST_ADDRS> = HashMap::new();

#[btf_map]
pub static CT4: LruHashMap<CtKey, CtEntry, MAX_CT_ENTRIES> = LruHashMap::new();

#[btf_map]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue, MAX_SOCK_REVNAT> = LruHashMap::new();

#[btf_map]
pub static CONFIG: Array<DatapathConfig, 1> = Array::new();

#[btf_map]
pub static POLICY: LpmTrie<PolicyKey, PolicyEntry, MAX_POLICY_PREFIXES> = LpmTrie::new();

#[btf_map]
pub static EVENTS: RingBuf<Event, EVENTS_BYTES> = RingBuf::new();

pub type PolicyTrieKey = Key<PolicyKey>;

/// The instance's settings (all zero until the agent writes them).
#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}
