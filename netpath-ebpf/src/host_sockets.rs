//! The host's own sockets, as the masquerade sees them: a port that a host
//! socket uses towards a destination (a listener, a bound or connected
//! socket) is never handed to a container's flow, or the destination's
//! answers would be taken from that socket.

use aya_ebpf::{
    bindings::bpf_sock_tuple,
    helpers::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
    EbpfContext as _,
};
use netpath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    AddrFamily, CtKey,
};

/// The IPv4 (`[u8; 4]`) or IPv6 (`In6Addr`) member of `struct
/// bpf_sock_tuple` (addresses and ports in network byte order).
#[repr(C)]
struct SockTuple<A> {
    saddr: A,
    daddr: A,
    sport: u16,
    dport: u16,
}

/// The network namespace of the packet's device (`BPF_F_CURRENT_NETNS`).
const CURRENT_NETNS: u64 = u64::MAX;

/// Would the packet with tuple `incoming` (a destination answering a
/// translated flow) reach a socket of the host? TCP and UDP only.
///
/// Out of line: the lookup's tuple needs its own bit of stack, and this
/// runs only while a port is picked for a new flow.
#[inline(never)]
pub fn owns<A: AddrFamily>(ctx: &TcContext, incoming: &CtKey<A>) -> bool {
    let mut tuple =
        SockTuple { saddr: incoming.saddr, daddr: incoming.daddr, sport: incoming.sport, dport: incoming.dport };
    // The helpers tell the family by the size: 12 bytes IPv4, 36 IPv6.
    let size = core::mem::size_of::<SockTuple<A>>() as u32;
    let tuple = &mut tuple as *mut SockTuple<A> as *mut bpf_sock_tuple;
    // SAFETY: the helpers read `size` bytes of the tuple; a socket they
    // return is released before we go on, as the verifier demands.
    unsafe {
        let sk = if incoming.proto == IPPROTO_TCP {
            bpf_sk_lookup_tcp(ctx.as_ptr(), tuple, size, CURRENT_NETNS, 0)
        } else if incoming.proto == IPPROTO_UDP {
            bpf_sk_lookup_udp(ctx.as_ptr(), tuple, size, CURRENT_NETNS, 0)
        } else {
            return false;
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk as *mut _);
        true
    }
}
