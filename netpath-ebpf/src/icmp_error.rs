//! ICMP errors (unreachable, fragmentation needed, time exceeded) about a
//! translated flow: the outer destination and the quoted packet's source
//! are translated back, with every checksum on the way (outer IP, quoted IP,
//! quoted TCP/UDP/ICMP, and the ICMP checksum over all of it), so that
//! traceroute and path MTU discovery work from inside a container.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    CtKey, DropReason,
};
use network_types::eth::EthHdr;

use crate::{checksum, conntrack};

const IP_CSUM_OFF: usize = 10;
const IP_SRC_OFF: usize = 12;
const IP_DST_OFF: usize = 16;

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    ctx.load::<T>(off).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), DropReason> {
    ctx.store(off, v, 0).map_err(|_| DropReason::Malformed)
}

/// Keeps the ICMP checksum right after a 16-bit word inside the message
/// changed (the ICMP checksum has no pseudo-header).
#[inline(always)]
fn icmp_csum2(ctx: &TcContext, icmp_off: usize, old: u16, new: u16) -> Result<(), DropReason> {
    ctx.l4_csum_replace(icmp_off + 2, old as u64, new as u64, 2).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn icmp_csum4(ctx: &TcContext, icmp_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    ctx.l4_csum_replace(icmp_off + 2, u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64, 4)
        .map_err(|_| DropReason::Malformed)
}

/// Translates an ICMP error whose quoted packet belongs to a tracked flow;
/// anything else passes untouched.
#[inline(always)]
pub fn translate(ctx: &TcContext) -> Result<(), DropReason> {
    let l3 = EthHdr::LEN;
    let vihl: u8 = load(ctx, l3)?;
    let icmp_off = l3 + ((vihl & 0x0f) as usize) * 4;
    let inner = icmp_off + 8;
    let inner_vihl: u8 = load(ctx, inner)?;
    let inner_ihl = ((inner_vihl & 0x0f) as usize) * 4;
    if inner_vihl >> 4 != 4 || inner_ihl < 20 {
        return Ok(());
    }
    let inner_l4 = inner + inner_ihl;
    let proto: u8 = load(ctx, inner + 9)?;
    let isrc: [u8; 4] = load(ctx, inner + IP_SRC_OFF)?;
    let idst: [u8; 4] = load(ctx, inner + IP_DST_OFF)?;
    // The quoted packet's ports (for echo: its identifier, at offset 4).
    let port_off = if proto == IPPROTO_ICMP { inner_l4 + 4 } else { inner_l4 };
    let (sport, dport): (u16, u16) = if proto == IPPROTO_ICMP {
        let id: u16 = load(ctx, port_off)?;
        (id, id)
    } else if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        (load(ctx, inner_l4)?, load(ctx, inner_l4 + 2)?)
    } else {
        return Ok(());
    };
    // The quoted packet went out; its reply direction is what we track.
    let key = CtKey::new(idst, isrc, dport, sport, proto);
    let Some(entry) = conntrack::lookup(&key) else { return Ok(()) };
    // SAFETY: map value pointer, valid during the run.
    let entry = unsafe { *entry };
    if entry.flags & CT_F_DNAT == 0 {
        return Ok(());
    }
    let (new_addr, new_port) = (entry.dnat_addr, entry.dnat_port);

    // Outer destination.
    let odst: [u8; 4] = load(ctx, l3 + IP_DST_OFF)?;
    ctx.l3_csum_replace(l3 + IP_CSUM_OFF, u32::from_ne_bytes(odst) as u64, u32::from_ne_bytes(new_addr) as u64, 4)
        .map_err(|_| DropReason::Malformed)?;
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
        IPPROTO_TCP => inner_l4 + 16,
        IPPROTO_UDP => inner_l4 + 6,
        _ => inner_l4 + 2,
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
