//! netpath's BPF programs. Each program is a thin entry point; the work is in
//! the modules: packet access and flow parsing, anti-spoofing, conntrack,
//! NAT, published-port lookup, socket-level translation, counters.
#![no_std]
#![no_main]

mod antispoof;
mod checksum;
mod conntrack;
mod events;
mod flow;
mod icmp_error;
mod maps;
mod nat;
mod packet;
mod policy;
mod service;
mod snat;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netpath_common::{
    conntrack::CtState,
    event::{EVENT_DIR_FROM_EP, EVENT_DIR_TO_EP, EVENT_DIR_UPLINK, EVENT_DROP},
    DropReason,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::{config, ENDPOINTS},
    stats::{count_drop, count_packet, Direction},
};

/// Enough to see Ethernet, IPv4 with options and a TCP header directly.
const HEADERS_LEN: u32 = 14 + 60 + 20;

#[inline(always)]
fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Conntrack hit: translate as recorded. Miss to a published port: create
/// the flow's entries, then translate. ICMP errors about a tracked flow are
/// translated back (outer and quoted headers). Anything else passes.
///
/// Not inlined, like the other stages below: each is a BPF-to-BPF call with
/// a stack frame of its own, so that the stages' locals (conntrack entries,
/// events) do not add up beyond the 512-byte stack.
#[inline(never)]
fn translate(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    translate_parsed(ctx, &flow::parse(ctx), cfg)
}

/// [`translate`] for a packet its caller has parsed already.
#[inline(never)]
fn translate_parsed(
    ctx: &TcContext,
    parsed: &Result<flow::Flow, flow::NoFlow>,
    cfg: &netpath_common::DatapathConfig,
) -> Result<(), DropReason> {
    let flow = match parsed {
        Ok(flow) => flow,
        Err(flow::NoFlow::IcmpError) => return icmp_error::translate(ctx),
        Err(_) => return Ok(()),
    };
    if let Some(entry) = conntrack::lookup(&flow.key) {
        conntrack::touch(entry, flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        return nat::apply(ctx, flow, unsafe { &*entry });
    }
    new_published_flow(ctx, flow, cfg)
}

/// A conntrack miss: if the packet is for a published port, track the new
/// flow and translate it.
#[inline(never)]
fn new_published_flow(
    ctx: &TcContext,
    flow: &flow::Flow,
    cfg: &netpath_common::DatapathConfig,
) -> Result<(), DropReason> {
    let Some(svc) = service::lookup(flow.key.daddr, flow.key.dport, flow.key.proto, false) else {
        return Ok(());
    };
    let (mut fwd, reply_key, mut rev) = service::flow_entries(&flow.key, &svc, cfg);
    fwd.packets = 1;
    fwd.bytes = ctx.len() as u64;
    fwd.state = CtState::New as u8;
    conntrack::create(&flow.key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg)?;
    nat::apply(ctx, flow, &fwd)
}

/// Counts a drop and tells the monitor about it.
#[inline(never)]
fn drop_frame(pkt: &impl packet::Packet, ifindex: u32, endpoint_id: u32, direction: u8, reason: DropReason) {
    count_drop(ifindex, reason);
    let key = flow::parse(pkt).map(|f| f.key).unwrap_or_default();
    events::emit(EVENT_DROP, reason as u8, direction, ifindex, endpoint_id, &key);
}

#[inline(always)]
fn tc_verdict(
    ctx: &TcContext,
    ifindex: u32,
    endpoint_id: u32,
    dir: Direction,
    len: u32,
    r: Result<(), DropReason>,
) -> i32 {
    match r {
        Ok(()) => {
            count_packet(ifindex, dir, len);
            TC_ACT_OK as i32
        }
        Err(reason) => {
            let event_dir = match dir {
                Direction::Ingress => EVENT_DIR_FROM_EP,
                Direction::Egress => EVENT_DIR_TO_EP,
            };
            drop_frame(ctx, ifindex, endpoint_id, event_dir, reason);
            TC_ACT_SHOT as i32
        }
    }
}

/// tc ingress on a container's host-side veth: everything the container
/// sends passes here first. Unknown interfaces fail closed; then
/// anti-spoofing, the container's outbound policy for new flows, then
/// conntrack/NAT (replies of published ports, hairpin).
#[classifier]
pub fn veth_ingress(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    let Some(ep) = ENDPOINTS.get_ptr(ifindex) else {
        return tc_verdict(&ctx, ifindex, 0, Direction::Ingress, len, Err(DropReason::UnknownEndpoint));
    };
    // SAFETY: map values stay valid for the program's run.
    let ep = unsafe { &*ep };
    packet::pull_headers(&ctx, HEADERS_LEN);
    let verdict = antispoof::check_source(&ctx, ep).and_then(|()| match config() {
        // Parsed once for both stages.
        Some(cfg) => {
            let parsed = flow::parse(&ctx);
            policy::from_endpoint(&ctx, &parsed, ep, cfg).and_then(|()| translate_parsed(&ctx, &parsed, cfg))
        }
        None => Ok(()),
    });
    tc_verdict(&ctx, ifindex, ep.id, Direction::Ingress, len, verdict)
}

/// tc egress on a container's host-side veth: everything delivered to the
/// container, after translation; the container's inbound policy judges new
/// flows here.
#[classifier]
pub fn veth_egress(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    let (Some(ep), Some(cfg)) = (ENDPOINTS.get_ptr(ifindex), config()) else {
        count_packet(ifindex, Direction::Egress, len);
        return TC_ACT_OK as i32;
    };
    // SAFETY: map values stay valid for the program's run.
    let ep = unsafe { &*ep };
    packet::pull_headers(&ctx, HEADERS_LEN);
    let verdict = policy::to_endpoint(&ctx, &flow::parse(&ctx), ep, cfg);
    tc_verdict(&ctx, ifindex, ep.id, Direction::Egress, len, verdict)
}

/// tc ingress on the uplink: published ports from outside, and replies of
/// translated flows. Without XDP on the uplink it also counts and drops
/// direct access to containers.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    packet::pull_headers(&ctx, HEADERS_LEN);
    if let Some(cfg) = config() {
        if cfg.flags & netpath_common::config::CFG_F_UPLINK_XDP == 0 {
            let ifindex = skb_ifindex(&ctx);
            if direct_to_container(&ctx, cfg) {
                drop_frame(&ctx, ifindex, 0, EVENT_DIR_UPLINK, DropReason::NotPublished);
                return TC_ACT_SHOT as i32;
            }
            count_packet(ifindex, Direction::Ingress, ctx.len());
        }
    }
    match translate(&ctx) {
        Ok(()) => TC_ACT_OK as i32,
        Err(reason) => {
            drop_frame(&ctx, skb_ifindex(&ctx), 0, EVENT_DIR_UPLINK, reason);
            TC_ACT_SHOT as i32
        }
    }
}

/// tc egress on the uplink: container traffic leaving the host gets the
/// uplink's address (masquerade).
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    packet::pull_headers(&ctx, HEADERS_LEN);
    match masquerade(&ctx) {
        Ok(()) => TC_ACT_OK as i32,
        Err(reason) => {
            drop_frame(&ctx, skb_ifindex(&ctx), 0, EVENT_DIR_UPLINK, reason);
            TC_ACT_SHOT as i32
        }
    }
}

#[inline(never)]
fn masquerade(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    if cfg.flags & netpath_common::config::CFG_F_MASQUERADE == 0 {
        return Ok(());
    }
    let Ok(flow) = flow::parse(ctx) else { return Ok(()) };
    // Only the containers' own traffic: the host's, and replies of
    // published ports (already translated on the veth), keep their source.
    if !cfg.in_subnet(flow.key.saddr) {
        return Ok(());
    }
    if let Some(entry) = conntrack::lookup(&flow.key) {
        conntrack::touch(entry, &flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        return nat::apply(ctx, &flow, unsafe { &*entry });
    }
    // Replies of flows that came in to the container's own address (routed
    // mode) keep that address: only flows the container starts are
    // masqueraded. Its policy verdict tells which side started the flow.
    let verdict = flow.key.in_scope(netpath_common::conntrack::CT_SCOPE_FROM_EP);
    if let Some(entry) = conntrack::lookup(&verdict) {
        // SAFETY: map value pointer, valid during the run.
        if unsafe { (*entry).flags } & netpath_common::conntrack::CT_F_REPLY != 0 {
            return Ok(());
        }
    }
    snat::masquerade_new(ctx, &flow, cfg)
}

/// Is this packet from outside addressed straight to a container? Those are
/// reachable from outside only through published ports (unless the
/// instance routes).
#[inline(always)]
fn direct_to_container(pkt: &impl packet::Packet, cfg: &netpath_common::DatapathConfig) -> bool {
    if cfg.flags & netpath_common::config::CFG_F_ROUTED != 0 {
        return false;
    }
    let (Some(eth), Some(ip)) = (packet::ptr_at::<EthHdr>(pkt, 0), packet::ptr_at::<Ipv4Hdr>(pkt, EthHdr::LEN)) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { (*eth).ether_type == network_types::eth::EtherType::Ipv4 as u16 && cfg.in_subnet((*ip).dst_addr) }
}

/// XDP on the uplink, before any skb exists: counts what arrives and drops
/// direct access to containers at the earliest point. Attached only where
/// XDP is native and cheap (not on a veth uplink, where it would force
/// every frame out of GRO).
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    if let Some(cfg) = config() {
        if direct_to_container(&ctx, cfg) {
            drop_frame(&ctx, ifindex, 0, EVENT_DIR_UPLINK, DropReason::NotPublished);
            return xdp_action::XDP_DROP;
        }
    }
    count_packet(ifindex, Direction::Ingress, packet::Packet::frame_len(&ctx));
    xdp_action::XDP_PASS
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
