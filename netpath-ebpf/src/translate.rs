//! The NAT stages of the tc programs: conntrack hit -> rewrite as recorded;
//! miss -> a new flow to a published port (DNAT) or, leaving the uplink, a
//! new masqueraded flow (SNAT); ICMP errors about tracked flows translated
//! back.
//!
//! Each stage is `#[inline(never)]`: a BPF-to-BPF call with a stack frame of
//! its own, so that the stages' locals (conntrack entries, events) do not add
//! up beyond the 512-byte stack.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_ROUTED},
    conntrack::{CtState, CT_F_REPLY},
    CtScope, DatapathConfig, DropReason,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    conntrack, flow,
    flow::{Flow4, NoFlow},
    icmp_error, mapping,
    maps::config,
    masquerade, nat, packet,
};

/// Translates a packet arriving from outside (uplink ingress).
#[inline(never)]
pub fn translate4(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    translate_parsed4(ctx, &flow::parse4(ctx), cfg)
}

/// Conntrack hit: translate as recorded. Miss to a published port: create
/// the flow's entries, then translate. ICMP errors about a tracked flow are
/// translated back (outer and quoted headers). Anything else passes.
#[inline(never)]
pub fn translate_parsed4(
    ctx: &TcContext,
    parsed: &Result<Flow4, NoFlow>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let flow = match parsed {
        Ok(flow) => flow,
        Err(NoFlow::IcmpError) => return icmp_error::translate4(ctx),
        Err(_) => return Ok(()),
    };
    if let Some(entry) = conntrack::lookup4(&flow.key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        return nat::apply4(ctx, flow, unsafe { &*entry });
    }
    new_published_flow4(ctx, flow, cfg)
}

/// A conntrack miss: if the packet is for a published port, track the new
/// flow and translate it.
#[inline(never)]
fn new_published_flow4(ctx: &TcContext, flow: &Flow4, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let Some(published) = mapping::lookup4(flow.key.daddr, flow.key.dport, flow.key.proto, false) else {
        return Ok(());
    };
    let (mut fwd, reply_key, mut rev) = mapping::flow_entries4(&flow.key, &published, cfg);
    fwd.packets = 1;
    fwd.bytes = ctx.len() as u64;
    fwd.state = CtState::New as u8;
    conntrack::create4(&flow.key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg)?;
    nat::apply4(ctx, flow, &fwd)
}

/// Container traffic leaving through the uplink gets the uplink's address
/// (uplink egress).
#[inline(never)]
pub fn masquerade4(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    if !cfg.has(CFG_F_MASQUERADE) {
        return Ok(());
    }
    let Ok(flow) = flow::parse4(ctx) else { return Ok(()) };
    // Only the containers' own traffic: the host's, and replies of
    // published ports (already translated on the veth), keep their source.
    if !cfg.in_subnet4(flow.key.saddr) {
        return Ok(());
    }
    if let Some(entry) = conntrack::lookup4(&flow.key) {
        conntrack::touch(entry, &flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        return nat::apply4(ctx, &flow, unsafe { &*entry });
    }
    // Replies of flows that came in to the container's own address (routed
    // mode) keep that address: only flows the container starts are
    // masqueraded. Its policy verdict tells which side started the flow.
    let verdict = flow.key.in_scope(CtScope::PolicyOut);
    if let Some(entry) = conntrack::lookup4(&verdict) {
        // SAFETY: map value pointer, valid during the run.
        if unsafe { (*entry).flags } & CT_F_REPLY != 0 {
            return Ok(());
        }
    }
    masquerade::new_flow4(ctx, &flow, cfg)
}

/// Is this packet from outside addressed straight to a container? Those are
/// reachable from outside only through published ports (unless the
/// instance routes).
#[inline(always)]
pub fn direct_to_container4(pkt: &impl packet::Packet, cfg: &DatapathConfig) -> bool {
    if cfg.has(CFG_F_ROUTED) {
        return false;
    }
    let (Some(eth), Some(ip)) = (packet::ptr_at::<EthHdr>(pkt, 0), packet::ptr_at::<Ipv4Hdr>(pkt, EthHdr::LEN)) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { (*eth).ether_type == EtherType::Ipv4 as u16 && cfg.in_subnet4((*ip).dst_addr) }
}
