//! Connection tracking: find a flow's entry, keep its state and expiry
//! current, and create the two entries of a new translated flow.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{
    conntrack::{CtState, CT_F_REPLY, IPPROTO_TCP},
    CtEntry, CtKey, CtTimeouts, DatapathConfig, DropReason,
};

use crate::{
    flow::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::CT4,
};

const NS_PER_SEC: u64 = 1_000_000_000;
/// Expiry is refreshed at most this often per entry, to keep hot flows from
/// writing the shared entry on every packet.
const REFRESH_NS: u64 = NS_PER_SEC;

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    CT4.get_ptr_mut(key)
}

// States as plain bytes: an enum lets LLVM assume a range the verifier
// cannot see, and it then indexes tables with unbounded offsets.
const NEW: u8 = CtState::New as u8;
const ESTABLISHED: u8 = CtState::Established as u8;
const CLOSING: u8 = CtState::Closing as u8;
const RESET: u8 = CtState::Reset as u8;

/// Selected with a chain of conditionals rather than a match, so that no
/// lookup table with a variable offset is generated.
#[inline(always)]
fn timeout_secs(t: &CtTimeouts, proto: u8, state: u8) -> u32 {
    if proto == IPPROTO_TCP {
        let mut secs = t.tcp_new;
        if state == ESTABLISHED {
            secs = t.tcp_established;
        }
        if state == CLOSING {
            secs = t.tcp_closing;
        }
        if state == RESET {
            secs = t.tcp_reset;
        }
        secs
    } else if proto == netpath_common::conntrack::IPPROTO_UDP {
        t.udp
    } else {
        t.icmp
    }
}

/// The state after seeing a packet with `tcp_flags` in the entry's direction.
#[inline(always)]
fn next_state(entry: &CtEntry, proto: u8, tcp_flags: u8) -> u8 {
    let cur = entry.state;
    let reply = entry.flags & CT_F_REPLY != 0;
    if proto != IPPROTO_TCP {
        // Datagram flows count as established once the reply direction moved.
        return if reply { ESTABLISHED } else { cur };
    }
    if tcp_flags & TCP_RST != 0 {
        RESET
    } else if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 && (cur == RESET || cur == CLOSING) {
        // A new connection on a reused tuple: it starts over, rather than
        // living under the old one's short closing timeout.
        NEW
    } else if cur == RESET {
        RESET
    } else if tcp_flags & TCP_FIN != 0 {
        CLOSING
    } else if cur == NEW && (tcp_flags & TCP_ACK != 0) && (reply || tcp_flags & TCP_SYN == 0) {
        ESTABLISHED
    } else {
        cur
    }
}

/// Accounts a packet of `len` bytes to `entry` and refreshes its state and
/// expiry.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, flow: &Flow, len: u32, cfg: &DatapathConfig) {
    // SAFETY: a map value pointer, valid during the program run.
    let e = unsafe { &mut *entry };
    let now = unsafe { bpf_ktime_get_ns() };
    let state = next_state(e, flow.key.proto, flow.tcp_flags);
    let expires = now + timeout_secs(&cfg.timeouts, flow.key.proto, state) as u64 * NS_PER_SEC;
    if state != e.state || expires > e.expires_ns + REFRESH_NS || expires < e.expires_ns {
        if state == RESET && e.state != RESET {
            reset_peer(&e.peer, expires);
        }
        e.state = state;
        e.expires_ns = expires;
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
fn reset_peer(peer: &CtKey, expires: u64) {
    if let Some(p) = CT4.get_ptr_mut(peer) {
        // SAFETY: map value pointer, valid during the program run.
        let p = unsafe { &mut *p };
        p.state = RESET;
        p.expires_ns = expires;
    }
}

/// Inserts both directions of a new flow. The reply key must be free: a
/// clash means another flow already owns that tuple.
#[inline(always)]
pub fn create(
    orig_key: &CtKey,
    orig: &mut CtEntry,
    reply_key: &CtKey,
    reply: &mut CtEntry,
    proto: u8,
    cfg: &DatapathConfig,
) -> Result<(), CreateError> {
    let now = unsafe { bpf_ktime_get_ns() };
    let expires = now + timeout_secs(&cfg.timeouts, proto, NEW) as u64 * NS_PER_SEC;
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
