//! The agent: owns the bridge, the containers' veths and the datapath, and
//! keeps the kernel in line with its persisted desired state.

use std::{fs::File, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::{
    config::{validate_name, ResolvedConfig},
    datapath::{interface_stats, Datapath, Hook},
    ipam::{Ipam, IpamError},
    model::{AttachPoint, Container, ContainerRequest, ContainerStatus, Status},
    netlink::Netlink,
    netns::{write_sysctl, Netns},
    state::{State, StateStore},
};
use netpath_common::{endpoint::ENDPOINT_F_IPV4, Endpoint};

/// Errors the API reports, by kind, so that it can pick a status code.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<IpamError> for AgentError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::InUse { .. } | IpamError::Exhausted { .. } => AgentError::Conflict(e.to_string()),
            IpamError::OutsideSubnet { .. } | IpamError::Reserved { .. } => AgentError::BadRequest(e.to_string()),
        }
    }
}

/// Name of the container-side interface.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Container MACs are derived from their IPv4 address (locally administered,
/// as Docker does), so they are unique on the bridge and predictable.
pub fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x4e, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub struct Agent {
    cfg: ResolvedConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    dp: Datapath,
    nl: Netlink,
    bridge_index: u32,
    ipam: Ipam,
    state: State,
    store: StateStore,
    own_netns_inode: u64,
    _lock: Flock<File>,
}

impl Agent {
    /// Sets up the host side (bridge, forwarding, datapath), then adopts
    /// what a previous run left and reconciles it with the saved state.
    pub async fn start(cfg: ResolvedConfig) -> Result<Agent> {
        let store = StateStore::new(&cfg.state_dir)?;
        let lock_path = cfg.state_dir.join("lock");
        let lock_file = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!("another netpathd holds {} ({e}): one agent per instance", lock_path.display())
        })?;
        let state = store.load()?;
        write_sysctl("net.ipv4.ip_forward", "1")?;
        let nl = Netlink::connect()?;
        let bridge_index = nl
            .ensure_bridge(&cfg.bridge, cfg.gateway, cfg.subnet.prefix_len())
            .await
            .with_context(|| format!("setting up bridge {}", cfg.bridge))?;
        let mut dp = Datapath::load(&cfg.pin_dir)?;
        if let Some(uplink) = &cfg.uplink {
            let index = nl.link_index(uplink).await.with_context(|| format!("uplink {uplink}"))?;
            dp.attach(uplink, Hook::Xdp)?;
            if !dp.stat_keys()?.contains(&index) {
                dp.reset_stats(index)?;
            }
        }
        let own_netns_inode = Netns::current()?.inode()?;
        let mut inner = Inner {
            ipam: Ipam::new(cfg.subnet, cfg.gateway),
            dp,
            nl,
            bridge_index,
            state,
            store,
            own_netns_inode,
            _lock: lock,
        };
        inner.reconcile(&cfg).await?;
        Ok(Agent { cfg, inner: Mutex::new(inner) })
    }

    pub fn config(&self) -> &ResolvedConfig {
        &self.cfg
    }

    pub async fn add_container(&self, req: ContainerRequest) -> Result<Container, AgentError> {
        let mut inner = self.inner.lock().await;
        inner.add_container(&self.cfg, req).await
    }

    pub async fn del_container(&self, name: &str) -> Result<Container, AgentError> {
        let mut inner = self.inner.lock().await;
        inner.del_container(name).await
    }

    pub async fn containers(&self) -> Vec<Container> {
        self.inner.lock().await.state.containers.clone()
    }

    pub async fn container(&self, name: &str) -> Result<ContainerStatus, AgentError> {
        let mut inner = self.inner.lock().await;
        let c = inner.find(name)?.clone();
        let stats = interface_stats(&inner.dp.stats(c.ifindex)?, true);
        Ok(ContainerStatus { container: c, stats })
    }

    pub async fn status(&self) -> Result<Status, AgentError> {
        let mut inner = self.inner.lock().await;
        let cfg = &self.cfg;
        let mut attach_points = vec![];
        let mut containers = vec![];
        for c in inner.state.containers.clone() {
            for hook in [Hook::TcxIngress, Hook::TcxEgress] {
                attach_points.push(AttachPoint {
                    interface: c.veth.clone(),
                    hook: hook.name().into(),
                    program: hook.program().into(),
                    link_pin: inner.dp.link_pin(&c.veth, hook).display().to_string(),
                    attached_program_ids: Datapath::tcx_program_ids(&c.veth, hook)?,
                });
            }
            let stats = interface_stats(&inner.dp.stats(c.ifindex)?, true);
            containers.push(ContainerStatus { container: c, stats });
        }
        let mut uplink_stats = None;
        if let Some(uplink) = &cfg.uplink {
            attach_points.push(AttachPoint {
                interface: uplink.clone(),
                hook: Hook::Xdp.name().into(),
                program: Hook::Xdp.program().into(),
                link_pin: inner.dp.link_pin(uplink, Hook::Xdp).display().to_string(),
                attached_program_ids: vec![inner.dp.pinned_link_program(uplink, Hook::Xdp)?],
            });
            let index = inner.nl.link_index(uplink).await?;
            uplink_stats = Some(interface_stats(&inner.dp.stats(index)?, false));
        }
        Ok(Status {
            instance: cfg.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet.to_string(),
            gateway: cfg.gateway,
            uplink: cfg.uplink.clone(),
            pin_dir: cfg.pin_dir.display().to_string(),
            attach_points,
            programs: inner.dp.program_status()?,
            maps: inner.dp.map_status()?,
            containers,
            uplink_stats,
        })
    }
}

impl Inner {
    fn find(&self, name: &str) -> Result<&Container, AgentError> {
        self.state
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| AgentError::NotFound(format!("no container named {name:?}")))
    }

    fn save(&self) -> Result<()> {
        self.store.save(&self.state)
    }

    /// Brings the kernel in line with the saved state: containers whose
    /// veth vanished (their netns was deleted) are dropped; the others get
    /// their map entries rewritten and programs swapped into their pinned
    /// links; map entries and pins nobody owns are removed.
    async fn reconcile(&mut self, cfg: &ResolvedConfig) -> Result<()> {
        let mut kept = vec![];
        for c in std::mem::take(&mut self.state.containers) {
            let alive = match self.nl.link_by_name(&c.veth).await? {
                Some(link) => link.header.index == c.ifindex,
                None => false,
            };
            if !alive {
                tracing::info!(container = %c.name, "veth {} is gone; removing the container", c.veth);
                self.forget_datapath(&c)?;
                continue;
            }
            self.program_endpoint(&c)?;
            if !self.dp.stat_keys()?.contains(&c.ifindex) {
                self.dp.reset_stats(c.ifindex)?;
            }
            self.ipam.allocate(&c.name, Some(c.ip)).map_err(|e| anyhow::anyhow!("state file: container {}: {e}", c.name))?;
            kept.push(c);
        }
        self.state.containers = kept;
        let owned: Vec<u32> = self.state.containers.iter().map(|c| c.ifindex).collect();
        for (ifindex, _) in self.dp.endpoints()? {
            if !owned.contains(&ifindex) {
                self.dp.remove_endpoint(ifindex)?;
            }
        }
        let uplink_index = match &cfg.uplink {
            Some(u) => Some(self.nl.link_index(u).await?),
            None => None,
        };
        for ifindex in self.dp.stat_keys()? {
            if !owned.contains(&ifindex) && Some(ifindex) != uplink_index {
                self.dp.remove_stats(ifindex)?;
            }
        }
        let mut wanted: Vec<String> = vec![];
        for c in &self.state.containers {
            for hook in [Hook::TcxIngress, Hook::TcxEgress] {
                wanted.push(file_name(&self.dp.link_pin(&c.veth, hook)));
            }
        }
        if let Some(u) = &cfg.uplink {
            wanted.push(file_name(&self.dp.link_pin(u, Hook::Xdp)));
        }
        for pin in self.dp.pinned_links()? {
            if !wanted.contains(&pin) {
                tracing::info!("removing stale link pin {pin}");
                let path = self.dp.pin_dir().join("links").join(&pin);
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        self.save()
    }

    /// Writes the endpoint into the map, then attaches (or re-attaches) the
    /// per-veth programs. The map entry comes first: the ingress program
    /// drops frames from interfaces it has no endpoint for.
    fn program_endpoint(&mut self, c: &Container) -> Result<()> {
        let ep = Endpoint {
            ipv4: c.ip.octets(),
            ipv6: [0; 16],
            mac: container_mac(c.ip),
            flags: ENDPOINT_F_IPV4,
            ifindex: c.ifindex,
            id: c.id,
        };
        self.dp.set_endpoint(c.ifindex, &ep)?;
        self.dp.attach(&c.veth, Hook::TcxIngress)?;
        self.dp.attach(&c.veth, Hook::TcxEgress)?;
        Ok(())
    }

    /// Removes a container's map entries and link pins. Every step is
    /// tried even if an earlier one fails; the first error is returned.
    fn forget_datapath(&mut self, c: &Container) -> Result<()> {
        let results = [
            self.dp.detach(&c.veth, Hook::TcxIngress),
            self.dp.detach(&c.veth, Hook::TcxEgress),
            self.dp.remove_endpoint(c.ifindex),
            self.dp.remove_stats(c.ifindex),
        ];
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    async fn add_container(&mut self, cfg: &ResolvedConfig, req: ContainerRequest) -> Result<Container, AgentError> {
        validate_name("container", &req.name, 64).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        if self.state.containers.iter().any(|c| c.name == req.name) {
            return Err(AgentError::Conflict(format!("container {:?} already exists", req.name)));
        }
        let ns = Netns::open(&req.netns).map_err(|e| AgentError::BadRequest(format!("{e:#}")))?;
        if ns.inode()? == self.own_netns_inode {
            return Err(AgentError::BadRequest(format!(
                "netns {:?} is the agent's own network namespace, not a container's",
                req.netns
            )));
        }
        if let Some(other) = self.state.containers.iter().find(|c| Netns::open(&c.netns).and_then(|n| n.inode()).ok() == Some(ns.inode().unwrap_or(0))) {
            return Err(AgentError::Conflict(format!(
                "netns {:?} already belongs to container {:?}",
                req.netns, other.name
            )));
        }
        let cnl = Netlink::connect_in(&ns)?;
        if cnl.link_by_name(CONTAINER_IFNAME).await?.is_some() {
            return Err(AgentError::Conflict(format!("netns {:?} already has an interface named {CONTAINER_IFNAME}", req.netns)));
        }
        let ip = self.ipam.allocate(&req.name, req.ip)?;
        let id = self.state.next_id;
        let veth = format!("npv{id}");
        let mut container = Container {
            name: req.name.clone(),
            netns: ns.path().display().to_string(),
            ip,
            mac: format_mac(&container_mac(ip)),
            veth: veth.clone(),
            ifindex: 0,
            id,
        };
        match self.plumb(cfg, &ns, &cnl, &mut container).await {
            Ok(()) => {}
            Err(e) => {
                self.unplumb(&container).await;
                self.ipam.release(ip);
                return Err(AgentError::Internal(e.context(format!("adding container {:?}", req.name))));
            }
        }
        self.state.next_id += 1;
        self.state.containers.push(container.clone());
        if let Err(e) = self.save() {
            self.state.containers.pop();
            self.unplumb(&container).await;
            self.ipam.release(ip);
            return Err(AgentError::Internal(e));
        }
        tracing::info!(container = %container.name, ip = %container.ip, veth = %container.veth, "container added");
        Ok(container)
    }

    /// Creates and wires the veth pair; fills in `c.ifindex` as soon as the
    /// host side exists so that a failure can be rolled back.
    async fn plumb(&mut self, cfg: &ResolvedConfig, ns: &Netns, cnl: &Netlink, c: &mut Container) -> Result<()> {
        let peer = format!("npp{}", c.id);
        for name in [&c.veth, &peer] {
            if self.nl.link_by_name(name).await?.is_some() {
                anyhow::bail!("interface {name} already exists in the host namespace");
            }
        }
        let (host_index, peer_index) = self.nl.create_veth(&c.veth, &peer).await?;
        c.ifindex = host_index;
        self.nl.set_mac(peer_index, container_mac(c.ip)).await?;
        // Bridge ports need no IPv6 of their own.
        let _ = write_sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", c.veth), "1");
        self.nl.set_controller(host_index, self.bridge_index).await?;
        self.dp.reset_stats(host_index)?;
        self.program_endpoint(c)?;
        self.nl.set_up(host_index).await?;
        self.nl.move_to_netns(peer_index, ns).await?;

        let index = cnl.link_index(&peer).await?;
        cnl.rename(index, CONTAINER_IFNAME).await?;
        // The datapath carries IPv4 only for now; keep the container from
        // sending IPv6 (which anti-spoofing would drop and count).
        ns.run(|| {
            if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                write_sysctl(&format!("net.ipv6.conf.{CONTAINER_IFNAME}.disable_ipv6"), "1")?;
            }
            Ok(())
        })?;
        cnl.ensure_address(index, c.ip, cfg.subnet.prefix_len()).await?;
        let lo = cnl.link_index("lo").await?;
        cnl.set_up(lo).await?;
        cnl.set_up(index).await?;
        cnl.add_default_route(cfg.gateway).await?;
        Ok(())
    }

    /// Best-effort removal of everything `plumb` may have created.
    async fn unplumb(&mut self, c: &Container) {
        if c.ifindex != 0 {
            if let Err(e) = self.nl.delete_link(c.ifindex).await {
                tracing::warn!("rollback: {e:#}");
            }
        }
        if let Err(e) = self.forget_datapath(c) {
            tracing::warn!("rollback: {e:#}");
        }
    }

    async fn del_container(&mut self, name: &str) -> Result<Container, AgentError> {
        let c = self.find(name)?.clone();
        // Only delete the interface if it is still ours (same name and index).
        if let Some(link) = self.nl.link_by_name(&c.veth).await? {
            if link.header.index == c.ifindex {
                self.nl.delete_link(c.ifindex).await?;
            }
        }
        self.forget_datapath(&c)?;
        self.ipam.release(c.ip);
        self.state.containers.retain(|x| x.name != name);
        self.save()?;
        tracing::info!(container = %c.name, "container removed");
        Ok(c)
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}
