//! What the uplink never accepts, decided before conntrack and NAT (by XDP
//! when it is attached, else by the uplink's tc ingress): packets from the
//! operator's denied sources, and TCP/UDP to a host address on a guarded
//! port that no mapping publishes. Here: the guarded-port bitmap's layout,
//! which the kernel reads and the agent writes.
//!
//! Why a bitmap: one ARRAY lookup answers "is this port guarded?" whatever
//! the number of ranges (8 KiB per protocol, 65536 bits), with no loop for
//! the verifier to bound, where ranges in the config struct would need a
//! bounded scan and a cap on their number.

/// Words per protocol (65536 ports / 64 bits).
pub const GUARDED_WORDS_PER_PROTO: u32 = 1024;
/// Entries of `GUARDED_PORTS`: TCP's words, then UDP's.
pub const GUARDED_PORT_WORDS: u32 = 2 * GUARDED_WORDS_PER_PROTO;

use crate::conntrack::{IPPROTO_TCP, IPPROTO_UDP};

/// Where `port` (host byte order) of `proto` lives in `GUARDED_PORTS`: the
/// word's index and the bit in it. None for protocols without ports.
#[inline(always)]
pub fn guarded_bit(proto: u8, port: u16) -> Option<(u32, u64)> {
    let base = match proto {
        IPPROTO_TCP => 0,
        IPPROTO_UDP => GUARDED_WORDS_PER_PROTO,
        _ => return None,
    };
    Some((base + (port as u32 >> 6), 1u64 << (port & 63)))
}

/// The whole bitmap, as the agent builds it from the configured ranges.
#[derive(Clone, PartialEq, Eq)]
pub struct GuardedPorts {
    pub words: [u64; GUARDED_PORT_WORDS as usize],
}

impl Default for GuardedPorts {
    fn default() -> Self {
        GuardedPorts { words: [0; GUARDED_PORT_WORDS as usize] }
    }
}

impl GuardedPorts {
    /// Guards `min..=max` (host byte order) of `proto` (TCP or UDP; other
    /// protocols are ignored).
    pub fn add(&mut self, proto: u8, min: u16, max: u16) {
        for port in min..=max {
            if let Some((i, bit)) = guarded_bit(proto, port) {
                self.words[i as usize] |= bit;
            }
        }
    }

    pub fn contains(&self, proto: u8, port: u16) -> bool {
        guarded_bit(proto, port).is_some_and(|(i, bit)| self.words[i as usize] & bit != 0)
    }

    /// Words that are not zero (the fill level `status` shows).
    pub fn used_words(&self) -> usize {
        self.words.iter().filter(|w| **w != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_set_exactly_their_bits() {
        let mut g = GuardedPorts::default();
        g.add(IPPROTO_TCP, 8000, 8999);
        g.add(IPPROTO_UDP, 65535, 65535);
        g.add(1, 1, 100);
        assert!(g.contains(IPPROTO_TCP, 8000) && g.contains(IPPROTO_TCP, 8999) && g.contains(IPPROTO_TCP, 8500));
        assert!(!g.contains(IPPROTO_TCP, 7999) && !g.contains(IPPROTO_TCP, 9000));
        assert!(!g.contains(IPPROTO_UDP, 8500), "per protocol");
        assert!(g.contains(IPPROTO_UDP, 65535) && !g.contains(IPPROTO_UDP, 65534));
        assert!(!g.contains(1, 50), "no ports, never guarded");
        assert_eq!(guarded_bit(IPPROTO_UDP, 65535), Some((GUARDED_PORT_WORDS - 1, 1 << 63)));
        assert_eq!(guarded_bit(IPPROTO_TCP, 0), Some((0, 1)));
        assert_eq!(g.words.iter().map(|w| w.count_ones()).sum::<u32>(), 1001);
    }
}
