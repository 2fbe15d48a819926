//! What the runtime hands the plugin: the network configuration on stdin
//! and the CNI_* environment.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::error::{CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENVIRONMENT};
use crate::{model::PortRequest, portspec::Protocol};

/// Config versions the plugin accepts (and answers in).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST_VERSION: &str = "1.1.0";

/// How long the plugin waits for the agent by default (`agentWaitSeconds`):
/// longer than a restart of the agent takes (systemd's 2 s pause after a
/// crash, then some 6 s of loading programs on a small host), shorter than
/// the runtimes' own limits on a network setup (CRI's minutes).
pub const DEFAULT_AGENT_WAIT_SECS: f64 = 30.0;
/// The most `agentWaitSeconds` may ask for.
pub const MAX_AGENT_WAIT_SECS: f64 = 600.0;

/// The plugin's network configuration (one plugin object of a conflist,
/// with the runtime's `name`, `cniVersion`, `runtimeConfig`, `prevResult`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    /// The agent's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The agent's instance (its socket is /run/netpath/<instance>/api.sock)
    /// when `socket` is not given; `default` when neither is.
    #[serde(default)]
    pub instance: Option<String>,
    /// How long ADD, DEL, CHECK and GC wait for an agent that is not up
    /// (starting, or restarting after an upgrade or a crash) before they
    /// fail with code 11; [`DEFAULT_AGENT_WAIT_SECS`] when not given, 0:
    /// not at all. STATUS never waits: it is how a runtime asks whether
    /// the agent is up.
    #[serde(default)]
    pub agent_wait_seconds: Option<f64>,
    /// Passed through to the result.
    #[serde(default)]
    pub dns: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// `args.cni.ips` / `args.cni.mac` (the conventions' "args" field).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// GC (spec 1.1): the attachments the runtime still has.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<Attachment>,
}

/// Capability arguments (`capabilities` in the conflist).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// One entry of the `portMappings` capability.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parses stdin; a version outside [`SUPPORTED_VERSIONS`] is refused.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(DECODE_FAILURE, format!("the network configuration is not valid: {e}")))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported; netpath supports {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(INVALID_CONFIG, "the network configuration has no \"name\""));
        }
        Ok(conf)
    }

    /// `agentWaitSeconds` as a duration, checked.
    pub fn agent_wait(&self) -> Result<Duration, CniError> {
        let secs = self.agent_wait_seconds.unwrap_or(DEFAULT_AGENT_WAIT_SECS);
        if !(0.0..=MAX_AGENT_WAIT_SECS).contains(&secs) {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!("agentWaitSeconds {secs} is out of range: 0 (do not wait) to {MAX_AGENT_WAIT_SECS}"),
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    pub fn socket(&self) -> PathBuf {
        match (&self.socket, &self.instance) {
            (Some(s), _) => s.clone(),
            (None, Some(i)) => crate::config::default_socket(i),
            (None, None) => crate::config::default_socket("default"),
        }
    }

    /// The ports to publish, from `runtimeConfig.portMappings`.
    pub fn ports(&self) -> Result<Vec<PortRequest>, CniError> {
        self.runtime_config.port_mappings.iter().map(port_request).collect()
    }

    /// The requested address: `runtimeConfig.ips`, then CNI_ARGS `IP=`,
    /// then `args.cni.ips` (the first that gives one).
    pub fn requested_ip(&self, cni_args: &CniArgs) -> Result<Option<Ipv4Addr>, CniError> {
        let from_args: Vec<String> = self
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/ips"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let candidates: Vec<String> = if !self.runtime_config.ips.is_empty() {
            self.runtime_config.ips.clone()
        } else if let Some(ip) = &cni_args.ip {
            ip.split(',').map(str::to_string).collect()
        } else {
            from_args
        };
        let mut v4 = vec![];
        for text in &candidates {
            let addr = text.split('/').next().unwrap_or_default().trim();
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => v4.push(ip),
                Ok(IpAddr::V6(_)) => {
                    return Err(CniError::new(
                        INVALID_CONFIG,
                        format!("requested address {text:?} is IPv6; netpath carries IPv4 only for now"),
                    ))
                }
                Err(_) => {
                    return Err(CniError::new(INVALID_CONFIG, format!("requested address {text:?} is not an address")))
                }
            }
        }
        if v4.len() > 1 {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!("{} addresses requested; a netpath attachment has exactly one", v4.len()),
            ));
        }
        Ok(v4.first().copied())
    }

    /// The requested MAC: `runtimeConfig.mac`, then CNI_ARGS `MAC=`, then
    /// `args.cni.mac`.
    pub fn requested_mac(&self, cni_args: &CniArgs) -> Option<String> {
        self.runtime_config.mac.clone().or_else(|| cni_args.mac.clone()).or_else(|| {
            self.args.as_ref().and_then(|a| a.pointer("/cni/mac")).and_then(|v| v.as_str()).map(str::to_string)
        })
    }
}

fn port_request(p: &PortMapping) -> Result<PortRequest, CniError> {
    let proto = match p.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some(other) => {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!(
                    "port mapping {}:{}: protocol {other:?} is not supported (tcp, udp)",
                    p.host_port, p.container_port
                ),
            ))
        }
    };
    // As Docker's `-p`: none, both families (IPv6 where the container has
    // an IPv6 address); `0.0.0.0`, IPv4 only; `::` or an IPv6 address, IPv6
    // only, which the agent refuses for a container without one.
    let host_ip = match p.host_ip.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!(
                        "port mapping {}:{}: host IP {text:?} is not an IPv4 or IPv6 address",
                        p.host_port, p.container_port
                    ),
                ))
            }
        },
    };
    if p.host_port == 0 || p.container_port == 0 {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!("port mapping {}:{}: ports must be 1-65535", p.host_port, p.container_port),
        ));
    }
    Ok(PortRequest { host_ip, host_port: p.host_port, container_port: p.container_port, proto })
}

/// `CNI_ARGS`: `K=V;K=V`. netpath reads `IP` and `MAC` (podman's `--ip`
/// and `--mac-address`) and `K8S_POD_NAME`/`K8S_POD_NAMESPACE` (podman
/// passes the container's name as the pod name); others are ignored (as
/// `IgnoreUnknown` allows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl CniArgs {
    /// The runtime's name of the container: podman's container name, or
    /// Kubernetes' `namespace/pod`.
    pub fn runtime_name(&self) -> Option<String> {
        let name = self.pod_name.as_deref().filter(|n| !n.is_empty())?;
        Some(match self.pod_namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        })
    }

    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CniError::new(INVALID_ENVIRONMENT, format!("CNI_ARGS: {pair:?} is not of the form KEY=VALUE"))
            })?;
            match key {
                "IP" => args.ip = Some(value.to_string()),
                "MAC" => args.mac = Some(value.to_string()),
                "K8S_POD_NAME" => args.pod_name = Some(value.to_string()),
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_config_parses() {
        let stdin = br#"{"cniVersion":"1.0.0","name":"np","type":"netpath","socket":"/run/x.sock",
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},
            {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}],"aliases":{"np":["c"]}}}"#;
        let conf = NetConf::parse(stdin).unwrap();
        assert_eq!(conf.socket(), PathBuf::from("/run/x.sock"));
        let ports = conf.ports().unwrap();
        assert_eq!(ports[0], PortRequest { host_ip: None, host_port: 8080, container_port: 80, proto: Protocol::Tcp });
        assert_eq!(ports[1].host_ip, Some(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(ports[1].proto, Protocol::Udp);
    }

    #[test]
    fn versions_and_names_are_checked() {
        assert_eq!(NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap_err().code, INCOMPATIBLE_VERSION);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, INVALID_CONFIG);
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, DECODE_FAILURE);
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","instance":"lab"}"#).unwrap();
        assert_eq!(conf.socket(), PathBuf::from("/run/netpath/lab/api.sock"));
    }

    #[test]
    fn addresses_and_macs_come_from_capabilities_then_cni_args() {
        let args = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.9;MAC=02:00:00:00:00:09").unwrap();
        assert_eq!(args.runtime_name().as_deref(), Some("web"));
        let k8s = CniArgs::parse("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-7d9").unwrap();
        assert_eq!(k8s.runtime_name().as_deref(), Some("prod/api-7d9"));
        assert_eq!(CniArgs::default().runtime_name(), None);
        assert_eq!(args.ip.as_deref(), Some("10.1.0.9"));
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap();
        assert_eq!(conf.requested_ip(&args).unwrap(), Some("10.1.0.9".parse().unwrap()));
        assert_eq!(conf.requested_mac(&args).as_deref(), Some("02:00:00:00:00:09"));
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.1.0.7/24"],"mac":"02:00:00:00:00:07"}}"#,
        )
        .unwrap();
        assert_eq!(conf.requested_ip(&args).unwrap(), Some("10.1.0.7".parse().unwrap()));
        assert_eq!(conf.requested_mac(&args).as_deref(), Some("02:00:00:00:00:07"));
        let v6 =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["fd00::2/64"]}}"#).unwrap();
        assert_eq!(v6.requested_ip(&CniArgs::default()).unwrap_err().code, INVALID_CONFIG);
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code, INVALID_ENVIRONMENT);
    }

    #[test]
    fn the_wait_for_the_agent_defaults_and_is_bounded() {
        let conf = |extra: &str| NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"n"{extra}}}"#).as_bytes());
        assert_eq!(conf("").unwrap().agent_wait().unwrap(), Duration::from_secs(30));
        assert_eq!(conf(r#","agentWaitSeconds":0"#).unwrap().agent_wait().unwrap(), Duration::ZERO);
        assert_eq!(conf(r#","agentWaitSeconds":2.5"#).unwrap().agent_wait().unwrap(), Duration::from_millis(2500));
        let e = conf(r#","agentWaitSeconds":601"#).unwrap().agent_wait().unwrap_err();
        assert_eq!(e.code, INVALID_CONFIG);
        assert!(e.msg.contains("agentWaitSeconds 601"), "{}", e.msg);
        assert_eq!(conf(r#","agentWaitSeconds":-1"#).unwrap().agent_wait().unwrap_err().code, INVALID_CONFIG);
        assert_eq!(conf(r#","agentWaitSeconds":"5""#).unwrap_err().code, DECODE_FAILURE);
    }

    #[test]
    fn bad_port_mappings_are_refused() {
        let sctp = br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"protocol":"sctp"}]}}"#;
        assert_eq!(NetConf::parse(sctp).unwrap().ports().unwrap_err().code, INVALID_CONFIG);
        let garbage = br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"hostIP":"nowhere"}]}}"#;
        let e = NetConf::parse(garbage).unwrap().ports().unwrap_err();
        assert_eq!(e.code, INVALID_CONFIG);
        assert!(e.msg.contains("\"nowhere\""), "{}", e.msg);
        let scoped = br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"hostIP":"fe80::1%eth0"}]}}"#;
        assert_eq!(NetConf::parse(scoped).unwrap().ports().unwrap_err().code, INVALID_CONFIG);
    }

    #[test]
    fn host_ips_say_the_families() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":1,"containerPort":1},{"hostPort":2,"containerPort":2,"hostIP":"0.0.0.0"},
            {"hostPort":3,"containerPort":3,"hostIP":"::"},{"hostPort":4,"containerPort":4,"hostIP":"2001:db8::1"},
            {"hostPort":5,"containerPort":5,"hostIP":"[::1]"}]}}"#,
        )
        .unwrap();
        let ips: Vec<Option<IpAddr>> = conf.ports().unwrap().iter().map(|p| p.host_ip).collect();
        let want: Vec<Option<IpAddr>> = vec![
            None,
            Some(Ipv4Addr::UNSPECIFIED.into()),
            Some(std::net::Ipv6Addr::UNSPECIFIED.into()),
            Some("2001:db8::1".parse().unwrap()),
            Some(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        assert_eq!(ips, want);
    }
}
