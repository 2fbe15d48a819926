//! Rewriting addresses and ports in place, with the kernel's checksum
//! helpers (they handle CHECKSUM_PARTIAL skbs from local sockets correctly,
//! which a hand-rolled incremental update cannot know about).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT, IPPROTO_ICMP, IPPROTO_TCP},
    CtEntry, DropReason,
};

use network_types::eth::EthHdr;

use crate::{
    flow::Flow4,
    offsets::{
        ICMP_CSUM_OFF, ICMP_ID_OFF, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_CSUM_OFF,
        UDP_CSUM_OFF,
    },
    packet::{l3_csum_replace, l4_csum_replace, store},
};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

/// Offset of the L4 checksum and the extra helper flags it needs.
#[inline(always)]
fn l4_csum(flow: &Flow4) -> (usize, u64) {
    if flow.key.proto == IPPROTO_TCP {
        (flow.l4_off as usize + TCP_CSUM_OFF, 0)
    } else if flow.key.proto == IPPROTO_ICMP {
        (flow.l4_off as usize + ICMP_CSUM_OFF, 0)
    } else {
        // UDP checksum 0 means "none": leave it so.
        (flow.l4_off as usize + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0)
    }
}

#[inline(always)]
fn rewrite_addr(ctx: &TcContext, flow: &Flow4, field_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    let (csum_off, mangled) = l4_csum(flow);
    let (old, new) = (u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64);
    // The ICMP checksum covers no pseudo-header: addresses do not enter it.
    if flow.key.proto != IPPROTO_ICMP {
        l4_csum_replace(ctx, csum_off, old, new, BPF_F_PSEUDO_HDR | mangled | 4)?;
    }
    l3_csum_replace(ctx, EthHdr::LEN + IP_CSUM_OFF, old, new, 4)?;
    store(ctx, EthHdr::LEN + field_off, &(new as u32))
}

#[inline(always)]
fn rewrite_port(ctx: &TcContext, flow: &Flow4, port_off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let (csum_off, mangled) = l4_csum(flow);
    l4_csum_replace(ctx, csum_off, old as u64, new as u64, mangled | 2)?;
    store(ctx, flow.l4_off as usize + port_off, &new)
}

/// Applies the translation recorded in `entry` to the packet. For ICMP
/// echo the identifier stands in for both ports: the source side's in
/// requests (SNAT), the destination side's in replies (DNAT).
#[inline(always)]
pub fn apply4(ctx: &TcContext, flow: &Flow4, entry: &CtEntry) -> Result<(), DropReason> {
    let icmp = flow.key.proto == IPPROTO_ICMP;
    if entry.flags & CT_F_SNAT != 0 {
        if entry.snat_addr != flow.key.saddr {
            rewrite_addr(ctx, flow, IP_SRC_OFF, flow.key.saddr, entry.snat_addr)?;
        }
        rewrite_port(ctx, flow, if icmp { ICMP_ID_OFF } else { L4_SPORT_OFF }, flow.key.sport, entry.snat_port)?;
    }
    if entry.flags & CT_F_DNAT != 0 {
        if entry.dnat_addr != flow.key.daddr {
            rewrite_addr(ctx, flow, IP_DST_OFF, flow.key.daddr, entry.dnat_addr)?;
        }
        rewrite_port(ctx, flow, if icmp { ICMP_ID_OFF } else { L4_DPORT_OFF }, flow.key.dport, entry.dnat_port)?;
    }
    Ok(())
}
