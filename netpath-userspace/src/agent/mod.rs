//! The agent: owns the bridge, the containers' veths and the datapath, and
//! keeps the kernel in line with its persisted desired state.

mod containers;
mod flows;
mod mappings;
mod rules;

use containers::file_name;
pub use containers::{container_mac, format_mac, CONTAINER_IFNAME};
pub use mappings::overlaps;

use std::{
    collections::HashMap,
    fs::File,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;
use tokio::sync::{broadcast, Mutex};

use crate::{
    config::{validate_name, ResolvedConfig},
    datapath::{interface_stats, Datapath, Hook, SOCK_HOOKS},
    ipam::{Ipam, IpamError},
    model::{
        AttachPoint, Container, ContainerRequest, ContainerStatus, Flow, Mapping, PolicyView, RuleRequest, Settings,
        StatsView, Status, Tuple,
    },
    monitor::{self, MonitorEvent},
    netlink::Netlink,
    netns::{write_sysctl, Netns},
    policy::{self, Action, ContainerPolicy, Direction, Rule, RuleError},
    portspec::{PortSpec, Protocol, UnmapSpec},
    state::{Change, State, StateStore},
};
use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_NO_ICC, CFG_F_ROUTED, CFG_F_TRACE_FLOWS, CFG_F_UPLINK_XDP},
    conntrack::{CT_F_POLICY, CT_F_REPLY, CT_SCOPE_FROM_EP, CT_SCOPE_NAT},
    endpoint::{ENDPOINT_F_DEFAULT_DENY_IN, ENDPOINT_F_DEFAULT_DENY_OUT, ENDPOINT_F_IPV4},
    maps::MAX_SERVICES,
    CtState, DatapathConfig, Endpoint, Event, ServiceKey, ServiceValue,
};

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

pub struct Agent {
    cfg: ResolvedConfig,
    inner: Mutex<Inner>,
    /// Datapath events, fanned out to monitors.
    events: broadcast::Sender<Event>,
    /// Endpoint id -> container name, for naming events without the lock.
    names: RwLock<HashMap<u32, String>>,
    /// Monitors that asked for flow events.
    flow_watchers: AtomicUsize,
}

impl From<RuleError> for AgentError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Duplicate(_) | RuleError::Conflict { .. } | RuleError::TooMany { .. } => {
                AgentError::Conflict(e.to_string())
            }
            RuleError::NotFound(_) => AgentError::NotFound(e.to_string()),
            _ => AgentError::BadRequest(e.to_string()),
        }
    }
}

/// Keeps flow events on while a monitor that wants them is connected.
pub struct FlowWatch {
    agent: Arc<Agent>,
}

impl Drop for FlowWatch {
    fn drop(&mut self) {
        if self.agent.flow_watchers.fetch_sub(1, Ordering::SeqCst) == 1 {
            let agent = Arc::clone(&self.agent);
            tokio::spawn(async move {
                if let Err(e) = agent.inner.lock().await.set_flag(CFG_F_TRACE_FLOWS, false) {
                    tracing::warn!("turning flow events off: {e:#}");
                }
            });
        }
    }
}

struct Inner {
    dp: Datapath,
    nl: Netlink,
    bridge_index: u32,
    ipam: Ipam,
    state: State,
    store: StateStore,
    own_netns_inode: u64,
    cgroup: Option<PathBuf>,
    /// What the CONFIG map holds; the masquerade address follows the uplink.
    dp_config: DatapathConfig,
    uplink: Option<String>,
    _lock: Flock<File>,
}

/// The cgroup v2 root: the hybrid layout's `unified` mount, or a pure v2
/// mount at /sys/fs/cgroup.
fn default_cgroup() -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC))
}

/// Cookie of the calling thread's network namespace (SO_NETNS_COOKIE).
fn netns_cookie() -> Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .context("socket for SO_NETNS_COOKIE")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and an out-buffer of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
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
        let mut store = store;
        let state = store.load()?;
        write_sysctl("net.ipv4.ip_forward", "1")?;
        let nl = Netlink::connect()?;
        let bridge_index = nl
            .ensure_bridge(&cfg.bridge, cfg.gateway, cfg.subnet.prefix_len())
            .await
            .with_context(|| format!("setting up bridge {}", cfg.bridge))?;
        // Hairpin traffic leaves the bridge the way it came: no ICMP redirects.
        write_sysctl(&format!("net.ipv4.conf.{}.send_redirects", cfg.bridge), "0")?;
        // Replies of published ports get a host address as their source on
        // the container's veth, before the host routes them; without
        // accept_local the kernel would drop them as martians. Containers
        // cannot abuse this: anti-spoofing runs before any translation.
        write_sysctl(&format!("net.ipv4.conf.{}.accept_local", cfg.bridge), "1")?;
        let mut dp = Datapath::load(&cfg.pin_dir)?;
        let (events, _) = broadcast::channel(4096);
        monitor::spawn_reader(dp.take_events()?, events.clone())?;
        let cgroup = match &cfg.cgroup {
            Some(p) => Some(p.clone()),
            None => default_cgroup(),
        };
        let mut flags = if cfg.routed { CFG_F_ROUTED } else { 0 };
        if cfg.masquerade && cfg.uplink.is_some() {
            flags |= CFG_F_MASQUERADE;
        }
        if !state.icc.unwrap_or(cfg.icc) {
            flags |= CFG_F_NO_ICC;
        }
        let uplink_xdp = match (&cfg.uplink, cfg.uplink_xdp) {
            (None, _) | (_, crate::config::UplinkXdp::Off) => false,
            (Some(_), crate::config::UplinkXdp::On) => true,
            (Some(u), crate::config::UplinkXdp::Auto) => nl.link_kind(u).await?.as_deref() != Some("veth"),
        };
        if uplink_xdp {
            flags |= CFG_F_UPLINK_XDP;
        }
        let dp_config = DatapathConfig {
            netns_cookie: netns_cookie()?,
            subnet: cfg.subnet.network().octets(),
            subnet_prefix: cfg.subnet.prefix_len() as u32,
            gateway: cfg.gateway.octets(),
            flags,
            timeouts: cfg.conntrack.timeouts(),
            masq_addr: [0; 4],
            snat_port_min: cfg.masquerade_ports.0,
            snat_port_max: cfg.masquerade_ports.1,
        };
        dp.write_config(&dp_config)?;
        if let Some(uplink) = &cfg.uplink {
            let index = nl.link_index(uplink).await.with_context(|| format!("uplink {uplink}"))?;
            if uplink_xdp {
                dp.attach(uplink, Hook::UplinkXdp)?;
            } else {
                dp.detach(uplink, Hook::UplinkXdp)?;
            }
            dp.attach(uplink, Hook::UplinkIngress)?;
            dp.attach(uplink, Hook::UplinkEgress)?;
            if !dp.stat_keys()?.contains(&index) {
                dp.reset_stats(index)?;
            }
        }
        match &cgroup {
            Some(cg) => {
                for hook in SOCK_HOOKS {
                    dp.attach(&cg.display().to_string(), hook)?;
                }
            }
            None => tracing::warn!("no cgroup v2 mount found: host processes cannot reach published ports"),
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
            cgroup,
            dp_config,
            uplink: cfg.uplink.clone(),
            _lock: lock,
        };
        inner.sync_host_addrs().await?;
        inner.reconcile(&cfg).await?;
        let names = inner.state.containers.iter().map(|c| (c.id, c.name.clone())).collect();
        Ok(Agent {
            cfg,
            inner: Mutex::new(inner),
            events,
            names: RwLock::new(names),
            flow_watchers: AtomicUsize::new(0),
        })
    }

    /// Background work: conntrack garbage collection and keeping the set of
    /// host addresses (for wildcard mappings) current.
    pub fn spawn_background(self: &Arc<Agent>) {
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(agent.cfg.conntrack.gc_interval as u64));
            loop {
                tick.tick().await;
                if let Err(e) = agent.inner.lock().await.collect_expired() {
                    tracing::warn!("conntrack GC: {e:#}");
                }
            }
        });
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if let Err(e) = agent.inner.lock().await.sync_host_addrs().await {
                    tracing::warn!("host address sync: {e:#}");
                }
            }
        });
    }

    pub async fn publish(&self, spec: &str) -> Result<Vec<Mapping>, AgentError> {
        self.inner.lock().await.publish(spec)
    }

    pub async fn unpublish(&self, spec: &str) -> Result<Vec<Mapping>, AgentError> {
        self.inner.lock().await.unpublish(spec)
    }

    pub async fn mappings(&self) -> Vec<Mapping> {
        self.inner.lock().await.state.mappings.clone()
    }

    pub async fn flows(&self) -> Result<Vec<Flow>, AgentError> {
        Ok(self.inner.lock().await.flows()?)
    }

    pub async fn flush_flows(&self) -> Result<usize, AgentError> {
        Ok(self.inner.lock().await.dp.ct_remove_where(|_, _| true)?)
    }

    pub fn config(&self) -> &ResolvedConfig {
        &self.cfg
    }

    pub async fn add_container(&self, req: ContainerRequest) -> Result<Container, AgentError> {
        let mut inner = self.inner.lock().await;
        let c = inner.add_container(&self.cfg, req).await?;
        self.names.write().map_err(|_| anyhow::anyhow!("names lock poisoned"))?.insert(c.id, c.name.clone());
        Ok(c)
    }

    pub async fn del_container(&self, name: &str) -> Result<Container, AgentError> {
        let mut inner = self.inner.lock().await;
        let c = inner.del_container(name).await?;
        self.names.write().map_err(|_| anyhow::anyhow!("names lock poisoned"))?.remove(&c.id);
        Ok(c)
    }

    pub async fn add_rule(&self, req: RuleRequest) -> Result<Rule, AgentError> {
        self.inner.lock().await.change_rule(req, true)
    }

    pub async fn remove_rule(&self, req: RuleRequest) -> Result<Rule, AgentError> {
        self.inner.lock().await.change_rule(req, false)
    }

    pub async fn set_default(
        &self,
        container: &str,
        direction: Direction,
        action: Action,
    ) -> Result<PolicyView, AgentError> {
        self.inner.lock().await.set_default(container, direction, action)
    }

    pub async fn policy(&self, container: &str) -> Result<PolicyView, AgentError> {
        let inner = self.inner.lock().await;
        inner.find(container)?;
        Ok(PolicyView { container: container.to_string(), policy: inner.policy_of(container) })
    }

    pub async fn policies(&self) -> Vec<PolicyView> {
        let inner = self.inner.lock().await;
        inner
            .state
            .containers
            .iter()
            .map(|c| PolicyView { container: c.name.clone(), policy: inner.policy_of(&c.name) })
            .collect()
    }

    pub async fn settings(&self) -> Settings {
        Settings { icc: self.inner.lock().await.dp_config.flags & CFG_F_NO_ICC == 0 }
    }

    pub async fn set_settings(&self, s: Settings) -> Result<Settings, AgentError> {
        let mut inner = self.inner.lock().await;
        inner.state.icc = Some(s.icc);
        inner.set_flag(CFG_F_NO_ICC, !s.icc)?;
        inner.save()?;
        if !s.icc {
            inner.recheck_flows(None, None)?;
        }
        Ok(s)
    }

    pub async fn stats(&self, container: Option<&str>) -> Result<StatsView, AgentError> {
        let st = self.status().await?;
        let containers: Vec<ContainerStatus> = match container {
            Some(name) => {
                let c: Vec<_> = st.containers.into_iter().filter(|c| c.container.name == name).collect();
                if c.is_empty() {
                    return Err(AgentError::NotFound(format!("no container named {name:?}")));
                }
                c
            }
            None => st.containers,
        };
        Ok(StatsView { containers, uplink: st.uplink_stats })
    }

    /// Subscribes to datapath events; with `flows`, also to flow starts
    /// (turned on in the datapath while someone listens).
    pub async fn subscribe(
        self: &Arc<Agent>,
        flows: bool,
    ) -> Result<(broadcast::Receiver<Event>, Option<FlowWatch>), AgentError> {
        let rx = self.events.subscribe();
        let watch = if flows {
            if self.flow_watchers.fetch_add(1, Ordering::SeqCst) == 0 {
                self.inner.lock().await.set_flag(CFG_F_TRACE_FLOWS, true)?;
            }
            Some(FlowWatch { agent: Arc::clone(self) })
        } else {
            None
        };
        Ok((rx, watch))
    }

    /// Names an event for the API.
    pub fn describe(&self, e: &Event) -> MonitorEvent {
        let name = self.names.read().ok().and_then(|n| n.get(&e.endpoint_id).cloned());
        MonitorEvent::from_raw(e, name)
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
            for hook in [Hook::VethIngress, Hook::VethEgress] {
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
            if inner.dp_config.flags & CFG_F_UPLINK_XDP != 0 {
                attach_points.push(AttachPoint {
                    interface: uplink.clone(),
                    hook: Hook::UplinkXdp.name().into(),
                    program: Hook::UplinkXdp.program().into(),
                    link_pin: inner.dp.link_pin(uplink, Hook::UplinkXdp).display().to_string(),
                    attached_program_ids: vec![inner.dp.pinned_link_program(uplink, Hook::UplinkXdp)?],
                });
            }
            for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
                attach_points.push(AttachPoint {
                    interface: uplink.clone(),
                    hook: hook.name().into(),
                    program: hook.program().into(),
                    link_pin: inner.dp.link_pin(uplink, hook).display().to_string(),
                    attached_program_ids: Datapath::tcx_program_ids(uplink, hook)?,
                });
            }
            let index = inner.nl.link_index(uplink).await?;
            uplink_stats = Some(interface_stats(&inner.dp.stats(index)?, false));
        }
        if let Some(cg) = &inner.cgroup {
            for hook in SOCK_HOOKS {
                attach_points.push(AttachPoint {
                    interface: cg.display().to_string(),
                    hook: hook.name().into(),
                    program: hook.program().into(),
                    link_pin: inner.dp.link_pin(crate::datapath::CGROUP_TARGET, hook).display().to_string(),
                    attached_program_ids: vec![inner.dp.pinned_link_program("", hook)?],
                });
            }
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
            mappings: inner.state.mappings.len(),
            cgroup: inner.cgroup.as_ref().map(|c| c.display().to_string()),
            routed: cfg.routed,
            icc: inner.dp_config.flags & CFG_F_NO_ICC == 0,
            masquerade: (inner.dp_config.flags & CFG_F_MASQUERADE != 0)
                .then(|| Ipv4Addr::from(inner.dp_config.masq_addr))
                .filter(|a| !a.is_unspecified()),
            masquerade_ports: format!("{}-{}", cfg.masquerade_ports.0, cfg.masquerade_ports.1),
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

    fn save(&mut self) -> Result<()> {
        self.store.save(&self.state)
    }

    fn record(&mut self, change: Change) -> Result<()> {
        change.apply(&mut self.state);
        self.store.record(&change, &self.state)
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
            self.ipam
                .allocate(&c.name, Some(c.ip))
                .map_err(|e| anyhow::anyhow!("state file: container {}: {e}", c.name))?;
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
            for hook in [Hook::VethIngress, Hook::VethEgress] {
                wanted.push(file_name(&self.dp.link_pin(&c.veth, hook)));
            }
        }
        if let Some(u) = &cfg.uplink {
            if self.dp_config.flags & CFG_F_UPLINK_XDP != 0 {
                wanted.push(file_name(&self.dp.link_pin(u, Hook::UplinkXdp)));
            }
            wanted.push(file_name(&self.dp.link_pin(u, Hook::UplinkIngress)));
            wanted.push(file_name(&self.dp.link_pin(u, Hook::UplinkEgress)));
        }
        if self.cgroup.is_some() {
            for hook in SOCK_HOOKS {
                wanted.push(file_name(&self.dp.link_pin(crate::datapath::CGROUP_TARGET, hook)));
            }
        }
        for pin in self.dp.pinned_links()? {
            if !wanted.contains(&pin) {
                tracing::info!("removing stale link pin {pin}");
                let path = self.dp.pin_dir().join("links").join(&pin);
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        self.reconcile_services()?;
        self.reconcile_policies()?;
        self.save()
    }

    /// HOST_ADDRS := the IPv4 addresses of the agent's namespace; the
    /// masquerade address := the uplink's first one.
    async fn sync_host_addrs(&mut self) -> Result<()> {
        let addrs = self.nl.ipv4_addresses().await?;
        let entries: Vec<([u8; 4], u32)> = addrs.iter().map(|(a, i)| (a.octets(), *i)).collect();
        self.dp.sync_host_addrs(&entries)?;
        if let Some(uplink) = &self.uplink {
            let index = self.nl.link_index(uplink).await?;
            let masq = entries.iter().find(|(_, i)| *i == index).map(|(a, _)| *a).unwrap_or([0; 4]);
            if masq != self.dp_config.masq_addr {
                if masq == [0; 4] {
                    tracing::warn!("uplink {uplink} has no IPv4 address: masquerade paused");
                } else {
                    tracing::info!("masquerading to {}", Ipv4Addr::from(masq));
                }
                self.dp_config.masq_addr = masq;
                self.dp.write_config(&self.dp_config)?;
            }
        }
        Ok(())
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let flags = if on { self.dp_config.flags | flag } else { self.dp_config.flags & !flag };
        if flags != self.dp_config.flags {
            self.dp_config.flags = flags;
            self.dp.write_config(&self.dp_config)?;
        }
        Ok(())
    }
}
