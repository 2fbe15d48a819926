//! Per-container allow/deny, stateful: a new flow is judged once, at the
//! container's side where it starts (out) or arrives (in); its verdict is
//! kept as a pair of conntrack entries in the policy scopes, so replies and
//! later packets pass on a lookup. See netpath_common::policy for the rule
//! model and precedence.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    config::CFG_F_TRACE_FLOWS,
    conntrack::{CtState, CT_F_POLICY},
    event::EVENT_FLOW,
    policy::{self as rules, POLICY_KEY_FIXED_BITS},
    ContainerEntry, CtEntry, CtScope, DatapathConfig, Direction, DropReason, HookId, PolicyKey4,
};

use crate::{
    conntrack, events,
    flow::{Flow4, NoFlow},
    maps::{PolicyTrieKey4, POLICY4},
};

/// Does the container's policy let a new flow in `direction` with `remote`?
#[inline(always)]
pub fn allows(container: &ContainerEntry, direction: Direction, remote: [u8; 4], proto: u8, port: u16) -> bool {
    let key = PolicyTrieKey4 {
        prefix_len: POLICY_KEY_FIXED_BITS + 32,
        data: PolicyKey4::new(container.id, direction, remote),
    };
    rules::allows(POLICY4.get(&key), container.default_denies(direction), proto, port)
}

/// Records an allowed flow: its key in the verdict scope of `direction`,
/// its reply in the other one.
#[inline(always)]
fn remember(
    flow: &Flow4,
    direction: Direction,
    container: &ContainerEntry,
    len: u32,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let key = flow.key.in_scope(CtScope::policy(direction));
    let reply_key = flow.key.reversed().in_scope(CtScope::policy(direction.reversed()));
    let mut fwd = CtEntry {
        flags: CT_F_POLICY,
        state: CtState::New as u8,
        container_id: container.id,
        packets: 1,
        bytes: len as u64,
        ..Default::default()
    };
    let mut rev = CtEntry { flags: CT_F_POLICY, container_id: container.id, ..Default::default() };
    // The reply tuple may be tracked already (the same flow judged before
    // an entry expired): the verdict stands either way.
    match conntrack::create4(&key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg) {
        Ok(()) | Err(conntrack::CreateError::Taken) => Ok(()),
        Err(conntrack::CreateError::Failed) => Err(DropReason::TableFull),
    }
}

/// Judges packets as they leave `container` (tcx ingress of its veth).
#[inline(never)]
pub fn from_container(
    ctx: &TcContext,
    parsed: &Result<Flow4, NoFlow>,
    container: &ContainerEntry,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let Ok(flow) = parsed else { return Ok(()) };
    let key = flow.key.in_scope(CtScope::PolicyOut);
    if let Some(entry) = conntrack::lookup4(&key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        return Ok(());
    }
    let remote = flow.key.daddr;
    // --icc=false: no direct flows to other containers (the gateway, and so
    // published ports through host addresses, stay reachable).
    if cfg.icc_denies4(remote) {
        return Err(DropReason::Policy);
    }
    if !allows(container, Direction::Out, remote, flow.key.proto, flow.policy_port()) {
        return Err(DropReason::Policy);
    }
    remember(flow, Direction::Out, container, ctx.len(), cfg)?;
    if cfg.has(CFG_F_TRACE_FLOWS) {
        events::emit(EVENT_FLOW, 0, HookId::VethIngress, container.ifindex, container.id, &flow.key);
    }
    Ok(())
}

/// Judges packets as they reach `container` (tcx egress of its veth,
/// after any translation: the remote of a published port is the client).
#[inline(never)]
pub fn to_container(
    ctx: &TcContext,
    parsed: &Result<Flow4, NoFlow>,
    container: &ContainerEntry,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let Ok(flow) = parsed else { return Ok(()) };
    let key = flow.key.in_scope(CtScope::PolicyIn);
    if let Some(entry) = conntrack::lookup4(&key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        return Ok(());
    }
    if !allows(container, Direction::In, flow.key.saddr, flow.key.proto, flow.policy_port()) {
        return Err(DropReason::Policy);
    }
    remember(flow, Direction::In, container, ctx.len(), cfg)?;
    if cfg.has(CFG_F_TRACE_FLOWS) {
        events::emit(EVENT_FLOW, 0, HookId::VethEgress, container.ifindex, container.id, &flow.key);
    }
    Ok(())
}
