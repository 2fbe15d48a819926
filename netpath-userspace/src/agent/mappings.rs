//! Published ports: the mappings, their MAPPINGS4 and MAPPINGS6 entries,
//! and the flows they created.
//!
//! A mapping answers on the families its host address says (see
//! [`Mapping::host_ip`]): none, a MAPPINGS4 wildcard entry and, if the
//! container has an IPv6 address, a MAPPINGS6 wildcard entry, both with the
//! mapping's id; `0.0.0.0` or an IPv4 address, a MAPPINGS4 entry; `::` or an
//! IPv6 address, a MAPPINGS6 entry. Every write and removal goes through
//! [`mapping_entries`] and [`mapping_keys`], so both families follow.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result};
use netpath_common::{
    maps::MAX_MAPPINGS,
    owner::{self, OWNER_SLOTS},
    In6Addr, MappingEntry4, MappingEntry6, MappingKey4, MappingKey6,
};

use super::{AgentError, Inner};
use crate::{
    model::{Container, ErrorReason, Mapping, PortRequest},
    portspec::{host_prefix, PortSpec, Protocol, UnmapSpec},
    state::Change,
};

/// Published mappings by host address, port and protocol.
type HostPortIndex<'a> = HashMap<(Option<IpAddr>, u16, Protocol), &'a Mapping>;

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

/// The keys of a mapping's entries, by family (what removing it removes).
pub(super) fn mapping_keys(m: &Mapping) -> (Option<MappingKey4>, Option<MappingKey6>) {
    let (port, proto) = (m.host_port.to_be(), m.proto.number());
    let v4 = m.on_ipv4().then(|| {
        let addr = match m.host_ip {
            Some(IpAddr::V4(ip)) => ip.octets(),
            _ => [0; 4],
        };
        MappingKey4 { addr, port, proto, _pad: 0 }
    });
    let v6 = m.on_ipv6().then(|| {
        let addr = match m.host_ip {
            Some(IpAddr::V6(ip)) => In6Addr::from(ip),
            _ => In6Addr::UNSPECIFIED,
        };
        MappingKey6 { addr, port, proto, _pad: 0 }
    });
    (v4, v6)
}

/// A mapping's datapath entries: MAPPINGS4's, MAPPINGS6's, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MappingEntries {
    pub v4: Option<(MappingKey4, MappingEntry4)>,
    pub v6: Option<(MappingKey6, MappingEntry6)>,
}

/// The entries of mapping `m` to container `c`: its addresses of the
/// entries' families, its veth, the mapping's id; ports in network order.
pub(super) fn mapping_entries(m: &Mapping, c: &Container) -> Result<MappingEntries> {
    let (k4, k6) = mapping_keys(m);
    let container_port = m.container_port.to_be();
    let v4 = match k4 {
        None => None,
        Some(k) => {
            let ip = c.ip.with_context(|| {
                format!("mapping {} answers on IPv4, but container {} has no IPv4 address", m.spec(), c.name)
            })?;
            let e = MappingEntry4 {
                container_addr: ip.octets(),
                container_port,
                _pad: 0,
                id: m.id,
                container_ifindex: c.ifindex,
            };
            Some((k, e))
        }
    };
    let v6 = match k6 {
        None => None,
        Some(k) => {
            let ip6 = c.ip6.with_context(|| {
                format!("mapping {} answers on IPv6, but container {} has no IPv6 address", m.spec(), c.name)
            })?;
            let e = MappingEntry6 {
                container_addr: In6Addr::from(ip6),
                container_port,
                _pad: 0,
                id: m.id,
                container_ifindex: c.ifindex,
            };
            Some((k, e))
        }
    };
    Ok(MappingEntries { v4, v6 })
}

/// A key written while publishing, to take back if a later write fails.
enum WrittenKey {
    V4(MappingKey4),
    V6(MappingKey6),
}

/// The IPv6 address a port of `container` answers on (None: IPv4 only),
/// or why it cannot be published as asked: an IPv6 host address needs a
/// container with an IPv6 address.
/// [`container_ip6_for`] for IPv4: the address of the container's an
/// IPv4 entry of port `p` leads to, refused for an IPv4 host address of a
/// container without IPv4 (an IPv6-only instance's).
fn container_ip_for(container: &Container, p: &PortRequest) -> Result<Option<std::net::Ipv4Addr>, AgentError> {
    match (p.host_ip, container.ip) {
        (Some(IpAddr::V6(_)), _) => Ok(None),
        (None, ip) => Ok(ip),
        (Some(IpAddr::V4(_)), Some(ip)) => Ok(Some(ip)),
        (Some(IpAddr::V4(_)), None) => Err(AgentError::BadRequest(format!(
            "{}{}:{}:{}/{}: container {} has no IPv4 address (the instance is IPv6-only), so it cannot be published \
             on an IPv4 host address; publish without a host address or on an IPv6 one",
            host_prefix(p.host_ip),
            p.host_port,
            container.name,
            p.container_port,
            p.proto,
            container.name,
        ))),
    }
}

fn container_ip6_for(
    container: &Container,
    p: &PortRequest,
    has_subnet6: bool,
) -> Result<Option<std::net::Ipv6Addr>, AgentError> {
    match (p.host_ip, container.ip6) {
        (Some(IpAddr::V4(_)), _) => Ok(None),
        (None, ip6) => Ok(ip6),
        (Some(IpAddr::V6(_)), Some(ip6)) => Ok(Some(ip6)),
        (Some(IpAddr::V6(_)), None) => {
            let why = if has_subnet6 {
                "it was attached without one"
            } else {
                "the instance has no IPv6 subnet: subnet6 is not configured"
            };
            Err(AgentError::BadRequest(format!(
                "{}{}:{}:{}/{}: container {} has no IPv6 address ({why}), so it cannot be published on an IPv6 host \
                 address; publish without a host address or on an IPv4 one",
                host_prefix(p.host_ip),
                p.host_port,
                container.name,
                p.container_port,
                p.proto,
                container.name,
            )))
        }
    }
}

/// Two mappings clash when they publish the same port and protocol on a
/// common host address: no address means all of them (both families); `::`
/// means every IPv6 one. (`0.0.0.0` and an IPv4 address do not clash, as
/// before IPv6: the datapath prefers the address's entry to the wildcard.)
pub fn overlaps(a: &Mapping, b: &Mapping) -> bool {
    a.host_port == b.host_port && a.proto == b.proto && hosts_overlap(a.host_ip, b.host_ip)
}

fn hosts_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(IpAddr::V6(a)), Some(IpAddr::V6(b))) => a == b || a.is_unspecified() || b.is_unspecified(),
        (Some(a), Some(b)) => a == b,
    }
}

impl Inner {
    /// MAPPINGS4 and MAPPINGS6 hold exactly the saved mappings of live
    /// containers; flows of anything else go stale (their owner slots are
    /// cleared by `remove_mapping` here and by the agent's sweep of the
    /// owner tables).
    pub(super) fn reconcile_mappings(&mut self) -> Result<()> {
        let live: Vec<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        let (kept, gone): (Vec<Mapping>, Vec<Mapping>) =
            std::mem::take(&mut self.state.mappings).into_iter().partition(|m| live.contains(&m.container));
        self.state.mappings = kept;
        let mut wanted4 = HashSet::new();
        let mut wanted6 = HashSet::new();
        for m in self.state.mappings.clone() {
            let entries = self.mapping_entry(&m)?;
            if let Some((key, value)) = entries.v4 {
                self.dp.set_mapping(&key, &value)?;
                wanted4.insert(key);
            }
            if let Some((key, value)) = entries.v6 {
                self.dp.set_mapping(&key, &value)?;
                wanted6.insert(key);
            }
        }
        for (key, _) in self.dp.mapping_entries()? {
            if !wanted4.contains(&key) {
                self.dp.remove_mapping(&key)?;
            }
        }
        for (key, _) in self.dp.mapping_entries6()? {
            if !wanted6.contains(&key) {
                self.dp.remove_mapping(&key)?;
            }
        }
        self.reserve_published_ports(&[], &gone);
        Ok(())
    }

    fn mapping_entry(&self, m: &Mapping) -> Result<MappingEntries> {
        let c = self
            .state
            .containers
            .iter()
            .find(|c| c.name == m.container)
            .with_context(|| format!("mapping {} names unknown container {}", m.spec(), m.container))?;
        mapping_entries(m, c)
    }

    /// Writes a mapping's entries, noting each key in `written`.
    fn write_mapping(&mut self, m: &Mapping, written: &mut Vec<WrittenKey>) -> Result<()> {
        let entries = self.mapping_entry(m)?;
        if let Some((key, value)) = entries.v4 {
            self.dp.set_mapping(&key, &value)?;
            written.push(WrittenKey::V4(key));
        }
        if let Some((key, value)) = entries.v6 {
            self.dp.set_mapping(&key, &value)?;
            written.push(WrittenKey::V6(key));
        }
        Ok(())
    }

    /// Removes a mapping's entries (both families' where it has them).
    fn unwrite_mapping(&mut self, m: &Mapping) -> Result<()> {
        let (k4, k6) = mapping_keys(m);
        if let Some(key) = k4 {
            self.dp.remove_mapping(&key)?;
        }
        if let Some(key) = k6 {
            self.dp.remove_mapping(&key)?;
        }
        Ok(())
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
        // The families each port answers on, refused whole if one needs an
        // IPv6 address its container lacks.
        let mut ip6s = vec![];
        for (container, ports) in requests {
            for p in ports.iter() {
                ip6s.push((container_ip_for(container, p)?, container_ip6_for(container, p, self.ipam6.is_some())?));
            }
        }
        let count = ip6s.len();
        self.check_room(count)?;
        let live = self.state.mappings.iter().map(|m| m.id);
        let Some((ids, _)) = owner_ids(self.state.next_mapping_id, count, live) else {
            return Err(self.table_full(count));
        };
        let ports = requests.iter().flat_map(|(container, ports)| ports.iter().map(move |p| (*container, p)));
        Ok(ports
            .zip(ids)
            .zip(ip6s)
            .map(|(((container, p), id), (container_ip, container_ip6))| Mapping {
                id,
                host_ip: p.host_ip,
                host_port: p.host_port,
                proto: p.proto,
                container: container.name.clone(),
                container_ip,
                container_ip6,
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
                        host_prefix(m.host_ip),
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
            if let Err(e) = self.write_mapping(m, &mut written) {
                for k in written.iter().rev() {
                    let _ = match k {
                        WrittenKey::V4(k) => self.dp.remove_mapping(k),
                        WrittenKey::V6(k) => self.dp.remove_mapping(k),
                    };
                }
                return Err(AgentError::Internal(e.context(format!("publishing {}", m.spec()))));
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
                    let ip = host_prefix(host.ip);
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
        // Each mapping leaves MAPPINGS4 and MAPPINGS6 (no new flow can use
        // it) and its owner slot: its tracked flows, UDP included, are cut
        // at once (the datapath drops a stale entry on its next packet,
        // which then follows the current state; the GC collects the rest;
        // listings skip them), as are its socket-level translations.
        // Nothing walks the tables: the cost is one write per entry.
        for m in victims {
            self.unwrite_mapping(m)?;
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
            container_ip: Some("10.0.0.2".parse().unwrap()),
            container_ip6: None,
            container_port: 80,
        }
    }

    fn container(ip6: Option<&str>) -> Container {
        Container {
            name: "web".into(),
            netns: "/run/netns/web".into(),
            ip: Some("10.77.0.5".parse().unwrap()),
            ip6: ip6.map(|a| a.parse().unwrap()),
            mac: "02:42:0a:4d:00:05".into(),
            veth: "npv7".into(),
            ifindex: 42,
            id: 7,
            ifname: "eth0".into(),
            owner: None,
            handoff_ifname: None,
            runtime_name: None,
            stats_slot: 2,
        }
    }

    /// The mapping `spec` asks for on `c` (as `new_mappings` builds it),
    /// or the refusal.
    fn mapping_of(spec: &str, c: &Container, has_subnet6: bool) -> Result<Mapping, AgentError> {
        let s = PortSpec::parse(spec).unwrap();
        let (host_port, container_port) = s.pairs().next().unwrap();
        let p = PortRequest { host_ip: s.host.ip, host_port, container_port, proto: s.host.proto };
        let container_ip6 = container_ip6_for(c, &p, has_subnet6)?;
        Ok(Mapping {
            id: 9,
            host_ip: p.host_ip,
            host_port,
            proto: p.proto,
            container: c.name.clone(),
            container_ip: c.ip,
            container_ip6,
            container_port,
        })
    }

    fn families(m: &Mapping) -> (bool, bool) {
        (m.on_ipv4(), m.on_ipv6())
    }

    #[test]
    fn host_addresses_choose_the_families() {
        let dual = container(Some("fd00:77::5"));
        let v4only = container(None);
        let on = |spec: &str, c: &Container| families(&mapping_of(spec, c, true).unwrap());
        // No address: both, IPv6 where the container has it.
        assert_eq!(on("8080:web:80", &dual), (true, true));
        assert_eq!(on("8080:web:80", &v4only), (true, false));
        // 0.0.0.0 and IPv4 addresses: IPv4 only.
        assert_eq!(on("0.0.0.0:8080:web:80", &dual), (true, false));
        assert_eq!(on("198.18.0.1:8080:web:80", &dual), (true, false));
        // [::] and IPv6 addresses: IPv6 only.
        assert_eq!(on("[::]:8080:web:80", &dual), (false, true));
        assert_eq!(on("[2001:db8::1]:8080:web:80/udp", &dual), (false, true));
        assert_eq!(on("[::1]:8080:web:80", &dual), (false, true));
        // ... and refused for a container without IPv6, naming it and why.
        for (has_subnet6, why) in [(true, "attached without one"), (false, "subnet6 is not configured")] {
            let e = mapping_of("[::]:8080:web:80", &v4only, has_subnet6).unwrap_err();
            assert!(matches!(e, AgentError::BadRequest(_)), "{e:?}");
            let e = e.to_string();
            assert!(e.contains("container web has no IPv6 address"), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains("[::]:8080:web:80/tcp"), "{e}");
        }
        let e = mapping_of("[2001:db8::1]:53:web:53/udp", &v4only, false).unwrap_err().to_string();
        assert!(e.contains("[2001:db8::1]:53:web:53/udp"), "{e}");
        // A mapping saved before IPv6 ports existed answers on IPv4 only.
        let old = m(None, 80, Protocol::Tcp);
        assert_eq!(families(&old), (true, false));
    }

    #[test]
    fn entries_carry_addresses_ports_id_and_veth() {
        let c = container(Some("fd00:77::5"));
        let both = mapping_of("8080:web:80/udp", &c, true).unwrap();
        let e = mapping_entries(&both, &c).unwrap();
        let (k4, v4) = e.v4.unwrap();
        assert_eq!(k4, MappingKey4 { addr: [0; 4], port: 8080u16.to_be(), proto: 17, _pad: 0 });
        assert_eq!(
            v4,
            MappingEntry4 {
                container_addr: [10, 77, 0, 5],
                container_port: 80u16.to_be(),
                _pad: 0,
                id: 9,
                container_ifindex: 42
            }
        );
        let (k6, v6) = e.v6.unwrap();
        assert_eq!(k6, MappingKey6 { addr: In6Addr::UNSPECIFIED, port: 8080u16.to_be(), proto: 17, _pad: 0 });
        let fd00_5: std::net::Ipv6Addr = "fd00:77::5".parse().unwrap();
        assert_eq!(
            v6,
            MappingEntry6 {
                container_addr: In6Addr::from(fd00_5),
                container_port: 80u16.to_be(),
                _pad: 0,
                id: 9,
                container_ifindex: 42
            }
        );
        assert_eq!(v6.container_addr.octets(), fd00_5.octets());
        // Network order on the wire: 8080 is 0x1f90.
        assert_eq!(k6.port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(v6.container_port.to_ne_bytes(), [0, 80]);
        assert_eq!(mapping_keys(&both), (Some(k4), Some(k6)));

        // An IPv6 address: its own key, no IPv4 entry.
        let one = mapping_of("[2001:db8::1]:443:web:8443", &c, true).unwrap();
        let e = mapping_entries(&one, &c).unwrap();
        assert_eq!(e.v4, None);
        let (k6, v6) = e.v6.unwrap();
        let addr: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(k6, MappingKey6 { addr: In6Addr::from(addr), port: 443u16.to_be(), proto: 6, _pad: 0 });
        assert_eq!(k6.addr.octets(), addr.octets());
        assert_eq!((v6.container_port, v6.id, v6.container_ifindex), (8443u16.to_be(), 9, 42));
        assert_eq!(mapping_keys(&one), (None, Some(k6)));

        // [::]: the IPv6 wildcard; 0.0.0.0: the IPv4 one.
        let any6 = mapping_of("[::]:8080:web:80", &c, true).unwrap();
        assert_eq!(mapping_keys(&any6).0, None);
        assert_eq!(mapping_keys(&any6).1.map(|k| k.addr), Some(In6Addr::UNSPECIFIED));
        let any4 = mapping_of("0.0.0.0:8080:web:80", &c, true).unwrap();
        assert_eq!(
            mapping_keys(&any4),
            (Some(MappingKey4 { addr: [0; 4], port: 8080u16.to_be(), proto: 6, _pad: 0 }), None)
        );
        let addr4 = mapping_of("198.18.0.1:8080:web:80", &c, true).unwrap();
        assert_eq!(mapping_keys(&addr4).0.map(|k| k.addr), Some([198, 18, 0, 1]));

        // Without an IPv6 address a no-address mapping has only its IPv4
        // entry; one that claims IPv6 for such a container is an error.
        let v4only = container(None);
        let m4 = mapping_of("8080:web:80", &v4only, true).unwrap();
        let e = mapping_entries(&m4, &v4only).unwrap();
        assert!(e.v4.is_some() && e.v6.is_none());
        let e = mapping_entries(&any6, &v4only).unwrap_err().to_string();
        assert!(e.contains("container web has no IPv6 address"), "{e}");
    }

    #[test]
    fn overlap_rules_of_ipv6() {
        use Protocol::*;
        let any6 = m(Some("::"), 8080, Tcp);
        // [::] clashes with itself, with no address, with an IPv6 address.
        assert!(overlaps(&any6, &m(Some("::"), 8080, Tcp)));
        assert!(overlaps(&any6, &m(None, 8080, Tcp)));
        assert!(overlaps(&m(None, 8080, Tcp), &any6));
        assert!(overlaps(&any6, &m(Some("2001:db8::1"), 8080, Tcp)));
        assert!(overlaps(&m(Some("2001:db8::1"), 8080, Tcp), &any6));
        // ... not with IPv4, nor another port or protocol.
        assert!(!overlaps(&any6, &m(Some("0.0.0.0"), 8080, Tcp)));
        assert!(!overlaps(&m(Some("0.0.0.0"), 8080, Tcp), &any6));
        assert!(!overlaps(&any6, &m(Some("198.18.0.1"), 8080, Tcp)));
        assert!(!overlaps(&any6, &m(Some("::"), 8080, Udp)));
        assert!(!overlaps(&any6, &m(Some("::"), 8081, Tcp)));
        // IPv6 addresses: the same one clashes, two others do not.
        assert!(overlaps(&m(Some("2001:db8::1"), 80, Tcp), &m(Some("2001:db8::1"), 80, Tcp)));
        assert!(!overlaps(&m(Some("2001:db8::1"), 80, Tcp), &m(Some("2001:db8::2"), 80, Tcp)));
        // No address clashes with anything on its port, either family.
        for other in [None, Some("0.0.0.0"), Some("198.18.0.1"), Some("::"), Some("::1"), Some("2001:db8::1")] {
            assert!(overlaps(&m(None, 53, Udp), &m(other, 53, Udp)), "{other:?}");
            assert!(overlaps(&m(other, 53, Udp), &m(None, 53, Udp)), "{other:?}");
        }
        // IPv4 as before: 0.0.0.0 and an address are distinct keys.
        assert!(overlaps(&m(Some("0.0.0.0"), 80, Tcp), &m(Some("0.0.0.0"), 80, Tcp)));
        assert!(!overlaps(&m(Some("0.0.0.0"), 80, Tcp), &m(Some("198.18.0.1"), 80, Tcp)));
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
        for (ip, spec) in [(Some("::"), "[::]:8080:c:80/tcp"), (Some("2001:db8::1"), "[2001:db8::1]:8080:c:80/tcp")] {
            let x = m(ip, 8080, Protocol::Tcp);
            assert_eq!(x.spec(), spec);
            assert_eq!(PortSpec::parse(&x.spec()).unwrap().host.ip, x.host_ip);
        }
    }
}
