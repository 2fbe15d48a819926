//! Reloading the config file in a running agent (SIGHUP, `POST
//! /v1/reload`): the settings the datapath reads from its CONFIG map and
//! the uplink guard's maps change in place; the ones that shape interfaces,
//! addresses, pins or sockets need a restart, and a reload that changes any
//! of them is refused whole, naming them.

use std::time::Duration;

use anyhow::Context as _;
use netpath_common::config::{CFG_F_DENIED_SOURCES, CFG_F_FAST_PATH, CFG_F_GUARDED_PORTS, CFG_F_NO_ICC, CFG_F_ROUTED};
use serde::{Deserialize, Serialize};

use super::{write_uplink_guard, Agent, AgentError};
use crate::config::ResolvedConfig;

/// What a reload changed, one `key: old -> new` each.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReport {
    pub changed: Vec<String>,
}

/// What the conntrack collector reads at each tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSettings {
    /// `conntrack.tcp_new`: a handshake older than this goes under pressure.
    pub handshake: Duration,
    /// `conntrack.gc_interval`.
    pub interval: Duration,
}

impl GcSettings {
    pub fn of(cfg: &ResolvedConfig) -> GcSettings {
        GcSettings {
            handshake: Duration::from_secs(cfg.conntrack.tcp_new.into()),
            interval: Duration::from_secs(cfg.conntrack.gc_interval.into()),
        }
    }
}

/// The settings of `new` that differ from `old` and that a running agent
/// cannot take: each needs a restart (and some the instance's pins removed).
pub fn fixed_changes(old: &ResolvedConfig, new: &ResolvedConfig) -> Vec<&'static str> {
    let mut out = vec![];
    let mut check = |differs: bool, key: &'static str| {
        if differs {
            out.push(key);
        }
    };
    check(old.instance != new.instance, "instance");
    check(old.uplink != new.uplink, "uplink");
    check(old.bridge != new.bridge, "bridge");
    check(old.bridge_ports != new.bridge_ports, "bridge_ports");
    check(old.net4.map(|n| n.subnet) != new.net4.map(|n| n.subnet), "subnet");
    check(old.net4.map(|n| n.gateway) != new.net4.map(|n| n.gateway), "gateway");
    check(old.net6.map(|n| n.subnet) != new.net6.map(|n| n.subnet), "subnet6");
    check(old.net6.map(|n| n.gateway) != new.net6.map(|n| n.gateway), "gateway6");
    check(old.state_dir != new.state_dir, "state_dir");
    check(old.socket != new.socket, "socket");
    check(old.pin_dir != new.pin_dir, "pin_dir");
    check(old.cgroup != new.cgroup, "cgroup");
    check(old.masquerade != new.masquerade, "masquerade");
    check(old.masquerade_ports != new.masquerade_ports, "masquerade_ports");
    check(old.mtu != new.mtu, "mtu");
    check(old.uplink_xdp != new.uplink_xdp, "uplink_xdp");
    check(old.docker_plugin != new.docker_plugin, "docker_plugin");
    check(old.docker_host != new.docker_host, "docker_host");
    check(old.conntrack.max_entries != new.conntrack.max_entries, "conntrack.max_entries");
    check(old.log_format != new.log_format, "log_format");
    check(old.metrics_address != new.metrics_address, "metrics_address");
    out
}

/// The settings a running agent takes, as `key: old -> new`.
pub fn live_changes(old: &ResolvedConfig, new: &ResolvedConfig) -> Vec<String> {
    let mut out = vec![];
    let mut note = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{key}: {a} -> {b}"));
        }
    };
    note("routed", old.routed.to_string(), new.routed.to_string());
    note("icc", old.icc.to_string(), new.icc.to_string());
    note("fast_path", old.fast_path.to_string(), new.fast_path.to_string());
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    note(
        "uplink.guarded_ports",
        list(old.guarded_ports.iter().map(|r| r.to_string()).collect()),
        list(new.guarded_ports.iter().map(|r| r.to_string()).collect()),
    );
    note(
        "uplink.denied_sources",
        list(old.denied_sources.iter().map(|n| n.to_string()).collect()),
        list(new.denied_sources.iter().map(|n| n.to_string()).collect()),
    );
    let (a, b) = (&old.conntrack, &new.conntrack);
    for (key, x, y) in [
        ("conntrack.tcp_new", a.tcp_new, b.tcp_new),
        ("conntrack.tcp_established", a.tcp_established, b.tcp_established),
        ("conntrack.tcp_closing", a.tcp_closing, b.tcp_closing),
        ("conntrack.tcp_closed", a.tcp_closed, b.tcp_closed),
        ("conntrack.tcp_reset", a.tcp_reset, b.tcp_reset),
        ("conntrack.udp", a.udp, b.udp),
        ("conntrack.icmp", a.icmp, b.icmp),
        ("conntrack.gc_interval", a.gc_interval, b.gc_interval),
    ] {
        note(key, x.to_string(), y.to_string());
    }
    out
}

impl Agent {
    /// Where [`Agent::reload_config`] reads the configuration: the file and
    /// flags the agent started with. Set once, by the binary.
    pub fn set_config_source(&self, source: super::ConfigSource) {
        let _ = self.config_source.set(source);
    }

    /// Re-reads the configuration from its source and applies it.
    pub async fn reload_config(&self) -> Result<ReloadReport, AgentError> {
        let source = self
            .config_source
            .get()
            .ok_or_else(|| AgentError::BadRequest("this agent has no config file to reload".into()))?;
        let new = source().map_err(|e| AgentError::BadRequest(format!("reload refused: {e:#}; nothing changed")))?;
        self.reload(new).await
    }

    /// Applies `new` if it changes only what a running agent can change;
    /// otherwise refuses, naming every setting that needs a restart, and
    /// changes nothing.
    pub async fn reload(&self, new: ResolvedConfig) -> Result<ReloadReport, AgentError> {
        let mut inner = self.inner.lock().await;
        let mut configured = self.configured.lock().map_err(|_| anyhow::anyhow!("config lock poisoned"))?.clone();
        let fixed = fixed_changes(&configured, &new);
        if !fixed.is_empty() {
            return Err(AgentError::BadRequest(format!(
                "reload refused: {} cannot change while netpathd runs (restart it to apply); nothing changed",
                fixed.join(", ")
            )));
        }
        let changed = live_changes(&configured, &new);
        if changed.is_empty() {
            return Ok(ReloadReport::default());
        }
        // Checked before anything is written.
        inner
            .host_ports
            .check_guarded_ports(&new.guarded_ports)
            .map_err(|e| AgentError::BadRequest(format!("{e:#}")))?;

        let mut dp_config = inner.dp_config;
        let mut set = |flag: u32, on: bool| {
            dp_config.flags = if on { dp_config.flags | flag } else { dp_config.flags & !flag };
        };
        set(CFG_F_ROUTED, new.routed);
        set(CFG_F_FAST_PATH, new.fast_path);
        // icc: the file's value replaces a `netpathctl icc` one only when
        // the file's value changed.
        let icc_tightened = configured.icc != new.icc && !new.icc;
        if configured.icc != new.icc {
            set(CFG_F_NO_ICC, !new.icc);
            inner.state.icc = None;
        }
        // The guard's maps first, then the flags that make the datapath read them.
        let guard_flags = write_uplink_guard(&mut inner.dp, &new)?;
        dp_config.flags = (dp_config.flags & !(CFG_F_GUARDED_PORTS | CFG_F_DENIED_SOURCES)) | guard_flags;
        dp_config.timeouts = new.conntrack.timeouts();
        inner.dp_config = dp_config;
        inner.dp.write_config(&dp_config).context("writing the datapath's config")?;
        inner.save()?;
        if icc_tightened || (configured.routed && !new.routed) {
            inner.rejudge_flows(None)?;
        }
        self.gc_settings.send_replace(GcSettings::of(&new));
        configured = new;
        *self.configured.lock().map_err(|_| anyhow::anyhow!("config lock poisoned"))? = configured;
        tracing::info!(changed = ?changed, "configuration reloaded");
        Ok(ReloadReport { changed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn resolved(f: impl FnOnce(&mut Config)) -> ResolvedConfig {
        let mut c = Config { subnet6: crate::config::Subnet6::None, ..Default::default() };
        f(&mut c);
        c.resolve().unwrap()
    }

    #[test]
    fn settings_that_need_a_restart_are_named_and_the_others_described() {
        let old = resolved(|_| {});
        let new = resolved(|c| {
            c.subnet = crate::config::Subnet4::Prefix("10.99.0.0/16".parse().unwrap());
            c.mtu = 1400;
            c.icc = false;
        });
        assert_eq!(fixed_changes(&old, &new), ["subnet", "gateway", "mtu"]);
        let new = resolved(|c| {
            c.icc = false;
            c.conntrack.udp = 30;
            c.uplink.name = Some("eth0".into());
            c.uplink.denied_sources = vec!["203.0.113.0/24".into()];
        });
        assert_eq!(fixed_changes(&old, &new), ["uplink"]);
        let with_uplink = resolved(|c| c.uplink.name = Some("eth0".into()));
        assert!(fixed_changes(&with_uplink, &new).is_empty());
        assert_eq!(
            live_changes(&with_uplink, &new),
            ["icc: true -> false", "uplink.denied_sources: [] -> [203.0.113.0/24]", "conntrack.udp: 60 -> 30"]
        );
        assert!(live_changes(&old, &old).is_empty());
    }
}
