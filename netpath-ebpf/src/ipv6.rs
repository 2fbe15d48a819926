//! IPv6 parsing: the fixed header, a bounded walk over the extension
//! headers, and the flow the packet carries (IPv4's is in `flow`).
//!
//! The walk follows at most [`MAX_IPV6_EXT_HEADERS`] extension headers
//! (hop-by-hop, destination options, routing, fragment, authentication).
//! A packet with more, or with a routing header whose segments are not all
//! visited (its destination is not the final one, so no rule could judge
//! it), is dropped as `DropReason::Ipv6Headers`: never passed unjudged.
//! The fixed header, and the upper-layer header right behind it, are read
//! in place, as IPv4's are (`packet::pull_headers` put them in the skb's
//! linear part, at offsets the verifier can follow); extension headers and
//! what lies behind them are read with `bpf_skb_load_bytes`, so headers in
//! the skb's non-linear part are read too and the verifier sees no
//! variable packet offsets. (Each load is a helper call; every packet paid
//! eight of them per walk before, and a container's packet is walked twice.)

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    family::{ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6},
    CtKey6, DatapathConfig, DropReason, FragKey6, In6Addr,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    flow::{Flow6, NoFlow, Parsed6},
    offsets::{ICMP_HDR_LEN, ICMP_ID_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_FLAGS_OFF},
    packet::{load, ptr_at, store, Packet},
};

/// Extension headers walked before the packet is refused.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

// ICMPv6 (RFC 4443, 4861, 2710/3810).
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PARAM_PROBLEM: u8 = 4;
pub const ICMPV6_MLD_QUERY: u8 = 130;
pub const ICMPV6_MLD_REPORT: u8 = 131;
pub const ICMPV6_MLD_DONE: u8 = 132;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGH_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGH_ADVERT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;
pub const ICMPV6_MLD2_REPORT: u8 = 143;
/// Where a neighbour solicitation's or advertisement's target address sits
/// in the ICMPv6 message.
pub const ND_TARGET_OFF: usize = 8;

// Where the fixed header's fields sit, for the loads and stores that
// address them by offset (a quoted header, the rewrites).
pub const IP6_NEXT_HDR_OFF: usize = 6;
pub const IP6_SRC_OFF: usize = 8;
pub const IP6_DST_OFF: usize = 24;
const _: () = assert!(Ipv6Hdr::LEN == 40);

/// What the walk found: the upper-layer protocol, where its header starts
/// and where the datagram ends, and whether it is a first fragment.
#[derive(Clone, Copy)]
pub struct Headers6 {
    pub saddr: In6Addr,
    pub daddr: In6Addr,
    /// Offsets as u32 (the walk's callers' frames are tight): where the
    /// upper-layer header starts, and where the datagram ends (`u32::MAX`:
    /// a GSO packet that states no length).
    pub l4_off: u32,
    pub ip_end: u32,
    pub frag_id: [u8; 4],
    pub proto: u8,
    pub first_fragment: bool,
}

#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    next == NEXTHDR_HOP
        || next == NEXTHDR_ROUTING
        || next == NEXTHDR_FRAGMENT
        || next == NEXTHDR_AUTH
        || next == NEXTHDR_DEST
}

/// Where the upper-layer header starts when no extension header precedes it.
const PLAIN_L4_OFF: usize = EthHdr::LEN + Ipv6Hdr::LEN;

/// The fixed header, in place; None if the linear part does not hold it (a
/// frame too short for one, or whose headers could not be pulled).
#[inline(always)]
pub fn fixed_header(ctx: &TcContext) -> Option<&Ipv6Hdr> {
    // SAFETY: bounds checked by ptr_at; the skb's data stays valid for the run.
    ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN).map(|ip| unsafe { &*ip })
}

/// The `T` at `field_off` of the upper-layer header at `l4`: read in place
/// right behind the fixed header (a constant offset), with a load behind
/// extension headers.
#[inline(always)]
pub fn l4_field<T: Copy>(ctx: &TcContext, l4: usize, field_off: usize) -> Result<T, DropReason> {
    if l4 == PLAIN_L4_OFF {
        // SAFETY: bounds checked by ptr_at.
        ptr_at::<T>(ctx, PLAIN_L4_OFF + field_off).map(|f| unsafe { f.read_unaligned() }).ok_or(DropReason::Malformed)
    } else {
        load(ctx, l4 + field_off)
    }
}

/// The source and destination of the fixed header. The walk reads them
/// where it returns them: kept across its loads, they would take a spill
/// on a tight stack.
#[inline(always)]
fn addresses(ctx: &TcContext) -> Option<(In6Addr, In6Addr)> {
    fixed_header(ctx).map(|ip| (In6Addr::from_octets(ip.src_addr), In6Addr::from_octets(ip.dst_addr)))
}

/// The fixed header and the extension headers of the IPv6 packet in `ctx`.
#[inline(never)]
pub fn walk6(ctx: &TcContext) -> Result<Headers6, NoFlow<In6Addr>> {
    let l3 = EthHdr::LEN;
    let malformed = |_: DropReason| NoFlow::Malformed;
    let ip = fixed_header(ctx).ok_or(NoFlow::Malformed)?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(NoFlow::Malformed);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let mut next = ip.next_hdr;
    let mut off = l3 + Ipv6Hdr::LEN;
    // As IPv4's total length: 0 states no length only on a GSO packet
    // (BIG TCP); anything past the payload is padding, not a header.
    let ip_end = if payload_len == 0 && ctx.is_gso() { usize::MAX } else { off + payload_len };
    let (mut first_fragment, mut frag_id) = (false, [0u8; 4]);
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ext_header(next) {
            break;
        }
        // Every extension header starts with its next header and length.
        let [hdr_next, hdr_len]: [u8; 2] = load(ctx, off).map_err(malformed)?;
        let len = if next == NEXTHDR_FRAGMENT {
            let frag_word = u16::from_be(load::<u16>(ctx, off + 2).map_err(malformed)?);
            let id: [u8; 4] = load(ctx, off + 4).map_err(malformed)?;
            if frag_word >> 3 != 0 {
                let (saddr, daddr) = addresses(ctx).ok_or(NoFlow::Malformed)?;
                let key = FragKey6 { saddr, daddr, id, proto: hdr_next, scope: 0, _pad: [0; 2] };
                return Err(NoFlow::LaterFragment(key));
            }
            // Offset 0 without "more fragments" is a whole datagram (an
            // atomic fragment).
            first_fragment = frag_word & 1 != 0;
            frag_id = id;
            8
        } else if next == NEXTHDR_AUTH {
            (hdr_len as usize + 2) * 4
        } else {
            if next == NEXTHDR_ROUTING {
                let segments_left: u8 = load(ctx, off + 3).map_err(malformed)?;
                if segments_left != 0 {
                    return Err(NoFlow::BadHeaders);
                }
            }
            (hdr_len as usize + 1) * 8
        };
        next = hdr_next;
        off += len;
        if off > ip_end {
            return Err(NoFlow::Malformed);
        }
    }
    if is_ext_header(next) {
        return Err(NoFlow::BadHeaders);
    }
    let ip_end = if ip_end == usize::MAX { u32::MAX } else { ip_end as u32 };
    let (saddr, daddr) = addresses(ctx).ok_or(NoFlow::Malformed)?;
    Ok(Headers6 { saddr, daddr, l4_off: off as u32, ip_end, frag_id, proto: next, first_fragment })
}

/// The flow of a walked IPv6 packet.
#[inline(always)]
pub fn flow_of6(ctx: &TcContext, h: &Headers6) -> Parsed6 {
    let (l4, ip_end) = (h.l4_off as usize, h.ip_end as usize);
    // A header read must end within the datagram.
    let read = |len: usize| if l4 + len <= ip_end { Ok(()) } else { Err(NoFlow::Malformed) };
    let malformed = |_: DropReason| NoFlow::Malformed;
    let (mut icmp_type, mut ported, mut tcp_flags) = (0u8, true, 0u8);
    let (sport, dport) = if h.proto == IPPROTO_ICMPV6 {
        read(ICMP_HDR_LEN)?;
        icmp_type = l4_field(ctx, l4, 0).map_err(malformed)?;
        if icmp_type == ICMPV6_ECHO_REQUEST || icmp_type == ICMPV6_ECHO_REPLY {
            let id: u16 = l4_field(ctx, l4, ICMP_ID_OFF).map_err(malformed)?;
            (id, id)
        } else if (ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROBLEM).contains(&icmp_type) {
            return Err(NoFlow::IcmpError(l4 as u16));
        } else if (ICMPV6_MLD_QUERY..=ICMPV6_REDIRECT).contains(&icmp_type) || icmp_type == ICMPV6_MLD2_REPORT {
            // Listener query, report and done (130-132), router solicitation
            // and advertisement, neighbour solicitation and advertisement,
            // redirect (133-137), and MLDv2 reports.
            return Err(NoFlow::Neighbour { dst: h.daddr, icmp_type });
        } else {
            let key = CtKey6 { icmp_type, ..CtKey6::new(h.saddr, h.daddr, 0, 0, h.proto) };
            return Err(NoFlow::IcmpOther(key));
        }
    } else if h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP {
        // TCP's 20-byte header or UDP's 8.
        read(if h.proto == IPPROTO_TCP { TCP_FLAGS_OFF + 7 } else { 8 })?;
        if h.proto == IPPROTO_TCP {
            tcp_flags = l4_field(ctx, l4, TCP_FLAGS_OFF).map_err(malformed)?;
        }
        (l4_field(ctx, l4, L4_SPORT_OFF).map_err(malformed)?, l4_field(ctx, l4, L4_DPORT_OFF).map_err(malformed)?)
    } else {
        // Any other protocol (ESP, SCTP, no next header, ...): tracked and
        // judged by addresses and protocol.
        ported = false;
        (0, 0)
    };
    let mut key = CtKey6::new(h.saddr, h.daddr, sport, dport, h.proto);
    if h.proto == IPPROTO_ICMPV6 {
        key.icmp_type = icmp_type;
    }
    Ok(Flow6 {
        key,
        l4_off: l4 as u16,
        tcp_flags,
        icmp_type,
        ported,
        first_fragment: h.first_fragment,
        ip_id: h.frag_id,
    })
}

/// The flow of the IPv6 packet in `ctx`. Out of line: the walk's and the
/// loads' temporaries stay out of the caller's frame.
#[inline(never)]
pub fn parse6(ctx: &TcContext) -> Parsed6 {
    let h = walk6(ctx)?;
    flow_of6(ctx, &h)
}

/// The tuple of the packet an ICMPv6 error (its header at `icmp_off`, past
/// the walked extension headers) quotes (right after the 8-byte ICMPv6
/// header), as it travelled; None if it is not TCP, UDP or ICMPv6
/// echo directly after the quoted fixed header (a quote with extension
/// headers is not matched to a flow, so the error does not pass policy).
#[inline(never)]
pub fn quoted6(ctx: &TcContext, icmp_off: usize) -> Result<Option<CtKey6>, DropReason> {
    let inner = icmp_off + ICMP_HDR_LEN;
    let vcf: u8 = load(ctx, inner)?;
    if vcf >> 4 != 6 {
        return Ok(None);
    }
    let proto: u8 = load(ctx, inner + IP6_NEXT_HDR_OFF)?;
    let isrc: In6Addr = load(ctx, inner + IP6_SRC_OFF)?;
    let idst: In6Addr = load(ctx, inner + IP6_DST_OFF)?;
    let inner_l4 = inner + Ipv6Hdr::LEN;
    if proto == IPPROTO_ICMPV6 {
        let kind: u8 = load(ctx, inner_l4)?;
        if kind != ICMPV6_ECHO_REQUEST && kind != ICMPV6_ECHO_REPLY {
            return Ok(None);
        }
        let id: u16 = load(ctx, inner_l4 + ICMP_ID_OFF)?;
        return Ok(Some(CtKey6 { icmp_type: kind, ..CtKey6::new(isrc, idst, id, id, proto) }));
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(None);
    }
    let (sport, dport) = (load(ctx, inner_l4 + L4_SPORT_OFF)?, load(ctx, inner_l4 + L4_DPORT_OFF)?);
    Ok(Some(CtKey6::new(isrc, idst, sport, dport, proto)))
}

/// The source address of the IPv6 packet in `ctx`, from its fixed header.
#[inline(always)]
pub fn source6(ctx: &TcContext) -> Result<In6Addr, DropReason> {
    load(ctx, EthHdr::LEN + IP6_SRC_OFF)
}

/// Is `icmp_type` a multicast listener report or done (MLDv1 131/132,
/// MLDv2 143)? Only multicast routers and snooping queriers read them.
#[inline(always)]
pub fn is_listener_report(icmp_type: u8) -> bool {
    icmp_type == ICMPV6_MLD_REPORT || icmp_type == ICMPV6_MLD_DONE || icmp_type == ICMPV6_MLD2_REPORT
}

/// Sends a container's multicast listener report to the host alone: its
/// destination MAC becomes the gateway's, so the bridge hands it up
/// instead of flooding it (its IPv6 header is untouched). Every container
/// sends a few of these when its interface comes up, and a bridge floods
/// each to all of its ports: their cost per new container grew with the
/// bridge's size (~20 ms per attach at 1000 ports). No container reads
/// them: they are for multicast routers, the host is the link's only one,
/// and the instance's bridges run no querier, so their snooping never
/// narrows delivery (every container still gets the link's multicast,
/// neighbour solicitations included).
#[inline(always)]
pub fn listener_report_to_host(ctx: &TcContext, parsed: &Parsed6, cfg: &DatapathConfig) -> Result<(), DropReason> {
    match parsed {
        Err(NoFlow::Neighbour { icmp_type, .. }) if is_listener_report(*icmp_type) => store(ctx, 0, &cfg.gateway_mac),
        _ => Ok(()),
    }
}
