//! Connection tracking: find a flow's entry, keep its state and expiry
//! current, and create the two entries of a new translated flow.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::{CtState, CtTimeouts, CLOSED, CT_F_MASQ_PENDING, CT_F_REPLY, CT_F_SNAT, IPPROTO_TCP, TCP_FIN},
    CtEntry, CtKey, CtStats, DatapathConfig, DropReason,
};

use crate::{
    clock,
    family::Family,
    flow::Flow,
    maps::{container_live, mapping_live, CT_STATS},
};

const BPF_NOEXIST: u64 = 1;
const ESTABLISHED: u8 = CtState::Established as u8;

/// The entry of `key`, if tracked and its owners (mapping, container) are
/// still there: an entry of a removed owner is stale, as if the agent had
/// deleted the flow (see netpath_common::owner). Stale entries stay for
/// [`lookup_or_forget`] or the GC to delete.
#[inline(always)]
pub fn lookup<A: Family>(key: &CtKey<A>) -> Option<*mut CtEntry<A>> {
    let entry = A::ct().get_ptr_mut(key)?;
    if owned(entry) {
        Some(entry)
    } else {
        None
    }
}

/// [`lookup`] where a miss may start a new flow on the same tuple (the
/// stages' main lookups): a stale flow goes first, both halves, so that the
/// new one can take its tuples.
#[inline(always)]
pub fn lookup_or_forget<A: Family>(key: &CtKey<A>) -> Option<*mut CtEntry<A>> {
    let entry = A::ct().get_ptr_mut(key)?;
    if owned(entry) {
        return Some(entry);
    }
    forget_stale(key);
    None
}

/// The entry of `key` whatever its owners, where the caller knows a stale
/// one cannot be there (an earlier hook of the same packet deleted it).
#[inline(always)]
pub fn lookup_unchecked<A: Family>(key: &CtKey<A>) -> Option<*mut CtEntry<A>> {
    A::ct().get_ptr_mut(key)
}

/// Are the entry's owners still there?
#[inline(always)]
fn owned<A>(entry: *mut CtEntry<A>) -> bool {
    // SAFETY: map value pointer, valid during the run.
    owners_live(unsafe { &*entry })
}

/// Are the owners (mapping, container) of `entry` still there?
#[inline(always)]
pub fn owners_live<A>(entry: &CtEntry<A>) -> bool {
    mapping_live(entry.mapping_id) && container_live(entry.container_id)
}

/// Deletes a stale flow's two halves. Out of line, and looking the entry up
/// again rather than taking it: its caller's frame keeps nothing for it.
#[inline(never)]
fn forget_stale<A: Family>(key: &CtKey<A>) {
    if let Some(entry) = A::ct().get_ptr(key) {
        // SAFETY: map value pointer, valid during the run; its `peer` field
        // serves as the key in place.
        let _ = A::ct().remove(unsafe { &(*entry).peer });
    }
    let _ = A::ct().remove(key);
}

/// Accounts a packet of `len` bytes to `entry` and refreshes its state and
/// expiry.
#[inline(always)]
pub fn touch<A: Family>(entry: *mut CtEntry<A>, flow: &Flow<A>, len: u32, cfg: &DatapathConfig) {
    // SAFETY: a map value pointer, valid during the program run.
    let e = unsafe { &mut *entry };
    let now = clock::now_ns();
    let before = e.state;
    // The state machine and the expiry decision: netpath_common::conntrack.
    if e.refresh(flow.key.proto, flow.tcp_flags, now, &cfg.timeouts) {
        reset_peer(&e.peer, e.expires_ns);
    } else if flow.tcp_flags & TCP_FIN != 0 && e.state == CtState::Closing as u8 {
        close_if_peer_closing(entry, &cfg.timeouts, now);
    } else if before == CtState::New as u8 && e.state == ESTABLISHED && flow.key.proto == IPPROTO_TCP {
        establish_peer(&e.peer, e.expires_ns);
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
    /// Another CPU created this very flow at the same moment: its entries
    /// stand (look the flow up again and use them).
    Raced,
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
fn reset_peer<A: Family>(peer: &CtKey<A>, expires: u64) {
    if let Some(p) = A::ct().get_ptr_mut(peer) {
        // SAFETY: map value pointer, valid during the program run.
        let p = unsafe { &mut *p };
        p.state = CtState::Reset as u8;
        p.expires_ns = expires;
    }
}

/// The ACK that completes a TCP handshake establishes the whole
/// connection: the other half (new since its SYN-ACK, which does not
/// establish) leaves the short handshake timeout too, or an idle connection
/// whose server never sent would keep one half under it.
#[inline(never)]
fn establish_peer<A: Family>(peer: &CtKey<A>, expires: u64) {
    if let Some(p) = A::ct().get_ptr_mut(peer) {
        // SAFETY: map value pointer, valid during the program run.
        let p = unsafe { &mut *p };
        if p.state == CtState::New as u8 {
            p.state = ESTABLISHED;
            p.expires_ns = expires;
        }
    }
}

/// The second FIN of a connection (this direction's, the peer having sent
/// its own): both halves go to `closed` and its short timeout, rather than
/// holding their entries for the half-close timeout.
#[inline(never)]
fn close_if_peer_closing<A: Family>(entry: *mut CtEntry<A>, timeouts: &CtTimeouts, now: u64) {
    // SAFETY: map value pointers, valid during the program run.
    let e = unsafe { &mut *entry };
    let Some(p) = A::ct().get_ptr_mut(&e.peer) else { return };
    let p = unsafe { &mut *p };
    if p.state != CtState::Closing as u8 && p.state != CLOSED {
        return;
    }
    let expires = timeouts.expiry(IPPROTO_TCP, CLOSED, now);
    e.state = CLOSED;
    e.expires_ns = expires;
    p.state = CLOSED;
    p.expires_ns = expires;
}

/// Translates `flow`'s packet as the flow's existing entry says (another
/// CPU created the flow while this one tried to).
#[inline(never)]
pub fn apply_existing<A: Family>(ctx: &TcContext, flow: &Flow<A>) -> Result<(), DropReason> {
    match lookup(&flow.key) {
        // SAFETY: map value pointer, valid during the run.
        Some(entry) => A::apply_nat(ctx, flow, unsafe { &*entry }),
        None => Err(DropReason::TableFull),
    }
}

/// Inserts both directions of a new flow. The reply key must be free: a
/// clash means another flow already owns that tuple.
#[inline(always)]
pub fn create<A: Family>(
    orig_key: &CtKey<A>,
    orig: &mut CtEntry<A>,
    reply_key: &CtKey<A>,
    reply: &mut CtEntry<A>,
    proto: u8,
    cfg: &DatapathConfig,
) -> Result<(), CreateError> {
    let now = clock::now_ns();
    let expires = cfg.timeouts.expiry(proto, CtState::New as u8, now);
    orig.expires_ns = expires;
    reply.expires_ns = expires;
    orig.peer = *reply_key;
    reply.peer = *orig_key;
    reply.flags |= CT_F_REPLY;
    insert_reply(reply_key, reply)?;
    insert_orig(orig_key, orig, reply_key)
}

/// Inserts a policy verdict's two halves from one entry (they differ only
/// in direction), so that the policy path needs one entry's stack, not two.
/// The packet at hand (`len` bytes) is counted on the half it belongs to.
#[inline(always)]
pub fn create_verdict<A: Family>(
    orig_key: &CtKey<A>,
    reply_key: &CtKey<A>,
    entry: &mut CtEntry<A>,
    packet_on_orig: bool,
    len: u32,
    cfg: &DatapathConfig,
) -> Result<(), CreateError> {
    let now = clock::now_ns();
    entry.state = CtState::New as u8;
    entry.expires_ns = cfg.timeouts.expiry(orig_key.proto, CtState::New as u8, now);
    entry.flags |= CT_F_REPLY;
    entry.peer = *orig_key;
    (entry.packets, entry.bytes) = if packet_on_orig { (0, 0) } else { (1, len as u64) };
    insert_reply(reply_key, entry)?;
    entry.flags &= !CT_F_REPLY;
    entry.peer = *reply_key;
    (entry.packets, entry.bytes) = if packet_on_orig { (1, len as u64) } else { (0, 0) };
    insert_orig(orig_key, entry, reply_key)
}

/// Keeps the verdict of a flow that masquerade will translate on its
/// original half, before the translation exists (see
/// netpath_common::conntrack): one entry at `key` (the NAT scope), its own
/// peer until the uplink completes it. Its packet is counted by the NAT
/// stage, which finds the entry right after.
#[inline(always)]
pub fn create_pending<A: Family>(
    key: &CtKey<A>,
    entry: &mut CtEntry<A>,
    cfg: &DatapathConfig,
) -> Result<(), CreateError> {
    entry.state = CtState::New as u8;
    entry.expires_ns = cfg.timeouts.expiry(key.proto, CtState::New as u8, clock::now_ns());
    entry.flags |= CT_F_MASQ_PENDING;
    entry.peer = *key;
    insert_new(key, entry)
}

/// Completes a pending masquerade (`orig` at `orig_key`): inserts the reply
/// half at `reply_key` (free, or the port is `Taken`), then gives the
/// original half, in place, the source `snat` and its peer. Two CPUs
/// completing the same flow at once (its first two packets on two CPUs):
/// the one that finds it completed after its own insert takes its reply
/// half back (`Raced`, the packet follows the other's translation).
#[inline(always)]
pub fn complete_pending<A: Family>(
    orig_key: &CtKey<A>,
    orig: *mut CtEntry<A>,
    reply_key: &CtKey<A>,
    reply: &mut CtEntry<A>,
    snat: (A, u16),
) -> Result<(), CreateError> {
    // SAFETY: a map value pointer, valid during the program run.
    let o = unsafe { &mut *orig };
    reply.state = o.state;
    reply.expires_ns = o.expires_ns;
    reply.flags |= CT_F_REPLY;
    reply.peer = *orig_key;
    insert_reply(reply_key, reply)?;
    if o.flags & CT_F_MASQ_PENDING == 0 {
        remove(reply_key);
        return Err(CreateError::Raced);
    }
    (o.snat_addr, o.snat_port) = snat;
    o.peer = *reply_key;
    o.flags = (o.flags & !CT_F_MASQ_PENDING) | CT_F_SNAT;
    Ok(())
}

/// Inserts a reply half. A tracked reply tuple whose original half is gone
/// (the LRU evicted it) is an orphan that would hold the tuple, and block
/// every new flow on it, until it expires: it is replaced.
#[inline(always)]
fn insert_reply<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), CreateError> {
    match insert_new(key, entry) {
        Err(CreateError::Taken) if orphaned(key) => {
            remove(key);
            insert_new(key, entry)
        }
        other => other,
    }
}

/// Is the entry at `key` a half whose peer is gone?
#[inline(always)]
fn orphaned<A: Family>(key: &CtKey<A>) -> bool {
    match A::ct().get_ptr(key) {
        // SAFETY: map value pointer, valid during the run; its `peer` field
        // serves as the key of the second lookup in place.
        Some(entry) => A::ct().get_ptr(unsafe { &(*entry).peer }).is_none(),
        None => false,
    }
}

/// Inserts one half if its key is not tracked yet.
#[inline(always)]
fn insert_new<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), CreateError> {
    match A::ct().insert(key, entry, BPF_NOEXIST) {
        Ok(()) => {
            count(|s| s.inserts += 1);
            Ok(())
        }
        Err(e) if e == -EEXIST => Err(CreateError::Taken),
        Err(_) => {
            count(|s| s.insert_failures += 1);
            Err(CreateError::Failed)
        }
    }
}

/// Deletes one entry, counted (the agent tells the datapath's removals
/// from LRU evictions by these counts).
#[inline(always)]
fn remove<A: Family>(key: &CtKey<A>) {
    if A::ct().remove(key).is_ok() {
        count(|s| s.removals += 1);
    }
}

#[inline(always)]
fn count(f: impl FnOnce(&mut CtStats)) {
    if let Some(stats) = CT_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's value, written by nothing else while we run.
        f(unsafe { &mut *stats });
    }
}

/// Inserts the original half once its reply half is in, never overwriting:
/// if another CPU created the same flow meanwhile, its pair stands and our
/// reply half goes (overwriting its original half would orphan its reply).
#[inline(always)]
fn insert_orig<A: Family>(orig_key: &CtKey<A>, orig: &CtEntry<A>, reply_key: &CtKey<A>) -> Result<(), CreateError> {
    match insert_new(orig_key, orig) {
        Ok(()) => Ok(()),
        Err(e) => {
            remove(reply_key);
            Err(match e {
                CreateError::Taken => CreateError::Raced,
                other => other,
            })
        }
    }
}
