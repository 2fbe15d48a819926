//! dockerd 20.10 (with its containerd) inside a topology's sandbox host,
//! with netpath as its network driver.
//!
//! Everything is the run's own: data root, exec root, sockets, the CLI's
//! config directory, an image imported from a busybox rootfs (no registry
//! is reachable). dockerd runs with `--iptables=false --ip6tables=false
//! --bridge=none` (it never touches a ruleset) in the host namespace through
//! `nsenter --net` (not `ip netns exec`: its private mount namespace would
//! hide the sandbox netns files from the agent). [`Dockerd`]'s Drop removes
//! every container and network it created by ID, stops both daemons by PID
//! and removes its directories, also when a test panics; drop it before the
//! topology, so that the agent still answers the driver calls.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::topology::{cmd, Topology};

/// The image every test container runs (imported, never pulled).
pub const IMAGE: &str = "netpath-test/busybox:latest";

pub struct Dockerd {
    dir: PathBuf,
    host_netns: String,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    /// Extra dockerd flags (e.g. `--live-restore`), kept for [`Dockerd::restart`].
    extra_args: Vec<String>,
    /// Containers and networks created, for the cleanup.
    containers: Vec<String>,
    networks: Vec<String>,
    /// Machine-wide directories containerd creates for its shims' sockets
    /// that did not exist before: removed on drop when empty.
    created_dirs: Vec<PathBuf>,
}

/// Where containerd puts shim sockets whatever its --state says.
const CONTAINERD_SHIM_DIR: &str = "/run/containerd/s";

impl Dockerd {
    /// Starts containerd and dockerd in `t`'s host namespace and imports
    /// [`IMAGE`].
    pub fn start(t: &Topology) -> Result<Dockerd> {
        Self::start_with(t, &[])
    }

    /// [`Dockerd::start`] with extra dockerd flags (also used on restarts).
    pub fn start_with(t: &Topology, extra_args: &[&str]) -> Result<Dockerd> {
        for tool in ["dockerd", "containerd", "runc", "nsenter", "chroot"] {
            if Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
                bail!("{tool} is not installed: run `cargo xtask setup` (it installs docker.io and busybox-static)");
            }
        }
        let dir = t.run_dir().join("docker");
        for sub in ["root", "state", "cli"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut d = Dockerd {
            host_netns: t.host.clone(),
            dir,
            containerd: None,
            dockerd: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            containers: vec![],
            networks: vec![],
            created_dirs: Path::new(CONTAINERD_SHIM_DIR)
                .ancestors()
                .take_while(|d| !d.exists())
                .map(Path::to_path_buf)
                .collect(),
        };
        let (root, state) = (d.dir.join("root"), d.dir.join("state"));
        let containerd_sock = state.join("containerd.sock");
        d.containerd = Some(d.spawn(
            "containerd",
            &[
                "--root",
                &root.join("containerd").display().to_string(),
                "--state",
                &state.join("containerd").display().to_string(),
                "--address",
                &containerd_sock.display().to_string(),
            ],
        )?);
        d.wait_for(&containerd_sock, "containerd")?;
        d.start_dockerd()?;
        let rootfs = d.dir.join("rootfs");
        crate::busybox::rootfs(&rootfs, "hello from docker")?;
        let tar = d.dir.join("rootfs.tar");
        cmd("tar", &["-C", &rootfs.display().to_string(), "-cf", &tar.display().to_string(), "."])?;
        d.docker_ok(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(d)
    }

    /// Spawns dockerd on this run's directories and waits until it answers.
    fn start_dockerd(&mut self) -> Result<()> {
        let (root, state) = (self.dir.join("root"), self.dir.join("state"));
        let mut args: Vec<String> = vec![
            format!("--containerd={}", state.join("containerd.sock").display()),
            "--data-root".into(),
            root.join("docker").display().to_string(),
            "--exec-root".into(),
            state.join("docker").display().to_string(),
            "--pidfile".into(),
            state.join("docker.pid").display().to_string(),
            "-H".into(),
            format!("unix://{}", self.socket().display()),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--bridge=none".into(),
            "--storage-driver=vfs".into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.dockerd = Some(self.spawn("dockerd", &args)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.docker(&["info"])?.status.success() {
            if let Some(status) = self.dockerd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.dockerd = None;
                bail!("dockerd exited with {status}; its log: {}", self.log("dockerd"));
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 30 s; its log: {}", self.log("dockerd"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Stops dockerd (SIGTERM by PID, as a service manager would; without
    /// `--live-restore` it stops the containers first) and starts it again
    /// on the same directories and flags; containerd keeps running.
    /// Containers and networks stay in the cleanup lists.
    pub fn restart(&mut self) -> Result<()> {
        if !Self::stop(&mut self.dockerd, Duration::from_secs(60)) {
            bail!("dockerd did not stop on SIGTERM within 60 s (killed); its log: {}", self.log("dockerd"));
        }
        self.start_dockerd()
    }

    fn spawn(&self, daemon: &str, args: &[&str]) -> Result<Child> {
        // Appended to: a restarted daemon's log follows the first one's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{daemon}.log")))?;
        crate::daemon_command(&mut Command::new("nsenter"))
            .arg(format!("--net=/run/netns/{}", self.host_netns))
            .arg(daemon)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {daemon}"))
    }

    fn wait_for(&self, socket: &Path, daemon: &str) -> Result<()> {
        // netpathd's start is mostly the verifier's work, which a loaded
        // machine stretches.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("{daemon} did not create {} within 60 s; its log: {}", socket.display(), self.log(daemon));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The tail of a daemon's log, for error messages.
    pub fn log(&self, daemon: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{daemon}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn socket(&self) -> PathBuf {
        Self::socket_of(&self.dir)
    }

    /// The API socket dockerd will have in topology `t` (for the agent's
    /// `--docker-host`, which is given before dockerd starts).
    pub fn socket_for(t: &Topology) -> PathBuf {
        Self::socket_of(&t.run_dir().join("docker"))
    }

    fn socket_of(dir: &Path) -> PathBuf {
        dir.join("state").join("docker.sock")
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            // A newer CLI may come first in PATH: speak the daemon's API.
            .env("DOCKER_API_VERSION", "1.41")
            .output()
            .context("running docker")
    }

    /// docker that must succeed; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        if !out.status.success() {
            bail!("docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `docker network create -d driver` with `args`; the network is
    /// removed on drop. Returns docker's error text if it refuses.
    pub fn network_create(&mut self, name: &str, driver: &str, args: &[&str]) -> Result<Result<String, String>> {
        let mut all = vec!["network", "create", "-d", driver];
        all.extend_from_slice(args);
        all.push(name);
        let out = self.docker(&all)?;
        if !out.status.success() {
            return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        self.networks.push(name.to_string());
        Ok(Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }

    /// `docker run -d` of [`IMAGE`] with `args` (options, then the command
    /// after the image). Returns the container ID, or docker's error text;
    /// a created container is removed on drop either way.
    pub fn run(&mut self, options: &[&str], command: &[&str]) -> Result<Result<String, String>> {
        let mut all = vec!["create"];
        all.extend_from_slice(options);
        all.push(IMAGE);
        all.extend_from_slice(command);
        let id = self.docker_ok(&all)?;
        self.containers.push(id.clone());
        let out = self.docker(&["start", &id])?;
        if out.status.success() {
            Ok(Ok(id))
        } else {
            Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()))
        }
    }

    /// `docker inspect -f FORMAT` of a container or network.
    pub fn inspect(&self, id: &str, format: &str) -> Result<String> {
        self.docker_ok(&["inspect", "-f", format, id])
    }

    /// `docker network rm`; the network leaves the cleanup list.
    pub fn network_rm(&mut self, name: &str) -> Result<()> {
        self.docker_ok(&["network", "rm", name])?;
        self.networks.retain(|n| n != name);
        Ok(())
    }

    /// `docker rm -f` by ID.
    pub fn rm(&mut self, id: &str) -> Result<()> {
        self.docker_ok(&["rm", "-f", id])?;
        self.containers.retain(|c| c != id);
        Ok(())
    }

    /// Mount points under this run's directory (deepest first, repeated as
    /// often as they are stacked), from /proc/self/mountinfo.
    fn mounts(&self) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            // Octal escapes (\040 for a space) never occur in our own paths.
            .map(PathBuf::from)
            .filter(|p| p.starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        mounts
    }

    /// SIGTERM by PID, SIGKILL after `grace`; true if it ended on SIGTERM.
    fn stop(child: &mut Option<Child>, grace: Duration) -> bool {
        let Some(mut c) = child.take() else { return true };
        // nsenter execs the daemon: its PID is the daemon's.
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            if let Ok(out) = self.docker(&["rm", "-f", &id]) {
                if !out.status.success() {
                    eprintln!("docker cleanup of {id}: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        for net in std::mem::take(&mut self.networks) {
            let _ = self.docker(&["network", "rm", &net]);
        }
        Self::stop(&mut self.dockerd, Duration::from_secs(15));
        Self::stop(&mut self.containerd, Duration::from_secs(15));
        // dockerd with --live-restore leaves its data root bind-mounted
        // (and a restart stacks another): unmount what is under our
        // directory, deepest first, so that it can go.
        for mount in self.mounts() {
            let _ = Command::new("umount").arg("-l").arg(&mount).output();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
        for dir in &self.created_dirs {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// A topology whose agent serves the Docker driver under a per-run name
/// (returned) and asks this topology's dockerd for container names.
pub fn topology_with_driver() -> Result<(Topology, String)> {
    if !crate::is_root() {
        bail!("docker tests create namespaces and load BPF: run them as root (cargo xtask test)");
    }
    let mut t = Topology::new(0)?;
    // Dual stack, as the instance is by default.
    t.add_ipv6_uplink()?;
    let driver = format!("{}-np", t.prefix);
    let docker_host = Dockerd::socket_for(&t).display().to_string();
    t.agent_args(&["--docker-plugin", &driver, "--docker-host", &docker_host]);
    t.start_agent()?;
    Ok((t, driver))
}
