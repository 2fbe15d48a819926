//! Published ports: the mappings, their MAPPINGS4 entries, and the flows
//! they created.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result};
use netpath_common::{
    maps::MAX_MAPPINGS,
    owner::{self, OWNER_SLOTS},
    MappingEntry4, MappingKey4,
};

use super::{AgentError, Inner};
use crate::{
    model::{Container, ErrorReason, Mapping, PortRequest},
    portspec::{PortSpec, Protocol, UnmapSpec},
    state::Change,
};

/// Published mappings by host address, port and protocol.
type HostPortIndex<'a> = HashMap<(Option<Ipv4Addr>, u16, Protocol), &'a Mapping>;

/// Ids for `n` new owners (mappings, containers) from `next`: each the next
/// id whose owner slot none of `live` (the live owners' ids) and none of
/// the ones before holds (see netpath_common::owner); and the id after the
/// last. While every id ever issued lies below `OWNER_SLOTS`, no two share a
/// slot and `live` is not read (publishing one port stays O(1)). None when
/// the slots run out (callers check the table's capacity first).
pub(super) fn owner_ids(next: u32, n: usize, live: impl Iterator<Item = u32>) -> Option<(Vec<u32>, u32)> {
    let mut taken: HashSet<u32> =
        if next as u64 + n as u64 <= OWNER_SLOTS as u64 { HashSet::new() } else { live.map(owner::slot).collect() };
    let mut ids = Vec::with_capacity(n);
    let mut cursor = next;
    for _ in 0..n {
        let (id, after) = owner::next_free(cursor, |slot| taken.contains(&slot))?;
        taken.insert(owner::slot(id));
        ids.push(id);
        cursor = after;
    }
    Some((ids, cursor))
}

/// Up to this many (new x published) comparisons, clash checks scan.
const SCAN_LIMIT: usize = 1 << 20;

fn mapping_key4(m: &Mapping) -> MappingKey4 {
    MappingKey4 {
        addr: m.host_ip.map(|ip| ip.octets()).unwrap_or([0; 4]),
        port: m.host_port.to_be(),
        proto: m.proto.number(),
        _pad: 0,
    }
}

/// Two mappings clash when they publish the same port and protocol on a
/// common host address (no address means all of them).
pub fn overlaps(a: &Mapping, b: &Mapping) -> bool {
    a.host_port == b.host_port
        && a.proto == b.proto
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

impl Inner {
    /// MAPPINGS4 holds exactly the saved mappings of live containers; flows of
    /// anything else go stale (their owner slots are cleared by
    /// `remove_mapping` here and by the agent's sweep of the owner tables).
    pub(super) fn reconcile_mappings(&mut self) -> Result<()> {
        let live: Vec<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        let (kept, gone): (Vec<Mapping>, Vec<Mapping>) =
            std::mem::take(&mut self.state.mappings).into_iter().partition(|m| live.contains(&m.container));
        self.state.mappings = kept;
        let mut wanted = HashSet::new();
        for m in self.state.mappings.clone() {
            let (key, value) = self.mapping_entry(&m)?;
            self.dp.set_mapping(&key, &value)?;
            wanted.insert(key);
        }
        for (key, _) in self.dp.mapping_entries()? {
            if !wanted.contains(&key) {
                self.dp.remove_mapping(&key)?;
            }
        }
        self.reserve_published_ports(&[], &gone);
        Ok(())
    }

    fn mapping_entry(&self, m: &Mapping) -> Result<(MappingKey4, MappingEntry4)> {
        let c = self
            .state
            .containers
            .iter()
            .find(|c| c.name == m.container)
            .with_context(|| format!("mapping {} names unknown container {}", m.spec(), m.container))?;
        Ok((
            mapping_key4(m),
            MappingEntry4 {
                container_addr: c.ip.octets(),
                container_port: m.container_port.to_be(),
                _pad: 0,
                id: m.id,
                container_ifindex: c.ifindex,
            },
        ))
    }

    /// Keeps published ports that lie in the host's ephemeral range out of
    /// it, so that no host socket gets one as its local port. A failure is
    /// logged, not fatal: the mapping itself is in place either way.
    fn reserve_published_ports(&mut self, added: &[Mapping], removed: &[Mapping]) {
        let port = |m: &Mapping| m.host_port;
        if let Err(e) = self.host_ports.reserve(added.iter().map(port), removed.iter().map(port)) {
            tracing::warn!("reserving published ports from the host's ephemeral range: {e:#}");
        }
    }

    /// Publishes every port of every spec, or none of them (one journal
    /// record, one update of the host's reserved ports).
    pub(super) fn publish(&mut self, specs: &[&str]) -> Result<Vec<Mapping>, AgentError> {
        let mut requests: Vec<(Container, Vec<PortRequest>)> = vec![];
        for text in specs {
            let spec = PortSpec::parse(text).map_err(|e| AgentError::BadRequest(format!("{text:?}: {e}")))?;
            let container = self.find(&spec.container)?.clone();
            let ports: Vec<PortRequest> = spec
                .pairs()
                .map(|(host_port, container_port)| PortRequest {
                    host_ip: spec.host.ip,
                    host_port,
                    container_port,
                    proto: spec.host.proto,
                })
                .collect();
            requests.push((container, ports));
        }
        let requests: Vec<(&Container, &[PortRequest])> = requests.iter().map(|(c, p)| (c, p.as_slice())).collect();
        let new = self.new_mappings(&requests)?;
        self.publish_mappings(new)
    }

    /// The mappings `requests` ask for (ports of containers), each with the
    /// next id whose owner slot no published mapping holds (nothing is
    /// reserved yet: ids are taken when they are published). Refused whole
    /// if they do not fit in the table: checked before any id is sought,
    /// and the ids of one request are found in one pass.
    pub(super) fn new_mappings(&self, requests: &[(&Container, &[PortRequest])]) -> Result<Vec<Mapping>, AgentError> {
        let count = requests.iter().map(|(_, ports)| ports.len()).sum();
        self.check_room(count)?;
        let live = self.state.mappings.iter().map(|m| m.id);
        let Some((ids, _)) = owner_ids(self.state.next_mapping_id, count, live) else {
            return Err(self.table_full(count));
        };
        let ports = requests.iter().flat_map(|(container, ports)| ports.iter().map(move |p| (*container, p)));
        Ok(ports
            .zip(ids)
            .map(|((container, p), id)| Mapping {
                id,
                host_ip: p.host_ip,
                host_port: p.host_port,
                proto: p.proto,
                container: container.name.clone(),
                container_ip: container.ip,
                container_port: p.container_port,
            })
            .collect())
    }

    /// Refuses `count` more mappings if the table cannot take them.
    fn check_room(&self, count: usize) -> Result<(), AgentError> {
        if self.state.mappings.len() + count > MAX_MAPPINGS {
            return Err(self.table_full(count));
        }
        Ok(())
    }

    fn table_full(&self, count: usize) -> AgentError {
        AgentError::Conflict(format!(
            "the published-port table is full: {} of {MAX_MAPPINGS} entries used, {count} more requested",
            self.state.mappings.len(),
        ))
    }

    /// Refuses mappings that do not fit in the table or clash with a
    /// published port or with each other.
    pub(super) fn check_publishable(&self, new: &[Mapping]) -> Result<(), AgentError> {
        self.check_room(new.len())?;
        // A few new mappings are checked against the published ones one by
        // one (publishing a port at 10000 stays in microseconds); a bulk
        // load through an index by (port, protocol), not n x m comparisons
        // (nor n x n among the new ones: 100000 ports in one call).
        let existing = &self.state.mappings;
        let mut by_port: Option<HashMap<(u16, Protocol), Vec<&Mapping>>> =
            (new.len() * (existing.len() + new.len()) > SCAN_LIMIT).then(|| {
                let mut index: HashMap<(u16, Protocol), Vec<&Mapping>> = HashMap::new();
                for m in existing {
                    index.entry((m.host_port, m.proto)).or_default().push(m);
                }
                index
            });
        for (i, m) in new.iter().enumerate() {
            if m.host_port == 0 || m.container_port == 0 {
                return Err(AgentError::BadRequest(format!("{}: port 0 cannot be published", m.spec())));
            }
            let clash = match by_port.as_mut() {
                Some(index) => {
                    let same_port = index.entry((m.host_port, m.proto)).or_default();
                    let clash = same_port.iter().find(|o| overlaps(o, m)).copied();
                    same_port.push(m);
                    clash
                }
                None => existing.iter().chain(&new[..i]).find(|o| overlaps(o, m)),
            };
            if let Some(other) = clash {
                return Err(AgentError::refused(
                    ErrorReason::PortInUse,
                    format!(
                        "host port {}{}/{} is already published by {}",
                        m.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default(),
                        m.host_port,
                        m.proto,
                        other.spec()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Writes and records `new` (from [`Inner::new_mappings`]), all or none.
    pub(super) fn publish_mappings(&mut self, new: Vec<Mapping>) -> Result<Vec<Mapping>, AgentError> {
        self.check_publishable(&new)?;
        let mut written = vec![];
        for m in &new {
            let result = self.mapping_entry(m).and_then(|(k, v)| self.dp.set_mapping(&k, &v).map(|()| k));
            match result {
                Ok(k) => written.push(k),
                Err(e) => {
                    for k in &written {
                        let _ = self.dp.remove_mapping(k);
                    }
                    return Err(AgentError::Internal(e.context("publishing")));
                }
            }
        }
        let next_mapping_id =
            new.iter().map(|m| m.id.wrapping_add(1)).max().unwrap_or(0).max(self.state.next_mapping_id);
        self.record(Change::Publish { mappings: new.clone(), next_mapping_id })?;
        self.reserve_published_ports(&new, &[]);
        for m in &new {
            tracing::info!(mapping = %m.spec(), "published");
        }
        Ok(new)
    }

    /// Removes the mappings every spec names and every flow they created;
    /// nothing if one of them names nothing.
    pub(super) fn unpublish(&mut self, specs: &[&str]) -> Result<Vec<Mapping>, AgentError> {
        // An index pays off for many specs; one is looked up by a scan.
        let index: Option<HostPortIndex> = (specs.len() > 1)
            .then(|| self.state.mappings.iter().map(|m| ((m.host_ip, m.host_port, m.proto), m)).collect());
        let mut victims: Vec<Mapping> = vec![];
        let mut seen: HashSet<u32> = HashSet::new();
        for text in specs {
            for m in self.named_by(text, &index)? {
                if seen.insert(m.id) {
                    victims.push(m);
                }
            }
        }
        self.remove_mappings(&victims)?;
        Ok(victims)
    }

    /// The mappings one unmap spec names (all its ports), or an error
    /// naming the first port that is not published.
    fn named_by(&self, text: &str, index: &Option<HostPortIndex>) -> Result<Vec<Mapping>, AgentError> {
        let spec = UnmapSpec::parse(text).map_err(|e| AgentError::BadRequest(format!("{text:?}: {e}")))?;
        let (host, full) = match &spec {
            UnmapSpec::Full(s) => (&s.host, Some(s)),
            UnmapSpec::Host(h) => (h, None),
        };
        // The container as the mappings name it (the spec may use its
        // runtime name); an unknown one matches nothing.
        let owner = full.map(|f| self.find(&f.container).map_or(f.container.clone(), |c| c.name.clone()));
        let mut named = vec![];
        for (i, port) in host.ports.ports().enumerate() {
            let found = match index {
                Some(index) => index.get(&(host.ip, port, host.proto)).copied(),
                None => self
                    .state
                    .mappings
                    .iter()
                    .find(|m| m.host_ip == host.ip && m.host_port == port && m.proto == host.proto),
            };
            let found = found.filter(|m| {
                full.is_none_or(|f| {
                    owner.as_ref() == Some(&m.container)
                        && f.container_ports.start as usize + i == m.container_port as usize
                })
            });
            match found {
                Some(m) => named.push(m.clone()),
                None => {
                    let ip = host.ip.map(|ip| format!("{ip}:")).unwrap_or_default();
                    let what = match full {
                        Some(f) => format!(
                            "{ip}{port}:{}:{}/{}",
                            f.container,
                            f.container_ports.start as usize + i,
                            host.proto
                        ),
                        None => format!("{ip}{port}/{}", host.proto),
                    };
                    return Err(AgentError::NotFound(format!("{what} is not published")));
                }
            }
        }
        Ok(named)
    }

    pub(super) fn remove_mappings(&mut self, victims: &[Mapping]) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        // Each mapping leaves MAPPINGS4 (no new flow can use it) and its
        // owner slot: its tracked flows, UDP included, are cut at once (the
        // datapath drops a stale entry on its next packet, which then
        // follows the current state; the GC collects the rest; listings
        // skip them), as are its socket-level translations. Nothing walks
        // the tables: the cost is one write per mapping.
        for m in victims {
            self.dp.remove_mapping(&mapping_key4(m))?;
        }
        let ids: Vec<u32> = victims.iter().map(|m| m.id).collect();
        self.record(Change::Unpublish { ids })?;
        self.reserve_published_ports(&[], victims);
        for m in victims {
            tracing::info!(mapping = %m.spec(), "unpublished");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portspec::Protocol;

    fn m(ip: Option<&str>, port: u16, proto: Protocol) -> Mapping {
        Mapping {
            id: 1,
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: port,
            proto,
            container: "c".into(),
            container_ip: "10.0.0.2".parse().unwrap(),
            container_port: 80,
        }
    }

    #[test]
    fn overlap_rules() {
        use Protocol::*;
        assert!(overlaps(&m(None, 80, Tcp), &m(None, 80, Tcp)));
        assert!(overlaps(&m(None, 80, Tcp), &m(Some("1.2.3.4"), 80, Tcp)));
        assert!(overlaps(&m(Some("1.2.3.4"), 80, Tcp), &m(None, 80, Tcp)));
        assert!(overlaps(&m(Some("1.2.3.4"), 80, Tcp), &m(Some("1.2.3.4"), 80, Tcp)));
        assert!(!overlaps(&m(Some("1.2.3.4"), 80, Tcp), &m(Some("1.2.3.5"), 80, Tcp)));
        assert!(!overlaps(&m(None, 80, Tcp), &m(None, 80, Udp)));
        assert!(!overlaps(&m(None, 80, Tcp), &m(None, 81, Tcp)));
    }

    #[test]
    fn new_owner_ids_never_share_a_slot_with_a_live_one() {
        // Fresh: ids in sequence.
        assert_eq!(owner_ids(1, 3, std::iter::empty()), Some((vec![1, 2, 3], 4)));
        // A lap later, a live id still holds slot 5: skipped.
        let live = [5u32, 7];
        let (ids, next) = owner_ids(OWNER_SLOTS + 4, 3, live.into_iter()).unwrap();
        assert_eq!(ids, vec![OWNER_SLOTS + 4, OWNER_SLOTS + 6, OWNER_SLOTS + 8]);
        assert_eq!(next, OWNER_SLOTS + 9);
        let slots: HashSet<u32> = ids.iter().chain(&live).map(|id| owner::slot(*id)).collect();
        assert_eq!(slots.len(), 5);
        // Every slot but two held: two more ids fit, a third does not.
        let all_but_two = (1..OWNER_SLOTS - 1).map(|id| id + OWNER_SLOTS);
        assert!(owner_ids(2 * OWNER_SLOTS, 2, all_but_two.clone()).is_some());
        assert_eq!(owner_ids(2 * OWNER_SLOTS, 3, all_but_two), None);
    }

    #[test]
    fn mapping_spec_roundtrips() {
        let mut x = m(Some("127.0.0.1"), 8080, Protocol::Udp);
        x.container = "ctr1".into();
        assert_eq!(x.spec(), "127.0.0.1:8080:ctr1:80/udp");
        let p = PortSpec::parse(&x.spec()).unwrap();
        assert_eq!(p.pairs().collect::<Vec<_>>(), vec![(8080, 80)]);
    }
}
