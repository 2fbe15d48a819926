//! Masquerade: a new flow from a container leaving through the uplink gets
//! the uplink address and a source port (or ICMP echo identifier) that no
//! other flow to the same destination uses.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_ROUTED},
    conntrack::{CtState, CT_F_DNAT, CT_F_POLICY, CT_F_REPLY, CT_F_SNAT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    family::{ICMPV6_ECHO_REPLY, IPPROTO_ICMPV6},
    masquerade::{PortRange, MAX_TRIES},
    CtEntry, CtEntry4, CtEntry6, CtKey, CtKey4, CtScope, DatapathConfig, DropReason, In6Addr,
};

use crate::{
    conntrack::{self, CreateError},
    family::Family,
    flow::{Flow4, Flow6},
    host_sockets, mapping, nat, policy, zero,
};

/// Will masquerade translate a flow a container starts with the tuple
/// `orig`? When it is on and the instance does not route: TCP, UDP and ICMP
/// echo (the flows it has ports for) towards an address outside the
/// container subnet that is not the host's own (those stay on the host:
/// published ports, host services).
#[inline(always)]
pub fn bound<A: Family>(orig: &CtKey<A>, cfg: &DatapathConfig) -> bool {
    cfg.has(CFG_F_MASQUERADE)
        && !cfg.has(CFG_F_ROUTED)
        && (orig.proto == IPPROTO_TCP || orig.proto == IPPROTO_UDP || orig.proto == A::ICMP_PROTO)
        && !orig.daddr.in_subnet(cfg)
        && !orig.daddr.is_host_addr()
}

/// Picks a free source port, records both directions and translates the
/// packet. No free port: the new flow is dropped, existing ones are never
/// touched. A flow whose veth kept its verdict pending its masquerade
/// (`pending`, its original half) is completed in place: one insert, the
/// reply half. Otherwise (a verdict pair from before pending verdicts, or
/// none) both halves are inserted, and take over the pair's verdict.
#[inline(always)]
pub fn new_flow4(
    ctx: &TcContext,
    flow: &Flow4,
    cfg: &DatapathConfig,
    pending: Option<*mut CtEntry4>,
) -> Result<(), DropReason> {
    // No address yet (the agent is starting, or the uplink has none) or no
    // port range: the new flow is dropped rather than sent out with a
    // container's private source or translated to 0.0.0.0.
    let Some(range) = PortRange::new(cfg.masq_port_min, cfg.masq_port_max) else {
        return Err(DropReason::NatUnavailable);
    };
    if cfg.masq_addr4 == [0; 4] {
        return Err(DropReason::NatUnavailable);
    }
    let icmp = flow.key.proto == IPPROTO_ICMP;
    // The search (own port kept when in range, else a random start; then
    // up, wrapping around): netpath_common::masquerade.
    let mut port = range.first(u16::from_be(flow.key.sport), || unsafe { bpf_get_prandom_u32() });
    let (mut fwd, mut rev) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let (fwd, rev): (&mut CtEntry4, &mut CtEntry4) = (zero::zeroed_in(&mut fwd), zero::zeroed_in(&mut rev));
    (fwd.snat_addr, fwd.flags, fwd.state) = (cfg.masq_addr4, CT_F_SNAT, CtState::New as u8);
    (fwd.packets, fwd.bytes) = (1, ctx.len() as u64);
    (rev.dnat_addr, rev.dnat_port, rev.flags) = (flow.key.saddr, flow.key.sport, CT_F_DNAT);
    match pending {
        // SAFETY: map value pointer, valid during the run.
        Some(entry) => carry_pending(unsafe { &*entry }, rev),
        None => set_starter4(&flow.key, fwd, rev),
    }
    for _ in 0..MAX_TRIES {
        let port_be = port.to_be();
        let reply_key = CtKey4::new(
            flow.key.daddr,
            cfg.masq_addr4,
            if icmp { port_be } else { flow.key.dport },
            port_be,
            flow.key.proto,
        );
        // A published port's flows arrive on the same address and port, and
        // a host socket's answers on its own: never hand either out. (The
        // masquerade address is the uplink's, one of the host's own.)
        let taken_by_host = !icmp
            && (mapping::lookup_on_host4(cfg.masq_addr4, port_be, flow.key.proto).is_some()
                || host_sockets::owns(ctx, &reply_key));
        if !taken_by_host {
            fwd.snat_port = port_be;
            let created = match pending {
                Some(entry) => {
                    conntrack::complete_pending(&flow.key, entry, &reply_key, rev, (cfg.masq_addr4, port_be))
                }
                None => conntrack::create(&flow.key, fwd, &reply_key, rev, flow.key.proto, cfg),
            };
            match created {
                Ok(()) => {
                    if pending.is_none() && fwd.flags & CT_F_POLICY != 0 {
                        policy::forget_verdict_pair4(&flow.key);
                    }
                    // The completed entry says what `fwd` does.
                    return nat::apply4(ctx, flow, fwd);
                }
                Err(CreateError::Taken) => {}
                Err(CreateError::Raced) => return conntrack::apply_existing(ctx, flow),
                Err(CreateError::Failed) => return Err(DropReason::TableFull),
            }
        }
        port = range.next(port);
    }
    Err(DropReason::NatExhausted)
}

/// The reply half of a pending masquerade carries the verdict its original
/// half has (the container's, given on its veth).
#[inline(always)]
fn carry_pending<A>(orig: &CtEntry<A>, rev: &mut CtEntry<A>) {
    rev.container_id = orig.container_id;
    rev.flags |= orig.flags & CT_F_POLICY;
    rev.policy_epoch = orig.policy_epoch;
}

/// The container that started a flow leaving the uplink: its veth judged the
/// same tuple on the way out and kept the verdict with the container's id.
/// The masquerade entries carry it, so that they die with the container
/// (whose address goes to the next one), and the verdict itself, which
/// then needs no pair of its own (the caller deletes it once the entries
/// are in). 0 (no owner) if no verdict is there (it could not be kept: the
/// table refused it). Out of line, writing into both entries: the frame of
/// the uplink's NAT path has no byte to spare, not even for the id.
#[inline(never)]
fn set_starter4(key: &CtKey4, fwd: &mut CtEntry4, rev: &mut CtEntry4) {
    if let Some(verdict) = conntrack::lookup(&key.in_scope(CtScope::PolicyOut)) {
        // SAFETY: map value pointer, valid during the run.
        let v = unsafe { &*verdict };
        fwd.container_id = v.container_id;
        rev.container_id = v.container_id;
        // The container's own verdict for a flow it started (a flow that
        // came in to it is no masquerade's).
        if v.flags & CT_F_POLICY != 0 && v.flags & CT_F_REPLY == 0 {
            for half in [fwd, rev] {
                half.flags |= CT_F_POLICY;
                half.policy_epoch = v.policy_epoch;
            }
        }
    }
}

/// [`new_flow4`] for IPv6, at the uplink's egress: a flow `pending` on its
/// veth is completed in place (one insert, the reply half, which carries
/// the verdict); otherwise (a verdict pair from before pending verdicts)
/// both halves are inserted, carrying the container's id so that they die
/// with it, and the pair keeps the verdict. The entries are written in
/// this CPU's scratch. Ok(false): another CPU created the flow meanwhile;
/// its entries stand, for the caller to follow.
#[inline(never)]
pub fn new_flow6(
    ctx: &TcContext,
    flow: &Flow6,
    cfg: &DatapathConfig,
    pending: Option<*mut CtEntry6>,
) -> Result<bool, DropReason> {
    let Some(range) = PortRange::new(cfg.masq_port_min, cfg.masq_port_max) else {
        return Err(DropReason::NatUnavailable);
    };
    if cfg.masq_addr6 == In6Addr::UNSPECIFIED {
        return Err(DropReason::NatUnavailable);
    }
    let Some(s) = <In6Addr as Family>::scratch() else { return Err(DropReason::TableFull) };
    // SAFETY: this CPU's scratch, used by this run only; zeroed in place
    // (a struct assignment would be built on the stack first).
    let s = unsafe {
        zero::zero(&raw mut (*s).entry);
        zero::zero(&raw mut (*s).reply_entry);
        &mut *s
    };
    let icmp = flow.key.proto == IPPROTO_ICMPV6;
    let (fwd, rev) = (&mut s.entry, &mut s.reply_entry);
    (fwd.snat_addr, fwd.flags, fwd.state) = (cfg.masq_addr6, CT_F_SNAT, CtState::New as u8);
    (fwd.packets, fwd.bytes) = (1, ctx.len() as u64);
    (rev.dnat_addr, rev.dnat_port, rev.flags) = (flow.key.saddr, flow.key.sport, CT_F_DNAT);
    match pending {
        // SAFETY: map value pointer, valid during the run.
        Some(entry) => carry_pending(unsafe { &*entry }, rev),
        // The container of the verdict pair its veth kept: the key of the
        // pair's out half, field by field in the scratch too (as the
        // reply's below: this chain's frames are at the stack's limit).
        None => {
            let k = &mut s.key;
            (k.saddr, k.daddr, k.sport, k.dport, k.icmp_type) =
                (flow.key.saddr, flow.key.daddr, flow.key.sport, flow.key.dport, flow.key.icmp_type);
            (k.proto, k.scope, k._pad) = (flow.key.proto, CtScope::PolicyOut as u8, 0);
            // SAFETY: map value pointer, valid during the run.
            let starter = conntrack::lookup(&s.key).map_or(0, |verdict| unsafe { (*verdict).container_id });
            (fwd.container_id, rev.container_id) = (starter, starter);
        }
    }
    let mut port = range.first(u16::from_be(flow.key.sport), || unsafe { bpf_get_prandom_u32() });
    for _ in 0..MAX_TRIES {
        let port_be = port.to_be();
        let rk = &mut s.reply_key;
        (rk.saddr, rk.daddr, rk.sport, rk.dport) =
            (flow.key.daddr, cfg.masq_addr6, if icmp { port_be } else { flow.key.dport }, port_be);
        (rk.proto, rk.scope, rk._pad) = (flow.key.proto, CtScope::Nat as u8, 0);
        rk.icmp_type = if icmp { ICMPV6_ECHO_REPLY } else { 0 };
        // As IPv4's: never a published port's, nor a host socket's.
        let taken_by_host = !icmp
            && (mapping::lookup6(&cfg.masq_addr6, port_be, flow.key.proto, false).is_some()
                || host_sockets::owns(ctx, &s.reply_key));
        if !taken_by_host {
            s.entry.snat_port = port_be;
            let created = match pending {
                Some(entry) => conntrack::complete_pending(
                    &flow.key,
                    entry,
                    &s.reply_key,
                    &mut s.reply_entry,
                    (cfg.masq_addr6, port_be),
                ),
                None => {
                    conntrack::create(&flow.key, &mut s.entry, &s.reply_key, &mut s.reply_entry, flow.key.proto, cfg)
                }
            };
            match created {
                // The completed entry says what `s.entry` does.
                Ok(()) => return nat::apply6(ctx, flow, &s.entry).map(|()| true),
                Err(CreateError::Taken) => {}
                Err(CreateError::Raced) => return Ok(false),
                Err(CreateError::Failed) => return Err(DropReason::TableFull),
            }
        }
        port = range.next(port);
    }
    Err(DropReason::NatExhausted)
}
