//! Per-interface traffic and drop counters (per CPU, so no atomics).

use netpath_common::{DropReason, TrafficStats};

use crate::maps::IFACE_STATS;

/// Which side of the interface a hook sees.
#[derive(Clone, Copy)]
pub enum Direction {
    Ingress,
    Egress,
}

#[inline(always)]
fn with_stats(ifindex: u32, f: impl FnOnce(&mut TrafficStats)) {
    if let Some(stats) = IFACE_STATS.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        f(unsafe { &mut *stats });
        return;
    }
    // First packet on an interface the agent has not pre-created a slot for.
    let mut stats = TrafficStats::default();
    f(&mut stats);
    let _ = IFACE_STATS.insert(ifindex, stats, 0);
}

#[inline(always)]
pub fn count_packet(ifindex: u32, dir: Direction, bytes: u32) {
    with_stats(ifindex, |s| match dir {
        Direction::Ingress => s.ingress.add(bytes as u64),
        Direction::Egress => s.egress.add(bytes as u64),
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
