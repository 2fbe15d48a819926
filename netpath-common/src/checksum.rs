//! Incremental Internet checksum updates (RFC 1624), and what the kernel's
//! L4 checksum helper showed of an skb's checksum state. Shared so that
//! the arithmetic the datapath relies on is tested here against a model of
//! the kernel's own (`inet_proto_csum_replace_by_diff`). Words are taken in
//! memory order throughout, which one's complement arithmetic allows as
//! long as it is consistent.

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word changes from `old` to `new`:
/// HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u64 + (!old) as u64 + new as u64)
}

/// The checksum after a 32-bit field (an address) changes.
#[inline(always)]
pub fn replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = replace2(check, u16::from_ne_bytes([old[0], old[1]]), u16::from_ne_bytes([new[0], new[1]]));
    replace2(c, u16::from_ne_bytes([old[2], old[3]]), u16::from_ne_bytes([new[2], new[3]]))
}

/// The one's complement difference (a `__wsum`, what `bpf_csum_diff`
/// returns) that turns a sum over `old`'s 32-bit words into one over
/// `new`'s: an address change as one amount, which `bpf_l4_csum_replace`
/// applies in one call (field size 0).
#[inline(always)]
pub fn diff_words<const N: usize>(old: &[u32; N], new: &[u32; N]) -> u32 {
    let mut sum: u64 = 0;
    for i in 0..N {
        sum += (!old[i]) as u64 + new[i] as u64;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// What the L4 checksum field of an skb holds, as far as the program
/// knows. The kernel's helper knows (`skb->ip_summed`), the program cannot
/// read it; but the helper moves the field in opposite directions for a
/// pseudo-header change in the two cases, so one such call shows it (see
/// [`PseudoChange`]), and later changes of the same packet that
/// are not in the pseudo-header (ports) can be written without a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum L4Sum {
    /// The whole checksum (CHECKSUM_NONE, _UNNECESSARY, _COMPLETE): a port
    /// change is folded into it (RFC 1624). A COMPLETE skb's own sum needs
    /// nothing for it: the port and the field change by opposite amounts.
    Full,
    /// Only the pseudo-header's sum, the rest to be added by whoever
    /// finishes the checksum (CHECKSUM_PARTIAL, a local socket's packet
    /// with the NIC's offload): a port change leaves it alone.
    PseudoOnly,
    /// Not known (no pseudo-header change yet, a UDP datagram without a
    /// checksum, a change both cases take alike): the helper decides.
    Unknown,
}

/// What the L4 checksum field will read after `bpf_l4_csum_replace`
/// applies a pseudo-header change to it, in either case: for the whole
/// checksum the helper folds the change in the RFC 1624 way (`~(~sum +
/// diff)`), for a pseudo-header sum it adds it (`sum + diff`). Worked out
/// before the call, so that only one register (both values packed) lives
/// across it.
#[derive(Clone, Copy, Debug)]
pub struct PseudoChange(u32);

impl PseudoChange {
    /// Nothing to tell the two cases apart by (both values alike).
    pub const UNKNOWN: PseudoChange = PseudoChange(0);

    /// The change of `diff` (a `__wsum` amount, [`diff_words`]) to a field
    /// that reads `before`. Unknown where the two cases cannot be told
    /// apart by their values alone: a field or a change of zero (either of
    /// one's complement's two), for which both cases give the same number,
    /// written either way.
    #[inline(always)]
    pub fn of(before: u16, diff: u32) -> PseudoChange {
        let zero = |x: u16| x.wrapping_add(1) <= 1;
        if zero(before) || zero(fold(diff as u64)) {
            return PseudoChange::UNKNOWN;
        }
        let full = !fold((!before) as u64 + diff as u64);
        let pseudo_only = fold(before as u64 + diff as u64);
        PseudoChange((full as u32) << 16 | pseudo_only as u32)
    }

    /// What the field reading `after` the call shows.
    #[inline(always)]
    pub fn shown_by(self, after: u16) -> L4Sum {
        let (full, pseudo_only) = ((self.0 >> 16) as u16, self.0 as u16);
        if full == pseudo_only {
            L4Sum::Unknown
        } else if after == full {
            L4Sum::Full
        } else if after == pseudo_only {
            L4Sum::PseudoOnly
        } else {
            L4Sum::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Are `a` and `b` the same one's complement number (0x0000 and 0xffff
    /// are both zero, and the kernel's folding may give either)?
    fn same(a: u16, b: u16) -> bool {
        a == b || (a.wrapping_add(1) <= 1 && b.wrapping_add(1) <= 1)
    }

    /// The kernel's `inet_proto_csum_replace_by_diff` for a pseudo-header
    /// change (net/core/utils.c), with `bpf_l4_csum_replace`'s
    /// BPF_F_MARK_MANGLED_0 handling, as a model: `partial` is
    /// `skb->ip_summed == CHECKSUM_PARTIAL`.
    fn kernel_pseudo_change(sum: u16, diff: u32, partial: bool, udp: bool) -> u16 {
        if udp && sum == 0 {
            return 0;
        }
        let csum_fold = |x: u64| !fold(x);
        let unfolded = sum as u64;
        let out =
            if !partial { csum_fold(diff as u64 + (!unfolded & 0xffff)) } else { !csum_fold(unfolded + diff as u64) };
        if udp && out == 0 {
            0xffff
        } else {
            out
        }
    }

    /// The kernel's non-pseudo 16-bit change (`inet_proto_csum_replace2`
    /// with pseudohdr false): the field only when it is the whole checksum.
    fn kernel_port_change(sum: u16, old: u16, new: u16, partial: bool, udp: bool) -> u16 {
        if partial || (udp && sum == 0) {
            return sum;
        }
        let out = !fold((!sum) as u64 + (!old) as u64 + new as u64);
        if udp && out == 0 {
            0xffff
        } else {
            out
        }
    }

    /// The Internet checksum of `bytes`, as the header holds it (memory
    /// order words, as the datapath reads them).
    fn checksum_of(bytes: &[u8]) -> u16 {
        !fold(bytes.chunks(2).map(|w| u16::from_ne_bytes([w[0], w[1]]) as u64).sum())
    }

    #[test]
    fn an_address_replaced_gives_the_checksum_computed_afresh() {
        let mut header =
            [0x45u8, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0, 0, 192, 168, 0, 1, 192, 168, 0, 199];
        let check = checksum_of(&header);
        let (old, new) = ([192, 168, 0, 199], [10, 88, 0, 2]);
        header[16..20].copy_from_slice(&new);
        assert!(same(replace4(check, old, new), checksum_of(&header)));
    }

    #[test]
    fn a_pseudo_header_change_shows_which_sum_the_field_holds() {
        // Sums, address changes and ports across the range, the edges
        // included.
        let sums = [0x0000u16, 0x0001, 0x1234, 0x7fff, 0x8000, 0xabcd, 0xfffe, 0xffff];
        let addrs = [
            (0xc0a8_0001u32, 0x0a58_0002u32),
            (0x0000_0000, 0xffff_ffff),
            (0x0102_0304, 0x0102_0305),
            (0xdead_beef, 0xdead_beef),
            (0x0000_0001, 0x0001_0000),
        ];
        let mut seen = [0usize; 3];
        for &sum in &sums {
            for &(old, new) in &addrs {
                let diff = diff_words(&[old], &[new]);
                for udp in [false, true] {
                    for partial in [false, true] {
                        let after = kernel_pseudo_change(sum, diff, partial, udp);
                        let shown =
                            if udp && sum == 0 { L4Sum::Unknown } else { PseudoChange::of(sum, diff).shown_by(after) };
                        seen[shown as usize] += 1;
                        // Never the wrong one: a port change written by
                        // what it showed gives the kernel's field.
                        let expected = if partial { L4Sum::PseudoOnly } else { L4Sum::Full };
                        assert!(shown == expected || shown == L4Sum::Unknown, "{sum:#x} {old:#x}->{new:#x} {partial}");
                        let (p_old, p_new) = (0x1f90u16, 0x0050u16);
                        let kernel = kernel_port_change(after, p_old, p_new, partial, udp);
                        let ours = match shown {
                            L4Sum::Full => {
                                let s = replace2(after, p_old, p_new);
                                if udp && s == 0 {
                                    0xffff
                                } else {
                                    s
                                }
                            }
                            L4Sum::PseudoOnly => after,
                            L4Sum::Unknown => kernel,
                        };
                        assert!(same(ours, kernel), "{sum:#x} {old:#x}->{new:#x} partial {partial} udp {udp}");
                    }
                }
            }
        }
        // Those that tell: six fields that are not zero, two address
        // changes that are not zero in one's complement (the others, all
        // ones and a word swap, are), TCP and UDP; one edge leaves the
        // field at zero.
        assert_eq!(seen, [23, 24, 113]);
    }

    #[test]
    fn an_unchanged_address_tells_nothing() {
        let diff = diff_words(&[0x0a58_0002], &[0x0a58_0002]);
        for sum in [0x0001u16, 0x4321, 0xfffe] {
            assert_eq!(PseudoChange::of(sum, diff).shown_by(sum), L4Sum::Unknown);
        }
    }
}
