//! Per-container allow/deny, stateful: a new flow is judged once, at the
//! container's side where it starts (out) or arrives (in); its verdict is
//! kept as a pair of conntrack entries in the policy scopes, so replies and
//! later packets pass on a lookup. See netpath_common::policy for the rule
//! model and precedence.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    config::{CFG_F_NO_ICC, CFG_F_TRACE_FLOWS},
    conntrack::{CtState, CT_F_POLICY, CT_SCOPE_FROM_EP, CT_SCOPE_TO_EP},
    endpoint::{ENDPOINT_F_DEFAULT_DENY_IN, ENDPOINT_F_DEFAULT_DENY_OUT},
    event::{EVENT_DIR_FROM_EP, EVENT_DIR_TO_EP, EVENT_FLOW},
    policy::{POLICY_ALLOW, POLICY_DIR_IN, POLICY_DIR_OUT, POLICY_KEY_FIXED_BITS},
    CtEntry, DatapathConfig, DropReason, Endpoint, PolicyKey,
};

use crate::{
    conntrack, events,
    flow::{Flow, NoFlow},
    maps::{PolicyTrieKey, POLICY},
};

/// Does the endpoint's policy let a new flow in `direction` with `remote`?
#[inline(always)]
pub fn allows(ep: &Endpoint, direction: u8, remote: [u8; 4], proto: u8, port: u16) -> bool {
    let key = PolicyTrieKey {
        prefix_len: POLICY_KEY_FIXED_BITS + 32,
        data: PolicyKey { endpoint_id: ep.id.to_be_bytes(), direction, _pad: [0; 3], addr: remote },
    };
    if let Some(entry) = POLICY.get(&key) {
        if let Some(action) = entry.decide(proto, port) {
            return action == POLICY_ALLOW;
        }
    }
    let deny_bit = if direction == POLICY_DIR_IN { ENDPOINT_F_DEFAULT_DENY_IN } else { ENDPOINT_F_DEFAULT_DENY_OUT };
    ep.flags & deny_bit == 0
}

/// Records an allowed flow: `key` in `scope` and its reply in the other one.
#[inline(always)]
fn remember(
    flow: &Flow,
    scope: u8,
    other: u8,
    ep: &Endpoint,
    len: u32,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let key = flow.key.in_scope(scope);
    let reply_key = flow.key.reversed().in_scope(other);
    let mut fwd = CtEntry {
        flags: CT_F_POLICY,
        state: CtState::New as u8,
        endpoint_id: ep.id,
        packets: 1,
        bytes: len as u64,
        ..Default::default()
    };
    let mut rev = CtEntry { flags: CT_F_POLICY, endpoint_id: ep.id, ..Default::default() };
    // The reply tuple may be tracked already (the same flow judged before
    // an entry expired): the verdict stands either way.
    match conntrack::create(&key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg) {
        Ok(()) | Err(conntrack::CreateError::Taken) => Ok(()),
        Err(conntrack::CreateError::Failed) => Err(DropReason::TableFull),
    }
}

/// Judges packets as they leave container `ep` (tcx ingress of its veth).
#[inline(never)]
pub fn from_endpoint(
    ctx: &TcContext,
    parsed: &Result<Flow, NoFlow>,
    ep: &Endpoint,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let Ok(flow) = parsed else { return Ok(()) };
    let key = flow.key.in_scope(CT_SCOPE_FROM_EP);
    if let Some(entry) = conntrack::lookup(&key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        return Ok(());
    }
    let remote = flow.key.daddr;
    // --icc=false: no direct flows to other containers (the gateway, and so
    // published ports through host addresses, stay reachable).
    if cfg.flags & CFG_F_NO_ICC != 0 && cfg.in_subnet(remote) && remote != cfg.gateway {
        return Err(DropReason::Policy);
    }
    if !allows(ep, POLICY_DIR_OUT, remote, flow.key.proto, flow.policy_port()) {
        return Err(DropReason::Policy);
    }
    remember(flow, CT_SCOPE_FROM_EP, CT_SCOPE_TO_EP, ep, ctx.len(), cfg)?;
    if cfg.flags & CFG_F_TRACE_FLOWS != 0 {
        events::emit(EVENT_FLOW, 0, EVENT_DIR_FROM_EP, ep.ifindex, ep.id, &flow.key);
    }
    Ok(())
}

/// Judges packets as they reach container `ep` (tcx egress of its veth,
/// after any translation: the remote of a published port is the client).
#[inline(never)]
pub fn to_endpoint(
    ctx: &TcContext,
    parsed: &Result<Flow, NoFlow>,
    ep: &Endpoint,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let Ok(flow) = parsed else { return Ok(()) };
    let key = flow.key.in_scope(CT_SCOPE_TO_EP);
    if let Some(entry) = conntrack::lookup(&key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        return Ok(());
    }
    if !allows(ep, POLICY_DIR_IN, flow.key.saddr, flow.key.proto, flow.policy_port()) {
        return Err(DropReason::Policy);
    }
    remember(flow, CT_SCOPE_TO_EP, CT_SCOPE_FROM_EP, ep, ctx.len(), cfg)?;
    if cfg.flags & CFG_F_TRACE_FLOWS != 0 {
        events::emit(EVENT_FLOW, 0, EVENT_DIR_TO_EP, ep.ifindex, ep.id, &flow.key);
    }
    Ok(())
}
