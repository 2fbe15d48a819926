//! Rewriting addresses and ports in place (IPv4's and IPv6's). IPv4's
//! fields and header checksum are written directly (the header checksum is
//! a plain one in the header whatever the skb's checksum state). The L4
//! checksum depends on that state, which the program cannot read (a
//! CHECKSUM_PARTIAL skb from a local socket carries only the pseudo-header
//! sum there, and a port change must not touch it; a CHECKSUM_COMPLETE
//! skb's own sum follows an address change): an address change goes
//! through the kernel's helper, which knows it, and the way the helper
//! moved the field shows it (`L4Sum`), so that the port change after it is
//! written directly, one helper call per translation rather than two.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    checksum::{self, L4Sum, PseudoChange},
    conntrack::{CT_F_DNAT, CT_F_SNAT, IPPROTO_ICMP, IPPROTO_TCP},
    family::IPPROTO_ICMPV6,
    AddrFamily, CtEntry4, CtEntry6, DropReason, In6Addr,
};

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    conntrack,
    family::Family,
    flow::{Flow, Flow4, Flow6},
    ipv6::{IP6_DST_OFF, IP6_SRC_OFF},
    offsets::{
        ICMP_CSUM_OFF, ICMP_ID_OFF, IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    packet::{l4_csum_replace, ptr_at, ptr_at_mut, store},
};

pub const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

/// Offset of the L4 checksum within the L4 header, and the extra helper
/// flags it needs.
#[inline(always)]
fn l4_csum<A: AddrFamily>(flow: &Flow<A>) -> (usize, u64) {
    if flow.key.proto == IPPROTO_TCP {
        (TCP_CSUM_OFF, 0)
    } else if flow.key.proto == A::ICMP_PROTO {
        (ICMP_CSUM_OFF, 0)
    } else {
        // UDP checksum 0 means "none": leave it so.
        (UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0)
    }
}

/// Where an IPv4 packet's L4 header starts, as an offset the verifier can
/// bound: within the first 14 + 60 bytes (Ethernet, IPv4 with options);
/// the mask tells it so, and changes nothing.
#[inline(always)]
fn direct_l4_off4(flow: &Flow4) -> usize {
    flow.l4_off as usize & 0xff
}

/// Where an IPv6 packet's L4 header starts, if it is right behind the
/// fixed header: a constant offset, which lets the verifier bound direct
/// access (behind extension headers it cannot).
#[inline(always)]
fn direct_l4_off6(flow: &Flow6) -> Option<usize> {
    (flow.l4_off as usize == L4_OFF6).then_some(L4_OFF6)
}

/// The 16-bit word at `off` of the packet.
#[inline(always)]
fn read_u16(ctx: &TcContext, off: usize) -> Option<u16> {
    // SAFETY: bounds checked by ptr_at.
    ptr_at::<u16>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// Writes the 16-bit word at `off` of the packet.
#[inline(always)]
fn write_u16(ctx: &TcContext, off: usize, value: u16) -> Result<(), DropReason> {
    let field: *mut u16 = ptr_at_mut(ctx, off).ok_or(DropReason::WriteFailed)?;
    // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
    unsafe { field.write_unaligned(value) };
    Ok(())
}

/// One side's change to a packet's L4 checksum: where the checksum is
/// (bits 0-15: its offset, for the helper; 16-23: the same offset as
/// direct access reaches it, 0 if out of its reach), `EDIT_*` flags (bits
/// 24-31), the old port (32-47) and the new one (48-63). Packed: one
/// register across the helper call, where separate fields would be
/// spilled (BPF keeps four registers across a call).
#[derive(Clone, Copy)]
struct L4Edit(u64);

/// UDP: a checksum of 0 means none (`BPF_F_MARK_MANGLED_0`).
const EDIT_UDP: u8 = 1;
/// An IPv4 address changes ([`AddrChange`]: `from` to `to`).
const EDIT_ADDR4: u8 = 2;
/// An IPv6 address changes ([`AddrChange`]: the difference in `to`).
const EDIT_ADDR6: u8 = 4;

impl L4Edit {
    #[inline(always)]
    fn new<A: AddrFamily>(flow: &Flow<A>, direct_l4_off: Option<usize>, (old_port, new_port): (u16, u16)) -> L4Edit {
        let (csum, mangled) = l4_csum(flow);
        let off = (flow.l4_off as usize + csum) as u64 & 0xffff;
        let direct_off = direct_l4_off.map_or(0, |l4| (l4 + csum) as u64 & 0xff);
        let flags = if mangled != 0 { EDIT_UDP as u64 } else { 0 };
        L4Edit(off | direct_off << 16 | flags << 24 | (old_port as u64) << 32 | (new_port as u64) << 48)
    }

    /// With an address change of kind `kind` (`EDIT_ADDR4`, `EDIT_ADDR6`).
    #[inline(always)]
    fn changing(self, kind: u8) -> L4Edit {
        L4Edit(self.0 | (kind as u64) << 24)
    }

    #[inline(always)]
    fn off(self) -> usize {
        (self.0 & 0xffff) as usize
    }

    #[inline(always)]
    fn direct_off(self) -> usize {
        (self.0 >> 16 & 0xff) as usize
    }

    #[inline(always)]
    fn has(self, flag: u8) -> bool {
        (self.0 >> 24) as u8 & flag != 0
    }

    #[inline(always)]
    fn ports(self) -> (u16, u16) {
        ((self.0 >> 32) as u16, (self.0 >> 48) as u16)
    }
}

/// An address change as the L4 checksum sees it (the pseudo-header): an
/// IPv4 address from `from` to `to`, or for IPv6 (`from` 0) the whole
/// address's difference in `to`, which the helper applies in one call
/// (field size 0) rather than one per word.
#[derive(Clone, Copy)]
struct AddrChange {
    from: u32,
    to: u32,
}

impl AddrChange {
    const NONE: AddrChange = AddrChange { from: 0, to: 0 };

    #[inline(always)]
    fn v4(old: [u8; 4], new: [u8; 4]) -> AddrChange {
        AddrChange { from: u32::from_ne_bytes(old), to: u32::from_ne_bytes(new) }
    }

    #[inline(always)]
    fn v6(old: &In6Addr, new: &In6Addr) -> AddrChange {
        AddrChange { from: 0, to: checksum::diff_words(&old.0, &new.0) }
    }
}

/// Folds one side's translation into the L4 checksum: its address change
/// (if any; through the helper, which alone can follow a COMPLETE skb's
/// sum) and its port change (written directly when the address change
/// showed what the field holds, else through the helper too).
#[inline(always)]
fn fold_into_l4_sum(ctx: &TcContext, edit: L4Edit, addr: AddrChange) -> Result<(), DropReason> {
    let sum = if edit.has(EDIT_ADDR4 | EDIT_ADDR6) { pseudo_change(ctx, edit, addr)? } else { L4Sum::Unknown };
    let ((old, new), direct) = (edit.ports(), edit.direct_off());
    if old == new {
        return Ok(());
    }
    let mangled = if edit.has(EDIT_UDP) { BPF_F_MARK_MANGLED_0 } else { 0 };
    match sum {
        L4Sum::PseudoOnly => Ok(()),
        L4Sum::Full => {
            let check = checksum::replace2(read_u16(ctx, direct).ok_or(DropReason::WriteFailed)?, old, new);
            // UDP's "no checksum" is 0: a computed 0 is sent as 0xffff.
            write_u16(ctx, direct, if check == 0 && mangled != 0 { 0xffff } else { check })
        }
        L4Sum::Unknown => l4_csum_replace(ctx, edit.off(), old as u64, new as u64, mangled | 2),
    }
}

/// The address change of `edit`, through the helper; returns what it
/// showed of the field. What the field would read after it in either case
/// is worked out before the call, so that little lives across it.
#[inline(always)]
fn pseudo_change(ctx: &TcContext, edit: L4Edit, addr: AddrChange) -> Result<L4Sum, DropReason> {
    let (udp, v4, direct) = (edit.has(EDIT_UDP), edit.has(EDIT_ADDR4), edit.direct_off());
    // A field of 0 tells nothing (`PseudoChange::of`), which also covers a
    // UDP datagram without a checksum: the helper leaves it so.
    let expected = match if direct != 0 { read_u16(ctx, direct) } else { None } {
        Some(before) => {
            let diff = if v4 { checksum::diff_words(&[addr.from], &[addr.to]) } else { addr.to };
            PseudoChange::of(before, diff)
        }
        None => PseudoChange::UNKNOWN,
    };
    let flags = BPF_F_PSEUDO_HDR | if udp { BPF_F_MARK_MANGLED_0 } else { 0 } | if v4 { 4 } else { 0 };
    l4_csum_replace(ctx, edit.off(), addr.from as u64, addr.to as u64, flags)?;
    Ok(read_u16(ctx, edit.direct_off()).map_or(L4Sum::Unknown, |after| expected.shown_by(after)))
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

/// Rewrites the source or the destination (`dst`) of a conntrack hit's
/// packet (`flow`) to `new_addr`:`new_port` (ICMP echo: the identifier):
/// the address with the header checksum, the port, and the L4 checksum,
/// in place; the port's checksum directly where the address change showed
/// what the field holds (see [`fold_into_l4_sum`]).
///
/// Out of line (five arguments, the flow and the address by reference):
/// in line, the checksum's branches (what the helper showed) would
/// multiply the states the verifier explores in each caller, and their
/// values would be spilled into callers' frames, on chains at the
/// 512-byte stack limit.
#[inline(never)]
fn rewrite_hit4(ctx: &TcContext, flow: &Flow4, dst: bool, new_addr: &[u8; 4], new_port: u16) -> Result<(), DropReason> {
    let (old_addr, old_port) = if dst { (flow.key.daddr, flow.key.dport) } else { (flow.key.saddr, flow.key.sport) };
    let icmp = flow.key.proto == IPPROTO_ICMP;
    let (mut edit, mut addr) = (L4Edit::new(flow, Some(direct_l4_off4(flow)), (old_port, new_port)), AddrChange::NONE);
    if old_addr != *new_addr {
        set_ip_addr(ctx, if dst { IP_DST_OFF } else { IP_SRC_OFF }, old_addr, *new_addr)?;
        // The ICMP checksum covers no pseudo-header: addresses do not enter it.
        if !icmp {
            (edit, addr) = (edit.changing(EDIT_ADDR4), AddrChange::v4(old_addr, *new_addr));
        }
    }
    if old_port != new_port {
        write_u16(ctx, direct_l4_off4(flow) + port_field(icmp, dst), new_port)?;
    }
    fold_into_l4_sum(ctx, edit, addr)
}

/// The offset of the port (`dst`: the destination's) in the L4 header; for
/// ICMP echo, the identifier, which stands in for both.
#[inline(always)]
fn port_field(icmp: bool, dst: bool) -> usize {
    match (icmp, dst) {
        (true, _) => ICMP_ID_OFF,
        (false, false) => L4_SPORT_OFF,
        (false, true) => L4_DPORT_OFF,
    }
}

#[inline(always)]
fn rewrite_addr(ctx: &TcContext, flow: &Flow4, field_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    set_ip_addr(ctx, field_off, old, new)?;
    // The ICMP checksum covers no pseudo-header: addresses do not enter it.
    if flow.key.proto != IPPROTO_ICMP {
        let (csum, mangled) = l4_csum(flow);
        let csum_off = flow.l4_off as usize + csum;
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
    write_u16(ctx, direct_l4_off4(flow) + port_off, new)?;
    let (csum, mangled) = l4_csum(flow);
    let csum_off = flow.l4_off as usize + csum;
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
    let (csum, mangled) = l4_csum(flow);
    let csum_off = flow.l4_off as usize + csum;
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
    let (csum, mangled) = l4_csum(flow);
    let csum_off = flow.l4_off as usize + csum;
    l4_csum_replace(ctx, csum_off, old as u64, new as u64, mangled | 2)
}

/// [`apply4`] for a packet of an established flow (a conntrack hit), the
/// path every packet after a flow's first takes: each side's port change
/// is folded into the L4 checksum directly where its address change
/// showed what the field holds ([`rewrite_hit4`]), one helper call per
/// side rather than two. [`apply4`] stays for the rest (first packets,
/// races, restored sources): taken once per flow, in programs at the
/// verifier's limits.
#[inline(always)]
pub fn apply_hit4(ctx: &TcContext, flow: &Flow4, entry: &CtEntry4) -> Result<(), DropReason> {
    if entry.flags & CT_F_SNAT != 0 {
        rewrite_hit4(ctx, flow, false, &entry.snat_addr, entry.snat_port)?;
    }
    if entry.flags & CT_F_DNAT != 0 {
        rewrite_hit4(ctx, flow, true, &entry.dnat_addr, entry.dnat_port)?;
    }
    Ok(())
}

/// [`apply_hit4`] for IPv6.
#[inline(always)]
pub fn apply_hit6(ctx: &TcContext, flow: &Flow6, entry: &CtEntry6) -> Result<(), DropReason> {
    if entry.flags & CT_F_SNAT != 0 {
        rewrite_hit6(ctx, flow, false, &entry.snat_addr, entry.snat_port)?;
    }
    if entry.flags & CT_F_DNAT != 0 {
        rewrite_hit6(ctx, flow, true, &entry.dnat_addr, entry.dnat_port)?;
    }
    Ok(())
}

/// [`rewrite_hit4`] for IPv6 (no header checksum; ICMPv6's checksum covers
/// the pseudo-header). Behind extension headers the port is written with
/// `bpf_skb_store_bytes`, at an offset the verifier cannot bound, and its
/// checksum by the helper.
#[inline(never)]
fn rewrite_hit6(ctx: &TcContext, flow: &Flow6, dst: bool, new_addr: &In6Addr, new_port: u16) -> Result<(), DropReason> {
    let (old_addr, old_port) = if dst { (&flow.key.daddr, flow.key.dport) } else { (&flow.key.saddr, flow.key.sport) };
    let (mut edit, mut addr) = (L4Edit::new(flow, direct_l4_off6(flow), (old_port, new_port)), AddrChange::NONE);
    if old_addr != new_addr {
        set_ip6_addr(ctx, if dst { IP6_DST_OFF } else { IP6_SRC_OFF }, new_addr)?;
        (edit, addr) = (edit.changing(EDIT_ADDR6), AddrChange::v6(old_addr, new_addr));
    }
    if old_port != new_port {
        let port_off = port_field(flow.key.proto == IPPROTO_ICMPV6, dst);
        match direct_l4_off6(flow) {
            Some(l4) => write_u16(ctx, l4 + port_off, new_port)?,
            None => store(ctx, flow.l4_off as usize + port_off, &new_port)?,
        }
    }
    fold_into_l4_sum(ctx, edit, addr)
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
