//! The NAT stages of the tc programs: conntrack hit -> rewrite as recorded;
//! miss -> a new flow to a published port (DNAT) or, leaving the uplink, a
//! new masqueraded flow (SNAT); ICMP errors about tracked flows translated
//! back.
//!
//! Each stage is `#[inline(never)]`: a BPF-to-BPF call with a stack frame of
//! its own, so that the stages' locals (conntrack entries, events) do not add
//! up beyond the 512-byte stack.

use core::mem::MaybeUninit;

use aya_ebpf::programs::TcContext;
use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_ROUTED, CFG_F_TRACE_FLOWS},
    conntrack::{CtState, CT_F_MASQ_PENDING, CT_F_REPLY, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    ContainerEntry, CtEntry, CtEntry4, CtKey, CtScope, DatapathConfig, Direction, DropReason, In6Addr, MappingEntry,
};
use network_types::eth::EthHdr;

use crate::{
    conntrack::{self, CreateError},
    family::Family,
    flow,
    flow::{Flow, Flow4, Flow6, NoFlow, Parsed4, Parsed6},
    fragment, host_sockets, icmp_error, mapping,
    maps::{config, CONTAINERS},
    masquerade, nat,
    offsets::{IP_PROTO_OFF, IP_SRC_OFF},
    packet,
    policy::{self, CarriedVerdict},
    zero,
};

/// Translates a packet arriving from outside (uplink ingress). Inlined:
/// a frame of its own would take the chain uplink_ingress -> here ->
/// [`translate_parsed4`] -> a new published flow past the 512-byte stack.
#[inline(always)]
pub fn translate4(ctx: &TcContext, carried: &mut CarriedVerdict) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    translate_parsed4(ctx, &flow::parse4(ctx), cfg, true, carried)
}

/// A container's packet (veth ingress): judged by its policy, then
/// translated. A translated flow's entry carrying the container's verdict
/// under its current rules does both in one lookup; anything else (a flow
/// without translation, a new one, a verdict to judge again, a first
/// fragment, whose passing is recorded) takes the two stages.
///
/// Only packets that leave the container subnet look for a translation
/// first (replies of published ports to the world, masquerade): traffic
/// between containers and to the gateway is mostly untranslated, and its
/// verdict is then the one lookup before the NAT stage's miss. (Deciding
/// on the miss itself would keep a flag alive across the policy stage,
/// which doubles what the verifier explores there, past its limit.)
#[inline(always)]
pub fn judge_and_translate4(
    ctx: &TcContext,
    parsed: &Parsed4,
    container: &ContainerEntry,
    cfg: &DatapathConfig,
    carried: &mut CarriedVerdict,
) -> Result<(), DropReason> {
    if let Ok(flow) = parsed {
        if let Some(entry) = judged_translation(flow, container, cfg) {
            conntrack::touch(entry, flow, ctx.len(), cfg);
            // SAFETY: map value pointer, valid during the run.
            let e = unsafe { &*entry };
            *carried = CarriedVerdict::of(e);
            return nat::apply4(ctx, flow, e);
        }
    }
    policy::judge(ctx, parsed, container, Direction::Out, cfg)?;
    translate_parsed4(ctx, parsed, cfg, false, carried)
}

/// [`judge_and_translate4`] for IPv6: the verdict a translated flow's
/// entry carried goes to the fast path in the control block. Judging apart
/// (`judge_sent6`) also sends the container's listener reports to the host
/// alone, which are never of a translated flow.
#[inline(never)]
pub fn judge_and_translate6(
    ctx: &TcContext,
    parsed: &Parsed6,
    container: &ContainerEntry,
    cfg: &DatapathConfig,
) -> Result<bool, DropReason> {
    let Ok(flow) = parsed else { return Ok(false) };
    let Some(entry) = judged_translation(flow, container, cfg) else { return Ok(false) };
    conntrack::touch(entry, flow, ctx.len(), cfg);
    // SAFETY: map value pointer, valid during the run.
    let e = unsafe { &*entry };
    CarriedVerdict::of(e).to_cb(ctx);
    nat::apply6(ctx, flow, e).map(|()| true)
}

/// The entry of a container's translated flow that carries the container's
/// verdict under its current rules, if `flow` is of one: then one lookup
/// judges and translates the packet. Only flows leaving the container
/// subnet are looked for (see [`judge_and_translate4`]); first fragments
/// take the two stages, which record their passing.
#[inline(always)]
fn judged_translation<A: Family>(
    flow: &Flow<A>,
    container: &ContainerEntry,
    cfg: &DatapathConfig,
) -> Option<*mut CtEntry<A>> {
    if !flow.ported || flow.first_fragment || flow.key.daddr.in_subnet(cfg) {
        return None;
    }
    let entry = conntrack::lookup_or_forget(&flow.key)?;
    // SAFETY: map value pointer, valid during the run.
    let e = unsafe { &*entry };
    (e.verdict_of(container.id) && e.policy_epoch == container.policy_epoch).then_some(entry)
}

/// Conntrack hit: translate as recorded. Miss to a published port: create
/// the flow's entries, then translate. ICMP errors about a tracked flow are
/// translated back (outer and quoted headers); later fragments get their
/// first fragment's translation. From outside (`from_outside`), a miss on a
/// masquerade port is dropped unless a host socket owns it; anything else
/// passes. A hit hands the verdict its entry carries to the fast path
/// (`carried`), except for a first fragment (its passing is recorded where
/// the receiving container judges it).
#[inline(never)]
pub fn translate_parsed4(
    ctx: &TcContext,
    parsed: &Parsed4,
    cfg: &DatapathConfig,
    from_outside: bool,
    carried: &mut CarriedVerdict,
) -> Result<(), DropReason> {
    let flow = match parsed {
        // Only ported flows are translated (protocols without ports are
        // never published, and policy judges them).
        Ok(flow) if flow.ported => flow,
        Err(NoFlow::IcmpError(_)) => return icmp_error::translate4(ctx, cfg, false),
        Err(NoFlow::LaterFragment(frag)) => return fragment::translate_later4(ctx, frag).map(|_| ()),
        _ => return Ok(()),
    };
    let translated = if let Some(entry) = conntrack::lookup_or_forget(&flow.key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        let e = unsafe { &*entry };
        if !flow.first_fragment {
            *carried = CarriedVerdict::of(e);
        }
        nat::apply4(ctx, flow, e)
    } else {
        match admitted_mapping(flow, cfg)? {
            Some(admitted) => new_published_flow4(ctx, flow, &admitted, cfg).inspect(|()| {
                if cfg.has(CFG_F_TRACE_FLOWS) {
                    trace_published(flow, admitted.published, cfg);
                }
            }),
            None if from_outside => return unclaimed(ctx, flow, cfg),
            None => return Ok(()),
        }
    };
    if translated.is_ok() && flow.first_fragment {
        fragment::translated4(ctx, flow);
    }
    translated
}

/// A packet from outside to a masquerade port that no flow and no mapping
/// claims: a reply whose translation is gone (expired, flushed, evicted),
/// or a probe. Dropped rather than handed to the host, which would reset
/// the peer while the port may go to another container's flow; unless a
/// host socket owns the tuple (a host service listening inside the range).
#[inline(never)]
fn unclaimed<A: Family>(ctx: &TcContext, flow: &Flow<A>, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let port = u16::from_be(flow.key.dport);
    let masquerade_port = cfg.has(CFG_F_MASQUERADE)
        && flow.key.daddr == A::masq_addr(cfg)
        && (cfg.masq_port_min..=cfg.masq_port_max).contains(&port)
        && (flow.key.proto == IPPROTO_TCP || flow.key.proto == IPPROTO_UDP);
    if masquerade_port && !host_sockets::owns(ctx, &flow.key) {
        return Err(DropReason::NoFlow);
    }
    Ok(())
}

/// A conntrack miss: the published port it is for, if the packet can start
/// a connection (a lone TCP SYN, any UDP datagram; anything else passes, so
/// a host socket whose own local port equals a published port keeps its
/// SYN-ACK and replies) and the container's policy lets the client in (a
/// flood the policy denies fills no table).
///
/// Its own frame, beside the chain down to [`new_published_flow4`]'s
/// entries rather than on it: that chain has no stack to spare.
#[inline(never)]
fn admitted_mapping<A: Family>(flow: &Flow<A>, cfg: &DatapathConfig) -> Result<Option<Admitted<A>>, DropReason> {
    if !flow.starts_flow() {
        return Ok(None);
    }
    let Some(published) = A::published(&flow.key.daddr, flow.key.dport, flow.key.proto) else {
        return Ok(None);
    };
    // SAFETY: map value pointer, valid during the run.
    let target = CONTAINERS.get_ptr(published.container_ifindex).map(|c| unsafe { &*c });
    // The container sees its own gateway as the client of a flow from
    // itself (hairpin, SNAT), the real client otherwise.
    let client = if flow.key.saddr == published.container_addr { A::gateway(cfg) } else { flow.key.saddr };
    if target.is_some_and(|t| !policy::admits_published(t, published, client, flow.key.proto)) {
        return Err(DropReason::Policy);
    }
    Ok(Some(Admitted { published, target }))
}

/// A new flow to a published port that may be created: the mapping, and
/// the container behind it (looked up once: its policy admitted the
/// client, and the flow's entries carry that verdict).
struct Admitted<A: Family> {
    published: &'static MappingEntry<A>,
    target: Option<&'static ContainerEntry>,
}

/// Tells a monitor about a new flow to a published port, as it reaches the
/// container (the flow event its inbound policy gives every flow it lets
/// in). Out of line: the tracked chain down to the new flow's entries has
/// no stack for the event.
#[inline(never)]
fn trace_published<A: Family>(flow: &Flow<A>, published: &MappingEntry<A>, cfg: &DatapathConfig) {
    let Some(target) = CONTAINERS.get_ptr(published.container_ifindex) else { return };
    let client = if flow.key.saddr == published.container_addr { A::gateway(cfg) } else { flow.key.saddr };
    let arrived =
        CtKey::new(client, published.container_addr, flow.key.sport, published.container_port, flow.key.proto);
    // SAFETY: map value pointer, valid during the run.
    policy::trace_flow(&arrived, false, unsafe { &*target }, Direction::In);
}

/// Tracks a new flow to a published port and translates its first packet.
#[inline(never)]
fn new_published_flow4(
    ctx: &TcContext,
    flow: &Flow4,
    admitted: &Admitted<[u8; 4]>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let (mut fwd, mut rev) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let (fwd, rev): (&mut CtEntry4, _) = (zero::zeroed_in(&mut fwd), zero::zeroed_in(&mut rev));
    let reply_key = mapping::flow_entries(&flow.key, admitted.published, cfg, fwd, rev);
    fwd.packets = 1;
    fwd.bytes = ctx.len() as u64;
    fwd.state = CtState::New as u8;
    // The container's inbound policy admitted the flow (see
    // [`admitted_mapping`]): its entries carry that verdict.
    if let Some(target) = admitted.target {
        policy::carry(fwd, target);
        policy::carry(rev, target);
    }
    match conntrack::create(&flow.key, fwd, &reply_key, rev, flow.key.proto, cfg) {
        Ok(()) => nat::apply4(ctx, flow, fwd),
        Err(CreateError::Raced) => conntrack::apply_existing(ctx, flow),
        Err(e) => Err(e.into()),
    }
}

/// The NAT stage for IPv6, on the uplink's ingress and on what a container
/// sends (after its policy): a tracked flow is translated as recorded, and
/// a new flow to a published port (from outside, or from a container
/// through a host address) gets its entries. ICMPv6 errors from outside
/// about a translated flow go back to its container; the later fragments
/// of a translated datagram get its first fragment's addresses. A hit
/// hands the verdict its entry carries to the fast path, as
/// [`translate_parsed4`] does, in the skb's control block: the fast path
/// is a tail call away, and the judging chain has no stack for one more
/// argument.
#[inline(never)]
pub fn translate_parsed6(
    ctx: &TcContext,
    parsed: &Parsed6,
    cfg: &DatapathConfig,
    from_outside: bool,
) -> Result<(), DropReason> {
    let flow = match parsed {
        Ok(flow) if flow.ported => flow,
        Err(NoFlow::IcmpError(icmp_off)) => {
            return icmp_error::translate6(ctx, *icmp_off as usize, !from_outside, false);
        }
        Err(NoFlow::LaterFragment(frag)) => return fragment::translate_later6(ctx, frag).map(|_| ()),
        _ => return Ok(()),
    };
    if let Some(entry) = conntrack::lookup_or_forget(&flow.key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        let e = unsafe { &*entry };
        if !flow.first_fragment {
            CarriedVerdict::of(e).to_cb(ctx);
        }
        nat::apply6(ctx, flow, e)?;
    } else {
        match admitted_mapping(flow, cfg)? {
            Some(admitted) => {
                new_published_flow6(ctx, flow, &admitted, cfg)?;
                if cfg.has(CFG_F_TRACE_FLOWS) {
                    trace_published(flow, admitted.published, cfg);
                }
            }
            None if from_outside => return unclaimed(ctx, flow, cfg),
            None => return Ok(()),
        }
    }
    first_fragment_translated6(flow);
    Ok(())
}

/// Records a translated first fragment's addresses for its later
/// fragments (the flow's entry says what it got).
#[inline(always)]
fn first_fragment_translated6(flow: &Flow6) {
    if flow.first_fragment {
        if let Some(entry) = conntrack::lookup_unchecked(&flow.key) {
            // SAFETY: map value pointer, valid during the run.
            fragment::translated6(flow, unsafe { &*entry });
        }
    }
}

/// [`new_published_flow4`] for IPv6: the two entries are written in this
/// CPU's scratch (each is 128 bytes, the chain from `veth_ingress6` has no
/// stack for them).
#[inline(never)]
fn new_published_flow6(
    ctx: &TcContext,
    flow: &Flow6,
    admitted: &Admitted<In6Addr>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let Some(s) = <In6Addr as Family>::scratch() else { return Err(DropReason::TableFull) };
    // SAFETY: this CPU's scratch, used by this run only; zeroed in place
    // (a struct assignment would be built on the stack first).
    let s = unsafe {
        zero::zero(&raw mut (*s).entry);
        zero::zero(&raw mut (*s).reply_entry);
        &mut *s
    };
    s.reply_key = mapping::flow_entries(&flow.key, admitted.published, cfg, &mut s.entry, &mut s.reply_entry);
    s.entry.packets = 1;
    s.entry.bytes = ctx.len() as u64;
    s.entry.state = CtState::New as u8;
    // The container's inbound policy admitted the flow: its entries carry
    // that verdict.
    if let Some(target) = admitted.target {
        policy::carry(&mut s.entry, target);
        policy::carry(&mut s.reply_entry, target);
    }
    match conntrack::create(&flow.key, &mut s.entry, &s.reply_key, &mut s.reply_entry, flow.key.proto, cfg) {
        Ok(()) => nat::apply6(ctx, flow, &s.entry),
        Err(CreateError::Raced) => conntrack::apply_existing(ctx, flow),
        Err(e) => Err(e.into()),
    }
}

/// What leaves through the uplink (uplink egress): container traffic gets
/// the uplink's address (masquerade), and the host's own ICMP errors about
/// packets translated on their way in quote them as they arrived.
#[inline(never)]
pub fn translate_outbound4(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let masquerade = cfg.has(CFG_F_MASQUERADE);
    // Without masquerade only the host's ICMP errors concern this hook:
    // everything else leaves unparsed, as it did before they were handled.
    if !masquerade && !matches!(packet::load::<u8>(ctx, EthHdr::LEN + IP_PROTO_OFF), Ok(IPPROTO_ICMP)) {
        return Ok(());
    }
    let flow = match flow::parse4(ctx) {
        Err(NoFlow::IcmpError(_)) => {
            let saddr = packet::load(ctx, EthHdr::LEN + IP_SRC_OFF)?;
            // The host's own error about a packet it routed (TTL, MTU).
            if !cfg.in_subnet4(saddr) {
                return icmp_error::translate4(ctx, cfg, true);
            }
            if !masquerade {
                return Ok(());
            }
            return untranslatable4(cfg, saddr, DropReason::UnsupportedProtocol);
        }
        _ if !masquerade => return Ok(()),
        Ok(flow) if flow.ported => flow,
        // What masquerade cannot translate never leaves with a container's
        // private source.
        Ok(flow) => return untranslatable4(cfg, flow.key.saddr, DropReason::UnsupportedProtocol),
        Err(NoFlow::IcmpOther(key)) => return untranslatable4(cfg, key.saddr, DropReason::UnsupportedProtocol),
        // A later fragment gets its first fragment's translation, or is
        // dropped. Either way the source it would leave with is checked:
        // whatever was recorded, no private source leaves.
        Err(NoFlow::LaterFragment(frag)) => {
            if fragment::translate_later4(ctx, &frag)? {
                let saddr = packet::load(ctx, EthHdr::LEN + IP_SRC_OFF)?;
                return untranslatable4(cfg, saddr, DropReason::Fragment);
            }
            return untranslatable4(cfg, frag.saddr, DropReason::Fragment);
        }
        // Too short to carry a source address: nothing to leak.
        Err(NoFlow::Malformed) => match packet::load(ctx, EthHdr::LEN + IP_SRC_OFF) {
            Ok(saddr) => return untranslatable4(cfg, saddr, DropReason::Malformed),
            Err(_) => return Ok(()),
        },
        Err(NoFlow::OtherEtherType | NoFlow::Neighbour { .. } | NoFlow::BadHeaders) => return Ok(()),
    };
    // Only the containers' own traffic: the host's, and replies of
    // published ports (already translated on the veth), keep their source.
    if !cfg.in_subnet4(flow.key.saddr) {
        return Ok(());
    }
    // Without the owner check: a stale flow of this tuple was deleted on the
    // container's veth, which every packet of it passed first (and this
    // frame has no byte to spare for checking again).
    let translated = match conntrack::lookup_unchecked(&flow.key) {
        // SAFETY (both arms): map value pointer, valid during the run.
        Some(entry) if unsafe { (*entry).flags } & CT_F_MASQ_PENDING != 0 => {
            // The veth judged this packet a moment ago (and counted it).
            new_masquerade4(ctx, &flow, cfg, Some(entry))
        }
        Some(entry) => {
            conntrack::touch(entry, &flow, ctx.len(), cfg);
            nat::apply4(ctx, &flow, unsafe { &*entry })
        }
        None => new_masquerade4(ctx, &flow, cfg, None),
    };
    if translated.is_ok() && flow.first_fragment {
        fragment::translated4(ctx, &flow);
    }
    translated
}

/// A container packet without a translation (none at all, or one its veth
/// left `pending`): a new masqueraded flow if it can start one.
#[inline(always)]
fn new_masquerade4(
    ctx: &TcContext,
    flow: &Flow4,
    cfg: &DatapathConfig,
    pending: Option<*mut CtEntry4>,
) -> Result<(), DropReason> {
    if cfg.has(CFG_F_ROUTED) {
        // Replies of flows that came in to the container's own address
        // keep that address: only flows the container starts are
        // masqueraded. Its policy verdict tells which side started the flow.
        // (Judged on the veth just before: a stale verdict went there.)
        let verdict = flow.key.in_scope(CtScope::PolicyOut);
        if let Some(entry) = conntrack::lookup_unchecked(&verdict) {
            // SAFETY: map value pointer, valid during the run.
            if unsafe { (*entry).flags } & CT_F_REPLY != 0 {
                return Ok(());
            }
        }
    }
    // Not routed, every container packet leaves translated. One that cannot
    // start a flow (TCP mid-stream, an echo reply) and has no translation
    // (it was flushed, or never existed) gets no new one: it is dropped,
    // never sent with the private source.
    if !flow.starts_flow() {
        return if cfg.has(CFG_F_ROUTED) { Ok(()) } else { Err(DropReason::NoFlow) };
    }
    masquerade::new_flow4(ctx, flow, cfg, pending)
}

/// A packet masquerade cannot translate (no ports, a later fragment, an
/// ICMP error a container sends): from a container it is dropped for
/// `reason`, unless the instance routes the container subnet; anything else
/// (the host's own) passes.
#[inline(always)]
fn untranslatable4(cfg: &DatapathConfig, saddr: [u8; 4], reason: DropReason) -> Result<(), DropReason> {
    if cfg.in_subnet4(saddr) && !cfg.has(CFG_F_ROUTED) {
        return Err(reason);
    }
    Ok(())
}

/// What leaves through the uplink over IPv6 (uplink egress): as IPv4's, a
/// container's flow gets the uplink's IPv6 address (masquerade) unless the
/// instance routes; what masquerade cannot translate (no ports, ICMPv6
/// other than echo, later fragments) never leaves with a container's
/// source. The host's own traffic, and replies of published ports
/// (translated on the veth), pass.
#[inline(never)]
pub fn translate_outbound6(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let Ok(saddr) = crate::ipv6::source6(ctx) else { return Ok(()) };
    if !cfg.in_subnet6(saddr) || cfg.has(CFG_F_ROUTED) || !cfg.has(CFG_F_MASQUERADE) {
        return Ok(());
    }
    let flow = match crate::ipv6::parse6(ctx) {
        Ok(flow) if flow.ported => flow,
        // A container's ICMPv6 error about a translated flow leaves
        // translated (if its veth did not already), or not at all.
        Err(NoFlow::IcmpError(icmp_off)) => return icmp_error::translate6(ctx, icmp_off as usize, true, true),
        Ok(_) | Err(NoFlow::IcmpOther(_)) => return Err(DropReason::UnsupportedProtocol),
        // A later fragment gets its first fragment's translation, or is
        // dropped: no private source leaves.
        Err(NoFlow::LaterFragment(ref frag)) => {
            return match fragment::translate_later6(ctx, frag)? {
                true => Ok(()),
                false => Err(DropReason::Fragment),
            };
        }
        Err(NoFlow::BadHeaders) => return Err(DropReason::Ipv6Headers),
        Err(NoFlow::Malformed) => return Err(DropReason::Malformed),
        // Neighbour discovery stays on its link; not IPv6: not this path's.
        Err(NoFlow::Neighbour { .. } | NoFlow::OtherEtherType) => return Ok(()),
    };
    let pending = match conntrack::lookup_or_forget(&flow.key) {
        // SAFETY (both arms): map value pointer, valid during the run.
        // The veth judged this packet a moment ago (and counted it).
        Some(entry) if unsafe { (*entry).flags } & CT_F_MASQ_PENDING != 0 => Some(entry),
        Some(entry) => {
            conntrack::touch(entry, &flow, ctx.len(), cfg);
            nat::apply6(ctx, &flow, unsafe { &*entry })?;
            first_fragment_translated6(&flow);
            return Ok(());
        }
        None => None,
    };
    // A packet that cannot start a flow gets no new translation: dropped,
    // never sent with the private source.
    if !flow.starts_flow() {
        return Err(DropReason::NoFlow);
    }
    // Another CPU's flow of this tuple, created meanwhile, is followed
    // here: a frame less on the port search's chain (the stack's limit).
    match masquerade::new_flow6(ctx, &flow, cfg, pending)? {
        true => first_fragment_translated6(&flow),
        false => conntrack::apply_existing(ctx, &flow)?,
    }
    Ok(())
}
