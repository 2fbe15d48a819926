//! ICMP errors (unreachable, fragmentation needed, time exceeded; ICMPv6's
//! unreachable, packet too big, time exceeded) about a translated flow: the outer destination and the quoted packet's source
//! are translated back, with every checksum on the way (outer IP, quoted IP,
//! quoted TCP/UDP/ICMP, and the ICMP checksum over all of it), so that
//! traceroute and path MTU discovery work from inside a container.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    family::IPPROTO_ICMPV6,
    CtKey4, DatapathConfig, DropReason, In6Addr,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    checksum, conntrack,
    ipv6::{self, IP6_DST_OFF, IP6_SRC_OFF},
    nat::BPF_F_PSEUDO_HDR,
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

/// Translates an ICMP error whose quoted packet belongs to a tracked,
/// translated flow; anything else passes untouched. `from_host`: the host
/// itself sent it (uplink egress, a source outside the container subnet).
///
/// A stage of its own (`#[inline(never)]`, see `translate`): inlined, its
/// locals would sit in translate_parsed4's frame, which is on the call chain
/// down to a new published flow's conntrack entries (uplink ingress), and
/// that chain has little of the 512-byte stack to spare.
#[inline(never)]
pub fn translate4(ctx: &TcContext, cfg: &DatapathConfig, from_host: bool) -> Result<(), DropReason> {
    let Some(Quoted4 { icmp_off, inner, inner_l4, key: quoted }) = quoted4(ctx)? else { return Ok(()) };
    let proto = quoted.proto;
    let l3 = EthHdr::LEN;
    // The quoted packet travelled the other way: its flow's entry for this
    // error's way is keyed by the quoted tuple reversed.
    let Some(entry) = conntrack::lookup_unchecked(&quoted.reversed()) else { return Ok(()) };
    // SAFETY: map value pointer, valid during the run.
    let entry = unsafe { *entry };
    // Checked on the copy (a stale flow's errors are not translated): this
    // frame has no room for the pointer beside it.
    if !conntrack::owners_live(&entry) {
        return Ok(());
    }
    let osrc: [u8; 4] = load(ctx, l3 + IP_SRC_OFF)?;
    // Two sides, one rewrite:
    // - an error about a packet that was translated on its way out (from a
    //   router, about a masqueraded flow; from the host, about a published
    //   port's reply): its destination and the quoted source go back to the
    //   container (the entry's DNAT);
    // - an error a container sends about a packet it received translated (a
    //   published port's request, a masqueraded flow's reply): its source
    //   and the quoted destination become the translated address (the
    //   entry's SNAT), so that it never leaves with the private address.
    //   Only the quoted packet's receiver may send it;
    // - an error the host sends while routing such a packet in (TTL
    //   exceeded, fragmentation needed): only the quoted destination is
    //   translated; the host's own source stays.
    let echo_id_off = inner_l4 + ICMP_ID_OFF;
    let (outer_off, quoted_addr_off, port_off, old_addr, old_port, new_addr, new_port) = if entry.flags & CT_F_DNAT != 0
    {
        let port_off = if proto == IPPROTO_ICMP { echo_id_off } else { inner_l4 + L4_SPORT_OFF };
        (Some(IP_DST_OFF), IP_SRC_OFF, port_off, quoted.saddr, quoted.sport, entry.dnat_addr, entry.dnat_port)
    } else if entry.flags & CT_F_SNAT != 0 && cfg.in_subnet4(quoted.daddr) && (from_host || osrc == quoted.daddr) {
        let port_off = if proto == IPPROTO_ICMP { echo_id_off } else { inner_l4 + L4_DPORT_OFF };
        let outer_off = if from_host { None } else { Some(IP_SRC_OFF) };
        (outer_off, IP_DST_OFF, port_off, quoted.daddr, quoted.dport, entry.snat_addr, entry.snat_port)
    } else {
        return Ok(());
    };

    // The outer address.
    if let Some(outer_off) = outer_off {
        let old_outer: [u8; 4] = load(ctx, l3 + outer_off)?;
        l3_csum_replace(
            ctx,
            l3 + IP_CSUM_OFF,
            u32::from_ne_bytes(old_outer) as u64,
            u32::from_ne_bytes(new_addr) as u64,
            4,
        )?;
        store(ctx, l3 + outer_off, &new_addr)?;
    }

    // The quoted address and the quoted IP header checksum.
    let old_ipsum: u16 = load(ctx, inner + IP_CSUM_OFF)?;
    let new_ipsum = checksum::replace4(old_ipsum, old_addr, new_addr);
    store(ctx, inner + quoted_addr_off, &new_addr)?;
    store(ctx, inner + IP_CSUM_OFF, &new_ipsum)?;
    icmp_csum4(ctx, icmp_off, old_addr, new_addr)?;
    icmp_csum2(ctx, icmp_off, old_ipsum, new_ipsum)?;

    // The quoted port (or echo identifier).
    store(ctx, port_off, &new_port)?;
    icmp_csum2(ctx, icmp_off, old_port, new_port)?;

    // Quoted L4 checksum, when the error quotes enough of the packet.
    let l4sum_off = match proto {
        IPPROTO_TCP => inner_l4 + TCP_CSUM_OFF,
        IPPROTO_UDP => inner_l4 + UDP_CSUM_OFF,
        _ => inner_l4 + ICMP_CSUM_OFF,
    };
    if let Ok(old_l4sum) = ctx.load::<u16>(l4sum_off) {
        if !(proto == IPPROTO_UDP && old_l4sum == 0) {
            let mut s = checksum::replace2(old_l4sum, old_port, new_port);
            if proto != IPPROTO_ICMP {
                s = checksum::replace4(s, old_addr, new_addr);
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

/// [`translate4`] for ICMPv6 errors (the ICMPv6 header at `icmp_off`)
/// about a translated flow, both ways:
/// - from outside (uplink ingress): a router's "packet too big", "time
///   exceeded" or "unreachable" about a masqueraded flow's packet or a
///   published port's reply goes to the container: its destination and
///   the quoted source (address and port) back to the container's (the
///   entry's DNAT);
/// - sent by a container (`sent_by_container`: its veth, then the uplink
///   for what is still untranslated) about a packet it received translated
///   (a published port's request, a masqueraded flow's reply): its source
///   and the quoted destination become the translated address and port
///   (the entry's SNAT), so that it never leaves with the private address.
///   Only the quoted packet's receiver may send it.
///
/// ICMPv6's checksum covers the pseudo-header (the outer address) and the
/// quote; the quoted TCP/UDP/ICMPv6 checksum covers the quoted addresses:
/// all are kept right. Anything else is left untouched, and passes unless
/// `leaving` (the uplink's last chance: no private source leaves). The
/// caller's choice goes in rather than a `Result<bool, _>` out: with that
/// return the compiler built `Ok(false)` from a register still holding a
/// map pointer, a shift the verifier refuses.
#[inline(never)]
pub fn translate6(ctx: &TcContext, icmp_off: usize, sent_by_container: bool, leaving: bool) -> Result<(), DropReason> {
    let untranslated = if leaving { Err(DropReason::UnsupportedProtocol) } else { Ok(()) };
    let Some(mut key) = ipv6::quoted6(ctx, icmp_off)? else { return untranslated };
    // The quoted packet travelled the other way: its flow's entry for this
    // error's way is keyed by the quoted tuple reversed.
    key.reverse();
    let Some(entry) = conntrack::lookup(&key) else { return untranslated };
    // SAFETY: map value pointer, valid during the run.
    let e = unsafe { &*entry };
    let icmp_sum = icmp_off + ICMP_CSUM_OFF;
    let inner = icmp_off + ICMP_HDR_LEN;
    let inner_l4 = inner + Ipv6Hdr::LEN;
    let echo = key.proto == IPPROTO_ICMPV6;
    // `key` reversed: the quoted source is its destination, the quoted
    // destination its source.
    let outer_off = if sent_by_container { IP6_SRC_OFF } else { IP6_DST_OFF };
    let outer: In6Addr = load(ctx, EthHdr::LEN + outer_off)?;
    let (quoted_off, port_off, old_addr, old_port, new_addr, new_port) = if sent_by_container {
        if e.flags & CT_F_SNAT == 0 || outer != key.saddr {
            return untranslated;
        }
        let port_off = if echo { inner_l4 + ICMP_ID_OFF } else { inner_l4 + L4_DPORT_OFF };
        (IP6_DST_OFF, port_off, key.saddr, key.sport, e.snat_addr, e.snat_port)
    } else {
        if e.flags & CT_F_DNAT == 0 {
            return untranslated;
        }
        let port_off = if echo { inner_l4 + ICMP_ID_OFF } else { inner_l4 + L4_SPORT_OFF };
        (IP6_SRC_OFF, port_off, key.daddr, key.dport, e.dnat_addr, e.dnat_port)
    };
    // The outer address (the translated one): in the pseudo-header.
    store(ctx, EthHdr::LEN + outer_off, &new_addr)?;
    for i in 0..4 {
        l4_csum_replace(ctx, icmp_sum, outer.0[i] as u64, new_addr.0[i] as u64, BPF_F_PSEUDO_HDR | 4)?;
    }
    // The quoted address and port (or echo identifier), in the ICMPv6
    // message itself.
    store(ctx, inner + quoted_off, &new_addr)?;
    for i in 0..4 {
        l4_csum_replace(ctx, icmp_sum, old_addr.0[i] as u64, new_addr.0[i] as u64, 4)?;
    }
    let proto = key.proto;
    store(ctx, port_off, &new_port)?;
    icmp_csum2(ctx, icmp_off, old_port, new_port)?;
    // The quoted L4 checksum, when the error quotes that far (ICMPv6's
    // covers the pseudo-header too).
    let l4sum_off = match proto {
        IPPROTO_TCP => inner_l4 + TCP_CSUM_OFF,
        IPPROTO_UDP => inner_l4 + UDP_CSUM_OFF,
        _ => inner_l4 + ICMP_CSUM_OFF,
    };
    if let Ok(old_l4sum) = ctx.load::<u16>(l4sum_off) {
        let mut s = checksum::replace2(old_l4sum, old_port, new_port);
        for i in 0..4 {
            s = checksum::replace4(s, old_addr.0[i].to_ne_bytes(), new_addr.0[i].to_ne_bytes());
        }
        if proto == IPPROTO_UDP && s == 0 {
            s = 0xffff;
        }
        store(ctx, l4sum_off, &s)?;
        icmp_csum2(ctx, icmp_off, old_l4sum, s)?;
    }
    Ok(())
}
