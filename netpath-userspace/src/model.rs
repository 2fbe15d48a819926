//! The API's data types (JSON over the agent's Unix socket, version 1).
//! Shared by the agent, `netpathctl` and the tests.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use crate::portspec::Protocol;

/// Path prefix of every API route; bump on incompatible changes.
pub const API_PREFIX: &str = "/v1";

/// `POST /v1/containers`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRequest {
    pub name: String,
    /// A named netns (`ctr1`, resolved under /run/netns) or a path
    /// (`/run/netns/ctr1`, `/proc/PID/ns/net`).
    pub netns: String,
    /// A specific address from the subnet; the next free one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// A specific address from the IPv6 subnet; the next free one if absent
    /// (only on an instance with `subnet6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// Name of the interface inside the netns [default: eth0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// A specific unicast MAC (`02:42:...`); derived from the address if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// A tag naming who attached the container and for what (a runtime's
    /// container ID, network and interface), kept with it so that the
    /// runtime can find and collect its attachments (`POST /v1/gc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Ports published together with the container, owned by it: all of
    /// them are in place when the container is, and go with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRequest>,
    /// The runtime moves the interface into `netns` itself, later, and
    /// configures its address and route there (Docker's remote drivers: the
    /// sandbox does not exist yet when the endpoint joins). The container's
    /// end then stays in the agent's namespace, named in
    /// [`Container::handoff_ifname`]; `netns` is where it will be.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
    /// The runtime's name for the container (podman's or Docker's container
    /// name), accepted wherever a container is named (`policy`, `map`,
    /// `stats`, ...). Ignored (with a warning) if another container already
    /// answers to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_name: Option<String>,
}

/// One port published with a container (`ContainerRequest::ports`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortRequest {
    /// As in [`Mapping::host_ip`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub proto: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

fn default_ifname() -> String {
    "eth0".into()
}

/// A container attached to the bridge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// The netns path as given (resolved to a path).
    pub netns: String,
    /// Its IPv4 address (None: the instance is IPv6-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address (None: the instance has no IPv6 subnet, or had none
    /// when the container was attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    /// Host-side veth name and ifindex.
    pub veth: String,
    pub ifindex: u32,
    /// The agent's container id (also in the CONTAINERS map).
    pub id: u32,
    /// The interface inside the netns.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// See [`ContainerRequest::owner`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// For a [`ContainerRequest::handoff`]: the container's end of the veth
    /// as the agent left it in its own namespace, for the runtime to move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_ifname: Option<String>,
    /// See [`ContainerRequest::runtime_name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_name: Option<String>,
    /// Its veth's counters slot (`ContainerEntry::stats_slot`); 0 in a state
    /// written before slots existed, given at the next start.
    #[serde(default)]
    pub stats_slot: u32,
}

impl Container {
    /// Does this container answer to `name` (its own or its runtime's)?
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.runtime_name.as_deref() == Some(name)
    }
}

/// `GET /v1/network`: what a runtime needs to describe the network to its
/// containers (CNI results, Docker's Join answer).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkInfo {
    pub instance: String,
    pub bridge: String,
    /// The IPv4 subnet and gateway, if the instance has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ipnet::Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 subnet and gateway, if the instance has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<ipnet::Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// `GET /v1/containers/NAME/check`: what differs between the agent's
/// record of a container and the kernel (its netns, veth, address, routes,
/// datapath entries). Empty `problems`: all in place.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckReport {
    pub container: String,
    pub problems: Vec<String>,
}

/// `POST /v1/gc`: removes every container whose owner starts
/// with `owner_prefix` and is not in `keep`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcRequest {
    pub owner_prefix: String,
    #[serde(default)]
    pub keep: Vec<String>,
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
    /// The bridge its host veth is a port of (the first or an overflow
    /// bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
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
    /// Kernel memory the map holds (its `memlock` accounting), bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// For maps the datapath fills (conntrack, fragments, socket
    /// translations, counters): `entries` is the conntrack GC's count, this
    /// many milliseconds ago (status never walks a map). None: the agent's
    /// own count of what it wrote, exact.
    #[serde(default)]
    pub counted_ms_ago: Option<u64>,
}

/// One of the instance's bridges, in `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BridgeStatus {
    pub name: String,
    pub containers: usize,
}

/// `GET /v1/status`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub instance: String,
    pub version: String,
    pub bridge: String,
    /// The instance's bridges (the first, then overflow bridges past
    /// `bridge_ports` containers each) and their containers.
    #[serde(default)]
    pub bridges: Vec<BridgeStatus>,
    /// The IPv4 subnet and gateway (None: the instance has no IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 subnet and gateway (None: the instance has no IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    pub uplink: Option<String>,
    pub pin_dir: String,
    pub attach_points: Vec<AttachPoint>,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub containers: Vec<ContainerStatus>,
    pub mappings: usize,
    /// Socket-level translation for host processes: the cgroup the hooks
    /// hang on, if any.
    pub cgroup: Option<String>,
    pub routed: bool,
    pub icc: bool,
    /// The address container traffic leaving the uplink gets (None: off).
    pub masquerade: Option<Ipv4Addr>,
    pub masquerade_ports: String,
    /// The uplink guard: port ranges the host's addresses answer from the
    /// uplink only through published ports (`8000-8999/tcp`), and sources
    /// it never accepts.
    #[serde(default)]
    pub guarded_ports: Vec<String>,
    #[serde(default)]
    pub denied_sources: Vec<String>,
    /// Drop events the datapath held back (at most 1000 per second per CPU
    /// reach the monitor; the counters count every drop).
    #[serde(default)]
    pub drop_events_suppressed: u64,
    /// Uplink counters, if there is an uplink.
    pub uplink_stats: Option<InterfaceStats>,
    /// Drops on veths the datapath has no container for (a veth whose
    /// container's entry is gone: it fails closed), by reason name.
    #[serde(default)]
    pub unattributed_drops: BTreeMap<String, u64>,
    /// The agent's own resident memory, bytes.
    #[serde(default)]
    pub agent_memory_bytes: u64,
    /// The fast path: on or off, and what it redirected and left to the
    /// stack.
    #[serde(default)]
    pub fast_path: FastPathStatus,
    /// Conntrack pressure and garbage collection.
    #[serde(default)]
    pub conntrack: ConntrackStatus,
}

/// The fast path's counters (`FORWARD_STATS`), by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FastPathStatus {
    pub enabled: bool,
    /// Packets redirected, by how (`to-container`, `to-host-interface`,
    /// `to-host-interface-resolving`).
    pub redirected: BTreeMap<String, u64>,
    /// Packets left to the stack, by why (`ttl-expiring`, `mtu-exceeded`,
    /// `no-route`, `redirect-failed`, `no-interface`, `unjudged`).
    pub fallbacks: BTreeMap<String, u64>,
}

impl FastPathStatus {
    pub fn from_stats(enabled: bool, stats: &netpath_common::ForwardStats) -> FastPathStatus {
        use netpath_common::{Fallback, Redirect};
        FastPathStatus {
            enabled,
            redirected: Redirect::ALL.iter().map(|r| (r.name().into(), stats.redirected[*r as usize])).collect(),
            fallbacks: Fallback::ALL.iter().map(|f| (f.name().into(), stats.fallbacks[*f as usize])).collect(),
        }
    }

    /// Packets redirected `how`.
    pub fn redirected_as(&self, how: netpath_common::Redirect) -> u64 {
        self.redirected.get(how.name()).copied().unwrap_or(0)
    }

    /// Packets redirected into containers (judged on the way or not) and
    /// out of host interfaces (next hop resolved or not).
    pub fn redirected_in_and_out(&self) -> (u64, u64) {
        use netpath_common::Redirect::*;
        (
            self.redirected_as(ToContainer) + self.redirected_as(ToContainerJudged),
            self.redirected_as(ToHost) + self.redirected_as(ToHostResolving),
        )
    }

    /// Packets left to the stack because of `why`.
    pub fn fell_back_for(&self, why: netpath_common::Fallback) -> u64 {
        self.fallbacks.get(why.name()).copied().unwrap_or(0)
    }
}

/// Conntrack pressure (the datapath's counters, summed over CPUs; each half
/// of a flow or verdict is one entry) and what the GC did since the agent
/// started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ConntrackStatus {
    /// Entries the datapath inserted.
    pub inserts: u64,
    /// Inserts the table refused (no entry free, none evictable).
    pub insert_failures: u64,
    /// Entries the datapath deleted itself (orphans replaced, races).
    pub datapath_removals: u64,
    /// Entries the LRU evicted since the agent started: inserts minus
    /// every removal minus the growth of the table, as of the GC's last
    /// walk (exact once the table is quiet).
    pub evictions: u64,
    /// Entries the GC's last walk found.
    pub entries: u64,
    pub max_entries: u32,
    /// The table was at least half full at the last walk: the GC runs
    /// every 250 ms and removes finished flows and idle handshakes early.
    pub pressure: bool,
    pub gc_runs: u64,
    /// Microseconds the last GC round took.
    pub gc_last_us: u64,
    pub gc_flows_removed: u64,
    pub gc_entries_removed: u64,
    /// Of the flows removed, those removed before their timeout under pressure.
    pub gc_early_flows_removed: u64,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub error: String,
    /// Why, for errors a client may act on differently (absent: only the
    /// HTTP status says what kind of error it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
}

/// Machine-readable causes of refusals that clients (the CNI plugin, a
/// Docker driver) turn into their own error codes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReason {
    /// The requested container address belongs to another container.
    AddressInUse,
    /// No free address is left in the subnet.
    AddressPoolExhausted,
    /// The requested MAC belongs to another container or the gateway.
    MacInUse,
    /// A host port is already published (by another container, or twice in one request).
    PortInUse,
    /// The network namespace does not exist (any more).
    NetnsMissing,
    /// The namespace is already attached, or already has an interface of that name.
    NetnsInUse,
    /// A container of that name exists.
    NameInUse,
    /// No container (or other object) of that name.
    NotFound,
    /// The instance holds as many containers as its bridges can take.
    InstanceFull,
}

/// One published port (a range spec becomes one mapping per port).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mapping {
    pub id: u32,
    /// Where it answers, as in Docker: None, every host address of both
    /// families (IPv6 only if the container has an IPv6 address); `0.0.0.0`,
    /// every IPv4 one; `::`, every IPv6 one; any other, that address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Protocol,
    pub container: String,
    /// The container's IPv4 address when the mapping answers on IPv4 (it
    /// has a `MAPPINGS4` entry); None: IPv6 only (an IPv6-only container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip: Option<Ipv4Addr>,
    /// The container's IPv6 address when the mapping answers on IPv6 (it
    /// has a `MAPPINGS6` entry); None: IPv4 only (every mapping saved
    /// before IPv6 ports existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip6: Option<Ipv6Addr>,
    pub container_port: u16,
}

impl Mapping {
    /// The mapping in `map` syntax.
    pub fn spec(&self) -> String {
        let ip = crate::portspec::host_prefix(self.host_ip);
        format!("{ip}{}:{}:{}/{}", self.host_port, self.container, self.container_port, self.proto)
    }

    /// Does it have a `MAPPINGS4` entry? One on an IPv4 host address, and
    /// one without a host address whose container has an IPv4 address.
    pub fn on_ipv4(&self) -> bool {
        self.container_ip.is_some() && !matches!(self.host_ip, Some(IpAddr::V6(_)))
    }

    /// Does it have a `MAPPINGS6` entry? One on an IPv6 host address, and
    /// one without a host address whose container has an IPv6 address.
    pub fn on_ipv6(&self) -> bool {
        self.container_ip6.is_some() && !matches!(self.host_ip, Some(IpAddr::V4(_)))
    }
}

/// `POST /v1/mappings` and `POST /v1/mappings/unmap`: one `spec`, or a
/// list of `specs` applied all or nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MappingRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<String>,
}

impl MappingRequest {
    pub fn one(spec: impl Into<String>) -> MappingRequest {
        MappingRequest { spec: Some(spec.into()), specs: vec![] }
    }

    /// The specs asked for: `spec` or `specs`, not both, not none.
    pub fn specs(&self) -> Result<Vec<&str>, String> {
        match (&self.spec, self.specs.is_empty()) {
            (Some(_), false) => Err("give either \"spec\" or \"specs\", not both".into()),
            (Some(s), true) => Ok(vec![s.as_str()]),
            (None, false) => Ok(self.specs.iter().map(String::as_str).collect()),
            (None, true) => Err("no mapping given: \"spec\" or a non-empty \"specs\" list".into()),
        }
    }
}

/// One direction of a tracked flow, as the packet carries it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tuple {
    pub src: std::net::IpAddr,
    pub sport: u16,
    pub dst: std::net::IpAddr,
    pub dport: u16,
}

/// A tracked flow (`GET /v1/conntrack`), as `conntrack -L` shows it: the
/// original direction and the reply direction before translation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub proto: String,
    pub original: Tuple,
    pub reply: Tuple,
    pub state: String,
    /// Seconds until the flow expires (negative: expired, awaiting GC).
    pub expires_in: i64,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// The mapping that created it (0: none).
    pub mapping_id: u32,
    /// `nat` (a translated flow, which also carries its container's
    /// verdict) or `policy` (a verdict of a flow without translation, or of
    /// the other container of a hairpin flow).
    pub scope: String,
    /// With a verdict: `out` (the container sent the first packet) or `in`
    /// (the first packet reached it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<crate::policy::Direction>,
    /// The container whose verdict it is, or which started a masqueraded
    /// flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// `GET /v1/policies/NAME`, and an element of `GET /v1/policies`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyView {
    pub container: String,
    #[serde(flatten)]
    pub policy: crate::policy::ContainerPolicy,
}

/// `POST /v1/policies` and `POST /v1/policies/remove`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleRequest {
    pub container: String,
    pub action: crate::policy::Action,
    pub direction: crate::policy::Direction,
    /// An IPv4 or IPv6 address or ADDRESS/PREFIX.
    pub cidr: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, with an optional `/PORT` or `/PORT-END`
    /// (ICMP: message types); absent: any protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// `POST /v1/policies` with a list: rules added all or nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RulesRequest {
    pub rules: Vec<RuleRequest>,
}

/// `PUT /v1/policies/NAME/default`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DefaultRequest {
    pub direction: crate::policy::Direction,
    pub action: crate::policy::Action,
}

/// `GET` and `PUT /v1/settings`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// Direct container-to-container traffic.
    pub icc: bool,
}

/// `GET /v1/stats`: counters of every container and the uplink.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsView {
    pub containers: Vec<ContainerStatus>,
    pub uplink: Option<InterfaceStats>,
}

/// Answer of `DELETE /v1/conntrack`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlushResult {
    pub flows: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_requests_take_either_family() {
        let req = |json: &str| serde_json::from_str::<PortRequest>(json).unwrap();
        assert_eq!(req(r#"{"host_port":8080,"container_port":80}"#).host_ip, None);
        assert_eq!(req(r#"{"host_port":8080,"container_port":80,"host_ip":null}"#).host_ip, None);
        assert_eq!(
            req(r#"{"host_port":8080,"container_port":80,"host_ip":"198.18.0.1"}"#).host_ip,
            Some(Ipv4Addr::new(198, 18, 0, 1).into())
        );
        assert_eq!(
            req(r#"{"host_port":8080,"container_port":80,"host_ip":"::"}"#).host_ip,
            Some(Ipv6Addr::UNSPECIFIED.into())
        );
        assert!(serde_json::from_str::<PortRequest>(r#"{"host_port":1,"container_port":1,"host_ip":"[::]"}"#).is_err());
        let none = PortRequest { host_ip: None, host_port: 1, container_port: 1, proto: Protocol::Udp };
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"host_port":1,"container_port":1,"proto":"udp"}"#);
    }
}
