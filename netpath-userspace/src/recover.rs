//! `netpathd --recover`: rebuilds the state file from what the kernel holds
//! when the file is corrupt or truncated (the agent refuses to start on
//! one). The pinned maps hold every container's addresses, MAC, id and
//! policy defaults (`CONTAINERS`), every published port (`MAPPINGS4`,
//! `MAPPINGS6`) and every policy rule (`POLICY4`, `POLICY6`, each rule kept
//! under its own prefix); the host veth of each container holds its name,
//! network namespace, interface name and owner in its alias
//! ([`VethIdentity`], written when the container is attached). The bad
//! files are kept beside, renamed.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::LpmTrie, HashMap as BpfHashMap, Map, MapData},
    Pod,
};
use ipnet::IpNet;
use netpath_common::{
    maps as names,
    policy::{POLICY_DENY, POLICY_KEY_FIXED_BITS},
    ContainerEntry, CtEntry4, CtEntry6, CtKey4, CtKey6, Direction, MappingEntry4, MappingEntry6, MappingKey4,
    MappingKey6, PolicyEntry, PolicyKey4, PolicyKey6,
};
use serde::{Deserialize, Serialize};

use crate::{
    agent::{format_mac, CONTAINER_IFNAME},
    config::ResolvedConfig,
    datapath::{aside_dir, read_containers_v7, read_layout_stamp, LAYOUT_MAP, LAYOUT_VERSION, MIGRATES_FROM},
    ipam::remember_released,
    model::{Container, Mapping},
    netlink::{link_alias, link_name, NeighbourSeen, Netlink},
    policy::{Action, ContainerPolicy, Rule, RuleProto},
    portspec::Protocol,
    state::{State, StateStore, STATE_VERSION},
};

/// What a container's host veth says about it, in its alias (at most 255
/// bytes: the optional fields go first when it would not fit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethIdentity {
    #[serde(rename = "netpath")]
    pub name: String,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The runtime's name for the container ([`Container::runtime_name`]).
    #[serde(default, rename = "runtime", skip_serializing_if = "Option::is_none")]
    pub runtime_name: Option<String>,
}

/// Longest interface alias the kernel keeps (IFALIASZ - 1).
const MAX_ALIAS: usize = 255;

impl VethIdentity {
    pub fn of(c: &Container) -> VethIdentity {
        VethIdentity {
            name: c.name.clone(),
            netns: c.netns.clone(),
            ifname: (c.ifname != CONTAINER_IFNAME).then(|| c.ifname.clone()),
            owner: c.owner.clone(),
            runtime_name: c.runtime_name.clone(),
        }
    }

    /// The alias: JSON, without the runtime name, then the owner, then the
    /// namespace if too long (the owner is what a runtime's clean-up goes
    /// by; a runtime name only spares naming the container by its own).
    pub fn to_alias(&self) -> String {
        let mut id = self.clone();
        for drop in 0..4 {
            match drop {
                1 => id.runtime_name = None,
                2 => id.owner = None,
                3 => id.netns = String::new(),
                _ => {}
            }
            if let Ok(text) = serde_json::to_string(&id) {
                if text.len() <= MAX_ALIAS {
                    return text;
                }
            }
        }
        String::new()
    }

    pub fn from_alias(alias: &str) -> Option<VethIdentity> {
        serde_json::from_str(alias).ok()
    }
}

/// What `--recover` rebuilt.
#[derive(Debug, Default)]
pub struct Recovered {
    pub containers: usize,
    pub mappings: usize,
    pub rules: usize,
    /// Addresses no container holds that the kernel still remembers (see
    /// [`released_queue`]): handed out again last.
    pub released: usize,
    /// Containers whose veth carried no identity: named after the veth.
    pub unnamed: Vec<String>,
    /// Where the bad files went.
    pub kept: Vec<String>,
}

fn open_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join("maps").join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(match name {
        names::POLICY4 | names::POLICY6 => Map::LpmTrie(data),
        _ => Map::HashMap(data),
    })
}

/// Rebuilds the state of `cfg`'s instance from its pins and interfaces and
/// saves it, keeping the files it replaces. Needs the agent stopped.
pub async fn recover(cfg: &ResolvedConfig) -> Result<Recovered> {
    let _locks = crate::lock::lock_instance(cfg)?;
    let pins = &cfg.pin_dir;
    let version = read_layout_stamp(&pins.join("maps").join(LAYOUT_MAP))?;
    // The previous layout's containers are read as its start would migrate
    // them (the rest of what this reads did not change): the counters'
    // slots are given when the agent starts and migrates the pins.
    let entries: Vec<(u32, ContainerEntry)> = match version {
        LAYOUT_VERSION => {
            let map: BpfHashMap<MapData, u32, ContainerEntry> = open_map(pins, names::CONTAINERS)?.try_into()?;
            map.iter().collect::<Result<_, _>>().context("reading CONTAINERS")?
        }
        MIGRATES_FROM => {
            // A start killed midway through the migration left the old map
            // aside.
            let aside = aside_dir(pins).join(names::CONTAINERS);
            let path = if aside.exists() { aside } else { pins.join("maps").join(names::CONTAINERS) };
            read_containers_v7(&path)?
        }
        _ => bail!(
            "the pins under {} have layout {version}, this netpathd {LAYOUT_VERSION} (and {MIGRATES_FROM}, which it \
             migrates): recover with the netpathd that wrote them",
            pins.display()
        ),
    };
    let nl = Netlink::connect()?;
    let links = nl.links().await?;
    let mut out = Recovered::default();
    let mut state = State { version: STATE_VERSION, next_id: 1, next_mapping_id: 1, ..Default::default() };
    let mut by_ifindex: HashMap<u32, String> = HashMap::new();
    let mut by_id: HashMap<u32, String> = HashMap::new();
    let mut defaults: HashMap<u32, ContainerPolicy> = HashMap::new();
    for (ifindex, e) in entries {
        let Some(link) = links.iter().find(|l| l.header.index == ifindex) else { continue };
        let veth = link_name(link).unwrap_or_default();
        let identity = link_alias(link).as_deref().and_then(VethIdentity::from_alias).unwrap_or_else(|| {
            out.unnamed.push(veth.clone());
            VethIdentity { name: veth.clone(), ..Default::default() }
        });
        let c = Container {
            name: identity.name.clone(),
            netns: identity.netns.clone(),
            ip: e.has_ipv4().then(|| Ipv4Addr::from(e.ipv4)),
            ip6: e.has_ipv6().then(|| Ipv6Addr::from(e.ipv6)),
            mac: format_mac(&e.mac),
            veth,
            ifindex,
            id: e.id,
            ifname: identity.ifname.clone().unwrap_or_else(|| CONTAINER_IFNAME.to_string()),
            owner: identity.owner.clone(),
            handoff_ifname: None,
            runtime_name: identity.runtime_name.clone(),
            stats_slot: e.stats_slot,
        };
        state.next_id = state.next_id.max(e.id + 1);
        by_ifindex.insert(ifindex, c.name.clone());
        by_id.insert(e.id, c.name.clone());
        let action = |d| if e.default_denies(d) { Action::Deny } else { Action::Allow };
        defaults.insert(
            e.id,
            ContainerPolicy { default_in: action(Direction::In), default_out: action(Direction::Out), rules: vec![] },
        );
        state.containers.push(c);
    }
    state.containers.sort_by_key(|c| c.id);

    // Mappings: one per id, over both families' entries.
    let mut mappings: BTreeMap<u32, Mapping> = BTreeMap::new();
    let mut families: HashMap<u32, (Option<Ipv4Addr>, Option<Ipv6Addr>)> = HashMap::new();
    let m4: BpfHashMap<MapData, MappingKey4, MappingEntry4> = open_map(pins, names::MAPPINGS4)?.try_into()?;
    let m6: BpfHashMap<MapData, MappingKey6, MappingEntry6> = open_map(pins, names::MAPPINGS6)?.try_into()?;
    let mut add = |id: u32, host: IpAddr, port: u16, proto: u8, ifindex: u32, cport: u16, caddr: IpAddr| {
        let Some(container) = by_ifindex.get(&ifindex) else { return };
        let Some(proto) = Protocol::from_number(proto) else { return };
        let m = mappings.entry(id).or_insert_with(|| Mapping {
            id,
            host_ip: None,
            host_port: port,
            proto,
            container: container.clone(),
            container_ip: None,
            container_ip6: None,
            container_port: cport,
        });
        let fam = families.entry(id).or_default();
        match (host, caddr) {
            (IpAddr::V4(h), IpAddr::V4(c)) => {
                m.container_ip = Some(c);
                fam.0 = Some(h);
            }
            (IpAddr::V6(h), IpAddr::V6(c)) => {
                m.container_ip6 = Some(c);
                fam.1 = Some(h);
            }
            _ => {}
        }
    };
    // Ports are in network byte order in both maps.
    for item in m4.iter() {
        let (k, e) = item.context("reading MAPPINGS4")?;
        let (k, e) = (
            MappingKey4 { port: u16::from_be(k.port), ..k },
            MappingEntry4 { container_port: u16::from_be(e.container_port), ..e },
        );
        add(
            e.id,
            Ipv4Addr::from(k.addr).into(),
            k.port,
            k.proto,
            e.container_ifindex,
            e.container_port,
            Ipv4Addr::from(e.container_addr).into(),
        );
    }
    for item in m6.iter() {
        let (k, e) = item.context("reading MAPPINGS6")?;
        let (k, e) = (
            MappingKey6 { port: u16::from_be(k.port), ..k },
            MappingEntry6 { container_port: u16::from_be(e.container_port), ..e },
        );
        add(
            e.id,
            Ipv6Addr::from(k.addr).into(),
            k.port,
            k.proto,
            e.container_ifindex,
            e.container_port,
            Ipv6Addr::from(e.container_addr).into(),
        );
    }
    for (id, m) in mappings.iter_mut() {
        let has_ip6 = state.containers.iter().any(|c| c.name == m.container && c.ip6.is_some());
        m.host_ip = match families.get(id).copied().unwrap_or_default() {
            // Every address of both families (or of IPv4 alone, for a
            // container without IPv6): no host address.
            (Some(v4), Some(v6)) if v4.is_unspecified() && v6.is_unspecified() => None,
            (Some(v4), None) if v4.is_unspecified() && !has_ip6 => None,
            (Some(v4), _) => Some(v4.into()),
            (None, Some(v6)) => Some(v6.into()),
            (None, None) => None,
        };
        state.next_mapping_id = state.next_mapping_id.max(id + 1);
    }
    out.mappings = mappings.len();
    state.mappings = mappings.into_values().collect();

    // Rules: each under its own prefix (an entry also carries the rules of
    // shorter prefixes that cover it, for the longest-prefix lookup).
    let p4: LpmTrie<MapData, PolicyKey4, PolicyEntry> = open_map(pins, names::POLICY4)?.try_into()?;
    let p6: LpmTrie<MapData, PolicyKey6, PolicyEntry> = open_map(pins, names::POLICY6)?.try_into()?;
    let mut rules: Vec<(u32, Rule)> = vec![];
    let mut take = |id: u32, direction: u8, addr: IpAddr, key_bits: u32, entry: &PolicyEntry| {
        // The trie's prefix counts the container id and direction too.
        let prefix = key_bits.saturating_sub(POLICY_KEY_FIXED_BITS);
        let direction = if direction == Direction::In as u8 { Direction::In } else { Direction::Out };
        for r in entry.rules.iter().take(entry.count as usize).filter(|r| u32::from(r.prefix_len) == prefix) {
            let Ok(cidr) = IpNet::new(addr, r.prefix_len) else { continue };
            let proto = match (r.proto, addr.is_ipv6()) {
                (0, _) => None,
                (6, _) => Some(RuleProto::Tcp),
                (17, _) => Some(RuleProto::Udp),
                (1, false) => Some(RuleProto::Icmp),
                (58, true) => Some(RuleProto::Icmpv6),
                _ => continue,
            };
            let rule = Rule {
                action: if r.action == POLICY_DENY { Action::Deny } else { Action::Allow },
                direction,
                cidr,
                proto,
                ports: (r.has_ports != 0).then_some((r.port_min, r.port_max)),
            };
            rules.push((id, rule));
        }
    };
    for item in p4.iter() {
        let (k, e) = item.context("reading POLICY4")?;
        let key = k.data();
        take(u32::from_be_bytes(key.container_id), key.direction, Ipv4Addr::from(key.addr).into(), k.prefix_len(), &e);
    }
    for item in p6.iter() {
        let (k, e) = item.context("reading POLICY6")?;
        let key = k.data();
        let addr: Ipv6Addr = key.addr.into();
        take(u32::from_be_bytes(key.container_id), key.direction, addr.into(), k.prefix_len(), &e);
    }
    for (id, rule) in rules {
        if let Some(p) = defaults.get_mut(&id) {
            if !p.rules.contains(&rule) {
                p.rules.push(rule);
                out.rules += 1;
            }
        }
    }
    for (id, mut policy) in defaults {
        let Some(name) = by_id.get(&id) else { continue };
        policy.rules.sort_by_key(|r| (r.direction, r.cidr, r.proto, r.ports, r.action == Action::Deny));
        if policy != ContainerPolicy::default() {
            state.policies.insert(name.clone(), policy);
        }
    }
    out.containers = state.containers.len();

    // The queue of released addresses: not in the pins, but the kernel
    // remembers who was on the bridge lately.
    let neighbours = nl.neighbours().await?;
    let (released4, released6) = recently_released(cfg, &state, &neighbours)?;
    out.released = released4.len() + released6.len();
    (state.released4, state.released6) = (released4, released6);

    // Keep what is replaced, then write the rebuilt state.
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    for file in ["state.json", "journal.jsonl"] {
        let path = cfg.state_dir.join(file);
        if path.exists() {
            let kept = cfg.state_dir.join(format!("{file}.corrupt-{stamp}"));
            std::fs::rename(&path, &kept).with_context(|| format!("keeping {}", path.display()))?;
            out.kept.push(kept.display().to_string());
        }
    }
    let mut store = StateStore::new(&cfg.state_dir)?;
    store.save(&state)?;
    Ok(out)
}

/// The released-address queues (IPv4's, IPv6's) of `cfg`'s subnets,
/// rebuilt from what the kernel remembers of addresses that no container
/// of `state` holds: neighbour entries (a container that left is still
/// there for as long as the host heard from it lately: its ARP and
/// neighbour solicitations for the gateway left one) and conntrack entries
/// (its flows, until collected). Without them a recovered agent would hand
/// a container that just left's address to the next one, and with it the
/// replies still in flight to the old one.
fn recently_released(
    cfg: &ResolvedConfig,
    state: &State,
    neighbours: &[NeighbourSeen],
) -> Result<(VecDeque<Ipv4Addr>, VecDeque<Ipv6Addr>)> {
    let held: HashSet<IpAddr> =
        state.containers.iter().flat_map(|c| [c.ip.map(IpAddr::from), c.ip6.map(IpAddr::from)]).flatten().collect();
    let free = |addr: IpAddr, subnet: IpNet, gateway: IpAddr| {
        subnet.contains(&addr) && addr != gateway && addr != subnet.network() && !held.contains(&addr)
    };
    let released4 = match cfg.net4 {
        Some(net) => released_in::<CtKey4, CtEntry4, Ipv4Addr>(
            &cfg.pin_dir,
            names::CT4,
            |k| [k.saddr.into(), k.daddr.into()],
            neighbours.iter().filter_map(|n| match n.addr {
                IpAddr::V4(a) => Some((a, n.idle_secs)),
                IpAddr::V6(_) => None,
            }),
            |a| free(a.into(), net.subnet.into(), net.gateway.into()),
        )?,
        None => VecDeque::new(),
    };
    let released6 = match cfg.net6 {
        Some(net) => released_in::<CtKey6, CtEntry6, Ipv6Addr>(
            &cfg.pin_dir,
            names::CT6,
            |k| [k.saddr.into(), k.daddr.into()],
            neighbours.iter().filter_map(|n| match n.addr {
                IpAddr::V6(a) => Some((a, n.idle_secs)),
                IpAddr::V4(_) => None,
            }),
            |a| free(a.into(), net.subnet.into(), net.gateway.into()),
        )?,
        None => VecDeque::new(),
    };
    Ok((released4, released6))
}

/// [`recently_released`] for one family: the addresses in the keys of its
/// conntrack table `ct` (seen just now: their flows are still tracked) and
/// its `neighbours` (each with how long ago it was seen), those `free`
/// only.
fn released_in<K: Pod, V: Pod, A: Copy + Ord + Hash>(
    pins: &Path,
    ct: &str,
    addrs: impl Fn(K) -> [A; 2],
    neighbours: impl Iterator<Item = (A, u32)>,
    free: impl Fn(A) -> bool,
) -> Result<VecDeque<A>> {
    let table: BpfHashMap<MapData, K, V> = open_map(pins, ct)?.try_into()?;
    let mut seen = vec![];
    for key in table.keys() {
        seen.extend(addrs(key.with_context(|| format!("reading {ct}"))?).map(|a| (a, 0)));
    }
    seen.extend(neighbours);
    Ok(released_queue(seen, free))
}

/// The queue of released addresses from addresses `seen` some seconds ago
/// (the shortest time for each), those `free` only: the longest unseen
/// first, as the allocator keeps its queue (it hands out the front first),
/// the latest [`crate::ipam::RELEASED_KEPT`].
fn released_queue<A: Copy + Ord + Hash>(seen: Vec<(A, u32)>, free: impl Fn(A) -> bool) -> VecDeque<A> {
    let mut idle: HashMap<A, u32> = HashMap::new();
    for (addr, secs) in seen.into_iter().filter(|(a, _)| free(*a)) {
        idle.entry(addr).and_modify(|s| *s = (*s).min(secs)).or_insert(secs);
    }
    let mut order: Vec<(A, u32)> = idle.into_iter().collect();
    order.sort_by_key(|(a, secs)| (Reverse(*secs), *a));
    let mut queue = VecDeque::new();
    for (addr, _) in order {
        remember_released(&mut queue, addr);
    }
    queue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_addresses_are_queued_longest_unseen_first_free_ones_only() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let seen = vec![
            (ip("10.0.0.7"), 0),   // a flow still tracked
            (ip("10.0.0.5"), 300), // an old neighbour entry
            (ip("10.0.0.7"), 900), // the same address, seen later too
            (ip("10.0.0.9"), 40),
            (ip("10.0.0.2"), 5000), // held by a container
            (ip("10.0.0.1"), 5000), // the gateway
        ];
        let free = |a: Ipv4Addr| a != ip("10.0.0.2") && a != ip("10.0.0.1");
        assert_eq!(released_queue(seen, free), [ip("10.0.0.5"), ip("10.0.0.9"), ip("10.0.0.7")]);
        assert!(released_queue(Vec::<(Ipv4Addr, u32)>::new(), |_| true).is_empty());
    }

    #[test]
    fn an_identity_fits_an_interface_alias_dropping_the_runtime_name_then_the_owner() {
        let id = VethIdentity {
            name: "web".into(),
            netns: "/run/netns/cni-1234".into(),
            ifname: None,
            owner: Some("cni:net:abc:eth0".into()),
            runtime_name: Some("prod/api-7d9".into()),
        };
        assert_eq!(VethIdentity::from_alias(&id.to_alias()), Some(id.clone()));
        let long_name = VethIdentity { runtime_name: Some("r".repeat(200)), ..id.clone() };
        assert_eq!(
            VethIdentity::from_alias(&long_name.to_alias()),
            Some(VethIdentity { runtime_name: None, ..id.clone() }),
            "the owner outlives the runtime name"
        );
        let long = VethIdentity { owner: Some("x".repeat(300)), ..id.clone() };
        let alias = long.to_alias();
        assert!(alias.len() <= MAX_ALIAS);
        assert_eq!(VethIdentity::from_alias(&alias), Some(VethIdentity { owner: None, runtime_name: None, ..id }));
        assert_eq!(VethIdentity::from_alias("someone else's alias"), None);
    }
}
