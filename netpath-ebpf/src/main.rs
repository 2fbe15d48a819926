//! netpath's BPF programs. Each program is a thin entry point; the work is in
//! the modules (parsing, anti-spoofing, counters), so that later features
//! (conntrack, NAT, policy) slot in as modules of their own.
#![no_std]
#![no_main]

mod antispoof;
mod maps;
mod packet;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netpath_common::DropReason;
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{
    maps::ENDPOINTS,
    stats::{count_drop, count_packet, Direction},
};

#[inline(always)]
fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// tc ingress on a container's host-side veth: everything the container
/// sends passes here first. Unknown interfaces fail closed.
#[classifier]
pub fn veth_ingress(ctx: TcContext) -> i32 {
    let ifindex = skb_ifindex(&ctx);
    let verdict = match ENDPOINTS.get_ptr(ifindex) {
        None => Err(DropReason::UnknownEndpoint),
        Some(ep) => {
            packet::pull_headers(&ctx, (EthHdr::LEN + ArpHdr::LEN) as u32);
            // SAFETY: map values stay valid for the program's run.
            antispoof::check_source(&ctx, unsafe { &*ep })
        }
    };
    match verdict {
        Ok(()) => {
            count_packet(ifindex, Direction::Ingress, ctx.len());
            TC_ACT_OK
        }
        Err(reason) => {
            count_drop(ifindex, reason);
            TC_ACT_SHOT
        }
    }
}

/// tc egress on a container's host-side veth: everything delivered to the
/// container.
#[classifier]
pub fn veth_egress(ctx: TcContext) -> i32 {
    count_packet(skb_ifindex(&ctx), Direction::Egress, ctx.len());
    TC_ACT_OK
}

/// XDP on the uplink: counts what arrives from outside. Port publishing and
/// reverse NAT hook in here.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    count_packet(ifindex, Direction::Ingress, packet::Packet::frame_len(&ctx));
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
