//! netpathd: the netpath agent. See `netpathd --help`.

use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use clap::Parser;
use netpath_userspace::{agent::Agent, api, config::Config, docker, netns::Netns};

#[derive(Parser, Debug)]
#[command(
    name = "netpathd",
    version,
    about = "netpath agent: bridge, veths and the eBPF datapath of one container host"
)]
struct Args {
    /// TOML configuration file (flags override it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Instance name: pins under /sys/fs/bpf/netpath/<instance>, default state and socket paths.
    #[arg(long)]
    instance: Option<String>,
    /// Uplink interface (XDP attaches there).
    #[arg(long)]
    uplink: Option<String>,
    /// Guarded port ranges of the uplink, PORT[-END][/tcp|/udp], comma-separated
    /// (replace the file's uplink.guarded_ports): the host's addresses answer
    /// them from the uplink only through published ports.
    #[arg(long, value_delimiter = ',', value_name = "RANGES")]
    guarded_ports: Option<Vec<String>>,
    /// Source prefixes the uplink never accepts, comma-separated (replace the
    /// file's uplink.denied_sources).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    denied_sources: Option<Vec<String>>,
    /// Bridge name [default: np0].
    #[arg(long)]
    bridge: Option<String>,
    /// Containers per bridge before an overflow bridge (<bridge>-1, ...) opens [default: 1023].
    #[arg(long, value_name = "N")]
    bridge_ports: Option<u32>,
    /// IPv4 container subnet, or `none` for an IPv6-only instance
    /// [default: 10.77.0.0/16].
    #[arg(long)]
    subnet: Option<netpath_userspace::config::Subnet4>,
    /// Bridge address [default: first host of the subnet].
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// IPv6 container subnet: a ULA or global /64 to /120, `none` (IPv4
    /// only) or `auto` [default: auto, a ULA /64 derived from the machine id
    /// and the instance name].
    #[arg(long, value_name = "PREFIX|auto|none")]
    subnet6: Option<netpath_userspace::config::Subnet6>,
    /// The bridge's IPv6 address [default: the IPv6 subnet's ::1].
    #[arg(long)]
    gateway6: Option<std::net::Ipv6Addr>,
    /// State directory [default: /var/lib/netpath/<instance>].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// API socket [default: /run/netpath/<instance>/api.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// bpffs directory for pins [default: /sys/fs/bpf/netpath/<instance>].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Let the uplink reach container addresses directly (routed mode).
    #[arg(long)]
    routed: bool,
    /// XDP on the uplink [default: auto, i.e. unless the uplink is a veth].
    #[arg(long, value_enum)]
    uplink_xdp: Option<netpath_userspace::config::UplinkXdp>,
    /// Hand every packet to the stack (bridge, routing) instead of
    /// redirecting it to the interface it leaves by.
    #[arg(long)]
    no_fast_path: bool,
    /// Deny direct container-to-container traffic (Docker's --icc=false).
    #[arg(long)]
    no_icc: bool,
    /// Do not masquerade container traffic leaving the uplink.
    #[arg(long)]
    no_masquerade: bool,
    /// Source ports the masquerade allocates, MIN-MAX [default: 1024-32767].
    #[arg(long)]
    masquerade_ports: Option<String>,
    /// MTU of the bridge and container interfaces [default: the uplink's].
    #[arg(long)]
    mtu: Option<u32>,
    /// cgroup v2 directory for the host-process socket hooks [default: the cgroup v2 root].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Serve Docker's remote network driver protocol as NAME
    /// (/run/docker/plugins/NAME.sock): `docker network create -d NAME`.
    #[arg(long, value_name = "NAME")]
    docker_plugin: Option<String>,
    /// dockerd's API socket, asked for container names [default: /var/run/docker.sock].
    #[arg(long, value_name = "PATH")]
    docker_host: Option<PathBuf>,
    /// Run inside this network namespace (a name under /run/netns or a path)
    /// instead of the one netpathd was started in.
    #[arg(long)]
    netns: Option<String>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.instance {
        cfg.instance = v;
    }
    if let Some(v) = args.uplink {
        cfg.uplink.name = Some(v);
    }
    if let Some(v) = args.guarded_ports {
        cfg.uplink.guarded_ports = v;
    }
    if let Some(v) = args.denied_sources {
        cfg.uplink.denied_sources = v;
    }
    if let Some(v) = args.bridge {
        cfg.bridge = v;
    }
    if let Some(v) = args.bridge_ports {
        cfg.bridge_ports = v;
    }
    if let Some(v) = args.subnet {
        cfg.subnet = v;
    }
    if let Some(v) = args.gateway {
        cfg.gateway = Some(v);
    }
    if let Some(v) = args.subnet6 {
        cfg.subnet6 = v;
    }
    if let Some(v) = args.gateway6 {
        cfg.gateway6 = Some(v);
    }
    if let Some(v) = args.state_dir {
        cfg.state_dir = Some(v);
    }
    if let Some(v) = args.socket {
        cfg.socket = Some(v);
    }
    if let Some(v) = args.pin_dir {
        cfg.pin_dir = Some(v);
    }
    if args.routed {
        cfg.routed = true;
    }
    if args.no_masquerade {
        cfg.masquerade = false;
    }
    if args.no_fast_path {
        cfg.fast_path = false;
    }
    if args.no_icc {
        cfg.icc = false;
    }
    if let Some(v) = args.uplink_xdp {
        cfg.uplink_xdp = v;
    }
    if let Some(v) = args.masquerade_ports {
        cfg.masquerade_ports = v;
    }
    if let Some(v) = args.mtu {
        cfg.mtu = v;
    }
    if let Some(v) = args.cgroup {
        cfg.cgroup = Some(v);
    }
    if let Some(v) = args.docker_plugin {
        cfg.docker_plugin = Some(v);
    }
    if let Some(v) = args.docker_host {
        cfg.docker_host = Some(v);
    }
    let cfg = cfg.resolve().context("invalid configuration")?;
    // setns applies to the calling thread: do it before any other exists.
    if let Some(ns) = &args.netns {
        Netns::open(ns)?.enter()?;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let agent = Arc::new(Agent::start(cfg.clone()).await?);
        agent.spawn_background().await?;
        tracing::info!(instance = %cfg.instance, bridge = %cfg.bridge, subnet = ?cfg.net4.map(|n| n.subnet), subnet6 = ?cfg.net6.map(|n| n.subnet), "netpathd ready");
        // One shutdown signal for every server the agent runs.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let docker = match &cfg.docker_plugin {
            Some(name) => {
                let plugin =
                    docker::DockerPlugin::bind(agent.clone(), name, &cfg.state_dir, Some(&cfg.docker_host)).await?;
                Some(tokio::spawn(plugin.serve(stopped(stop_rx.clone()))))
            }
            None => None,
        };
        let served = api::serve(agent, &cfg.socket, stopped(stop_rx)).await;
        if let Some(docker) = docker {
            docker.await.context("the Docker plugin server")??;
        }
        served?;
        tracing::info!("netpathd stopping; the datapath stays attached");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
