//! Later fragments follow their first fragment's verdict (see
//! `netpath_common::fragment`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{fragment::FRAG_TIMEOUT_NS, CtScope, DropReason, FragEntry4, FragKey4};

use crate::{flow::Flow4, maps::FRAGS4};

/// Records that the first fragment of `flow` passed at `scope`.
#[inline(always)]
pub fn first4(flow: &Flow4, scope: CtScope) {
    if flow.first_fragment {
        record4(flow, scope);
    }
}

/// Out of line: the entry and key need stack that the callers' frames (on
/// the policy path) do not have to spare.
#[inline(never)]
fn record4(flow: &Flow4, scope: CtScope) {
    let entry = FragEntry4 {
        sport: flow.key.sport,
        dport: flow.key.dport,
        _pad: 0,
        expires_ns: unsafe { bpf_ktime_get_ns() } + FRAG_TIMEOUT_NS,
    };
    // A full table evicts the oldest datagram (LRU): its later fragments
    // are then dropped, never passed unjudged.
    let _ = FRAGS4.insert(&flow.frag_key(scope), &entry, 0);
}

/// A later fragment passes only if its first fragment passed at `scope`
/// within the reassembly timeout.
#[inline(always)]
pub fn follows4(frag: &FragKey4, scope: CtScope) -> Result<(), DropReason> {
    let key = FragKey4 { scope: scope as u8, ..*frag };
    match FRAGS4.get_ptr(&key) {
        // SAFETY: map value pointer, valid during the run.
        Some(entry) if unsafe { (*entry).expires_ns } > unsafe { bpf_ktime_get_ns() } => Ok(()),
        _ => Err(DropReason::Fragment),
    }
}
