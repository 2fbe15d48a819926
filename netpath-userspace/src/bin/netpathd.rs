//! netpathd: the netpath agent. See `netpathd --help`.

use std::{fmt::Write as _, sync::Arc};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use netpath_userspace::{
    agent::Agent,
    api,
    config::{LogFormat, ResolvedConfig},
    datapath::Prepared,
    docker,
    flags::AgentFlags,
    netns::Netns,
    uninstall,
};

#[derive(Parser, Debug)]
#[command(
    name = "netpathd",
    version,
    about = "netpath agent: bridge, veths and the eBPF datapath of one container host"
)]
struct Cli {
    #[command(flatten)]
    flags: AgentFlags,
    /// Check the configuration (the file with the flags over it), print it
    /// resolved and exit; touches nothing on the host.
    #[arg(long)]
    check_config: bool,
    /// Rebuild a corrupt or truncated state file from the kernel's pinned
    /// maps and the host's interfaces (the damaged file is kept), then exit.
    /// The instance's agent must be stopped.
    #[arg(long)]
    recover: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove everything the instance created (containers' interfaces,
    /// bridges, programs, maps, state, socket) and put back the sysctls and
    /// port reservations it changed. The instance's agent must be stopped.
    Uninstall,
    /// Load and verify this build's programs against the maps the running
    /// agent (of an earlier build) pinned, and pin them where this build's
    /// start adopts them: run it after installing a new netpathd and before
    /// restarting the agent, so that the restart verifies nothing. Touches
    /// nothing the running agent uses.
    Prepare,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg = resolve(&cli.flags)?;
    if cli.check_config {
        print!("{}", describe(&cfg));
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match cfg.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().flatten_event(true).with_env_filter(filter).init(),
    }
    // glibc gives each thread that allocates an arena of its own and keeps
    // what is freed in it: the periodic netlink dumps on the runtime's
    // threads held RSS at 87 MiB after 2000 attaches, 51 MiB with two
    // arenas (control bench). Before any other thread exists.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // setns applies to the calling thread: do it before any other exists.
    if let Some(ns) = &cli.flags.netns {
        Netns::open(ns)?.enter()?;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    if cli.recover {
        let r = rt.block_on(netpath_userspace::recover::recover(&cfg))?;
        for kept in &r.kept {
            println!("kept {kept}");
        }
        println!(
            "recovered {} containers, {} mappings, {} policy rules, {} recently released addresses into {}",
            r.containers,
            r.mappings,
            r.rules,
            r.released,
            cfg.state_dir.join("state.json").display()
        );
        if !r.unnamed.is_empty() {
            println!("named after their veth (no identity on the interface): {}", r.unnamed.join(", "));
        }
        return Ok(());
    }
    if let Some(Command::Prepare) = cli.command {
        match netpath_userspace::datapath::prepare(&cfg.pin_dir, cfg.conntrack.max_entries)? {
            Prepared::Already { dir } => {
                println!("already prepared: this build's programs are pinned against these maps in {}", dir.display())
            }
            Prepared::Loaded { dir, seconds } => println!(
                "prepared: programs loaded and verified in {seconds:.1} s, pinned in {}; a restart of the agent with \
                 this build adopts them",
                dir.display()
            ),
        }
        return Ok(());
    }
    if let Some(Command::Uninstall) = cli.command {
        let report = rt.block_on(uninstall::uninstall(&cfg))?;
        for line in &report {
            println!("{line}");
        }
        println!("instance {} uninstalled", cfg.instance);
        return Ok(());
    }
    rt.block_on(async move {
        let metrics_listener = match cfg.metrics_address {
            Some(addr) => Some(api::bind_metrics(addr).await?),
            None => None,
        };
        let agent = Arc::new(Agent::start(cfg.clone()).await?);
        let flags = cli.flags.clone();
        agent.set_config_source(Box::new(move || resolve(&flags)));
        agent.spawn_background().await?;
        tokio::spawn(reload_on_sighup(agent.clone()));
        // One shutdown signal for every server the agent runs.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(async move {
            shutdown_signal().await;
            notify_service_manager(sd_notify::NotifyState::Stopping);
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
        let metrics = metrics_listener
            .map(|l| tokio::spawn(api::serve_metrics(agent.clone(), l, stopped(stop_rx.clone()))));
        let api_listener = api::bind(&cfg.socket).await?;
        tracing::info!(instance = %cfg.instance, bridge = %cfg.bridge, subnet = ?cfg.net4.map(|n| n.subnet), subnet6 = ?cfg.net6.map(|n| n.subnet), "netpathd ready");
        // Under systemd (Type=notify) the unit is started only now, with
        // every socket bound: units ordered after it (the container
        // runtimes) and `systemctl start`/`restart` wait for an agent that
        // answers.
        notify_service_manager(sd_notify::NotifyState::Ready);
        let served = api::serve(agent, api_listener, &cfg.socket, stopped(stop_rx)).await;
        if let Some(docker) = docker {
            docker.await.context("the Docker plugin server")??;
        }
        if let Some(metrics) = metrics {
            metrics.await.context("the metrics server")??;
        }
        served?;
        tracing::info!("netpathd stopping; the datapath stays attached");
        Ok(())
    })
}

/// Tells the service manager (`$NOTIFY_SOCKET`, set by systemd for a
/// `Type=notify` unit) of a state change; nothing without one. A failure
/// is logged: the unit's start then times out, named in systemd's log.
fn notify_service_manager(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("telling the service manager (NOTIFY_SOCKET) that netpathd is ready or stopping: {e}");
    }
}

/// SIGHUP re-reads the config file; a refused reload is logged and
/// changes nothing.
async fn reload_on_sighup(agent: Arc<Agent>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => return tracing::warn!("SIGHUP will not reload the config: {e}"),
    };
    while hup.recv().await.is_some() {
        match agent.reload_config().await {
            Ok(r) if r.changed.is_empty() => tracing::info!("SIGHUP: configuration unchanged"),
            Ok(_) => {}
            Err(e) => tracing::error!("SIGHUP: {e}"),
        }
    }
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

/// The configuration the flags and their file make, checked.
fn resolve(flags: &AgentFlags) -> Result<ResolvedConfig> {
    let what = match &flags.config {
        Some(path) => format!("invalid configuration (file {} and flags)", path.display()),
        None => "invalid configuration (flags)".to_string(),
    };
    flags.config()?.resolve().context(what)
}

/// `--check-config`'s answer: the settings an operator checks first.
fn describe(cfg: &ResolvedConfig) -> String {
    let mut out = String::from("configuration OK\n");
    let none = || "none".to_string();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "  {key:<16} {value}");
    };
    line("instance", cfg.instance.clone());
    line("uplink", cfg.uplink.clone().unwrap_or_else(none));
    line("bridge", format!("{} ({} ports each)", cfg.bridge, cfg.bridge_ports));
    line("subnet", cfg.net4.map(|n| format!("{} gateway {}", n.subnet, n.gateway)).unwrap_or_else(none));
    let auto = if cfg.subnet6_auto { " (auto)" } else { "" };
    line("subnet6", cfg.net6.map(|n| format!("{} gateway {}{auto}", n.subnet, n.gateway)).unwrap_or_else(none));
    let (lo, hi) = cfg.masquerade_ports;
    line("masquerade", if cfg.masquerade { format!("on, ports {lo}-{hi}") } else { "off".into() });
    line("state_dir", cfg.state_dir.display().to_string());
    line("socket", cfg.socket.display().to_string());
    line("pin_dir", cfg.pin_dir.display().to_string());
    line("metrics_address", cfg.metrics_address.map(|a| a.to_string()).unwrap_or_else(none));
    out
}
