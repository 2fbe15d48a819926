//! Per-interface traffic and drop counters (per CPU, so no atomics).

use netpath_common::{DropReason, Side, TrafficStats};

use crate::maps::IFACE_STATS;

#[inline(always)]
fn with_stats(ifindex: u32, f: impl FnOnce(&mut TrafficStats)) {
    let stats = match IFACE_STATS.get_ptr_mut(ifindex) {
        Some(stats) => stats,
        None => match init_stats(ifindex) {
            Some(stats) => stats,
            None => return,
        },
    };
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    f(unsafe { &mut *stats });
}

/// First packet on an interface the agent has not pre-created a slot for.
/// Out of line: the zeroed value is large, and callers' stacks are tight.
#[inline(never)]
fn init_stats(ifindex: u32) -> Option<*mut TrafficStats> {
    let _ = IFACE_STATS.insert(ifindex, TrafficStats::default(), 0);
    IFACE_STATS.get_ptr_mut(ifindex)
}

#[inline(always)]
pub fn count_packet(ifindex: u32, side: Side, bytes: u32) {
    with_stats(ifindex, |s| match side {
        Side::Ingress => s.ingress.add(bytes as u64),
        Side::Egress => s.egress.add(bytes as u64),
    });
}

/// The slot of `reason` in `TrafficStats::drops`. Read through a volatile
/// load: LLVM knows the enum's range and would drop the bounds check, but
/// the verifier sees a plain u32 (it crosses BPF-to-BPF calls as one) and
/// refuses an unchecked index.
#[inline(always)]
fn drop_slot(reason: DropReason) -> usize {
    let raw = reason as u32;
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw) as usize }
}

#[inline(always)]
pub fn count_drop(ifindex: u32, reason: DropReason) {
    let idx = drop_slot(reason);
    with_stats(ifindex, |s| {
        if let Some(d) = s.drops.get_mut(idx) {
            *d += 1;
        }
    });
}

/// Counts a drop on an interface whose counters the agent created (a
/// container's veth): no slot is created here, so callers deep in a call
/// chain do not pay the stack of [`init_stats`].
#[inline(always)]
pub fn count_drop_on_container(ifindex: u32, reason: DropReason) {
    let idx = drop_slot(reason);
    if let Some(stats) = IFACE_STATS.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        if let Some(d) = unsafe { &mut *stats }.drops.get_mut(idx) {
            *d += 1;
        }
    }
}
