//! Fragments (IPv4, and IPv6's fragment header): only the first fragment of a datagram carries the ports
//! that policy judges and NAT translates by. What happened to it is kept in
//! `FRAGS4`/`FRAGS6`, keyed by what every fragment of the datagram shares:
//! - in the policy scopes, its verdict: the later fragments pass only when
//!   their first one did (and are dropped otherwise: a later fragment that
//!   arrives alone is never passed unjudged);
//! - in the NAT scope, its translated addresses: the later fragments get the
//!   same ones (they have no ports to translate by), so a fragmented
//!   datagram of a masqueraded or published flow arrives whole, and none of
//!   it leaves with a container's private address.
//!
//! Later fragments that arrive before their first one are not buffered:
//! they are handled as if alone (the sender's retransmission repairs it).

use crate::{
    conntrack::NS_PER_SEC,
    family::{AddrFamily, In6Addr},
};

/// How long the later fragments of a datagram are accepted after its first
/// one (Linux's `ipfrag_time` default).
pub const FRAG_TIMEOUT_NS: u64 = 30 * NS_PER_SEC;

/// What all fragments of one datagram share, and the hook that saw them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey<A: AddrFamily> {
    pub saddr: A,
    pub daddr: A,
    /// The identification (IPv4's in native order), see
    /// [`AddrFamily::FragId`].
    pub id: A::FragId,
    pub proto: u8,
    /// The [`crate::CtScope`] of the verdict (which side of which veth).
    pub scope: u8,
    pub _pad: A::FragPad,
}

pub type FragKey4 = FragKey<[u8; 4]>;
pub type FragKey6 = FragKey<In6Addr>;

/// The first fragment's ports, its translated addresses (NAT scope), and
/// until when later fragments may follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry<A> {
    pub sport: u16,
    pub dport: u16,
    /// NAT scope: the first fragment's source and destination after
    /// translation (the key has them before). Unused in the policy scopes.
    pub nat_saddr: A,
    pub nat_daddr: A,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub expires_ns: u64,
}

pub type FragEntry4 = FragEntry<[u8; 4]>;
pub type FragEntry6 = FragEntry<In6Addr>;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FragKey4 {}
    unsafe impl aya::Pod for FragKey6 {}
    unsafe impl aya::Pod for FragEntry4 {}
    unsafe impl aya::Pod for FragEntry6 {}
}
