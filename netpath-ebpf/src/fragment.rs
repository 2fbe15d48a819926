//! Later fragments follow what happened to their first fragment (see
//! `netpath_common::fragment`): its policy verdict, and its translation.

use aya_ebpf::programs::TcContext;
use netpath_common::{fragment::FRAG_TIMEOUT_NS, CtScope, DropReason, FragEntry4, FragKey4};
use network_types::eth::EthHdr;

use crate::{
    clock,
    flow::Flow4,
    maps::FRAGS4,
    offsets::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF},
    packet::{l3_csum_replace, load, store},
};

/// Records that the first fragment of `flow` passed at `scope`.
#[inline(always)]
pub fn first4(flow: &Flow4, scope: CtScope) {
    if flow.first_fragment {
        record4(flow, scope, [0; 4], [0; 4]);
    }
}

/// Out of line: the entry and key need stack that the callers' frames (on
/// the policy path) do not have to spare.
#[inline(never)]
fn record4(flow: &Flow4, scope: CtScope, nat_saddr: [u8; 4], nat_daddr: [u8; 4]) {
    let entry = FragEntry4 {
        sport: flow.key.sport,
        dport: flow.key.dport,
        nat_saddr,
        nat_daddr,
        _pad: 0,
        expires_ns: clock::now_ns() + FRAG_TIMEOUT_NS,
    };
    // A full table evicts the oldest datagram (LRU): its later fragments
    // are then dropped, never passed unjudged.
    let _ = FRAGS4.insert(&flow.frag_key(scope), &entry, 0);
}

/// A later fragment passes only if its first fragment passed at `scope`
/// within the reassembly timeout.
#[inline(always)]
pub fn follows4(frag: &FragKey4, scope: CtScope) -> Result<(), DropReason> {
    match live4(frag, scope) {
        Some(_) => Ok(()),
        None => Err(DropReason::Fragment),
    }
}

/// The live entry of the datagram `frag` belongs to, at `scope`.
#[inline(always)]
fn live4(frag: &FragKey4, scope: CtScope) -> Option<*const FragEntry4> {
    let key = FragKey4 { scope: scope as u8, ..*frag };
    let entry = FRAGS4.get_ptr(&key)?;
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
    record4(flow, CtScope::Nat, saddr, daddr);
}

/// Gives a later fragment the addresses its first fragment was translated
/// to. Later fragments have no L4 header: only the addresses and the IP
/// header checksum change. Ok(false): no translation is known (its first
/// fragment was not translated here, was not seen, or expired).
#[inline(never)]
pub fn translate_later4(ctx: &TcContext, frag: &FragKey4) -> Result<bool, DropReason> {
    let Some(entry) = live4(frag, CtScope::Nat) else { return Ok(false) };
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
