//! Per-interface traffic and drop counters (per CPU, so no atomics), in an
//! array indexed by the interface's slot (`netpath_common::stats`): the
//! verifier inlines the lookup to an address computation, where a hash
//! keyed by ifindex cost every program a hashed lookup (20-30 ns).

use netpath_common::{stats::IFACE_SLOT_UNATTRIBUTED, ContainerEntry, DropReason, Side, TrafficStats};

use crate::maps::IFACE_STATS;

/// Where a program counts: an `IFACE_STATS` slot.
#[derive(Clone, Copy)]
pub struct StatsSlot(u32);

impl StatsSlot {
    pub const UPLINK: StatsSlot = StatsSlot(netpath_common::stats::IFACE_SLOT_UPLINK);
    /// A veth the datapath has no container for.
    pub const UNATTRIBUTED: StatsSlot = StatsSlot(IFACE_SLOT_UNATTRIBUTED);

    #[inline(always)]
    pub fn of(container: &ContainerEntry) -> StatsSlot {
        StatsSlot(container.stats_slot)
    }
}

#[inline(always)]
fn with_stats(slot: StatsSlot, f: impl FnOnce(&mut TrafficStats)) {
    if let Some(stats) = IFACE_STATS.get_ptr_mut(slot.0) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        f(unsafe { &mut *stats });
    }
}

#[inline(always)]
pub fn count_packet(slot: StatsSlot, side: Side, bytes: u32) {
    with_stats(slot, |s| match side {
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
pub fn count_drop(slot: StatsSlot, reason: DropReason) {
    let idx = drop_slot(reason);
    with_stats(slot, |s| {
        if let Some(d) = s.drops.get_mut(idx) {
            *d += 1;
        }
    });
}
