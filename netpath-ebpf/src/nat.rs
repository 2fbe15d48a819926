//! Rewriting addresses and ports in place, with the kernel's checksum
//! helpers (they handle CHECKSUM_PARTIAL skbs from local sockets correctly,
//! which a hand-rolled incremental update cannot know about).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT, IPPROTO_ICMP, IPPROTO_TCP},
    CtEntry, DropReason,
};

use crate::flow::Flow;

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

const IP_CSUM_OFF: usize = 10;
const IP_SRC_OFF: usize = 12;
const IP_DST_OFF: usize = 16;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const ICMP_CSUM_OFF: usize = 2;
/// Offset of the echo identifier in the ICMP header.
const ICMP_ID_OFF: usize = 4;

/// Offset of the L4 checksum and the extra helper flags it needs.
#[inline(always)]
fn l4_csum(flow: &Flow) -> (usize, u64) {
    if flow.key.proto == IPPROTO_TCP {
        (flow.l4_off + TCP_CSUM_OFF, 0)
    } else if flow.key.proto == IPPROTO_ICMP {
        (flow.l4_off + ICMP_CSUM_OFF, 0)
    } else {
        // UDP checksum 0 means "none": leave it so.
        (flow.l4_off + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0)
    }
}

#[inline(always)]
fn rewrite_addr(ctx: &TcContext, flow: &Flow, field_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    let (csum_off, mangled) = l4_csum(flow);
    let (old, new) = (u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64);
    // The ICMP checksum covers no pseudo-header: addresses do not enter it.
    if flow.key.proto != IPPROTO_ICMP {
        ctx.l4_csum_replace(csum_off, old, new, BPF_F_PSEUDO_HDR | mangled | 4).map_err(|_| DropReason::Malformed)?;
    }
    ctx.l3_csum_replace(flow.l3_off + IP_CSUM_OFF, old, new, 4).map_err(|_| DropReason::Malformed)?;
    ctx.store(flow.l3_off + field_off, &(new as u32), 0).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn rewrite_port(ctx: &TcContext, flow: &Flow, port_off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let (csum_off, mangled) = l4_csum(flow);
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, mangled | 2).map_err(|_| DropReason::Malformed)?;
    ctx.store(flow.l4_off + port_off, &new, 0).map_err(|_| DropReason::Malformed)
}

/// Applies the translation recorded in `entry` to the packet. For ICMP
/// echo the identifier stands in for both ports: the source side's in
/// requests (SNAT), the destination side's in replies (DNAT).
#[inline(always)]
pub fn apply(ctx: &TcContext, flow: &Flow, entry: &CtEntry) -> Result<(), DropReason> {
    let icmp = flow.key.proto == IPPROTO_ICMP;
    if entry.flags & CT_F_SNAT != 0 {
        if entry.snat_addr != flow.key.saddr {
            rewrite_addr(ctx, flow, IP_SRC_OFF, flow.key.saddr, entry.snat_addr)?;
        }
        rewrite_port(ctx, flow, if icmp { ICMP_ID_OFF } else { 0 }, flow.key.sport, entry.snat_port)?;
    }
    if entry.flags & CT_F_DNAT != 0 {
        if entry.dnat_addr != flow.key.daddr {
            rewrite_addr(ctx, flow, IP_DST_OFF, flow.key.daddr, entry.dnat_addr)?;
        }
        rewrite_port(ctx, flow, if icmp { ICMP_ID_OFF } else { 2 }, flow.key.dport, entry.dnat_port)?;
    }
    Ok(())
}
