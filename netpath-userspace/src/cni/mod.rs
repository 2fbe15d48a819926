//! The CNI plugin `netpath` (binary `netpath-cni`, installed under the name
//! `netpath` in a CNI plugin directory): a thin client of netpathd's API.
//! The agent stays the only owner of interfaces and maps, so the plugin
//! keeps no state of its own: the attachment's agent-side name is derived
//! from the container ID and interface name, and DEL, CHECK and GC find it
//! by that name or by its owner tag, also after an agent restart.
//!
//! Spec 1.1: ADD, DEL, CHECK, VERSION, STATUS, GC; configs 0.4.0, 1.0.0
//! and 1.1.0. Errors are CNI error objects with the codes in [`error`].

pub mod config;
pub mod error;

use std::{net::IpAddr, path::Path};

use serde_json::{json, Value};

use self::{
    config::{CniArgs, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS},
    error::{CniError, CHECK_FAILED, INVALID_CONFIG, INVALID_ENVIRONMENT, NOT_AVAILABLE, UNKNOWN_CONTAINER},
};
use crate::{
    client::{ApiError, Client},
    model::{CheckReport, Container, ContainerRequest, ErrorReason, GcRequest, NetworkInfo},
};

/// The CNI_* environment of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(INVALID_ENVIRONMENT, format!("{name} is not set")));
        }
        Ok(())
    }

    fn attachment(&self) -> Result<(), CniError> {
        self.require("CNI_CONTAINERID", &self.container_id)?;
        self.require("CNI_IFNAME", &self.ifname)?;
        // The spec's rule for container IDs: they end up in names and paths.
        if !self.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!("CNI_CONTAINERID {:?} may only hold letters, digits, '_', '.', '-'", self.container_id),
            ));
        }
        Ok(())
    }
}

/// The agent-side container name of an attachment: readable (the start
/// of the container ID) and unique (a hash of the ID and interface name),
/// within the agent's 64-character name rules, and the same on every call.
pub fn container_name(container_id: &str, ifname: &str) -> String {
    let short: String = container_id.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    format!("cni-{short}-{:016x}", crate::fnv1a64(&[container_id.as_bytes(), b"\0", ifname.as_bytes()]))
}

/// The owner tag of an attachment; GC removes by the network's prefix.
pub fn owner_tag(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{}{container_id}:{ifname}", owner_prefix(network))
}

fn owner_prefix(network: &str) -> String {
    format!("cni:{network}:")
}

/// Runs one invocation; `Ok(Some(..))` is printed on stdout.
pub async fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    let socket = conf.socket();
    // Every command but STATUS rides out an agent restart.
    let waiting = || conf.agent_wait().map(|wait| Client::new(&socket).waiting_for_agent(wait));
    match env.command.as_str() {
        "ADD" => add(env, &conf, &waiting()?).await.map(Some),
        "DEL" => del(env, &waiting()?).await.map(|()| None),
        "CHECK" => check(env, &conf, &waiting()?).await.map(|()| None),
        "GC" => gc(&conf, &waiting()?).await.map(|()| None),
        "STATUS" => status(&conf, &Client::new(&socket)).await.map(|()| None),
        "" => Err(CniError::new(INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
        other => Err(CniError::new(INVALID_ENVIRONMENT, format!("CNI_COMMAND {other:?} is not a CNI command"))),
    }
}

/// The version the answer (or error) is given in: the config's if it is
/// one netpath speaks, else the latest.
pub fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

fn version(stdin: &[u8]) -> Value {
    json!({ "cniVersion": answer_version(stdin), "supportedVersions": SUPPORTED_VERSIONS })
}

async fn add(env: &Env, conf: &NetConf, client: &Client) -> Result<Value, CniError> {
    env.attachment()?;
    env.require("CNI_NETNS", &env.netns)?;
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(INVALID_ENVIRONMENT, format!("CNI_NETNS {:?} does not exist", env.netns)));
    }
    let cni_args = CniArgs::parse(&env.args)?;
    let req = ContainerRequest {
        name: container_name(&env.container_id, &env.ifname),
        netns: env.netns.clone(),
        ip: conf.requested_ip(&cni_args)?,
        ip6: None,
        ifname: Some(env.ifname.clone()),
        mac: conf.requested_mac(&cni_args),
        owner: Some(owner_tag(&conf.name, &env.container_id, &env.ifname)),
        ports: conf.ports()?,
        handoff: false,
        runtime_name: cni_args.runtime_name(),
    };
    let net: NetworkInfo = client.get("/network").await.map_err(|e| CniError::from_agent(&e, "ADD"))?;
    let c: Container = client.post("/containers", &req).await.map_err(|e| CniError::from_agent(&e, "ADD"))?;
    Ok(add_result(&conf.cni_version, conf, &net, &c))
}

/// A spec-valid result: the container's interface (with `mac` and
/// `sandbox`), its address with the gateway, the default route, and the
/// config's `dns`.
pub fn add_result(cni_version: &str, conf: &NetConf, net: &NetworkInfo, c: &Container) -> Value {
    let (mut ips, mut routes) = (vec![], vec![]);
    // Its IPv4 address, on an instance with an IPv4 subnet.
    if let (Some(ip), Some(subnet), Some(gateway)) = (c.ip, net.subnet, net.gateway) {
        let mut ip = json!({
            "address": format!("{ip}/{}", subnet.prefix_len()),
            "gateway": gateway.to_string(),
            "interface": 0,
        });
        if cni_version == "0.4.0" {
            ip["version"] = json!("4");
        }
        ips.push(ip);
        routes.push(json!({ "dst": "0.0.0.0/0", "gw": gateway.to_string() }));
    }
    // The container's IPv6 address, on an instance with an IPv6 subnet.
    if let (Some(ip6), Some(subnet6), Some(gateway6)) = (c.ip6, net.subnet6, net.gateway6) {
        let mut ip6 = json!({
            "address": format!("{ip6}/{}", subnet6.prefix_len()),
            "gateway": gateway6.to_string(),
            "interface": 0,
        });
        if cni_version == "0.4.0" {
            ip6["version"] = json!("6");
        }
        ips.push(ip6);
        routes.push(json!({ "dst": "::/0", "gw": gateway6.to_string() }));
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": [{ "name": c.ifname, "mac": c.mac, "mtu": net.mtu, "sandbox": c.netns }],
        "ips": ips,
        "routes": routes,
        "dns": conf.dns.clone().unwrap_or_else(|| json!({})),
    })
}

fn api_reason(e: &anyhow::Error) -> Option<ErrorReason> {
    e.downcast_ref::<ApiError>().and_then(|a| a.reason)
}

/// Idempotent: an attachment the agent does not know (never added, or
/// removed already) is fine; the netns may be gone.
async fn del(env: &Env, client: &Client) -> Result<(), CniError> {
    env.attachment()?;
    let name = container_name(&env.container_id, &env.ifname);
    match client.delete::<Container>(&format!("/containers/{name}")).await {
        Ok(_) => Ok(()),
        Err(e) if api_reason(&e) == Some(ErrorReason::NotFound) => Ok(()),
        Err(e) => Err(CniError::from_agent(&e, "DEL")),
    }
}

async fn check(env: &Env, conf: &NetConf, client: &Client) -> Result<(), CniError> {
    env.attachment()?;
    let name = container_name(&env.container_id, &env.ifname);
    let c: Container = match client.get(&format!("/containers/{name}")).await {
        Ok(c) => c,
        Err(e) if api_reason(&e) == Some(ErrorReason::NotFound) => {
            return Err(CniError::new(
                UNKNOWN_CONTAINER,
                format!(
                    "CHECK: netpath has no attachment for container {} interface {} (agent name {name})",
                    env.container_id, env.ifname
                ),
            ))
        }
        Err(e) => return Err(CniError::from_agent(&e, "CHECK")),
    };
    let report: CheckReport =
        client.get(&format!("/containers/{name}/check")).await.map_err(|e| CniError::from_agent(&e, "CHECK"))?;
    let mut problems = report.problems;
    problems.extend(prev_result_problems(conf.prev_result.as_ref(), &c));
    if !problems.is_empty() {
        return Err(CniError::new(
            CHECK_FAILED,
            format!(
                "CHECK: attachment of container {} differs from what ADD set up: {}",
                env.container_id, problems[0]
            ),
        )
        .with_details(problems.join("; ")));
    }
    Ok(())
}

/// What the runtime's cached result says and the agent's record does not.
fn prev_result_problems(prev: Option<&Value>, c: &Container) -> Vec<String> {
    let Some(prev) = prev else { return vec![] };
    let mut out = vec![];
    let ips: Vec<&str> =
        prev.get("ips").and_then(Value::as_array).into_iter().flatten().filter_map(|i| i["address"].as_str()).collect();
    for ip in c.ip.map(IpAddr::V4).into_iter().chain(c.ip6.map(IpAddr::V6)) {
        if !ips.iter().any(|a| a.split('/').next().and_then(|a| a.parse().ok()) == Some(ip)) {
            out.push(format!("the previous result's addresses {ips:?} do not include {ip}"));
        }
    }
    let macs: Vec<&str> = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i["name"].as_str() == Some(c.ifname.as_str()))
        .filter_map(|i| i["mac"].as_str())
        .collect();
    if !macs.iter().any(|m| m.eq_ignore_ascii_case(&c.mac)) {
        out.push(format!("the previous result's MAC {macs:?} for {} is not {}", c.ifname, c.mac));
    }
    out
}

async fn gc(conf: &NetConf, client: &Client) -> Result<(), CniError> {
    let req = GcRequest {
        owner_prefix: owner_prefix(&conf.name),
        keep: conf.valid_attachments.iter().map(|a| owner_tag(&conf.name, &a.container_id, &a.ifname)).collect(),
    };
    let _removed: Vec<Container> = client.post("/gc", &req).await.map_err(|e| CniError::from_agent(&e, "GC"))?;
    Ok(())
}

async fn status(conf: &NetConf, client: &Client) -> Result<(), CniError> {
    if conf.plugin_type.is_empty() {
        return Err(CniError::new(INVALID_CONFIG, "the network configuration has no \"type\""));
    }
    match client.get::<NetworkInfo>("/network").await {
        Ok(_) => Ok(()),
        Err(e) => {
            let cause = CniError::from_agent(&e, "STATUS");
            Err(CniError::new(NOT_AVAILABLE, cause.msg).with_details(cause.details))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_valid_and_distinct() {
        let id = "a".repeat(64);
        let n = container_name(&id, "eth0");
        assert_eq!(n, container_name(&id, "eth0"));
        assert_ne!(n, container_name(&id, "eth1"));
        assert_ne!(n, container_name(&format!("{id}b"), "eth0"));
        assert!(n.len() <= 64);
        crate::config::validate_name("container", &n, 64).unwrap();
        crate::config::validate_name("container", &container_name("x.y_z", "net1"), 64).unwrap();
    }

    #[test]
    fn version_answers_in_the_config_version() {
        assert_eq!(version(br#"{"cniVersion":"1.0.0"}"#)["cniVersion"], "1.0.0");
        assert_eq!(version(b"")["cniVersion"], LATEST_VERSION);
        assert_eq!(version(b"")["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }

    #[test]
    fn results_have_mac_sandbox_gateway_and_the_0_4_ip_version() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","dns":{"nameservers":["1.1.1.1"]}}"#).unwrap();
        let net = NetworkInfo {
            instance: "i".into(),
            bridge: "np0".into(),
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            gateway: Some("10.1.0.1".parse().unwrap()),
            subnet6: None,
            gateway6: None,
            mtu: 1500,
        };
        let c = Container {
            name: "cni-x".into(),
            netns: "/run/netns/x".into(),
            ip: Some("10.1.0.2".parse().unwrap()),
            ip6: None,
            mac: "02:4e:0a:01:00:02".into(),
            veth: "npv1".into(),
            ifindex: 5,
            id: 1,
            ifname: "eth0".into(),
            owner: None,
            handoff_ifname: None,
            runtime_name: None,
            stats_slot: 2,
        };
        let r = add_result("0.4.0", &conf, &net, &c);
        assert_eq!(r["interfaces"][0]["sandbox"], "/run/netns/x");
        assert_eq!(r["interfaces"][0]["mac"], "02:4e:0a:01:00:02");
        assert_eq!(r["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(r["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
        assert!(add_result("1.0.0", &conf, &net, &c)["ips"][0].get("version").is_none());
        assert!(prev_result_problems(Some(&r), &c).is_empty());
        assert_eq!(r["ips"].as_array().unwrap().len(), 1, "no IPv6 without subnet6");
        let net6 = NetworkInfo {
            subnet6: Some("fd00:1::/64".parse().unwrap()),
            gateway6: Some("fd00:1::1".parse().unwrap()),
            ..net.clone()
        };
        let c6 = Container { ip6: Some("fd00:1::2".parse().unwrap()), ..c.clone() };
        let r6 = add_result("0.4.0", &conf, &net6, &c6);
        assert_eq!(r6["ips"][1]["address"], "fd00:1::2/64");
        assert_eq!(r6["ips"][1]["gateway"], "fd00:1::1");
        assert_eq!(r6["ips"][1]["version"], "6");
        assert_eq!(r6["routes"][1]["dst"], "::/0");
        assert!(prev_result_problems(Some(&r6), &c6).is_empty());
        let other = Container { ip: Some("10.1.0.3".parse().unwrap()), ..c };
        assert_eq!(prev_result_problems(Some(&r), &other).len(), 1);
    }
}
