//! Parsing a packet into the 5-tuple that conntrack and NAT key on: the
//! parse result is generic over the address family ([`Flow4`], [`Flow6`]);
//! IPv4's parser is here, IPv6's (with its extension headers) in `ipv6`.

use netpath_common::{
    conntrack::{
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN,
    },
    AddrFamily, CtKey, CtKey4, CtScope, FragKey, FragKey4, In6Addr,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    offsets::{ip_hdr_len, ip_version, IPV4_MIN_HDR_LEN, IP_MF, TCP_FLAGS_OFF},
    packet::{ptr_at, Packet},
};

pub const ICMP_DEST_UNREACH: u8 = 3;
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
pub struct Flow<A: AddrFamily> {
    pub key: CtKey<A>,
    /// Offset of the L4 header (after IPv4 options or IPv6 extension
    /// headers; the IP header is at `EthHdr::LEN`). A u16 keeps the parse
    /// result, which the entry points hold on their stack, small.
    pub l4_off: u16,
    /// TCP flags (`netpath_common::conntrack::TCP_*`; 0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// ICMP type (0 for TCP and UDP).
    pub icmp_type: u8,
    /// The key carries ports (TCP, UDP) or an echo identifier, which NAT can
    /// rewrite. Other protocols are keyed by addresses and protocol only.
    pub ported: bool,
    /// The first fragment of a fragmented datagram (more follow).
    pub first_fragment: bool,
    /// The identification (IPv4's field, IPv6's fragment header's; read in
    /// native order), for fragments.
    pub ip_id: A::FragId,
}

pub type Flow4 = Flow<[u8; 4]>;
pub type Flow6 = Flow<In6Addr>;

impl<A: AddrFamily> Flow<A> {
    /// Can this packet start a flow? A TCP packet only with a lone SYN, ICMP
    /// echo only as a request; anything else belongs to a flow started
    /// before (UDP and other protocols cannot tell, so every packet can).
    #[inline(always)]
    pub fn starts_flow(&self) -> bool {
        let proto = self.key.proto;
        if proto == IPPROTO_TCP {
            self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        } else if proto == A::ICMP_PROTO {
            self.icmp_type == A::ECHO_REQUEST
        } else {
            true
        }
    }

    /// What a policy rule's port matches, for this packet in its own
    /// direction (`own`) or for the same flow's packets the other way: the
    /// destination port (the other way: this packet's source port); for ICMP
    /// echo the message type (the other way: request for reply and back);
    /// 0 for protocols without ports.
    #[inline(always)]
    pub fn policy_port(&self, own: bool) -> u16 {
        if self.key.proto == A::ICMP_PROTO {
            (if own { self.icmp_type } else { A::peer_echo_type(self.icmp_type) }) as u16
        } else if !self.ported {
            0
        } else if own {
            u16::from_be(self.key.dport)
        } else {
            u16::from_be(self.key.sport)
        }
    }

    /// The fragment-tracking key of this (first) fragment at `scope`.
    #[inline(always)]
    pub fn frag_key(&self, scope: CtScope) -> FragKey<A> {
        FragKey {
            saddr: self.key.saddr,
            daddr: self.key.daddr,
            id: self.ip_id,
            proto: self.key.proto,
            scope: scope as u8,
            _pad: Default::default(),
        }
    }
}

/// Why a packet has no flow to track or translate.
pub enum NoFlow<A: AddrFamily> {
    /// Not of the parser's family (ARP and the like, or the other family).
    OtherEtherType,
    /// A non-first fragment: no L4 header; the key ties it to its first
    /// fragment (scope unset).
    LaterFragment(FragKey<A>),
    /// Headers cut short or inconsistent, including a first fragment too
    /// short to hold its whole TCP/UDP/ICMP header (RFC 1858).
    Malformed,
    /// An ICMP error (unreachable, time exceeded, parameter problem): it
    /// quotes the packet it is about, see `icmp_error`. Where the ICMP
    /// header starts (IPv6's is past the extension headers: its quote is
    /// read without walking them again).
    IcmpError(u16),
    /// ICMP that is neither echo nor an error (timestamp, router
    /// solicitation, ...): judged on its own, never tracked or translated.
    /// The key has its addresses, protocol and type.
    IcmpOther(CtKey<A>),
    /// IPv6 neighbour discovery and multicast listener messages: the link's
    /// plumbing, as ARP is IPv4's (anti-spoofing checks what a container
    /// sends of it; policy does not judge it when it stays on the link).
    Neighbour { dst: A, icmp_type: u8 },
    /// IPv6 extension headers the datapath does not pass (see
    /// `DropReason::Ipv6Headers`).
    BadHeaders,
}

/// A parse's outcome.
pub type Parsed<A> = Result<Flow<A>, NoFlow<A>>;
// (A type alias's bounds are not checked; `Flow` and `NoFlow` need
// `A: AddrFamily`.)
pub type Parsed4 = Parsed<[u8; 4]>;
pub type Parsed6 = Parsed<In6Addr>;

#[inline(always)]
pub fn parse4(pkt: &impl Packet) -> Parsed4 {
    let eth: *const EthHdr = ptr_at(pkt, 0).ok_or(NoFlow::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(NoFlow::OtherEtherType);
    }
    let l3_off = EthHdr::LEN;
    let ip: *const Ipv4Hdr = ptr_at(pkt, l3_off).ok_or(NoFlow::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ip_hdr_len(ip.vihl);
    if ip_version(ip.vihl) != 4 || ihl < IPV4_MIN_HDR_LEN {
        return Err(NoFlow::Malformed);
    }
    // The datagram ends at its total length, not at the frame's end: what
    // lies past it (padding) is no header, and a header cut short by it
    // makes the packet malformed (a tiny first fragment padded to look
    // whole included). 0 states no length only on a GSO packet (BIG TCP);
    // on a single frame it is a length shorter than the header.
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let no_length = tot_len == 0 && pkt.is_gso();
    let ip_end = if no_length { usize::MAX } else { l3_off + tot_len };
    if !no_length && tot_len < ihl {
        return Err(NoFlow::Malformed);
    }
    // The whole IP header, options included, is in the frame.
    if pkt.data() + l3_off + ihl > pkt.data_end() {
        return Err(NoFlow::Malformed);
    }
    let frag_offset = (((ip.frags[0] & 0x1f) as u16) << 8) | ip.frags[1] as u16;
    let first_fragment = ip.frags[0] & IP_MF != 0;
    let proto = ip.proto;
    let ip_id = u16::from_ne_bytes(ip.id);
    if frag_offset != 0 {
        let key = FragKey4 { saddr: ip.src_addr, daddr: ip.dst_addr, id: ip_id, proto, scope: 0, _pad: [] };
        return Err(NoFlow::LaterFragment(key));
    }
    let l4_off = l3_off + ihl;
    // A ported header must end within the datagram.
    let l4_fits = |len: usize| l4_off + len <= ip_end;
    let mut icmp_type = 0;
    let mut ported = true;
    let (sport, dport, tcp_flags) = if proto == IPPROTO_ICMP {
        let icmp: *const IcmpHdr = ptr_at(pkt, l4_off).ok_or(NoFlow::Malformed)?;
        if !l4_fits(core::mem::size_of::<IcmpHdr>()) {
            return Err(NoFlow::Malformed);
        }
        // SAFETY: bounds checked by ptr_at.
        let icmp = unsafe { &*icmp };
        icmp_type = icmp.kind;
        match icmp.kind {
            // Echo flows are keyed by their identifier in both port slots.
            ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
                let id = u16::from_ne_bytes(icmp.id);
                (id, id, 0)
            }
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                return Err(NoFlow::IcmpError(l4_off as u16))
            }
            other => {
                let key = CtKey4 { icmp_type: other, ..CtKey4::new(ip.src_addr, ip.dst_addr, 0, 0, proto) };
                return Err(NoFlow::IcmpOther(key));
            }
        }
    } else if proto == IPPROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(pkt, l4_off).ok_or(NoFlow::Malformed)?;
        if !l4_fits(TcpHdr::LEN) {
            return Err(NoFlow::Malformed);
        }
        // SAFETY: bounds checked by ptr_at; the flags byte is inside the header.
        let tcp = unsafe { &*tcp };
        let flags = unsafe { *((tcp as *const TcpHdr as *const u8).add(TCP_FLAGS_OFF)) };
        (u16::from_ne_bytes(tcp.source), u16::from_ne_bytes(tcp.dest), flags)
    } else if proto == IPPROTO_UDP {
        let udp: *const UdpHdr = ptr_at(pkt, l4_off).ok_or(NoFlow::Malformed)?;
        if !l4_fits(UdpHdr::LEN) {
            return Err(NoFlow::Malformed);
        }
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &*udp };
        (u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst), 0)
    } else {
        // Any other protocol (GRE, SCTP, raw 253, ...): tracked and judged
        // by addresses and protocol.
        ported = false;
        (0, 0, 0)
    };
    let mut key = CtKey4::new(ip.src_addr, ip.dst_addr, sport, dport, proto);
    if proto == IPPROTO_ICMP {
        key.icmp_type = icmp_type;
    }
    Ok(Flow4 { key, l4_off: l4_off as u16, tcp_flags, icmp_type, ported, first_fragment, ip_id })
}
