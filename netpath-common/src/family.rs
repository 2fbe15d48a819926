//! The address family as a type: every per-flow key and entry is generic
//! over the address it carries (`[u8; 4]` for IPv4, `[u8; 16]` for IPv6),
//! and the family's names (`CtKey4`/`CtKey6`, `CT4`/`CT6`, ...) are
//! instances of one declaration. What differs between the families beyond
//! the address width is here: ICMP's protocol number and echo types, and
//! the instance's subnet.

use core::{fmt::Debug, hash::Hash};

use crate::DatapathConfig;

pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// An address of one family, in network byte order.
pub trait AddrFamily: Copy + Default + PartialEq + Eq + Hash + Debug {
    /// The family's ICMP (1 or 58).
    const ICMP_PROTO: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;

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

    #[inline(always)]
    fn in_subnet(self, cfg: &DatapathConfig) -> bool {
        cfg.in_subnet4(self)
    }

    #[inline(always)]
    fn icc_denied(self, cfg: &DatapathConfig) -> bool {
        cfg.icc_denies4(self)
    }
}

impl AddrFamily for [u8; 16] {
    const ICMP_PROTO: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = ICMPV6_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMPV6_ECHO_REPLY;

    #[inline(always)]
    fn in_subnet(self, cfg: &DatapathConfig) -> bool {
        cfg.in_subnet6(self)
    }

    #[inline(always)]
    fn icc_denied(self, cfg: &DatapathConfig) -> bool {
        cfg.icc_denies6(self)
    }
}

/// Are two IPv6 addresses equal? Word by word: an array `==` may lower to
/// a memcmp call, which BPF lacks.
#[inline(always)]
pub fn ipv6_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// Does `addr` fall in `prefix`/`len` (IPv6)?
#[inline(always)]
pub fn ipv6_in_prefix(addr: [u8; 16], prefix: [u8; 16], len: u32) -> bool {
    let a = u128::from_be_bytes(addr);
    let p = u128::from_be_bytes(prefix);
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - len.min(128));
    a & mask == p & mask
}

/// The link-local address the kernel gives an interface with `mac` (EUI-64,
/// RFC 4291 appendix A), the only link-local source a container may use.
#[inline(always)]
pub fn link_local_of(mac: [u8; 6]) -> [u8; 16] {
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_the_kernels_eui64() {
        let ll = link_local_of([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        let want: core::net::Ipv6Addr = "fe80::42:acff:fe11:2".parse().unwrap();
        assert_eq!(ll, want.octets());
    }

    #[test]
    fn prefixes_match_on_their_bits_only() {
        let p: core::net::Ipv6Addr = "fd00:1:2:3::".parse().unwrap();
        let inside: core::net::Ipv6Addr = "fd00:1:2:3::42".parse().unwrap();
        let outside: core::net::Ipv6Addr = "fd00:1:2:4::42".parse().unwrap();
        assert!(ipv6_in_prefix(inside.octets(), p.octets(), 64));
        assert!(!ipv6_in_prefix(outside.octets(), p.octets(), 64));
        assert!(ipv6_in_prefix(outside.octets(), p.octets(), 0));
        assert!(ipv6_eq(&inside.octets(), &inside.octets()) && !ipv6_eq(&inside.octets(), &outside.octets()));
    }
}
