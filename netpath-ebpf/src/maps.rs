//! The maps, declared with BTF so that `bpftool map dump` shows field names.
//! The agent pins each one by name (see `netpath_common::maps`).

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuHashMap},
    macros::btf_map,
};
use netpath_common::{
    maps::{MAX_ENDPOINTS, MAX_IFACES},
    Endpoint, TrafficStats,
};

#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, MAX_ENDPOINTS> = HashMap::new();

#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<u32, TrafficStats, MAX_IFACES> = PerCpuHashMap::new();
