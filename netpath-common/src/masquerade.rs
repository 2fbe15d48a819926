//! Masquerade's source-port search: the arithmetic of picking a port (or
//! ICMP echo identifier) for a new flow, tested here on the host. The BPF
//! program walks it: `first`, then `next` until a port is free or
//! [`MAX_TRIES`] ports were tried.

/// Ports tried per new flow; a small range is walked completely.
pub const MAX_TRIES: u32 = 32;

/// The configured source ports, `min..=max` in host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    min: u32,
    max: u32,
    /// Number of ports, never 0.
    len: u32,
}

impl PortRange {
    /// The range `min..=max`; None when masquerade has no ports (`min` 0,
    /// or `max` below `min`).
    #[inline(always)]
    pub fn new(min: u16, max: u16) -> Option<PortRange> {
        let (min, max) = (min as u32, max as u32);
        if min == 0 || max < min {
            return None;
        }
        let len = max - min + 1;
        if len == 0 {
            // Cannot happen (min <= max); stated so that `%` needs no panic path.
            return None;
        }
        Some(PortRange { min, max, len })
    }

    #[inline(always)]
    pub fn min(&self) -> u16 {
        self.min as u16
    }

    #[inline(always)]
    pub fn max(&self) -> u16 {
        self.max as u16
    }

    /// Number of ports in the range (at least one).
    #[inline(always)]
    pub fn size(&self) -> u32 {
        self.len
    }

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        let port = port as u32;
        port >= self.min && port <= self.max
    }

    /// Where the search starts: the container's own port `own` when it is in
    /// range (fewer surprises), else a port picked with `random` (called
    /// only then: in BPF it is a helper call).
    #[inline(always)]
    pub fn first(&self, own: u16, random: impl FnOnce() -> u32) -> u16 {
        if self.contains(own) {
            return own;
        }
        // `checked_rem`: no panic path for a zero length (there is none).
        (self.min + random().checked_rem(self.len).unwrap_or(0)) as u16
    }

    /// The port after `port`: the next one up, from the top back to the
    /// bottom of the range.
    #[inline(always)]
    pub fn next(&self, port: u16) -> u16 {
        let port = port as u32;
        (if port >= self.max { self.min } else { port + 1 }) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ports a search starting at `first` tries, in order.
    fn walk(range: &PortRange, first: u16) -> Vec<u16> {
        let mut port = first;
        let mut tried = Vec::new();
        for _ in 0..MAX_TRIES {
            tried.push(port);
            port = range.next(port);
        }
        tried
    }

    #[test]
    fn no_range_without_ports() {
        assert_eq!(PortRange::new(0, 0), None);
        assert_eq!(PortRange::new(0, 100), None, "min 0 is masquerade off");
        assert_eq!(PortRange::new(2000, 1999), None);
        let r = PortRange::new(1000, 1999).unwrap();
        assert_eq!((r.min(), r.max(), r.size()), (1000, 1999, 1000));
    }

    #[test]
    fn own_port_kept_when_in_range() {
        let r = PortRange::new(1000, 1999).unwrap();
        for own in [1000, 1500, 1999] {
            assert_eq!(r.first(own, || panic!("no random start needed")), own);
        }
    }

    #[test]
    fn random_start_otherwise() {
        let r = PortRange::new(1000, 1999).unwrap();
        for own in [0, 999, 2000, 65535] {
            assert_eq!(r.first(own, || 0), 1000);
            assert_eq!(r.first(own, || 999), 1999);
            assert_eq!(r.first(own, || 1000), 1000);
            assert_eq!(r.first(own, || 1234), 1234);
            assert!(r.contains(r.first(own, || u32::MAX)));
        }
    }

    #[test]
    fn wraps_around_at_the_top() {
        let r = PortRange::new(1000, 1999).unwrap();
        assert_eq!(r.next(1000), 1001);
        assert_eq!(r.next(1998), 1999);
        assert_eq!(r.next(1999), 1000);
        assert_eq!(walk(&r, 1998)[..4], [1998, 1999, 1000, 1001]);
        // The whole port space: no overflow at 65535.
        let all = PortRange::new(1, 65535).unwrap();
        assert_eq!(all.size(), 65535);
        assert_eq!(all.next(65535), 1);
        assert_eq!(all.first(0, || 65534), 65535);
        assert_eq!(all.first(0, || 65535), 1);
        // 2^32 - 1 is a multiple of 65535.
        assert_eq!(all.first(0, || u32::MAX), 1);
    }

    #[test]
    fn a_small_range_is_walked_completely() {
        for len in [2u16, 5, 31, MAX_TRIES as u16] {
            let r = PortRange::new(40000, 40000 + len - 1).unwrap();
            for start in 40000..40000 + len {
                let tried = walk(&r, start);
                let mut first_round = tried[..len as usize].to_vec();
                first_round.sort();
                assert_eq!(first_round, (40000..40000 + len).collect::<Vec<_>>(), "len {len} from {start}");
                assert!(tried.iter().all(|p| r.contains(*p)));
            }
        }
    }

    #[test]
    fn a_large_range_tries_distinct_ports() {
        let r = PortRange::new(32768, 60999).unwrap();
        let mut tried = walk(&r, 60990);
        tried.sort();
        tried.dedup();
        assert_eq!(tried.len(), MAX_TRIES as usize);
    }

    #[test]
    fn a_range_of_one_port() {
        let r = PortRange::new(5000, 5000).unwrap();
        assert_eq!(r.size(), 1);
        assert_eq!(r.first(5000, || 12345), 5000);
        assert_eq!(r.first(4999, || 12345), 5000);
        assert_eq!(r.first(0, || u32::MAX), 5000);
        assert_eq!(r.next(5000), 5000);
        assert!(walk(&r, 5000).iter().all(|p| *p == 5000));
    }
}
