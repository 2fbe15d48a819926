//! The agent: owns the bridge, the containers' veths and the datapath, and
//! keeps the kernel in line with its persisted desired state.

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
        Status, StatsView, Tuple,
    },
    monitor::{self, MonitorEvent},
    policy::{self, Action, ContainerPolicy, Direction, Rule, RuleError},
    netlink::Netlink,
    netns::{write_sysctl, Netns},
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
            RuleError::Duplicate(_) | RuleError::Conflict { .. } | RuleError::TooMany { .. } => AgentError::Conflict(e.to_string()),
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
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"].iter().map(PathBuf::from).find(|p| {
        nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
    })
}

/// Cookie of the calling thread's network namespace (SO_NETNS_COOKIE).
fn netns_cookie() -> Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0")).context("socket for SO_NETNS_COOKIE")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and an out-buffer of the advertised size.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut cookie as *mut u64 as *mut libc::c_void, &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn service_key(m: &Mapping) -> ServiceKey {
    ServiceKey {
        addr: m.host_ip.map(|ip| ip.octets()).unwrap_or([0; 4]),
        port: m.host_port.to_be(),
        proto: m.proto.number(),
        _pad: 0,
    }
}

fn tuple(addr_s: [u8; 4], sport: u16, addr_d: [u8; 4], dport: u16) -> Tuple {
    Tuple { src: Ipv4Addr::from(addr_s), sport: u16::from_be(sport), dst: Ipv4Addr::from(addr_d), dport: u16::from_be(dport) }
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
        Ok(Agent { cfg, inner: Mutex::new(inner), events, names: RwLock::new(names), flow_watchers: AtomicUsize::new(0) })
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

    pub async fn set_default(&self, container: &str, direction: Direction, action: Action) -> Result<PolicyView, AgentError> {
        self.inner.lock().await.set_default(container, direction, action)
    }

    pub async fn policy(&self, container: &str) -> Result<PolicyView, AgentError> {
        let inner = self.inner.lock().await;
        inner.find(container)?;
        Ok(PolicyView { container: container.to_string(), policy: inner.policy_of(container) })
    }

    pub async fn policies(&self) -> Vec<PolicyView> {
        let inner = self.inner.lock().await;
        inner.state.containers.iter().map(|c| PolicyView { container: c.name.clone(), policy: inner.policy_of(&c.name) }).collect()
    }

    pub async fn settings(&self) -> Settings {
        Settings { icc: self.inner.lock().await.dp_config.flags & CFG_F_NO_ICC == 0 }
    }

    pub async fn set_settings(&self, s: Settings) -> Result<Settings, AgentError> {
        let mut inner = self.inner.lock().await;
        inner.state.icc = Some(s.icc);
        inner.set_flag(CFG_F_NO_ICC, !s.icc)?;
        inner.save()?;
        inner.recheck_flows()?;
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
    pub async fn subscribe(self: &Arc<Agent>, flows: bool) -> Result<(broadcast::Receiver<Event>, Option<FlowWatch>), AgentError> {
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

    /// SERVICES holds exactly the saved mappings of live containers; flows of
    /// anything else are flushed.
    fn reconcile_services(&mut self) -> Result<()> {
        let live: Vec<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        let dropped: Vec<u32> = self.state.mappings.iter().filter(|m| !live.contains(&m.container)).map(|m| m.id).collect();
        self.state.mappings.retain(|m| live.contains(&m.container));
        let mut wanted = vec![];
        for m in self.state.mappings.clone() {
            let (key, value) = self.service_entry(&m)?;
            self.dp.set_service(&key, &value)?;
            wanted.push(key);
        }
        let mut stale_ids = dropped;
        for (key, value) in self.dp.services()? {
            if !wanted.contains(&key) {
                self.dp.remove_service(&key)?;
                stale_ids.push(value.id);
            }
        }
        if !stale_ids.is_empty() {
            self.dp.ct_remove_where(|_, e| stale_ids.contains(&e.service_id))?;
            self.dp.sock_revnat_remove(&stale_ids)?;
        }
        Ok(())
    }

    fn service_entry(&self, m: &Mapping) -> Result<(ServiceKey, ServiceValue)> {
        let c = self
            .state
            .containers
            .iter()
            .find(|c| c.name == m.container)
            .with_context(|| format!("mapping {} names unknown container {}", m.spec(), m.container))?;
        Ok((
            service_key(m),
            ServiceValue {
                backend_addr: c.ip.octets(),
                backend_port: m.container_port.to_be(),
                _pad: 0,
                id: m.id,
                backend_ifindex: c.ifindex,
            },
        ))
    }

    /// Publishes every port of `spec`, or none of them.
    fn publish(&mut self, spec: &str) -> Result<Vec<Mapping>, AgentError> {
        let spec = PortSpec::parse(spec).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let container = self
            .state
            .containers
            .iter()
            .find(|c| c.name == spec.container)
            .ok_or_else(|| AgentError::NotFound(format!("no container named {:?}", spec.container)))?
            .clone();
        let count = spec.host.ports.len() as usize;
        if self.state.mappings.len() + count > MAX_SERVICES {
            return Err(AgentError::Conflict(format!(
                "the published-port table is full: {} of {MAX_SERVICES} entries used, {count} more requested",
                self.state.mappings.len()
            )));
        }
        let mut new = vec![];
        for (i, (host_port, container_port)) in spec.pairs().enumerate() {
            let m = Mapping {
                id: self.state.next_mapping_id + i as u32,
                host_ip: spec.host.ip,
                host_port,
                proto: spec.host.proto,
                container: container.name.clone(),
                container_ip: container.ip,
                container_port,
            };
            if let Some(other) = self.state.mappings.iter().find(|o| overlaps(o, &m)) {
                return Err(AgentError::Conflict(format!(
                    "host port {}{}/{} is already published by {}",
                    m.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default(),
                    m.host_port,
                    m.proto,
                    other.spec()
                )));
            }
            new.push(m);
        }
        let mut written = vec![];
        for m in &new {
            let result = self.service_entry(m).and_then(|(k, v)| self.dp.set_service(&k, &v).map(|()| k));
            match result {
                Ok(k) => written.push(k),
                Err(e) => {
                    for k in &written {
                        let _ = self.dp.remove_service(k);
                    }
                    return Err(AgentError::Internal(e.context("publishing")));
                }
            }
        }
        let next_mapping_id = self.state.next_mapping_id + count as u32;
        self.record(Change::Publish { mappings: new.clone(), next_mapping_id })?;
        for m in &new {
            tracing::info!(mapping = %m.spec(), "published");
        }
        Ok(new)
    }

    /// Removes the mappings `spec` names and every flow they created.
    fn unpublish(&mut self, spec: &str) -> Result<Vec<Mapping>, AgentError> {
        let spec = UnmapSpec::parse(spec).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let (host, full) = match &spec {
            UnmapSpec::Full(s) => (&s.host, Some(s)),
            UnmapSpec::Host(h) => (h, None),
        };
        let mut victims = vec![];
        for (i, port) in host.ports.ports().enumerate() {
            let found = self.state.mappings.iter().find(|m| {
                m.host_ip == host.ip
                    && m.host_port == port
                    && m.proto == host.proto
                    && full.is_none_or(|f| f.container == m.container && f.container_ports.start as usize + i == m.container_port as usize)
            });
            match found {
                Some(m) => victims.push(m.clone()),
                None => {
                    let ip = host.ip.map(|ip| format!("{ip}:")).unwrap_or_default();
                    let what = match full {
                        Some(f) => format!("{ip}{port}:{}:{}/{}", f.container, f.container_ports.start as usize + i, host.proto),
                        None => format!("{ip}{port}/{}", host.proto),
                    };
                    return Err(AgentError::NotFound(format!("{what} is not published")));
                }
            }
        }
        self.remove_mappings(&victims)?;
        Ok(victims)
    }

    fn remove_mappings(&mut self, victims: &[Mapping]) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        for m in victims {
            self.dp.remove_service(&service_key(m))?;
        }
        // The mapping is gone from SERVICES, so no new flow can use it; now
        // cut the tracked ones, UDP included (no stale entries).
        let ids: Vec<u32> = victims.iter().map(|m| m.id).collect();
        let flows = self.dp.ct_remove_where(|_, e| ids.contains(&e.service_id))?;
        self.dp.sock_revnat_remove(&ids)?;
        self.record(Change::Unpublish { ids: ids.clone() })?;
        for m in victims {
            tracing::info!(mapping = %m.spec(), flows, "unpublished");
        }
        Ok(())
    }

    /// Deletes flows whose entries have all expired.
    fn collect_expired(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let entries: HashMap<netpath_common::CtKey, netpath_common::CtEntry> = self.dp.ct_entries()?.into_iter().collect();
        let expired = |e: &netpath_common::CtEntry| e.expires_ns < now;
        let dead: Vec<(netpath_common::CtKey, netpath_common::CtEntry)> = entries
            .iter()
            .filter(|(_, e)| expired(e) && entries.get(&e.peer).is_none_or(expired))
            .map(|(k, e)| (*k, *e))
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        self.dp.ct_remove_entries(&dead)
    }

    fn flows(&mut self) -> Result<Vec<Flow>> {
        let now = monotonic_ns() as i128;
        let entries: HashMap<netpath_common::CtKey, netpath_common::CtEntry> = self.dp.ct_entries()?.into_iter().collect();
        let names: HashMap<u32, String> = self.state.containers.iter().map(|c| (c.id, c.name.clone())).collect();
        let mut flows = vec![];
        for (key, e) in entries.iter().filter(|(_, e)| e.flags & CT_F_REPLY == 0) {
            let reply = entries.get(&e.peer).copied().unwrap_or_default();
            let expires = e.expires_ns.max(reply.expires_ns) as i128;
            let state = CtState::from_u8(e.state.max(reply.state));
            let (scope, container) = match key.scope {
                CT_SCOPE_NAT => ("nat", None),
                CT_SCOPE_FROM_EP => ("from-container", names.get(&e.endpoint_id).cloned()),
                _ => ("to-container", names.get(&e.endpoint_id).cloned()),
            };
            flows.push(Flow {
                proto: Protocol::from_number(key.proto).map(|p| p.to_string()).unwrap_or_else(|| {
                    if key.proto == 1 { "icmp".into() } else { key.proto.to_string() }
                }),
                original: tuple(key.saddr, key.sport, key.daddr, key.dport),
                reply: tuple(e.peer.saddr, e.peer.sport, e.peer.daddr, e.peer.dport),
                state: state.name().into(),
                expires_in: ((expires - now) / 1_000_000_000) as i64,
                packets: e.packets,
                bytes: e.bytes,
                reply_packets: reply.packets,
                reply_bytes: reply.bytes,
                mapping_id: e.service_id,
                scope: scope.into(),
                container,
            });
        }
        flows.sort_by_key(|f| (f.scope.clone(), f.mapping_id, f.original.src, f.original.sport));
        Ok(flows)
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

    /// Writes the endpoint into the map, then attaches (or re-attaches) the
    /// per-veth programs. The map entry comes first: the ingress program
    /// drops frames from interfaces it has no endpoint for.
    fn program_endpoint(&mut self, c: &Container) -> Result<()> {
        self.write_endpoint(c)?;
        self.dp.attach(&c.veth, Hook::VethIngress)?;
        self.dp.attach(&c.veth, Hook::VethEgress)?;
        Ok(())
    }

    /// ENDPOINTS[ifindex] for a container, with its policy defaults.
    fn write_endpoint(&mut self, c: &Container) -> Result<()> {
        let p = self.policy_of(&c.name);
        let mut flags = ENDPOINT_F_IPV4;
        if p.default_in == Action::Deny {
            flags |= ENDPOINT_F_DEFAULT_DENY_IN;
        }
        if p.default_out == Action::Deny {
            flags |= ENDPOINT_F_DEFAULT_DENY_OUT;
        }
        let ep = Endpoint { ipv4: c.ip.octets(), ipv6: [0; 16], mac: container_mac(c.ip), flags, ifindex: c.ifindex, id: c.id };
        self.dp.set_endpoint(c.ifindex, &ep)
    }

    fn policy_of(&self, name: &str) -> ContainerPolicy {
        self.state.policies.get(name).cloned().unwrap_or_default()
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let flags = if on { self.dp_config.flags | flag } else { self.dp_config.flags & !flag };
        if flags != self.dp_config.flags {
            self.dp_config.flags = flags;
            self.dp.write_config(&self.dp_config)?;
        }
        Ok(())
    }

    /// Writes the compiled entries of `cidrs` (one container, one direction);
    /// CIDRs without rules lose their entry.
    fn write_policy(&mut self, id: u32, rules: &[Rule], d: Direction, cidrs: Option<&[ipnet::Ipv4Net]>) -> Result<(), AgentError> {
        let compiled = policy::compile(rules, d, cidrs)?;
        if let Some(cidrs) = cidrs {
            for cidr in cidrs {
                if !compiled.entries.contains_key(cidr) {
                    let (len, key) = policy::lpm_key(id, d, cidr);
                    self.dp.set_policy(len, &key, &netpath_common::PolicyEntry::default())?;
                }
            }
        }
        for (cidr, entry) in &compiled.entries {
            let (len, key) = policy::lpm_key(id, d, cidr);
            self.dp.set_policy(len, &key, entry)?;
        }
        Ok(())
    }

    /// Adds (or removes) one rule: checked, compiled for the prefixes it
    /// touches, written, recorded; then established flows it now denies are
    /// cut.
    fn change_rule(&mut self, req: RuleRequest, add: bool) -> Result<Rule, AgentError> {
        let c = self.find(&req.container)?.clone();
        let cidr = policy::parse_cidr(&req.cidr)?;
        let (proto, ports) = match &req.filter {
            Some(f) => policy::parse_filter(f)?,
            None => (None, None),
        };
        let rule = Rule { action: req.action, direction: req.direction, cidr, proto, ports };
        let current = self.policy_of(&c.name);
        let mut rules = current.rules.clone();
        if add {
            current.check_add(&rule)?;
            rules.push(rule.clone());
        } else {
            let before = rules.len();
            rules.retain(|r| *r != rule);
            if rules.len() == before {
                return Err(RuleError::NotFound(rule.to_string()).into());
            }
        }
        let touched = policy::affected(&rules, rule.direction, &cidr);
        // Compile first: a rule that cannot be represented changes nothing.
        policy::compile(&rules, rule.direction, Some(&touched))?;
        self.write_policy(c.id, &rules, rule.direction, Some(&touched))?;
        let change = if add {
            Change::AddRule { container: c.name.clone(), rule: rule.clone() }
        } else {
            Change::RemoveRule { container: c.name.clone(), rule: rule.clone() }
        };
        self.record(change)?;
        self.recheck_flows()?;
        tracing::info!(container = %c.name, rule = %rule, "{}", if add { "policy rule added" } else { "policy rule removed" });
        Ok(rule)
    }

    fn set_default(&mut self, name: &str, direction: Direction, action: Action) -> Result<PolicyView, AgentError> {
        let c = self.find(name)?.clone();
        self.record(Change::SetDefault { container: c.name.clone(), direction, action })?;
        self.write_endpoint(&c)?;
        self.recheck_flows()?;
        Ok(PolicyView { container: c.name.clone(), policy: self.policy_of(&c.name) })
    }

    /// Re-judges every established flow under the current policy and cuts
    /// the ones it now denies (their verdict entries go; the next packet is
    /// judged as new, and dropped).
    fn recheck_flows(&mut self) -> Result<usize> {
        let by_id: HashMap<u32, (String, Ipv4Addr)> =
            self.state.containers.iter().map(|c| (c.id, (c.name.clone(), c.ip))).collect();
        let icc = self.dp_config.flags & CFG_F_NO_ICC == 0;
        let (subnet, gateway) = (self.cfg_subnet(), Ipv4Addr::from(self.dp_config.gateway));
        let policies = self.state.policies.clone();
        let denied = |k: &netpath_common::CtKey, e: &netpath_common::CtEntry| {
            if e.flags & CT_F_POLICY == 0 || e.flags & CT_F_REPLY != 0 {
                return false;
            }
            let Some((name, _)) = by_id.get(&e.endpoint_id) else { return true };
            let p = policies.get(name).cloned().unwrap_or_default();
            let (d, remote) = if k.scope == CT_SCOPE_FROM_EP {
                (Direction::Out, Ipv4Addr::from(k.daddr))
            } else {
                (Direction::In, Ipv4Addr::from(k.saddr))
            };
            if d == Direction::Out && !icc && subnet.contains(&remote) && remote != gateway {
                return true;
            }
            // Tracked ICMP flows are echo flows: judged as type 8.
            let port = if k.proto == 1 { 8 } else { u16::from_be(k.dport) };
            policy::evaluate(&p, d, remote, k.proto, port) == Action::Deny
        };
        let cut = self.dp.ct_remove_where(denied)?;
        if cut > 0 {
            tracing::info!(flows = cut, "cut established flows the policy now denies");
        }
        Ok(cut)
    }

    fn cfg_subnet(&self) -> ipnet::Ipv4Net {
        ipnet::Ipv4Net::new(Ipv4Addr::from(self.dp_config.subnet), self.dp_config.subnet_prefix as u8).unwrap_or_default()
    }

    /// POLICY holds exactly the compiled rules of live containers.
    fn reconcile_policies(&mut self) -> Result<()> {
        let live: Vec<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        self.state.policies.retain(|name, _| live.contains(name));
        let mut wanted = std::collections::HashSet::new();
        for c in self.state.containers.clone() {
            let rules = self.policy_of(&c.name).rules;
            for d in [Direction::In, Direction::Out] {
                self.write_policy(c.id, &rules, d, None).map_err(|e| anyhow::anyhow!("policy of {}: {e}", c.name))?;
                for cidr in policy::compile(&rules, d, None).map_err(|e| anyhow::anyhow!("{e}"))?.entries.keys() {
                    wanted.insert(policy::lpm_key(c.id, d, cidr));
                }
            }
        }
        for (len, key) in self.dp.policy_keys()? {
            if !wanted.contains(&(len, key)) {
                self.dp.set_policy(len, &key, &netpath_common::PolicyEntry::default())?;
            }
        }
        Ok(())
    }

    /// Removes a container's map entries and link pins. Every step is
    /// tried even if an earlier one fails; the first error is returned.
    fn forget_datapath(&mut self, c: &Container) -> Result<()> {
        let results = [
            self.dp.detach(&c.veth, Hook::VethIngress),
            self.dp.detach(&c.veth, Hook::VethEgress),
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
        let mappings: Vec<Mapping> = self.state.mappings.iter().filter(|m| m.container == c.name).cloned().collect();
        self.remove_mappings(&mappings)?;
        // Its policy goes too: rules, compiled entries, verdicts.
        let rules = self.policy_of(&c.name).rules;
        self.state.policies.remove(&c.name);
        for d in [Direction::In, Direction::Out] {
            for cidr in policy::compile(&rules, d, None).map(|x| x.entries.into_keys().collect()).unwrap_or_else(|_| vec![]) {
                let (len, key) = policy::lpm_key(c.id, d, &cidr);
                self.dp.set_policy(len, &key, &netpath_common::PolicyEntry::default())?;
            }
        }
        self.dp.ct_remove_where(|_, e| e.flags & CT_F_POLICY != 0 && e.endpoint_id == c.id)?;
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

/// Two mappings clash when they publish the same port and protocol on a
/// common host address (no address means all of them).
pub fn overlaps(a: &Mapping, b: &Mapping) -> bool {
    a.host_port == b.host_port && a.proto == b.proto && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mapping_spec_roundtrips() {
        let mut x = m(Some("127.0.0.1"), 8080, Protocol::Udp);
        x.container = "ctr1".into();
        assert_eq!(x.spec(), "127.0.0.1:8080:ctr1:80/udp");
        let p = PortSpec::parse(&x.spec()).unwrap();
        assert_eq!(p.pairs().collect::<Vec<_>>(), vec![(8080, 80)]);
    }
}
