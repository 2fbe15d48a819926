//! The clock of expiries (conntrack, fragments, the event budget):
//! CLOCK_MONOTONIC at the resolution of the scheduler tick
//! (`bpf_ktime_get_coarse_ns`), the clock the agent's GC and listings read
//! precisely. Timeouts are whole seconds, so a tick (at most 4 ms behind)
//! changes nothing; the precise clock reads the TSC, which costs a
//! noticeable share of a conntrack hit (tens of ns in a VM). Monitor events
//! keep the precise clock for their timestamps: they are rare and ordered by
//! it.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

/// Now, for computing and checking expiries.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}
