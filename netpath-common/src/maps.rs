//! Map and program names and sizes: the contract between the object file and
//! the agent, which pins every map under its instance directory by name.

/// Container endpoints keyed by host-side veth ifindex (`u32` -> [`crate::Endpoint`]).
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Per-CPU [`crate::TrafficStats`] keyed by ifindex.
pub const IFACE_STATS: &str = "IFACE_STATS";

/// Published ports: [`crate::ServiceKey`] -> [`crate::ServiceValue`].
pub const SERVICES: &str = "SERVICES";
/// The host's own IPv4 addresses: `[u8; 4]` -> [`crate::HostAddr`].
pub const HOST_ADDRS: &str = "HOST_ADDRS";
/// Connection tracking: [`crate::CtKey`] -> [`crate::CtEntry`] (LRU).
pub const CT4: &str = "CT4";
/// Socket-level reverse translation for host processes (LRU).
pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
/// One [`crate::DatapathConfig`] at index 0.
pub const CONFIG: &str = "CONFIG";
/// Policy: LPM trie of [`crate::PolicyKey`] -> [`crate::PolicyEntry`].
pub const POLICY: &str = "POLICY";
/// Ring buffer of [`crate::Event`] for the monitor.
pub const EVENTS: &str = "EVENTS";

/// Every map the agent pins. Kernel map names are capped at 15 bytes.
pub const PINNED_MAPS: &[&str] =
    &[ENDPOINTS, IFACE_STATS, SERVICES, HOST_ADDRS, CT4, SOCK_REVNAT, CONFIG, POLICY, EVENTS];

pub const MAX_POLICY_PREFIXES: usize = 262144;
/// Bytes of the event ring buffer.
pub const EVENTS_BYTES: usize = 1 << 20;

pub const MAX_SERVICES: usize = 65536;
pub const MAX_HOST_ADDRS: usize = 1024;
pub const MAX_CT_ENTRIES: usize = 262144;
pub const MAX_SOCK_REVNAT: usize = 65536;

pub const MAX_ENDPOINTS: usize = 65536;
/// Endpoints plus the uplink and bridge.
pub const MAX_IFACES: usize = MAX_ENDPOINTS + 64;

/// tc program on a container's host-side veth, ingress: frames the container sends.
pub const PROG_VETH_INGRESS: &str = "veth_ingress";
/// tc program on a container's host-side veth, egress: frames to the container.
pub const PROG_VETH_EGRESS: &str = "veth_egress";
/// XDP program on the uplink: counters, early drop of unpublished access.
pub const PROG_UPLINK_XDP: &str = "uplink_xdp";
/// tc program on the uplink, ingress: published ports and reverse NAT.
pub const PROG_UPLINK_INGRESS: &str = "uplink_ingress";
/// tc program on the uplink, egress: masquerade.
pub const PROG_UPLINK_EGRESS: &str = "uplink_egress";
/// cgroup socket hooks: published ports for the host's own processes.
pub const PROG_SOCK_CONNECT4: &str = "sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "sock_getpeername4";
