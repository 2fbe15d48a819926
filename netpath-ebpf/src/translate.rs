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
    CtEntry, CtScope, DatapathConfig, DropReason, MappingEntry4,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    conntrack::{self, CreateError},
    flow,
    flow::{Flow4, NoFlow},
    icmp_error, mapping,
    maps::config,
    masquerade, nat,
    offsets::IP_SRC_OFF,
    packet, policy,
    stats::count_drop_on_container,
};

/// Translates a packet arriving from outside (uplink ingress). Inlined:
/// a frame of its own would take the chain uplink_ingress -> here ->
/// [`translate_parsed4`] -> a new published flow past the 512-byte stack.
#[inline(always)]
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
        // Only ported flows are translated (protocols without ports are
        // never published, and policy judges them).
        Ok(flow) if flow.ported => flow,
        Err(NoFlow::IcmpError) => return icmp_error::translate4(ctx, cfg),
        _ => return Ok(()),
    };
    if let Some(entry) = conntrack::lookup4(&flow.key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        return nat::apply4(ctx, flow, unsafe { &*entry });
    }
    match admitted_mapping4(flow, cfg)? {
        Some(published) => new_published_flow4(ctx, flow, published, cfg),
        None => Ok(()),
    }
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
fn admitted_mapping4(flow: &Flow4, cfg: &DatapathConfig) -> Result<Option<&'static MappingEntry4>, DropReason> {
    if !flow.starts_flow() {
        return Ok(None);
    }
    let Some(published) = mapping::lookup4(flow.key.daddr, flow.key.dport, flow.key.proto, false) else {
        return Ok(None);
    };
    // The container sees its own gateway as the client of a flow from
    // itself (hairpin, SNAT), the real client otherwise.
    let client = if flow.key.saddr == published.container_addr { cfg.gateway4 } else { flow.key.saddr };
    if !policy::admits_published4(published, client, flow.key.proto) {
        // The container's policy dropped it: its counters say so too.
        count_drop_on_container(published.container_ifindex, DropReason::Policy);
        return Err(DropReason::Policy);
    }
    Ok(Some(published))
}

/// Tracks a new flow to a published port and translates its first packet.
#[inline(never)]
fn new_published_flow4(
    ctx: &TcContext,
    flow: &Flow4,
    published: &MappingEntry4,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let (mut fwd, mut rev) = (CtEntry::default(), CtEntry::default());
    let reply_key = mapping::flow_entries4(&flow.key, published, cfg, &mut fwd, &mut rev);
    fwd.packets = 1;
    fwd.bytes = ctx.len() as u64;
    fwd.state = CtState::New as u8;
    match conntrack::create4(&flow.key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg) {
        Ok(()) => nat::apply4(ctx, flow, &fwd),
        Err(CreateError::Raced) => conntrack::apply_existing4(ctx, flow),
        Err(e) => Err(e.into()),
    }
}

/// Container traffic leaving through the uplink gets the uplink's address
/// (uplink egress).
#[inline(never)]
pub fn masquerade4(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    if !cfg.has(CFG_F_MASQUERADE) {
        return Ok(());
    }
    let flow = match flow::parse4(ctx) {
        Ok(flow) if flow.ported => flow,
        // What masquerade cannot translate never leaves with a container's
        // private source.
        Ok(flow) => return untranslatable4(cfg, flow.key.saddr, DropReason::UnsupportedProtocol),
        Err(NoFlow::IcmpOther(key)) => return untranslatable4(cfg, key.saddr, DropReason::UnsupportedProtocol),
        Err(NoFlow::LaterFragment(frag)) => return untranslatable4(cfg, frag.saddr, DropReason::Fragment),
        Err(NoFlow::IcmpError) => {
            let saddr = packet::load(ctx, EthHdr::LEN + IP_SRC_OFF)?;
            return untranslatable4(cfg, saddr, DropReason::UnsupportedProtocol);
        }
        // Too short to carry a source address: nothing to leak.
        Err(NoFlow::Malformed) => match packet::load(ctx, EthHdr::LEN + IP_SRC_OFF) {
            Ok(saddr) => return untranslatable4(cfg, saddr, DropReason::Malformed),
            Err(_) => return Ok(()),
        },
        Err(NoFlow::NotIpv4) => return Ok(()),
    };
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
    if cfg.has(CFG_F_ROUTED) {
        // Replies of flows that came in to the container's own address
        // keep that address: only flows the container starts are
        // masqueraded. Its policy verdict tells which side started the flow.
        let verdict = flow.key.in_scope(CtScope::PolicyOut);
        if let Some(entry) = conntrack::lookup4(&verdict) {
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
    masquerade::new_flow4(ctx, &flow, cfg)
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
