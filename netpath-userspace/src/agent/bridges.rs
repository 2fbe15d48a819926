//! The instance's bridges. A Linux bridge takes at most 1023 ports
//! (BR_MAX_PORTS), so an instance spreads its containers over several
//! bridges on its one subnet: the first (`bridge`, which holds the subnet's
//! route) and overflow bridges `<bridge>-1`, `<bridge>-2`, ... opened when
//! the ones before are full and removed when they empty.
//!
//! Every bridge has the gateway's address and MAC, so a container sees the
//! same gateway whichever bridge it hangs off, and the datapath (which
//! knows the gateway by its MAC) treats them all alike. The host routes
//! each container of an overflow bridge there (a /32), and with more than
//! one bridge answers ARP for containers on the others (proxy ARP, without
//! its delay): containers on different bridges reach each other through
//! the host, as a routed hop (the fast path redirects it like any other).
//!
//! IPv6 has no proxy for a whole interface, only entries per address, so
//! its layout differs: the host routes each overflow container's address
//! there (a /128) and answers for it on the first bridge (an NDP proxy
//! entry), while an overflow container holds its /64 off-link and sends
//! everything to the gateway. That costs one entry per overflow container,
//! where proxying every container on every bridge would cost one per
//! container and bridge.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};

use crate::{
    model::{BridgeStatus, Container},
    netlink::{link_controller, link_kind, Netlink},
    netns::write_iface_sysctl,
};

/// Most bridges one instance opens (its first and 63 overflow ones): with
/// 1023 ports each, 65472 containers (below the datapath's MAX_CONTAINERS).
pub const MAX_BRIDGES: usize = 64;

/// Most ports a Linux bridge takes (port numbers are 10 bits, 0 reserved).
pub const MAX_BRIDGE_PORTS: u32 = 1023;

/// What every bridge of the instance shares.
#[derive(Clone, Copy)]
pub struct BridgeLayout {
    /// The IPv4 gateway and the subnet's prefix length (the first bridge's
    /// address), on an instance with IPv4.
    pub gateway: Option<(Ipv4Addr, u8)>,
    /// The IPv6 gateway and the IPv6 subnet's prefix length, on an
    /// instance with IPv6.
    pub gateway6: Option<(Ipv6Addr, u8)>,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Containers per bridge before the next one opens.
    pub max_ports: u32,
}

/// A container's addresses, which its bridge routes.
#[derive(Clone, Copy, Debug)]
pub struct PortAddrs {
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
}

impl PortAddrs {
    pub fn of(c: &Container) -> PortAddrs {
        PortAddrs { ip: c.ip, ip6: c.ip6 }
    }
}

struct Bridge {
    /// 0: the instance's first bridge; k: `<bridge>-k`.
    number: usize,
    name: String,
    index: u32,
    ports: u32,
}

/// The bridges and which one each container's veth is a port of.
pub struct Bridges {
    base: String,
    layout: BridgeLayout,
    /// Ordered by number; the first bridge always first.
    list: Vec<Bridge>,
    /// Veth ifindex -> bridge ifindex.
    ports: HashMap<u32, u32>,
}

/// Name of bridge `number` of the instance whose first bridge is `base`.
pub fn bridge_name(base: &str, number: usize) -> String {
    if number == 0 {
        base.to_string()
    } else {
        format!("{base}-{number}")
    }
}

/// The suffix overflow bridges add to the first bridge's name, at most.
pub const OVERFLOW_SUFFIX_LEN: usize = 3;

impl Bridges {
    /// Sets up the first bridge and adopts overflow bridges a previous run
    /// left (their ports are counted by [`Bridges::adopt_port`]).
    pub async fn setup(nl: &Netlink, base: &str, layout: BridgeLayout) -> Result<Bridges> {
        let mut bridges = Bridges { base: base.to_string(), layout, list: vec![], ports: HashMap::new() };
        let index = bridges.open(nl, 0).await?;
        bridges.list.push(Bridge { number: 0, name: base.to_string(), index, ports: 0 });
        for number in 1..MAX_BRIDGES {
            let name = bridge_name(base, number);
            // Only bridges: an interface of that name that is something
            // else is not ours (opening that bridge will then fail, naming it).
            if nl.link_by_name(&name).await?.as_ref().and_then(link_kind).as_deref() == Some("bridge") {
                let index = bridges.open(nl, number).await?;
                bridges.list.push(Bridge { number, name, index, ports: 0 });
            }
        }
        bridges.sync_proxy_arp()?;
        Ok(bridges)
    }

    /// The bridges' interface indexes.
    pub fn indexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.list.iter().map(|b| b.index)
    }

    /// Do all of the instance's bridges still exist among `links` (a
    /// netlink dump)?
    pub fn all_present(&self, links: &[netlink_packet_route::link::LinkMessage]) -> bool {
        self.list
            .iter()
            .all(|b| links.iter().any(|l| l.header.index == b.index && link_kind(l).as_deref() == Some("bridge")))
    }

    /// Sets the bridges up again after one was deleted behind the agent's
    /// back: the missing ones are created anew (with their addresses and
    /// settings); the containers' veths are then adopted again (see
    /// [`Bridges::adopt_port`]), which makes them ports once more.
    pub async fn rebuild(&mut self, nl: &Netlink) -> Result<()> {
        *self = Bridges::setup(nl, &self.base, self.layout).await?;
        Ok(())
    }

    /// Creates (or takes over) bridge `number` and gives it the gateway's
    /// address, MAC and settings.
    async fn open(&self, nl: &Netlink, number: usize) -> Result<u32> {
        let name = bridge_name(&self.base, number);
        let l = &self.layout;
        // Only the first bridge holds the subnet's route; an overflow
        // bridge's containers each get a /32.
        let gateway = l.gateway.map(|(gateway, prefix)| (gateway, if number == 0 { prefix } else { 32 }));
        let index = nl.ensure_bridge(&name, gateway).await.with_context(|| format!("setting up bridge {name}"))?;
        // A MAC set explicitly stays: a bridge's own would follow its ports.
        nl.set_mac(index, l.mac).await.with_context(|| format!("setting the MAC of {name}"))?;
        nl.set_mtu(index, l.mtu).await.with_context(|| format!("setting the MTU of {name}"))?;
        if let Some((gateway6, prefix6)) = l.gateway6 {
            // IPv6 on, the gateway without DAD (it is the agent's to give),
            // and no router advertisements taken from the containers' side.
            for (key, value) in [("disable_ipv6", "0"), ("accept_dad", "0"), ("accept_ra", "0")] {
                write_iface_sysctl("net.ipv6.conf", &name, key, value)?;
            }
            // The first bridge answers for overflow containers' addresses
            // (their proxy entries), at once as ARP does.
            if number == 0 {
                write_iface_sysctl("net.ipv6.conf", &name, "proxy_ndp", "1")?;
                write_iface_sysctl("net.ipv6.neigh", &name, "proxy_delay", "0")?;
            }
            let prefix6 = if number == 0 { prefix6 } else { 128 };
            nl.ensure_address(index, gateway6, prefix6)
                .await
                .with_context(|| format!("giving bridge {name} the IPv6 gateway {gateway6}/{prefix6}"))?;
        }
        // Hairpin traffic leaves the bridge the way it came: no ICMP redirects.
        write_iface_sysctl("net.ipv4.conf", &name, "send_redirects", "0")?;
        // Replies of published ports get a host address as their source on
        // the container's veth, before the host routes them; without
        // accept_local the kernel would drop them as martians. Containers
        // cannot abuse this: anti-spoofing runs before any translation.
        write_iface_sysctl("net.ipv4.conf", &name, "accept_local", "1")?;
        // ARP requests are broadcasts, which proxy ARP answers only after a
        // random delay of up to proxy_delay (0.8 s by default).
        write_iface_sysctl("net.ipv4.neigh", &name, "proxy_delay", "0")?;
        Ok(index)
    }

    /// Proxy ARP on every bridge while there is more than one (a container
    /// asks for its neighbours on its own bridge; the host answers for
    /// those on the others), off on a lone first bridge as it always was.
    fn sync_proxy_arp(&self) -> Result<()> {
        let on = if self.list.len() > 1 { "1" } else { "0" };
        for b in &self.list {
            write_iface_sysctl("net.ipv4.conf", &b.name, "proxy_arp", on)?;
        }
        Ok(())
    }

    /// The first bridge's ifindex.
    pub fn first_index(&self) -> u32 {
        self.list[0].index
    }

    /// How many containers all bridges together can take.
    pub fn capacity(&self) -> usize {
        self.layout.max_ports as usize * MAX_BRIDGES
    }

    /// The bridge `veth` is a port of, if it is one of the instance's.
    pub fn bridge_of(&self, veth: u32) -> Option<u32> {
        self.ports.get(&veth).copied()
    }

    /// The name of the bridge `veth` is a port of.
    pub fn name_of(&self, veth: u32) -> Option<String> {
        let bridge = self.bridge_of(veth)?;
        self.list.iter().find(|b| b.index == bridge).map(|b| b.name.clone())
    }

    /// Is `veth` a port of an overflow bridge (not the first)?
    pub fn on_overflow(&self, veth: u32) -> bool {
        self.bridge_of(veth).is_some_and(|b| b != self.first_index())
    }

    /// Is `index` one of the instance's bridges?
    pub fn is_bridge(&self, index: u32) -> bool {
        self.list.iter().any(|b| b.index == index)
    }

    /// Attaches a container's host veth to the first bridge with room,
    /// opening the next overflow bridge if all are full, and routes the
    /// container's address there if it is an overflow bridge.
    pub async fn attach(&mut self, nl: &Netlink, veth: u32, addrs: PortAddrs) -> Result<()> {
        let bridge = match self.list.iter().find(|b| b.ports < self.layout.max_ports) {
            Some(b) => b.index,
            None => self.open_next(nl).await?,
        };
        nl.set_controller(veth, bridge).await?;
        self.count(veth, bridge);
        self.route(nl, bridge, addrs).await
    }

    /// Counts an existing container's veth on the bridge it is a port of
    /// (an agent restart); one that is on none of them (detached behind
    /// the agent's back) is attached again.
    pub async fn adopt_port(&mut self, nl: &Netlink, veth: u32, addrs: PortAddrs) -> Result<()> {
        let link = nl.link_by_index(veth).await?;
        match link.as_ref().and_then(link_controller) {
            Some(bridge) if self.is_bridge(bridge) => {
                self.count(veth, bridge);
                self.route(nl, bridge, addrs).await
            }
            _ => {
                tracing::warn!(ifindex = veth, "a container's veth is on none of the instance's bridges: attaching it");
                self.attach(nl, veth, addrs).await
            }
        }
    }

    fn count(&mut self, veth: u32, bridge: u32) {
        if let Some(b) = self.list.iter_mut().find(|b| b.index == bridge) {
            b.ports += 1;
        }
        self.ports.insert(veth, bridge);
    }

    /// The container's IPv6 address, if the instance carries IPv6.
    fn ip6_of(&self, addrs: PortAddrs) -> Option<(Ipv6Addr, Ipv6Addr)> {
        Some((addrs.ip6?, self.layout.gateway6?.0))
    }

    /// Routes a container of an overflow bridge (those of the first are on
    /// the subnets' routes) and has the first bridge answer for its IPv6
    /// address.
    async fn route(&self, nl: &Netlink, bridge: u32, addrs: PortAddrs) -> Result<()> {
        if bridge == self.first_index() {
            return Ok(());
        }
        if let (Some(ip), Some((gateway, _))) = (addrs.ip, self.layout.gateway) {
            nl.replace_host_route(ip.into(), bridge, gateway.into()).await?;
        }
        if let Some((ip6, gateway6)) = self.ip6_of(addrs) {
            nl.replace_host_route(ip6.into(), bridge, gateway6.into()).await?;
            nl.add_ndp_proxy(self.first_index(), ip6).await?;
        }
        Ok(())
    }

    /// Forgets a container's port (its veth is gone or going); its route
    /// goes, and so does an overflow bridge left empty.
    pub async fn detach(&mut self, nl: &Netlink, veth: u32, addrs: PortAddrs) -> Result<()> {
        let Some(bridge) = self.ports.remove(&veth) else { return Ok(()) };
        let Some(pos) = self.list.iter().position(|b| b.index == bridge) else { return Ok(()) };
        self.list[pos].ports = self.list[pos].ports.saturating_sub(1);
        if pos == 0 {
            return Ok(());
        }
        if let Some(ip6) = addrs.ip6 {
            nl.delete_ndp_proxy(self.first_index(), ip6).await?;
        }
        if self.list[pos].ports > 0 {
            if let Some(ip) = addrs.ip {
                nl.delete_host_route(ip.into(), bridge).await?;
            }
            if let Some(ip6) = addrs.ip6 {
                nl.delete_host_route(ip6.into(), bridge).await?;
            }
            return Ok(());
        }
        let b = self.list.remove(pos);
        tracing::info!(bridge = %b.name, "overflow bridge empty: removing it");
        nl.delete_link(b.index).await.with_context(|| format!("removing bridge {}", b.name))?;
        self.sync_proxy_arp()
    }

    /// After a restart has counted every container: overflow bridges with
    /// no container go, and routes on the others and NDP proxy entries on
    /// the first to addresses that are no container's there (removed while
    /// no agent ran).
    pub async fn prune(&mut self, nl: &Netlink, addresses: &HashMap<u32, PortAddrs>) -> Result<()> {
        let mut keep = vec![];
        for b in std::mem::take(&mut self.list) {
            if b.number != 0 && b.ports == 0 {
                tracing::info!(bridge = %b.name, "overflow bridge without containers: removing it");
                nl.delete_link(b.index).await.with_context(|| format!("removing bridge {}", b.name))?;
                continue;
            }
            if b.number != 0 {
                let wanted: HashSet<IpAddr> = self
                    .ports
                    .iter()
                    .filter(|(_, bridge)| **bridge == b.index)
                    .filter_map(|(veth, _)| addresses.get(veth).copied())
                    .flat_map(|a| [a.ip.map(IpAddr::from), self.ip6_of(a).map(|(ip6, _)| ip6.into())])
                    .flatten()
                    .collect();
                for stale in nl.host_routes_via(b.index).await?.into_iter().filter(|a| !wanted.contains(a)) {
                    nl.delete_host_route(stale, b.index).await?;
                }
            }
            keep.push(b);
        }
        self.list = keep;
        let first = self.first_index();
        let proxied: HashSet<Ipv6Addr> = self
            .ports
            .iter()
            .filter(|(_, bridge)| **bridge != first)
            .filter_map(|(veth, _)| addresses.get(veth).and_then(|a| self.ip6_of(*a)).map(|(ip6, _)| ip6))
            .collect();
        for stale in nl.ndp_proxies_on(first).await?.into_iter().filter(|a| !proxied.contains(a)) {
            nl.delete_ndp_proxy(first, stale).await?;
        }
        self.sync_proxy_arp()
    }

    /// Opens the lowest-numbered overflow bridge not open yet.
    async fn open_next(&mut self, nl: &Netlink) -> Result<u32> {
        let Some(number) = (1..MAX_BRIDGES).find(|n| !self.list.iter().any(|b| b.number == *n)) else {
            anyhow::bail!("all {MAX_BRIDGES} bridges of the instance are full");
        };
        let name = bridge_name(&self.base, number);
        if nl.link_by_name(&name).await?.is_some() {
            anyhow::bail!("interface {name} exists but is not one of the instance's bridges");
        }
        let index = self.open(nl, number).await?;
        tracing::info!(bridge = %name, "bridges full: opened overflow bridge");
        let pos = self.list.iter().position(|b| b.number > number).unwrap_or(self.list.len());
        self.list.insert(pos, Bridge { number, name, index, ports: 0 });
        self.sync_proxy_arp()?;
        Ok(index)
    }

    /// For `status`: every bridge and its containers.
    pub fn status(&self) -> Vec<BridgeStatus> {
        self.list.iter().map(|b| BridgeStatus { name: b.name.clone(), containers: b.ports as usize }).collect()
    }
}

// Every container of a full instance has its CONTAINERS entry.
const _: () = assert!(MAX_BRIDGES * MAX_BRIDGE_PORTS as usize <= netpath_common::maps::MAX_CONTAINERS);
