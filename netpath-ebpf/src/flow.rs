//! Parsing an IPv4 packet into the 5-tuple that conntrack and NAT key on.

use netpath_common::{
    conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    CtKey4,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    offsets::{ip_hdr_len, ip_version, IPV4_MIN_HDR_LEN, TCP_FLAGS_OFF},
    packet::{ptr_at, Packet},
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// ICMP header: type, code, checksum, then (for echo) identifier, sequence.
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
    pub seq: [u8; 2],
}

/// Where the headers are, and the tuple they carry.
pub struct Flow4 {
    pub key: CtKey4,
    /// Offset of the IPv4 header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header (after IP options).
    pub l4_off: usize,
    /// TCP flags (`netpath_common::conntrack::TCP_*`; 0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// ICMP type (0 for TCP and UDP).
    pub icmp_type: u8,
}

impl Flow4 {
    /// What a policy rule's port matches: the destination port, or for ICMP
    /// the message type.
    #[inline(always)]
    pub fn policy_port(&self) -> u16 {
        if self.key.proto == IPPROTO_ICMP {
            self.icmp_type as u16
        } else {
            u16::from_be(self.key.dport)
        }
    }
}

/// Why a packet has no flow to translate. None of these is an error in
/// itself: the caller lets such packets pass untouched.
pub enum NoFlow {
    /// Not IPv4 (ARP and the like).
    NotIpv4,
    /// A protocol without ports that the NAT paths do not handle.
    OtherProtocol,
    /// A non-first fragment: it has no L4 header to match or rewrite.
    LaterFragment,
    /// Headers cut short or inconsistent.
    Malformed,
    /// An ICMP error (unreachable, time exceeded, parameter problem): it
    /// quotes the packet it is about, see `icmp_error`.
    IcmpError,
}

#[inline(always)]
pub fn parse4(pkt: &impl Packet) -> Result<Flow4, NoFlow> {
    let eth: *const EthHdr = ptr_at(pkt, 0).ok_or(NoFlow::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(NoFlow::NotIpv4);
    }
    let l3_off = EthHdr::LEN;
    let ip: *const Ipv4Hdr = ptr_at(pkt, l3_off).ok_or(NoFlow::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ip_hdr_len(ip.vihl);
    if ip_version(ip.vihl) != 4 || ihl < IPV4_MIN_HDR_LEN {
        return Err(NoFlow::Malformed);
    }
    let frag_offset = (((ip.frags[0] & 0x1f) as u16) << 8) | ip.frags[1] as u16;
    let proto = ip.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return Err(NoFlow::OtherProtocol);
    }
    if frag_offset != 0 {
        return Err(NoFlow::LaterFragment);
    }
    let l4_off = l3_off + ihl;
    let mut icmp_type = 0;
    let (sport, dport, tcp_flags) = if proto == IPPROTO_ICMP {
        let icmp: *const IcmpHdr = ptr_at(pkt, l4_off).ok_or(NoFlow::Malformed)?;
        // SAFETY: bounds checked by ptr_at.
        let icmp = unsafe { &*icmp };
        icmp_type = icmp.kind;
        match icmp.kind {
            // Echo flows are keyed by their identifier in both port slots.
            ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
                let id = u16::from_ne_bytes(icmp.id);
                (id, id, 0)
            }
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => return Err(NoFlow::IcmpError),
            _ => return Err(NoFlow::OtherProtocol),
        }
    } else if proto == IPPROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(pkt, l4_off).ok_or(NoFlow::Malformed)?;
        // SAFETY: bounds checked by ptr_at; the flags byte is inside the header.
        let tcp = unsafe { &*tcp };
        let flags = unsafe { *((tcp as *const TcpHdr as *const u8).add(TCP_FLAGS_OFF)) };
        (u16::from_ne_bytes(tcp.source), u16::from_ne_bytes(tcp.dest), flags)
    } else {
        let udp: *const UdpHdr = ptr_at(pkt, l4_off).ok_or(NoFlow::Malformed)?;
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &*udp };
        (u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst), 0)
    };
    Ok(Flow4 { key: CtKey4::new(ip.src_addr, ip.dst_addr, sport, dport, proto), l3_off, l4_off, tcp_flags, icmp_type })
}
