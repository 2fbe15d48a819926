//! The agent's command-line flags: each overrides the config file's key of
//! the same name. Kept in the library so that a reload (SIGHUP) applies the
//! same flags over the re-read file.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Result;

use crate::config::Config;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct AgentFlags {
    /// TOML configuration file (flags override it).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Instance name: pins under /sys/fs/bpf/netpath/<instance>, default state and socket paths.
    #[arg(long, global = true)]
    pub instance: Option<String>,
    /// Uplink interface (XDP attaches there).
    #[arg(long, global = true)]
    pub uplink: Option<String>,
    /// Guarded port ranges of the uplink, PORT[-END][/tcp|/udp], comma-separated
    /// (replace the file's uplink.guarded_ports): the host's addresses answer
    /// them from the uplink only through published ports.
    #[arg(long, global = true, value_delimiter = ',', value_name = "RANGES")]
    pub guarded_ports: Option<Vec<String>>,
    /// Source prefixes the uplink never accepts, comma-separated (replace the
    /// file's uplink.denied_sources).
    #[arg(long, global = true, value_delimiter = ',', value_name = "CIDRS")]
    pub denied_sources: Option<Vec<String>>,
    /// Bridge name [default: np0].
    #[arg(long, global = true)]
    pub bridge: Option<String>,
    /// Containers per bridge before an overflow bridge (<bridge>-1, ...) opens [default: 1023].
    #[arg(long, global = true, value_name = "N")]
    pub bridge_ports: Option<u32>,
    /// IPv4 container subnet, or `none` for an IPv6-only instance
    /// [default: 10.77.0.0/16].
    #[arg(long, global = true)]
    pub subnet: Option<crate::config::Subnet4>,
    /// Bridge address [default: first host of the subnet].
    #[arg(long, global = true)]
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 container subnet: a ULA or global /64 to /120, `none` (IPv4
    /// only) or `auto` [default: auto, a ULA /64 derived from the machine id
    /// and the instance name].
    #[arg(long, global = true, value_name = "PREFIX|auto|none")]
    pub subnet6: Option<crate::config::Subnet6>,
    /// The bridge's IPv6 address [default: the IPv6 subnet's ::1].
    #[arg(long, global = true)]
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// State directory [default: /var/lib/netpath/<instance>].
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// API socket [default: /run/netpath/<instance>/api.sock].
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// bpffs directory for pins [default: /sys/fs/bpf/netpath/<instance>].
    #[arg(long, global = true)]
    pub pin_dir: Option<PathBuf>,
    /// Let the uplink reach container addresses directly (routed mode).
    #[arg(long, global = true)]
    pub routed: bool,
    /// XDP on the uplink [default: auto, i.e. unless the uplink is a veth].
    #[arg(long, global = true, value_enum)]
    pub uplink_xdp: Option<crate::config::UplinkXdp>,
    /// Hand every packet to the stack (bridge, routing) instead of
    /// redirecting it to the interface it leaves by.
    #[arg(long, global = true)]
    pub no_fast_path: bool,
    /// Deny direct container-to-container traffic (Docker's --icc=false).
    #[arg(long, global = true)]
    pub no_icc: bool,
    /// Do not masquerade container traffic leaving the uplink.
    #[arg(long, global = true)]
    pub no_masquerade: bool,
    /// Source ports the masquerade allocates, MIN-MAX [default: 1024-32767].
    #[arg(long, global = true)]
    pub masquerade_ports: Option<String>,
    /// MTU of the bridge and container interfaces [default: the uplink's].
    #[arg(long, global = true)]
    pub mtu: Option<u32>,
    /// cgroup v2 directory for the host-process socket hooks [default: the cgroup v2 root].
    #[arg(long, global = true)]
    pub cgroup: Option<PathBuf>,
    /// Serve Docker's remote network driver protocol as NAME
    /// (/run/docker/plugins/NAME.sock): `docker network create -d NAME`.
    #[arg(long, global = true, value_name = "NAME")]
    pub docker_plugin: Option<String>,
    /// dockerd's API socket, asked for container names [default: /var/run/docker.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub docker_host: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// Also serve Prometheus /metrics on this TCP address (e.g. 127.0.0.1:9477).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Run inside this network namespace (a name under /run/netns or a path)
    /// instead of the one netpathd was started in.
    #[arg(long, global = true)]
    pub netns: Option<String>,
}

impl AgentFlags {
    /// The config file (or the defaults), with the flags applied over it.
    pub fn config(&self) -> Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.instance.clone() {
            cfg.instance = v;
        }
        if let Some(v) = self.uplink.clone() {
            cfg.uplink.name = Some(v);
        }
        if let Some(v) = self.guarded_ports.clone() {
            cfg.uplink.guarded_ports = v;
        }
        if let Some(v) = self.denied_sources.clone() {
            cfg.uplink.denied_sources = v;
        }
        if let Some(v) = self.bridge.clone() {
            cfg.bridge = v;
        }
        if let Some(v) = self.bridge_ports {
            cfg.bridge_ports = v;
        }
        if let Some(v) = self.subnet {
            cfg.subnet = v;
        }
        if let Some(v) = self.gateway {
            cfg.gateway = Some(v);
        }
        if let Some(v) = self.subnet6 {
            cfg.subnet6 = v;
        }
        if let Some(v) = self.gateway6 {
            cfg.gateway6 = Some(v);
        }
        if let Some(v) = self.state_dir.clone() {
            cfg.state_dir = Some(v);
        }
        if let Some(v) = self.socket.clone() {
            cfg.socket = Some(v);
        }
        if let Some(v) = self.pin_dir.clone() {
            cfg.pin_dir = Some(v);
        }
        if self.routed {
            cfg.routed = true;
        }
        if self.no_masquerade {
            cfg.masquerade = false;
        }
        if self.no_fast_path {
            cfg.fast_path = false;
        }
        if self.no_icc {
            cfg.icc = false;
        }
        if let Some(v) = self.uplink_xdp {
            cfg.uplink_xdp = v;
        }
        if let Some(v) = self.masquerade_ports.clone() {
            cfg.masquerade_ports = v;
        }
        if let Some(v) = self.mtu {
            cfg.mtu = v;
        }
        if let Some(v) = self.cgroup.clone() {
            cfg.cgroup = Some(v);
        }
        if let Some(v) = self.docker_plugin.clone() {
            cfg.docker_plugin = Some(v);
        }
        if let Some(v) = self.docker_host.clone() {
            cfg.docker_host = Some(v);
        }
        if let Some(v) = self.log_format {
            cfg.log_format = v;
        }
        if let Some(v) = self.metrics_address {
            cfg.metrics_address = Some(v);
        }
        Ok(cfg)
    }
}
