//! Map names and sizes: the contract between the object file and the agent,
//! which pins every map under its instance directory by name. (Program
//! names are in [`crate::hooks`].)

/// Containers keyed by host-side veth ifindex (`u32` -> [`crate::ContainerEntry`]).
pub const CONTAINERS: &str = "CONTAINERS";
/// Per-CPU [`crate::TrafficStats`] by interface slot (`crate::stats::IFACE_SLOT_*`).
pub const IFACE_STATS: &str = "IFACE_STATS";

/// Published ports: [`crate::MappingKey4`] -> [`crate::MappingEntry4`].
pub const MAPPINGS4: &str = "MAPPINGS4";
/// IPv6 published ports: [`crate::MappingKey6`] -> [`crate::MappingEntry6`].
pub const MAPPINGS6: &str = "MAPPINGS6";
/// The host's own IPv4 addresses: `[u8; 4]` -> [`crate::HostAddr`].
pub const HOST_ADDRS4: &str = "HOST_ADDRS4";
/// Connection tracking: [`crate::CtKey4`] -> [`crate::CtEntry4`] (LRU).
pub const CT4: &str = "CT4";
/// IPv6 connection tracking: [`crate::CtKey6`] -> [`crate::CtEntry6`] (LRU).
pub const CT6: &str = "CT6";
/// The host's own IPv6 addresses: `In6Addr` -> [`crate::HostAddr`].
pub const HOST_ADDRS6: &str = "HOST_ADDRS6";
/// IPv6 policy: LPM trie of [`crate::PolicyKey6`] -> [`crate::PolicyEntry`].
pub const POLICY6: &str = "POLICY6";
/// Verdicts of IPv6 first fragments: [`crate::FragKey6`] -> [`crate::FragEntry6`] (LRU).
pub const FRAGS6: &str = "FRAGS6";
/// The programs entry points tail-call into (`u32` slot -> program), as
/// [`crate::hooks::TAIL_CALLS`] lists them. Pinned, so that the attached
/// programs find them while the agent is down or restarting.
pub const TAIL_CALLS: &str = "TAIL_CALLS";
/// The fast path's judging of a packet for a container without a verdict
/// for it yet (`u32` slot -> program), as [`crate::hooks::DELIVER_CALLS`]
/// lists them. A program array of its own, beside [`TAIL_CALLS`]: a pinned
/// map keeps its capacity, and agents of earlier builds adopt these pins.
pub const DELIVER_CALLS: &str = "DELIVER_CALLS";
/// Per-CPU [`crate::CtStats`] at index 0: conntrack inserts, refusals and
/// the datapath's own removals.
pub const CT_STATS: &str = "CT_STATS";
/// Socket-level reverse translation for host processes (LRU).
pub const SOCK_REVNAT4: &str = "SOCK_REVNAT4";
/// [`SOCK_REVNAT4`] for IPv6 sockets: [`crate::SockRevNatKey6`] ->
/// [`crate::SockRevNatEntry6`] (LRU).
pub const SOCK_REVNAT6: &str = "SOCK_REVNAT6";
/// One [`crate::DatapathConfig`] at index 0.
pub const CONFIG: &str = "CONFIG";
/// Policy: LPM trie of [`crate::PolicyKey4`] -> [`crate::PolicyEntry`].
pub const POLICY4: &str = "POLICY4";
/// Verdicts of first fragments: [`crate::FragKey4`] -> [`crate::FragEntry4`] (LRU).
pub const FRAGS4: &str = "FRAGS4";
/// Containers by IPv4 address: `[u8; 4]` -> `u32`, the ifindex of the
/// container's host-side veth (its key in [`CONTAINERS`]), for the fast path.
pub const CONTAINER_IPS4: &str = "CONTAINER_IPS4";
/// [`CONTAINER_IPS4`] for IPv6: `In6Addr` -> `u32`.
pub const CONTAINER_IPS6: &str = "CONTAINER_IPS6";
/// Per-CPU [`crate::ForwardStats`] at index 0: the fast path's redirects
/// and fallbacks.
pub const FORWARD_STATS: &str = "FORWARD_STATS";
/// Ring buffer of [`crate::Event`] for the monitor.
pub const EVENTS: &str = "EVENTS";
/// The live mapping id of each slot (`u32` array, see [`crate::owner`]).
pub const MAPPING_IDS: &str = "MAPPING_IDS";
/// The live container id of each slot (`u32` array, see [`crate::owner`]).
pub const CONTAINER_IDS: &str = "CONTAINER_IDS";

/// Guarded ports: `u64` words of a bitmap per protocol, indexed as
/// [`crate::uplink_guard::guarded_bit`] says.
pub const GUARDED_PORTS: &str = "GUARDED_PORTS";
/// Denied sources: LPM trie of `[u8; 4]` prefixes -> `u32` (the prefix
/// length, for bpftool readers).
pub const DENIED_SOURCES4: &str = "DENIED_SOURCES4";
/// The host's IPv4 routes that carry an MTU of their own (not locked)
/// smaller than the containers', and the routes inside them: LPM trie of
/// `[u8; 4]` prefixes -> `u32`, the route's MTU (0: none of its own). The
/// kernel's forwarding honours such an MTU, its route lookup for BPF does
/// not (only a locked one): the fast path reads it here.
pub const ROUTE_MTUS4: &str = "ROUTE_MTUS4";

/// Per-CPU [`crate::EventBudget`] at index 0: drop events sent to the
/// monitor this second, and those held back under floods.
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";

/// Every map the agent pins. Kernel map names are capped at 15 bytes.
pub const PINNED_MAPS: &[&str] = &[
    CONTAINERS,
    IFACE_STATS,
    MAPPINGS4,
    HOST_ADDRS4,
    CT4,
    CT_STATS,
    SOCK_REVNAT4,
    CONFIG,
    POLICY4,
    FRAGS4,
    CONTAINER_IPS4,
    FORWARD_STATS,
    EVENTS,
    MAPPING_IDS,
    CONTAINER_IDS,
    GUARDED_PORTS,
    DENIED_SOURCES4,
    ROUTE_MTUS4,
    EVENT_BUDGET,
    CT6,
    HOST_ADDRS6,
    POLICY6,
    FRAGS6,
    TAIL_CALLS,
    MAPPINGS6,
    SOCK_REVNAT6,
    CONTAINER_IPS6,
    DELIVER_CALLS,
];

pub const MAX_POLICY_PREFIXES: usize = 262144;
/// Bytes of the event ring buffer.
pub const EVENTS_BYTES: usize = 1 << 20;

/// Published ports: 100k and more (two host addresses' worth of TCP ports).
pub const MAX_MAPPINGS: usize = 131072;
pub const MAX_HOST_ADDRS: usize = 1024;
pub const MAX_CT_ENTRIES: usize = 262144;
pub const MAX_SOCK_REVNAT: usize = 65536;
/// Prefixes in `DENIED_SOURCES4` (an LPM trie allocates per entry).
pub const MAX_DENIED_SOURCES: usize = 65536;
/// Prefixes in `ROUTE_MTUS4`.
pub const MAX_ROUTE_MTUS: usize = 4096;
/// Datagrams in flight as fragments at once.
pub const MAX_FRAGS: usize = 16384;

pub const MAX_CONTAINERS: usize = 65536;
/// Slots of `IFACE_STATS`: the uplink's, the one of interfaces without a
/// container, and one per container (see `stats::IFACE_SLOT_*`).
pub const MAX_IFACES: usize = MAX_CONTAINERS + crate::stats::IFACE_SLOT_FIRST_CONTAINER as usize;
