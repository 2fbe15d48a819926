//! The API's data types (JSON over the agent's Unix socket, version 1).
//! Shared by the agent, `netpathctl` and the tests.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Path prefix of every API route; bump on incompatible changes.
pub const API_PREFIX: &str = "/v1";

/// `POST /v1/containers`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRequest {
    pub name: String,
    /// A named netns (`ctr1`, resolved under /run/netns) or a path
    /// (`/run/netns/ctr1`, `/proc/PID/ns/net`).
    pub netns: String,
    /// A specific address from the subnet; the next free one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

/// A container attached to the bridge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// The netns path as given (resolved to a path).
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Host-side veth name and ifindex.
    pub veth: String,
    pub ifindex: u32,
    /// The agent's endpoint id (also in the ENDPOINTS map).
    pub id: u32,
}

/// Traffic counters of one interface, from the IFACE_STATS map.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason name (only non-zero reasons).
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerStatus {
    #[serde(flatten)]
    pub container: Container,
    /// From the container's point of view: tx = sent by the container.
    pub stats: InterfaceStats,
}

/// A program attached to an interface.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachPoint {
    pub interface: String,
    /// `tcx-ingress`, `tcx-egress` or `xdp`.
    pub hook: String,
    pub program: String,
    /// Pinned link path.
    pub link_pin: String,
    /// Ids of every program the kernel has on this hook (netpath's and
    /// anyone else's); netpath expects exactly one of its own.
    pub attached_program_ids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramStatus {
    pub name: String,
    pub id: u32,
    pub kind: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapStatus {
    pub name: String,
    pub id: u32,
    pub kind: String,
    pub entries: u64,
    pub max_entries: u32,
    pub pin: String,
}

/// `GET /v1/status`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub instance: String,
    pub version: String,
    pub bridge: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub uplink: Option<String>,
    pub pin_dir: String,
    pub attach_points: Vec<AttachPoint>,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub containers: Vec<ContainerStatus>,
    /// Uplink counters, if there is an uplink.
    pub uplink_stats: Option<InterfaceStats>,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub error: String,
}
