//! The host's own port allocation, kept apart from netpath's: published
//! ports inside the host's ephemeral range are reserved from it
//! (`net.ipv4.ip_local_reserved_ports`), so that no host socket is handed a
//! published port as its local port, and the masquerade range must lie
//! outside that range, so that translated flows never take a tuple of the
//! host's own connections.

use std::collections::{btree_map::Entry, BTreeMap, BTreeSet};

use anyhow::{bail, Context as _, Result};

use crate::netns::{read_sysctl, write_sysctl};

const LOCAL_PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
const LOCAL_RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";

/// Ports as `ip_local_reserved_ports` lists them: `8080,9000-9010`.
pub fn parse_port_list(s: &str) -> Result<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let (a, b): (u16, u16) = (
            a.trim().parse().with_context(|| format!("port {a:?} in {s:?}"))?,
            b.trim().parse().with_context(|| format!("port {b:?} in {s:?}"))?,
        );
        if b < a {
            bail!("reversed port range {item:?} in {s:?}");
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// The inverse of [`parse_port_list`], with runs folded into ranges.
pub fn format_port_list(ports: &BTreeSet<u16>) -> String {
    let mut items = vec![];
    let mut it = ports.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end.wrapping_add(1))) && end != u16::MAX {
            end += 1;
            it.next();
        }
        items.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    items.join(",")
}

/// Fewer free ephemeral ports than this after a reservation: the agent
/// warns that host processes may run out of local ports.
const EPHEMERAL_LOW_WATER: usize = 1024;

/// The host's ephemeral range and netpath's reservations in it.
pub struct HostPorts {
    /// `ip_local_port_range`, inclusive.
    pub ephemeral: (u16, u16),
    /// Published ports in the ephemeral range, with how many mappings
    /// publish each (one per address and protocol): kept by changes, so
    /// that publishing one port at 100k costs no walk of the others.
    published: BTreeMap<u16, u32>,
    /// The reservations that are netpath's, as last written (the rest are
    /// the operator's, left as they are, whenever they were made).
    ours: BTreeSet<u16>,
}

impl HostPorts {
    /// Reads the agent's namespace. `published` are the ports the saved
    /// state publishes: those reserved already are netpath's.
    pub fn load(published: impl IntoIterator<Item = u16>) -> Result<HostPorts> {
        let range = read_sysctl(LOCAL_PORT_RANGE)?;
        let mut parts = range.split_whitespace().map(str::parse::<u16>);
        let ephemeral = match (parts.next(), parts.next()) {
            (Some(Ok(a)), Some(Ok(b))) => (a, b),
            _ => bail!("cannot read {LOCAL_PORT_RANGE} ({range:?})"),
        };
        let reserved = parse_port_list(&read_sysctl(LOCAL_RESERVED_PORTS)?)?;
        let mut ports = HostPorts { ephemeral, published: BTreeMap::new(), ours: BTreeSet::new() };
        ports.count(published, []);
        ports.ours = ports.published.keys().copied().filter(|p| reserved.contains(p)).collect();
        Ok(ports)
    }

    /// How many ports netpath's own reservations hold.
    pub fn reserved_by_netpath(&self) -> usize {
        self.ours.len()
    }

    /// Refuses a masquerade range that overlaps the host's ephemeral ports.
    pub fn check_masquerade_range(&self, (min, max): (u16, u16)) -> Result<()> {
        let (lo, hi) = self.ephemeral;
        if min <= hi && lo <= max {
            bail!(
                "masquerade_ports {min}-{max} overlap the host's ephemeral ports ({LOCAL_PORT_RANGE} = {lo}-{hi}): \
                 translated flows could take the tuples of the host's own connections; choose a range outside \
                 {lo}-{hi} (the default is 1024-32767)"
            );
        }
        Ok(())
    }

    /// Refuses a guarded port range that overlaps the host's ephemeral
    /// ports: the replies to the host's own connections arrive on them, and
    /// the uplink guard would drop them.
    pub fn check_guarded_ports(&self, ranges: &[crate::config::GuardedRange]) -> Result<()> {
        let (lo, hi) = self.ephemeral;
        if let Some(r) = ranges.iter().find(|r| r.overlaps(self.ephemeral)) {
            bail!(
                "uplink.guarded_ports {r} overlaps the host's ephemeral ports ({LOCAL_PORT_RANGE} = {lo}-{hi}): \
                 replies to the host's own connections arrive on those ports and would be dropped; choose ports \
                 outside {lo}-{hi}"
            );
        }
        Ok(())
    }

    /// Counts ports published (`added`) and unpublished (`removed`), one
    /// per mapping; returns whether the set of ports in the range changed.
    fn count(&mut self, added: impl IntoIterator<Item = u16>, removed: impl IntoIterator<Item = u16>) -> bool {
        let (lo, hi) = self.ephemeral;
        let mut changed = false;
        for port in added.into_iter().filter(|p| (lo..=hi).contains(p)) {
            let n = self.published.entry(port).or_insert(0);
            changed |= *n == 0;
            *n += 1;
        }
        for port in removed.into_iter().filter(|p| (lo..=hi).contains(p)) {
            if let Entry::Occupied(mut n) = self.published.entry(port) {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                    changed = true;
                }
            }
        }
        changed
    }

    /// Reserves exactly the published ports that fall in the ephemeral
    /// range, beside the operator's own reservations (read afresh), after
    /// mappings were published (`added`, their host ports) or removed
    /// (`removed`); costs a sysctl read and write only when netpath's share
    /// changes (or a write failed before).
    pub fn reserve(
        &mut self,
        added: impl IntoIterator<Item = u16>,
        removed: impl IntoIterator<Item = u16>,
    ) -> Result<()> {
        let changed = self.count(added, removed);
        if !changed && self.ours.len() == self.published.len() {
            return Ok(());
        }
        let wanted_ours: BTreeSet<u16> = self.published.keys().copied().collect();
        if wanted_ours == self.ours {
            return Ok(());
        }
        let current = parse_port_list(&read_sysctl(LOCAL_RESERVED_PORTS)?)?;
        let mut wanted: BTreeSet<u16> = current.difference(&self.ours).copied().collect();
        wanted.extend(&wanted_ours);
        write_sysctl(LOCAL_RESERVED_PORTS, &format_port_list(&wanted))?;
        self.ours = wanted_ours;
        let (lo, hi) = self.ephemeral;
        let free = (hi - lo) as usize + 1 - wanted.range(lo..=hi).count();
        if free < EPHEMERAL_LOW_WATER {
            tracing::warn!(
                "only {free} of the host's ephemeral ports ({LOCAL_PORT_RANGE} = {lo}-{hi}) are left unreserved: \
                 published ports take the rest; host processes may fail to connect (EADDRNOTAVAIL). Publish on \
                 ports outside {lo}-{hi}, or widen the range"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_round_trip_with_ranges_folded() {
        let ports = parse_port_list("8080, 9000-9002,9003,40000").unwrap();
        assert_eq!(ports.len(), 6);
        assert_eq!(format_port_list(&ports), "8080,9000-9003,40000");
        assert_eq!(format_port_list(&parse_port_list("").unwrap()), "");
        assert_eq!(format_port_list(&parse_port_list("65534-65535").unwrap()), "65534-65535");
        assert!(parse_port_list("9-8").is_err());
        assert!(parse_port_list("80,x").is_err());
    }

    #[test]
    fn the_masquerade_range_must_miss_the_ephemeral_one() {
        let h = HostPorts { ephemeral: (32768, 60999), published: BTreeMap::new(), ours: BTreeSet::new() };
        assert!(h.check_masquerade_range((1024, 32767)).is_ok());
        assert!(h.check_masquerade_range((61000, 65535)).is_ok());
        let err = h.check_masquerade_range((30000, 40000)).unwrap_err().to_string();
        assert!(err.contains("30000-40000") && err.contains("32768-60999"), "{err}");
        assert!(h.check_masquerade_range((60999, 61000)).is_err());
    }

    #[test]
    fn published_ports_are_counted_per_mapping() {
        let mut h = HostPorts { ephemeral: (32768, 60999), published: BTreeMap::new(), ours: BTreeSet::new() };
        // Outside the range: nothing to reserve.
        assert!(!h.count([8080, 61000], []));
        assert!(h.count([40000, 40000, 40001], []));
        // 40000 is published twice (two addresses): one removal keeps it.
        assert!(!h.count([], [40000]));
        assert!(h.count([], [40000]));
        assert!(!h.count([40001], []));
        assert_eq!(h.published.into_iter().collect::<Vec<_>>(), vec![(40001, 2)]);
    }
}
