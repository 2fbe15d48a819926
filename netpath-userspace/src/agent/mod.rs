//! The agent: owns the bridge, the containers' veths and the datapath, and
//! keeps the kernel in line with its persisted desired state.
//!
//! [`Agent`] is the API's entry point; it serialises work through one lock
//! on `Inner`. Each concern lives in its own file and shows the rest of the
//! agent only what it needs (everything else is private to the file):
//! - `containers`: add, delete, (re)program a container's veth and entry,
//!   forget its datapath state;
//! - `mappings`: publish, unpublish, remove a container's mappings,
//!   reconcile MAPPINGS4 and MAPPINGS6 with the saved mappings;
//! - `rules`: a container's policy, rule and default changes, re-judging
//!   tracked flows, reconcile POLICY4, forget a container's policy;
//! - `flows`: list tracked flows, collect expired ones, forget those of a
//!   container that goes or of a masquerade address the host lost.
//!
//! This file holds start-up, reconciliation, status, and
//! `Inner::attachments`, where the hook table becomes attachments.

mod bridges;
pub use bridges::{bridge_name, MAX_BRIDGES, MAX_BRIDGE_PORTS, OVERFLOW_SUFFIX_LEN};
mod check;
mod containers;
mod flows;
mod mappings;
mod reload;
mod rules;

pub use reload::{GcSettings, ReloadReport};

pub use containers::{container_mac, format_mac, parse_mac, CONTAINER_IFNAME};
pub use mappings::overlaps;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netpath_common::{
    config::{
        CFG_F_DENIED_SOURCES, CFG_F_FAST_PATH, CFG_F_GUARDED_PORTS, CFG_F_MASQUERADE, CFG_F_NO_ICC, CFG_F_ROUTED,
        CFG_F_ROUTE_MTUS4, CFG_F_TRACE_FLOWS, CFG_F_UPLINK_XDP,
    },
    hooks::{Attach, Target},
    maps::MAX_ROUTE_MTUS,
    stats::{IFACE_SLOT_UNATTRIBUTED, IFACE_SLOT_UPLINK},
    uplink_guard::GuardedPorts,
    AddrFamily, CtStats, DatapathConfig, DropReason, Hook, In6Addr, TrafficStats,
};
use thiserror::Error;
use tokio::sync::{broadcast, Mutex, MutexGuard};

use self::bridges::{BridgeLayout, Bridges, PortAddrs};
use crate::{
    config::{ResolvedConfig, UplinkXdp},
    datapath::{Datapath, GcReport, MapSummary, ProgramSummary},
    host_ports::HostPorts,
    host_record::{HostChanges, SysctlPath},
    ipam::{Ipam4, Ipam6, IpamError},
    lock::LockFile,
    model::{
        AttachPoint, CheckReport, ConntrackStatus, Container, ContainerRequest, ContainerStatus, ErrorReason,
        FastPathStatus, Flow, GcRequest, InterfaceStats, MapStatus, Mapping, NetworkInfo, PolicyView, ProgramStatus,
        RuleRequest, Settings, StatsView, Status,
    },
    monitor::{self, DatapathEvent, MonitorEvent},
    netlink::{split_families, HostEvent, HostEvents, Netlink},
    netns::{read_sysctl, Netns, SysctlSection},
    policy::{Action, Direction, Rule, RuleError},
    route_mtu::{route_mtus4, Route4},
    state::{Change, Durability, State, StateStore},
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
    /// A refusal with a cause clients tell apart (the API sends it along).
    #[error("{message}")]
    Refused { reason: ErrorReason, message: String },
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl AgentError {
    pub fn refused(reason: ErrorReason, message: impl Into<String>) -> AgentError {
        AgentError::Refused { reason, message: message.into() }
    }

    pub fn reason(&self) -> Option<ErrorReason> {
        match self {
            AgentError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

impl From<IpamError> for AgentError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::InUse { .. } => AgentError::refused(ErrorReason::AddressInUse, e.to_string()),
            IpamError::Exhausted { .. } => AgentError::refused(ErrorReason::AddressPoolExhausted, e.to_string()),
            IpamError::OutsideSubnet { .. } | IpamError::Reserved { .. } => AgentError::BadRequest(e.to_string()),
        }
    }
}

pub struct Agent {
    cfg: ResolvedConfig,
    inner: Mutex<Inner>,
    /// The state store's disk syncs, waited for outside the lock.
    durability: Arc<Durability>,
    /// Datapath events, fanned out to monitors.
    events: broadcast::Sender<DatapathEvent>,
    /// ContainerEntry id -> container name, for naming events without the lock.
    names: RwLock<HashMap<u32, String>>,
    /// Monitors that asked for flow events.
    flow_watchers: AtomicUsize,
    /// The conntrack GC's last report (its rounds run beside the lock).
    gc: Arc<std::sync::Mutex<GcReport>>,
    /// The configuration as last configured (before the agent adapted it
    /// to the host, e.g. `subnet6 = "auto"` without IPv6): what a reload
    /// compares the re-read configuration with.
    configured: std::sync::Mutex<ResolvedConfig>,
    /// What the conntrack GC reads at each tick (a reload changes it).
    gc_settings: tokio::sync::watch::Sender<GcSettings>,
    /// Where a reload reads the configuration from.
    config_source: std::sync::OnceLock<ConfigSource>,
    /// API requests and latencies, for `/metrics`.
    api_metrics: crate::metrics::ApiMetrics,
    /// Times the instance's pins vanished and were put back.
    pins_restored: AtomicU64,
    /// Interfaces found gone behind the agent's back, by kind.
    interfaces_lost: InterfacesLost,
    /// Changes of the uplink's masquerade address the running agent
    /// followed, by family.
    masquerade_address_changes: MasqueradeAddressChanges,
}

/// Counters of the uplink's masquerade address changing under the running
/// agent: to another address, or to none (masquerade paused).
#[derive(Default)]
pub struct MasqueradeAddressChanges {
    pub ipv4: AtomicU64,
    pub ipv6: AtomicU64,
}

/// Which masquerade addresses one sync of the host's addresses changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MasqueradeChanged {
    ipv4: bool,
    ipv6: bool,
}

/// Counters of [`Agent::watch_interfaces`].
#[derive(Default)]
pub struct InterfacesLost {
    /// Containers' veths gone: the container was removed.
    pub veths: AtomicU64,
    /// Bridges gone: rebuilt, the veths made ports again.
    pub bridges: AtomicU64,
}

/// How often the agent checks that its pins are still there.
const PIN_CHECK: Duration = Duration::from_secs(1);
/// The conntrack GC thread's nice value: an API call's thread takes the CPU
/// from it at once, and under a saturated CPU it still gets about a tenth.
const GC_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to `nice` (on Linux a thread
/// has a nice value of its own). Best effort: at the default priority the
/// thread works the same, only competing with the API.
fn lower_thread_priority(nice: i32) {
    // SAFETY: gettid and setpriority take and return plain integers.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        tracing::warn!("lowering the GC thread's priority: {}", std::io::Error::last_os_error());
    }
}

/// Every interface and address looked at again, whatever netlink told.
const FULL_CHECK: Duration = Duration::from_secs(30);
/// ...and how often, should netlink's notifications stop.
const WITHOUT_EVENTS_CHECK: Duration = Duration::from_secs(2);

/// Reads and resolves the configuration again (the file, with the flags
/// the agent started with over it).
pub type ConfigSource = Box<dyn Fn() -> Result<ResolvedConfig> + Send + Sync>;

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
    bridges: Bridges,
    /// The subnets' allocators, on an instance with each.
    ipam: Option<Ipam4>,
    ipam6: Option<Ipam6>,
    /// Inode of each container's netns (by container name), read when it
    /// was attached or adopted: a new container's netns is checked against
    /// these rather than by opening every other container's.
    netns_inodes: HashMap<String, u64>,
    state: State,
    store: StateStore,
    own_netns_inode: u64,
    /// The agent's namespace's `net.ipv6.conf`, held open: each attach
    /// writes its host-side veth's setting there (none on a host without
    /// IPv6).
    host_ipv6_conf: Option<SysctlSection>,
    cgroup: Option<PathBuf>,
    /// What the CONFIG map holds; the masquerade address follows the uplink.
    dp_config: DatapathConfig,
    uplink: Option<String>,
    /// Published ports reserved from the host's ephemeral range.
    host_ports: HostPorts,
    /// MTU of the bridge and of every container's veth pair.
    mtu: u32,
    /// Held while the agent runs; dropped (and removed) with it.
    _locks: Vec<LockFile>,
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
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // Unbound: a socket belongs to its namespace from creation, and binding
    // would need a free ephemeral port (the host may have none left when
    // published ports reserve the whole range).
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SO_NETNS_COOKIE");
    }
    // SAFETY: a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
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

/// Turns IPv6 forwarding on for an instance that carries IPv6. The `auto`
/// subnet gives way on a host without IPv6 (the instance runs IPv4 only, and
/// says so); a configured `subnet6` needs it. A host that starts forwarding
/// stops listening to router advertisements on interfaces with `accept_ra`
/// 1: an uplink configured by SLAAC gets 2, so that it keeps its address
/// and default route.
fn enable_ipv6_forwarding(cfg: &mut ResolvedConfig, host: &mut HostChanges) -> Result<()> {
    let Some(net6) = cfg.net6 else { return Ok(()) };
    let was = match read_sysctl("net.ipv6.conf.all.forwarding") {
        Ok(v) if !read_sysctl("net.ipv6.conf.all.disable_ipv6").is_ok_and(|d| d == "1") => v,
        // `auto` falls back to IPv4 only, unless the instance is IPv6-only.
        _ if cfg.subnet6_auto && cfg.net4.is_some() => {
            tracing::warn!(
                "IPv6 is disabled in this namespace: the instance runs IPv4 only (subnet6 \"auto\" would have been {})",
                net6.subnet
            );
            cfg.net6 = None;
            return Ok(());
        }
        Ok(_) => bail!("subnet6 {} needs IPv6, which is disabled in the agent's namespace", net6.subnet),
        Err(e) => return Err(e.context(format!("subnet6 {} needs IPv6 in the agent's namespace", net6.subnet))),
    };
    if was == "1" {
        return Ok(());
    }
    if let Some(uplink) = &cfg.uplink {
        // Read by path: an interface name may hold dots.
        let accept_ra = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{uplink}/accept_ra"));
        if accept_ra.is_ok_and(|v| v.trim() == "1") {
            host.set_sysctl(&SysctlPath::iface("net.ipv6.conf", uplink, "accept_ra"), "2")?;
            tracing::info!("uplink {uplink}: accept_ra 2, so that it keeps listening to router advertisements");
        }
    }
    host.set_sysctl(&SysctlPath::global("net.ipv6.conf.all.forwarding"), "1")
        .context("subnet6 needs IPv6 forwarding in the agent's namespace")
}

impl Agent {
    /// Sets up the host side (bridge, forwarding, datapath), then adopts
    /// what a previous run left and reconciles it with the saved state.
    pub async fn start(cfg: ResolvedConfig) -> Result<Agent> {
        let configured = cfg.clone();
        // One agent per instance, whatever its state directory: the pins
        // are the instance's. One per pin directory (another instance's
        // --pin-dir), and one per state directory (created first, so that
        // it is locked too): the locks `uninstall` and `--recover` take.
        let mut store = StateStore::new(&cfg.state_dir)?;
        let locks = crate::lock::lock_instance(&cfg)?;
        let state = store.load()?;
        // Checked before the host is touched: a bad range changes nothing.
        let host_ports = HostPorts::load(state.mappings.iter().map(|m| m.host_port))?;
        if cfg.masquerade && cfg.uplink.is_some() {
            host_ports.check_masquerade_range(cfg.masquerade_ports)?;
        }
        host_ports.check_guarded_ports(&cfg.guarded_ports)?;
        // Recorded first, so that `netpathd uninstall` can put them back.
        let mut host = HostChanges::load(&cfg.state_dir)?;
        host.set_sysctl(&SysctlPath::global("net.ipv4.ip_forward"), "1")?;
        let mut cfg = cfg;
        enable_ipv6_forwarding(&mut cfg, &mut host)?;
        let nl = Netlink::connect()?;
        let gateway_mac = container_mac(cfg.net4.map(|n| n.gateway), cfg.net6.map(|n| n.gateway));
        let mtu = match (cfg.mtu, &cfg.uplink) {
            (0, Some(uplink)) => nl.link_mtu(uplink).await.with_context(|| format!("uplink {uplink}"))?,
            (0, None) => 1500,
            (mtu, _) => mtu,
        };
        let layout = BridgeLayout {
            gateway: cfg.net4.map(|n| (n.gateway, n.subnet.prefix_len())),
            gateway6: cfg.net6.map(|n| (n.gateway, n.subnet.prefix_len())),
            mac: gateway_mac,
            mtu,
            max_ports: cfg.bridge_ports,
        };
        let bridges = Bridges::setup(&nl, &cfg.bridge, layout).await?;
        let uplink_index = match &cfg.uplink {
            Some(u) => Some(nl.link_index(u).await.with_context(|| format!("uplink {u}"))?),
            None => None,
        };
        let mut dp = Datapath::load(&cfg.pin_dir, cfg.conntrack.max_entries, uplink_index)?;
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
            (None, _) | (_, UplinkXdp::Off) => false,
            (Some(_), UplinkXdp::On) => true,
            (Some(u), UplinkXdp::Auto) => nl.link_kind(u).await?.as_deref() != Some("veth"),
        };
        if uplink_xdp {
            flags |= CFG_F_UPLINK_XDP;
        }
        if cfg.fast_path {
            flags |= CFG_F_FAST_PATH;
        }
        // The uplink guard's maps are written before the flags that make
        // the datapath read them.
        flags |= write_uplink_guard(&mut dp, &cfg)?;
        // The uplink's address now, not 0.0.0.0 until the first sync: the
        // datapath of a restarted agent keeps masquerading meanwhile.
        let previous_masq = dp.read_config()?.masq_addr4;
        let (masq_addr4, masq_addr6) = match uplink_index {
            Some(index) => {
                let (addrs4, addrs6) = split_families(nl.ip_addresses().await?);
                (masquerade_addr4(&addrs4, index), masquerade_addr6(&addrs6, index))
            }
            None => ([0; 4], In6Addr::UNSPECIFIED),
        };
        if flags & CFG_F_MASQUERADE != 0 && masq_addr4 != [0; 4] {
            tracing::info!("masquerading to {}", Ipv4Addr::from(masq_addr4));
        }
        let dp_config = DatapathConfig {
            netns_cookie: netns_cookie()?,
            // No IPv4 subnet: prefix 0, which matches no address.
            subnet4: cfg.net4.map_or([0; 4], |n| n.subnet.network().octets()),
            subnet4_prefix: cfg.net4.map_or(0, |n| n.subnet.prefix_len() as u32),
            gateway4: cfg.net4.map_or([0; 4], |n| n.gateway.octets()),
            flags,
            timeouts: cfg.conntrack.timeouts(),
            masq_addr4,
            masq_port_min: cfg.masquerade_ports.0,
            masq_port_max: cfg.masquerade_ports.1,
            gateway_mac,
            _pad: [0; 2],
            subnet6: cfg.net6.map_or(In6Addr::UNSPECIFIED, |n| n.subnet.network().into()),
            subnet6_prefix: cfg.net6.map_or(0, |n| n.subnet.prefix_len() as u32),
            _pad6: 0,
            gateway6: cfg.net6.map_or(In6Addr::UNSPECIFIED, |n| n.gateway.into()),
            masq_addr6,
        };
        dp.write_config(&dp_config)?;
        if cgroup.is_none() {
            tracing::warn!("no cgroup v2 mount found: host processes cannot reach published ports");
        }
        let own_netns_inode = Netns::current()?.inode()?;
        let mut inner = Inner {
            ipam: cfg.net4.map(|n| Ipam4::with_released(n.subnet, n.gateway, &state.released4)),
            ipam6: cfg.net6.map(|n| Ipam6::with_released(n.subnet, n.gateway, &state.released6)),
            netns_inodes: HashMap::new(),
            dp,
            nl,
            bridges,
            state,
            store,
            own_netns_inode,
            host_ipv6_conf: SysctlSection::open("net.ipv6.conf").ok(),
            cgroup,
            dp_config,
            uplink: cfg.uplink.clone(),
            host_ports,
            mtu,
            _locks: locks,
        };
        inner.attach_host_hooks().await?;
        inner.sync_host_addrs().await?;
        let routes = inner.nl.ipv4_routes().await?;
        inner.apply_route_mtus(&routes)?;
        // The address may have changed while no agent ran.
        inner.forget_masquerade_if_gone(previous_masq).await?;
        inner.reconcile().await?;
        inner.state.starts += 1;
        inner.save()?;
        let names = inner.state.containers.iter().map(|c| (c.id, c.name.clone())).collect();
        Ok(Agent {
            cfg,
            durability: inner.store.durability(),
            inner: Mutex::new(inner),
            events,
            names: RwLock::new(names),
            flow_watchers: AtomicUsize::new(0),
            gc: Default::default(),
            gc_settings: tokio::sync::watch::Sender::new(GcSettings::of(&configured)),
            configured: std::sync::Mutex::new(configured),
            config_source: std::sync::OnceLock::new(),
            api_metrics: Default::default(),
            pins_restored: AtomicU64::new(0),
            interfaces_lost: Default::default(),
            masquerade_address_changes: Default::default(),
        })
    }

    /// Background work: conntrack garbage collection and keeping the set of
    /// host addresses (for wildcard mappings) current.
    pub async fn spawn_background(self: &Arc<Agent>) -> Result<()> {
        // The conntrack GC walks the whole table: on a thread of its own
        // with map handles of its own, so that API calls never wait for it,
        // and at a lower CPU priority, so that they do not wait for a CPU
        // either while a round runs (a round over 200k entries takes a
        // third of a second of CPU). A round runs every gc_interval, and
        // sooner when the datapath's insert counter (read every tick) says
        // the table is filling (see GcReport::round_due); the first round
        // sets the baseline evictions are counted from. It also collects the
        // flows of removed owners (lazily: removing one never walks the
        // table) and counts the fill levels `status` shows.
        let settings = self.gc_settings.subscribe();
        let mut collector = self.inner.lock().await.dp.ct_collector(settings.borrow().handshake)?;
        // The thread stops once the agent is gone (it holds the reports
        // weakly).
        let reports = Arc::downgrade(&self.gc);
        std::thread::Builder::new()
            .name("netpath-gc".into())
            .spawn(move || {
                lower_thread_priority(GC_NICE);
                loop {
                    std::thread::sleep(crate::datapath::GC_TICK);
                    let Some(reports) = reports.upgrade() else { return };
                    let GcSettings { handshake, interval } = *settings.borrow();
                    collector.set_handshake_timeout(handshake);
                    let result = match collector.round_due(interval) {
                        Ok(true) => collector.collect(crate::datapath::monotonic_ns()).map(Some),
                        Ok(false) => Ok(None),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(Some(report)) => *reports.lock().unwrap_or_else(|e| e.into_inner()) = report,
                        Ok(None) => {}
                        Err(e) => tracing::warn!("conntrack GC: {e:#}"),
                    }
                }
            })
            .context("starting the conntrack GC thread")?;
        // The pins: bpffs wiped or unmounted, or the instance's directory
        // removed, under a running agent. It holds every map and link, so
        // nothing stopped meanwhile; it pins them again within a tick.
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PIN_CHECK);
            loop {
                tick.tick().await;
                let mut inner = agent.inner.lock().await;
                if inner.dp.pins_present() {
                    continue;
                }
                match inner.dp.restore_pins() {
                    Ok(r) => {
                        agent.pins_restored.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            maps = r.maps,
                            programs = r.programs,
                            links = r.links,
                            pin_dir = %inner.dp.pin_dir().display(),
                            "the instance's pins were removed behind the agent: pinned the same maps, programs and links again"
                        );
                    }
                    Err(e) => tracing::error!("restoring the instance's pins: {e:#}"),
                }
            }
        });
        // Interfaces and addresses: checked as netlink tells of a change
        // (the subscription made before the first check, so that nothing
        // falls between), and all of them every FULL_CHECK and whenever
        // notifications were lost. Never a dump of every interface per tick:
        // with thousands of containers that costs more than what it finds.
        let mut events = Some(HostEvents::subscribe().context("watching the host's interfaces")?);
        let agent = Arc::clone(self);
        let (nl, uplink) = {
            let inner = self.inner.lock().await;
            (inner.nl.clone(), inner.uplink.clone())
        };
        tokio::spawn(async move {
            let mut full = tokio::time::interval(FULL_CHECK);
            full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let check = match events.as_mut() {
                    Some(ev) => tokio::select! {
                        _ = full.tick() => HostCheck::everything(),
                        event = ev.next() => match event {
                            Some(first) => HostCheck::of(std::iter::once(first).chain(ev.ready()), uplink.as_deref()),
                            None => {
                                tracing::error!(
                                    "netlink stopped telling of interface changes: checking every {:?} instead",
                                    WITHOUT_EVENTS_CHECK
                                );
                                events = None;
                                full = tokio::time::interval(WITHOUT_EVENTS_CHECK);
                                continue;
                            }
                        },
                    },
                    None => {
                        full.tick().await;
                        HostCheck::everything()
                    }
                };
                if check.addresses {
                    // The netlink dump runs without the agent's lock: API
                    // calls wait only for the map writes, if anything changed.
                    let synced = match HostAddrs::read(&nl, uplink.as_deref()).await {
                        Ok(seen) => agent.inner.lock().await.apply_host_addrs(seen).await,
                        Err(e) => Err(e),
                    };
                    match synced {
                        Ok(changed) => agent.count_masquerade_changes(changed),
                        Err(e) => tracing::warn!("host address sync: {e:#}"),
                    }
                }
                if check.routes {
                    let synced = match nl.ipv4_routes().await {
                        Ok(routes) => agent.inner.lock().await.apply_route_mtus(&routes),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = synced {
                        tracing::warn!("route MTU sync: {e:#}");
                    }
                }
                if let Err(e) = agent.watch_interfaces(&check.links).await {
                    tracing::warn!("interface check: {e:#}");
                }
            }
        });
        Ok(())
    }

    /// Answers `r` once every change written so far is on disk. `inner` is
    /// released first: requests behind this one do not queue for its sync,
    /// and one sync covers every change written meanwhile. Reads settle
    /// too, so that nothing is shown that a crash could still take back.
    async fn settle<T>(&self, inner: MutexGuard<'_, Inner>, r: Result<T, AgentError>) -> Result<T, AgentError> {
        let ticket = inner.store.ticket();
        drop(inner);
        self.durability.wait(ticket).await?;
        r
    }

    pub async fn publish(&self, spec: &str) -> Result<Vec<Mapping>, AgentError> {
        self.publish_all(&[spec]).await
    }

    /// Publishes every port of every spec, or none of them.
    pub async fn publish_all(&self, specs: &[&str]) -> Result<Vec<Mapping>, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.publish(specs);
        self.settle(inner, r).await
    }

    pub async fn unpublish(&self, spec: &str) -> Result<Vec<Mapping>, AgentError> {
        self.unpublish_all(&[spec]).await
    }

    /// Removes what every spec names, or nothing if one names nothing.
    pub async fn unpublish_all(&self, specs: &[&str]) -> Result<Vec<Mapping>, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.unpublish(specs);
        self.settle(inner, r).await
    }

    pub async fn mappings(&self) -> Result<Vec<Mapping>, AgentError> {
        let inner = self.inner.lock().await;
        let r = Ok(inner.state.mappings.clone());
        self.settle(inner, r).await
    }

    pub async fn flows(&self) -> Result<Vec<Flow>, AgentError> {
        Ok(self.inner.lock().await.flows()?)
    }

    pub async fn flush_flows(&self) -> Result<usize, AgentError> {
        let flows = self.inner.lock().await.dp.ct_flush()?;
        tracing::info!(flows, "conntrack flushed: flows cut");
        Ok(flows)
    }

    pub fn config(&self) -> &ResolvedConfig {
        &self.cfg
    }

    pub fn api_metrics(&self) -> &crate::metrics::ApiMetrics {
        &self.api_metrics
    }

    /// The conntrack GC's last report.
    pub fn gc_report(&self) -> GcReport {
        self.gc.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn interfaces_lost(&self) -> &InterfacesLost {
        &self.interfaces_lost
    }

    pub fn masquerade_address_changes(&self) -> &MasqueradeAddressChanges {
        &self.masquerade_address_changes
    }

    fn count_masquerade_changes(&self, changed: MasqueradeChanged) {
        let counts = &self.masquerade_address_changes;
        for (counter, changed) in [(&counts.ipv4, changed.ipv4), (&counts.ipv6, changed.ipv6)] {
            if changed {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Repairs what was deleted behind the agent's back: a bridge is
    /// created again and the veths made its ports again; a container whose
    /// veth is gone (its network namespace was deleted, or the veth) is
    /// removed as `container del` would, its ports unpublished. Each is
    /// logged and counted. `which`: the interfaces netlink said were
    /// deleted, or every one.
    async fn watch_interfaces(&self, which: &LinkCheck) -> Result<()> {
        // Every interface's index (if_nameindex: no attribute parsed or
        // kept), without the lock, when there is no list of the gone ones.
        let listed: HashSet<u32> = match which {
            LinkCheck::None => return Ok(()),
            LinkCheck::Gone(_) => HashSet::new(),
            LinkCheck::Every => {
                nix::net::if_::if_nameindex().context("listing interfaces")?.iter().map(|i| i.index()).collect()
            }
        };
        let present = |index: u32| match which {
            LinkCheck::Gone(gone) => !gone.contains(&index),
            _ => listed.contains(&index),
        };
        let mut inner = self.inner.lock().await;
        // A container attached since the list was read is not in it: each
        // one missing is asked for by its index, under the lock, where
        // nothing is added meanwhile (never a dump of every interface per
        // tick while containers come and go).
        let suspects: Vec<Container> = inner.state.containers.iter().filter(|c| !present(c.ifindex)).cloned().collect();
        let bridge_missing = inner.bridges.indexes().any(|i| !present(i));
        let mut lost = vec![];
        for c in suspects {
            if inner.nl.link_by_index(c.ifindex).await?.is_none() {
                lost.push(c);
            }
        }
        for c in lost {
            tracing::warn!(container = %c.name, veth = %c.veth, "the container's veth is gone: removing the container");
            let removed = inner.del_container(&c.name).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            self.names.write().map_err(|_| anyhow::anyhow!("names lock poisoned"))?.remove(&removed.id);
            self.interfaces_lost.veths.fetch_add(1, Ordering::Relaxed);
        }
        if bridge_missing && !inner.bridges.all_present(&inner.nl.links().await?) {
            tracing::warn!("a bridge of the instance was deleted: setting the bridges up again");
            let nl = inner.nl.clone();
            inner.bridges.rebuild(&nl).await?;
            for c in inner.state.containers.clone() {
                inner.bridges.adopt_port(&nl, c.ifindex, PortAddrs::of(&c)).await?;
            }
            self.interfaces_lost.bridges.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Journal syncs made for API answers, and the changes they covered.
    pub fn state_syncs(&self) -> (u64, u64) {
        self.durability.syncs()
    }

    /// Times the instance's pins vanished under this agent and were put back.
    pub fn pins_restored(&self) -> u64 {
        self.pins_restored.load(Ordering::Relaxed)
    }

    /// Agent starts on this instance's state, this one included.
    pub async fn starts(&self) -> u64 {
        self.inner.lock().await.state.starts
    }

    pub async fn add_container(&self, req: ContainerRequest) -> Result<Container, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.add_container(&self.cfg, req).await.and_then(|c| {
            self.names.write().map_err(|_| anyhow::anyhow!("names lock poisoned"))?.insert(c.id, c.name.clone());
            Ok(c)
        });
        self.settle(inner, r).await
    }

    pub async fn del_container(&self, name: &str) -> Result<Container, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.del_container(name).await.and_then(|c| {
            self.names.write().map_err(|_| anyhow::anyhow!("names lock poisoned"))?.remove(&c.id);
            Ok(c)
        });
        self.settle(inner, r).await
    }

    /// Removes the containers a runtime no longer knows (see [`GcRequest`]).
    pub async fn gc_containers(&self, req: GcRequest) -> Result<Vec<Container>, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.gc_containers(&req).await.and_then(|removed| {
            let mut names = self.names.write().map_err(|_| anyhow::anyhow!("names lock poisoned"))?;
            for c in &removed {
                names.remove(&c.id);
            }
            Ok(removed)
        });
        self.settle(inner, r).await
    }

    /// See [`ContainerRequest::runtime_name`]: for runtimes that tell the
    /// name only after the container is attached.
    pub async fn set_runtime_name(&self, container: &str, name: &str) -> Result<(), AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.set_runtime_name(container, name);
        if r.is_ok() {
            inner.refresh_identity(container).await;
        }
        self.settle(inner, r).await
    }

    pub async fn check_container(&self, name: &str) -> Result<CheckReport, AgentError> {
        self.inner.lock().await.check_container(&self.cfg, name).await
    }

    pub async fn network(&self) -> NetworkInfo {
        let inner = self.inner.lock().await;
        NetworkInfo {
            instance: self.cfg.instance.clone(),
            bridge: self.cfg.bridge.clone(),
            subnet: self.cfg.net4.map(|n| n.subnet),
            gateway: self.cfg.net4.map(|n| n.gateway),
            subnet6: self.cfg.net6.map(|n| n.subnet),
            gateway6: self.cfg.net6.map(|n| n.gateway),
            mtu: inner.mtu,
        }
    }

    /// Adds every rule or none (see `Inner::add_rules`).
    pub async fn add_rules(&self, reqs: &[RuleRequest]) -> Result<Vec<Rule>, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.add_rules(reqs);
        self.settle(inner, r).await
    }

    pub async fn add_rule(&self, req: RuleRequest) -> Result<Rule, AgentError> {
        self.change_rule(req, true).await
    }

    pub async fn remove_rule(&self, req: RuleRequest) -> Result<Rule, AgentError> {
        self.change_rule(req, false).await
    }

    async fn change_rule(&self, req: RuleRequest, add: bool) -> Result<Rule, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.change_rule(req, add);
        self.settle(inner, r).await
    }

    pub async fn set_default(
        &self,
        container: &str,
        direction: Direction,
        action: Action,
    ) -> Result<PolicyView, AgentError> {
        let mut inner = self.inner.lock().await;
        let r = inner.set_default(container, direction, action);
        self.settle(inner, r).await
    }

    pub async fn policy(&self, container: &str) -> Result<PolicyView, AgentError> {
        let inner = self.inner.lock().await;
        let r = inner
            .find(container)
            .map(|c| c.name.clone())
            .map(|name| PolicyView { policy: inner.policy_of(&name), container: name });
        self.settle(inner, r).await
    }

    pub async fn policies(&self) -> Result<Vec<PolicyView>, AgentError> {
        let inner = self.inner.lock().await;
        let r = Ok(inner
            .state
            .containers
            .iter()
            .map(|c| PolicyView { container: c.name.clone(), policy: inner.policy_of(&c.name) })
            .collect());
        self.settle(inner, r).await
    }

    pub async fn settings(&self) -> Settings {
        Settings { icc: !self.inner.lock().await.dp_config.has(CFG_F_NO_ICC) }
    }

    pub async fn set_settings(&self, s: Settings) -> Result<Settings, AgentError> {
        let mut inner = self.inner.lock().await;
        inner.state.icc = Some(s.icc);
        inner.set_flag(CFG_F_NO_ICC, !s.icc)?;
        inner.save()?;
        if !s.icc {
            inner.rejudge_flows(None)?;
        }
        tracing::info!(icc = s.icc, "icc set");
        Ok(s)
    }

    pub async fn stats(&self, container: Option<&str>) -> Result<StatsView, AgentError> {
        let st = self.status().await?;
        let containers: Vec<ContainerStatus> = match container {
            Some(name) => {
                let c: Vec<_> = st.containers.into_iter().filter(|c| c.container.is_named(name)).collect();
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
    ) -> Result<(broadcast::Receiver<DatapathEvent>, Option<FlowWatch>), AgentError> {
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
    pub fn describe(&self, e: &DatapathEvent) -> MonitorEvent {
        let name = self.names.read().ok().and_then(|n| n.get(&e.container_id()).cloned());
        MonitorEvent::from_raw(e, name)
    }

    pub async fn containers(&self) -> Result<Vec<Container>, AgentError> {
        let inner = self.inner.lock().await;
        let r = Ok(inner.state.containers.clone());
        self.settle(inner, r).await
    }

    pub async fn container(&self, name: &str) -> Result<ContainerStatus, AgentError> {
        let mut inner = self.inner.lock().await;
        let c = inner.find(name)?.clone();
        let stats = interface_stats(&inner.dp.stats(c.stats_slot)?, true);
        let bridge = inner.bridges.name_of(c.ifindex);
        Ok(ContainerStatus { container: c, bridge, stats })
    }

    pub async fn status(&self) -> Result<Status, AgentError> {
        let cfg = &self.cfg;
        // Before the lock, and without a netlink round trip: status is
        // what monitoring polls.
        let uplink_index = match &cfg.uplink {
            Some(uplink) => Some(
                nix::net::if_::if_nametoindex(uplink.as_str())
                    .with_context(|| format!("looking up the uplink {uplink}"))?,
            ),
            None => None,
        };
        let mut inner = self.inner.lock().await;
        let configured = self.configured.lock().map_err(|_| anyhow::anyhow!("config lock poisoned"))?.clone();
        // Which programs run where is asked of the kernel after the lock.
        let hooks: Vec<_> = inner
            .attachments()
            .into_iter()
            .map(|(target, hook)| {
                let pin = inner.dp.link_pin(&target, hook);
                (target, hook, pin)
            })
            .collect();
        let mut containers = vec![];
        for c in inner.state.containers.clone() {
            let stats = interface_stats(&inner.dp.stats(c.stats_slot)?, true);
            let bridge = inner.bridges.name_of(c.ifindex);
            containers.push(ContainerStatus { container: c, bridge, stats });
        }
        let mut uplink_stats = None;
        if uplink_index.is_some() {
            uplink_stats = Some(interface_stats(&inner.dp.stats(IFACE_SLOT_UPLINK)?, false));
        }
        let unattributed_drops = interface_stats(&inner.dp.stats(IFACE_SLOT_UNATTRIBUTED)?, false).drops;
        let r = Ok(Status {
            instance: cfg.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            bridge: cfg.bridge.clone(),
            bridges: inner.bridges.status(),
            subnet: cfg.net4.map(|n| n.subnet.to_string()),
            gateway: cfg.net4.map(|n| n.gateway),
            subnet6: cfg.net6.map(|n| n.subnet.to_string()),
            gateway6: cfg.net6.map(|n| n.gateway),
            uplink: cfg.uplink.clone(),
            pin_dir: cfg.pin_dir.display().to_string(),
            attach_points: vec![],
            programs: inner.dp.program_summaries()?.into_iter().map(program_status).collect(),
            maps: inner.dp.map_summaries()?.into_iter().map(map_status).collect(),
            containers,
            mappings: inner.state.mappings.len(),
            cgroup: inner.cgroup.as_ref().map(|c| c.display().to_string()),
            routed: inner.dp_config.has(CFG_F_ROUTED),
            icc: !inner.dp_config.has(CFG_F_NO_ICC),
            masquerade: inner
                .dp_config
                .has(CFG_F_MASQUERADE)
                .then(|| Ipv4Addr::from(inner.dp_config.masq_addr4))
                .filter(|a| !a.is_unspecified()),
            masquerade_ports: format!("{}-{}", cfg.masquerade_ports.0, cfg.masquerade_ports.1),
            guarded_ports: configured.guarded_ports.iter().map(|r| r.to_string()).collect(),
            denied_sources: configured.denied_sources.iter().map(|n| n.to_string()).collect(),
            drop_events_suppressed: inner.dp.suppressed_events()?,
            uplink_stats,
            unattributed_drops,
            agent_memory_bytes: 0,
            fast_path: FastPathStatus::from_stats(inner.dp_config.has(CFG_F_FAST_PATH), &inner.dp.forward_stats()?),
            conntrack: conntrack_status(&inner.dp.ct_stats()?, &self.gc.lock().unwrap_or_else(|e| e.into_inner())),
        });
        let mut status = self.settle(inner, r).await?;
        status.agent_memory_bytes = resident_memory().unwrap_or(0);
        for (target, hook, pin) in hooks {
            let ids = match crate::datapath::attached_program_ids(&target, hook, &pin) {
                Ok(ids) => ids,
                // Its container was removed since the lock was released.
                Err(_)
                    if hook.target == Target::ContainerVeth
                        && nix::net::if_::if_nametoindex(target.as_str()).is_err() =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            status.attach_points.push(AttachPoint {
                link_pin: pin.display().to_string(),
                attached_program_ids: ids,
                interface: target,
                hook: hook.pin_prefix.into(),
                program: hook.program.into(),
            });
        }
        Ok(status)
    }
}

impl Inner {
    /// The container named `name`: by its own name, else by its runtime's.
    fn find(&self, name: &str) -> Result<&Container, AgentError> {
        let containers = &self.state.containers;
        containers
            .iter()
            .find(|c| c.name == name)
            .or_else(|| containers.iter().find(|c| c.is_named(name)))
            .ok_or_else(|| AgentError::refused(ErrorReason::NotFound, format!("no container named {name:?}")))
    }

    fn save(&mut self) -> Result<()> {
        self.keep_released();
        self.store.save(&self.state)
    }

    /// The allocators' queues are the ones that count (a snapshot or a
    /// compaction writes the state whole). Without an IPv6 subnet the saved
    /// IPv6 queue stays as it was, for when one is configured again.
    fn keep_released(&mut self) {
        if let Some(ipam) = &self.ipam {
            self.state.released4 = ipam.released();
        }
        if let Some(ipam6) = &self.ipam6 {
            self.state.released6 = ipam6.released();
        }
    }

    fn record(&mut self, change: Change) -> Result<()> {
        change.apply(&mut self.state);
        self.keep_released();
        self.store.record(&change, &self.state)
    }

    /// Brings the kernel in line with the saved state: containers whose
    /// veth vanished (their netns was deleted) are dropped; the others get
    /// their map entries rewritten and programs swapped into their pinned
    /// links; map entries and pins nobody owns are removed.
    async fn reconcile(&mut self) -> Result<()> {
        let mut kept = vec![];
        let mut slots = containers::StatsSlots::of(&self.state.containers);
        for mut c in std::mem::take(&mut self.state.containers) {
            let link = self.nl.link_by_name(&c.veth).await?.filter(|l| l.header.index == c.ifindex);
            let alive = link.is_some();
            // Veths attached by an older agent learn who they are.
            let alias = crate::recover::VethIdentity::of(&c).to_alias();
            if link.as_ref().is_some_and(|l| crate::netlink::link_alias(l).as_deref() != Some(alias.as_str())) {
                self.nl.set_alias(c.ifindex, &alias).await?;
            }
            if !alive {
                tracing::info!(container = %c.name, "veth {} is gone; removing the container", c.veth);
                self.forget_datapath(&c)?;
                self.forget_flows(&c)?;
                self.release_addresses(c.ip, c.ip6);
                continue;
            }
            self.bridges.adopt_port(&self.nl, c.ifindex, PortAddrs::of(&c)).await?;
            if let Ok(inode) = Netns::open(&c.netns).and_then(|n| n.inode()) {
                self.netns_inodes.insert(c.name.clone(), inode);
            }
            if c.stats_slot == 0 {
                // Attached before counters had slots: the slot the layout
                // migration gave its entry (its counters copied there), or
                // a free one.
                let migrated = self.dp.container(c.ifindex)?.map(|e| e.stats_slot);
                c.stats_slot = match migrated.filter(|s| slots.claim(*s)) {
                    Some(slot) => slot,
                    None => {
                        let slot = slots.take().context("no free counter slot")?;
                        self.dp.reset_stats(slot)?;
                        slot
                    }
                };
            }
            self.program_container(&c)?;
            match (&mut self.ipam, c.ip) {
                (Some(ipam), Some(ip)) => {
                    ipam.allocate(&c.name, Some(ip))
                        .map_err(|e| anyhow::anyhow!("state file: container {}: {e}", c.name))?;
                }
                (None, Some(ip)) => tracing::warn!(
                    container = %c.name,
                    "has IPv4 address {ip} but the instance has no subnet now: its IPv4 is not carried"
                ),
                _ => {}
            }
            match (&mut self.ipam6, c.ip6) {
                (Some(ipam6), Some(ip6)) => {
                    ipam6.allocate(&c.name, Some(ip6)).map_err(|e| {
                        anyhow::anyhow!("state file: container {}: {e} (subnet6 changed under it?)", c.name)
                    })?;
                }
                (None, Some(ip6)) => tracing::warn!(
                    container = %c.name,
                    "has IPv6 address {ip6} but the instance has no subnet6 now: its IPv6 is not carried"
                ),
                _ => {}
            }
            kept.push(c);
        }
        self.state.containers = kept;
        let addresses = self.state.containers.iter().map(|c| (c.ifindex, PortAddrs::of(c))).collect();
        self.bridges.prune(&self.nl, &addresses).await?;
        let owned: std::collections::HashSet<u32> = self.state.containers.iter().map(|c| c.ifindex).collect();
        for (ifindex, _) in self.dp.containers()? {
            if !owned.contains(&ifindex) {
                self.dp.remove_container(ifindex)?;
            }
        }
        // Pins nobody owns go; what is wanted comes from the hook table.
        let wanted: std::collections::HashSet<String> = self
            .attachments()
            .into_iter()
            .filter_map(|(target, hook)| file_name(&self.dp.link_pin(&target, hook)))
            .collect();
        for pin in self.dp.pinned_links()? {
            if !wanted.contains(&pin) {
                tracing::info!("removing stale link pin {pin}");
                self.dp.remove_link_pin(&pin)?;
            }
        }
        self.reconcile_mappings()?;
        self.reconcile_policies()?;
        // Owners removed while no agent ran leave their slots: their flows
        // go stale.
        let mappings = self.state.mappings.iter().map(|m| m.id).collect();
        let containers = self.state.containers.iter().map(|c| c.id).collect();
        let cleared = self.dp.retain_owners(&mappings, &containers)?;
        if cleared > 0 {
            tracing::info!(owners = cleared, "cleared the owner slots of mappings and containers that are gone");
        }
        self.save()
    }

    /// HOST_ADDRS4 and HOST_ADDRS6 := the addresses of the agent's
    /// namespace; the masquerade address := the uplink's first IPv4 one.
    /// Flows translated to a masquerade address the host no longer has are
    /// forgotten.
    async fn sync_host_addrs(&mut self) -> Result<()> {
        let seen = HostAddrs::read(&self.nl, self.uplink.as_deref()).await?;
        self.apply_host_addrs(seen).await.map(|_| ())
    }

    /// [`Inner::sync_host_addrs`] with the addresses already read; tells
    /// which masquerade addresses changed.
    async fn apply_host_addrs(&mut self, seen: HostAddrs) -> Result<MasqueradeChanged> {
        let mut changed = MasqueradeChanged::default();
        let HostAddrs { addrs4: addrs, addrs6, uplink_index } = seen;
        let entries4: Vec<([u8; 4], u32)> = addrs.iter().map(|(a, i)| (a.octets(), *i)).collect();
        let entries6: Vec<(In6Addr, u32)> = addrs6.iter().map(|(a, i)| (In6Addr::from(*a), *i)).collect();
        self.dp.sync_host_addrs4(&entries4)?;
        self.dp.sync_host_addrs6(&entries6)?;
        if let (Some(uplink), Some(index)) = (self.uplink.clone(), uplink_index) {
            let masq6 = masquerade_addr6(&addrs6, index);
            if masq6 != self.dp_config.masq_addr6 {
                tracing::info!("masquerading IPv6 to {:?}", masq6);
                // IPv6 flows translated to the old address expire; their
                // replies no longer arrive at it.
                self.dp_config.masq_addr6 = masq6;
                self.dp.write_config(&self.dp_config)?;
                changed.ipv6 = true;
            }
            let masq = masquerade_addr4(&addrs, index);
            let old = self.dp_config.masq_addr4;
            if masq != old {
                if masq == [0; 4] {
                    tracing::warn!("uplink {uplink} has no IPv4 address: masquerade paused");
                } else {
                    tracing::info!("masquerading to {}", Ipv4Addr::from(masq));
                }
                self.dp_config.masq_addr4 = masq;
                self.dp.write_config(&self.dp_config)?;
                changed.ipv4 = true;
                // New flows get the new address first, then the old ones go.
                // The change stands (and is counted) if that fails: the old
                // address's flows then expire on their own, their replies
                // no longer reaching the host.
                if let Err(e) = self.forget_masquerade_if_gone(old).await {
                    tracing::warn!("forgetting the flows masqueraded to {}: {e:#}", Ipv4Addr::from(old));
                }
            }
        }
        Ok(changed)
    }

    /// Forgets the flows translated to `old`, a masquerade address no longer
    /// in use, unless the host still has it (then they still work).
    async fn forget_masquerade_if_gone(&mut self, old: [u8; 4]) -> Result<()> {
        if old == [0; 4] || old == self.dp_config.masq_addr4 {
            return Ok(());
        }
        if !self.nl.ipv4_addresses().await?.iter().any(|(a, _)| a.octets() == old) {
            self.forget_masquerade(old)?;
        }
        Ok(())
    }

    /// ROUTE_MTUS4 := the routes among `routes` whose MTU the fast path
    /// must check (see `route_mtu`), and the check on while there are any.
    fn apply_route_mtus(&mut self, routes: &[Route4]) -> Result<()> {
        let mut entries = route_mtus4(routes, self.mtu);
        if entries.len() > MAX_ROUTE_MTUS {
            // Too many to mirror: the check stays off (the lookup still
            // checks locked MTUs and the interfaces').
            tracing::warn!(
                "{} IPv4 routes with their own MTU, or inside one: more than the {MAX_ROUTE_MTUS} the fast path \
                 can check; their MTU is not checked there (lock it: `ip route change ... mtu lock N`)",
                entries.len()
            );
            entries.clear();
        }
        self.dp.sync_route_mtus4(&entries)?;
        let on = !entries.is_empty();
        if on != self.dp_config.has(CFG_F_ROUTE_MTUS4) {
            if on {
                let shown: Vec<String> = entries
                    .iter()
                    .filter(|(_, _, mtu)| *mtu != 0)
                    .map(|(len, addr, mtu)| format!("{}/{len} mtu {mtu}", Ipv4Addr::from(*addr)))
                    .collect();
                tracing::info!("the fast path checks the MTU of IPv4 routes {}", shown.join(", "));
            } else {
                tracing::info!("no IPv4 route has an MTU of its own below the containers': the check is off");
            }
        }
        // Written after the trie: the check never reads a half-written one
        // it was just switched on for.
        self.set_flag(CFG_F_ROUTE_MTUS4, on)
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let flags = if on { self.dp_config.flags | flag } else { self.dp_config.flags & !flag };
        if flags != self.dp_config.flags {
            self.dp_config.flags = flags;
            self.dp.write_config(&self.dp_config)?;
        }
        Ok(())
    }

    /// Every (target, hook) this instance attaches: each container's veth
    /// with the per-container hooks, the uplink with its hooks (XDP only
    /// when the datapath runs with it), the cgroup with the socket hooks.
    /// The one place where the hook table becomes attachments: start,
    /// reconcile and status all read it.
    fn attachments(&self) -> Vec<(String, &'static Hook)> {
        let mut out = vec![];
        for c in &self.state.containers {
            out.extend(Hook::on(Target::ContainerVeth).map(|h| (c.veth.clone(), h)));
        }
        if let Some(uplink) = &self.uplink {
            let xdp = self.dp_config.has(CFG_F_UPLINK_XDP);
            out.extend(
                Hook::on(Target::Uplink).filter(|h| h.attach != Attach::Xdp || xdp).map(|h| (uplink.clone(), h)),
            );
        }
        if let Some(cg) = &self.cgroup {
            out.extend(Hook::on(Target::Cgroup).map(|h| (cg.display().to_string(), h)));
        }
        out
    }

    /// Attaches the uplink and cgroup hooks (the containers' come with each
    /// container), and takes XDP off an uplink that no longer wants it.
    async fn attach_host_hooks(&mut self) -> Result<()> {
        let wanted = self.attachments();
        for (target, hook) in wanted.iter().filter(|(_, h)| h.target != Target::ContainerVeth) {
            self.dp.attach(target, hook)?;
        }
        if let Some(uplink) = self.uplink.clone() {
            self.nl.link_index(&uplink).await.with_context(|| format!("uplink {uplink}"))?;
            for hook in Hook::on(Target::Uplink).filter(|h| !wanted.iter().any(|(_, w)| w.id == h.id)) {
                self.dp.detach(&uplink, hook)?;
            }
        }
        Ok(())
    }
}

/// Makes GUARDED_PORTS and DENIED_SOURCES4 hold what the configuration
/// says (a restarted agent replaces what the previous one wrote); returns
/// the `CFG_F_*` flags that switch the datapath's lookups on.
fn write_uplink_guard(dp: &mut Datapath, cfg: &ResolvedConfig) -> Result<u32> {
    let mut ports = GuardedPorts::default();
    for r in &cfg.guarded_ports {
        ports.add(r.proto.number(), r.min, r.max);
    }
    dp.write_guarded_ports(&ports)?;
    let prefixes: Vec<(u32, [u8; 4])> =
        cfg.denied_sources.iter().map(|n| (n.prefix_len() as u32, n.network().octets())).collect();
    dp.sync_denied_sources4(&prefixes)?;
    let mut flags = 0;
    if !cfg.guarded_ports.is_empty() {
        flags |= CFG_F_GUARDED_PORTS;
        tracing::info!(
            "uplink guards ports {}",
            cfg.guarded_ports.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    if !prefixes.is_empty() {
        flags |= CFG_F_DENIED_SOURCES;
        tracing::info!("uplink denies {} source prefixes", prefixes.len());
    }
    Ok(flags)
}

/// The host's addresses of both families (with their interfaces) and the
/// uplink's index, as one netlink dump showed them.
struct HostAddrs {
    addrs4: Vec<(Ipv4Addr, u32)>,
    addrs6: Vec<(std::net::Ipv6Addr, u32)>,
    uplink_index: Option<u32>,
}

/// What netlink's notifications ask the agent to look at again.
#[derive(Debug, Default, PartialEq, Eq)]
struct HostCheck {
    /// The host's addresses (the uplink's among them).
    addresses: bool,
    /// The host's IPv4 routes (their MTUs, `ROUTE_MTUS4`).
    routes: bool,
    links: LinkCheck,
}

/// Which interfaces to look for.
#[derive(Debug, Default, PartialEq, Eq)]
enum LinkCheck {
    #[default]
    None,
    /// The ones netlink said were deleted.
    Gone(HashSet<u32>),
    Every,
}

impl HostCheck {
    fn everything() -> HostCheck {
        HostCheck { addresses: true, routes: true, links: LinkCheck::Every }
    }

    /// What a batch of notifications asks for: the addresses when one
    /// changed or the uplink came or went, the routes when one changed, the
    /// interfaces that were deleted, everything when some were lost.
    fn of(events: impl IntoIterator<Item = HostEvent>, uplink: Option<&str>) -> HostCheck {
        let is_uplink = |name: &Option<String>| name.is_some() && name.as_deref() == uplink;
        let mut check = HostCheck::default();
        for event in events {
            match event {
                HostEvent::AddressesChanged => check.addresses = true,
                HostEvent::RoutesChanged => check.routes = true,
                HostEvent::LinkChanged { name, .. } => check.addresses |= is_uplink(&name),
                HostEvent::LinkGone { index, name } => {
                    check.addresses |= is_uplink(&name);
                    match &mut check.links {
                        LinkCheck::Gone(gone) => {
                            gone.insert(index);
                        }
                        links => *links = LinkCheck::Gone(HashSet::from([index])),
                    }
                }
                HostEvent::Lost => return HostCheck::everything(),
            }
        }
        check
    }
}

impl HostAddrs {
    async fn read(nl: &Netlink, uplink: Option<&str>) -> Result<HostAddrs> {
        let (addrs4, addrs6) = split_families(nl.ip_addresses().await?);
        let uplink_index = match uplink {
            Some(name) => Some(nl.link_index(name).await?),
            None => None,
        };
        Ok(HostAddrs { addrs4, addrs6, uplink_index })
    }
}

/// The masquerade address: the uplink's first IPv4 address (0.0.0.0: none).
fn masquerade_addr4(addrs: &[(Ipv4Addr, u32)], uplink_index: u32) -> [u8; 4] {
    addrs.iter().find(|(_, i)| *i == uplink_index).map(|(a, _)| a.octets()).unwrap_or([0; 4])
}

/// The IPv6 masquerade address: the uplink's first address that is not
/// link-local (unspecified: none).
fn masquerade_addr6(addrs: &[(std::net::Ipv6Addr, u32)], uplink_index: u32) -> In6Addr {
    addrs
        .iter()
        .find(|(a, i)| *i == uplink_index && !In6Addr::from(*a).link_scoped() && !a.is_loopback())
        .map_or(In6Addr::UNSPECIFIED, |(a, _)| In6Addr::from(*a))
}

/// The file name of a pin path.
fn file_name(p: &std::path::Path) -> Option<String> {
    p.file_name().map(|f| f.to_string_lossy().into_owned())
}

/// Counters as the API shows them; `container_view` swaps directions so
/// that tx means "sent by the container".
fn interface_stats(s: &TrafficStats, container_view: bool) -> InterfaceStats {
    let (rx, tx) = if container_view { (s.egress, s.ingress) } else { (s.ingress, s.egress) };
    InterfaceStats {
        rx_packets: rx.packets,
        rx_bytes: rx.bytes,
        tx_packets: tx.packets,
        tx_bytes: tx.bytes,
        drops: DropReason::ALL
            .iter()
            .filter(|r| s.drops[**r as usize] > 0)
            .map(|r| (r.name().to_string(), s.drops[*r as usize]))
            .collect(),
    }
}

/// The agent's resident set size (VmRSS), bytes.
fn resident_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

fn conntrack_status(stats: &CtStats, gc: &GcReport) -> ConntrackStatus {
    ConntrackStatus {
        inserts: stats.inserts,
        insert_failures: stats.insert_failures,
        datapath_removals: stats.removals,
        evictions: gc.evictions,
        entries: gc.live_entries,
        max_entries: gc.max_entries,
        pressure: gc.pressure,
        gc_runs: gc.runs,
        gc_last_us: gc.last_duration.as_micros() as u64,
        gc_flows_removed: gc.flows_removed,
        gc_entries_removed: gc.entries_removed,
        gc_early_flows_removed: gc.early_flows_removed,
    }
}

fn map_status(m: MapSummary) -> MapStatus {
    MapStatus {
        name: m.name,
        id: m.id,
        kind: m.kind,
        entries: m.entries,
        max_entries: m.max_entries,
        pin: m.pin,
        memory_bytes: m.memory_bytes,
        counted_ms_ago: m.counted_ms_ago,
    }
}

fn program_status(p: ProgramSummary) -> ProgramStatus {
    ProgramStatus { name: p.name, id: p.id, kind: p.kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> (u32, Option<String>) {
        (index, Some(name.to_string()))
    }

    #[test]
    fn a_batch_of_notifications_asks_for_what_it_touched() {
        let changed = |(index, name)| HostEvent::LinkChanged { index, name };
        let gone = |(index, name)| HostEvent::LinkGone { index, name };
        // An attach storm's veths: nothing to look at.
        let storm = [changed(link(7, "npv1")), changed(link(8, "npv2"))];
        assert_eq!(HostCheck::of(storm, Some("up0")), HostCheck::default());
        // Deleted interfaces are looked for by index, alone.
        let check = HostCheck::of([gone(link(7, "npv1")), changed(link(9, "npv3")), gone(link(8, "npv2"))], None);
        assert_eq!(check, HostCheck { addresses: false, routes: false, links: LinkCheck::Gone(HashSet::from([7, 8])) });
        // The uplink coming or going, or any address: the addresses.
        assert!(HostCheck::of([changed(link(2, "up0"))], Some("up0")).addresses);
        assert!(HostCheck::of([gone(link(2, "up0"))], Some("up0")).addresses);
        assert!(!HostCheck::of([changed((3, None))], None).addresses, "no uplink, no name: nothing");
        assert!(HostCheck::of([HostEvent::AddressesChanged], None).addresses);
        // A route: the routes, alone.
        assert_eq!(HostCheck::of([HostEvent::RoutesChanged], None), HostCheck { routes: true, ..HostCheck::default() });
        // Lost notifications: everything.
        let lost = HostCheck::of([gone(link(7, "npv1")), HostEvent::Lost], None);
        assert_eq!(lost, HostCheck::everything());
    }
}
