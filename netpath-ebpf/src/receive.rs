//! What a container receives, whichever way it comes: judged by the
//! container's inbound policy and counted on its veth's egress side. The
//! stack delivers through the veth, whose egress program (`veth_egress`,
//! `veth_egress6`) judges there; the fast path hands packets over itself,
//! judged on the way (`deliver4`, `deliver6`) or passed on a verdict it
//! found. All of them count and drop through the one site built here.

use aya_ebpf::programs::TcContext;
use netpath_common::{ContainerEntry, DatapathConfig, Direction, DropReason, HookId};

use crate::{
    family::Family,
    maps::{config, CONTAINERS},
    packet::{self, skb_ifindex},
    policy,
    verdict::{finish, Site},
};

/// The veth egress program's body, for the family `A` (true: the packet
/// passes). The interface's container judges what it receives; an
/// interface the datapath knows no container for, or a datapath without
/// its settings yet, passes it (counted), as the stack would deliver it.
#[inline(always)]
pub fn at_veth_egress<A: Family>(ctx: &TcContext) -> bool {
    let ifindex = skb_ifindex(ctx);
    let container = CONTAINERS.get_ptr(ifindex);
    match (container, config()) {
        (Some(container), Some(cfg)) => {
            packet::pull_headers(ctx);
            // SAFETY: map values stay valid for the program's run.
            judged::<A>(ctx, unsafe { &*container }, cfg)
        }
        _ => {
            // SAFETY: as above.
            let site = Site::veth(HookId::VethEgress, ifindex, container.map(|c| unsafe { &*c }));
            finish(ctx, site, ctx.len(), Ok(()))
        }
    }
}

/// `container`'s inbound policy on the packet (new flows remembered,
/// verdicts of older rules judged again, fragments and ICMP errors by
/// their flows), counted on its veth's egress side; true if it passes.
#[inline(always)]
pub fn judged<A: Family>(ctx: &TcContext, container: &ContainerEntry, cfg: &DatapathConfig) -> bool {
    let result = policy::judge(ctx, &A::parse(ctx), container, Direction::In, cfg);
    counted(ctx, container, result)
}

/// Counts the packet on `container`'s veth egress side as `result` says:
/// passed (traffic), or dropped (by reason, with a monitor event). True if
/// it passes.
#[inline(always)]
pub fn counted(ctx: &TcContext, container: &ContainerEntry, result: Result<(), DropReason>) -> bool {
    let site = Site::veth(HookId::VethEgress, container.ifindex, Some(container));
    finish(ctx, site, ctx.len(), result)
}
