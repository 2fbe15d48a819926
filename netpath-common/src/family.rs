//! The address family as a type: every per-flow key and entry is generic
//! over the address it carries (`[u8; 4]` for IPv4, [`In6Addr`] for IPv6),
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
    /// A fragmented datagram's identification: IPv4's 16-bit field,
    /// IPv6's 32 bits from the fragment header, as bytes (so that
    /// `FragKey6` has no padding).
    type FragId: Copy + Default + PartialEq + Eq + Hash + Debug;
    /// Explicit padding after a `FragKey`'s fields (a hash key has no
    /// bytes the compiler may leave unset).
    type FragPad: Copy + Default + PartialEq + Eq + Hash + Debug;

    /// Is the address inside the instance's container subnet of this
    /// family? (False when the instance has none.)
    fn in_subnet(self, cfg: &DatapathConfig) -> bool;

    /// With icc off, may a container not start a flow to this address?
    /// Other containers' addresses are off limits; the gateway is not.
    /// Kernel and agent both decide through here.
    fn icc_denied(self, cfg: &DatapathConfig) -> bool;

    /// Does the address stay on the link (IPv6 link-local unicast
    /// fe80::/10, link-local multicast ff02::/16)? Neighbour discovery to
    /// it is the link's plumbing; to anything else it would be forwarded.
    fn link_scoped(self) -> bool;

    /// The bridge's address of this family (the client a container sees
    /// when it reaches its own published port).
    fn gateway(cfg: &DatapathConfig) -> Self;

    /// The host address container flows of this family are masqueraded
    /// to (unspecified: none).
    fn masq_addr(cfg: &DatapathConfig) -> Self;

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
    type FragPad = [u8; 0];

    #[inline(always)]
    fn in_subnet(self, cfg: &DatapathConfig) -> bool {
        cfg.in_subnet4(self)
    }

    #[inline(always)]
    fn icc_denied(self, cfg: &DatapathConfig) -> bool {
        cfg.icc_denies4(self)
    }

    #[inline(always)]
    fn link_scoped(self) -> bool {
        false
    }

    #[inline(always)]
    fn gateway(cfg: &DatapathConfig) -> Self {
        cfg.gateway4
    }

    #[inline(always)]
    fn masq_addr(cfg: &DatapathConfig) -> Self {
        cfg.masq_addr4
    }
}

impl AddrFamily for In6Addr {
    const ICMP_PROTO: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = ICMPV6_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMPV6_ECHO_REPLY;
    type FragId = [u8; 4];
    type FragPad = [u8; 2];

    #[inline(always)]
    fn in_subnet(self, cfg: &DatapathConfig) -> bool {
        cfg.in_subnet6(self)
    }

    #[inline(always)]
    fn icc_denied(self, cfg: &DatapathConfig) -> bool {
        cfg.icc_denies6(self)
    }

    #[inline(always)]
    fn link_scoped(self) -> bool {
        let [a, b, ..] = self.0[0].to_ne_bytes();
        (a == 0xfe && b & 0xc0 == 0x80) || (a == 0xff && b == 0x02)
    }

    #[inline(always)]
    fn gateway(cfg: &DatapathConfig) -> Self {
        cfg.gateway6
    }

    #[inline(always)]
    fn masq_addr(cfg: &DatapathConfig) -> Self {
        cfg.masq_addr6
    }
}

/// An IPv6 address, its 16 bytes in network order, held as four 32-bit
/// words (as the kernel's `struct in6_addr`): the datapath copies and
/// compares it a word at a time. As a byte array (alignment 1) every copy
/// is 16 byte loads and stores, and LLVM spills each byte to its own stack
/// slot: IPv6's call chains then outgrow BPF's 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct In6Addr(pub [u32; 4]);

impl In6Addr {
    pub const UNSPECIFIED: In6Addr = In6Addr([0; 4]);
    /// `::1`.
    pub const LOOPBACK: In6Addr = In6Addr::from_octets([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    #[inline(always)]
    pub const fn from_octets(b: [u8; 16]) -> In6Addr {
        In6Addr([
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ])
    }

    #[inline(always)]
    pub fn octets(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, w) in self.0.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        b
    }

    /// Does the address fall in `prefix`/`len`? Word by word: BPF has no
    /// 128-bit shifts.
    #[inline(always)]
    pub fn in_prefix(&self, prefix: &In6Addr, len: u32) -> bool {
        let mut inside = true;
        for i in 0..4 {
            let bits = len.saturating_sub(32 * i as u32).min(32);
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            inside &= u32::from_be(self.0[i]) & mask == u32::from_be(prefix.0[i]) & mask;
        }
        inside
    }
}

/// Word by word: a derived `==` may lower to a memcmp call, which BPF lacks.
impl PartialEq for In6Addr {
    #[inline(always)]
    fn eq(&self, other: &In6Addr) -> bool {
        let (a, b) = (&self.0, &other.0);
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
    }
}

impl Eq for In6Addr {}

impl Hash for In6Addr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl Debug for In6Addr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::net::Ipv6Addr::from(self.octets()).fmt(f)
    }
}

impl From<core::net::Ipv6Addr> for In6Addr {
    fn from(addr: core::net::Ipv6Addr) -> In6Addr {
        In6Addr::from_octets(addr.octets())
    }
}

impl From<In6Addr> for core::net::Ipv6Addr {
    fn from(addr: In6Addr) -> core::net::Ipv6Addr {
        core::net::Ipv6Addr::from(addr.octets())
    }
}

impl From<In6Addr> for core::net::IpAddr {
    fn from(addr: In6Addr) -> core::net::IpAddr {
        core::net::IpAddr::V6(addr.into())
    }
}

// SAFETY: four words, no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for In6Addr {}

/// The link-local address the kernel gives an interface with `mac` (EUI-64,
/// RFC 4291 appendix A), the only link-local source a container may use.
#[inline(always)]
pub fn link_local_of(mac: [u8; 6]) -> In6Addr {
    In6Addr::from_octets([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_the_kernels_eui64() {
        let ll = link_local_of([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        let want: core::net::Ipv6Addr = "fe80::42:acff:fe11:2".parse().unwrap();
        assert_eq!(ll, In6Addr::from(want));
    }

    #[test]
    fn link_scope_is_fe80_and_ff02_only() {
        let scoped = |s: &str| In6Addr::from(s.parse::<core::net::Ipv6Addr>().unwrap()).link_scoped();
        assert!(scoped("fe80::1") && scoped("febf::1") && scoped("ff02::1:ff00:2"));
        assert!(!scoped("fec0::1") && !scoped("ff05::2") && !scoped("fd00::1") && !scoped("2001:db8::1"));
        assert!(![10, 0, 0, 1].link_scoped());
    }

    #[test]
    fn prefixes_match_on_their_bits_only() {
        let a = |s: &str| In6Addr::from(s.parse::<core::net::Ipv6Addr>().unwrap());
        let (p, inside, outside) = (a("fd00:1:2:3::"), a("fd00:1:2:3::42"), a("fd00:1:2:4::42"));
        assert!(inside.in_prefix(&p, 64));
        assert!(!outside.in_prefix(&p, 64));
        assert!(outside.in_prefix(&p, 0));
        assert!(outside.in_prefix(&p, 45) && !outside.in_prefix(&p, 62));
        assert!(inside.in_prefix(&inside, 128) && !inside.in_prefix(&p, 128));
        assert!(inside == inside && inside != outside);
        assert_eq!(core::net::Ipv6Addr::from(inside), "fd00:1:2:3::42".parse::<core::net::Ipv6Addr>().unwrap());
        assert_eq!(format!("{inside:?}"), "fd00:1:2:3::42");
    }
}
