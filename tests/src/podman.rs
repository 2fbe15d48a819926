//! podman 4 (CNI backend) inside a topology's sandbox host, on netpath.
//!
//! Everything is the run's own: storage (`--root`), run and tmp
//! directories, containers.conf, the CNI plugin directory (holding
//! `netpath` -> this build's `netpath-cni`), the network config directory
//! with one conflist, and a busybox rootfs (no registry is reachable).
//! podman runs in the host namespace through `nsenter --net` (not `ip netns
//! exec`, whose private /sys and mount namespace would hide the netns bind
//! mounts from the agent). [`Podman`]'s Drop removes every container of its
//! storage by ID, libcni's cached results for its network, and its
//! directories, also when a test panics; drop it before the topology, so
//! that the agent still answers the DELs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};

use crate::{cni::plugin_bin, topology::Topology};

/// Where libcni (podman 4.3's CNI library) caches ADD results, machine-wide.
pub const LIBCNI_CACHE: &str = "/var/lib/cni/results";

pub struct Podman {
    dir: PathBuf,
    host_netns: String,
    pub network: String,
    pub rootfs: PathBuf,
    /// IDs of every container created, for the cleanup.
    ids: Vec<String>,
}

impl Podman {
    /// Sets up podman for topology `t`, with a netpath network named after
    /// the topology whose conflist points at `t`'s agent.
    pub fn new(t: &Topology) -> Result<Podman> {
        for tool in ["podman", "runc", "nsenter", "chroot"] {
            if Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
                bail!("{tool} is not installed: run `cargo xtask setup` (it installs podman, runc and busybox-static)");
            }
        }
        let dir = t.run_dir().join("podman");
        let pod = Podman {
            network: format!("{}-net", t.prefix),
            rootfs: dir.join("rootfs"),
            host_netns: t.host.clone(),
            dir,
            ids: vec![],
        };
        for sub in ["root", "runroot", "tmp", "cni-bin", "cni-conf"] {
            std::fs::create_dir_all(pod.dir.join(sub))?;
        }
        std::os::unix::fs::symlink(plugin_bin(), pod.dir.join("cni-bin/netpath")).context("installing the plugin")?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": pod.network,
            "plugins": [{
                "type": "netpath",
                "socket": t.socket(),
                "capabilities": { "portMappings": true, "ips": true, "mac": true },
            }],
        });
        std::fs::write(pod.dir.join(format!("cni-conf/{}.conflist", pod.network)), conflist.to_string())?;
        // RUNTIMES.md: rlimits root may set here, runc (crun fails on the
        // hybrid cgroup layout), no systemd.
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            pod.dir.join("cni-bin").display(),
            pod.dir.join("cni-conf").display()
        );
        std::fs::write(pod.dir.join("containers.conf"), conf)?;
        crate::busybox::rootfs(&pod.rootfs, "hello from podman")?;
        Ok(pod)
    }

    /// Runs podman with this setup's storage and configuration.
    pub fn podman(&self, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_netns))
            .arg("podman")
            .args(["--root", &self.dir.join("root").display().to_string()])
            .args(["--runroot", &self.dir.join("runroot").display().to_string()])
            .args(["--tmpdir", &self.dir.join("tmp").display().to_string()])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .context("running podman")
    }

    /// podman that must succeed; returns stdout.
    pub fn podman_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.podman(args)?;
        if !out.status.success() {
            bail!("podman {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `podman create` + `start` of busybox httpd on port 80 on this
    /// network, with `extra` flags (e.g. `-p 8080:80`). Returns the
    /// container ID, or podman's error text; the ID is kept for cleanup
    /// either way.
    pub fn run_httpd(&mut self, extra: &[&str]) -> Result<std::result::Result<String, String>> {
        let id = self.create_httpd(extra)?;
        let out = self.podman(&["start", &id])?;
        if out.status.success() {
            Ok(Ok(id))
        } else {
            Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()))
        }
    }

    /// `podman create` of busybox httpd (see [`Podman::run_httpd`]), not
    /// started: its network is set up (the plugin's ADD) at `podman start`.
    pub fn create_httpd(&mut self, extra: &[&str]) -> Result<String> {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["create", "--network", &self.network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", &rootfs, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]);
        let id = self.podman_ok(&args)?;
        self.ids.push(id.clone());
        Ok(id)
    }

    /// `podman rm -f` of containers by ID.
    pub fn rm(&mut self, ids: &[&str]) -> Result<()> {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend_from_slice(ids);
        self.podman_ok(&args)?;
        self.ids.retain(|i| !ids.contains(&i.as_str()));
        Ok(())
    }

    /// libcni's cached results for this network (one file per attachment).
    pub fn cached_results(&self) -> Vec<String> {
        std::fs::read_dir(LIBCNI_CACHE)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.network)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let ids: Vec<String> = self.ids.clone();
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(ids.iter().map(String::as_str));
            if let Ok(out) = self.podman(&args) {
                if !out.status.success() {
                    eprintln!("podman cleanup: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        for name in self.cached_results() {
            let _ = std::fs::remove_file(Path::new(LIBCNI_CACHE).join(name));
        }
        // Storage and run directories (shm mounts go with `rm`; a left one
        // makes this fail loudly in the log rather than unmounting blindly).
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}
