//! Agent configuration: defaults, an optional TOML file, then flags.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Root of netpath's pins in bpffs; each instance has a directory below.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/netpath";
/// Machine-wide run directory: instance locks, default API sockets.
pub const RUN_ROOT: &str = "/run/netpath";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names the instance: its pin directory, state and socket. Unique per
    /// machine (bpffs is shared by all network namespaces).
    pub instance: String,
    /// Interface to the outside world (XDP is attached there), if any:
    /// `uplink = "eth0"`, or a table `[uplink]` with `name`, `guarded_ports`
    /// and `denied_sources` (see [`UplinkConfig`]).
    pub uplink: UplinkConfig,
    /// The instance's (first) bridge; at most 12 characters, leaving room
    /// for the overflow bridges' `-N`.
    pub bridge: String,
    /// Containers per bridge: past it the instance opens an overflow bridge
    /// (`<bridge>-1`, `<bridge>-2`, ...) on the same subnet. 1-1023 (a
    /// Linux bridge takes at most 1023 ports).
    pub bridge_ports: u32,
    /// IPv4 container subnet, or `none` for an IPv6-only instance.
    pub subnet: Subnet4,
    /// Bridge address; the first host of the subnet when absent.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 container subnet: `auto` (a unique local /64 of the instance's
    /// own, see [`auto_subnet6`]), `none` (the instance carries no IPv6 and
    /// containers have it turned off), or a ULA or global unicast prefix,
    /// /64 to /120.
    pub subnet6: Subnet6,
    /// The bridge's IPv6 address; the subnet's `::1` when absent.
    pub gateway6: Option<Ipv6Addr>,
    /// Desired state lives here (`state.json`).
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// bpffs directory for this instance's pins.
    pub pin_dir: Option<PathBuf>,
    /// Let the uplink reach container addresses directly (routed mode).
    /// Off: containers are reachable from outside only through published
    /// ports, and direct packets are dropped and counted.
    pub routed: bool,
    /// cgroup v2 directory for the socket hooks that publish ports to the
    /// host's own processes [default: the cgroup v2 root]. The hooks act only
    /// on sockets in the agent's network namespace.
    pub cgroup: Option<PathBuf>,
    /// Containers reach the outside world through the uplink's address.
    pub masquerade: bool,
    /// Source ports (and ICMP echo identifiers) the masquerade allocates,
    /// "MIN-MAX". The default stays below the kernel's ephemeral range
    /// (32768-60999), so translated flows never collide with the host's own.
    pub masquerade_ports: String,
    /// XDP on the uplink: `auto` (unless the uplink is a veth, where XDP
    /// costs more than it saves), `on` or `off`. Without it, the uplink's tc
    /// program does the same work.
    pub uplink_xdp: UplinkXdp,
    /// Redirect judged and translated packets straight to the interface
    /// they leave by (into a container's `eth0`, out of the uplink),
    /// skipping the bridge and the routing pass. Off: every packet takes
    /// the stack's way, as plain routing does.
    pub fast_path: bool,
    /// Direct container-to-container traffic (Docker's --icc); published
    /// ports work either way. `netpathctl icc` changes it at run time.
    pub icc: bool,
    /// MTU of the bridge and every container interface. 0: the uplink's
    /// (1500 without an uplink), so that containers never send what the
    /// uplink cannot carry: the host's "fragmentation needed" for a packet
    /// already translated on the veth would go to the host's own address.
    pub mtu: u32,
    /// Serve Docker's remote network driver protocol under this name
    /// (`/run/docker/plugins/<name>.sock`; `docker network create -d <name>`).
    pub docker_plugin: Option<String>,
    /// dockerd's API socket, asked for the names of the containers the
    /// driver attaches (so that `policy` and `map` take them)
    /// [default: /var/run/docker.sock].
    pub docker_host: Option<PathBuf>,
    pub conntrack: ConntrackConfig,
    /// Log lines as text (`text`) or one JSON object each (`json`).
    pub log_format: LogFormat,
    /// Also serve Prometheus `/metrics` on this TCP address
    /// (`"127.0.0.1:9477"`); the API socket serves it always.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// How the agent writes its log lines (to stderr).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Conntrack timeouts (seconds) and garbage collection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    pub tcp_new: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_reset: u32,
    /// After FINs both ways.
    pub tcp_closed: u32,
    pub udp: u32,
    pub icmp: u32,
    /// How often expired flows are collected.
    pub gc_interval: u32,
    /// Capacity of the conntrack table (CT4), in entries (a flow takes two
    /// for its translation and two for its policy verdicts). A pinned table
    /// cannot be resized: changing it needs the instance's pins removed.
    pub max_entries: u32,
}

/// Bounds of `conntrack.max_entries`.
pub const CT_ENTRIES_RANGE: std::ops::RangeInclusive<u32> = 1024..=16 * 1024 * 1024;

impl Default for ConntrackConfig {
    fn default() -> Self {
        let t = netpath_common::CtTimeouts::default();
        ConntrackConfig {
            tcp_new: t.tcp_new,
            tcp_established: t.tcp_established,
            tcp_closing: t.tcp_closing,
            tcp_reset: t.tcp_reset,
            tcp_closed: t.tcp_closed,
            udp: t.udp,
            icmp: t.icmp,
            gc_interval: 5,
            max_entries: netpath_common::maps::MAX_CT_ENTRIES as u32,
        }
    }
}

impl ConntrackConfig {
    pub fn timeouts(&self) -> netpath_common::CtTimeouts {
        netpath_common::CtTimeouts {
            tcp_new: self.tcp_new,
            tcp_established: self.tcp_established,
            tcp_closing: self.tcp_closing,
            tcp_reset: self.tcp_reset,
            tcp_closed: self.tcp_closed,
            udp: self.udp,
            icmp: self.icmp,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: "default".into(),
            uplink: UplinkConfig::default(),
            bridge: "np0".into(),
            bridge_ports: crate::agent::MAX_BRIDGE_PORTS,
            subnet: Subnet4::Prefix("10.77.0.0/16".parse().expect("valid default subnet")),
            gateway: None,
            subnet6: Subnet6::Auto,
            gateway6: None,
            state_dir: None,
            socket: None,
            pin_dir: None,
            routed: false,
            cgroup: None,
            masquerade: true,
            masquerade_ports: "1024-32767".into(),
            uplink_xdp: UplinkXdp::Auto,
            fast_path: true,
            icc: true,
            mtu: 0,
            docker_plugin: None,
            docker_host: None,
            conntrack: ConntrackConfig::default(),
            log_format: LogFormat::Text,
            metrics_address: None,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Checks the values and fills in the derived defaults.
    pub fn resolve(mut self) -> Result<ResolvedConfig> {
        validate_name("instance", &self.instance, 32)?;
        validate_ifname("bridge", &self.bridge)?;
        let longest = 15 - crate::agent::OVERFLOW_SUFFIX_LEN;
        if self.bridge.len() > longest {
            bail!(
                "bridge interface name {:?} is too long: at most {longest} characters, leaving room for the \
                 overflow bridges' \"-N\"",
                self.bridge
            );
        }
        if !(1..=crate::agent::MAX_BRIDGE_PORTS).contains(&self.bridge_ports) {
            bail!(
                "bridge_ports {} is out of range: 1-{} (a Linux bridge takes at most {} ports)",
                self.bridge_ports,
                crate::agent::MAX_BRIDGE_PORTS,
                crate::agent::MAX_BRIDGE_PORTS
            );
        }
        if let Some(uplink) = &self.uplink.name {
            validate_ifname("uplink", uplink)?;
        }
        let net4 = match self.subnet {
            Subnet4::Prefix(subnet) => Some(resolve_net4(subnet, self.gateway.take())?),
            Subnet4::None => match self.gateway {
                Some(gw) => bail!("gateway {gw} needs a subnet (subnet is \"none\")"),
                None => None,
            },
        };
        let subnet6_auto = self.subnet6 == Subnet6::Auto;
        let subnet6 = match self.subnet6 {
            Subnet6::Auto => Some(auto_subnet6(&self.instance, &machine_id())),
            Subnet6::None => None,
            Subnet6::Prefix(net) => Some(net),
        };
        let net6 = resolve_net6(subnet6, self.gateway6.take())?;
        if net4.is_none() && net6.is_none() {
            bail!("subnet and subnet6 are both \"none\": an instance needs at least one of them");
        }
        let ct = &self.conntrack;
        if self.mtu != 0 && !(576..=65535).contains(&self.mtu) {
            bail!("mtu {} is out of range: 576 to 65535, or 0 for the uplink's", self.mtu);
        }
        for (name, v) in [
            ("tcp_new", ct.tcp_new),
            ("tcp_established", ct.tcp_established),
            ("tcp_closing", ct.tcp_closing),
            ("tcp_reset", ct.tcp_reset),
            ("tcp_closed", ct.tcp_closed),
            ("udp", ct.udp),
            ("icmp", ct.icmp),
            ("gc_interval", ct.gc_interval),
        ] {
            if v == 0 {
                bail!("conntrack.{name} must be at least 1 second");
            }
        }
        if !CT_ENTRIES_RANGE.contains(&self.conntrack.max_entries) {
            bail!(
                "conntrack.max_entries {} is outside {}-{}",
                self.conntrack.max_entries,
                CT_ENTRIES_RANGE.start(),
                CT_ENTRIES_RANGE.end()
            );
        }
        let masquerade_ports = parse_port_range(&self.masquerade_ports)
            .with_context(|| format!("masquerade_ports {:?}", self.masquerade_ports))?;
        let guard = self.uplink.resolve(self.masquerade.then_some(masquerade_ports))?;
        if let Some(name) = &self.docker_plugin {
            validate_name("docker_plugin", name, 64)?;
        }
        let instance = self.instance.clone();
        Ok(ResolvedConfig {
            docker_host: self.docker_host.unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_HOST)),
            docker_plugin: self.docker_plugin,
            masquerade: self.masquerade,
            masquerade_ports,
            icc: self.icc,
            mtu: self.mtu,
            uplink_xdp: self.uplink_xdp,
            fast_path: self.fast_path,
            state_dir: self.state_dir.unwrap_or_else(|| PathBuf::from(format!("/var/lib/netpath/{instance}"))),
            socket: self.socket.unwrap_or_else(|| default_socket(&instance)),
            pin_dir: self.pin_dir.unwrap_or_else(|| Path::new(BPFFS_ROOT).join(&instance)),
            instance,
            routed: self.routed,
            cgroup: self.cgroup,
            conntrack: self.conntrack,
            log_format: self.log_format,
            metrics_address: self.metrics_address,
            uplink: self.uplink.name,
            guarded_ports: guard.guarded_ports,
            denied_sources: guard.denied_sources,
            bridge: self.bridge,
            bridge_ports: self.bridge_ports,
            net4,
            net6,
            subnet6_auto,
        })
    }
}

/// Checks `subnet` and `gateway` (the subnet's first host by default).
fn resolve_net4(given: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<Net4> {
    let subnet = given.trunc();
    if subnet != given {
        bail!("subnet {given} has host bits set (did you mean {subnet}?)");
    }
    if subnet.prefix_len() > 30 {
        bail!("subnet {subnet} is too small: at least a /30 is needed for a gateway and a container");
    }
    let gateway = match gateway {
        Some(gw) => {
            if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
                bail!("gateway {gw} is not a host address of subnet {subnet}");
            }
            gw
        }
        None => subnet.hosts().next().context("subnet has no host addresses")?,
    };
    Ok(Net4 { subnet, gateway })
}

/// The instance's IPv4 subnet and the bridge's address in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4 {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// The `subnet` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Subnet4 {
    /// No IPv4: an IPv6-only instance.
    None,
    Prefix(Ipv4Net),
}

impl std::str::FromStr for Subnet4 {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Subnet4::None),
            _ => s
                .parse()
                .map(Subnet4::Prefix)
                .map_err(|_| format!("subnet {s:?} is not an IPv4 prefix (like 10.77.0.0/16) or \"none\"")),
        }
    }
}

impl TryFrom<String> for Subnet4 {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Subnet4> for String {
    fn from(s: Subnet4) -> String {
        match s {
            Subnet4::None => "none".into(),
            Subnet4::Prefix(net) => net.to_string(),
        }
    }
}

/// Shortest and longest IPv6 container prefixes: a /64 is what SLAAC-minded
/// neighbours expect; past a /120 there is hardly room for containers.
pub const SUBNET6_PREFIX_RANGE: std::ops::RangeInclusive<u8> = 64..=120;

/// The instance's IPv6 subnet and the bridge's address in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

/// The `subnet6` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Subnet6 {
    /// A unique local /64 derived from the machine and the instance.
    #[default]
    Auto,
    /// No IPv6: an IPv4-only instance.
    None,
    Prefix(Ipv6Net),
}

impl std::str::FromStr for Subnet6 {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Subnet6::Auto),
            "none" => Ok(Subnet6::None),
            _ => s
                .parse()
                .map(Subnet6::Prefix)
                .map_err(|_| format!("subnet6 {s:?} is not an IPv6 prefix (like fd00:1::/64), \"auto\" or \"none\"")),
        }
    }
}

impl TryFrom<String> for Subnet6 {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Subnet6> for String {
    fn from(s: Subnet6) -> String {
        match s {
            Subnet6::Auto => "auto".into(),
            Subnet6::None => "none".into(),
            Subnet6::Prefix(net) => net.to_string(),
        }
    }
}

/// The `auto` IPv6 subnet: a unique local /64 (RFC 4193, `fdXX:XXXX:XXXX::/64`)
/// whose 40-bit global ID hashes the machine's id and the instance name, so
/// that it stays the same across restarts and differs between instances and
/// machines.
pub fn auto_subnet6(instance: &str, machine_id: &[u8]) -> Ipv6Net {
    let id = crate::fnv1a64(&[machine_id, b"\0", instance.as_bytes()]) & 0xff_ffff_ffff;
    let network = (0xfd_u128 << 120) | (u128::from(id) << 80);
    Ipv6Net::new(Ipv6Addr::from(network), 64).expect("64 is a valid IPv6 prefix length")
}

/// `/etc/machine-id`, or nothing where it cannot be read (the instance name
/// alone then picks the `auto` subnet).
fn machine_id() -> Vec<u8> {
    std::fs::read("/etc/machine-id").map(|id| id.trim_ascii().to_vec()).unwrap_or_default()
}

/// Checks `subnet6` and `gateway6` (the subnet's `::1` by default); None:
/// the instance has no IPv6.
fn resolve_net6(subnet6: Option<Ipv6Net>, gateway6: Option<Ipv6Addr>) -> Result<Option<Net6>> {
    let Some(given) = subnet6 else {
        if let Some(gw) = gateway6 {
            bail!("gateway6 {gw} needs subnet6 (the instance has no IPv6 subnet)");
        }
        return Ok(None);
    };
    let subnet = given.trunc();
    if subnet != given {
        bail!("subnet6 {given} has host bits set (did you mean {subnet}?)");
    }
    if !SUBNET6_PREFIX_RANGE.contains(&subnet.prefix_len()) {
        bail!(
            "subnet6 {subnet} has prefix length /{}: it must be /{} to /{}",
            subnet.prefix_len(),
            SUBNET6_PREFIX_RANGE.start(),
            SUBNET6_PREFIX_RANGE.end()
        );
    }
    let first = subnet.network().segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let global_unicast = first & 0xe000 == 0x2000;
    if !(unique_local || global_unicast) {
        bail!(
            "subnet6 {subnet} is neither a unique local (fc00::/7) nor a global unicast (2000::/3) prefix \
             (link-local, multicast, loopback and the like cannot be a container subnet)"
        );
    }
    let gateway = match gateway6 {
        Some(gw) => {
            if !subnet.contains(&gw) || gw == subnet.network() {
                bail!("gateway6 {gw} is not a host address of subnet6 {subnet} (its ::0 is the subnet-router anycast)");
            }
            gw
        }
        None => Ipv6Addr::from(u128::from(subnet.network()) + 1),
    };
    Ok(Some(Net6 { subnet, gateway }))
}

/// The API socket of an instance when not configured otherwise.
pub fn default_socket(instance: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(instance).join("api.sock")
}

/// The lock an agent holds for its instance. Keyed by the instance name
/// alone, in one place per machine (not configurable), because the instance
/// names what agents share: the pins under bpffs.
pub fn instance_lock(instance: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(format!("{instance}.lock"))
}

/// The lock an agent holds for its pin directory, so that two instances
/// never share pins (`--pin-dir` pointing at another instance's). Keyed by
/// the directory's path, escaped into one file name.
pub fn pin_dir_lock(pin_dir: &Path) -> PathBuf {
    let escaped = pin_dir.display().to_string().replace('%', "%25").replace('/', "%2F");
    Path::new(RUN_ROOT).join(format!("pins{escaped}.lock"))
}

/// A configuration with every default filled in and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedConfig {
    pub instance: String,
    pub uplink: Option<String>,
    /// `uplink.guarded_ports`, checked: no overlap with the masquerade range
    /// (the ephemeral range is the agent's to check, in its namespace).
    pub guarded_ports: Vec<GuardedRange>,
    /// `uplink.denied_sources`, without host bits.
    pub denied_sources: Vec<Ipv4Net>,
    pub bridge: String,
    pub bridge_ports: u32,
    /// The IPv4 subnet and gateway, if the instance carries IPv4.
    pub net4: Option<Net4>,
    /// The IPv6 subnet and gateway, if the instance carries IPv6.
    pub net6: Option<Net6>,
    /// `net6` is the `auto` default, not asked for: on a host without IPv6
    /// the agent runs IPv4 only instead of refusing to start.
    pub subnet6_auto: bool,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub routed: bool,
    pub cgroup: Option<PathBuf>,
    pub masquerade: bool,
    /// Inclusive, host byte order.
    pub masquerade_ports: (u16, u16),
    pub icc: bool,
    /// 0: the uplink's.
    pub mtu: u32,
    pub uplink_xdp: UplinkXdp,
    pub fast_path: bool,
    pub docker_plugin: Option<String>,
    pub docker_host: PathBuf,
    pub conntrack: ConntrackConfig,
    pub log_format: LogFormat,
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// The uplink: its interface and what it never accepts. In the file either
/// `uplink = "eth0"` or
///
/// ```toml
/// [uplink]
/// name = "eth0"
/// guarded_ports = ["8000-8999/tcp", "5000-5999/udp"]
/// denied_sources = ["203.0.113.0/24"]
/// ```
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UplinkConfig {
    /// The interface (`--uplink`).
    pub name: Option<String>,
    /// Port ranges (`PORT[-END][/tcp|/udp]`, tcp by default) on which the
    /// host's addresses answer the uplink only through published ports:
    /// anything else to them (host services included) is dropped there,
    /// before conntrack (`--guarded-ports`).
    pub guarded_ports: Vec<String>,
    /// Source prefixes (`A.B.C.D[/LEN]`) whose packets the uplink never
    /// accepts, replies included (`--denied-sources`).
    pub denied_sources: Vec<String>,
}

/// The table form of [`UplinkConfig`], with unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkTable {
    name: Option<String>,
    #[serde(default)]
    guarded_ports: Vec<String>,
    #[serde(default)]
    denied_sources: Vec<String>,
}

impl<'de> Deserialize<'de> for UplinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UplinkConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an interface name, or a table with name, guarded_ports, denied_sources")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UplinkConfig, E> {
                Ok(UplinkConfig { name: Some(v.to_string()), ..Default::default() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<UplinkConfig, A::Error> {
                let t = UplinkTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(UplinkConfig { name: t.name, guarded_ports: t.guarded_ports, denied_sources: t.denied_sources })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A guarded port range of one protocol (inclusive, host byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardedRange {
    pub proto: crate::portspec::Protocol,
    pub min: u16,
    pub max: u16,
}

impl std::fmt::Display for GuardedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", crate::portspec::PortRange { start: self.min, end: self.max }, self.proto)
    }
}

impl GuardedRange {
    pub fn overlaps(&self, (min, max): (u16, u16)) -> bool {
        self.min <= max && min <= self.max
    }
}

/// The uplink guard's settings, parsed and checked.
pub struct UplinkGuard {
    pub guarded_ports: Vec<GuardedRange>,
    pub denied_sources: Vec<Ipv4Net>,
}

impl UplinkConfig {
    /// Parses `guarded_ports` and `denied_sources`; a guarded range must
    /// miss the masquerade range (`masquerade`, when masquerade is on):
    /// replies of masqueraded flows arrive on those ports.
    pub fn resolve(&self, masquerade: Option<(u16, u16)>) -> Result<UplinkGuard> {
        if self.name.is_none() && !(self.guarded_ports.is_empty() && self.denied_sources.is_empty()) {
            bail!("uplink.guarded_ports and uplink.denied_sources need an uplink (uplink.name or --uplink)");
        }
        let mut guarded_ports = vec![];
        for spec in &self.guarded_ports {
            let side = crate::portspec::HostSide::parse(spec).map_err(|e| {
                anyhow::anyhow!("uplink.guarded_ports: {e} (expected PORT[-END][/tcp|/udp], e.g. \"8000-8999/tcp\")")
            })?;
            if side.ip.is_some() {
                bail!(
                    "uplink.guarded_ports: {spec:?} names an address; guarded ports apply to every host address \
                     (expected PORT[-END][/tcp|/udp])"
                );
            }
            let range = GuardedRange { proto: side.proto, min: side.ports.start, max: side.ports.end };
            if let Some((lo, hi)) = masquerade.filter(|m| range.overlaps(*m)) {
                bail!(
                    "uplink.guarded_ports {range} overlaps masquerade_ports {lo}-{hi}: replies of masqueraded \
                     flows arrive on those ports and would be dropped; choose ports outside {lo}-{hi}"
                );
            }
            guarded_ports.push(range);
        }
        let mut denied_sources = vec![];
        for s in &self.denied_sources {
            let net: Ipv4Net = match s.parse::<Ipv4Net>() {
                Ok(n) => n,
                Err(_) => match s.parse::<Ipv4Addr>() {
                    Ok(a) => Ipv4Net::from(a),
                    Err(_) => bail!("uplink.denied_sources: {s:?} is not an IPv4 address or CIDR (A.B.C.D[/LEN])"),
                },
            };
            if net.trunc() != net {
                bail!("uplink.denied_sources: {net} has host bits set (did you mean {}?)", net.trunc());
            }
            denied_sources.push(net);
        }
        Ok(UplinkGuard { guarded_ports, denied_sources })
    }
}

/// dockerd's API socket when not configured otherwise.
pub const DEFAULT_DOCKER_HOST: &str = "/var/run/docker.sock";

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UplinkXdp {
    Auto,
    On,
    Off,
}

/// "MIN-MAX" with 1 <= MIN <= MAX <= 65535.
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s.split_once('-').context("expected MIN-MAX")?;
    let a: u16 = a.trim().parse().context("MIN is not a port number")?;
    let b: u16 = b.trim().parse().context("MAX is not a port number")?;
    if a == 0 || b < a {
        bail!("expected 1 <= MIN <= MAX <= 65535");
    }
    Ok((a, b))
}

/// Names that end up in paths and URLs: letters, digits, `-`, `_`
/// (no '.': bpffs refuses it in pin names).
pub fn validate_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() {
        bail!("{what} name is empty");
    }
    if name.len() > max {
        bail!("{what} name {name:?} is longer than {max} characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
        bail!("{what} name {name:?} may only contain letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace.
pub fn validate_ifname(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.contains(char::is_whitespace)
        || name == "."
        || name == ".."
    {
        bail!("{what} interface name {name:?} is not a valid Linux interface name (1-15 characters, no '/' or spaces)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = Config::default().resolve().unwrap();
        assert_eq!(c.net4.map(|n| n.gateway), Some("10.77.0.1".parse::<Ipv4Addr>().unwrap()));
        assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/netpath/default"));
        assert_eq!(c.socket, PathBuf::from("/run/netpath/default/api.sock"));
        assert_eq!(instance_lock(&c.instance), PathBuf::from("/run/netpath/default.lock"));
        assert_eq!(
            pin_dir_lock(&c.pin_dir),
            PathBuf::from("/run/netpath/pins%2Fsys%2Ffs%2Fbpf%2Fnetpath%2Fdefault.lock")
        );
        assert_ne!(pin_dir_lock(Path::new("/a%2Fb")), pin_dir_lock(Path::new("/a/b")));
        assert_eq!(c.bridge, "np0");
    }

    #[test]
    fn file_overrides_defaults() {
        let c: Config = toml::from_str("instance = \"lab\"\nsubnet = \"192.168.5.0/24\"\nuplink = \"eth1\"\n").unwrap();
        let c = c.resolve().unwrap();
        assert_eq!(c.instance, "lab");
        assert_eq!(c.net4.map(|n| n.gateway), Some("192.168.5.1".parse::<Ipv4Addr>().unwrap()));
        assert_eq!(c.uplink.as_deref(), Some("eth1"));
    }

    #[test]
    fn uplink_table_with_guarded_ports_and_denied_sources() {
        let text = "masquerade_ports = \"10000-32767\"\n[uplink]\nname = \"eth1\"\nguarded_ports = [\"8000-8999/tcp\", \"5000-5999/udp\", \"7000\"]\n\
                    denied_sources = [\"203.0.113.0/24\", \"198.51.100.7\"]\n";
        let c: Config = toml::from_str(text).unwrap();
        let c = c.resolve().unwrap();
        assert_eq!(c.uplink.as_deref(), Some("eth1"));
        let shown: Vec<String> = c.guarded_ports.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["8000-8999/tcp", "5000-5999/udp", "7000/tcp"]);
        let nets: Vec<String> = c.denied_sources.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["203.0.113.0/24", "198.51.100.7/32"]);
        assert!(toml::from_str::<Config>("[uplink]\nname = \"e\"\nguarded = []\n").is_err(), "unknown keys");
    }

    #[test]
    fn bad_uplink_guard_settings_are_named() {
        let resolve = |guarded: &[&str], denied: &[&str], masquerade: bool| {
            let c = Config {
                uplink: UplinkConfig {
                    name: Some("eth0".into()),
                    guarded_ports: guarded.iter().map(|s| s.to_string()).collect(),
                    denied_sources: denied.iter().map(|s| s.to_string()).collect(),
                },
                masquerade,
                ..Config::default()
            };
            c.resolve().map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        for bad in ["9000-8000", "0-10", "70000", "x", "10.0.0.1:80", "80/icmp"] {
            let e = resolve(&[bad], &[], false).unwrap_err();
            assert!(e.contains("uplink.guarded_ports"), "{bad}: {e}");
        }
        let e = resolve(&["30000-33000/udp"], &[], true).unwrap_err();
        assert!(e.contains("uplink.guarded_ports 30000-33000/udp overlaps masquerade_ports 1024-32767"), "{e}");
        assert!(resolve(&["30000-33000/udp"], &[], false).is_ok(), "no masquerade, no overlap");
        for bad in ["203.0.113.0/33", "example.org", "203.0.113.1/24"] {
            let e = resolve(&[], &[bad], false).unwrap_err();
            assert!(e.contains("uplink.denied_sources"), "{bad}: {e}");
        }
        let c = Config {
            uplink: UplinkConfig { denied_sources: vec!["1.2.3.4".into()], ..Default::default() },
            ..Config::default()
        };
        assert!(format!("{:#}", c.resolve().unwrap_err()).contains("need an uplink"));
    }

    #[test]
    fn conntrack_section() {
        let c: Config = toml::from_str("[conntrack]\nudp = 5\ngc_interval = 1\n").unwrap();
        let c = c.resolve().unwrap();
        assert_eq!(c.conntrack.udp, 5);
        assert_eq!(c.conntrack.tcp_established, 21600);
        let c: Config = toml::from_str("[conntrack]\nudp = 0\n").unwrap();
        assert!(c.resolve().unwrap_err().to_string().contains("conntrack.udp"));
    }

    #[test]
    fn masquerade_settings() {
        let c = Config::default().resolve().unwrap();
        assert!(c.masquerade);
        assert_eq!(c.masquerade_ports, (1024, 32767));
        let c: Config = toml::from_str("masquerade = false\nmasquerade_ports = \"20000-20003\"\n").unwrap();
        let c = c.resolve().unwrap();
        assert!(!c.masquerade);
        assert_eq!(c.masquerade_ports, (20000, 20003));
        for bad in ["20003-20000", "0-10", "x-1", "5"] {
            let c: Config = toml::from_str(&format!("masquerade_ports = \"{bad}\"\n")).unwrap();
            assert!(format!("{:#}", c.resolve().unwrap_err()).contains("masquerade_ports"), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Config>("brigde = \"x\"").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config { subnet: "10.0.0.1/24".parse().unwrap(), ..Config::default() };
        assert!(c.resolve().unwrap_err().to_string().contains("host bits"));
        let c = Config { gateway: Some("10.78.0.1".parse().unwrap()), ..Config::default() };
        assert!(c.resolve().unwrap_err().to_string().contains("not a host address"));
        let c = Config { bridge: "a-very-long-bridge-name".into(), ..Config::default() };
        assert!(c.resolve().unwrap_err().to_string().contains("bridge interface name"));
        // 15 characters is a valid interface name, but leaves no room for "-63".
        let c = Config { bridge: "br-of-fifteen15".into(), ..Config::default() };
        assert!(c.resolve().unwrap_err().to_string().contains("at most 12 characters"));
        assert!(Config { bridge: "br-twelve-12".into(), ..Config::default() }.resolve().is_ok());
        for bad in [0, 1024] {
            let c = Config { bridge_ports: bad, ..Config::default() };
            assert!(c.resolve().unwrap_err().to_string().contains("bridge_ports"), "{bad}");
        }
        let c = Config { instance: "../etc".into(), ..Config::default() };
        assert!(c.resolve().is_err());
        let c = Config { subnet: "10.0.0.0/31".parse().unwrap(), ..Config::default() };
        assert!(c.resolve().unwrap_err().to_string().contains("too small"));
    }

    #[test]
    fn ipv6_is_an_auto_ula_64_unless_turned_off() {
        let r = Config::default().resolve().unwrap();
        let net6 = r.net6.expect("IPv6 by default");
        assert!(r.subnet6_auto);
        assert_eq!(net6.subnet.prefix_len(), 64);
        assert_eq!(net6.subnet.network().segments()[0] >> 8, 0xfd, "a ULA: {}", net6.subnet);
        assert_eq!(net6.gateway, Ipv6Addr::from(u128::from(net6.subnet.network()) + 1));
        // Stable for an instance, different between instances and machines.
        assert_eq!(auto_subnet6("a", b"m1"), auto_subnet6("a", b"m1"));
        assert_ne!(auto_subnet6("a", b"m1"), auto_subnet6("b", b"m1"));
        assert_ne!(auto_subnet6("a", b"m1"), auto_subnet6("a", b"m2"));
        let c: Config = toml::from_str("subnet6 = \"none\"\n").unwrap();
        let r = c.resolve().unwrap();
        assert_eq!((r.net6, r.subnet6_auto), (None, false));
        let c: Config = toml::from_str("subnet6 = \"auto\"\n").unwrap();
        assert_eq!(c.resolve().unwrap().net6, Config::default().resolve().unwrap().net6);
        let e = toml::from_str::<Config>("subnet6 = \"off\"\n").unwrap_err().to_string();
        assert!(e.contains("is not an IPv6 prefix (like fd00:1::/64), \"auto\" or \"none\""), "{e}");
        // The file form reads back as written.
        for v in ["auto", "none", "fd00:9::/64"] {
            let c: Config = toml::from_str(&format!("subnet6 = \"{v}\"\n")).unwrap();
            assert!(toml::to_string(&c).unwrap().contains(&format!("subnet6 = \"{v}\"")), "{v}");
        }
    }

    #[test]
    fn subnet6_and_gateway6() {
        let c: Config = toml::from_str("subnet6 = \"fd00:77::/64\"\n").unwrap();
        let net6 = c.resolve().unwrap().net6.unwrap();
        assert_eq!(net6.subnet, "fd00:77::/64".parse::<Ipv6Net>().unwrap());
        assert_eq!(net6.gateway, "fd00:77::1".parse::<Ipv6Addr>().unwrap());
        let c: Config = toml::from_str("subnet6 = \"2001:db8:5::/112\"\ngateway6 = \"2001:db8:5::fffe\"\n").unwrap();
        assert_eq!(c.resolve().unwrap().net6.unwrap().gateway, "2001:db8:5::fffe".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn subnet_none_is_an_ipv6_only_instance() {
        let c: Config = toml::from_str("subnet = \"none\"\nsubnet6 = \"fd00:77::/64\"\n").unwrap();
        assert!(toml::to_string(&c).unwrap().contains("subnet = \"none\""));
        let r = c.resolve().unwrap();
        assert_eq!(r.net4, None);
        assert_eq!(r.net6.map(|n| n.gateway), Some("fd00:77::1".parse().unwrap()));
        let e = toml::from_str::<Config>("subnet = \"none\"\nsubnet6 = \"none\"\n").unwrap().resolve().unwrap_err();
        assert!(e.to_string().contains("at least one of them"), "{e}");
        let e = toml::from_str::<Config>("subnet = \"none\"\ngateway = \"10.0.0.1\"\n").unwrap().resolve().unwrap_err();
        assert!(e.to_string().contains("gateway 10.0.0.1 needs a subnet"), "{e}");
        let e = toml::from_str::<Config>("subnet = \"off\"\n").unwrap_err().to_string();
        assert!(e.contains("\"off\" is not an IPv4 prefix"), "{e}");
    }

    #[test]
    fn bad_subnet6_and_gateway6_are_named() {
        let resolve = |subnet6: Option<&str>, gateway6: Option<&str>| {
            let c = Config {
                subnet6: subnet6.map_or(Subnet6::None, |s| Subnet6::Prefix(s.parse().unwrap())),
                gateway6: gateway6.map(|s| s.parse().unwrap()),
                ..Config::default()
            };
            format!("{:#}", c.resolve().unwrap_err())
        };
        assert!(resolve(Some("fd00::1/64"), None).contains("host bits set (did you mean fd00::/64?)"));
        for (bad, why) in [("fd00::/48", "/64 to /120"), ("fd00::/124", "/64 to /120")] {
            assert!(resolve(Some(bad), None).contains(why), "{bad}");
        }
        for bad in ["fe80::/64", "ff02::/64", "::/64", "::ffff:0:0/96", "100::/64"] {
            let e = resolve(Some(bad), None);
            assert!(e.contains("neither a unique local"), "{bad}: {e}");
        }
        assert!(resolve(Some("fd00::/64"), Some("fd01::1")).contains("not a host address of subnet6"));
        assert!(resolve(Some("fd00::/64"), Some("fd00::")).contains("subnet-router anycast"));
        assert!(resolve(None, Some("fd00::1")).contains("needs subnet6"));
    }
}
