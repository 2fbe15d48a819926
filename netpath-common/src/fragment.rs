//! IPv4 fragments: only the first fragment of a datagram carries the ports
//! that policy judges. Its verdict is kept in `FRAGS4`, keyed by what every
//! fragment of the datagram shares, so that the later fragments pass only
//! when their first one did (and are dropped otherwise: a later fragment
//! that arrives alone is never passed unjudged).

use crate::conntrack::NS_PER_SEC;

/// How long the later fragments of a datagram are accepted after its first
/// one (Linux's `ipfrag_time` default).
pub const FRAG_TIMEOUT_NS: u64 = 30 * NS_PER_SEC;

/// What all fragments of one datagram share, and the hook that saw them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// The IP identification field, network byte order.
    pub id: u16,
    pub proto: u8,
    /// The [`crate::CtScope`] of the verdict (which side of which veth).
    pub scope: u8,
}

/// The first fragment's ports, and until when later fragments may follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry4 {
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub expires_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FragKey4 {}
    unsafe impl aya::Pod for FragEntry4 {}
}
