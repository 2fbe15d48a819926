//! Per-container allow/deny, stateful: a new flow is judged once, at the
//! container's side where it starts (out) or arrives (in); its verdict is
//! kept as a pair of conntrack entries in the policy scopes, so replies and
//! later packets pass on a lookup. See netpath_common::policy for the rule
//! model and precedence.

use core::mem::MaybeUninit;

use aya_ebpf::programs::TcContext;
use netpath_common::{
    config::{CFG_F_NO_ICC, CFG_F_ROUTED, CFG_F_TRACE_FLOWS},
    conntrack::{CT_F_DNAT, CT_F_POLICY, CT_F_REPLY, CT_F_SNAT},
    event::EVENT_FLOW,
    policy as rules, ContainerEntry, CtEntry, CtKey, CtKey4, CtScope, DatapathConfig, Direction, DropReason, HookId,
    MappingEntry,
};

use network_types::eth::{EthHdr, EtherType};

use crate::{
    conntrack, events,
    family::Family,
    flow::{Flow, NoFlow, Parsed},
    fragment,
    maps::{config, CT4},
    packet::{load, mac_eq},
    stats::{self, StatsSlot},
    zero,
};

/// With icc off, a container's frames may only go to the gateway's MAC
/// (ARP aside): broadcast, multicast and frames to another container's MAC
/// never reach the bridge, whatever their IP destination (Docker's
/// `--icc=false` blocks all bridge-to-bridge traffic). One exception: a
/// container answering another container through a published port (the
/// reply half of a tracked translation) sends to it directly, and the
/// datapath gives the reply the published address as its source right
/// after this check.
///
/// The setting is read in line: with icc on (the default) every packet a
/// container sends would otherwise pay a BPF-to-BPF call and its return
/// (a return thunk under the kernel's return-stack mitigations) for nothing.
#[inline(always)]
pub fn icc_allows_frame<A: Family>(
    ctx: &TcContext,
    parsed: &Parsed<A>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    if !cfg.has(CFG_F_NO_ICC) {
        return Ok(());
    }
    isolated_frame_allowed(ctx, parsed, cfg)
}

/// [`icc_allows_frame`] with icc off. Out of line, to keep veth_ingress's
/// own frame small (its deepest call chain is tight). The Ethernet header
/// is copied out with a load, not read in place: reading it first thing,
/// the compiler would hand this function the packet's start and end as
/// arguments, and the verifier refuses arithmetic on a passed-in end.
#[inline(never)]
fn isolated_frame_allowed<A: Family>(
    ctx: &TcContext,
    parsed: &Parsed<A>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let eth: EthHdr = load(ctx, 0)?;
    let (dst, ether_type) = (eth.dst_addr, eth.ether_type);
    if ether_type == EtherType::Arp as u16 || mac_eq(&dst, &cfg.gateway_mac) {
        return Ok(());
    }
    // The reply half of a translation, exactly: a masquerade's original
    // half (pending or not) is a flow to the world, never to a container's
    // MAC.
    let answers_translated = |flow: &Flow<A>| match conntrack::lookup(&flow.key.in_scope(CtScope::Nat)) {
        // SAFETY: map value pointer, valid during the run.
        Some(entry) => (unsafe { (*entry).flags } & CT_F_REPLY) != 0,
        None => false,
    };
    match parsed {
        Ok(flow) if A::HAS_NAT && flow.ported && answers_translated(flow) => Ok(()),
        // IPv6's neighbour discovery, as ARP.
        Err(NoFlow::Neighbour { .. }) => Ok(()),
        _ => Err(DropReason::Policy),
    }
}

/// Does the container's policy let a new flow in `direction` with `remote`?
#[inline(always)]
pub fn allows<A: Family>(container: &ContainerEntry, direction: Direction, remote: A, proto: u8, port: u16) -> bool {
    let entry = A::policy_rules(container.id, direction, remote);
    rules::allows(entry, container.default_denies(direction), proto, port)
}

/// Would `container`, behind a published port, let a new flow from
/// `client` in? Asked before a published flow's NAT entries are created,
/// so that a flood of connections the policy denies fills no table (the
/// container's veth still judges, and keeps, the verdict). A client it
/// turns away is counted as a policy drop on the container's counters too.
#[inline(always)]
pub fn admits_published<A: Family>(
    container: &ContainerEntry,
    published: &MappingEntry<A>,
    client: A,
    proto: u8,
) -> bool {
    let admitted = allows(container, Direction::In, client, proto, u16::from_be(published.container_port));
    if !admitted {
        stats::count_drop(StatsSlot::of(container), DropReason::Policy);
    }
    admitted
}

/// Gives a translated flow's entry `container`'s verdict (see
/// netpath_common::conntrack): the flow's packets then find the rewrite and
/// the verdict in one lookup.
#[inline(always)]
pub fn carry<A>(entry: &mut CtEntry<A>, container: &ContainerEntry) {
    entry.flags |= CT_F_POLICY;
    entry.container_id = container.id;
    entry.policy_epoch = container.policy_epoch;
}

/// The verdict a translated flow's entry carried, handed by the stage that
/// translated the packet to the fast path: the receiving container's under
/// its current rules means no second lookup before delivering the packet.
#[derive(Clone, Copy, Default)]
pub struct CarriedVerdict {
    container_id: u32,
    policy_epoch: u32,
}

impl CarriedVerdict {
    /// The verdict on `entry`, if any.
    #[inline(always)]
    pub fn of<A>(entry: &CtEntry<A>) -> CarriedVerdict {
        if entry.flags & CT_F_POLICY == 0 {
            return CarriedVerdict::default();
        }
        CarriedVerdict { container_id: entry.container_id, policy_epoch: entry.policy_epoch }
    }

    /// Into the skb's control block (its first two words), for a
    /// tail-called program ([`CarriedVerdict::from_cb`]).
    #[inline(always)]
    pub fn to_cb(self, ctx: &TcContext) {
        // SAFETY: the context's skb is valid for the program's run, and tc
        // programs may write its control block.
        unsafe {
            (*ctx.skb.skb).cb[0] = self.container_id;
            (*ctx.skb.skb).cb[1] = self.policy_epoch;
        }
    }

    /// What [`CarriedVerdict::to_cb`] put in the control block.
    #[inline(always)]
    pub fn from_cb(ctx: &TcContext) -> CarriedVerdict {
        match ctx.cb() {
            [container_id, policy_epoch, ..] => {
                CarriedVerdict { container_id: *container_id, policy_epoch: *policy_epoch }
            }
            _ => CarriedVerdict::default(),
        }
    }

    /// Is it `container`'s, under its current rules?
    #[inline(always)]
    fn current_for(&self, container: &ContainerEntry) -> bool {
        self.container_id != 0 && self.container_id == container.id && self.policy_epoch == container.policy_epoch
    }
}

/// Records an allowed flow: `orig` (the tuple of the flow's first packet,
/// sent by `starter`'s side) in that direction's verdict scope, its reply in
/// the other one (a flow masquerade will translate: [`remember_pending`]).
/// The packet at hand is counted on the entry it belongs to.
///
/// Out of line: the two entries fill a frame of their own, and the chain
/// veth_ingress -> [`judge`] -> here stays within the 512-byte stack. (BPF calls take at most five arguments: the settings are looked
/// up here.)
#[inline(never)]
fn remember<A: Family>(
    orig: &CtKey<A>,
    starter: Direction,
    packet_is_orig: bool,
    container: &ContainerEntry,
    len: u32,
) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let key = orig.in_scope(CtScope::policy(starter));
    let reply_key = orig.reversed().in_scope(CtScope::policy(starter.reversed()));
    let mut entry = MaybeUninit::uninit();
    let entry = verdict_in(&mut entry, container);
    settled(conntrack::create_verdict(&key, &reply_key, entry, packet_is_orig, len, cfg))
}

/// [`remember`] for a family whose verdicts are built in its scratch
/// (IPv6's), from the tuple of the packet at hand (`packet`: the flow's
/// original direction if `packet_is_orig`, else its reply's).
#[inline(never)]
fn remember_in_scratch<A: Family>(
    packet: &CtKey<A>,
    starter: Direction,
    packet_is_orig: bool,
    container: &ContainerEntry,
    len: u32,
) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let Some(s) = A::scratch() else { return Err(DropReason::TableFull) };
    // SAFETY: this CPU's scratch, used by this run only.
    let s = unsafe { &mut *s };
    // Field by field: a struct assignment is built on the stack first.
    write_key(&mut s.key, packet, !packet_is_orig, CtScope::policy(starter));
    write_key(&mut s.reply_key, packet, packet_is_orig, CtScope::policy(starter.reversed()));
    // SAFETY: as above.
    unsafe { zero::zero(&raw mut s.entry) };
    (s.entry.flags, s.entry.policy_epoch, s.entry.container_id) = (CT_F_POLICY, container.policy_epoch, container.id);
    settled(conntrack::create_verdict(&s.key, &s.reply_key, &mut s.entry, packet_is_orig, len, cfg))
}

/// [`remember_pending`] for a family whose entries are built in its
/// scratch (IPv6's): `orig` is the packet's own tuple.
#[inline(never)]
fn remember_pending_in_scratch<A: Family>(orig: &CtKey<A>, container: &ContainerEntry) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let Some(s) = A::scratch() else { return Err(DropReason::TableFull) };
    // SAFETY: this CPU's scratch, used by this run only.
    let s = unsafe { &mut *s };
    write_key(&mut s.key, orig, false, CtScope::Nat);
    // SAFETY: as above.
    unsafe { zero::zero(&raw mut s.entry) };
    (s.entry.flags, s.entry.policy_epoch, s.entry.container_id) = (CT_F_POLICY, container.policy_epoch, container.id);
    settled(conntrack::create_pending(&s.key, &mut s.entry, cfg))
}

/// `dst` = `k` (reversed if `reversed`) in `scope`, written in place.
#[inline(always)]
fn write_key<A: Family>(dst: &mut CtKey<A>, k: &CtKey<A>, reversed: bool, scope: CtScope) {
    if reversed {
        (dst.saddr, dst.daddr, dst.sport, dst.dport) = (k.daddr, k.saddr, k.dport, k.sport);
        dst.icmp_type = if k.proto == A::ICMP_PROTO { A::peer_echo_type(k.icmp_type) } else { k.icmp_type };
    } else {
        (dst.saddr, dst.daddr, dst.sport, dst.dport, dst.icmp_type) = (k.saddr, k.daddr, k.sport, k.dport, k.icmp_type);
    }
    (dst.proto, dst.scope, dst._pad) = (k.proto, scope as u8, 0);
}

/// [`remember`] for a flow its container starts that masquerade will
/// translate: one NAT entry, pending the translation the uplink completes
/// (no verdict pair to delete then). A sibling of [`remember`], not a
/// branch in it: the chain veth_ingress -> judge -> remember has no stack
/// for a third key.
#[inline(never)]
fn remember_pending<A: Family>(orig: &CtKey<A>, container: &ContainerEntry) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let mut entry = MaybeUninit::uninit();
    let entry = verdict_in(&mut entry, container);
    settled(conntrack::create_pending(&orig.in_scope(CtScope::Nat), entry, cfg))
}

/// A verdict entry allowing `container`'s flow, under its current rules,
/// written in `slot`.
#[inline(always)]
fn verdict_in<'a, A: Family>(slot: &'a mut MaybeUninit<CtEntry<A>>, container: &ContainerEntry) -> &'a mut CtEntry<A> {
    let e = zero::zeroed_in(slot);
    (e.flags, e.container_id, e.policy_epoch) = (CT_F_POLICY, container.id, container.policy_epoch);
    e
}

/// A tuple tracked already (the same flow judged before an entry expired,
/// or by another CPU at once) leaves the verdict standing.
#[inline(always)]
fn settled(created: Result<(), conntrack::CreateError>) -> Result<(), DropReason> {
    match created {
        Ok(()) | Err(conntrack::CreateError::Taken | conntrack::CreateError::Raced) => Ok(()),
        Err(conntrack::CreateError::Failed) => Err(DropReason::TableFull),
    }
}

/// Judges a packet leaving (`Out`: tcx ingress of the container's veth) or
/// reaching (`In`: tcx egress, after any translation, so that the remote of
/// a published port is the client) `container`. Every IPv4 packet is
/// judged, none passes because the parser did not understand it:
/// - a packet of a flow with a verdict passes (a conntrack hit);
/// - otherwise it is a new flow, judged once by the rules of the side that
///   started it (see [`new_flow`]), and its verdict kept;
/// - protocols without ports are flows of (addresses, protocol); ICMP that
///   is neither echo nor an error is judged packet by packet;
/// - ICMP errors pass only about a flow of this container's with a verdict;
/// - later fragments pass only behind a first fragment that passed here;
/// - malformed packets (a first fragment too short for its L4 header
///   included) are dropped.
#[inline(never)]
pub fn judge<A: Family>(
    ctx: &TcContext,
    parsed: &Parsed<A>,
    container: &ContainerEntry,
    direction: Direction,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let flow = match parsed {
        Ok(flow) => flow,
        Err(NoFlow::OtherEtherType) => return Ok(()),
        // Neighbour discovery that stays on the link is its plumbing (as
        // ARP); addressed beyond it, it would be forwarded unjudged.
        Err(NoFlow::Neighbour { dst, .. }) => {
            return if dst.link_scoped() || dst.in_subnet(cfg) { Ok(()) } else { Err(DropReason::Policy) }
        }
        Err(NoFlow::BadHeaders) => return Err(DropReason::Ipv6Headers),
        Err(NoFlow::Malformed) => return Err(DropReason::Malformed),
        Err(NoFlow::LaterFragment(frag)) => return fragment::follows(frag, CtScope::policy(direction)),
        Err(NoFlow::IcmpError(icmp_off)) => return related_error::<A>(ctx, *icmp_off as usize, container, direction),
        Err(NoFlow::IcmpOther(key)) => return judge_untracked(key, container, direction, cfg),
    };
    let key = flow.key.in_scope(CtScope::policy(direction));
    if let Some(entry) = conntrack::lookup_or_forget(&key) {
        // SAFETY: map value pointer, valid during the run.
        if unsafe { (*entry).policy_epoch } != container.policy_epoch {
            rejudge(&key, entry, container, direction)?;
        }
        conntrack::touch(entry, flow, ctx.len(), cfg);
        fragment::first(flow, CtScope::policy(direction));
        return Ok(());
    }
    if A::HAS_NAT && translated_verdict(flow, container, direction)? {
        fragment::first(flow, CtScope::policy(direction));
        return Ok(());
    }
    if A::IN_SCRATCH {
        new_flow_apart(ctx, flow, container, direction, cfg)
    } else {
        new_flow(ctx, flow, container, direction, cfg)
    }
}

/// [`new_flow`] in a frame of its own (IPv6's tuples would otherwise all
/// sit in [`judge`]'s).
#[inline(never)]
fn new_flow_apart<A: Family>(
    ctx: &TcContext,
    flow: &Flow<A>,
    container: &ContainerEntry,
    direction: Direction,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    new_flow(ctx, flow, container, direction, cfg)
}

/// Does a translated flow's entry carry `container`'s verdict for `flow`?
/// It is the entry of the tuple the container sends: this packet's going
/// out, the reversed one coming in. A verdict of older rules is judged
/// again first. The NAT stage, which looks the same entry up, counts the
/// packet on it.
#[inline(never)]
fn translated_verdict<A: Family>(
    flow: &Flow<A>,
    container: &ContainerEntry,
    direction: Direction,
) -> Result<bool, DropReason> {
    let on_stack;
    let sent = if A::IN_SCRATCH {
        let Some(sent) = sent_key(flow, direction) else { return Ok(false) };
        // SAFETY: this CPU's scratch.
        unsafe { &*sent }
    } else {
        on_stack = match direction {
            Direction::Out => flow.key,
            Direction::In => flow.key.reversed(),
        }
        .in_scope(CtScope::Nat);
        &on_stack
    };
    let Some(entry) = conntrack::lookup(sent) else { return Ok(false) };
    // SAFETY: map value pointer, valid during the run.
    let e = unsafe { &*entry };
    if !e.verdict_of(container.id) {
        return Ok(false);
    }
    if e.policy_epoch != container.policy_epoch {
        rejudge_translated(sent, entry, container)?;
    }
    Ok(true)
}

/// The fast path's inbound check, on the packet as it arrives (translated):
/// is it of a flow `container`'s inbound policy allowed, under its current
/// rules? Then it is judged, as [`judge`]'s hit would, and may skip the
/// veth's egress program. Anything else (a new flow, a verdict of an older
/// policy epoch, a fragment, ICMP) is left for that program to judge.
///
/// A verdict the translating stage carried (`carried`) that is the
/// container's under its current rules answers without a lookup (that
/// stage counted the packet on its flow, and left first fragments out).
#[inline(always)]
pub fn allowed_inbound<A: Family>(
    ctx: &TcContext,
    container: &ContainerEntry,
    cfg: &DatapathConfig,
    carried: CarriedVerdict,
) -> bool {
    if carried.current_for(container) {
        return true;
    }
    let Ok(flow) = A::parse(ctx) else { return false };
    if flow.first_fragment {
        return false;
    }
    let Some(entry) = conntrack::lookup(&flow.key.in_scope(CtScope::policy(Direction::In))) else { return false };
    // SAFETY: map value pointer, valid during the run.
    if unsafe { (*entry).policy_epoch } != container.policy_epoch {
        return false;
    }
    conntrack::touch(entry, &flow, ctx.len(), cfg);
    true
}

/// A packet without a verdict starts a flow if it can (a lone TCP SYN, an
/// echo request, any UDP or other datagram), judged by the rules of its own
/// direction. A packet that cannot start one (TCP mid-stream, an echo
/// reply) belongs to a flow whose verdict is gone, cut by a policy change
/// or never given: it may only revive it if both directions' rules allow it
/// (either end could have started it), so a cut flow stays cut whichever
/// end sends next, and an echo reply never opens the way for requests.
#[inline(always)]
fn new_flow<A: Family>(
    ctx: &TcContext,
    flow: &Flow<A>,
    container: &ContainerEntry,
    direction: Direction,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let own = flow.starts_flow();
    let remote = match direction {
        Direction::Out => flow.key.daddr,
        Direction::In => flow.key.saddr,
    };
    let proto = flow.key.proto;
    if direction == Direction::In && from_elsewhere(remote, cfg) && !translated(flow, direction) {
        return Err(DropReason::NotPublished);
    }
    if icc_denies(flow, direction, remote, direction, cfg)
        || !allows(container, direction, remote, proto, flow.policy_port(true))
    {
        return Err(DropReason::Policy);
    }
    let starter = if own { direction } else { direction.reversed() };
    if !own
        && (icc_denies(flow, starter, remote, direction, cfg)
            || !allows(container, starter, remote, proto, flow.policy_port(false)))
    {
        return Err(DropReason::Policy);
    }
    if A::IN_SCRATCH {
        // Written from the packet's tuple, with no copy of the flow's on
        // the stack: a masquerade pending, or the verdict pair.
        if own && direction == Direction::Out && crate::masquerade::bound(&flow.key, cfg) {
            remember_pending_in_scratch(&flow.key, container)?;
        } else {
            remember_in_scratch(&flow.key, starter, own, container, ctx.len())?;
        }
        fragment::first(flow, CtScope::policy(direction));
        if cfg.has(CFG_F_TRACE_FLOWS) {
            trace_flow(&flow.key, !own, container, direction);
        }
        return Ok(());
    }
    let orig = if own { flow.key } else { flow.key.reversed() };
    if own && direction == Direction::Out && crate::masquerade::bound(&orig, cfg) {
        remember_pending(&orig, container)?;
    } else {
        remember(&orig, starter, own, container, ctx.len())?;
    }
    fragment::first(flow, CtScope::policy(direction));
    if cfg.has(CFG_F_TRACE_FLOWS) {
        trace_flow(&orig, false, container, direction);
    }
    Ok(())
}

/// A verdict given under rules that changed since (the container's policy
/// epoch moved on) is judged again, as the flow's first packet was: by the
/// rules of the side that started it, for its original tuple. Still
/// allowed: both halves are confirmed under the current epoch. Now denied:
/// both halves go and the packet is dropped; the flow is cut whichever end
/// sends next (a later packet finds no verdict and cannot start a flow).
/// This is what a rule change costs, per flow and lazily, instead of a walk
/// of conntrack by the agent.
///
/// Out of line: its keys do not add to judge's frame on the hit path.
#[inline(never)]
fn rejudge<A: Family>(
    key: &CtKey<A>,
    entry: *mut CtEntry<A>,
    container: &ContainerEntry,
    direction: Direction,
) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    // SAFETY: map value pointer, valid during the run.
    let e = unsafe { &mut *entry };
    let reply = e.flags & CT_F_REPLY != 0;
    let orig = if reply { e.peer } else { *key };
    let starter = if reply { direction.reversed() } else { direction };
    let remote = match starter {
        Direction::Out => orig.daddr,
        Direction::In => orig.saddr,
    };
    // What the first packet's rules matched.
    let port = orig.policy_port();
    // As the agent judged a change before: icc by the starter's side only
    // for flows a container started (a published hairpin's is translated).
    let denied =
        (starter == Direction::Out && remote.icc_denied(cfg)) || !allows(container, starter, remote, orig.proto, port);
    if denied {
        let _ = A::ct().remove(&e.peer);
        let _ = A::ct().remove(key);
        return Err(DropReason::Policy);
    }
    e.policy_epoch = container.policy_epoch;
    if let Some(peer) = A::ct().get_ptr_mut(&e.peer) {
        // SAFETY: map value pointer, valid during the run.
        unsafe { (*peer).policy_epoch = container.policy_epoch };
    }
    Ok(())
}

/// [`rejudge`] for a verdict a translated flow's entries carry (`key`,
/// `entry`: either half): judged again as its first packet was, by the rules
/// of the side that started it and on the tuple the container saw (a
/// published port's flow as it arrived, translated; a masqueraded one as
/// the container sent it). Still allowed: both halves are confirmed under
/// the current epoch. Now denied: the verdict leaves both halves and the
/// packet is dropped; the translation stays until the flow expires, and its
/// later packets find no verdict and cannot start a flow, so it stays cut.
#[inline(never)]
fn rejudge_translated<A: Family>(
    key: &CtKey<A>,
    entry: *mut CtEntry<A>,
    container: &ContainerEntry,
) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    // SAFETY: map value pointers, valid during the run.
    let e = unsafe { &mut *entry };
    let peer = A::ct().get_ptr_mut(&e.peer);
    let (orig_key, orig) = if e.flags & CT_F_REPLY != 0 {
        match peer {
            Some(p) => (e.peer, unsafe { &*p }),
            // A lone reply half (the LRU took its original): no flow left
            // to judge.
            None => {
                e.flags &= !CT_F_POLICY;
                return Err(DropReason::Policy);
            }
        }
    } else {
        (*key, &*e)
    };
    let (starter, remote, port) = if orig.flags & CT_F_DNAT != 0 {
        // To a published port: the client as the container saw it (the
        // gateway when it reached its own port).
        let client = if orig.flags & CT_F_SNAT != 0 { orig.snat_addr } else { orig_key.saddr };
        (Direction::In, client, u16::from_be(orig.dnat_port))
    } else {
        (Direction::Out, orig_key.daddr, orig_key.policy_port())
    };
    let denied = (starter == Direction::Out && remote.icc_denied(cfg))
        || !allows(container, starter, remote, orig_key.proto, port);
    let epoch = container.policy_epoch;
    let settle = |half: &mut CtEntry<A>| {
        if denied {
            half.flags &= !CT_F_POLICY;
        } else {
            half.policy_epoch = epoch;
        }
    };
    settle(e);
    if let Some(p) = peer {
        settle(unsafe { &mut *p });
    }
    if denied {
        return Err(DropReason::Policy);
    }
    Ok(())
}

/// Deletes the verdict pair of `orig` (a flow `container` started, tuple as
/// it sent it): a translated flow's entries carry the verdict from now on.
/// Out of line: the keys need stack the masquerade path has not to spare.
#[inline(never)]
pub fn forget_verdict_pair4(orig: &CtKey4) {
    let _ = CT4.remove(&orig.reversed().in_scope(CtScope::policy(Direction::In)));
    let _ = CT4.remove(&orig.in_scope(CtScope::policy(Direction::Out)));
}

/// Tells a monitor about a new flow, `orig` as its starter sent it (or
/// `reversed`). Out of line: the event record needs stack that
/// [`new_flow`]'s frame does not have to spare.
#[inline(never)]
pub fn trace_flow<A: Family>(orig: &CtKey<A>, reversed: bool, container: &ContainerEntry, direction: Direction) {
    let origin = events::Origin {
        kind: EVENT_FLOW,
        reason: 0,
        hook: hook_of(direction),
        ifindex: container.ifindex,
        container_id: container.id,
    };
    events::emit(origin, orig, reversed);
}

/// With icc off, no flow between two containers' own addresses: neither
/// one a container starts to another (`Out`), nor one another container
/// starts to it (`In`), unless a published port translated it (hairpin
/// through a host address: its NAT entry is there). The gateway, and so
/// the host and the world, stay reachable.
#[inline(always)]
fn icc_denies<A: Family>(
    flow: &Flow<A>,
    starter: Direction,
    remote: A,
    direction: Direction,
    cfg: &DatapathConfig,
) -> bool {
    if !remote.icc_denied(cfg) {
        return false;
    }
    starter == Direction::Out || !translated(flow, direction)
}

/// Is `flow` a translated one (a published port's, a masqueraded one)? Its
/// tuple as the container sends it is then tracked in the NAT scope.
#[inline(always)]
fn translated<A: Family>(flow: &Flow<A>, direction: Direction) -> bool {
    if !A::HAS_NAT {
        return false;
    }
    if A::IN_SCRATCH {
        let Some(sent) = sent_key(flow, direction) else { return false };
        // SAFETY: this CPU's scratch.
        return conntrack::lookup(unsafe { &*sent }).is_some();
    }
    let sent = match direction {
        Direction::Out => flow.key,
        Direction::In => flow.key.reversed(),
    };
    conntrack::lookup(&sent.in_scope(CtScope::Nat)).is_some()
}

/// The NAT-scope key of the tuple the container sends in `flow` (this
/// packet's going out, the reversed one coming in), where a translated
/// flow keeps the container's verdict: written in the scratch for a
/// family whose keys are built there (IPv6's judge has no stack for it).
#[inline(always)]
fn sent_key<A: Family>(flow: &Flow<A>, direction: Direction) -> Option<*const CtKey<A>> {
    if A::IN_SCRATCH {
        let s = A::scratch()?;
        // SAFETY: this CPU's scratch, used by this run only.
        let s = unsafe { &mut *s };
        write_key(&mut s.key, &flow.key, direction == Direction::In, CtScope::Nat);
        return Some(&s.key);
    }
    None
}

/// Containers are reachable from outside the host only through published
/// ports (unless the instance routes): a new flow reaching a container from
/// an address that is neither a container's, nor the host's own, nor
/// translated came in through some host interface (a second NIC, a VPN, a
/// VLAN) straight to the container's address. The uplink's programs drop
/// those early; this catches every other way in.
#[inline(always)]
fn from_elsewhere<A: Family>(remote: A, cfg: &DatapathConfig) -> bool {
    !cfg.has(CFG_F_ROUTED) && !remote.in_subnet(cfg) && !remote.is_host_addr()
}

/// ICMP that is neither echo nor an error: judged by (ICMP, type) in its
/// own direction, every time; nothing is tracked.
#[inline(never)]
fn judge_untracked<A: Family>(
    key: &CtKey<A>,
    container: &ContainerEntry,
    direction: Direction,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let remote = match direction {
        Direction::Out => key.daddr,
        Direction::In => key.saddr,
    };
    if direction == Direction::In && from_elsewhere(remote, cfg) {
        return Err(DropReason::NotPublished);
    }
    if remote.icc_denied(cfg) || !allows(container, direction, remote, key.proto, key.icmp_type as u16) {
        return Err(DropReason::Policy);
    }
    Ok(())
}

/// An ICMP error passes only if it is about a flow of this container that
/// has a verdict: the quoted packet travelled the other way, so a packet of
/// its flow travelling this error's way has the quoted tuple reversed. A
/// container cannot forge errors about other containers' flows (or anyone
/// else's), and errors about flows the policy never allowed do not pass.
#[inline(never)]
fn related_error<A: Family>(
    ctx: &TcContext,
    icmp_off: usize,
    container: &ContainerEntry,
    direction: Direction,
) -> Result<(), DropReason> {
    // One key, turned in place: IPv6's tuples leave no room for three.
    let Some(mut key) = A::quoted_error(ctx, icmp_off)? else { return Err(DropReason::Policy) };
    key.reverse();
    key.scope = CtScope::policy(direction) as u8;
    if let Some(entry) = conntrack::lookup(&key) {
        // SAFETY: map value pointer, valid during the run.
        return if unsafe { (*entry).container_id } == container.id { Ok(()) } else { Err(DropReason::Policy) };
    }
    if !A::HAS_NAT {
        return Err(DropReason::Policy);
    }
    // A translated flow carries its verdict on the entry of the tuple the
    // container sends: the quoted packet's reversed (as `key` is now) going
    // out, the quoted packet's itself coming in.
    if direction == Direction::In {
        key.reverse();
    }
    key.scope = CtScope::Nat as u8;
    match conntrack::lookup(&key) {
        // SAFETY: map value pointer, valid during the run.
        Some(entry) if unsafe { (*entry).verdict_of(container.id) } => Ok(()),
        _ => Err(DropReason::Policy),
    }
}

#[inline(always)]
fn hook_of(direction: Direction) -> HookId {
    match direction {
        Direction::Out => HookId::VethIngress,
        Direction::In => HookId::VethEgress,
    }
}
