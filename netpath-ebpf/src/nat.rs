//! Rewriting addresses and ports in place (IPv4's and IPv6's). IPv4's
//! fields and header checksum are written directly (the header checksum is
//! a plain one in the header whatever the skb's checksum state); the L4
//! checksum goes through the kernel's helper, which knows that state (a
//! CHECKSUM_PARTIAL skb from a local socket carries only the pseudo-header
//! sum there, and a port change must not touch it), which the program
//! cannot read.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT, IPPROTO_ICMP, IPPROTO_TCP},
    family::IPPROTO_ICMPV6,
    AddrFamily, CtEntry4, CtEntry6, DropReason, In6Addr,
};

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    checksum, conntrack,
    family::Family,
    flow::{Flow, Flow4, Flow6},
    ipv6::{IP6_DST_OFF, IP6_SRC_OFF},
    offsets::{
        ICMP_CSUM_OFF, ICMP_ID_OFF, IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    packet::{l4_csum_replace, ptr_at_mut, store},
};

pub const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

/// Offset of the L4 checksum and the extra helper flags it needs.
#[inline(always)]
fn l4_csum<A: AddrFamily>(flow: &Flow<A>) -> (usize, u64) {
    if flow.key.proto == IPPROTO_TCP {
        (flow.l4_off as usize + TCP_CSUM_OFF, 0)
    } else if flow.key.proto == A::ICMP_PROTO {
        (flow.l4_off as usize + ICMP_CSUM_OFF, 0)
    } else {
        // UDP checksum 0 means "none": leave it so.
        (flow.l4_off as usize + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0)
    }
}

/// Sets the IPv4 source (`field_off` = `IP_SRC_OFF`) or destination address
/// and updates the header checksum (RFC 1624), in place.
#[inline(always)]
fn set_ip_addr(ctx: &TcContext, field_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, EthHdr::LEN).ok_or(DropReason::WriteFailed)?;
    // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
    let ip = unsafe { &mut *ip };
    ip.check = checksum::replace4(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
    if field_off == IP_DST_OFF {
        ip.dst_addr = new;
    } else {
        ip.src_addr = new;
    }
    Ok(())
}

/// Sets the 16-bit field at `field_off` of the L4 header (a port, an echo
/// identifier), in place.
#[inline(always)]
fn set_l4_field(ctx: &TcContext, flow: &Flow4, field_off: usize, new: u16) -> Result<(), DropReason> {
    // The L4 header starts within the first 14 + 60 bytes (Ethernet, IPv4
    // with options): the mask tells the verifier so, and changes nothing.
    let off = (flow.l4_off as usize & 0xff) + field_off;
    let field: *mut u16 = ptr_at_mut(ctx, off).ok_or(DropReason::WriteFailed)?;
    // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
    unsafe { field.write_unaligned(new) };
    Ok(())
}

#[inline(always)]
fn rewrite_addr(ctx: &TcContext, flow: &Flow4, field_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    set_ip_addr(ctx, field_off, old, new)?;
    // The ICMP checksum covers no pseudo-header: addresses do not enter it.
    if flow.key.proto != IPPROTO_ICMP {
        let (csum_off, mangled) = l4_csum(flow);
        let (old, new) = (u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64);
        l4_csum_replace(ctx, csum_off, old, new, BPF_F_PSEUDO_HDR | mangled | 4)?;
    }
    Ok(())
}

#[inline(always)]
fn rewrite_port(ctx: &TcContext, flow: &Flow4, port_off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    set_l4_field(ctx, flow, port_off, new)?;
    let (csum_off, mangled) = l4_csum(flow);
    l4_csum_replace(ctx, csum_off, old as u64, new as u64, mangled | 2)
}

/// Applies the translation recorded in `entry` to the packet. For ICMP
/// echo the identifier stands in for both ports: the source side's in
/// requests (SNAT), the destination side's in replies (DNAT).
#[inline(always)]
pub fn apply4(ctx: &TcContext, flow: &Flow4, entry: &CtEntry4) -> Result<(), DropReason> {
    let icmp = flow.key.proto == IPPROTO_ICMP;
    if entry.flags & CT_F_SNAT != 0 {
        set_source4(ctx, flow, entry.snat_addr, entry.snat_port)?;
    }
    if entry.flags & CT_F_DNAT != 0 {
        if entry.dnat_addr != flow.key.daddr {
            rewrite_addr(ctx, flow, IP_DST_OFF, flow.key.daddr, entry.dnat_addr)?;
        }
        rewrite_port(ctx, flow, if icmp { ICMP_ID_OFF } else { L4_DPORT_OFF }, flow.key.dport, entry.dnat_port)?;
    }
    Ok(())
}

/// Sets the source address and port (ICMP echo: the identifier) of the
/// packet of `flow`.
#[inline(always)]
pub fn set_source4(ctx: &TcContext, flow: &Flow4, addr: [u8; 4], port: u16) -> Result<(), DropReason> {
    if addr != flow.key.saddr {
        rewrite_addr(ctx, flow, IP_SRC_OFF, flow.key.saddr, addr)?;
    }
    let port_off = if flow.key.proto == IPPROTO_ICMP { ICMP_ID_OFF } else { L4_SPORT_OFF };
    rewrite_port(ctx, flow, port_off, flow.key.sport, port)
}

/// Applies the translation recorded in `entry` to an IPv6 packet. IPv6 has
/// no header checksum; the L4 checksums (ICMPv6's included) cover the
/// pseudo-header, so an address change updates them word by word. The
/// addresses, in the fixed header, are written in place; so are the ports
/// of an L4 header right behind it. Behind extension headers they are
/// written with `bpf_skb_store_bytes`: there the L4 header sits at an
/// offset the verifier cannot bound for direct access.
#[inline(always)]
pub fn apply6(ctx: &TcContext, flow: &Flow6, entry: &CtEntry6) -> Result<(), DropReason> {
    let icmp = flow.key.proto == IPPROTO_ICMPV6;
    if entry.flags & CT_F_SNAT != 0 {
        set_source6(ctx, flow, &entry.snat_addr, entry.snat_port)?;
    }
    if entry.flags & CT_F_DNAT != 0 {
        rewrite_addr6(ctx, flow, IP6_DST_OFF, &flow.key.daddr, &entry.dnat_addr)?;
        rewrite_port6(ctx, flow, if icmp { ICMP_ID_OFF } else { L4_DPORT_OFF }, flow.key.dport, entry.dnat_port)?;
    }
    Ok(())
}

/// [`set_source4`] for IPv6.
#[inline(always)]
pub fn set_source6(ctx: &TcContext, flow: &Flow6, addr: &In6Addr, port: u16) -> Result<(), DropReason> {
    rewrite_addr6(ctx, flow, IP6_SRC_OFF, &flow.key.saddr, addr)?;
    let port_off = if flow.key.proto == IPPROTO_ICMPV6 { ICMP_ID_OFF } else { L4_SPORT_OFF };
    rewrite_port6(ctx, flow, port_off, flow.key.sport, port)
}

#[inline(always)]
fn rewrite_addr6(
    ctx: &TcContext,
    flow: &Flow6,
    field_off: usize,
    old: &In6Addr,
    new: &In6Addr,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    set_ip6_addr(ctx, field_off, new)?;
    let (csum_off, mangled) = l4_csum(flow);
    // The whole address as one difference (field size 0): one helper call
    // rather than one per word.
    let diff = checksum::diff_words(&old.0, &new.0);
    l4_csum_replace(ctx, csum_off, 0, diff as u64, BPF_F_PSEUDO_HDR | mangled)
}

#[inline(always)]
fn rewrite_port6(ctx: &TcContext, flow: &Flow6, port_off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    if flow.l4_off as usize == L4_OFF6 {
        // The constant offset is what lets the verifier bound the access.
        let field: *mut u16 = ptr_at_mut(ctx, L4_OFF6 + port_off).ok_or(DropReason::WriteFailed)?;
        // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
        unsafe { field.write_unaligned(new) };
    } else {
        store(ctx, flow.l4_off as usize + port_off, &new)?;
    }
    let (csum_off, mangled) = l4_csum(flow);
    l4_csum_replace(ctx, csum_off, old as u64, new as u64, mangled | 2)
}

/// Where the L4 header of an IPv6 packet without extension headers starts.
const L4_OFF6: usize = EthHdr::LEN + Ipv6Hdr::LEN;

/// Sets the IPv6 source (`field_off` = `IP6_SRC_OFF`) or destination
/// address, in place (no header checksum).
#[inline(always)]
fn set_ip6_addr(ctx: &TcContext, field_off: usize, new: &In6Addr) -> Result<(), DropReason> {
    let field: *mut In6Addr = if field_off == IP6_DST_OFF {
        ptr_at_mut(ctx, EthHdr::LEN + IP6_DST_OFF)
    } else {
        ptr_at_mut(ctx, EthHdr::LEN + IP6_SRC_OFF)
    }
    .ok_or(DropReason::WriteFailed)?;
    // Word by word: a 16-byte unaligned write is a call of `memmove`, which
    // the BPF backend has no inline expansion for (see `zero`).
    let words = field as *mut u32;
    for (i, word) in new.0.iter().enumerate() {
        // SAFETY: bounds checked by ptr_at_mut for all 16 bytes; tc
        // programs may write packet data. In6Addr's words are in memory
        // order.
        unsafe { words.add(i).write_unaligned(*word) };
    }
    Ok(())
}

/// Gives the packet of a container's flow whose source its veth translated
/// (SNAT: a masqueraded flow, a published port's reply) its own source
/// back: the container's address and port, which the flow's entry for the
/// other way translates to (its DNAT). Nothing if the source was not
/// translated (no such entry), or if that entry does not lead to the
/// container whose veth the packet came in by (`ifindex`), which its
/// anti-spoofing let through; and nothing for what carries no ports (later
/// fragments, first ones, whose translation is recorded for the rest).
#[inline(never)]
pub fn restore_source<A: Family>(ctx: &TcContext, ifindex: u32) -> Result<(), DropReason> {
    let Ok(flow) = A::parse(ctx) else { return Ok(()) };
    if !flow.ported || flow.first_fragment {
        return Ok(());
    }
    let Some(entry) = conntrack::lookup_unchecked(&flow.key.reversed()) else { return Ok(()) };
    // SAFETY: map value pointer, valid during the run.
    let entry = unsafe { &*entry };
    if entry.flags & CT_F_DNAT == 0 || entry.dnat_addr.container_ifindex() != Some(ifindex) {
        return Ok(());
    }
    A::set_source(ctx, &flow, &entry.dnat_addr, entry.dnat_port)
}
