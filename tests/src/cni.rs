//! Driving the CNI plugin `netpath-cni` as a runtime does: CNI_* in the
//! environment, the network configuration on stdin, the answer on stdout.
//! Also a one-shot TCP server the CNI and podman tests share.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::topology::{bin_dir, Topology};

/// The plugin binary of this build.
pub fn plugin_bin() -> PathBuf {
    bin_dir().join("netpath-cni")
}

/// One network configuration of the plugin, pointing at a topology's agent.
#[derive(Clone)]
pub struct Plugin {
    pub conf: Value,
}

/// What an invocation gave: exit status and stdout as JSON (Null if empty).
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub out: Value,
}

impl Outcome {
    /// The CNI error code (panics when the call succeeded).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a CNI error, got success: {}", self.out);
        self.out["code"].as_u64().unwrap_or_else(|| panic!("error without a code: {}", self.out))
    }

    pub fn msg(&self) -> String {
        self.out["msg"].as_str().unwrap_or_default().to_string()
    }

    /// The result of a call that must have succeeded.
    pub fn result(self) -> Value {
        assert!(self.ok, "CNI call failed: {}", self.out);
        self.out
    }
}

impl Plugin {
    pub fn new(t: &Topology, network: &str, version: &str) -> Plugin {
        Plugin {
            conf: json!({
                "cniVersion": version,
                "name": network,
                "type": "netpath",
                "socket": t.socket(),
            }),
        }
    }

    /// The configuration with `extra`'s keys added (runtimeConfig, prevResult...).
    pub fn conf_with(&self, extra: &Value) -> Value {
        let mut conf = self.conf.clone();
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        conf
    }

    /// Runs the plugin with CNI_COMMAND=`command` for container `id` in
    /// netns `netns` (a name under /run/netns; "" leaves CNI_NETNS unset).
    pub fn call(&self, command: &str, id: &str, netns: &str, cni_args: &str, extra: &Value) -> Result<Outcome> {
        let mut cmd = Command::new(plugin_bin());
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", bin_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !id.is_empty() {
            cmd.env("CNI_CONTAINERID", id).env("CNI_IFNAME", "eth0");
        }
        if !netns.is_empty() {
            cmd.env("CNI_NETNS", format!("/run/netns/{netns}"));
        }
        if !cni_args.is_empty() {
            cmd.env("CNI_ARGS", cni_args);
        }
        let mut child = cmd.spawn().context("running netpath-cni (build it first: cargo build --bins)")?;
        let stdin = serde_json::to_vec(&self.conf_with(extra))?;
        child.stdin.take().context("plugin stdin")?.write_all(&stdin)?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("plugin printed non-JSON: {text}"))?
        };
        Ok(Outcome { ok: out.status.success(), out: value })
    }

    pub fn add(&self, id: &str, netns: &str, runtime_config: Value) -> Result<Outcome> {
        self.call("ADD", id, netns, "IgnoreUnknown=1", &json!({ "runtimeConfig": runtime_config }))
    }

    pub fn del(&self, id: &str, netns: &str) -> Result<Outcome> {
        self.call("DEL", id, netns, "IgnoreUnknown=1", &json!({}))
    }
}

/// A TCP server in `ns` on `port` that answers `count` connections with
/// `reply` and the client's address.
pub fn serve(t: &Topology, ns: &str, port: u16, count: usize, reply: &str) -> Result<JoinHandle<()>> {
    // Both families where the namespace has IPv6, IPv4 alone where not.
    let listener =
        t.in_ns(ns, || Ok(TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))?))?;
    let reply = reply.to_string();
    Ok(std::thread::spawn(move || {
        for _ in 0..count {
            let Ok((mut s, peer)) = listener.accept() else { return };
            let _ = s.write_all(format!("{reply} {}\n", peer.ip().to_canonical()).as_bytes());
        }
    }))
}

/// Connects from `ns` to `ip:port` and returns what the server said.
pub fn ask(t: &Topology, ns: &str, ip: impl Into<IpAddr>, port: u16) -> Result<String> {
    let ip = ip.into();
    let mut s = t.in_ns(ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(3))
            .with_context(|| format!("connecting to {ip}:{port}"))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.trim().to_string())
}
