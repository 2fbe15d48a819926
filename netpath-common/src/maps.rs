//! Map and program names and sizes: the contract between the object file and
//! the agent, which pins every map under its instance directory by name.

/// Container endpoints keyed by host-side veth ifindex (`u32` -> [`crate::Endpoint`]).
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Per-CPU [`crate::TrafficStats`] keyed by ifindex.
pub const IFACE_STATS: &str = "IFACE_STATS";

/// Every map the agent pins. Kernel map names are capped at 15 bytes.
pub const PINNED_MAPS: &[&str] = &[ENDPOINTS, IFACE_STATS];

pub const MAX_ENDPOINTS: usize = 65536;
/// Endpoints plus the uplink and bridge.
pub const MAX_IFACES: usize = MAX_ENDPOINTS + 64;

/// tc program on a container's host-side veth, ingress: frames the container sends.
pub const PROG_VETH_INGRESS: &str = "veth_ingress";
/// tc program on a container's host-side veth, egress: frames to the container.
pub const PROG_VETH_EGRESS: &str = "veth_egress";
/// XDP program on the uplink.
pub const PROG_UPLINK_XDP: &str = "uplink_xdp";
