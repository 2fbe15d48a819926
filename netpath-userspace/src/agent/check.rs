//! Checking a container against the kernel: what a runtime's CHECK asks
//! (its netns, veth, address, routes, and its entries in the datapath).

use anyhow::Result;
use netpath_common::{hooks::Target, Hook, In6Addr};

use super::{containers::parse_mac, AgentError, Inner};
use crate::{
    config::ResolvedConfig,
    model::{CheckReport, Container},
    netlink::{link_controller, link_is_up, link_mac, Netlink},
    netns::Netns,
};

impl Inner {
    /// Every difference between the saved container and the kernel, in
    /// words an operator can act on; none when all is in place.
    pub(super) async fn check_container(
        &mut self,
        cfg: &ResolvedConfig,
        name: &str,
    ) -> Result<CheckReport, AgentError> {
        let c = self.find(name)?.clone();
        let mut problems = vec![];
        self.check_host_side(&c, &mut problems).await?;
        match Netns::open(&c.netns) {
            Ok(ns) => self.check_netns_side(cfg, &c, &ns, &mut problems).await?,
            Err(e) => problems.push(format!("the container's netns is gone: {e:#}")),
        }
        self.check_datapath(&c, &mut problems)?;
        Ok(CheckReport { container: c.name, problems })
    }

    async fn check_host_side(&self, c: &Container, problems: &mut Vec<String>) -> Result<()> {
        match self.nl.link_by_name(&c.veth).await? {
            None => problems.push(format!("host veth {} does not exist", c.veth)),
            Some(link) if link.header.index != c.ifindex => problems.push(format!(
                "host veth {} has index {}, not {} (it was recreated by someone else)",
                c.veth, link.header.index, c.ifindex
            )),
            Some(link) => {
                match (link_controller(&link), self.bridges.bridge_of(c.ifindex)) {
                    (Some(on), Some(recorded)) if on == recorded => {}
                    (Some(on), _) if self.bridges.is_bridge(on) => problems.push(format!(
                        "host veth {} is a port of another of the instance's bridges than recorded",
                        c.veth
                    )),
                    _ => problems.push(format!("host veth {} is not attached to the instance's bridge", c.veth)),
                }
                if !link_is_up(&link) {
                    problems.push(format!("host veth {} is down", c.veth));
                }
            }
        }
        Ok(())
    }

    async fn check_netns_side(
        &self,
        cfg: &ResolvedConfig,
        c: &Container,
        ns: &Netns,
        problems: &mut Vec<String>,
    ) -> Result<()> {
        let cnl = Netlink::connect_in(ns)?;
        let Some(link) = cnl.link_by_name(&c.ifname).await? else {
            problems.push(format!("interface {} does not exist in netns {}", c.ifname, c.netns));
            return Ok(());
        };
        if link_mac(&link) != Some(parse_mac(&c.mac)?) {
            problems.push(format!("interface {} does not have MAC {}", c.ifname, c.mac));
        }
        if !link_is_up(&link) {
            problems.push(format!("interface {} is down", c.ifname));
        }
        if let (Some(net4), Some(ip)) = (cfg.net4, c.ip) {
            let prefix = net4.subnet.prefix_len();
            let addrs = cnl.ipv4_addresses_of(link.header.index).await?;
            if !addrs.contains(&(ip, prefix)) {
                problems.push(format!(
                    "interface {} lacks address {ip}/{prefix} (has {})",
                    c.ifname,
                    addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>().join(", ")
                ));
            }
            let gateways = cnl.ipv4_default_gateways().await?;
            if !gateways.iter().any(|(gw, oif)| *gw == net4.gateway && oif.is_none_or(|i| i == link.header.index)) {
                problems.push(format!("no default route via {} on {}", net4.gateway, c.ifname));
            }
        }
        if let (Some(net6), Some(ip6)) = (cfg.net6, c.ip6) {
            let prefix6 = net6.subnet.prefix_len();
            let addrs6 = cnl.ipv6_addresses_of(link.header.index).await?;
            if !addrs6.contains(&(ip6, prefix6)) {
                problems.push(format!("interface {} lacks address {ip6}/{prefix6}", c.ifname));
            }
            let gateways6 = cnl.ipv6_default_gateways().await?;
            if !gateways6.iter().any(|(gw, oif)| *gw == net6.gateway && oif.is_none_or(|i| i == link.header.index)) {
                problems.push(format!("no IPv6 default route via {} on {}", net6.gateway, c.ifname));
            }
        }
        Ok(())
    }

    fn check_datapath(&mut self, c: &Container, problems: &mut Vec<String>) -> Result<()> {
        let entry = self.dp.containers()?.into_iter().find(|(i, _)| *i == c.ifindex).map(|(_, e)| e);
        match entry {
            None => problems.push(format!("the datapath has no entry for {} (ifindex {})", c.veth, c.ifindex)),
            Some(e) => {
                if e.mac != parse_mac(&c.mac)? || e.id != c.id {
                    problems.push(format!("the datapath entry of {} does not match the container", c.veth));
                }
                let ipv4 = c.ip.map(|a| a.octets()).filter(|a| self.dp_config.in_subnet4(*a));
                if e.has_ipv4() != ipv4.is_some() || ipv4.is_some_and(|a| a != e.ipv4) {
                    problems.push(format!("the datapath entry of {} does not carry the container's IPv4", c.veth));
                }
                let ipv6 = c.ip6.map(In6Addr::from).filter(|a| self.dp_config.in_subnet6(*a));
                if e.has_ipv6() != ipv6.is_some() || ipv6.is_some_and(|a| a != e.ipv6) {
                    problems.push(format!("the datapath entry of {} does not carry the container's IPv6", c.veth));
                }
            }
        }
        for hook in Hook::on(Target::ContainerVeth) {
            let pin = self.dp.link_pin(&c.veth, hook);
            if !pin.exists() {
                problems.push(format!(
                    "program {} is not attached to {} (no pin {})",
                    hook.program,
                    c.veth,
                    pin.display()
                ));
            }
        }
        let entries4 = self.dp.mapping_entries()?;
        let entries6 = self.dp.mapping_entries6()?;
        for m in self.state.mappings.iter().filter(|m| m.container == c.name) {
            let present = match super::mappings::mapping_entries(m, c) {
                Ok(want) => {
                    want.v4.is_none_or(|e| entries4.contains(&e)) && want.v6.is_none_or(|e| entries6.contains(&e))
                }
                Err(_) => false,
            };
            if !present {
                problems.push(format!("published port {} is missing from the datapath", m.spec()));
            }
        }
        Ok(())
    }
}
