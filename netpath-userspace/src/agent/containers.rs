//! Containers: wiring a network namespace to a bridge (veth pair,
//! address, route, per-veth programs) and every trace of it away again.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use netpath_common::{
    container::{CONTAINER_F_DEFAULT_DENY_IN, CONTAINER_F_DEFAULT_DENY_OUT, CONTAINER_F_IPV4, CONTAINER_F_IPV6},
    hooks::Target,
    maps::MAX_IFACES,
    stats::IFACE_SLOT_FIRST_CONTAINER,
    ContainerEntry, Hook, In6Addr,
};

use super::{
    bridges::{PortAddrs, MAX_BRIDGES},
    AgentError, Inner,
};
use crate::{
    config::validate_ifname,
    config::{validate_name, ResolvedConfig},
    model::{Container, ContainerRequest, ErrorReason, GcRequest, Mapping},
    netlink::{Netlink, VethPair},
    netns::{resolve_path, Netns, SysctlSection},
    policy::Action,
    recover::VethIdentity,
    state::Change,
};

/// Name of the container-side interface.
pub const CONTAINER_IFNAME: &str = "eth0";

/// MACs on the bridge (containers' and the gateway's) are derived from the
/// IPv4 address (locally administered, as Docker does), so they are unique
/// on the bridge and predictable; on an IPv6-only instance from the IPv6
/// address's last 32 bits (the allocator hands addresses out from the
/// bottom of the subnet, and a clash is refused by name anyway).
pub fn container_mac(ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> [u8; 6] {
    let o = match (ip, ip6) {
        (Some(ip), _) => ip.octets(),
        (None, Some(ip6)) => (u128::from(ip6) as u32).to_be_bytes(),
        (None, None) => [0; 4],
    };
    [0x02, 0x4e, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`) as bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split([':', '-'])
        .map(|part| if part.len() == 2 { u8::from_str_radix(part, 16).ok() } else { None })
        .collect::<Option<_>>()
        .with_context(|| format!("MAC {text:?} is not of the form aa:bb:cc:dd:ee:ff"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("MAC {text:?} is not of the form aa:bb:cc:dd:ee:ff"))
}

/// A MAC a container may have: unicast and not all zeros (anti-spoofing
/// holds it to this address, and neighbours must be able to learn it).
fn container_mac_from_request(text: &str) -> Result<[u8; 6], AgentError> {
    let mac = parse_mac(text).map_err(|e| AgentError::BadRequest(format!("{e:#}")))?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(AgentError::BadRequest(format!("MAC {text:?} is not a unicast address")));
    }
    Ok(mac)
}

impl Inner {
    /// Writes the container entry into the map, then attaches (or re-attaches) the
    /// per-veth programs. The map entry comes first: the ingress program
    /// drops frames from interfaces it has no container for.
    pub(super) fn program_container(&mut self, c: &Container) -> Result<()> {
        self.write_container_entry(c)?;
        for hook in Hook::on(Target::ContainerVeth) {
            self.dp.attach(&c.veth, hook)?;
        }
        Ok(())
    }

    /// CONTAINERS[ifindex] for a container, with its policy defaults and a
    /// policy epoch moved on from the one there: the container's verdicts
    /// are judged again by the datapath at their next packet (the policy
    /// may have changed; at a restart, it may have while no agent ran).
    pub(super) fn write_container_entry(&mut self, c: &Container) -> Result<()> {
        let policy_epoch = self.dp.container(c.ifindex)?.map_or(0, |old| old.policy_epoch.wrapping_add(1));
        let p = self.policy_of(&c.name);
        let mut flags = 0;
        // Each family is carried for a container only while its address is
        // in the instance's subnet of it (the configuration may have
        // dropped it).
        let ipv4 = c.ip.map(|a| a.octets()).filter(|a| self.dp_config.in_subnet4(*a));
        if ipv4.is_some() {
            flags |= CONTAINER_F_IPV4;
        }
        let ipv6 = c.ip6.map(In6Addr::from).filter(|a| self.dp_config.in_subnet6(*a));
        if ipv6.is_some() {
            flags |= CONTAINER_F_IPV6;
        }
        if p.default_in == Action::Deny {
            flags |= CONTAINER_F_DEFAULT_DENY_IN;
        }
        if p.default_out == Action::Deny {
            flags |= CONTAINER_F_DEFAULT_DENY_OUT;
        }
        let ep = ContainerEntry {
            ipv4: ipv4.unwrap_or_default(),
            ipv6: ipv6.unwrap_or_default(),
            mac: parse_mac(&c.mac).with_context(|| format!("container {}", c.name))?,
            flags,
            ifindex: c.ifindex,
            id: c.id,
            policy_epoch,
            stats_slot: c.stats_slot,
        };
        self.dp.set_container(c.ifindex, &ep)
    }

    /// Removes a container's map entries and link pins. Every step is
    /// tried even if an earlier one fails; the first error is returned.
    pub(super) fn forget_datapath(&mut self, c: &Container) -> Result<()> {
        let mut results: Vec<Result<()>> =
            Hook::on(Target::ContainerVeth).map(|h| self.dp.detach(&c.veth, h)).collect();
        results.push(self.dp.remove_container(c.ifindex));
        // Zeroed for the next container given the slot (a container of a
        // state from before slots, gone at the restart, has none).
        if c.stats_slot >= IFACE_SLOT_FIRST_CONTAINER {
            results.push(self.dp.reset_stats(c.stats_slot));
        }
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// Attaches a container, with the ports it publishes; on any failure
    /// nothing of it is left (interfaces, map entries, address, mappings).
    /// Whatever a request can be refused for is checked before anything
    /// is created.
    pub(super) async fn add_container(
        &mut self,
        cfg: &ResolvedConfig,
        req: ContainerRequest,
    ) -> Result<Container, AgentError> {
        validate_name("container", &req.name, 64).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let ifname = req.ifname.clone().unwrap_or_else(|| CONTAINER_IFNAME.to_string());
        validate_ifname("container", &ifname).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let requested_mac = req.mac.as_deref().map(container_mac_from_request).transpose()?;
        if self.state.containers.iter().any(|c| c.name == req.name) {
            return Err(AgentError::refused(
                ErrorReason::NameInUse,
                format!("container {:?} already exists", req.name),
            ));
        }
        room_for_one_more(self.state.containers.len(), self.bridges.capacity())?;
        let netns_path = resolve_path(&req.netns);
        // A handed-off interface goes into a netns that may not exist yet.
        if req.handoff && req.netns.is_empty() {
            return Err(AgentError::BadRequest("a handoff needs the netns the runtime will move it into".into()));
        }
        let target = if req.handoff { None } else { Some(self.target_netns(&req, &netns_path, &ifname).await?) };
        let ip = self.allocate4(&req.name, req.ip)?;
        // A handed-off interface is configured by its runtime, which knows
        // of an IPv6 address only if it asked for one.
        let allocated6 = if !req.handoff || req.ip6.is_some() { self.allocate6(&req.name, req.ip6) } else { Ok(None) };
        let ip6 = match allocated6 {
            Ok(None) if ip.is_none() => Err(AgentError::BadRequest(
                "the instance is IPv6-only: a handed-off container needs the IPv6 address its runtime configures (ip6)"
                    .into(),
            )),
            other => other,
        };
        let ip6 = match ip6 {
            Ok(ip6) => ip6,
            Err(e) => {
                self.release_addresses(ip, None);
                return Err(e);
            }
        };
        // Ids only grow and never share an owner slot with a live container's.
        let live = self.state.containers.iter().map(|c| c.id);
        let Some((ids, next_id)) = super::mappings::owner_ids(self.state.next_id, 1, live) else {
            self.release_addresses(ip, ip6);
            return Err(AgentError::Conflict("no free container id slot".into()));
        };
        let id = ids[0];
        let veth = format!("npv{id}");
        let mac = requested_mac.unwrap_or(container_mac(ip, ip6));
        let mut container = Container {
            name: req.name.clone(),
            netns: target
                .as_ref()
                .map_or_else(|| netns_path.display().to_string(), |(ns, _)| ns.path().display().to_string()),
            ip,
            ip6,
            mac: format_mac(&mac),
            veth: veth.clone(),
            ifindex: 0,
            id,
            ifname,
            owner: req.owner.clone(),
            handoff_ifname: None,
            runtime_name: self.runtime_name_for(&req),
            stats_slot: StatsSlots::of(&self.state.containers)
                .take()
                .ok_or_else(|| AgentError::Conflict("no free counter slot".into()))?,
        };
        let mappings = self
            .check_mac_free(&mac, cfg)
            .and_then(|()| self.new_mappings(&[(&container, req.ports.as_slice())]))
            .and_then(|mappings| self.check_publishable(&mappings).map(|()| mappings));
        let mappings = match mappings {
            Ok(mappings) => mappings,
            Err(e) => {
                self.release_addresses(ip, ip6);
                return Err(e);
            }
        };
        match self.plumb(cfg, target.as_ref(), &mut container).await {
            Ok(()) => {}
            Err(e) => {
                self.unplumb(&container).await;
                self.release_addresses(ip, ip6);
                return Err(AgentError::Internal(e.context(format!("adding container {:?}", req.name))));
            }
        }
        // Journaled, not a snapshot of every container: attaching costs the
        // same with 10 or 2000 of them.
        if let Err(e) = self.record(Change::AddContainer { container: container.clone(), next_id }) {
            self.state.containers.retain(|c| c.name != container.name);
            self.unplumb(&container).await;
            self.release_addresses(ip, ip6);
            return Err(AgentError::Internal(e));
        }
        if let Some(inode) = target.as_ref().and_then(|(ns, _)| ns.inode().ok()) {
            self.netns_inodes.insert(container.name.clone(), inode);
        }
        if !mappings.is_empty() {
            if let Err(e) = self.publish_mappings(mappings) {
                if let Err(rollback) = self.del_container(&container.name).await {
                    tracing::warn!("rollback of container {}: {rollback:#}", container.name);
                }
                return Err(e);
            }
        }
        tracing::info!(
            container = %container.name,
            ip = %container.ip.map_or_else(|| "none".to_string(), |ip| ip.to_string()),
            ip6 = %container.ip6.map_or_else(|| "none".to_string(), |ip| ip.to_string()),
            veth = %container.veth,
            "container added"
        );
        Ok(container)
    }

    /// A new container's IPv4 address: `requested` or the next free one on
    /// an instance with an IPv4 subnet; none on an IPv6-only one (where
    /// asking for one is refused).
    fn allocate4(&mut self, name: &str, requested: Option<Ipv4Addr>) -> Result<Option<Ipv4Addr>, AgentError> {
        match (&mut self.ipam, requested) {
            (Some(ipam), requested) => Ok(Some(ipam.allocate(name, requested)?)),
            (None, Some(ip)) => Err(AgentError::BadRequest(format!(
                "IPv4 address {ip} requested, but the instance is IPv6-only (subnet is \"none\")"
            ))),
            (None, None) => Ok(None),
        }
    }

    /// A new container's IPv6 address: `requested` or the next free one on
    /// an instance with an IPv6 subnet; none on one without (where asking
    /// for one is refused).
    fn allocate6(&mut self, name: &str, requested: Option<Ipv6Addr>) -> Result<Option<Ipv6Addr>, AgentError> {
        match (&mut self.ipam6, requested) {
            (Some(ipam6), requested) => Ok(Some(ipam6.allocate(name, requested)?)),
            (None, Some(ip6)) => Err(AgentError::BadRequest(format!(
                "IPv6 address {ip6} requested, but the instance has no IPv6 subnet (subnet6 is not configured)"
            ))),
            (None, None) => Ok(None),
        }
    }

    /// Gives a container's addresses back to their allocators.
    pub(super) fn release_addresses(&mut self, ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) {
        if let (Some(ipam), Some(ip)) = (&mut self.ipam, ip) {
            ipam.release(ip);
        }
        if let (Some(ipam6), Some(ip6)) = (&mut self.ipam6, ip6) {
            ipam6.release(ip6);
        }
    }

    /// The netns a container's interface goes into, checked: it exists, is
    /// not the agent's own nor another container's, and has no interface
    /// named `ifname`.
    async fn target_netns(
        &self,
        req: &ContainerRequest,
        netns_path: &std::path::Path,
        ifname: &str,
    ) -> Result<(Netns, Netlink), AgentError> {
        if !req.netns.is_empty() && !netns_path.exists() {
            return Err(AgentError::refused(
                ErrorReason::NetnsMissing,
                format!("netns {:?} ({}) cannot be opened: it does not exist", req.netns, netns_path.display()),
            ));
        }
        let ns = Netns::open(&req.netns).map_err(|e| AgentError::BadRequest(format!("{e:#}")))?;
        if ns.inode()? == self.own_netns_inode {
            return Err(AgentError::BadRequest(format!(
                "netns {:?} is the agent's own network namespace, not a container's",
                req.netns
            )));
        }
        // Compared with the inodes recorded at attach, not by opening every
        // container's netns (which made attaching slower as containers piled
        // up); a match is confirmed on the file (inode numbers are reused
        // once a namespace is gone), and a container attached without one
        // (a handoff) is looked at on the file.
        let inode = ns.inode()?;
        let on_file = |c: &Container| Netns::open(&c.netns).and_then(|n| n.inode()).ok() == Some(inode);
        if let Some(other) = self.state.containers.iter().find(|c| match self.netns_inodes.get(&c.name) {
            Some(recorded) => *recorded == inode && on_file(c),
            None => on_file(c),
        }) {
            return Err(AgentError::refused(
                ErrorReason::NetnsInUse,
                format!("netns {:?} already belongs to container {:?}", req.netns, other.name),
            ));
        }
        let cnl = Netlink::connect_in(&ns)?;
        if cnl.link_by_name(ifname).await?.is_some() {
            return Err(AgentError::refused(
                ErrorReason::NetnsInUse,
                format!("netns {:?} already has an interface named {ifname}", req.netns),
            ));
        }
        Ok((ns, cnl))
    }

    /// The runtime's name of a new container, if it is one no other
    /// container answers to (a name that could mean two containers would
    /// make `policy` and `map` ambiguous: it is left out, with a warning).
    fn runtime_name_for(&self, req: &ContainerRequest) -> Option<String> {
        let name = req.runtime_name.as_deref().filter(|n| !n.is_empty())?;
        if let Err(e) = validate_runtime_name(name) {
            tracing::warn!(container = %req.name, "ignoring runtime name: {e:#}");
            return None;
        }
        if let Some(other) = self.state.containers.iter().find(|c| c.is_named(name)) {
            tracing::warn!(container = %req.name, "runtime name {name:?} already names container {:?}", other.name);
            return None;
        }
        Some(name.to_string())
    }

    /// Sets the runtime's name of a container learnt after it was attached
    /// (Docker tells drivers no container names).
    pub(super) fn set_runtime_name(&mut self, container: &str, name: &str) -> Result<(), AgentError> {
        validate_runtime_name(name).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        if let Some(other) = self.state.containers.iter().find(|c| c.name != container && c.is_named(name)) {
            return Err(AgentError::refused(
                ErrorReason::NameInUse,
                format!("runtime name {name:?} already names container {:?}", other.name),
            ));
        }
        let c =
            self.state.containers.iter_mut().find(|c| c.name == container).ok_or_else(|| {
                AgentError::refused(ErrorReason::NotFound, format!("no container named {container:?}"))
            })?;
        if c.runtime_name.as_deref() == Some(name) {
            return Ok(());
        }
        c.runtime_name = Some(name.to_string());
        self.save()?;
        tracing::info!(container = %container, runtime_name = %name, "runtime name learnt");
        Ok(())
    }

    /// Writes what `container`'s veth says about it again (its runtime
    /// name changed), for `netpathd --recover`; a failure is only logged:
    /// the state file has it.
    pub(super) async fn refresh_identity(&self, container: &str) {
        let Some(c) = self.state.containers.iter().find(|c| c.name == container) else { return };
        if let Err(e) = self.nl.set_alias(c.ifindex, &VethIdentity::of(c).to_alias()).await {
            tracing::warn!(container = %container, "the veth's identity was not updated: {e:#}");
        }
    }

    /// A container's MAC must be its own on the bridge.
    fn check_mac_free(&self, mac: &[u8; 6], cfg: &ResolvedConfig) -> Result<(), AgentError> {
        let text = format_mac(mac);
        if *mac == container_mac(cfg.net4.map(|n| n.gateway), cfg.net6.map(|n| n.gateway)) {
            return Err(AgentError::refused(ErrorReason::MacInUse, format!("MAC {text} is the gateway's")));
        }
        if let Some(other) = self.state.containers.iter().find(|c| c.mac == text) {
            return Err(AgentError::refused(
                ErrorReason::MacInUse,
                format!("MAC {text} belongs to container {:?}", other.name),
            ));
        }
        Ok(())
    }

    /// Creates and wires the veth pair; fills in `c.ifindex` as soon as the
    /// host side exists so that a failure can be rolled back.
    /// Without a `target` the container's end stays in the agent's
    /// namespace for the runtime to move (a handoff).
    async fn plumb(
        &mut self,
        cfg: &ResolvedConfig,
        target: Option<&(Netns, Netlink)>,
        c: &mut Container,
    ) -> Result<()> {
        // A handoff's peer waits in the host namespace under a name of
        // ours; otherwise it is born in the container's under its own (its
        // absence there was checked with the request).
        let peer = match target {
            Some(_) => c.ifname.clone(),
            None => format!("npp{}", c.id),
        };
        let host_names = if target.is_some() { vec![&c.veth] } else { vec![&c.veth, &peer] };
        for name in host_names {
            if self.nl.link_by_name(name).await?.is_some() {
                anyhow::bail!("interface {name} already exists in the host namespace");
            }
        }
        let pair = VethPair {
            name: &c.veth,
            peer: &peer,
            peer_mac: parse_mac(&c.mac)?,
            peer_netns: target.map(|(ns, _)| ns),
            mtu: self.mtu,
        };
        let host_index = self.nl.create_veth(&pair).await?;
        c.ifindex = host_index;
        // The container's IPv6 settings directory, opened while the host end
        // is set up: a namespace's first look at /proc/sys/net/ipv6 walks
        // one entry per namespace on the host (see SysctlSection), some
        // milliseconds with thousands of containers, and takes no lock the
        // host end's setup holds (its tcx attachments wait for RCU grace
        // periods under the RTNL lock).
        let container_side = match target {
            Some((ns, cnl)) => Some((ns, cnl, ns.spawn(|| SysctlSection::open(IPV6_CONF))?)),
            None => None,
        };
        // Who it is, on the interface: `netpathd --recover` reads it back.
        self.nl.set_alias(host_index, &VethIdentity::of(c).to_alias()).await?;
        // Bridge ports need no IPv6 of their own (a host without IPv6 has
        // no section to write).
        if let Some(conf) = &self.host_ipv6_conf {
            let _ = conf.write(&c.veth, "disable_ipv6", "1");
        }
        self.bridges.attach(&self.nl, host_index, PortAddrs::of(c)).await?;
        self.dp.reset_stats(c.stats_slot)?;
        self.program_container(c)?;
        self.nl.set_up(host_index).await?;
        let Some((ns, cnl, ipv6_conf)) = container_side else {
            c.handoff_ifname = Some(peer);
            return Ok(());
        };
        let index = cnl.link_index(&c.ifname).await?;
        let net6 = cfg.net6.zip(c.ip6);
        let ipv6_conf = ipv6_conf.join().unwrap_or_else(|_| Err(anyhow::anyhow!("opening {IPV6_CONF}: panicked")));
        ns.run(|| configure_ipv6(ipv6_conf, &c.ifname, net6.is_some()))?;
        let net4 = cfg.net4.zip(c.ip);
        if let Some((net4, ip)) = net4 {
            cnl.ensure_address(index, ip, net4.subnet.prefix_len()).await?;
        }
        // On an overflow bridge the /64 is off-link (see agent::bridges):
        // only the gateway is a neighbour.
        let off_link6 = self.bridges.on_overflow(c.ifindex);
        match net6 {
            Some((net6, ip6)) if off_link6 => cnl.ensure_address_off_link(index, ip6, net6.subnet.prefix_len()).await?,
            Some((net6, ip6)) => cnl.ensure_address(index, ip6, net6.subnet.prefix_len()).await?,
            None => {}
        }
        let lo = cnl.link_index("lo").await?;
        cnl.set_up(lo).await?;
        cnl.set_up(index).await?;
        if let Some((net4, _)) = net4 {
            cnl.add_default_route(net4.gateway).await?;
        }
        if let Some((net6, ip6)) = net6 {
            if off_link6 {
                cnl.replace_host_route(net6.gateway.into(), index, ip6.into()).await?;
            }
            cnl.add_default_route6(net6.gateway, index).await?;
        }
        Ok(())
    }

    /// Best-effort removal of everything `plumb` may have created.
    async fn unplumb(&mut self, c: &Container) {
        if c.ifindex != 0 {
            if let Err(e) = self.nl.delete_link(c.ifindex).await {
                tracing::warn!("rollback: {e:#}");
            }
            if let Err(e) = self.bridges.detach(&self.nl, c.ifindex, PortAddrs::of(c)).await {
                tracing::warn!("rollback: {e:#}");
            }
        }
        if let Err(e) = self.forget_datapath(c) {
            tracing::warn!("rollback: {e:#}");
        }
    }

    pub(super) async fn del_container(&mut self, name: &str) -> Result<Container, AgentError> {
        let c = self.find(name)?.clone();
        let mappings: Vec<Mapping> = self.state.mappings.iter().filter(|m| m.container == c.name).cloned().collect();
        self.remove_mappings(&mappings)?;
        // Its policy goes too: rules and compiled entries (verdicts go with
        // its flows below).
        self.forget_policy(&c)?;
        // Only delete the interface if it is still ours (same name and index).
        if let Some(link) = self.nl.link_by_name(&c.veth).await? {
            if link.header.index == c.ifindex {
                self.nl.delete_link(c.ifindex).await?;
            }
        }
        self.bridges.detach(&self.nl, c.ifindex, PortAddrs::of(&c)).await?;
        // With the veth gone no new flow of it can start; its entry leaves
        // CONTAINERS and its id its owner slot, which cuts every flow it owns
        // (verdicts, masqueraded flows) at once, before its address can be
        // handed out again; its published ports went above.
        self.forget_datapath(&c)?;
        self.forget_flows(&c)?;
        self.release_addresses(c.ip, c.ip6);
        self.netns_inodes.remove(&c.name);
        self.record(Change::RemoveContainer { name: c.name.clone(), ip: c.ip, ip6: c.ip6 })?;
        tracing::info!(container = %c.name, "container removed");
        Ok(c)
    }

    /// Removes every container whose owner starts with `owner_prefix` and
    /// is not in `keep` (a runtime's garbage collection: CNI GC).
    pub(super) async fn gc_containers(&mut self, req: &GcRequest) -> Result<Vec<Container>, AgentError> {
        if req.owner_prefix.is_empty() {
            return Err(AgentError::BadRequest("owner_prefix is empty: it must name the runtime's attachments".into()));
        }
        let victims: Vec<String> = self
            .state
            .containers
            .iter()
            .filter(|c| c.owner.as_ref().is_some_and(|o| o.starts_with(&req.owner_prefix) && !req.keep.contains(o)))
            .map(|c| c.name.clone())
            .collect();
        let mut removed = vec![];
        for name in victims {
            removed.push(self.del_container(&name).await?);
        }
        Ok(removed)
    }
}

/// A namespace's per-interface IPv6 settings.
const IPV6_CONF: &str = "net.ipv6.conf";

/// IPv6 on a container's interface `ifname` (run inside its netns, before
/// the interface is up). Without an IPv6 address it is off: the datapath
/// would drop whatever IPv6 the container sent. With one: no DAD (the
/// agent hands the addresses out), no router advertisements (the agent
/// sets the route; RAs from other containers are dropped anyway), and the
/// EUI-64 link-local address (addr_gen_mode 0), which is the one the
/// datapath's anti-spoofing lets the container use (`link_local_of`).
/// `conf` is the namespace's [`IPV6_CONF`], or why it could not be opened.
fn configure_ipv6(conf: Result<SysctlSection>, ifname: &str, enabled: bool) -> Result<()> {
    let settings: &[(&str, &str)] = if enabled {
        &[("accept_dad", "0"), ("accept_ra", "0"), ("addr_gen_mode", "0"), ("disable_ipv6", "0")]
    } else {
        &[("disable_ipv6", "1")]
    };
    match conf.and_then(|conf| conf.write_all(ifname, settings)) {
        Ok(()) => Ok(()),
        // Why, asked only on failure: each lookup there costs a walk over
        // every namespace's entry (see SysctlSection).
        Err(_) if !std::path::Path::new("/proc/sys/net/ipv6").exists() => match enabled {
            true => anyhow::bail!("the container's network namespace has no IPv6 (/proc/sys/net/ipv6 is missing)"),
            false => Ok(()),
        },
        Err(e) => Err(e),
    }
}

/// Runtime names (Docker's and podman's container names, Kubernetes'
/// `namespace/pod`): 1-128 letters, digits, `_`, `.`, `-`, `/`.
fn validate_runtime_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        anyhow::bail!("runtime name {name:?} must have 1-128 characters");
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c))) {
        anyhow::bail!("runtime name {name:?} has {bad:?}: only letters, digits, '_', '.', '-' and '/' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_of_docker_podman_and_kubernetes_are_accepted() {
        for name in ["web", "my_app.1", "prod/api-7d9f"] {
            validate_runtime_name(name).unwrap();
        }
        for (name, why) in [("", "1-128"), ("a b", "' '"), ("x;rm", "';'")] {
            let e = validate_runtime_name(name).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        assert!(validate_runtime_name(&"a".repeat(129)).is_err());
    }
}

/// The `IFACE_STATS` slots containers hold, and which are free.
pub(super) struct StatsSlots {
    taken: std::collections::HashSet<u32>,
    next: u32,
}

impl StatsSlots {
    pub(super) fn of(containers: &[Container]) -> StatsSlots {
        StatsSlots { taken: containers.iter().map(|c| c.stats_slot).collect(), next: IFACE_SLOT_FIRST_CONTAINER }
    }

    /// Takes `slot` if it is a container's and free.
    pub(super) fn claim(&mut self, slot: u32) -> bool {
        slot >= IFACE_SLOT_FIRST_CONTAINER && (slot as usize) < MAX_IFACES && self.taken.insert(slot)
    }

    /// The lowest free slot, now taken.
    pub(super) fn take(&mut self) -> Option<u32> {
        while (self.next as usize) < MAX_IFACES {
            let slot = self.next;
            self.next += 1;
            if self.taken.insert(slot) {
                return Some(slot);
            }
        }
        None
    }
}

/// Refuses a container beyond what the instance's bridges can take
/// (`capacity`), before anything is created.
fn room_for_one_more(attached: usize, capacity: usize) -> Result<(), AgentError> {
    if attached >= capacity {
        return Err(AgentError::refused(
            ErrorReason::InstanceFull,
            format!(
                "the instance holds {attached} containers, the most its {MAX_BRIDGES} bridges can take: run \
                 another instance for more"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod capacity_tests {
    use super::*;

    #[test]
    fn the_last_bridge_s_last_port_is_the_last_container() {
        let capacity = 1023 * MAX_BRIDGES;
        assert!(room_for_one_more(0, capacity).is_ok());
        assert!(room_for_one_more(capacity - 1, capacity).is_ok());
        let refused = room_for_one_more(capacity, capacity).unwrap_err();
        assert!(refused.to_string().contains("65472 containers"), "{refused}");
    }
}
