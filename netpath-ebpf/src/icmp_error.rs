//! ICMP errors (unreachable, fragmentation needed, time exceeded) about a
//! translated flow: the outer destination and the quoted packet's source
//! are translated back, with every checksum on the way (outer IP, quoted IP,
//! quoted TCP/UDP/ICMP, and the ICMP checksum over all of it), so that
//! traceroute and path MTU discovery work from inside a container.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    CtKey4, DropReason,
};
use network_types::eth::EthHdr;

use crate::{
    checksum, conntrack,
    offsets::{
        ip_hdr_len, ip_version, ICMP_CSUM_OFF, ICMP_HDR_LEN, ICMP_ID_OFF, IPV4_MIN_HDR_LEN, IP_CSUM_OFF, IP_DST_OFF,
        IP_PROTO_OFF, IP_SRC_OFF, IP_VIHL_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    packet::{l3_csum_replace, l4_csum_replace, load, store},
};

/// Keeps the ICMP checksum right after a 16-bit word inside the message
/// changed (the ICMP checksum has no pseudo-header).
#[inline(always)]
fn icmp_csum2(ctx: &TcContext, icmp_off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    l4_csum_replace(ctx, icmp_off + ICMP_CSUM_OFF, old as u64, new as u64, 2)
}

#[inline(always)]
fn icmp_csum4(ctx: &TcContext, icmp_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    l4_csum_replace(ctx, icmp_off + ICMP_CSUM_OFF, u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64, 4)
}

/// The packet an ICMP error quotes: where it sits, and its tuple as it
/// travelled (for echo, with its type).
pub struct Quoted4 {
    /// Offset of the ICMP header.
    pub icmp_off: usize,
    /// Offset of the quoted IPv4 header.
    pub inner: usize,
    /// Offset of the quoted L4 header.
    pub inner_l4: usize,
    pub key: CtKey4,
}

/// Reads the quoted packet of the ICMP error in `ctx`; None if it is not
/// IPv4 TCP, UDP or ICMP echo (nothing netpath tracks).
#[inline(always)]
pub fn quoted4(ctx: &TcContext) -> Result<Option<Quoted4>, DropReason> {
    let l3 = EthHdr::LEN;
    let vihl: u8 = load(ctx, l3 + IP_VIHL_OFF)?;
    let icmp_off = l3 + ip_hdr_len(vihl);
    let inner = icmp_off + ICMP_HDR_LEN;
    let inner_vihl: u8 = load(ctx, inner + IP_VIHL_OFF)?;
    let inner_ihl = ip_hdr_len(inner_vihl);
    if ip_version(inner_vihl) != 4 || inner_ihl < IPV4_MIN_HDR_LEN {
        return Ok(None);
    }
    let inner_l4 = inner + inner_ihl;
    let proto: u8 = load(ctx, inner + IP_PROTO_OFF)?;
    let isrc: [u8; 4] = load(ctx, inner + IP_SRC_OFF)?;
    let idst: [u8; 4] = load(ctx, inner + IP_DST_OFF)?;
    let key = if proto == IPPROTO_ICMP {
        let kind: u8 = load(ctx, inner_l4)?;
        if kind != ICMP_ECHO_REQUEST && kind != ICMP_ECHO_REPLY {
            return Ok(None);
        }
        let id: u16 = load(ctx, inner_l4 + ICMP_ID_OFF)?;
        CtKey4 { icmp_type: kind, ..CtKey4::new(isrc, idst, id, id, proto) }
    } else if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        let (sport, dport) = (load(ctx, inner_l4 + L4_SPORT_OFF)?, load(ctx, inner_l4 + L4_DPORT_OFF)?);
        CtKey4::new(isrc, idst, sport, dport, proto)
    } else {
        return Ok(None);
    };
    Ok(Some(Quoted4 { icmp_off, inner, inner_l4, key }))
}

/// Translates an ICMP error whose quoted packet belongs to a tracked flow;
/// anything else passes untouched.
///
/// A stage of its own (`#[inline(never)]`, see `translate`): inlined, its
/// locals would sit in translate_parsed4's frame, which is on the call chain
/// down to a new published flow's conntrack entries (uplink ingress), and
/// that chain has little of the 512-byte stack to spare.
#[inline(never)]
pub fn translate4(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(Quoted4 { icmp_off, inner, inner_l4, key: quoted }) = quoted4(ctx)? else { return Ok(()) };
    let (proto, isrc, sport) = (quoted.proto, quoted.saddr, quoted.sport);
    // Where the quoted packet's source port is (for echo: its identifier).
    let port_off = if proto == IPPROTO_ICMP { inner_l4 + ICMP_ID_OFF } else { inner_l4 + L4_SPORT_OFF };
    // The quoted packet went out; its reply direction is what we track.
    let Some(entry) = conntrack::lookup4(&quoted.reversed()) else { return Ok(()) };
    // SAFETY: map value pointer, valid during the run.
    let entry = unsafe { *entry };
    if entry.flags & CT_F_DNAT == 0 {
        return Ok(());
    }
    let (new_addr, new_port) = (entry.dnat_addr, entry.dnat_port);
    let l3 = EthHdr::LEN;
    // Outer destination.
    let odst: [u8; 4] = load(ctx, l3 + IP_DST_OFF)?;
    l3_csum_replace(ctx, l3 + IP_CSUM_OFF, u32::from_ne_bytes(odst) as u64, u32::from_ne_bytes(new_addr) as u64, 4)?;
    store(ctx, l3 + IP_DST_OFF, &new_addr)?;

    // Quoted source address and the quoted IP header checksum.
    let old_ipsum: u16 = load(ctx, inner + IP_CSUM_OFF)?;
    let new_ipsum = checksum::replace4(old_ipsum, isrc, new_addr);
    store(ctx, inner + IP_SRC_OFF, &new_addr)?;
    store(ctx, inner + IP_CSUM_OFF, &new_ipsum)?;
    icmp_csum4(ctx, icmp_off, isrc, new_addr)?;
    icmp_csum2(ctx, icmp_off, old_ipsum, new_ipsum)?;

    // Quoted source port (or echo identifier).
    store(ctx, port_off, &new_port)?;
    icmp_csum2(ctx, icmp_off, sport, new_port)?;

    // Quoted L4 checksum, when the error quotes enough of the packet.
    let l4sum_off = match proto {
        IPPROTO_TCP => inner_l4 + TCP_CSUM_OFF,
        IPPROTO_UDP => inner_l4 + UDP_CSUM_OFF,
        _ => inner_l4 + ICMP_CSUM_OFF,
    };
    if let Ok(old_l4sum) = ctx.load::<u16>(l4sum_off) {
        if !(proto == IPPROTO_UDP && old_l4sum == 0) {
            let mut s = checksum::replace2(old_l4sum, sport, new_port);
            if proto != IPPROTO_ICMP {
                s = checksum::replace4(s, isrc, new_addr);
            }
            if proto == IPPROTO_UDP && s == 0 {
                s = 0xffff;
            }
            store(ctx, l4sum_off, &s)?;
            icmp_csum2(ctx, icmp_off, old_l4sum, s)?;
        }
    }
    Ok(())
}
