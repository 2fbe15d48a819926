//! Connection tracking: find a flow's entry, keep its state and expiry
//! current, and create the two entries of a new translated flow.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{
    conntrack::{CtState, CT_F_REPLY},
    CtEntry, CtKey4, DatapathConfig, DropReason,
};

use crate::{flow::Flow4, maps::CT4};

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub fn lookup4(key: &CtKey4) -> Option<*mut CtEntry> {
    CT4.get_ptr_mut(key)
}

/// Accounts a packet of `len` bytes to `entry` and refreshes its state and
/// expiry.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, flow: &Flow4, len: u32, cfg: &DatapathConfig) {
    // SAFETY: a map value pointer, valid during the program run.
    let e = unsafe { &mut *entry };
    let now = unsafe { bpf_ktime_get_ns() };
    // The state machine and the expiry decision: netpath_common::conntrack.
    if e.refresh(flow.key.proto, flow.tcp_flags, now, &cfg.timeouts) {
        reset_peer(&e.peer, e.expires_ns);
    }
    // Plain adds: the bpfel target has no 64-bit atomics in `core`, so
    // counts of a flow whose packets race on two CPUs may lose an update.
    // They are for display; nothing decides on them.
    e.packets += 1;
    e.bytes += len as u64;
}

/// Why a flow could not be created.
pub enum CreateError {
    /// The reply tuple belongs to another flow (try another port).
    Taken,
    /// The table refused the entry.
    Failed,
}

impl From<CreateError> for DropReason {
    fn from(_: CreateError) -> DropReason {
        DropReason::TableFull
    }
}

const EEXIST: i32 = 17;

/// An RST from either side ends the whole connection, as in the kernel's
/// conntrack: the other direction gets the short reset timeout too, or it
/// would hold its entry (and a translated port) for its own longer one.
#[inline(never)]
fn reset_peer(peer: &CtKey4, expires: u64) {
    if let Some(p) = CT4.get_ptr_mut(peer) {
        // SAFETY: map value pointer, valid during the program run.
        let p = unsafe { &mut *p };
        p.state = CtState::Reset as u8;
        p.expires_ns = expires;
    }
}

/// Inserts both directions of a new flow. The reply key must be free: a
/// clash means another flow already owns that tuple.
#[inline(always)]
pub fn create4(
    orig_key: &CtKey4,
    orig: &mut CtEntry,
    reply_key: &CtKey4,
    reply: &mut CtEntry,
    proto: u8,
    cfg: &DatapathConfig,
) -> Result<(), CreateError> {
    let now = unsafe { bpf_ktime_get_ns() };
    let expires = cfg.timeouts.expiry(proto, CtState::New as u8, now);
    orig.expires_ns = expires;
    reply.expires_ns = expires;
    orig.peer = *reply_key;
    reply.peer = *orig_key;
    reply.flags |= CT_F_REPLY;
    CT4.insert(reply_key, &*reply, BPF_NOEXIST).map_err(|e| {
        if e == -EEXIST {
            CreateError::Taken
        } else {
            CreateError::Failed
        }
    })?;
    if CT4.insert(orig_key, &*orig, 0).is_err() {
        let _ = CT4.remove(reply_key);
        return Err(CreateError::Failed);
    }
    Ok(())
}
