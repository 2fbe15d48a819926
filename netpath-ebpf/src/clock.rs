//! The clock of expiries (conntrack, fragments, the event budget):
//! CLOCK_MONOTONIC at the resolution of the scheduler tick, the clock the
//! agent's GC and listings read precisely. Timeouts are whole seconds, so
//! reading it a tick or two late changes nothing.
//!
//! Read on every tracked packet, so read cheaply: the coarse clock
//! (`bpf_ktime_get_coarse_ns`) only moves when the tick does, and a helper
//! call costs about 20 ns here (a conntrack hit is ~150), while
//! `bpf_jiffies64` is not a call at all (the verifier turns it into a load
//! of `jiffies_64`) and neither is the lookup of a per-CPU array on the
//! kernels that inline it too (this machine's 6.18). So each CPU keeps the
//! coarse time it read last beside the tick it read it at, and calls the
//! helper again only once the tick has moved on. The time kept may be one
//! tick older than the coarse clock's (`jiffies_64` moves just before the
//! timekeeper does): at most two ticks behind the precise clock. Monitor
//! events keep the precise clock for their timestamps: they are rare and
//! ordered by it.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::TICK_CLOCK;

/// A CPU's last reading of the coarse clock (`TICK_CLOCK`), and the tick
/// (`jiffies_64`) it was taken at.
#[repr(C)]
pub struct TickReading {
    jiffies: u64,
    ns: u64,
}

/// Now, for computing and checking expiries.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    let tick = unsafe { bpf_jiffies64() };
    let Some(last) = TICK_CLOCK.get_ptr_mut(0) else { return read_at(None, tick) };
    // SAFETY: this CPU's element, valid during the run. Only runs on this
    // CPU write it; one that interrupted another between its two stores
    // would at worst leave a reading a tick old, which expiries ignore.
    if unsafe { (*last).jiffies } == tick {
        return unsafe { (*last).ns };
    }
    read_at(Some(last), tick)
}

/// Reads the coarse clock at `tick`, and keeps the reading in `last`. Out
/// of line, once a tick: in line, it would add its spills to the frames of
/// callers on call chains at the 512-byte stack limit.
#[inline(never)]
fn read_at(last: Option<*mut TickReading>, tick: u64) -> u64 {
    // SAFETY: a helper without arguments.
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(last) = last {
        // SAFETY: as in `now_ns`.
        unsafe { (*last).jiffies = tick };
        unsafe { (*last).ns = ns };
    }
    ns
}
