//! The fast path (tc ingress only): a packet the program let through and
//! translated is handed straight to the interface it leaves by.
//!
//! - To a container: `bpf_redirect_peer` into its `eth0`, for packets of
//!   flows the container's inbound policy allowed already (a verdict hit,
//!   counted on its veth as its egress program would). Skips the bridge,
//!   the routing pass and the veth backlog queue. A packet without such a
//!   verdict (a flow's first) is judged by that policy on the way, in a
//!   program of its own (`deliver4`, `deliver6`, tail-called): the same
//!   judging as the veth's egress program, verified apart from the entry
//!   points, whose verification budget the fast path shares.
//! - From a container to anywhere else that is not the host itself:
//!   `bpf_fib_lookup` picks the interface and next hop (and checks the
//!   MTU), `bpf_redirect` sends it there (`bpf_redirect_neigh` while the
//!   next hop's MAC is unresolved). The uplink's egress program
//!   (masquerade) still runs.
//!
//! IPv4 and IPv6 alike (`forward4`, `forward6`): the address index and
//! the routing lookup are per family, the rest is shared.
//!
//! A routed hop decrements the TTL (IPv6's hop limit), as the stack would. Whatever the fast
//! path cannot do as the stack would (a TTL about to expire, a packet too
//! big for the next link, no route) goes to the stack, counted; so does
//! anything not addressed through the host (ARP, broadcast, the host's own
//! traffic).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, bpf_redir_neigh, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    btf_maps::lpm_trie::Key,
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netpath_common::{
    config::{CFG_F_FAST_PATH, CFG_F_ROUTE_MTUS4},
    conntrack::IPPROTO_TCP,
    hooks::{DELIVER4, DELIVER6},
    AddrFamily, ContainerEntry, DatapathConfig, DropReason, Fallback, In6Addr, Redirect,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    checksum,
    family::Family,
    maps::{CONTAINERS, DELIVER_CALLS, FORWARD_STATS, HOST_ADDRS4, ROUTE_MTUS4},
    nat,
    offsets::{ip_hdr_len, tcp_hdr_len, IP_DF, IP_FRAGS_OFF, TCP_DOFF_OFF},
    packet::{load, mac_eq, ptr_at, ptr_at_mut, skb_ifindex},
    policy::{self, CarriedVerdict},
    receive, zero,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The IPv6 header's own length.
const IP6_HDR_LEN: u16 = 40;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;
/// `skb->pkt_type` of a frame addressed to this host's MAC.
const PACKET_HOST: u32 = 0;

/// Where the packet comes from, which decides what it may be forwarded to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The uplink's tc ingress: only into containers (the rest is the
    /// host's, or routed by the stack as before).
    Uplink,
    /// A container's veth tc ingress (the container sent it).
    Container,
}

/// The tc action for a packet the calling program passed: a redirect, a
/// drop (the receiving container's policy refused it), or `TC_ACT_OK` (to
/// the stack; a container's packet the stack answers with an ICMP error
/// gets its own source back first, see [`to_stack_as_sent`]). Inlined
/// into the entry point: the source is restored from there, where the
/// chain down to the packet's parse has the whole stack.
#[inline(always)]
pub fn forward4(ctx: &TcContext, origin: Origin, carried: CarriedVerdict) -> i32 {
    settle::<[u8; 4]>(ctx, route4(ctx, origin, carried))
}

/// [`forward4`] for IPv6.
#[inline(always)]
pub fn forward6(ctx: &TcContext, origin: Origin, carried: CarriedVerdict) -> i32 {
    settle::<In6Addr>(ctx, route6(ctx, origin, carried))
}

/// What [`route4`] or [`route6`] decided: [`STACK_ANSWERS`] becomes
/// `TC_ACT_OK` once the packet's source is the container's again;
/// [`TO_BE_JUDGED`] jumps to the family's judging program. Both in the
/// entry point: a tail call from a called function is refused when its
/// callers' frames take 256 bytes or more, and route6's alone takes 208.
#[inline(always)]
fn settle<A: Hop>(ctx: &TcContext, action: i32) -> i32 {
    match action {
        STACK_ANSWERS => {
            // A failed rewrite leaves the packet as it was: still
            // translated, every checksum consistent (each field is written
            // with its own).
            let _ = nat::restore_source::<A>(ctx, skb_ifindex(ctx));
            TC_ACT_OK as i32
        }
        TO_BE_JUDGED => {
            // SAFETY: the slot holds a program of the same type, or nothing.
            unsafe { DELIVER_CALLS.tail_call(ctx, A::DELIVER_SLOT) };
            unjudged()
        }
        _ => action,
    }
}

/// [`fall_back`] for a failed jump to the judging program. Out of line: in
/// the entry point, the counter's key would grow its frame, which is the
/// first of the 512-byte chain to the verdict entries.
#[inline(never)]
fn unjudged() -> i32 {
    fall_back(Fallback::Unjudged)
}

/// Not a tc action: "to the stack, with the container's own source" (see
/// [`to_stack_as_sent`]).
const STACK_ANSWERS: i32 = 0x100;

/// Not a tc action: "to the container the control block names, once its
/// inbound policy judged the packet" (see [`to_be_judged`]).
const TO_BE_JUDGED: i32 = 0x200;

/// The fast path's decision for an IPv4 packet (see [`forward4`]). Out of
/// line, called by an entry point whose frame is tiny (its own stages are
/// out of line too): the chain from here down to the receiving container's
/// verdict entries is as deep as the stack allows.
#[inline(never)]
fn route4(ctx: &TcContext, origin: Origin, carried: CarriedVerdict) -> i32 {
    let Some(cfg) = crate::maps::config() else { return TC_ACT_OK as i32 };
    // Off, only a container's packet leaving the host with a translated
    // source is looked at (see `to_stack_as_sent`).
    let fast = cfg.has(CFG_F_FAST_PATH);
    if !fast && origin == Origin::Uplink {
        return TC_ACT_OK as i32;
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return TC_ACT_OK as i32;
    }
    if !fast && !answerable_by_stack::<[u8; 4]>(ctx, ip.ttl) {
        return TC_ACT_OK as i32;
    }
    // A routed hop: the frame is addressed to the host (the uplink's MAC,
    // or the bridge's, which is the containers' gateway). A container's
    // frame to another container's MAC is switched, as the bridge would:
    // no TTL change.
    let routed = match origin {
        // SAFETY: the context pointer is valid for the program's run.
        Origin::Uplink => (unsafe { (*ctx.skb.skb).pkt_type }) == PACKET_HOST,
        Origin::Container => mac_eq(&eth.dst_addr, &cfg.gateway_mac),
    };
    let dst = ip.dst_addr;
    if cfg.in_subnet4(dst) {
        if !fast {
            return TC_ACT_OK as i32;
        }
        return to_container_at(ctx, cfg, dst, (origin, routed, &eth.dst_addr), ip.ttl, carried);
    }
    if origin == Origin::Container && routed && unsafe { HOST_ADDRS4.get(&dst) }.is_none() {
        if !fast && cfg.in_subnet4(ip.src_addr) {
            return TC_ACT_OK as i32;
        }
        if ip.ttl <= 1 {
            return to_stack_as_sent::<[u8; 4]>(ctx, Fallback::TtlExpiring, fast);
        }
        let tot_len = u16::from_be_bytes(ip.tot_len);
        let mtu_len = mtu_checked_len(ctx, ip_hdr_len(ip.vihl), ip.proto == IPPROTO_TCP, tot_len);
        if cfg.has(CFG_F_ROUTE_MTUS4) && route_mtu_exceeded4(dst, mtu_len) {
            return to_stack_as_sent::<[u8; 4]>(ctx, Fallback::MtuExceeded, fast);
        }
        return to_host_interface(ctx, ip.src_addr, dst, mtu_len, fast);
    }
    TC_ACT_OK as i32
}

/// [`route4`] for IPv6. Link-scoped destinations (link-local, the link's
/// multicast) never leave the link: they go to the stack.
#[inline(never)]
fn route6(ctx: &TcContext, origin: Origin, carried: CarriedVerdict) -> i32 {
    let Some(cfg) = crate::maps::config() else { return TC_ACT_OK as i32 };
    // Off, only a container's packet leaving the host with a translated
    // source is looked at (see `to_stack_as_sent`).
    let fast = cfg.has(CFG_F_FAST_PATH);
    if !fast && origin == Origin::Uplink {
        return TC_ACT_OK as i32;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return TC_ACT_OK as i32 };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &*eth };
    if eth.ether_type != EtherType::Ipv6 as u16 {
        return TC_ACT_OK as i32;
    }
    // The destination is copied out of the packet in place, not through
    // `bpf_skb_load_bytes` (a helper call and a copy on every container's
    // IPv6 packet). The chain down to the receiving container's policy is
    // at the 512-byte stack limit, so the frame is what decides the form:
    // the destination and the hop limit read apart give a 200-byte frame
    // in as many instructions as one read of both, which, as a pair or
    // through one header reference, gave 208 and 216.
    let Some(dst) = crate::ipv6::fixed_header(ctx).map(|ip| In6Addr::from_octets(ip.dst_addr)) else {
        return TC_ACT_OK as i32;
    };
    let Some(hop_limit) = crate::ipv6::fixed_header(ctx).map(|ip| ip.hop_limit) else { return TC_ACT_OK as i32 };
    if !fast && !answerable_by_stack::<In6Addr>(ctx, hop_limit) {
        return TC_ACT_OK as i32;
    }
    let routed = match origin {
        // SAFETY: the context pointer is valid for the program's run.
        Origin::Uplink => (unsafe { (*ctx.skb.skb).pkt_type }) == PACKET_HOST,
        Origin::Container => mac_eq(&eth.dst_addr, &cfg.gateway_mac),
    };
    if dst.link_scoped() {
        return TC_ACT_OK as i32;
    }
    if cfg.in_subnet6(dst) {
        if !fast {
            return TC_ACT_OK as i32;
        }
        return to_container_at(ctx, cfg, dst, (origin, routed, &eth.dst_addr), hop_limit, carried);
    }
    if origin == Origin::Container && routed && !dst.is_host_addr() {
        let Some((src, payload_len, next_header)) =
            crate::ipv6::fixed_header(ctx).map(|ip| (In6Addr::from_octets(ip.src_addr), ip.payload_len, ip.next_hdr))
        else {
            return TC_ACT_OK as i32;
        };
        if !fast && cfg.in_subnet6(src) {
            return TC_ACT_OK as i32;
        }
        if hop_limit <= 1 {
            return to_stack_as_sent::<In6Addr>(ctx, Fallback::TtlExpiring, fast);
        }
        let tot_len = u16::from_be_bytes(payload_len).saturating_add(IP6_HDR_LEN);
        // TCP right after the fixed header; behind extension headers the
        // whole length is checked.
        let mtu_len = mtu_checked_len(ctx, IP6_HDR_LEN as usize, next_header == IPPROTO_TCP, tot_len);
        return to_host_interface6(ctx, src, dst, mtu_len, fast);
    }
    TC_ACT_OK as i32
}

/// To the container with address `dst`, if there is one and the frame
/// (`how`: where it came from, routed, its destination MAC) is for it:
/// routed through the host, or switched to the container's own MAC.
#[inline(always)]
fn to_container_at<A: Hop>(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    dst: A,
    how: (Origin, bool, &[u8; 6]),
    hop_limit: u8,
    carried: CarriedVerdict,
) -> i32 {
    let (origin, routed, dst_mac) = how;
    let Some(target) = dst.container_ifindex().and_then(|ifindex| CONTAINERS.get_ptr(ifindex)) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: map value pointer, valid during the run.
    let target = unsafe { &*target };
    let switched = origin == Origin::Container && mac_eq(dst_mac, &target.mac);
    if !routed && !switched {
        return TC_ACT_OK as i32;
    }
    to_container::<A>(ctx, cfg, target, routed, hop_limit, carried)
}

/// Into `target`'s `eth0`, if its inbound policy allowed the flow already
/// (the verdict the translating stage `carried`, or a lookup; counted on
/// its veth, as its egress program would), redirected to the veth's peer.
#[inline(always)]
fn to_container<A: Hop>(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    target: &ContainerEntry,
    routed: bool,
    hop_limit: u8,
    carried: CarriedVerdict,
) -> i32 {
    if routed && hop_limit <= 1 {
        return fall_back(Fallback::TtlExpiring);
    }
    // Too big: the stack fragments it, or tells the sender the path MTU.
    if !fits_every_link::<A>(ctx) {
        let mut mtu_len = 0u32;
        // SAFETY: the helper reads the skb and writes `mtu_len`.
        let mtu = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, target.ifindex, &mut mtu_len, 0, 0) };
        if mtu < 0 {
            return fall_back(Fallback::NoInterface);
        }
        if mtu != 0 {
            return fall_back(Fallback::MtuExceeded);
        }
    }
    if !policy::allowed_inbound::<A>(ctx, target, cfg, carried) {
        return to_be_judged(ctx, target.ifindex, routed);
    }
    if !receive::counted(ctx, target, Ok(())) {
        return TC_ACT_SHOT as i32;
    }
    hand_to::<A>(ctx, cfg, target, routed, Redirect::ToContainer)
}

/// Into `target`'s `eth0`, once passed and counted on its veth (see
/// [`receive`]): the hop applied if `routed`, redirected to the veth's
/// peer and counted as `how`.
#[inline(always)]
fn hand_to<A: Hop>(ctx: &TcContext, cfg: &DatapathConfig, target: &ContainerEntry, routed: bool, how: Redirect) -> i32 {
    if routed && route_hop::<A>(ctx, &target.mac, &cfg.gateway_mac).is_err() {
        // Counted as the write failure it is, on the container it was for.
        crate::stats::count_drop(crate::stats::StatsSlot::of(target), DropReason::WriteFailed);
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: a helper call; the result is the tc action.
    let action = unsafe { bpf_redirect_peer(target.ifindex, 0) } as i32;
    if action == TC_ACT_REDIRECT as i32 {
        count(how);
    }
    action
}

/// Leaves the receiving container (its veth `ifindex`) and whether the hop
/// is routed in the skb's control block (words 2 and 3; 0 and 1 carry a
/// translated flow's verdict to the IPv6 fast path) for the family's
/// judging program, which the entry point jumps to ([`settle`]).
#[inline(always)]
fn to_be_judged(ctx: &TcContext, ifindex: u32, routed: bool) -> i32 {
    // SAFETY: the context's skb is valid for the program's run, and tc
    // programs may write its control block.
    unsafe {
        (*ctx.skb.skb).cb[2] = ifindex;
        (*ctx.skb.skb).cb[3] = routed as u32;
    }
    TO_BE_JUDGED
}

/// The judging program's body (`deliver4`, `deliver6`): the packet
/// [`to_be_judged`] left for a container without a verdict for its flow is
/// judged by the container's inbound policy, as its veth's egress program
/// would once the stack took it there (new flows remembered, a verdict of
/// older rules judged again, fragments and ICMP errors by their flows),
/// then handed to it, or dropped and counted on its veth. What the fast
/// path checked before (hop limit, the container's MTU) holds: nothing
/// changed the packet since.
#[inline(always)]
pub fn judge_and_deliver<A: Hop>(ctx: &TcContext) -> i32 {
    let (ifindex, routed) = match ctx.cb() {
        [_, _, ifindex, routed, ..] => (*ifindex, *routed != 0),
        _ => return fall_back(Fallback::Unjudged),
    };
    let (Some(cfg), Some(target)) = (crate::maps::config(), CONTAINERS.get_ptr(ifindex)) else {
        return fall_back(Fallback::NoInterface);
    };
    // SAFETY: map value pointer, valid during the run.
    let target = unsafe { &*target };
    if !receive::judged::<A>(ctx, target, cfg) {
        return TC_ACT_SHOT as i32;
    }
    hand_to::<A>(ctx, cfg, target, routed, Redirect::ToContainerJudged)
}

/// Does the packet fit every interface its family runs on, whatever its
/// MTU? Then no MTU needs looking up (the helper calls are for longer
/// packets). The skb's length is the whole of a GSO packet's segments,
/// so a GSO packet never does.
#[inline(always)]
fn fits_every_link<A: Hop>(ctx: &TcContext) -> bool {
    ctx.len() <= A::MIN_LINK_MTU + EthHdr::LEN as u32
}

/// With the fast path off, all a container's packet is looked at for is
/// whether the stack will answer it with an ICMP error instead of
/// forwarding it (see [`to_stack_as_sent`]): its hop limit runs out here,
/// or it may be too big for its route. Not so for one with hops to spare
/// that fits every link, which therefore needs no lookup at all.
#[inline(always)]
fn answerable_by_stack<A: Hop>(ctx: &TcContext, hop_limit: u8) -> bool {
    hop_limit <= 1 || !fits_every_link::<A>(ctx)
}

/// The length the route's MTU is checked against: the packet's own
/// (`tot_len`), or for a TCP packet that stands for several segments (GSO:
/// a stream's writes reach the host as packets of up to 64 KiB, cut into
/// segments on the way out) each segment's, which is what the stack's
/// forwarding checks (`skb_gso_validate_network_len`). Checked whole, such
/// a packet always exceeded the MTU, and every bulk transfer out of a
/// container took the stack. `l3_len` is the network header's length, `tcp`
/// whether TCP follows it; GSO packets of other protocols (UDP
/// segmentation, tunnels, whose segments' headers differ) are checked
/// whole, and take the stack.
#[inline(always)]
fn mtu_checked_len(ctx: &TcContext, l3_len: usize, tcp: bool, tot_len: u16) -> u16 {
    // SAFETY: the context pointer is valid for the program's run.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 || !tcp {
        return tot_len;
    }
    // The mask bounds the offset for the verifier (an IPv4 header is at
    // most 60 bytes, IPv6's fixed one 40) and changes nothing.
    let l3_len = l3_len & 0x3c;
    let Ok(doff) = load::<u8>(ctx, EthHdr::LEN + l3_len + TCP_DOFF_OFF) else { return tot_len };
    let segment = (l3_len + tcp_hdr_len(doff)) as u32 + gso_size;
    segment.min(u16::MAX as u32) as u16
}

/// Is `len` more than the MTU of the route to `dst`, where that route has
/// one of its own (`ROUTE_MTUS4`, which the agent keeps from the host's
/// routing tables, see netpath_userspace::route_mtu)? IPv4's forwarding honours a route's MTU
/// (`ip route ... mtu N`), while `bpf_fib_lookup` checks only a locked one
/// and the interface's: without this the fast path sent what the stack
/// would have refused. (IPv6's forwarding honours only a locked one too,
/// as the lookup does.)
#[inline(always)]
fn route_mtu_exceeded4(dst: [u8; 4], len: u16) -> bool {
    ROUTE_MTUS4.get(&Key::new(32, dst)).is_some_and(|mtu| *mtu != 0 && len as u32 > *mtu)
}

/// Out of the host interface the routing table picks for `dst` (`fast`:
/// with the fast path off only the lookup's MTU answer counts). Out of
/// line: the lookup's parameters are 64 bytes of stack.
#[inline(never)]
fn to_host_interface(ctx: &TcContext, src: [u8; 4], dst: [u8; 4], tot_len: u16, fast: bool) -> i32 {
    // Zero is every field's "unset".
    let mut fib = MaybeUninit::uninit();
    let fib: &mut FibParams = zero::zeroed_in(&mut fib);
    fib.family = AF_INET;
    fib.__bindgen_anon_1.tot_len = tot_len;
    // SAFETY: the context pointer is valid for the program's run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: the helper reads the skb and fills `fib`.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb as *mut _, fib, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_FRAG_NEEDED => to_stack_as_sent::<[u8; 4]>(ctx, Fallback::MtuExceeded, fast),
        // Off: the stack routes it.
        _ if !fast => TC_ACT_OK as i32,
        BPF_FIB_LKUP_RET_SUCCESS => {
            if route_hop::<[u8; 4]>(ctx, &fib.dmac, &fib.smac).is_err() {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: a helper call; the result is the tc action.
            let action = unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
            redirected(action, Redirect::ToHost)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            if <[u8; 4]>::decrement_hop_limit(ctx).is_err() {
                return TC_ACT_SHOT as i32;
            }
            let mut nh = MaybeUninit::uninit();
            let nh: &mut bpf_redir_neigh = zero::zeroed_in(&mut nh);
            nh.nh_family = AF_INET as u32;
            // SAFETY: the lookup wrote the next hop into the destination.
            nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: a helper call; the result is the tc action.
            let action = unsafe { bpf_redirect_neigh(fib.ifindex, nh, size, 0) } as i32;
            redirected(action, Redirect::ToHostResolving)
        }
        _ => fall_back(Fallback::NoRoute),
    }
}

/// [`to_host_interface`] for IPv6.
#[inline(never)]
fn to_host_interface6(ctx: &TcContext, src: In6Addr, dst: In6Addr, tot_len: u16, fast: bool) -> i32 {
    // Zero is every field's "unset".
    let mut fib = MaybeUninit::uninit();
    let fib: &mut FibParams = zero::zeroed_in(&mut fib);
    fib.family = AF_INET6;
    fib.__bindgen_anon_1.tot_len = tot_len;
    // SAFETY: the context pointer is valid for the program's run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib.__bindgen_anon_3.ipv6_src = src.0;
    fib.__bindgen_anon_4.ipv6_dst = dst.0;
    // SAFETY: the helper reads the skb and fills `fib`.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb as *mut _, fib, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_FRAG_NEEDED => to_stack_as_sent::<In6Addr>(ctx, Fallback::MtuExceeded, fast),
        _ if !fast => TC_ACT_OK as i32,
        BPF_FIB_LKUP_RET_SUCCESS => {
            if route_hop::<In6Addr>(ctx, &fib.dmac, &fib.smac).is_err() {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: a helper call; the result is the tc action.
            let action = unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
            redirected(action, Redirect::ToHost)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            if In6Addr::decrement_hop_limit(ctx).is_err() {
                return TC_ACT_SHOT as i32;
            }
            let mut nh = MaybeUninit::uninit();
            let nh: &mut bpf_redir_neigh = zero::zeroed_in(&mut nh);
            nh.nh_family = AF_INET6 as u32;
            // SAFETY: the lookup wrote the next hop into the destination.
            nh.__bindgen_anon_1.ipv6_nh = unsafe { fib.__bindgen_anon_4.ipv6_dst };
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: a helper call; the result is the tc action.
            let action = unsafe { bpf_redirect_neigh(fib.ifindex, nh, size, 0) } as i32;
            redirected(action, Redirect::ToHostResolving)
        }
        _ => fall_back(Fallback::NoRoute),
    }
}

#[inline(always)]
fn redirected(action: i32, how: Redirect) -> i32 {
    if action == TC_ACT_REDIRECT as i32 {
        count(how);
        action
    } else {
        // The packet was already changed for the hop (TTL, MACs): it cannot
        // go to the stack as it is.
        fall_back(Fallback::RedirectFailed);
        TC_ACT_SHOT as i32
    }
}

/// What routing does to a frame on a hop: TTL down by one, the next hop's
/// MAC as destination and the outgoing interface's as source. Written in
/// place, not through `bpf_skb_store_bytes` and `bpf_l3_csum_replace`:
/// three helper calls fewer on every routed packet. (The headers are in the
/// linear data: the routing decision read them there.)
#[inline(always)]
fn route_hop<A: Hop>(ctx: &TcContext, dmac: &[u8; 6], smac: &[u8; 6]) -> Result<(), DropReason> {
    A::decrement_hop_limit(ctx)?;
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0).ok_or(DropReason::WriteFailed)?;
    // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
    unsafe {
        (*eth).dst_addr = *dmac;
        (*eth).src_addr = *smac;
    }
    Ok(())
}

/// A container's packet that the stack answers with an ICMP error rather
/// than forwards (its TTL runs out here; it is too big for the route, and
/// may not be fragmented), to the stack, counted. If its veth translated its
/// source (a masqueraded flow, a published port's reply), it gets the
/// container's back first ([`STACK_ANSWERS`]): the error went to the
/// translated source, the host's own address, and was lost there, so that
/// the container never learned a smaller MTU on the way (a VPN's
/// interface, a route with `mtu lock`) and its TCP stalled. Whatever else
/// falls back keeps its translation: the stack forwards it (fragmented),
/// and a packet leaving by another interface than the uplink is never
/// translated again. With the fast path off (`fast`) the same holds,
/// uncounted.
#[inline(always)]
fn to_stack_as_sent<A: Hop>(ctx: &TcContext, why: Fallback, fast: bool) -> i32 {
    if fast {
        fall_back(why);
    }
    if A::answered_by_stack(ctx, why) {
        STACK_ANSWERS
    } else {
        TC_ACT_OK as i32
    }
}

/// What a routed hop changes in a family's header, and the family's
/// judging program.
pub trait Hop: Family {
    /// Its slot in `DELIVER_CALLS`.
    const DELIVER_SLOT: u32;
    /// The least MTU of any interface the family runs on: IPv4 needs 68
    /// bytes (RFC 791; Linux drops an interface's IPv4 below it), IPv6 1280
    /// (RFC 8200; Linux drops an interface's IPv6 below it, and its
    /// forwarding never reports a path MTU below it either).
    const MIN_LINK_MTU: u32;

    fn decrement_hop_limit(ctx: &TcContext) -> Result<(), DropReason>;

    /// Does the stack answer a packet that fell back for `why` with an
    /// ICMP error instead of forwarding it?
    fn answered_by_stack(ctx: &TcContext, why: Fallback) -> bool;
}

impl Hop for [u8; 4] {
    const DELIVER_SLOT: u32 = DELIVER4;
    const MIN_LINK_MTU: u32 = 68;
    /// TTL minus one, with the header checksum updated for the 16-bit word
    /// the TTL shares with the protocol (RFC 1624; the IPv4 header checksum
    /// is always whole in the header, whatever the skb's checksum state).
    #[inline(always)]
    fn decrement_hop_limit(ctx: &TcContext) -> Result<(), DropReason> {
        let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, EthHdr::LEN).ok_or(DropReason::WriteFailed)?;
        // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
        let ip = unsafe { &mut *ip };
        let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.check = checksum::replace2(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
        Ok(())
    }

    /// Too big, it is fragmented unless its sender said "don't fragment".
    #[inline(always)]
    fn answered_by_stack(ctx: &TcContext, why: Fallback) -> bool {
        match why {
            Fallback::TtlExpiring => true,
            Fallback::MtuExceeded => load::<u8>(ctx, EthHdr::LEN + IP_FRAGS_OFF).is_ok_and(|b| b & IP_DF != 0),
            _ => false,
        }
    }
}

impl Hop for In6Addr {
    const DELIVER_SLOT: u32 = DELIVER6;
    const MIN_LINK_MTU: u32 = 1280;
    /// The hop limit minus one (IPv6 has no header checksum).
    #[inline(always)]
    fn decrement_hop_limit(ctx: &TcContext) -> Result<(), DropReason> {
        let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, EthHdr::LEN).ok_or(DropReason::WriteFailed)?;
        // SAFETY: bounds checked by ptr_at_mut; tc programs may write packet data.
        unsafe { (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1) };
        Ok(())
    }

    /// A router never fragments IPv6: a packet too big gets "packet too big".
    #[inline(always)]
    fn answered_by_stack(_ctx: &TcContext, why: Fallback) -> bool {
        matches!(why, Fallback::TtlExpiring | Fallback::MtuExceeded)
    }
}

#[inline(always)]
fn fall_back(why: Fallback) -> i32 {
    if let Some(stats) = FORWARD_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        if let Some(n) = unsafe { &mut *stats }.fallbacks.get_mut(slot(why as u32)) {
            *n += 1;
        }
    }
    TC_ACT_OK as i32
}

#[inline(always)]
fn count(how: Redirect) {
    if let Some(stats) = FORWARD_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        if let Some(n) = unsafe { &mut *stats }.redirected.get_mut(slot(how as u32)) {
            *n += 1;
        }
    }
}

/// An index the verifier sees bounds-checked (see `stats::drop_slot`).
#[inline(always)]
fn slot(raw: u32) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw) as usize }
}
