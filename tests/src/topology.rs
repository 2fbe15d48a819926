//! Network-namespace topologies with a running agent.
//!
//! ```text
//!   world ns                host ns (the sandbox "machine")          container ns (xN)
//!   eth0 198.18.0.2/24 ---- up0 198.18.0.1/24   np0 10.x.y.1/24 ---- eth0 10.x.y.N
//!                           netpathd --netns <host>
//! ```
//!
//! Every name carries a per-run prefix (`NETPATH_TEST_PREFIX`, set by
//! `cargo xtask test`, plus a per-topology counter); [`Topology`]'s Drop
//! stops the agent it started (by PID), deletes its namespaces and removes
//! its pins, its instance lock (if the agent could not) and run directory,
//! also when the test panics.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use netpath_userspace::netns::Netns;
use serde::de::DeserializeOwned;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const HOST_UPLINK: &str = "up0";
pub const HOST_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The uplink pair's IPv6 addresses, once [`Topology::add_ipv6_uplink`]
/// gave them (a documentation prefix, inside the run's namespaces only).
pub const HOST_UPLINK_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
pub const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Prefix shared by everything this test process creates.
pub fn run_prefix() -> String {
    std::env::var("NETPATH_TEST_PREFIX").unwrap_or_else(|_| format!("npt{:x}", std::process::id()))
}

/// Directory holding netpathd and netpathctl: `NETPATH_BIN_DIR`, or the
/// target directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("NETPATH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary>, or target/<profile>/<binary>
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("binary has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir }.to_path_buf()
}

/// Runs a command, returning its output; fails on a non-zero exit.
pub fn cmd(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// `curl` from namespace `ns` until it answers (a server in a container
/// needs a moment to start), at most `timeout`; returns the body.
pub fn curl(ns: &str, url: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new("ip").args(["netns", "exec", ns, "curl", "-s", "--max-time", "2", url]).output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            bail!("curl {url} from {ns} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Topology {
    pub prefix: String,
    pub host: String,
    pub world: String,
    pub subnet: String,
    run_dir: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    namespaces: Vec<String>,
    agent: Option<Child>,
    extra_agent_args: Vec<String>,
    /// The netpathd [`Topology::start_agent`] runs (None: this build's).
    agent_binary: Option<PathBuf>,
    /// Run the agent in a mount namespace of its own (a slave of the
    /// machine's: mounts propagate in, its own never out), so that a test
    /// may unmount bpffs under it without touching the machine's.
    agent_own_mounts: bool,
    /// Environment variables the agent is started with, beside the test's.
    agent_env: Vec<(String, String)>,
}

impl Topology {
    /// Host and world namespaces joined by the uplink pair, plus `containers`
    /// empty container namespaces named `<prefix>-c1`...; no agent yet.
    pub fn new(containers: usize) -> Result<Topology> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{}-{n}", run_prefix());
        let run_dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&run_dir)?;
        let mut topo = Topology {
            host: format!("{prefix}-host"),
            world: format!("{prefix}-world"),
            // A distinct subnet per topology makes mix-ups visible.
            subnet: format!("10.{}.{}.0/24", 200 + (std::process::id() % 50), n % 250),
            pin_dir: PathBuf::from(netpath_userspace::config::BPFFS_ROOT).join(&prefix),
            socket: run_dir.join("api.sock"),
            prefix,
            run_dir,
            namespaces: vec![],
            agent: None,
            extra_agent_args: vec![],
            agent_binary: None,
            agent_own_mounts: false,
            agent_env: vec![],
        };
        topo.add_netns(&topo.host.clone())?;
        topo.add_netns(&topo.world.clone())?;
        for i in 1..=containers {
            topo.add_netns(&topo.container_ns(i))?;
        }
        let (host, world) = (topo.host.clone(), topo.world.clone());
        // The uplink pair: created in the world, one end moved to the host.
        topo.exec(&world, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", HOST_UPLINK])?;
        topo.exec(&world, &["ip", "link", "set", HOST_UPLINK, "netns", &host])?;
        topo.exec(&world, &["ip", "addr", "add", &format!("{WORLD_IP}/24"), "dev", "eth0"])?;
        topo.exec(&world, &["ip", "link", "set", "eth0", "up"])?;
        topo.exec(&world, &["ip", "link", "set", "lo", "up"])?;
        topo.exec(&host, &["ip", "addr", "add", &format!("{HOST_UPLINK_IP}/24"), "dev", HOST_UPLINK])?;
        topo.exec(&host, &["ip", "link", "set", HOST_UPLINK, "up"])?;
        topo.exec(&host, &["ip", "link", "set", "lo", "up"])?;
        Ok(topo)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        cmd("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        Ok(())
    }

    /// Name of container namespace `i` (1-based).
    pub fn container_ns(&self, i: usize) -> String {
        format!("{}-c{i}", self.prefix)
    }

    /// Creates one more empty namespace owned by this topology.
    pub fn new_netns(&mut self, suffix: &str) -> Result<String> {
        let name = format!("{}-{suffix}", self.prefix);
        self.add_netns(&name)?;
        Ok(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// Where the agent's API socket goes from its next start on (default:
    /// `api.sock` in the run directory).
    pub fn set_socket(&mut self, path: PathBuf) {
        self.socket = path;
    }

    /// This topology's scratch directory (state, socket, logs); removed on drop.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn instance(&self) -> &str {
        &self.prefix
    }

    pub fn agent_log(&self) -> PathBuf {
        self.run_dir.join("netpathd.log")
    }

    /// IPv6 on the uplink pair: [`HOST_UPLINK_IP6`] and [`WORLD_IP6`], a
    /// /64 without DAD. Before the agent starts: the uplink's address is the
    /// IPv6 masquerade's.
    pub fn add_ipv6_uplink(&self) -> Result<()> {
        self.exec(
            &self.host,
            &["ip", "-6", "addr", "add", &format!("{HOST_UPLINK_IP6}/64"), "dev", HOST_UPLINK, "nodad"],
        )?;
        self.exec(&self.world, &["ip", "-6", "addr", "add", &format!("{WORLD_IP6}/64"), "dev", "eth0", "nodad"])?;
        Ok(())
    }

    /// Extra flags for every agent start (e.g. `--subnet`).
    pub fn agent_args(&mut self, args: &[&str]) {
        self.extra_agent_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// The flags every netpathd of this topology runs with: the host
    /// namespace, the instance, its uplink, subnet, state and socket, then
    /// [`Topology::agent_args`].
    pub fn agent_command_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--netns".into(),
            self.host.clone(),
            "--instance".into(),
            self.prefix.clone(),
            "--uplink".into(),
            HOST_UPLINK.into(),
            "--subnet".into(),
            self.subnet.clone(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
        ];
        args.extend(self.extra_agent_args.iter().cloned());
        args
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.run_dir.join("state")
    }

    /// netpathd run to completion with this topology's flags and `extra`
    /// (a subcommand such as `uninstall`, or `--check-config`).
    pub fn netpathd(&self, extra: &[&str]) -> Result<Output> {
        Ok(Command::new(bin_dir().join("netpathd")).args(self.agent_command_args()).args(extra).output()?)
    }

    /// Sends `signal` to the running agent (by PID).
    pub fn signal_agent(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let child = self.agent.as_ref().context("no agent running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// The netpathd binary the next [`Topology::start_agent`] runs, e.g.
    /// one of an earlier netpath (None: this build's).
    pub fn set_agent_binary(&mut self, binary: Option<PathBuf>) {
        self.agent_binary = binary;
    }

    /// An environment variable for the next [`Topology::start_agent`]
    /// (`NOTIFY_SOCKET`, as systemd sets it).
    pub fn set_agent_env(&mut self, key: &str, value: &str) {
        self.agent_env.push((key.to_string(), value.to_string()));
    }

    /// See `agent_own_mounts`: for the next [`Topology::start_agent`].
    pub fn set_agent_own_mounts(&mut self, own: bool) {
        self.agent_own_mounts = own;
    }

    /// The running agent's PID.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Starts netpathd inside the host namespace and waits for its API.
    pub fn start_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            bail!("agent already running");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.agent_log())?;
        let args = self.agent_command_args();
        let binary = self.agent_binary.clone().unwrap_or_else(|| bin_dir().join("netpathd"));
        let mut command = if self.agent_own_mounts {
            // unshare execs the agent: the child's PID is the agent's.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "slave", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        let child = crate::daemon_command(&mut command)
            .args(&args)
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting netpathd (build it first: cargo build)")?;
        self.agent = Some(child);
        // Loading the programs is the verifier's work, which a loaded
        // machine (tests in parallel) stretches to tens of seconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.socket().exists() && self.ctl(&["status"]).is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if let Some(status) = self.agent.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.agent = None;
                bail!(
                    "netpathd exited with {status}: {}",
                    std::fs::read_to_string(self.agent_log()).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("netpathd did not come up: {}", std::fs::read_to_string(self.agent_log()).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGTERM (by PID) and waits for it.
    pub fn stop_agent(&mut self) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("netpathd did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kills the agent with SIGKILL (by PID), as a crash would, and reaps
    /// it: it leaves its lock files and socket behind.
    pub fn kill_agent(&mut self) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)?;
            child.wait()?;
        }
        Ok(())
    }

    /// Is the agent this topology started still running (not exited)?
    pub fn agent_alive(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How the agent ended, if it has (None while it runs or if none started).
    pub fn agent_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.agent.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// netpathctl against this topology's agent.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new(bin_dir().join("netpathctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .context("running netpathctl")
    }

    /// netpathctl that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            bail!("netpathctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// netpathctl that must fail; returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if out.status.success() {
            bail!(
                "netpathctl {} succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `netpathctl -o json monitor ARGS...`, its lines on a channel (the
    /// monitor is subscribed when this returns).
    pub fn monitor(&self, args: &[&str]) -> Result<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(bin_dir().join("netpathctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(["-o", "json", "monitor"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting netpathctl monitor")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().context("the monitor's stdout")?;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        Ok((child, rx))
    }

    pub fn ctl_json<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let text = self.ctl_ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("parsing netpathctl output: {text}"))
    }

    /// What the uplink's programs dropped for `reason`, as `status` shows it.
    pub fn uplink_drops(&self, reason: &str) -> Result<u64> {
        let st: netpath_userspace::model::Status = self.ctl_json(&["status"])?;
        Ok(st.uplink_stats.and_then(|s| s.drops.get(reason).copied()).unwrap_or(0))
    }

    /// Packets the fast path redirected so far, as `status` shows them:
    /// into containers (judged on the way or on a verdict found), and out
    /// of host interfaces (next hop known or being resolved).
    pub fn redirects(&self) -> Result<(u64, u64)> {
        let st: netpath_userspace::model::Status = self.ctl_json(&["status"])?;
        Ok(st.fast_path.redirected_in_and_out())
    }

    /// The agent's `/metrics` on its API socket, as text.
    pub fn metrics(&self) -> Result<String> {
        let socket = self.socket();
        let socket = socket.to_str().context("the API socket's path is not UTF-8")?;
        let out = cmd("curl", &["-sf", "--unix-socket", socket, "http://localhost/metrics"])?;
        String::from_utf8(out.stdout).context("/metrics is not UTF-8")
    }

    /// `status` once the fill levels of the maps the datapath fills were
    /// counted after this call began: `status` never walks a map, the agent's
    /// conntrack GC counts them every `gc_interval` (5 s by default).
    pub fn status_counted(&self) -> Result<netpath_userspace::model::Status> {
        let asked = Instant::now();
        let deadline = asked + Duration::from_secs(20);
        loop {
            let st: netpath_userspace::model::Status = self.ctl_json(&["status"])?;
            let since = asked.elapsed().as_millis() as u64;
            if st.maps.iter().all(|m| m.counted_ms_ago.is_none_or(|ms| ms < since)) {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("no GC count of the maps within 20 s: {:?}", st.maps);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Attaches container namespace `i` as `c<i>`.
    pub fn add_container(&self, i: usize) -> Result<netpath_userspace::model::Container> {
        self.ctl_json(&["container", "add", &format!("c{i}"), "--netns", &self.container_ns(i)])
    }

    /// Runs a command inside namespace `ns` (`ip netns exec`), which must succeed.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        cmd("ip", &all)
    }

    /// Switches the transmit checksum offload of `dev` in `ns` (ethtool's
    /// `tx`): on, a local socket's packets carry only the pseudo-header's
    /// sum (CHECKSUM_PARTIAL) for the device to finish; off, the kernel
    /// finishes them before `dev` sends them.
    fn tx_checksum_offload(&self, ns: &str, dev: &str, on: bool) -> Result<()> {
        self.exec(ns, &["ethtool", "-K", dev, "tx", if on { "on" } else { "off" }]).map(|_| ())
    }

    /// Runs `exchange` (given the state's name) in both states a
    /// translated packet's L4 checksum can be in, between the world and
    /// the container on `veth` in `container_ns`: complete (transmit
    /// offload off at both ends, whose sockets then compute their
    /// checksums), then partial (offload on at both ends; off on the
    /// host's interfaces towards each, `veth` and the uplink, which finish
    /// the partial sums in software, so that the receivers verify them).
    /// On the fast path (`fast_path`: the agent runs with it), what is
    /// redirected into the container skips those interfaces' transmit and
    /// reaches it still partial, which its stack trusts, as it would a
    /// NIC's verified receive; what is redirected out of the uplink is
    /// finished there. Each exchange must have been redirected both ways
    /// on the fast path, and not at all off it.
    pub fn in_both_checksum_states(
        &self,
        container_ns: &str,
        veth: &str,
        fast_path: bool,
        exchange: impl Fn(&str),
    ) -> Result<()> {
        let redirected = |state: &str| -> Result<()> {
            let before = self.redirects()?;
            exchange(state);
            let after = self.redirects()?;
            let both_ways = (after.0 > before.0, after.1 > before.1);
            ensure!(
                both_ways == (fast_path, fast_path),
                "{state}: redirected into the container, out of the uplink: {both_ways:?} (fast path {fast_path})"
            );
            Ok(())
        };
        for (ns, dev) in [(self.world.as_str(), "eth0"), (container_ns, "eth0")] {
            self.tx_checksum_offload(ns, dev, false)?;
        }
        redirected("checksums complete")?;
        for (ns, dev) in [(self.world.as_str(), "eth0"), (container_ns, "eth0")] {
            self.tx_checksum_offload(ns, dev, true)?;
        }
        for dev in [veth, HOST_UPLINK] {
            self.tx_checksum_offload(&self.host, dev, false)?;
        }
        redirected("checksums partial")
    }

    /// Runs a command inside `ns` and returns whether it succeeded.
    pub fn try_exec(&self, ns: &str, args: &[&str]) -> Result<bool> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        Ok(Command::new("ip").args(&all).output()?.status.success())
    }

    /// `ping -c count` from `ns`, one second for each answer; true if any
    /// echo was answered (ping's exit status without a deadline).
    pub fn ping(&self, ns: &str, dst: &str, count: u32) -> Result<bool> {
        self.try_exec(ns, &["ping", "-q", "-c", &count.to_string(), "-i", "0.05", "-W", "1", dst])
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it opens stay there).
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        Netns::open(ns)?.run(f)
    }

    /// Asserts the host namespace has no iptables or nftables rules at all.
    pub fn assert_no_netfilter_rules(&self) -> Result<()> {
        let save = self.exec(&self.host, &["iptables-save"])?;
        let rules: Vec<String> = String::from_utf8_lossy(&save.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if !rules.is_empty() {
            bail!("iptables-save in the host namespace is not empty: {rules:?}");
        }
        let nft = self.exec(&self.host, &["nft", "list", "ruleset"])?;
        if !String::from_utf8_lossy(&nft.stdout).trim().is_empty() {
            bail!("nft ruleset in the host namespace is not empty: {}", String::from_utf8_lossy(&nft.stdout));
        }
        Ok(())
    }

    /// Interface names in namespace `ns`.
    pub fn links(&self, ns: &str) -> Result<Vec<String>> {
        let out = self.exec(ns, &["ip", "-o", "link", "show"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // An agent that was killed leaves its instance lock behind.
        let lock = netpath_userspace::config::instance_lock(&self.prefix);
        let _ = std::fs::remove_file(&lock);
        let _ = std::fs::remove_file(netpath_userspace::config::pin_dir_lock(&self.pin_dir));
        // ...and its Docker plugin socket (and the directories for it, when
        // empty: the agent made them).
        if let Some(name) = self.extra_agent_args.iter().skip_while(|a| *a != "--docker-plugin").nth(1) {
            let _ = std::fs::remove_file(netpath_userspace::docker::socket_path(name));
            let plugins = Path::new(netpath_userspace::docker::PLUGIN_DIR);
            if std::fs::remove_dir(plugins).is_ok() {
                if let Some(parent) = plugins.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
        // The agent made the shared parents too: they go when the last run's
        // pins and locks are gone (rmdir refuses a directory that still
        // holds any).
        for parent in [self.pin_dir.parent(), lock.parent()].into_iter().flatten() {
            let _ = std::fs::remove_dir(parent);
        }
        if std::env::var_os("NETPATH_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// Everything a container leaves in the agent and the host namespace:
/// equal before a runtime attaches it and after it is removed.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    pub host_links: Vec<String>,
    pub containers: Vec<String>,
    pub mappings: Vec<String>,
    /// Map fill levels, except HOST_ADDRS4 (follows the host's addresses).
    pub maps: Vec<(String, u64)>,
    pub link_pins: Vec<String>,
    pub flows: usize,
}

impl Footprint {
    /// The footprint without what traffic leaves (tracked flows, which
    /// come and go with the GC's timing): what attachments hold.
    pub fn attachments(mut self) -> Footprint {
        self.maps.retain(|(name, _)| name != "CT4");
        self.flows = 0;
        self
    }
}

pub fn footprint(t: &Topology) -> Result<Footprint> {
    let status = t.status_counted()?;
    let mut link_pins: Vec<String> = std::fs::read_dir(t.pin_dir().join("links"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    link_pins.sort();
    let mappings: Vec<netpath_userspace::model::Mapping> = t.ctl_json(&["maps"])?;
    let flows: Vec<netpath_userspace::model::Flow> = t.ctl_json(&["conntrack"])?;
    let mut host_links = t.links(&t.host)?;
    host_links.sort();
    Ok(Footprint {
        host_links,
        containers: status.containers.iter().map(|c| c.container.name.clone()).collect(),
        mappings: mappings.iter().map(|m| m.spec()).collect(),
        maps: status.maps.iter().filter(|m| m.name != "HOST_ADDRS4").map(|m| (m.name.clone(), m.entries)).collect(),
        link_pins,
        flows: flows.len(),
    })
}
