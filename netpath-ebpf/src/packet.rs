//! Bounds-checked access to packet bytes, shared by tc and XDP programs.

use aya_ebpf::programs::{TcContext, XdpContext};
use netpath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    DropReason,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::offsets::{ip_hdr_len, IPV4_MAX_HDR_LEN, IP_DF};

/// What the parsers need from a program context.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole frame (for tc, including non-linear parts).
    fn frame_len(&self) -> u32;
    /// Whether the frame stands for several segments (GSO): only then may
    /// an IPv4 total length of 0 mean "longer than 64 KiB" (BIG TCP).
    fn is_gso(&self) -> bool;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.len()
    }
    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { (*self.skb.skb).gso_size != 0 }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn is_gso(&self) -> bool {
        false
    }
}

/// A pointer to a `T` at `offset`, or `None` if it would run past the end of
/// the linear data. The check is written the way the verifier can follow.
#[inline(always)]
pub fn ptr_at<T>(pkt: &impl Packet, offset: usize) -> Option<*const T> {
    let start = pkt.data();
    let end = pkt.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// [`ptr_at`] for writing (tc programs only: XDP's callers read).
#[inline(always)]
pub fn ptr_at_mut<T>(pkt: &impl Packet, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(pkt, offset).map(|p| p as *mut T)
}

/// Enough to see Ethernet, IPv4 with the longest options and a TCP header
/// directly (IPv6's fixed header and TCP are shorter; its extension headers
/// are read with loads).
const HEADERS_LEN: u32 = (EthHdr::LEN + IPV4_MAX_HDR_LEN + TcpHdr::LEN) as u32;
const _: () = assert!(EthHdr::LEN + Ipv6Hdr::LEN + TcpHdr::LEN <= HEADERS_LEN as usize);

/// Makes sure the headers (or the whole frame, if shorter) are in the
/// linear part of the skb, so that direct access sees them.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    let want = HEADERS_LEN;
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < want && ctx.len() > linear && !l4_header_linear(ctx) {
        let len = if ctx.len() < want { ctx.len() } else { want };
        // Failure leaves the skb as it was; the parsers then see a short
        // frame and treat it as malformed.
        let _ = ctx.pull_data(len);
    }
}

/// Are Ethernet, the IP header and the TCP or UDP header behind it (the
/// headers the parsers read directly) in the linear part already? A local
/// socket's packet carries exactly its headers there and its payload in
/// pages: pulling more would copy the head (a TCP segment's is shared with
/// the socket's copy kept for retransmission) for bytes nothing reads.
/// Anything else (ICMP, whose errors quote headers; fragments; IPv6 with
/// extension headers) is pulled.
#[inline(always)]
fn l4_header_linear(ctx: &TcContext) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return false };
    // SAFETY: bounds checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    let (l4_off, proto) = if ether_type == EtherType::Ipv4 as u16 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else { return false };
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        if ip.frags[0] & !IP_DF != 0 || ip.frags[1] != 0 {
            return false;
        }
        (EthHdr::LEN + ip_hdr_len(ip.vihl), ip.proto)
    } else if ether_type == EtherType::Ipv6 as u16 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else { return false };
        // SAFETY: as above.
        (EthHdr::LEN + Ipv6Hdr::LEN, unsafe { (*ip).next_hdr })
    } else {
        return false;
    };
    let l4_len = match proto {
        IPPROTO_TCP => TcpHdr::LEN,
        IPPROTO_UDP => UdpHdr::LEN,
        _ => return false,
    };
    ctx.data() + l4_off + l4_len <= ctx.data_end()
}

// The skb helpers the rewrites use, each with the drop reason its failure
// counts as, written once here.

/// Reads a `T` at `offset`; headers that should be there and are not make
/// the packet malformed.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, DropReason> {
    ctx.load::<T>(offset).map_err(|_| DropReason::Malformed)
}

/// Writes `v` at `offset`.
#[inline(always)]
pub fn store<T>(ctx: &TcContext, offset: usize, v: &T) -> Result<(), DropReason> {
    ctx.store(offset, v, 0).map_err(|_| DropReason::WriteFailed)
}

/// `bpf_l3_csum_replace`: the checksum at `offset` after a field of the
/// size in `flags` changed from `from` to `to`.
#[inline(always)]
pub fn l3_csum_replace(ctx: &TcContext, offset: usize, from: u64, to: u64, flags: u64) -> Result<(), DropReason> {
    ctx.l3_csum_replace(offset, from, to, flags).map_err(|_| DropReason::ChecksumFailed)
}

/// `bpf_l4_csum_replace`, likewise (`flags` may add the pseudo-header and
/// the UDP zero-checksum marks).
#[inline(always)]
pub fn l4_csum_replace(ctx: &TcContext, offset: usize, from: u64, to: u64, flags: u64) -> Result<(), DropReason> {
    ctx.l4_csum_replace(offset, from, to, flags).map_err(|_| DropReason::ChecksumFailed)
}

/// The interface the tc program runs on (for ingress, the one the packet
/// came in by).
#[inline(always)]
pub fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Is the frame IPv6 (by its EtherType)?
#[inline(always)]
pub fn is_ipv6(pkt: &impl Packet) -> bool {
    match ptr_at::<EthHdr>(pkt, 0) {
        // SAFETY: bounds checked by ptr_at.
        Some(eth) => (unsafe { (*eth).ether_type }) == EtherType::Ipv6 as u16,
        None => false,
    }
}

#[inline(always)]
pub fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    // Byte by byte: an array `==` may lower to a memcmp call, which BPF lacks.
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}

#[inline(always)]
pub fn ipv4_eq(a: &[u8; 4], b: &[u8; 4]) -> bool {
    u32::from_ne_bytes(*a) == u32::from_ne_bytes(*b)
}
