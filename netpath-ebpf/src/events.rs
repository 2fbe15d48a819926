//! Events for the agent's monitor, through the `EVENTS` ring buffer. A full
//! buffer loses the event, never the packet.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{CtKey4, Event, HookId};

use crate::{
    clock,
    maps::{EVENTS, EVENT_BUDGET},
};

/// May a drop event go to the monitor now? At most
/// `MAX_DROP_EVENTS_PER_SEC` per CPU: a flood is counted, not streamed
/// packet by packet (netpath_common::EventBudget).
#[inline(always)]
pub fn drop_event_admitted() -> bool {
    match EVENT_BUDGET.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        Some(budget) => unsafe { (*budget).admit(clock::now_ns()) },
        None => true,
    }
}

#[inline(always)]
pub fn emit(kind: u8, reason: u8, hook: HookId, ifindex: u32, container_id: u32, key: &CtKey4) {
    let event = Event {
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        kind,
        reason,
        hook: hook as u8,
        _pad: 0,
        ifindex,
        container_id,
        key: *key,
        _pad2: 0,
    };
    let _ = EVENTS.output(&event, 0);
}
