//! The address family as a type: every per-flow key and entry is generic
//! over the address it carries, and the family's names (`CtKey4`,
//! `CtEntry4`, `FragKey4`, `PolicyKey4`) are instances of one declaration.
//! What differs between families beyond the address width is here: ICMP's
//! protocol number and echo types, the fragment identification, and the
//! instance's subnet. IPv4 (`[u8; 4]`) is the one family the datapath
//! carries so far; IPv6 (`[u8; 16]`) is to be the second instance of the
//! same code, not a copy of it.

use core::{fmt::Debug, hash::Hash};

use crate::DatapathConfig;

/// An address of one family, in network byte order.
pub trait AddrFamily: Copy + Default + PartialEq + Eq + Hash + Debug {
    /// The family's ICMP protocol number.
    const ICMP_PROTO: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// A fragmented datagram's identification (IPv4's 16-bit field, in
    /// native order; IPv6's is 32 bits).
    type FragId: Copy + Default + PartialEq + Eq + Hash + Debug;

    /// Is the address inside the instance's container subnet of this
    /// family? (False when the instance has none.)
    fn in_subnet(self, cfg: &DatapathConfig) -> bool;

    /// With icc off, may a container not start a flow to this address?
    /// Other containers' addresses are off limits; the gateway is not.
    /// Kernel and agent both decide through here.
    fn icc_denied(self, cfg: &DatapathConfig) -> bool;

    /// The echo type a flow's other direction carries.
    #[inline(always)]
    fn peer_echo_type(icmp_type: u8) -> u8 {
        if icmp_type == Self::ECHO_REQUEST {
            Self::ECHO_REPLY
        } else {
            Self::ECHO_REQUEST
        }
    }
}

impl AddrFamily for [u8; 4] {
    const ICMP_PROTO: u8 = crate::conntrack::IPPROTO_ICMP;
    const ECHO_REQUEST: u8 = crate::conntrack::ICMP_ECHO_REQUEST;
    const ECHO_REPLY: u8 = crate::conntrack::ICMP_ECHO_REPLY;
    type FragId = u16;

    #[inline(always)]
    fn in_subnet(self, cfg: &DatapathConfig) -> bool {
        cfg.in_subnet4(self)
    }

    #[inline(always)]
    fn icc_denied(self, cfg: &DatapathConfig) -> bool {
        cfg.icc_denies4(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_types_reverse_into_each_other() {
        assert_eq!(<[u8; 4]>::peer_echo_type(<[u8; 4]>::ECHO_REQUEST), <[u8; 4]>::ECHO_REPLY);
        assert_eq!(<[u8; 4]>::peer_echo_type(<[u8; 4]>::ECHO_REPLY), <[u8; 4]>::ECHO_REQUEST);
    }
}
