//! Incremental Internet checksum updates (RFC 1624) for checksums the
//! kernel helpers cannot reach (those inside the packet an ICMP error
//! quotes, IPv4's header checksum), and the difference an IPv6 address
//! change makes, which the L4 helper then applies. Words are taken in
//! memory order throughout, which one's complement arithmetic allows as
//! long as it is consistent.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word changes from `old` to `new`:
/// HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// The checksum after a 32-bit field (an address) changes.
#[inline(always)]
pub fn replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = replace2(check, u16::from_ne_bytes([old[0], old[1]]), u16::from_ne_bytes([new[0], new[1]]));
    replace2(c, u16::from_ne_bytes([old[2], old[3]]), u16::from_ne_bytes([new[2], new[3]]))
}

/// The one's complement difference (a `__wsum`, what `bpf_csum_diff`
/// returns) that turns a sum over `old`'s 32-bit words into one over
/// `new`'s: an IPv6 address change as one amount, which
/// `bpf_l4_csum_replace` applies in one call (field size 0) rather than
/// one call per word.
#[inline(always)]
pub fn diff_words(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut sum: u64 = 0;
    for i in 0..4 {
        sum += (!old[i]) as u64 + new[i] as u64;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}
