//! Connection tracking and NAT state, shared by every translating path
//! (published ports now, masquerade next).
//!
//! Each tracked flow has two entries in `CT4`, one per direction, keyed by
//! the tuple as the packet carries it *before* translation at the hook where
//! it is looked up. The entry says how to rewrite the packet and holds the
//! other direction's key, so the pair can be collected together.

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Entries for address translation (published ports, masquerade).
pub const CT_SCOPE_NAT: u8 = 0;
/// Policy verdicts, keyed as a container's packets look when they leave it
/// (tcx ingress of its veth).
pub const CT_SCOPE_FROM_EP: u8 = 1;
/// Policy verdicts, keyed as packets look when they reach a container
/// (tcx egress of its veth, after translation).
pub const CT_SCOPE_TO_EP: u8 = 2;

/// A directional IPv4 5-tuple (ports in network byte order; for ICMP echo
/// the identifier sits in both ports), and the scope it is tracked in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_SCOPE_*`.
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl CtKey {
    #[inline(always)]
    pub fn new(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey { saddr, daddr, sport, dport, proto, scope: CT_SCOPE_NAT, _pad: [0; 2] }
    }

    /// The same flow seen from the other side, in the same scope.
    #[inline(always)]
    pub fn reversed(&self) -> CtKey {
        CtKey { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, ..*self }
    }

    #[inline(always)]
    pub fn in_scope(&self, scope: u8) -> CtKey {
        CtKey { scope, ..*self }
    }
}

/// Rewrite the source address/port.
pub const CT_F_SNAT: u8 = 1 << 0;
/// Rewrite the destination address/port.
pub const CT_F_DNAT: u8 = 1 << 1;
/// This entry is the reply direction of its flow.
pub const CT_F_REPLY: u8 = 1 << 2;
/// A policy verdict (allowed) for endpoint `endpoint_id`.
pub const CT_F_POLICY: u8 = 1 << 3;

/// Connection states (TCP; UDP and ICMP use `Established` once both
/// directions were seen, `New` before).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    New = 0,
    Established = 1,
    /// FIN seen.
    Closing = 2,
    /// RST seen.
    Reset = 3,
}

impl CtState {
    pub fn from_u8(v: u8) -> CtState {
        match v {
            1 => CtState::Established,
            2 => CtState::Closing,
            3 => CtState::Reset,
            _ => CtState::New,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Closing => "closing",
            CtState::Reset => "reset",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// New source (with `CT_F_SNAT`).
    pub snat_addr: [u8; 4],
    /// New destination (with `CT_F_DNAT`).
    pub dnat_addr: [u8; 4],
    pub snat_port: u16,
    pub dnat_port: u16,
    /// `CT_F_*`.
    pub flags: u8,
    /// [`CtState`] as u8.
    pub state: u8,
    pub _pad: u16,
    /// Mapping that created the flow (0: none).
    pub service_id: u32,
    /// CLOCK_MONOTONIC nanoseconds after which the entry is stale.
    pub expires_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Key of the other direction's entry.
    pub peer: CtKey,
    /// With `CT_F_POLICY`: the endpoint whose policy allowed the flow.
    pub endpoint_id: u32,
}

/// Timeouts per state, in seconds (in the `CONFIG` map, so that operators
/// and tests can change them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_new: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_reset: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts { tcp_new: 60, tcp_established: 21600, tcp_closing: 60, tcp_reset: 10, udp: 60, icmp: 30 }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for CtTimeouts {}
}
