//! Traffic and drop counters, per interface.

/// Why the datapath dropped a frame. The value indexes
/// [`TrafficStats::drops`]; keep the numbers stable, they are visible in
/// `bpftool map dump` (a retired number is never reused: 6).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Source MAC is not the container's own.
    SpoofedMac = 0,
    /// Source IP (IPv4 header or ARP sender) is not the container's own.
    SpoofedIp = 1,
    /// A protocol the datapath does not carry for containers (VLAN tags,
    /// anything not IPv4, ARP or IPv6; IPv6 from a container without an
    /// IPv6 address).
    UnsupportedProtocol = 2,
    /// Truncated or inconsistent headers.
    Malformed = 3,
    /// The program runs on an interface the agent has no container for.
    UnknownContainer = 4,
    /// Denied by policy or by icc off.
    Policy = 5,
    /// A datapath table was full (conntrack).
    TableFull = 7,
    /// From the uplink to a container address that is not published
    /// (containers are reachable from outside only through published ports),
    /// or to a host address on a guarded port (`uplink.guarded_ports`) that
    /// no mapping publishes.
    NotPublished = 8,
    /// A later fragment whose first fragment was not seen or not allowed,
    /// or one that cannot be translated.
    Fragment = 9,
    /// Masquerade found no free source port for the destination.
    NatExhausted = 10,
    /// The kernel refused to write the rewritten bytes into the packet.
    WriteFailed = 11,
    /// The kernel refused to update a checksum.
    ChecksumFailed = 12,
    /// Masquerade has no address (the uplink has none yet) or no port
    /// range: new flows are dropped, never sent with a private source.
    NatUnavailable = 13,
    /// A packet that cannot start a flow (TCP mid-stream, an echo reply)
    /// where a tracked flow is needed and there is none (a container's
    /// packet to be masqueraded whose translation is gone).
    NoFlow = 14,
    /// From the uplink, sent by an address in the operator's
    /// `uplink.denied_sources`: never accepted, replies of flows that
    /// containers or the host opened to it included.
    DeniedSource = 15,
    /// IPv6 extension headers the datapath does not pass: more than it
    /// walks (`MAX_IPV6_EXT_HEADERS`), or a routing header with segments
    /// left (its destination is not the final one, so no rule could judge
    /// it).
    Ipv6Headers = 16,
    /// A container acting as a router or a DHCP server: IPv6 router
    /// advertisements and redirects (RA guard), DHCPv6 server messages.
    RouterRole = 17,
}

/// Number of drop reasons; the size of [`TrafficStats::drops`] (room to grow).
pub const DROP_REASON_COUNT: usize = 20;

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::UnsupportedProtocol,
        DropReason::Malformed,
        DropReason::UnknownContainer,
        DropReason::Policy,
        DropReason::TableFull,
        DropReason::NotPublished,
        DropReason::Fragment,
        DropReason::NatExhausted,
        DropReason::WriteFailed,
        DropReason::ChecksumFailed,
        DropReason::NatUnavailable,
        DropReason::NoFlow,
        DropReason::DeniedSource,
        DropReason::Ipv6Headers,
        DropReason::RouterRole,
    ];

    /// Short name used by the CLI, the API and the monitor.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::SpoofedMac => "spoofed-mac",
            DropReason::SpoofedIp => "spoofed-ip",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::Malformed => "malformed",
            DropReason::UnknownContainer => "unknown-container",
            DropReason::Policy => "policy",
            DropReason::TableFull => "table-full",
            DropReason::NotPublished => "not-published",
            DropReason::Fragment => "fragment",
            DropReason::NatExhausted => "nat-ports-exhausted",
            DropReason::WriteFailed => "write-failed",
            DropReason::ChecksumFailed => "checksum-failed",
            DropReason::NatUnavailable => "nat-unavailable",
            DropReason::NoFlow => "no-flow",
            DropReason::DeniedSource => "denied-source",
            DropReason::Ipv6Headers => "ipv6-headers",
            DropReason::RouterRole => "router-role",
        }
    }

    /// The reason with this number, if it is one.
    pub fn from_u32(v: u32) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| *r as u32 == v)
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

/// The uplink's slot in `IFACE_STATS` (an instance has one uplink, and only
/// the uplink's programs count there).
pub const IFACE_SLOT_UPLINK: u32 = 0;
/// The slot of interfaces the datapath has no container for (a veth program
/// left on an interface whose container is gone: its drops are counted
/// here).
pub const IFACE_SLOT_UNATTRIBUTED: u32 = 1;
/// The first container slot: each container's veth has its own slot from
/// here on (`ContainerEntry::stats_slot`, given by the agent, the lowest
/// free one), zeroed before the container is attached.
pub const IFACE_SLOT_FIRST_CONTAINER: u32 = 2;

/// Per-interface counters, per CPU, at the interface's slot of the
/// `IFACE_STATS` array (`IFACE_SLOT_*`).
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

/// Conntrack pressure as the datapath sees it: one value per CPU at index 0
/// of `CT_STATS` (`bpftool map dump` shows the fields). Each half of a
/// flow or verdict counts as one entry. The kernel does not report LRU
/// evictions; the agent derives them from these counters, its own
/// removals and the live count its GC walks see (see the README).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Entries inserted into `CT4`.
    pub inserts: u64,
    /// Inserts the table refused for another reason than a tuple already
    /// tracked (no free entry the LRU could give).
    pub insert_failures: u64,
    /// Entries the datapath itself deleted (an orphaned half replaced, the
    /// half of a pair another CPU created at the same moment).
    pub removals: u64,
}

impl CtStats {
    /// Sums per-CPU values.
    pub fn merge(&mut self, other: &CtStats) {
        self.inserts += other.inserts;
        self.insert_failures += other.insert_failures;
        self.removals += other.removals;
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TrafficStats {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtStats {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_and_round_trip() {
        for r in DropReason::ALL {
            assert!((r as usize) < DROP_REASON_COUNT, "{} indexes the drops array", r.name());
            assert_eq!(DropReason::from_u32(r as u32), Some(r));
        }
        assert_eq!(DropReason::from_u32(6), None, "a retired number stays unused");
    }

    #[test]
    fn names_are_unique() {
        for a in DropReason::ALL {
            assert_eq!(DropReason::ALL.iter().filter(|b| b.name() == a.name()).count(), 1);
        }
    }
}
