//! Where the fields the datapath reads and rewrites sit inside their
//! headers, derived from the header types (network-types' `Ipv4Hdr`,
//! `TcpHdr` and `UdpHdr`, our own `IcmpHdr`) rather than written as numbers.
//! Each offset is relative to the start of its header.

use core::mem::{offset_of, size_of};

use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::flow::IcmpHdr;

// IPv4.

/// Version and header length (IHL), one nibble each.
pub const IP_VIHL_OFF: usize = offset_of!(Ipv4Hdr, vihl);
pub const IP_PROTO_OFF: usize = offset_of!(Ipv4Hdr, proto);
/// Flags and fragment offset; the flags are the first byte's top bits.
pub const IP_FRAGS_OFF: usize = offset_of!(Ipv4Hdr, frags);
/// "Don't fragment", in the first byte of `frags`.
pub const IP_DF: u8 = 0x40;
/// More fragments follow, in the first byte of `frags`.
pub const IP_MF: u8 = 0x20;
pub const IP_CSUM_OFF: usize = offset_of!(Ipv4Hdr, check);
pub const IP_SRC_OFF: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IP_DST_OFF: usize = offset_of!(Ipv4Hdr, dst_addr);
/// The header without options.
pub const IPV4_MIN_HDR_LEN: usize = Ipv4Hdr::LEN;
/// The IHL field counts 32-bit words in 4 bits.
pub const IPV4_MAX_HDR_LEN: usize = 15 * 4;

/// The IP version in the first byte of the header.
#[inline(always)]
pub fn ip_version(vihl: u8) -> u8 {
    vihl >> 4
}

/// The header length in bytes (options included) from the first byte.
#[inline(always)]
pub fn ip_hdr_len(vihl: u8) -> usize {
    ((vihl & 0x0f) as usize) * 4
}

// TCP and UDP.

/// Source port: the same place in TCP and UDP.
pub const L4_SPORT_OFF: usize = offset_of!(TcpHdr, source);
/// Destination port: the same place in TCP and UDP.
pub const L4_DPORT_OFF: usize = offset_of!(TcpHdr, dest);
pub const TCP_CSUM_OFF: usize = offset_of!(TcpHdr, check);
/// The data offset (`doff`, the header's length in 32-bit words) in the
/// high nibble.
pub const TCP_DOFF_OFF: usize = offset_of!(TcpHdr, _bitfield_1);
/// The flags byte: the second byte of the 16-bit field whose first byte
/// holds the data offset (`doff`) and reserved bits.
pub const TCP_FLAGS_OFF: usize = offset_of!(TcpHdr, _bitfield_1) + 1;
pub const UDP_CSUM_OFF: usize = offset_of!(UdpHdr, check);

/// The TCP header length in bytes (options included) from its `doff` byte.
#[inline(always)]
pub fn tcp_hdr_len(doff_byte: u8) -> usize {
    ((doff_byte >> 4) as usize) * 4
}

// ICMP.

pub const ICMP_CSUM_OFF: usize = offset_of!(IcmpHdr, check);
/// The echo identifier.
pub const ICMP_ID_OFF: usize = offset_of!(IcmpHdr, id);
/// An ICMP error quotes the offending packet right after this header.
pub const ICMP_HDR_LEN: usize = size_of::<IcmpHdr>();

// The wire format, stated: a layout change in a header type fails the build.
const _: () = {
    assert!(IP_VIHL_OFF == 0 && IP_PROTO_OFF == 9 && IP_CSUM_OFF == 10);
    assert!(IP_SRC_OFF == 12 && IP_DST_OFF == 16 && IPV4_MIN_HDR_LEN == 20);
    assert!(L4_SPORT_OFF == offset_of!(UdpHdr, src) && L4_DPORT_OFF == offset_of!(UdpHdr, dst));
    assert!(L4_SPORT_OFF == 0 && L4_DPORT_OFF == 2);
    assert!(TCP_FLAGS_OFF == offset_of!(TcpHdr, window) - 1);
    assert!(TCP_DOFF_OFF == 12 && TCP_FLAGS_OFF == 13 && TCP_CSUM_OFF == 16 && UDP_CSUM_OFF == 6);
    assert!(ICMP_CSUM_OFF == 2 && ICMP_ID_OFF == 4 && ICMP_HDR_LEN == 8);
};
