//! Interface plumbing over rtnetlink: bridge, veth pairs, addresses, routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{InfoData, InfoVeth, LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{netns::Netns, route_mtu::Route4};

/// A veth pair to create: the host end `name` in the connection's
/// namespace, the `peer` in `peer_netns` (None: beside it).
pub struct VethPair<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: Option<&'a Netns>,
    pub mtu: u32,
}

/// A neighbour entry ([`Netlink::neighbours`]): `addr` on interface
/// `ifindex`, last confirmed, used or updated `idle_secs` ago.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourSeen {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub idle_secs: u32,
}

/// A netlink connection bound to one network namespace (the one the socket
/// was created in).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Netlink {
    /// A connection in the calling thread's namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside `ns`: the socket is created there, then served
    /// by the current runtime like any other.
    pub fn connect_in(ns: &Netns) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = ns.run(|| {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
            Ok((conn, handle))
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    /// Every interface of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkMessage>> {
        let mut links = self.handle.link().get().execute();
        let mut out = vec![];
        while let Some(link) = links.try_next().await.context("listing interfaces")? {
            out.push(link);
        }
        Ok(out)
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up ifindex {index}")),
        }
    }

    /// The link's kind (`veth`, `bridge`, ...), if it has one.
    pub async fn link_kind(&self, name: &str) -> Result<Option<String>> {
        let link = self.link_by_name(name).await?.ok_or_else(|| anyhow!("interface {name} does not exist"))?;
        Ok(link_kind(&link))
    }

    pub async fn link_index(&self, name: &str) -> Result<u32> {
        self.link_by_name(name).await?.map(|l| l.header.index).ok_or_else(|| anyhow!("interface {name} does not exist"))
    }

    /// Creates the bridge if absent, gives it `addr/prefix` (if any) if it
    /// lacks it, and brings it up. Idempotent, so a restarted agent reuses it.
    pub async fn ensure_bridge(&self, name: &str, addr: Option<(Ipv4Addr, u8)>) -> Result<u32> {
        let index = match self.link_by_name(name).await? {
            Some(link) => {
                if link_kind(&link).as_deref() != Some("bridge") {
                    anyhow::bail!("interface {name} exists and is not a bridge");
                }
                link.header.index
            }
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .with_context(|| format!("creating bridge {name}"))?;
                self.link_index(name).await?
            }
        };
        if let Some((addr, prefix)) = addr {
            self.ensure_address(index, addr, prefix).await?;
        }
        self.set_up(index).await?;
        Ok(index)
    }

    /// Gives interface `index` the address `addr/prefix` unless it has it.
    /// IPv6 addresses skip duplicate address detection (IFA_F_NODAD): the
    /// agent hands them out, and a tentative address could not be used (nor
    /// routed through) for the second DAD takes.
    pub async fn ensure_address(&self, index: u32, addr: impl Into<IpAddr>, prefix: u8) -> Result<()> {
        self.ensure_address_with(index, addr.into(), prefix, AddressFlags::empty()).await
    }

    /// [`Netlink::ensure_address`] without the route to its prefix
    /// (IFA_F_NOPREFIXROUTE): the prefix is not on-link, everything in it
    /// goes through the routes the caller sets.
    pub async fn ensure_address_off_link(&self, index: u32, addr: Ipv6Addr, prefix: u8) -> Result<()> {
        self.ensure_address_with(index, addr.into(), prefix, AddressFlags::Noprefixroute).await
    }

    async fn ensure_address_with(&self, index: u32, addr: IpAddr, prefix: u8, flags: AddressFlags) -> Result<()> {
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let has = msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(a) if *a == addr));
            if has && msg.header.prefix_len == prefix {
                return Ok(());
            }
        }
        let mut req = self.handle.address().add(index, addr, prefix);
        let flags = if addr.is_ipv6() { flags | AddressFlags::Nodad } else { flags };
        if !flags.is_empty() {
            req.message_mut().attributes.push(AddressAttribute::Flags(flags));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding address {addr}/{prefix} to ifindex {index}")),
        }
    }

    async fn set(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.handle.link().set(msg).execute().await.with_context(|| what.to_string())
    }

    /// Sets the interface's alias (`ip link set ... alias`).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).alias(alias).build(),
            &format!("setting the alias of ifindex {index}"),
        )
        .await
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).up().build(), &format!("bringing ifindex {index} up")).await
    }

    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).controller(bridge).build(),
            &format!("adding ifindex {index} to bridge {bridge}"),
        )
        .await
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).address(mac.to_vec()).build(),
            &format!("setting MAC of ifindex {index}"),
        )
        .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).mtu(mtu).build(), &format!("setting MTU {mtu} on ifindex {index}"))
            .await
    }

    /// The MTU of a link.
    pub async fn link_mtu(&self, name: &str) -> Result<u32> {
        let link = self.link_by_name(name).await?.with_context(|| format!("no interface {name}"))?;
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .with_context(|| format!("interface {name} reports no MTU"))
    }

    /// Creates `pair` in one request, each end with its MTU, the peer with
    /// its MAC and, given a namespace, born there under its final name:
    /// moving an interface between namespaces afterwards waits for an RCU
    /// grace period under the RTNL lock (about 20 ms, the largest part of
    /// an attach), and a rename would follow it. Returns the host end's
    /// ifindex.
    pub async fn create_veth(&self, pair: &VethPair<'_>) -> Result<u32> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pair.peer.to_string())
            .mtu(pair.mtu)
            .address(pair.peer_mac.to_vec());
        if let Some(ns) = pair.peer_netns {
            peer = peer.setns_by_fd(ns.raw_fd());
        }
        let msg = LinkVeth::new(pair.name, pair.peer)
            .mtu(pair.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        let place =
            pair.peer_netns.map_or_else(|| "the host namespace".to_string(), |ns| ns.path().display().to_string());
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("creating veth pair {} / {} (in {place})", pair.name, pair.peer))?;
        self.link_index(pair.name).await
    }

    /// Deletes an interface; a missing one is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting ifindex {index}")),
        }
    }

    /// Every address in the namespace, with its interface index.
    pub async fn ip_addresses(&self) -> Result<Vec<(IpAddr, u32)>> {
        let mut out = vec![];
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            for a in &msg.attributes {
                if let AddressAttribute::Local(ip) | AddressAttribute::Address(ip) = a {
                    if !out.contains(&(*ip, msg.header.index)) {
                        out.push((*ip, msg.header.index));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every IPv4 address in the namespace, with its interface index.
    pub async fn ipv4_addresses(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        Ok(split_families(self.ip_addresses().await?).0)
    }

    /// IPv6 addresses of interface `index`, with their prefix lengths.
    pub async fn ipv6_addresses_of(&self, index: u32) -> Result<Vec<(Ipv6Addr, u8)>> {
        let mut out = vec![];
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V6(ip)) = a {
                    out.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// IPv4 addresses of interface `index`, with their prefix lengths.
    pub async fn ipv4_addresses_of(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = vec![];
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Gateways of the IPv4 default routes in the main table, with their
    /// output interface.
    pub async fn ipv4_default_gateways(&self) -> Result<Vec<(Ipv4Addr, Option<u32>)>> {
        let routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        Ok(default_gateways(routes)
            .await?
            .into_iter()
            .filter_map(|(gateway, oif)| match gateway {
                RouteAddress::Inet(gw) => Some((gw, oif)),
                _ => None,
            })
            .collect())
    }

    /// Routes `addr` alone (a /32 or /128) out of interface `oif`, with
    /// `src` as the host's source address (replacing any route to it).
    pub async fn replace_host_route(&self, addr: IpAddr, oif: u32, src: IpAddr) -> Result<()> {
        use netlink_packet_route::route::RouteScope;
        // IPv6 routes have no scope of their own (the kernel takes universe).
        let scope = if addr.is_ipv4() { RouteScope::Link } else { RouteScope::Universe };
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, host_prefix(addr))
            .and_then(|b| b.pref_source(src))
            .with_context(|| format!("a route to {addr} from {src}"))?
            .output_interface(oif)
            .scope(scope)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("routing {addr}/{} to ifindex {oif}", host_prefix(addr)))
    }

    /// Removes the route to `addr` alone out of `oif`; a missing one is not
    /// an error.
    pub async fn delete_host_route(&self, addr: IpAddr, oif: u32) -> Result<()> {
        use netlink_packet_route::route::{RouteProtocol, RouteScope};
        // Whoever added it: any protocol, any scope (as `ip route del`).
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, host_prefix(addr))
            .with_context(|| format!("a route to {addr}"))?
            .output_interface(oif)
            .scope(RouteScope::NoWhere)
            .protocol(RouteProtocol::Unspec)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the route to {addr} on ifindex {oif}")),
        }
    }

    /// The routes to single addresses (/32 and /128) out of `oif` in the
    /// main table, both families.
    pub async fn host_routes_via(&self, oif: u32) -> Result<Vec<IpAddr>> {
        let mut out = vec![];
        // No family: the dump holds both.
        let mut routes = self.handle.route().get(RouteMessageBuilder::<IpAddr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.context("listing routes")? {
            if msg.header.table != libc::RT_TABLE_MAIN {
                continue;
            }
            let via_oif = msg.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == oif));
            let dst = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
                _ => None,
            });
            if let (true, Some(dst)) = (via_oif, dst) {
                if msg.header.destination_prefix_length == host_prefix(dst) {
                    out.push(dst);
                }
            }
        }
        Ok(out)
    }

    /// The unicast IPv4 routes of every table but the local one, with their
    /// MTUs.
    pub async fn ipv4_routes(&self) -> Result<Vec<Route4>> {
        let mut out = vec![];
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.context("listing IPv4 routes")? {
            if let Some(route) = route4(&msg) {
                out.push(route);
            }
        }
        Ok(out)
    }

    /// Answers neighbour solicitations for `addr` on interface `index`
    /// (`ip -6 neigh add proxy`); the interface needs `proxy_ndp`.
    pub async fn add_ndp_proxy(&self, index: u32, addr: Ipv6Addr) -> Result<()> {
        use netlink_packet_route::neighbour::NeighbourFlags;
        self.handle
            .neighbours()
            .add(index, IpAddr::V6(addr))
            .flags(NeighbourFlags::Proxy)
            .replace()
            .execute()
            .await
            .with_context(|| format!("answering neighbour solicitations for {addr} on ifindex {index}"))
    }

    /// Stops answering for `addr` on `index`; a missing entry is not an error.
    pub async fn delete_ndp_proxy(&self, index: u32, addr: Ipv6Addr) -> Result<()> {
        use netlink_packet_route::{
            neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
            AddressFamily,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Proxy;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(addr)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the NDP proxy entry for {addr} on ifindex {index}")),
        }
    }

    /// Every neighbour entry of the namespace (both families, any state):
    /// whom the kernel heard from or tried to reach, on which interface,
    /// and how long ago.
    pub async fn neighbours(&self) -> Result<Vec<NeighbourSeen>> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        /// The cache info's ages are in clock ticks (USER_HZ).
        const TICKS_PER_SEC: u32 = 100;
        let mut out = vec![];
        let mut entries = self.handle.neighbours().get().execute();
        while let Some(msg) = entries.try_next().await.context("listing neighbours")? {
            let mut addr = None;
            let mut idle_secs = 0;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => addr = Some(IpAddr::V4(*d)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => addr = Some(IpAddr::V6(*d)),
                    NeighbourAttribute::CacheInfo(c) => {
                        idle_secs = c.confirmed.min(c.used).min(c.updated) / TICKS_PER_SEC;
                    }
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(NeighbourSeen { ifindex: msg.header.ifindex, addr, idle_secs });
            }
        }
        Ok(out)
    }

    /// The addresses `index` answers neighbour solicitations for.
    pub async fn ndp_proxies_on(&self, index: u32) -> Result<Vec<Ipv6Addr>> {
        use netlink_packet_route::{
            neighbour::{NeighbourAddress, NeighbourAttribute},
            AddressFamily,
        };
        let mut out = vec![];
        let mut entries = self.handle.neighbours().get().proxies().set_address_family(AddressFamily::Inet6).execute();
        while let Some(msg) = entries.try_next().await.context("listing NDP proxy entries")? {
            if msg.header.ifindex != index {
                continue;
            }
            out.extend(msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => Some(*d),
                _ => None,
            }));
        }
        Ok(out)
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle.route().add(route).execute().await.with_context(|| format!("adding default route via {gateway}"))
    }

    /// The IPv6 default route via `gateway` out of `oif` (an IPv6 gateway
    /// is judged on-link per interface).
    pub async fn add_default_route6(&self, gateway: Ipv6Addr, oif: u32) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gateway).output_interface(oif).build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding IPv6 default route via {gateway}")),
        }
    }

    /// Gateways of the IPv6 default routes in the main table, with their
    /// output interface.
    pub async fn ipv6_default_gateways(&self) -> Result<Vec<(Ipv6Addr, Option<u32>)>> {
        let routes = self.handle.route().get(RouteMessageBuilder::<Ipv6Addr>::new().build()).execute();
        Ok(default_gateways(routes)
            .await?
            .into_iter()
            .filter_map(|(gateway, oif)| match gateway {
                RouteAddress::Inet6(gw) => Some((gw, oif)),
                _ => None,
            })
            .collect())
    }
}

/// The gateway and output interface of every default route of the main
/// table in a route dump (one family's).
async fn default_gateways(
    routes: impl futures::Stream<Item = Result<RouteMessage, rtnetlink::Error>>,
) -> Result<Vec<(RouteAddress, Option<u32>)>> {
    let mut out = vec![];
    futures::pin_mut!(routes);
    while let Some(msg) = routes.try_next().await.context("listing routes")? {
        if msg.header.destination_prefix_length != 0 || msg.header.table != libc::RT_TABLE_MAIN {
            continue;
        }
        let gateway = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(gw) => Some(gw.clone()),
            _ => None,
        });
        let oif = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if let Some(gateway) = gateway {
            out.push((gateway, oif));
        }
    }
    Ok(out)
}

/// The prefix length that covers `addr` alone.
pub fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Addresses of one family, each with its interface index.
pub type IfAddrs<A> = Vec<(A, u32)>;

/// Addresses (with their interface index) split by family.
pub fn split_families(addrs: IfAddrs<IpAddr>) -> (IfAddrs<Ipv4Addr>, IfAddrs<Ipv6Addr>) {
    let mut v4 = vec![];
    let mut v6 = vec![];
    for (addr, index) in addrs {
        match addr {
            IpAddr::V4(a) => v4.push((a, index)),
            IpAddr::V6(a) => v6.push((a, index)),
        }
    }
    (v4, v6)
}

/// The MAC address of a link message, if it has one.
pub fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) if bytes.len() == 6 => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// The link's name.
pub fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The link's alias, if it has one.
pub fn link_alias(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.clone()),
        _ => None,
    })
}

/// The link's kind (`veth`, `bridge`, ...), if it has one.
pub fn link_kind(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            netlink_packet_route::link::LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

/// The bridge (or other controller) a link is enslaved to, if any.
pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// Is the link administratively up?
pub fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(netlink_packet_route::link::LinkFlags::Up)
}

/// What a namespace's interfaces and addresses did, as netlink's
/// notifications tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// An interface was created or changed.
    LinkChanged { index: u32, name: Option<String> },
    /// An interface was deleted, or left the namespace.
    LinkGone { index: u32, name: Option<String> },
    /// An IPv4 or IPv6 address was added or removed.
    AddressesChanged,
    /// An IPv4 route that may matter to `ROUTE_MTUS4` was added, changed or
    /// removed (not a single address's without an MTU: the routes the agent
    /// adds to containers, which never take the fast path's routed way).
    RoutesChanged,
    /// Notifications were lost (the socket's buffer overflowed): anything
    /// may have changed.
    Lost,
}

/// `msg` as a [`Route4`], if it is a unicast route of a table policy
/// routing may pick for forwarded packets (any but the local table, whose
/// routes are the host's own addresses).
fn route4(msg: &RouteMessage) -> Option<Route4> {
    use netlink_packet_route::route::{RouteMetric, RouteType};
    let table = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    let table = table.unwrap_or(u32::from(msg.header.table));
    if table == u32::from(libc::RT_TABLE_LOCAL) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route4 {
        table,
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: msg.header.destination_prefix_length,
        mtu: None,
        mtu_locked: false,
        priority: 0,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => route.dst = *d,
            RouteAttribute::Priority(p) => route.priority = *p,
            RouteAttribute::Metrics(metrics) => {
                for metric in metrics {
                    match metric {
                        RouteMetric::Mtu(mtu) if *mtu != 0 => route.mtu = Some(*mtu),
                        RouteMetric::Lock(bits) => route.mtu_locked = bits & (1 << RTAX_MTU) != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(route)
}

/// The MTU's index among a route's metrics (`RTAX_MTU`), and its bit in
/// the lock metric.
const RTAX_MTU: u32 = 2;

/// A subscription to the link, address and IPv4 route notifications of the
/// namespace it was made in: what changes is told as it happens, so that nothing has
/// to list every interface to find out.
pub struct HostEvents {
    rx: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
}

/// Room for the notifications of an attach storm between two reads (each
/// attach tells of its veth a few times, ~1.5 KiB each); past it they are
/// lost, and [`HostEvent::Lost`] says so.
const EVENTS_BUFFER_BYTES: usize = 4 << 20;

impl HostEvents {
    /// Subscribes in the calling thread's namespace. Needs a tokio runtime.
    pub fn subscribe() -> Result<HostEvents> {
        use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
        use rtnetlink::sys::AsyncSocket as _;
        let (mut conn, _, rx) = rtnetlink::new_connection().context("opening a netlink socket")?;
        let socket = conn.socket_mut().socket_mut();
        socket
            .bind(&rtnetlink::sys::SocketAddr::new(
                0,
                RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE,
            ))
            .context("subscribing to link, address and route notifications")?;
        // SO_RCVBUFFORCE passes net.core.rmem_max (212992 by default) for
        // an agent with CAP_NET_ADMIN; best effort: with a smaller buffer
        // an overflow is still told as Lost.
        let bytes = EVENTS_BUFFER_BYTES as libc::c_int;
        // SAFETY: setsockopt reads `bytes` (a c_int of the size given) on a
        // socket this function owns.
        let forced = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if forced != 0 {
            let _ = socket.set_rx_buf_sz(EVENTS_BUFFER_BYTES);
        }
        tokio::spawn(conn);
        Ok(HostEvents { rx })
    }

    /// The next notification worth telling; None once the socket closed.
    pub async fn next(&mut self) -> Option<HostEvent> {
        use futures::StreamExt as _;
        loop {
            let (message, _) = self.rx.next().await?;
            if let Some(event) = host_event(message.payload) {
                return Some(event);
            }
        }
    }

    /// The notifications already received, without waiting.
    pub fn ready(&mut self) -> Vec<HostEvent> {
        let mut out = vec![];
        while let Ok((message, _)) = self.rx.try_recv() {
            out.extend(host_event(message.payload));
        }
        out
    }
}

fn host_event(
    payload: rtnetlink::packet_core::NetlinkPayload<netlink_packet_route::RouteNetlinkMessage>,
) -> Option<HostEvent> {
    use netlink_packet_route::RouteNetlinkMessage as M;
    use rtnetlink::packet_core::NetlinkPayload as P;
    match payload {
        P::InnerMessage(M::NewLink(link)) => {
            Some(HostEvent::LinkChanged { index: link.header.index, name: link_name(&link) })
        }
        P::InnerMessage(M::DelLink(link)) => {
            Some(HostEvent::LinkGone { index: link.header.index, name: link_name(&link) })
        }
        P::InnerMessage(M::NewAddress(_) | M::DelAddress(_)) => Some(HostEvent::AddressesChanged),
        P::InnerMessage(M::NewRoute(route) | M::DelRoute(route)) => match route4(&route) {
            Some(r) if r.prefix_len < 32 || r.mtu.is_some() => Some(HostEvent::RoutesChanged),
            _ => None,
        },
        P::Overrun(_) => Some(HostEvent::Lost),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::{RouteMetric, RouteType};

    #[test]
    fn addresses_split_by_family_keep_their_interfaces_and_order() {
        let v4: Ipv4Addr = "198.18.0.1".parse().unwrap();
        let v6: Ipv6Addr = "fd00:77::1".parse().unwrap();
        let ll: Ipv6Addr = "fe80::4e:aff:fe00:1".parse().unwrap();
        let (got4, got6) = split_families(vec![(v6.into(), 3), (v4.into(), 2), (ll.into(), 3)]);
        assert_eq!(got4, vec![(v4, 2)]);
        assert_eq!(got6, vec![(v6, 3), (ll, 3)]);
    }

    fn route_message(dst: [u8; 4], prefix_len: u8, table: u8, metrics: Vec<RouteMetric>) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = table;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::from(dst))));
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        msg
    }

    fn event_of(msg: RouteMessage) -> Option<HostEvent> {
        use netlink_packet_route::RouteNetlinkMessage as M;
        use rtnetlink::packet_core::NetlinkPayload as P;
        host_event(P::InnerMessage(M::NewRoute(msg)))
    }

    #[test]
    fn a_route_s_mtu_and_lock_are_read_and_only_routes_that_may_matter_are_told() {
        let main = libc::RT_TABLE_MAIN;
        let msg = route_message([10, 8, 0, 0], 16, main, vec![RouteMetric::Mtu(1400), RouteMetric::Lock(1 << 2)]);
        let route = route4(&msg).unwrap();
        assert_eq!(
            (route.dst, route.prefix_len, route.mtu, route.mtu_locked),
            ("10.8.0.0".parse().unwrap(), 16, Some(1400), true)
        );
        assert!(matches!(event_of(msg), Some(HostEvent::RoutesChanged)));
        // The routes the agent adds to containers: a single address, no MTU.
        assert!(event_of(route_message([10, 88, 0, 5], 32, main, vec![])).is_none());
        assert!(matches!(
            event_of(route_message([192, 0, 2, 7], 32, main, vec![RouteMetric::Mtu(1280)])),
            Some(HostEvent::RoutesChanged)
        ));
        // The local table's: the host's own addresses, never a forwarding route.
        assert!(event_of(route_message([10, 8, 0, 0], 16, libc::RT_TABLE_LOCAL, vec![])).is_none());
        // Another table's, which policy routing may pick.
        let vpn = route_message([0, 0, 0, 0], 0, 100, vec![RouteMetric::Mtu(1380)]);
        assert_eq!(route4(&vpn).map(|r| (r.table, r.mtu)), Some((100, Some(1380))));
        assert!(matches!(event_of(vpn), Some(HostEvent::RoutesChanged)));
    }
}
