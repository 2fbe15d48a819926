//! Later fragments follow what happened to their first fragment (see
//! `netpath_common::fragment`): its policy verdict, and its translation.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT},
    fragment::FRAG_TIMEOUT_NS,
    CtEntry6, CtScope, DropReason, FragEntry, FragKey, FragKey4, FragKey6,
};
use network_types::eth::EthHdr;

use crate::{
    clock,
    family::Family,
    flow::{Flow, Flow4, Flow6},
    ipv6::{IP6_DST_OFF, IP6_SRC_OFF},
    offsets::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF},
    packet::{l3_csum_replace, load, store},
};

/// Records that the first fragment of `flow` passed at `scope`.
#[inline(always)]
pub fn first<A: Family>(flow: &Flow<A>, scope: CtScope) {
    if flow.first_fragment {
        record(flow, scope, None);
    }
}

/// Out of line: the entry and key need stack that the callers' frames (on
/// the policy path) do not have to spare. `nat`: the translated source and
/// destination, if the first fragment was translated. (Zeroed here rather
/// than by the callers of an untranslated one: see crate::zero.)
#[inline(never)]
fn record<A: Family>(flow: &Flow<A>, scope: CtScope, nat: Option<(A, A)>) {
    let (nat_saddr, nat_daddr) = nat.unwrap_or_else(|| (crate::zero::zeroed(), crate::zero::zeroed()));
    let expires_ns = clock::now_ns() + FRAG_TIMEOUT_NS;
    if A::IN_SCRATCH {
        let Some(s) = A::scratch() else { return };
        // SAFETY: this CPU's scratch, used by this run only.
        let s = unsafe { &mut *s };
        // Field by field: a struct assignment is built on the stack first.
        let (k, e) = (&mut s.frag_key, &mut s.frag_entry);
        (k.saddr, k.daddr, k.id, k.proto, k.scope) =
            (flow.key.saddr, flow.key.daddr, flow.ip_id, flow.key.proto, scope as u8);
        k._pad = Default::default();
        (e.sport, e.dport, e.nat_saddr, e.nat_daddr, e._pad) =
            (flow.key.sport, flow.key.dport, nat_saddr, nat_daddr, 0);
        e.expires_ns = expires_ns;
        let _ = A::frags().insert(&s.frag_key, &s.frag_entry, 0);
        return;
    }
    let entry = FragEntry { sport: flow.key.sport, dport: flow.key.dport, nat_saddr, nat_daddr, _pad: 0, expires_ns };
    // A full table evicts the oldest datagram (LRU): its later fragments
    // are then dropped, never passed unjudged.
    let _ = A::frags().insert(&flow.frag_key(scope), &entry, 0);
}

/// A later fragment passes only if its first fragment passed at `scope`
/// within the reassembly timeout.
#[inline(always)]
pub fn follows<A: Family>(frag: &FragKey<A>, scope: CtScope) -> Result<(), DropReason> {
    match live(frag, scope) {
        Some(_) => Ok(()),
        None => Err(DropReason::Fragment),
    }
}

/// The live entry of the datagram `frag` belongs to, at `scope`.
#[inline(always)]
fn live<A: Family>(frag: &FragKey<A>, scope: CtScope) -> Option<*const FragEntry<A>> {
    let key = FragKey { scope: scope as u8, ..*frag };
    let entry = A::frags().get_ptr(&key)?;
    // SAFETY: map value pointer, valid during the run.
    (unsafe { (*entry).expires_ns } > clock::now_ns()).then_some(entry)
}

/// Records the translation of a first fragment (`flow` as it arrived; the
/// packet as it leaves), for its later fragments. Called after the
/// rewrite, so the addresses are read back from the packet. A hit that
/// changed no address (a masquerade entry still pending on the veth) is no
/// translation to record: recorded, it would let the later fragments leave
/// the uplink untranslated if the first one never got further.
#[inline(never)]
pub fn translated4(ctx: &TcContext, flow: &Flow4) {
    let (Ok(saddr), Ok(daddr)) = (load(ctx, EthHdr::LEN + IP_SRC_OFF), load(ctx, EthHdr::LEN + IP_DST_OFF)) else {
        return;
    };
    if saddr == flow.key.saddr && daddr == flow.key.daddr {
        return;
    }
    record(flow, CtScope::Nat, Some((saddr, daddr)));
}

/// Gives a later fragment the addresses its first fragment was translated
/// to. Later fragments have no L4 header: only the addresses and the IP
/// header checksum change. Ok(false): no translation is known (its first
/// fragment was not translated here, was not seen, or expired).
#[inline(never)]
pub fn translate_later4(ctx: &TcContext, frag: &FragKey4) -> Result<bool, DropReason> {
    let Some(entry) = live(frag, CtScope::Nat) else { return Ok(false) };
    // SAFETY: map value pointer, valid during the run.
    let (saddr, daddr) = unsafe { ((*entry).nat_saddr, (*entry).nat_daddr) };
    rewrite_addr4(ctx, IP_SRC_OFF, frag.saddr, saddr)?;
    rewrite_addr4(ctx, IP_DST_OFF, frag.daddr, daddr)?;
    Ok(true)
}

#[inline(always)]
fn rewrite_addr4(ctx: &TcContext, field_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let (old, new) = (u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64);
    l3_csum_replace(ctx, EthHdr::LEN + IP_CSUM_OFF, old, new, 4)?;
    store(ctx, EthHdr::LEN + field_off, &(new as u32))
}

/// [`translated4`] for IPv6, from the flow's entry (what it rewrote): the
/// translated addresses of a first fragment, for its later fragments.
#[inline(never)]
pub fn translated6(flow: &Flow6, entry: &CtEntry6) {
    let saddr = if entry.flags & CT_F_SNAT != 0 { entry.snat_addr } else { flow.key.saddr };
    let daddr = if entry.flags & CT_F_DNAT != 0 { entry.dnat_addr } else { flow.key.daddr };
    if saddr == flow.key.saddr && daddr == flow.key.daddr {
        return;
    }
    record(flow, CtScope::Nat, Some((saddr, daddr)));
}

/// [`translate_later4`] for IPv6: no header checksum, and a later fragment
/// carries no L4 checksum to update, so the addresses are simply written.
#[inline(never)]
pub fn translate_later6(ctx: &TcContext, frag: &FragKey6) -> Result<bool, DropReason> {
    let Some(entry) = live(frag, CtScope::Nat) else { return Ok(false) };
    // SAFETY: map value pointer, valid during the run.
    let e = unsafe { &*entry };
    store(ctx, EthHdr::LEN + IP6_SRC_OFF, &e.nat_saddr)?;
    store(ctx, EthHdr::LEN + IP6_DST_OFF, &e.nat_daddr)?;
    Ok(true)
}
