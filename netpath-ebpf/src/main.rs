//! netpath's BPF programs. Each program is a thin entry point, declared in
//! `netpath_common::HOOKS` under its function name; the work is in the
//! modules: packet access and flow parsing, anti-spoofing, policy,
//! conntrack, NAT (translate, mapping, snat, icmp_error), socket-level
//! translation, and the verdict-and-count path every program ends through.
#![no_std]
#![no_main]

mod antispoof;
mod checksum;
mod clock;
mod conntrack;
mod events;
mod family;
mod flow;
mod forward;
mod fragment;
mod host_sockets;
mod icmp_error;
mod ipv6;
mod mapping;
mod maps;
mod masquerade;
mod nat;
mod offsets;
mod packet;
mod policy;
mod receive;
mod sock;
mod stats;
mod translate;
mod uplink_guard;
mod verdict;
mod zero;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netpath_common::{
    config::CFG_F_UPLINK_XDP,
    hooks::{
        TAIL_UPLINK_EGRESS6, TAIL_UPLINK_FORWARD6, TAIL_UPLINK_INGRESS6, TAIL_VETH_EGRESS6, TAIL_VETH_FORWARD6,
        TAIL_VETH_INGRESS6,
    },
    ContainerEntry, DatapathConfig, Direction, DropReason, HookId, In6Addr,
};

use crate::{
    forward::Origin,
    maps::{config, CONTAINERS, TAIL_CALLS},
    packet::skb_ifindex,
    policy::CarriedVerdict,
    verdict::{finish, Site},
};

#[inline(always)]
fn tc_action(pass: bool) -> i32 {
    if pass {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// tc ingress on a container's host-side veth: everything the container
/// sends passes here first. Unknown interfaces fail closed; then
/// anti-spoofing, the container's outbound policy for new flows, then
/// conntrack/NAT (replies of published ports, hairpin).
#[classifier]
pub fn veth_ingress(ctx: TcContext) -> i32 {
    if packet::is_ipv6(&ctx) {
        return tail_call(&ctx, TAIL_VETH_INGRESS6, HookId::VethIngress);
    }
    let mut carried = CarriedVerdict::default();
    if !veth_ingress_passes(&ctx, &mut carried) {
        return TC_ACT_SHOT as i32;
    }
    forward::forward4(&ctx, Origin::Container, carried)
}

/// veth_ingress's judging and translation; the verdict a translated flow's
/// entry carried goes to the fast path (`carried`). Out of line, so that its
/// frame is gone before the fast path's own chain (the receiving
/// container's policy) starts.
#[inline(never)]
fn veth_ingress_passes(ctx: &TcContext, carried: &mut CarriedVerdict) -> bool {
    let ifindex = skb_ifindex(ctx);
    let len = ctx.len();
    let Some(container) = CONTAINERS.get_ptr(ifindex) else {
        let site = Site::veth(HookId::VethIngress, ifindex, None);
        return finish(ctx, site, len, Err(DropReason::UnknownContainer));
    };
    // SAFETY: map values stay valid for the program's run.
    let container = unsafe { &*container };
    packet::pull_headers(ctx);
    let result = antispoof::check_source(ctx, container).and_then(|()| match config() {
        // Parsed once for both stages.
        Some(cfg) => {
            let parsed = flow::parse4(ctx);
            policy::icc_allows_frame(ctx, &parsed, cfg)?;
            translate::judge_and_translate4(ctx, &parsed, container, cfg, carried)
        }
        None => Ok(()),
    });
    let site = Site::veth(HookId::VethIngress, ifindex, Some(container));
    finish(ctx, site, len, result)
}

/// veth_ingress for IPv6, tail-called (verified apart from the IPv4 path,
/// which takes veth_ingress's verification budget): anti-spoofing, the
/// container's outbound policy and the NAT stage ([`judge_sent6`]), then
/// the IPv6 fast path (`veth_forward6`).
#[classifier]
pub fn veth_ingress6(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    let Some(container) = CONTAINERS.get_ptr(ifindex) else {
        let site = Site::veth(HookId::VethIngress, ifindex, None);
        return tc_action(finish(&ctx, site, len, Err(DropReason::UnknownContainer)));
    };
    // SAFETY: map values stay valid for the program's run.
    let container = unsafe { &*container };
    packet::pull_headers(&ctx);
    CarriedVerdict::default().to_cb(&ctx);
    let result = antispoof::check_source(&ctx, container).and_then(|()| match config() {
        Some(cfg) => judge_sent6(&ctx, container, cfg),
        None => Ok(()),
    });
    let site = Site::veth(HookId::VethIngress, ifindex, Some(container));
    if !finish(&ctx, site, len, result) {
        return TC_ACT_SHOT as i32;
    }
    to_fast_path6(&ctx, TAIL_VETH_FORWARD6)
}

/// Hands a packet that passed to the IPv6 fast path, a program of its own
/// (`veth_forward6`, `uplink_forward6`): its chain then starts on an empty
/// stack, where the judging chain before it has used all of its own. The
/// verdict the NAT stage carried goes along in the skb's control block. A
/// failed jump leaves the packet to the stack, as the fast path's
/// fallbacks do.
#[inline(always)]
fn to_fast_path6(ctx: &TcContext, slot: u32) -> i32 {
    // Taken with the fast path off too: a container's packet whose source
    // its veth translated is still checked against its route there.
    // SAFETY: the slot holds a program of the same type, or nothing.
    unsafe { TAIL_CALLS.tail_call(ctx, slot) };
    TC_ACT_OK as i32
}

/// The IPv6 fast path of what a container sent, tail-called by
/// [`veth_ingress6`] once the packet passed.
#[classifier]
pub fn veth_forward6(ctx: TcContext) -> i32 {
    forward::forward6(&ctx, Origin::Container, CarriedVerdict::from_cb(&ctx))
}

/// The IPv6 fast path of what the uplink received, tail-called by
/// [`uplink_ingress6`] once the packet passed.
#[classifier]
pub fn uplink_forward6(ctx: TcContext) -> i32 {
    forward::forward6(&ctx, Origin::Uplink, CarriedVerdict::from_cb(&ctx))
}

/// A packet the IPv4 fast path would hand to a container that has no
/// verdict for its flow yet, judged by that container's inbound policy on
/// the way (`forward::judge_and_deliver`), tail-called from `forward4`.
#[classifier]
pub fn deliver4(ctx: TcContext) -> i32 {
    forward::judge_and_deliver::<[u8; 4]>(&ctx)
}

/// [`deliver4`] for IPv6, tail-called from `forward6`.
#[classifier]
pub fn deliver6(ctx: TcContext) -> i32 {
    forward::judge_and_deliver::<In6Addr>(&ctx)
}

/// What `container` sends over IPv6: parsed, its addresses and roles checked, then
/// judged by its outbound policy, its listener reports sent to the host
/// alone, then translated (the replies of published IPv6 ports, flows to
/// them through a host address); a translated flow's entry that carries the
/// container's verdict does the judging and the translation in one lookup.
#[inline(never)]
fn judge_sent6(ctx: &TcContext, container: &ContainerEntry, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let parsed = ipv6::parse6(ctx);
    antispoof::check_parsed6(ctx, &parsed, container)?;
    policy::icc_allows_frame(ctx, &parsed, cfg)?;
    if translate::judge_and_translate6(ctx, &parsed, container, cfg)? {
        return Ok(());
    }
    policy::judge(ctx, &parsed, container, Direction::Out, cfg)?;
    ipv6::listener_report_to_host(ctx, &parsed, cfg)?;
    translate::translate_parsed6(ctx, &parsed, cfg, false)
}

/// veth_egress for IPv6, tail-called as [`veth_ingress6`] is: the
/// container's inbound policy.
#[classifier]
pub fn veth_egress6(ctx: TcContext) -> i32 {
    tc_action(receive::at_veth_egress::<In6Addr>(&ctx))
}

/// Jumps to the tail-called program in `slot`. If the jump fails (the
/// agent has not filled the slot), the packet is dropped and counted: an
/// IPv6 packet is never passed unjudged.
#[inline(always)]
fn tail_call(ctx: &TcContext, slot: u32, hook: HookId) -> i32 {
    // SAFETY: the slot holds a program of the same type, or nothing.
    unsafe { TAIL_CALLS.tail_call(ctx, slot) };
    no_tail_call(ctx, hook)
}

/// Out of line: the entry point's own frame stays as small as it was (its
/// deepest call chain is at the 512-byte stack limit).
#[inline(never)]
fn no_tail_call(ctx: &TcContext, hook: HookId) -> i32 {
    let ifindex = skb_ifindex(ctx);
    let site = match hook {
        HookId::VethIngress | HookId::VethEgress => {
            // SAFETY: map values stay valid for the program's run.
            Site::veth(hook, ifindex, CONTAINERS.get_ptr(ifindex).map(|c| unsafe { &*c }))
        }
        _ => Site::uplink(hook, ifindex, true),
    };
    tc_action(finish(ctx, site, ctx.len(), Err(DropReason::UnsupportedProtocol)))
}

/// tc egress on a container's host-side veth: everything the stack
/// delivers to the container, after translation; the container's inbound
/// policy judges new flows here (the fast path's own deliveries are judged
/// on the way, see [`deliver4`]).
#[classifier]
pub fn veth_egress(ctx: TcContext) -> i32 {
    if packet::is_ipv6(&ctx) {
        return tail_call(&ctx, TAIL_VETH_EGRESS6, HookId::VethEgress);
    }
    tc_action(receive::at_veth_egress::<[u8; 4]>(&ctx))
}

/// tc ingress on the uplink: published ports from outside, and replies of
/// translated flows. Without XDP on the uplink it also counts, and runs the
/// uplink guard (denied sources, direct access to containers, guarded
/// ports) before conntrack and NAT.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    if packet::is_ipv6(&ctx) {
        return tail_call(&ctx, TAIL_UPLINK_INGRESS6, HookId::UplinkIngress);
    }
    let mut carried = CarriedVerdict::default();
    if !uplink_ingress_passes(&ctx, &mut carried) {
        return TC_ACT_SHOT as i32;
    }
    forward::forward4(&ctx, Origin::Uplink, carried)
}

/// uplink_ingress's checks and translation, out of line for the same
/// reason as [`veth_ingress_passes`].
#[inline(never)]
fn uplink_ingress_passes(ctx: &TcContext, carried: &mut CarriedVerdict) -> bool {
    let ifindex = skb_ifindex(ctx);
    let len = ctx.len();
    packet::pull_headers(ctx);
    let behind_xdp = config().is_some_and(|cfg| cfg.has(CFG_F_UPLINK_XDP));
    let result = match config() {
        Some(cfg) if !behind_xdp => uplink_guard::judge(ctx, cfg).and_then(|()| translate::translate4(ctx, carried)),
        _ => translate::translate4(ctx, carried),
    };
    let site = Site::uplink(HookId::UplinkIngress, ifindex, !behind_xdp);
    finish(ctx, site, len, result)
}

/// uplink_ingress for IPv6, tail-called: the uplink guard (unless XDP ran
/// it), then the NAT stage (published IPv6 ports, their replies), then the
/// fast path.
#[classifier]
pub fn uplink_ingress6(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    packet::pull_headers(&ctx);
    let behind_xdp = config().is_some_and(|cfg| cfg.has(CFG_F_UPLINK_XDP));
    CarriedVerdict::default().to_cb(&ctx);
    let result = match config() {
        Some(cfg) if behind_xdp => translate::translate_parsed6(&ctx, &ipv6::parse6(&ctx), cfg, true),
        Some(cfg) => uplink_guard::judge(&ctx, cfg)
            .and_then(|()| translate::translate_parsed6(&ctx, &ipv6::parse6(&ctx), cfg, true)),
        None => Ok(()),
    };
    let site = Site::uplink(HookId::UplinkIngress, ifindex, !behind_xdp);
    if !finish(&ctx, site, len, result) {
        return TC_ACT_SHOT as i32;
    }
    to_fast_path6(&ctx, TAIL_UPLINK_FORWARD6)
}

/// tc egress on the uplink: container traffic leaving the host gets the
/// uplink's address (masquerade); the host's ICMP errors about translated
/// packets get their quotes translated back.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    if packet::is_ipv6(&ctx) {
        return tail_call(&ctx, TAIL_UPLINK_EGRESS6, HookId::UplinkEgress);
    }
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    packet::pull_headers(&ctx);
    let result = translate::translate_outbound4(&ctx);
    let site = Site::uplink(HookId::UplinkEgress, ifindex, true);
    tc_action(finish(&ctx, site, len, result))
}

/// uplink_egress for IPv6, tail-called: masquerade for IPv6.
#[classifier]
pub fn uplink_egress6(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let len = ctx.len();
    packet::pull_headers(&ctx);
    let result = translate::translate_outbound6(&ctx);
    let site = Site::uplink(HookId::UplinkEgress, ifindex, true);
    tc_action(finish(&ctx, site, len, result))
}

/// XDP on the uplink, before any skb exists: counts what arrives and runs
/// the uplink guard (denied sources, direct access to containers, guarded
/// ports) at the earliest point. Attached only where XDP is native and
/// cheap (not on a veth uplink, where it would force every frame out of
/// GRO), unless `uplink_xdp = "on"`.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let len = packet::Packet::frame_len(&ctx);
    let result = match config() {
        Some(cfg) => uplink_guard::judge(&ctx, cfg),
        None => Ok(()),
    };
    let site = Site::uplink(HookId::UplinkXdp, ifindex, true);
    if finish(&ctx, site, len, result) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

// The socket hooks never refuse (1 = proceed): they only rewrite addresses.

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx);
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
