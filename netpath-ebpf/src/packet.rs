//! Bounds-checked access to packet bytes, shared by tc and XDP programs.

use aya_ebpf::programs::{TcContext, XdpContext};

/// What the parsers need from a program context.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole frame (for tc, including non-linear parts).
    fn frame_len(&self) -> u32;
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

/// Makes sure the first `want` bytes (or the whole frame, if shorter) are in
/// the linear part of the skb, so that direct access sees the headers.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext, want: u32) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < want && ctx.len() > linear {
        let len = if ctx.len() < want { ctx.len() } else { want };
        // Failure leaves the skb as it was; the parsers then see a short
        // frame and treat it as malformed.
        let _ = ctx.pull_data(len);
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
