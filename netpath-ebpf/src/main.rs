//! netpath's BPF programs. Each program is a thin entry point; the work is in
//! the modules: packet access and flow parsing, anti-spoofing, conntrack,
//! NAT, published-port lookup, socket-level translation, counters.
#![no_std]
#![no_main]

mod antispoof;
mod checksum;
mod conntrack;
mod flow;
mod icmp_error;
mod maps;
mod nat;
mod packet;
mod service;
mod snat;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netpath_common::{conntrack::CtState, DropReason};
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
#[inline(always)]
fn translate(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = config() else { return Ok(()) };
    let flow = match flow::parse(ctx) {
        Ok(flow) => flow,
        Err(flow::NoFlow::IcmpError) => return icmp_error::translate(ctx),
        Err(_) => return Ok(()),
    };
    if let Some(entry) = conntrack::lookup(&flow.key) {
        conntrack::touch(entry, &flow, ctx.len(), cfg);
        // SAFETY: map value pointer, valid during the run.
        return nat::apply(ctx, &flow, unsafe { &*entry });
    }
    let Some(svc) = service::lookup(flow.key.daddr, flow.key.dport, flow.key.proto, false) else {
        return Ok(());
    };
    let (mut fwd, reply_key, mut rev) = service::flow_entries(&flow.key, &svc, cfg);
    fwd.packets = 1;
    fwd.bytes = ctx.len() as u64;
    fwd.state = CtState::New as u8;
    conntrack::create(&flow.key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg)?;
    nat::apply(ctx, &flow, &fwd)
}

#[inline(always)]
fn tc_verdict(ifindex: u32, dir: Direction, len: u32, r: Result<(), DropReason>) -> i32 {
    match r {
        Ok(()) => {
            count_packet(ifindex, dir, len);
            TC_ACT_OK as i32
        }
        Err(reason) => {
            count_drop(ifindex, reason);
            TC_ACT_SHOT as i32
        }
    }
}

/// tc ingress on a container's host-side veth: everything the container
/// sends passes here first. Unknown interfaces fail closed; then
/// anti-spoofing, then conntrack/NAT (replies of published ports, hairpin).
#[classifier]
pub fn veth_ingress(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    let verdict = match ENDPOINTS.get_ptr(ifindex) {
        None => Err(DropReason::UnknownEndpoint),
        Some(ep) => {
            packet::pull_headers(&ctx, HEADERS_LEN);
            // SAFETY: map values stay valid for the program's run.
            antispoof::check_source(&ctx, unsafe { &*ep }).and_then(|()| translate(&ctx))
        }
    };
    tc_verdict(ifindex, Direction::Ingress, len, verdict)
}

/// tc egress on a container's host-side veth: everything delivered to the
/// container.
#[classifier]
pub fn veth_egress(ctx: TcContext) -> i32 {
    count_packet(skb_ifindex(&ctx), Direction::Egress, ctx.len());
    TC_ACT_OK as i32
}

/// tc ingress on the uplink: published ports from outside, and replies of
/// translated flows.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    packet::pull_headers(&ctx, HEADERS_LEN);
    let verdict = translate(&ctx);
    match verdict {
        Ok(()) => TC_ACT_OK as i32,
        Err(reason) => {
            count_drop(skb_ifindex(&ctx), reason);
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
            count_drop(skb_ifindex(&ctx), reason);
            TC_ACT_SHOT as i32
        }
    }
}

#[inline(always)]
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
    snat::masquerade_new(ctx, &flow, cfg)
}

/// XDP on the uplink, before any skb exists: counts what arrives and drops
/// packets addressed straight to container addresses, which are reachable
/// from outside only through published ports (unless the instance routes).
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    if let (Some(cfg), Some(ip)) = (config(), packet::ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN)) {
        // SAFETY: bounds checked by ptr_at.
        let (is_ipv4, daddr) = unsafe {
            (
                packet::ptr_at::<EthHdr>(&ctx, 0).is_some_and(|e| (*e).ether_type == network_types::eth::EtherType::Ipv4 as u16),
                (*ip).dst_addr,
            )
        };
        if is_ipv4 && cfg.flags & netpath_common::config::CFG_F_ROUTED == 0 && cfg.in_subnet(daddr) {
            count_drop(ifindex, DropReason::NotPublished);
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
