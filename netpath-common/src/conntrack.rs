//! Connection tracking, NAT and policy-verdict state, shared by every
//! translating path (published ports, masquerade) and by policy.
//!
//! Each tracked flow has two entries in `CT4`, one per direction, keyed by
//! the tuple as the packet carries it *before* translation at the hook where
//! it is looked up. The entry says how to rewrite the packet and holds the
//! other direction's key, so the pair can be collected together.
//!
//! A translated flow (a published port's, a masqueraded one) also carries
//! its policy verdict on those two entries (`CT_F_POLICY`, for the
//! container the flow is delivered to or comes from): one lookup per
//! packet gives both the rewrite and the verdict. Flows without
//! translation, and the second container of a hairpin flow, keep their
//! verdicts as a pair of their own in the policy scopes.
//!
//! A flow that masquerade will translate (a container's, towards an address
//! outside the subnet and the host) gets its verdict on its veth before its
//! translation exists: the veth creates the flow's original half at once,
//! verdict only (`CT_F_MASQ_PENDING`), and the uplink's egress, a moment
//! later on the same packet, picks the source port, inserts the reply half
//! and completes that entry in place. A new masqueraded flow is then two
//! inserts, not a verdict pair besides (four inserts and two deletes).

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

use crate::{
    family::{AddrFamily, In6Addr},
    Direction,
};

/// What a conntrack entry is for. One table holds both kinds, told apart by
/// the key's `scope` byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtScope {
    /// Address translation (published ports, masquerade).
    Nat = 0,
    /// Policy verdicts, keyed as a container's packets look when they leave
    /// it (tcx ingress of its veth).
    PolicyOut = 1,
    /// Policy verdicts, keyed as packets look when they reach a container
    /// (tcx egress of its veth, after translation).
    PolicyIn = 2,
}

impl CtScope {
    /// The verdict scope of flows in `direction`.
    #[inline(always)]
    pub const fn policy(direction: Direction) -> CtScope {
        match direction {
            Direction::In => CtScope::PolicyIn,
            Direction::Out => CtScope::PolicyOut,
        }
    }

    /// The direction of a policy scope (None for NAT).
    pub const fn direction(self) -> Option<Direction> {
        match self {
            CtScope::Nat => None,
            CtScope::PolicyOut => Some(Direction::Out),
            CtScope::PolicyIn => Some(Direction::In),
        }
    }

    pub fn from_u8(v: u8) -> Option<CtScope> {
        [CtScope::Nat, CtScope::PolicyOut, CtScope::PolicyIn].into_iter().find(|s| *s as u8 == v)
    }
}

/// A directional 5-tuple of family `A` (ports in network byte order; for
/// ICMP echo the identifier sits in both ports and the message type in
/// `icmp_type`; protocols without ports have zero ports), and the scope it
/// is tracked in. `CtKey4` and `CtKey6` are its instances.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`CtScope`] as u8.
    pub scope: u8,
    /// For ICMP echo: the family's echo request or reply type, so that a
    /// request and a reply are different tuples (a verdict for replies never
    /// lets requests through); 0 otherwise.
    pub icmp_type: u8,
    pub _pad: u8,
}

pub type CtKey4 = CtKey<[u8; 4]>;
pub type CtKey6 = CtKey<In6Addr>;

impl<A: AddrFamily> CtKey<A> {
    #[inline(always)]
    pub fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> CtKey<A> {
        CtKey { saddr, daddr, sport, dport, proto, scope: CtScope::Nat as u8, icmp_type: 0, _pad: 0 }
    }

    /// The tuple of an echo request (its replies reverse to echo replies).
    #[inline(always)]
    pub fn echo_request(saddr: A, daddr: A, id: u16) -> CtKey<A> {
        CtKey { icmp_type: A::ECHO_REQUEST, ..CtKey::new(saddr, daddr, id, id, A::ICMP_PROTO) }
    }

    /// The same flow seen from the other side, in the same scope: for ICMP
    /// echo, a request's tuple reverses to its reply's and back.
    #[inline(always)]
    pub fn reversed(&self) -> CtKey<A> {
        let mut icmp_type = self.icmp_type;
        if self.proto == A::ICMP_PROTO {
            icmp_type = A::peer_echo_type(icmp_type);
        }
        CtKey { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, icmp_type, ..*self }
    }

    /// [`Self::reversed`] in place (no second key on a tight stack).
    #[inline(always)]
    pub fn reverse(&mut self) {
        (self.saddr, self.daddr, self.sport, self.dport) = (self.daddr, self.saddr, self.dport, self.sport);
        if self.proto == A::ICMP_PROTO {
            self.icmp_type = A::peer_echo_type(self.icmp_type);
        }
    }

    #[inline(always)]
    pub fn in_scope(&self, scope: CtScope) -> CtKey<A> {
        CtKey { scope: scope as u8, ..*self }
    }

    pub fn scope(&self) -> Option<CtScope> {
        CtScope::from_u8(self.scope)
    }

    /// What a policy rule's port matched for the flow this tuple starts:
    /// its destination port, or for ICMP echo its message type (protocols
    /// without ports track port 0).
    #[inline(always)]
    pub fn policy_port(&self) -> u16 {
        if self.proto == A::ICMP_PROTO {
            self.icmp_type as u16
        } else {
            u16::from_be(self.dport)
        }
    }
}

/// Rewrite the source address/port.
pub const CT_F_SNAT: u8 = 1 << 0;
/// Rewrite the destination address/port.
pub const CT_F_DNAT: u8 = 1 << 1;
/// This entry is the reply direction of its flow.
pub const CT_F_REPLY: u8 = 1 << 2;
/// A policy verdict (allowed) for container `container_id`: on an entry
/// of a policy scope, or on a translated flow's entry (see the module).
pub const CT_F_POLICY: u8 = 1 << 3;
/// A pending masquerade: the verdict of a flow a container starts towards
/// the world, kept by its veth on the NAT-scope entry of the tuple it sent
/// (peer: itself), which the uplink's egress completes in place with the
/// translation and a reply half (see the module).
pub const CT_F_MASQ_PENDING: u8 = 1 << 4;

/// Connection states (TCP; UDP and ICMP use `Established` once both
/// directions were seen, `New` before).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    New = 0,
    Established = 1,
    /// FIN seen in this direction (the other may still send: half-close).
    Closing = 2,
    /// RST seen.
    Reset = 3,
    /// FIN seen both ways: only the last ACKs and retransmissions remain,
    /// so the flow goes after the short `tcp_closed` timeout (under churn
    /// closed connections would otherwise crowd out idle established ones).
    Closed = 4,
}

impl CtState {
    pub fn from_u8(v: u8) -> CtState {
        match v {
            1 => CtState::Established,
            2 => CtState::Closing,
            3 => CtState::Reset,
            4 => CtState::Closed,
            _ => CtState::New,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Closing => "closing",
            CtState::Reset => "reset",
            CtState::Closed => "closed",
        }
    }
}

/// A conntrack entry of family `A` (`CtEntry4`, `CtEntry6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<A> {
    /// New source (with `CT_F_SNAT`).
    pub snat_addr: A,
    /// New destination (with `CT_F_DNAT`).
    pub dnat_addr: A,
    pub snat_port: u16,
    pub dnat_port: u16,
    /// `CT_F_*`.
    pub flags: u8,
    /// [`CtState`] as u8.
    pub state: u8,
    pub _pad: u16,
    /// Mapping that created the flow (0: none); the entry is stale once the
    /// mapping is gone (see [`crate::owner`]).
    pub mapping_id: u32,
    /// With `CT_F_POLICY`: the container's `policy_epoch` the verdict was
    /// given (or last confirmed) under.
    pub policy_epoch: u32,
    /// CLOCK_MONOTONIC nanoseconds after which the entry is stale.
    pub expires_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Key of the other direction's entry.
    pub peer: CtKey<A>,
    /// The container the flow belongs to (0: none): with `CT_F_POLICY` the
    /// one whose policy allowed it; on masqueraded flows the one that
    /// started it. The entry is stale once the container is gone (see
    /// [`crate::owner`]).
    pub container_id: u32,
}

pub type CtEntry4 = CtEntry<[u8; 4]>;
pub type CtEntry6 = CtEntry<In6Addr>;

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
    pub tcp_closed: u32,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            // The handshake, from the SYN to the ACK that answers the
            // SYN-ACK: a SYN flood or a storm of new connections lives in
            // this state. 60 s let 20k SYNs a second (four entries each: two
            // NAT, two verdict) claim 4.8M entries; 5 s claims 400k, which
            // the GC's pressure mode (idle handshakes go after 1 s once the
            // table is half full) brings under the default 262144. Real
            // handshakes lose nothing: a retransmitted SYN (Linux: after 1,
            // 2, 4, 8 s) or SYN-ACK refreshes the entry, and a SYN on a
            // collected tuple starts the flow over.
            tcp_new: 5,
            tcp_established: 21600,
            tcp_closing: 60,
            tcp_reset: 10,
            udp: 60,
            icmp: 30,
            tcp_closed: 10,
        }
    }
}

// The state machine below runs in the BPF programs (on every tracked
// packet) and is tested here on the host. Its shape is the verifier's:
// states as plain bytes, chains of conditionals, everything inlined.

/// TCP flag bits, as they sit in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const NS_PER_SEC: u64 = 1_000_000_000;
/// Expiry is refreshed at most this often per entry, to keep hot flows from
/// writing the shared entry on every packet.
pub const REFRESH_NS: u64 = NS_PER_SEC;

// States as plain bytes: an enum lets LLVM assume a range the verifier
// cannot see, and it then indexes tables with unbounded offsets.
const NEW: u8 = CtState::New as u8;
const ESTABLISHED: u8 = CtState::Established as u8;
const CLOSING: u8 = CtState::Closing as u8;
const RESET: u8 = CtState::Reset as u8;
/// FIN seen both ways ([`CtState::Closed`]).
pub const CLOSED: u8 = CtState::Closed as u8;

impl CtTimeouts {
    /// The timeout of a flow of `proto` in `state` ([`CtState`] as u8).
    ///
    /// Selected with a chain of conditionals rather than a match, so that no
    /// lookup table with a variable offset is generated.
    #[inline(always)]
    pub fn secs(&self, proto: u8, state: u8) -> u32 {
        if proto == IPPROTO_TCP {
            let mut secs = self.tcp_new;
            if state == ESTABLISHED {
                secs = self.tcp_established;
            }
            if state == CLOSING {
                secs = self.tcp_closing;
            }
            if state == RESET {
                secs = self.tcp_reset;
            }
            if state == CLOSED {
                secs = self.tcp_closed;
            }
            secs
        } else if proto == IPPROTO_UDP {
            self.udp
        } else {
            self.icmp
        }
    }

    /// When a flow of `proto` in `state`, seen at `now_ns`, expires.
    #[inline(always)]
    pub fn expiry(&self, proto: u8, state: u8, now_ns: u64) -> u64 {
        now_ns + self.secs(proto, state) as u64 * NS_PER_SEC
    }
}

/// The state after seeing a packet with `tcp_flags` (0 for UDP and ICMP)
/// in the direction of an entry in `state`; `reply` says whether that entry
/// is its flow's reply direction (`CT_F_REPLY`).
#[inline(always)]
pub fn next_state(state: u8, reply: bool, proto: u8, tcp_flags: u8) -> u8 {
    let cur = state;
    if proto != IPPROTO_TCP {
        // Datagram flows count as established once the reply direction moved.
        return if reply { ESTABLISHED } else { cur };
    }
    if tcp_flags & TCP_RST != 0 {
        RESET
    } else if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 && (cur == RESET || cur == CLOSING || cur == CLOSED)
    {
        // A new connection on a reused tuple: it starts over, rather than
        // living under the old one's short closing timeout.
        NEW
    } else if cur == RESET || cur == CLOSED {
        // A retransmitted FIN or the last ACK never reopens a closed flow.
        cur
    } else if tcp_flags & TCP_FIN != 0 {
        CLOSING
    } else if cur == NEW && tcp_flags & TCP_ACK != 0 && tcp_flags & TCP_SYN == 0 {
        // The handshake ends with an ACK that is not a SYN-ACK: a SYN-ACK
        // keeps its half new (and under the short timeout), so that SYNs a
        // server answers but no client completes never hold entries for the
        // established timeout.
        ESTABLISHED
    } else {
        cur
    }
}

impl<A> CtEntry<A> {
    /// Does this entry hold a verdict of `container_id`'s policy? (Its
    /// `policy_epoch` says under which rules: a verdict of an earlier epoch
    /// is judged again before it counts.)
    #[inline(always)]
    pub fn verdict_of(&self, container_id: u32) -> bool {
        self.flags & CT_F_POLICY != 0 && self.container_id == container_id
    }

    /// Moves the entry's state and expiry on for a packet (`tcp_flags`, 0
    /// for UDP and ICMP) of a `proto` flow seen at `now_ns`. The entry is
    /// written only when the state changes or the expiry moves by more than
    /// [`REFRESH_NS`] (or backwards, to a shorter timeout). True when this
    /// packet reset the flow: the caller gives the peer entry the same state
    /// and expiry.
    #[inline(always)]
    pub fn refresh(&mut self, proto: u8, tcp_flags: u8, now_ns: u64, timeouts: &CtTimeouts) -> bool {
        let state = next_state(self.state, self.flags & CT_F_REPLY != 0, proto, tcp_flags);
        let expires = timeouts.expiry(proto, state, now_ns);
        let mut reset = false;
        if state != self.state || expires > self.expires_ns + REFRESH_NS || expires < self.expires_ns {
            reset = state == RESET && self.state != RESET;
            self.state = state;
            self.expires_ns = expires;
        }
        reset
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for CtKey4 {}
    unsafe impl aya::Pod for CtKey6 {}
    unsafe impl aya::Pod for CtEntry4 {}
    unsafe impl aya::Pod for CtEntry6 {}
    unsafe impl aya::Pod for CtTimeouts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_port_of_a_tuple_is_its_destination_port_or_echo_type() {
        let (a, b) = ([10, 0, 0, 2], [10, 0, 0, 3]);
        assert_eq!(CtKey4::new(a, b, 40000u16.to_be(), 80u16.to_be(), IPPROTO_TCP).policy_port(), 80);
        assert_eq!(CtKey4::echo_request(a, b, 7).policy_port(), ICMP_ECHO_REQUEST as u16);
        assert_eq!(CtKey4::echo_request(a, b, 7).reversed().policy_port(), ICMP_ECHO_REPLY as u16);
        assert_eq!(CtKey4::new(a, b, 0, 0, 47).policy_port(), 0, "no ports: port 0");
    }

    #[test]
    fn echo_requests_and_replies_are_different_tuples() {
        let (a, b) = ([10, 0, 0, 2], [198, 51, 100, 1]);
        let request = CtKey4::echo_request(a, b, 7);
        let reply = request.reversed();
        assert_eq!((reply.saddr, reply.daddr, reply.icmp_type), (b, a, ICMP_ECHO_REPLY));
        assert_eq!(reply.reversed(), request);
        // A reply in the request's direction is not the request.
        assert_ne!(CtKey4::new(a, b, 7, 7, IPPROTO_ICMP), request);
        // Other protocols reverse addresses and ports only.
        let tcp = CtKey4::new(a, b, 1000, 80, IPPROTO_TCP);
        assert_eq!(tcp.reversed().icmp_type, 0);
        assert_eq!(tcp.reversed().reversed(), tcp);
    }

    const UDP_ICMP: [u8; 2] = [IPPROTO_UDP, IPPROTO_ICMP];
    const ALL_STATES: [u8; 5] = [NEW, ESTABLISHED, CLOSING, RESET, CLOSED];

    fn tcp(state: u8, reply: bool, flags: u8) -> u8 {
        next_state(state, reply, IPPROTO_TCP, flags)
    }

    #[test]
    fn syn_keeps_a_flow_new() {
        assert_eq!(tcp(NEW, false, TCP_SYN), NEW);
    }

    #[test]
    fn a_syn_ack_does_not_establish() {
        // Only the client's ACK completes a handshake: an answered SYN that
        // nobody completes (a SYN flood) keeps the short new timeout.
        assert_eq!(tcp(NEW, true, TCP_SYN | TCP_ACK), NEW);
        assert_eq!(tcp(NEW, false, TCP_SYN | TCP_ACK), NEW);
    }

    #[test]
    fn ack_establishes_either_way() {
        assert_eq!(tcp(NEW, false, TCP_ACK), ESTABLISHED);
        assert_eq!(tcp(NEW, true, TCP_ACK), ESTABLISHED);
        assert_eq!(tcp(ESTABLISHED, false, TCP_ACK), ESTABLISHED);
        assert_eq!(tcp(ESTABLISHED, true, TCP_ACK), ESTABLISHED);
    }

    #[test]
    fn a_flagless_segment_changes_nothing() {
        for state in ALL_STATES {
            assert_eq!(tcp(state, false, 0), state);
            assert_eq!(tcp(state, true, 0), state);
        }
    }

    #[test]
    fn fin_is_closing() {
        for reply in [false, true] {
            for state in [NEW, ESTABLISHED, CLOSING] {
                assert_eq!(tcp(state, reply, TCP_FIN), CLOSING);
                assert_eq!(tcp(state, reply, TCP_FIN | TCP_ACK), CLOSING);
            }
        }
        // The last ACK leaves it closing.
        assert_eq!(tcp(CLOSING, false, TCP_ACK), CLOSING);
    }

    #[test]
    fn rst_resets_from_any_state_either_way() {
        for reply in [false, true] {
            for state in ALL_STATES {
                assert_eq!(tcp(state, reply, TCP_RST), RESET);
                assert_eq!(tcp(state, reply, TCP_RST | TCP_ACK), RESET);
            }
        }
    }

    #[test]
    fn a_reset_flow_stays_reset() {
        for reply in [false, true] {
            for flags in [TCP_ACK, TCP_FIN, TCP_FIN | TCP_ACK, TCP_SYN | TCP_ACK] {
                assert_eq!(tcp(RESET, reply, flags), RESET);
            }
        }
    }

    #[test]
    fn syn_on_a_reset_or_closing_tuple_starts_over() {
        for reply in [false, true] {
            assert_eq!(tcp(RESET, reply, TCP_SYN), NEW);
            assert_eq!(tcp(CLOSING, reply, TCP_SYN), NEW);
        }
        // Not on a live connection, and not with ACK (that answers a SYN).
        assert_eq!(tcp(ESTABLISHED, false, TCP_SYN), ESTABLISHED);
        assert_eq!(tcp(CLOSING, true, TCP_SYN | TCP_ACK), CLOSING);
    }

    #[test]
    fn a_whole_connection() {
        let (mut orig, mut reply) = (NEW, NEW);
        let mut step = |from_reply: bool, flags: u8| {
            if from_reply {
                reply = tcp(reply, true, flags);
            } else {
                orig = tcp(orig, false, flags);
            }
            (orig, reply)
        };
        assert_eq!(step(false, TCP_SYN), (NEW, NEW));
        assert_eq!(step(true, TCP_SYN | TCP_ACK), (NEW, NEW));
        // The client's ACK completes the handshake (the datapath, which sees
        // the peer, establishes the other half with it).
        assert_eq!(step(false, TCP_ACK), (ESTABLISHED, NEW));
        assert_eq!(step(true, TCP_ACK), (ESTABLISHED, ESTABLISHED));
        assert_eq!(step(false, TCP_FIN | TCP_ACK), (CLOSING, ESTABLISHED));
        assert_eq!(step(true, TCP_FIN | TCP_ACK), (CLOSING, CLOSING));
        assert_eq!(step(false, TCP_ACK), (CLOSING, CLOSING));
        // Both FINs seen: the datapath moves both halves to closed (it sees
        // the peer); a retransmitted FIN or an ACK keeps them there.
        assert_eq!(tcp(CLOSED, false, TCP_FIN | TCP_ACK), CLOSED);
        assert_eq!(tcp(CLOSED, true, TCP_ACK), CLOSED);
        assert_eq!(tcp(CLOSED, true, TCP_RST), RESET);
        assert_eq!(tcp(CLOSED, false, TCP_SYN), NEW);
        // The tuple is reused.
        assert_eq!(step(false, TCP_SYN), (NEW, CLOSING));
    }

    #[test]
    fn datagrams_are_established_once_the_reply_moves() {
        for proto in UDP_ICMP {
            assert_eq!(next_state(NEW, false, proto, 0), NEW);
            assert_eq!(next_state(NEW, true, proto, 0), ESTABLISHED);
            assert_eq!(next_state(ESTABLISHED, false, proto, 0), ESTABLISHED);
            assert_eq!(next_state(ESTABLISHED, true, proto, 0), ESTABLISHED);
            // TCP flags mean nothing here (the parser passes 0 anyway).
            assert_eq!(next_state(NEW, false, proto, TCP_RST | TCP_FIN), NEW);
        }
    }

    /// Distinct values, so that a wrong pick shows.
    const TIMEOUTS: CtTimeouts = CtTimeouts {
        tcp_new: 11,
        tcp_established: 22,
        tcp_closing: 33,
        tcp_reset: 44,
        udp: 55,
        icmp: 66,
        tcp_closed: 77,
    };

    #[test]
    fn timeouts_per_state_and_protocol() {
        let t = TIMEOUTS;
        assert_eq!(t.secs(IPPROTO_TCP, NEW), 11);
        assert_eq!(t.secs(IPPROTO_TCP, ESTABLISHED), 22);
        assert_eq!(t.secs(IPPROTO_TCP, CLOSING), 33);
        assert_eq!(t.secs(IPPROTO_TCP, RESET), 44);
        assert_eq!(t.secs(IPPROTO_TCP, CLOSED), 77);
        // A state byte that is none of them: the short new-flow timeout.
        assert_eq!(t.secs(IPPROTO_TCP, 200), 11);
        for state in ALL_STATES {
            assert_eq!(t.secs(IPPROTO_UDP, state), 55);
            assert_eq!(t.secs(IPPROTO_ICMP, state), 66);
        }
        let d = CtTimeouts::default();
        assert_eq!(d.secs(IPPROTO_TCP, ESTABLISHED), d.tcp_established);
        assert_eq!(d.secs(IPPROTO_UDP, NEW), d.udp);
    }

    #[test]
    fn expiry_is_now_plus_the_timeout() {
        let now = 5_000 * NS_PER_SEC + 123;
        assert_eq!(TIMEOUTS.expiry(IPPROTO_TCP, NEW, now), now + 11 * NS_PER_SEC);
        assert_eq!(TIMEOUTS.expiry(IPPROTO_TCP, ESTABLISHED, now), now + 22 * NS_PER_SEC);
        assert_eq!(TIMEOUTS.expiry(IPPROTO_UDP, ESTABLISHED, now), now + 55 * NS_PER_SEC);
        assert_eq!(TIMEOUTS.expiry(IPPROTO_ICMP, NEW, 0), 66 * NS_PER_SEC);
    }

    /// A flow's entry as `conntrack::create4` leaves it at `now`.
    fn created(proto: u8, reply: bool, now: u64) -> CtEntry4 {
        CtEntry4 {
            state: NEW,
            flags: if reply { CT_F_REPLY } else { 0 },
            expires_ns: TIMEOUTS.expiry(proto, NEW, now),
            ..Default::default()
        }
    }

    #[test]
    fn refresh_with_a_fake_clock() {
        let t0 = 1_000 * NS_PER_SEC;
        let mut e = created(IPPROTO_TCP, false, t0);
        // Half a second later, nothing changes: not written.
        assert!(!e.refresh(IPPROTO_TCP, TCP_SYN, t0 + NS_PER_SEC / 2, &TIMEOUTS));
        assert_eq!((e.state, e.expires_ns), (NEW, t0 + 11 * NS_PER_SEC));
        // Two seconds later the expiry moves on.
        let t1 = t0 + 2 * NS_PER_SEC;
        assert!(!e.refresh(IPPROTO_TCP, TCP_SYN, t1, &TIMEOUTS));
        assert_eq!((e.state, e.expires_ns), (NEW, t1 + 11 * NS_PER_SEC));
        // A state change is written at once, with its own timeout.
        let t2 = t1 + 1;
        assert!(!e.refresh(IPPROTO_TCP, TCP_ACK, t2, &TIMEOUTS));
        assert_eq!((e.state, e.expires_ns), (ESTABLISHED, t2 + 22 * NS_PER_SEC));
        // A shorter timeout is taken even within the refresh interval.
        let t3 = t2 + 2;
        assert!(!e.refresh(IPPROTO_TCP, TCP_FIN, t3, &TIMEOUTS));
        assert_eq!((e.state, e.expires_ns), (CLOSING, t3 + 33 * NS_PER_SEC));
        // The reset is reported once, for the peer to follow.
        let t4 = t3 + 3;
        assert!(e.refresh(IPPROTO_TCP, TCP_RST, t4, &TIMEOUTS));
        assert_eq!((e.state, e.expires_ns), (RESET, t4 + 44 * NS_PER_SEC));
        assert!(!e.refresh(IPPROTO_TCP, TCP_RST, t4 + 5 * NS_PER_SEC, &TIMEOUTS));
        assert_eq!((e.state, e.expires_ns), (RESET, t4 + 49 * NS_PER_SEC));
        // Counters are the caller's.
        assert_eq!((e.packets, e.bytes), (0, 0));
    }

    #[test]
    fn refresh_of_a_datagram_flow() {
        let t0 = 7 * NS_PER_SEC;
        for proto in UDP_ICMP {
            let secs = TIMEOUTS.secs(proto, NEW) as u64;
            let mut orig = created(proto, false, t0);
            let mut reply = created(proto, true, t0);
            assert!(!orig.refresh(proto, 0, t0 + 1, &TIMEOUTS));
            assert_eq!((orig.state, orig.expires_ns), (NEW, t0 + secs * NS_PER_SEC));
            assert!(!reply.refresh(proto, 0, t0 + 2, &TIMEOUTS));
            assert_eq!((reply.state, reply.expires_ns), (ESTABLISHED, t0 + 2 + secs * NS_PER_SEC));
        }
    }
}
