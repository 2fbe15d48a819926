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

#[inline(always)]
pub fn count_drop(ifindex: u32, reason: DropReason) {
    let idx = reason as usize;
    with_stats(ifindex, |s| {
        if let Some(d) = s.drops.get_mut(idx) {
            *d += 1;
        }
    });
}
