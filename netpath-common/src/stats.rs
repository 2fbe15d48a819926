//! Traffic and drop counters, per interface.

/// Why the datapath dropped a frame. The value indexes
/// [`TrafficStats::drops`]; keep the numbers stable, they are visible in
/// `bpftool map dump`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Source MAC is not the container's own.
    SpoofedMac = 0,
    /// Source IP (IPv4 header or ARP sender) is not the container's own.
    SpoofedIp = 1,
    /// A protocol the datapath does not carry for containers (IPv6 for now,
    /// VLAN tags, anything not IPv4 or ARP).
    UnsupportedProtocol = 2,
    /// Truncated or inconsistent headers.
    Malformed = 3,
    /// The program runs on an interface the agent has no endpoint for.
    UnknownEndpoint = 4,
    /// Denied by policy (reserved for the policy datapath).
    Policy = 5,
    /// No route / not reachable (reserved for the NAT datapath).
    NoRoute = 6,
    /// A datapath table was full (conntrack, NAT ports).
    TableFull = 7,
    /// From the uplink to a container address that is not published
    /// (containers are reachable from outside only through published ports).
    NotPublished = 8,
    /// A fragment the datapath cannot translate (no L4 header).
    Fragment = 9,
    /// Masquerade found no free source port for the destination.
    NatExhausted = 10,
}

/// Number of drop reasons; the size of [`TrafficStats::drops`] (room to grow).
pub const DROP_REASON_COUNT: usize = 16;

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::UnsupportedProtocol,
        DropReason::Malformed,
        DropReason::UnknownEndpoint,
        DropReason::Policy,
        DropReason::NoRoute,
        DropReason::TableFull,
        DropReason::NotPublished,
        DropReason::Fragment,
        DropReason::NatExhausted,
    ];

    /// Short name used by the CLI and the API.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::SpoofedMac => "spoofed-mac",
            DropReason::SpoofedIp => "spoofed-ip",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::Malformed => "malformed",
            DropReason::UnknownEndpoint => "unknown-endpoint",
            DropReason::Policy => "policy",
            DropReason::NoRoute => "no-route",
            DropReason::TableFull => "table-full",
            DropReason::NotPublished => "not-published",
            DropReason::Fragment => "fragment",
            DropReason::NatExhausted => "nat-ports-exhausted",
        }
    }
}

/// Packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    #[inline(always)]
    pub fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

/// Per-interface counters, per CPU, keyed by ifindex in `IFACE_STATS`.
/// Directions are the hook's: on a container's host-side veth, `ingress` is
/// what the container sent and `egress` what it received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub ingress: Counter,
    pub egress: Counter,
    /// Dropped frames, indexed by [`DropReason`].
    pub drops: [u64; DROP_REASON_COUNT],
}

impl TrafficStats {
    /// Sums per-CPU values.
    pub fn merge(&mut self, other: &TrafficStats) {
        self.ingress.packets += other.ingress.packets;
        self.ingress.bytes += other.ingress.bytes;
        self.egress.packets += other.egress.packets;
        self.egress.bytes += other.egress.bytes;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += *b;
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TrafficStats {}
