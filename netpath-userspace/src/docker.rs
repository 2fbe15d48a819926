//! Docker's remote network driver (libnetwork's plugin protocol), served by
//! netpathd on `/run/docker/plugins/<name>.sock` when `docker_plugin` is
//! set: `docker network create -d <name> --subnet <the instance's subnet>`,
//! then `docker run --network <net> -p 8080:80 ...` puts the container on
//! netpath, its ports published by netpath's datapath (Docker publishes
//! nothing itself for remote drivers: no docker-proxy, no iptables).
//!
//! The driver is a thin translation onto the agent's own operations, as the
//! CNI plugin is:
//! - `CreateEndpoint` checks the address Docker's IPAM assigned and the
//!   port map, answers with the MAC, and remembers both (in the state
//!   directory, so an agent restart before `Join` loses nothing);
//! - `Join` attaches the endpoint as a netpath container with that address,
//!   MAC and ports, owned by the endpoint. The sandbox's netns
//!   (`SandboxKey`) does not exist yet at Join, so the agent hands the
//!   container's end of the veth over (`handoff`): it stays in the agent's
//!   namespace, and the answer names it for Docker to move in as `eth<n>`
//!   with the endpoint's address, and the bridge as its gateway;
//! - `ProgramExternalConnectivity` (re)publishes the ports,
//!   `RevokeExternalConnectivity` (which comes without options) unpublishes
//!   the ones the container owns, `Leave` detaches the container and
//!   `DeleteEndpoint` forgets the endpoint. Each finds its container by the
//!   owner tag, so they work across agent restarts and are idempotent.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context as _, Result};
use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::{
    agent::{container_mac, format_mac, parse_mac, Agent, AgentError},
    model::{Container, ContainerRequest, ErrorReason, NetworkInfo, PortRequest},
    portspec::{host_prefix, Protocol},
};

/// Where Docker looks for plugin sockets (machine-wide).
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// The media type of every answer (plugin protocol v1.2).
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The option carrying `-p` bindings, in CreateEndpoint and
/// ProgramExternalConnectivity.
const PORTMAP_OPTION: &str = "com.docker.network.portmap";

/// Owner tags of Docker endpoints: `docker:<network id>:<endpoint id>`.
const OWNER_PREFIX: &str = "docker:";

/// The plugin socket of driver `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{name}.sock"))
}

/// One `-p` binding as Docker sends it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct PortBinding {
    proto: u8,
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

/// What CreateEndpoint settled, until Join attaches the sandbox.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
struct PendingEndpoint {
    network: String,
    ip: Ipv4Addr,
    /// On a network created with `--ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<Ipv6Addr>,
    mac: String,
    ports: Vec<PortRequest>,
}

/// The driver's own memory: endpoints created and not deleted yet.
struct Driver {
    agent: Arc<Agent>,
    file: PathBuf,
    endpoints: Mutex<BTreeMap<String, PendingEndpoint>>,
    /// dockerd's API socket, asked for container names (the driver
    /// protocol tells none).
    docker_host: Option<PathBuf>,
}

/// How often container names are asked of dockerd while some are unknown.
const NAME_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The API version every dockerd since 20.10 speaks.
const DOCKER_API_PREFIX: &str = "/v1.41";

/// `GET /networks/ID`, the part the driver reads.
#[derive(Deserialize)]
struct DockerNetwork {
    #[serde(rename = "Containers", default)]
    containers: BTreeMap<String, DockerNetworkContainer>,
}

#[derive(Deserialize)]
struct DockerNetworkContainer {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

/// A refusal Docker shows the user (`{"Err": ...}`, HTTP 200 as libnetwork
/// expects for driver errors).
#[derive(Debug)]
struct DriverError(String);

impl From<AgentError> for DriverError {
    fn from(e: AgentError) -> Self {
        DriverError(format!("netpath: {e}"))
    }
}

impl From<anyhow::Error> for DriverError {
    fn from(e: anyhow::Error) -> Self {
        DriverError(format!("netpath: {e:#}"))
    }
}

type DriverResult = Result<Value, DriverError>;

fn answer(result: DriverResult) -> Response {
    let body = match result {
        Ok(v) => v,
        Err(DriverError(msg)) => {
            tracing::warn!("docker driver: {msg}");
            json!({ "Err": msg })
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, call: &str) -> Result<T, DriverError> {
    serde_json::from_slice(body).map_err(|e| DriverError(format!("netpath: invalid {call} request: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<InterfaceRequest>,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    sandbox_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InterfaceRequest {
    #[serde(default)]
    address: String,
    #[serde(rename = "AddressIPv6", default)]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

impl Driver {
    fn owner(network: &str, endpoint: &str) -> String {
        format!("{OWNER_PREFIX}{network}:{endpoint}")
    }

    /// The agent's name of the endpoint's container (names are short;
    /// the owner tag carries the full IDs).
    fn container_name(endpoint: &str) -> String {
        format!("docker-{}", endpoint.get(..12).unwrap_or(endpoint))
    }

    async fn container_of(&self, network: &str, endpoint: &str) -> Result<Option<Container>, AgentError> {
        let owner = Self::owner(network, endpoint);
        Ok(self.agent.containers().await?.into_iter().find(|c| c.owner.as_deref() == Some(owner.as_str())))
    }

    fn save(&self, endpoints: &BTreeMap<String, PendingEndpoint>) -> Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(endpoints)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file).with_context(|| format!("replacing {}", self.file.display()))
    }

    /// Gives the agent the Docker names of attached containers it does not
    /// know by name yet (`docker run --name web`: `netpathctl policy add
    /// web ...`), asking dockerd which container each endpoint belongs to.
    async fn sync_names(&self, docker: &Path) -> Result<()> {
        let unnamed: Vec<(String, String, String)> = self
            .agent
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.runtime_name.is_none())
            .filter_map(|c| {
                let (network, endpoint) = c.owner.as_deref()?.strip_prefix(OWNER_PREFIX)?.split_once(':')?;
                Some((c.name.clone(), network.to_string(), endpoint.to_string()))
            })
            .collect();
        let client = crate::client::Client::with_prefix(docker, DOCKER_API_PREFIX);
        let mut networks: BTreeMap<String, DockerNetwork> = BTreeMap::new();
        for (container, network, endpoint) in unnamed {
            if !networks.contains_key(&network) {
                let net: DockerNetwork = client.get(&format!("/networks/{network}")).await?;
                networks.insert(network.clone(), net);
            }
            let name =
                networks[&network].containers.values().find(|c| c.endpoint_id == endpoint).map(|c| c.name.clone());
            if let Some(name) = name {
                if let Err(e) = self.agent.set_runtime_name(&container, &name).await {
                    tracing::warn!(container = %container, "docker name {name:?}: {e}");
                }
            }
        }
        Ok(())
    }

    async fn create_network(&self, body: Bytes) -> DriverResult {
        let req: CreateNetworkRequest = parse(&body, "CreateNetwork")?;
        let net = self.agent.network().await;
        check_ipv6_pool(req.ipv6_data.as_deref().unwrap_or_default(), &net)?;
        // Docker's networks always have an IPv4 pool.
        let (Some(subnet), Some(bridge_ip)) = (net.subnet, net.gateway) else {
            return Err(DriverError(format!(
                "netpath: instance {} is IPv6-only (subnet = \"none\"), and Docker networks need IPv4: \
                 serve Docker from an instance with a subnet",
                net.instance
            )));
        };
        let [data] = req.ipv4_data.as_slice() else {
            return Err(DriverError(format!(
                "netpath: expected exactly one IPv4 pool, got {}; create the network with --subnet {subnet}",
                req.ipv4_data.len(),
            )));
        };
        let pool: ipnet::Ipv4Net = data
            .pool
            .parse()
            .map_err(|e| DriverError(format!("netpath: IPv4 pool {:?} is not a subnet: {e}", data.pool)))?;
        if pool != subnet {
            return Err(DriverError(format!(
                "netpath: instance {} serves subnet {subnet}, not {pool}: create the network with --subnet {subnet}",
                net.instance
            )));
        }
        let gateway = data.gateway.split('/').next().unwrap_or_default();
        if !gateway.is_empty() && gateway.parse::<Ipv4Addr>().ok() != Some(bridge_ip) {
            return Err(DriverError(format!(
                "netpath: the bridge's address is {bridge_ip}, not {gateway}: create the network with --gateway {bridge_ip}"
            )));
        }
        tracing::info!(network = %req.network_id, subnet = %pool, "docker network created");
        Ok(json!({}))
    }

    async fn create_endpoint(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "CreateEndpoint")?;
        let iface = req.interface.unwrap_or_default();
        let ip6 = match iface.address_ipv6.split('/').next().unwrap_or_default() {
            "" => None,
            a => Some(a.parse::<Ipv6Addr>().map_err(|_| {
                DriverError(format!("netpath: Docker's IPv6 address {:?} is not an address", iface.address_ipv6))
            })?),
        };
        let address = iface.address.split('/').next().unwrap_or_default();
        let ip: Ipv4Addr = address.parse().map_err(|_| {
            DriverError(format!("netpath: Docker assigned no IPv4 address to the endpoint ({:?})", iface.address))
        })?;
        let mac = if iface.mac_address.is_empty() {
            format_mac(&container_mac(Some(ip), ip6))
        } else {
            parse_mac(&iface.mac_address).map_err(|e| DriverError(format!("netpath: {e:#}")))?;
            iface.mac_address.clone()
        };
        let ports = ports_of(req.options.as_ref())?;
        let pending = PendingEndpoint { network: req.network_id.clone(), ip, ip6, mac: mac.clone(), ports };
        let mut endpoints = self.endpoints.lock().await;
        endpoints.insert(req.endpoint_id.clone(), pending);
        self.save(&endpoints)?;
        // A MAC goes back only when Docker did not choose one.
        if iface.mac_address.is_empty() {
            Ok(json!({ "Interface": { "MacAddress": mac } }))
        } else {
            Ok(json!({}))
        }
    }

    async fn join(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "Join")?;
        let netns = req
            .sandbox_key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| DriverError("netpath: Join without a SandboxKey".into()))?;
        let pending = self.endpoints.lock().await.get(&req.endpoint_id).cloned().ok_or_else(|| {
            DriverError(format!("netpath: unknown endpoint {} (not created through this driver)", req.endpoint_id))
        })?;
        if let Some(c) = self.container_of(&req.network_id, &req.endpoint_id).await? {
            return Err(DriverError(format!("netpath: endpoint {} is already joined as {}", req.endpoint_id, c.name)));
        }
        let c = self
            .agent
            .add_container(ContainerRequest {
                name: Self::container_name(&req.endpoint_id),
                netns,
                ip: Some(pending.ip),
                ip6: pending.ip6,
                mac: Some(pending.mac.clone()),
                owner: Some(Self::owner(&req.network_id, &req.endpoint_id)),
                // An endpoint without IPv6 (a network without `--ipv6`)
                // skips its IPv6 bindings, as Docker does.
                ports: usable_ports(&pending.ports, pending.ip6.is_some()),
                // The sandbox's netns does not exist yet: Docker moves the
                // interface in when it does.
                handoff: true,
                ..Default::default()
            })
            .await?;
        let Some(peer) = c.handoff_ifname.clone() else {
            return Err(DriverError(format!("netpath: container {} has no interface to hand over", c.name)));
        };
        tracing::info!(container = %c.name, ip = ?c.ip, endpoint = %req.endpoint_id, "docker endpoint joined");
        // Docker moves it in as eth<n>, with the endpoint's addresses and
        // MAC, and routes by the gateways.
        let net = self.agent.network().await;
        let bridge = self.agent.container(&c.name).await?.bridge;
        let mut answer = json!({ "InterfaceName": { "SrcName": peer, "DstPrefix": "eth" } });
        if let Some(gateway) = net.gateway {
            answer["Gateway"] = json!(gateway.to_string());
        }
        if let (Some(_), Some(subnet6), Some(gateway6)) = (c.ip6, net.subnet6, net.gateway6) {
            answer["GatewayIPv6"] = json!(gateway6.to_string());
            if bridge.is_some_and(|b| b != net.bridge) {
                answer["StaticRoutes"] = off_link_routes6(subnet6, gateway6);
            }
        }
        Ok(answer)
    }

    async fn program_external_connectivity(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "ProgramExternalConnectivity")?;
        let ports = ports_of(req.options.as_ref())?;
        let Some(c) = self.container_of(&req.network_id, &req.endpoint_id).await? else {
            return Err(DriverError(format!("netpath: endpoint {} has not joined", req.endpoint_id)));
        };
        let published = self.agent.mappings().await?;
        let missing: Vec<String> = usable_ports(&ports, c.ip6.is_some())
            .iter()
            .filter(|p| {
                !published.iter().any(|m| {
                    m.container == c.name
                        && m.host_ip == p.host_ip
                        && m.host_port == p.host_port
                        && m.container_port == p.container_port
                        && m.proto == p.proto
                })
            })
            .map(|p| port_spec(p, &c.name))
            .collect();
        // All of them in one call, or none.
        if !missing.is_empty() {
            let specs: Vec<&str> = missing.iter().map(String::as_str).collect();
            self.agent.publish_all(&specs).await?;
        }
        Ok(json!({}))
    }

    async fn revoke_external_connectivity(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "RevokeExternalConnectivity")?;
        // Docker sends no port map here: the container's own mappings say
        // what to revoke.
        let Some(c) = self.container_of(&req.network_id, &req.endpoint_id).await? else { return Ok(json!({})) };
        for m in self.agent.mappings().await?.into_iter().filter(|m| m.container == c.name) {
            let host = host_prefix(m.host_ip);
            match self.agent.unpublish(&format!("{host}{}/{}", m.host_port, m.proto)).await {
                Ok(_) | Err(AgentError::NotFound(_)) => {}
                Err(e) if e.reason() == Some(ErrorReason::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(json!({}))
    }

    async fn leave(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "Leave")?;
        if let Some(c) = self.container_of(&req.network_id, &req.endpoint_id).await? {
            self.agent.del_container(&c.name).await?;
            tracing::info!(container = %c.name, endpoint = %req.endpoint_id, "docker endpoint left");
        }
        Ok(json!({}))
    }

    async fn delete_endpoint(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "DeleteEndpoint")?;
        // A container still attached (Leave never came) goes too.
        if let Some(c) = self.container_of(&req.network_id, &req.endpoint_id).await? {
            self.agent.del_container(&c.name).await?;
        }
        let mut endpoints = self.endpoints.lock().await;
        if endpoints.remove(&req.endpoint_id).is_some() {
            self.save(&endpoints)?;
        }
        Ok(json!({}))
    }

    async fn endpoint_oper_info(&self, body: Bytes) -> DriverResult {
        let req: EndpointRequest = parse(&body, "EndpointOperInfo")?;
        let value = match self.container_of(&req.network_id, &req.endpoint_id).await? {
            Some(c) => json!({ "container": c.name, "ip": c.ip, "mac": c.mac, "veth": c.veth }),
            None => json!({}),
        };
        Ok(json!({ "Value": value }))
    }
}

/// A network's IPv6 pool (`--ipv6 --subnet`): none, or the instance's
/// subnet6 with its gateway.
fn check_ipv6_pool(pools: &[IpamData], net: &NetworkInfo) -> Result<(), DriverError> {
    let Some(data) = (match pools {
        [] => None,
        [one] => Some(one),
        more => return Err(DriverError(format!("netpath: expected at most one IPv6 pool, got {}", more.len()))),
    }) else {
        return Ok(());
    };
    let (Some(subnet6), Some(gateway6)) = (net.subnet6, net.gateway6) else {
        return Err(DriverError(format!(
            "netpath: instance {} has no IPv6 subnet (subnet6 = \"none\"): create the network without --ipv6",
            net.instance
        )));
    };
    let pool: ipnet::Ipv6Net = data
        .pool
        .parse()
        .map_err(|e| DriverError(format!("netpath: IPv6 pool {:?} is not a subnet: {e}", data.pool)))?;
    if pool != subnet6 {
        return Err(DriverError(format!(
            "netpath: instance {} serves IPv6 subnet {subnet6}, not {pool}: create the network with --ipv6 --subnet {subnet6}",
            net.instance
        )));
    }
    let gateway = data.gateway.split('/').next().unwrap_or_default();
    if !gateway.is_empty() && gateway.parse::<Ipv6Addr>().ok() != Some(gateway6) {
        return Err(DriverError(format!(
            "netpath: the bridge's IPv6 address is {gateway6}, not {gateway}: create the network with --gateway {gateway6}"
        )));
    }
    Ok(())
}

/// Static routes for an endpoint on an overflow bridge (see
/// `agent::bridges`): Docker gives its address the /64 on-link, so the
/// gateway alone goes on-link (CONNECTED, 1) and the subnet's two halves,
/// more specific than the /64, via the gateway (NEXTHOP, 0): everything
/// in the subnet goes through the host, which routes each overflow
/// container to its bridge.
fn off_link_routes6(subnet6: ipnet::Ipv6Net, gateway6: Ipv6Addr) -> Value {
    let mut routes = vec![json!({ "Destination": format!("{gateway6}/128"), "RouteType": 1 })];
    if let Ok(halves) = subnet6.subnets(subnet6.prefix_len().saturating_add(1).min(128)) {
        for half in halves {
            routes.push(json!({ "Destination": half.to_string(), "RouteType": 0, "NextHop": gateway6.to_string() }));
        }
    }
    Value::Array(routes)
}

/// The `-p` bindings in an endpoint's options, as netpath ports. Refused:
/// what netpath cannot publish as asked (SCTP, a host port Docker leaves to
/// the driver to choose, a range to pick from).
fn ports_of(options: Option<&BTreeMap<String, Value>>) -> Result<Vec<PortRequest>, DriverError> {
    let Some(raw) = options.and_then(|o| o.get(PORTMAP_OPTION)) else { return Ok(vec![]) };
    let bindings: Vec<PortBinding> = match raw {
        Value::Null => vec![],
        v => serde_json::from_value(v.clone())
            .map_err(|e| DriverError(format!("netpath: invalid {PORTMAP_OPTION}: {e}")))?,
    };
    let mut ports = vec![];
    for b in bindings {
        let proto = Protocol::from_number(b.proto).ok_or_else(|| {
            DriverError(format!("netpath: protocol {} cannot be published (tcp and udp can)", b.proto))
        })?;
        // Docker's meaning: none, both families; `0.0.0.0`, IPv4 only;
        // `::`, IPv6 only (see `usable_ports`).
        let host_ip = match b.host_ip.as_str() {
            "" => None,
            ip => match ip.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => return Err(DriverError(format!("netpath: host IP {ip:?} is not an address"))),
            },
        };
        if b.host_port == 0 {
            return Err(DriverError(format!(
                "netpath: -p {}/{proto} leaves the host port to the driver; netpath publishes explicit ports: use -p HOSTPORT:{}",
                b.port, b.port
            )));
        }
        if b.host_port_end != 0 && b.host_port_end != b.host_port {
            return Err(DriverError(format!(
                "netpath: host port range {}-{} for one container port: give one host port per container port",
                b.host_port, b.host_port_end
            )));
        }
        ports.push(PortRequest { host_ip, host_port: b.host_port, container_port: b.port, proto });
    }
    Ok(ports)
}

/// The ports a container can publish: bindings on IPv6 host addresses are
/// skipped (with a warning) for a container without an IPv6 address, as
/// Docker skips them on a network without IPv6 (`-p [::]:8080:80` beside
/// `-p 0.0.0.0:8080:80`), rather than failing the container.
fn usable_ports(ports: &[PortRequest], has_ipv6: bool) -> Vec<PortRequest> {
    let (v6, rest): (Vec<&PortRequest>, Vec<&PortRequest>) =
        ports.iter().partition(|p| matches!(p.host_ip, Some(IpAddr::V6(_))));
    if !has_ipv6 {
        for p in v6 {
            tracing::warn!(
                "docker driver: skipping IPv6 binding {}{}/{} (the container has no IPv6 address)",
                host_prefix(p.host_ip),
                p.host_port,
                p.proto
            );
        }
        return rest.into_iter().cloned().collect();
    }
    ports.to_vec()
}

/// A port in `netpathctl map` syntax.
fn port_spec(p: &PortRequest, container: &str) -> String {
    let host = host_prefix(p.host_ip);
    format!("{host}{}:{container}:{}/{}", p.host_port, p.container_port, p.proto)
}

fn router(driver: Arc<Driver>) -> Router {
    macro_rules! call {
        ($method:ident) => {
            post(|State(d): State<Arc<Driver>>, body: Bytes| async move { answer(d.$method(body).await) })
        };
    }
    let constant = |v: Value| post(move || async move { answer(Ok(v)) });
    Router::new()
        .route("/Plugin.Activate", constant(json!({ "Implements": ["NetworkDriver"] })))
        .route("/NetworkDriver.GetCapabilities", constant(json!({ "Scope": "local", "ConnectivityScope": "local" })))
        .route("/NetworkDriver.CreateNetwork", call!(create_network))
        .route("/NetworkDriver.DeleteNetwork", constant(json!({})))
        .route("/NetworkDriver.CreateEndpoint", call!(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", call!(endpoint_oper_info))
        .route("/NetworkDriver.DeleteEndpoint", call!(delete_endpoint))
        .route("/NetworkDriver.Join", call!(join))
        .route("/NetworkDriver.Leave", call!(leave))
        .route("/NetworkDriver.ProgramExternalConnectivity", call!(program_external_connectivity))
        .route("/NetworkDriver.RevokeExternalConnectivity", call!(revoke_external_connectivity))
        .route("/NetworkDriver.DiscoverNew", constant(json!({})))
        .route("/NetworkDriver.DiscoverDelete", constant(json!({})))
        .fallback(|| async { answer(Err(DriverError("netpath: this driver does not implement that call".into()))) })
        .with_state(driver)
}

/// The driver's socket, bound, and the driver behind it.
pub struct DockerPlugin {
    listener: tokio::net::UnixListener,
    socket: PathBuf,
    driver: Arc<Driver>,
    /// Directories the agent created for the socket (removed again when
    /// empty), innermost first.
    created_dirs: Vec<PathBuf>,
}

impl DockerPlugin {
    /// Binds the plugin socket of driver `name` (so that a start-up error
    /// stops the agent at once). Endpoints created before a restart are
    /// read back from the state directory.
    pub async fn bind(
        agent: Arc<Agent>,
        name: &str,
        state_dir: &Path,
        docker_host: Option<&Path>,
    ) -> Result<DockerPlugin> {
        crate::config::validate_name("docker plugin", name, 64)?;
        let file = state_dir.join("docker-endpoints.json");
        let endpoints = match std::fs::read(&file) {
            Ok(data) => serde_json::from_slice(&data).with_context(|| format!("reading {}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let driver = Arc::new(Driver {
            agent,
            file,
            endpoints: Mutex::new(endpoints),
            docker_host: docker_host.map(Path::to_path_buf),
        });
        let socket = socket_path(name);
        let created_dirs: Vec<PathBuf> =
            Path::new(PLUGIN_DIR).ancestors().take_while(|d| !d.exists()).map(Path::to_path_buf).collect();
        std::fs::create_dir_all(PLUGIN_DIR).with_context(|| format!("creating {PLUGIN_DIR}"))?;
        if socket.exists() {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                bail!("another process serves the Docker plugin {}", socket.display());
            }
            std::fs::remove_file(&socket).with_context(|| format!("removing stale socket {}", socket.display()))?;
        }
        let listener =
            tokio::net::UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
        tracing::info!("Docker network driver {name:?} listening on {}", socket.display());
        Ok(DockerPlugin { listener, socket, driver, created_dirs })
    }

    /// Serves until `shutdown` completes, then removes the socket (and
    /// the directories it created, if nothing else is in them).
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
        let names = self.driver.docker_host.clone().map(|docker| {
            let driver = self.driver.clone();
            tokio::spawn(async move {
                let mut failing = false;
                loop {
                    tokio::time::sleep(NAME_SYNC_INTERVAL).await;
                    // dockerd may start after the agent, or restart: say so
                    // once per outage.
                    match driver.sync_names(&docker).await {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!("asking dockerd at {} for container names: {e:#}", docker.display());
                        }
                        Err(_) => {}
                    }
                }
            })
        });
        let served = axum::serve(self.listener, router(self.driver)).with_graceful_shutdown(shutdown).await;
        if let Some(names) = names {
            names.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
        for dir in &self.created_dirs {
            // Fails (and stops) at the first one that is not empty.
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        served.context("serving the Docker plugin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(portmap: Value) -> BTreeMap<String, Value> {
        BTreeMap::from([(PORTMAP_OPTION.to_string(), portmap)])
    }

    #[test]
    fn docker_port_bindings_become_netpath_ports() {
        let o = options(json!([
            {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "Port": 53, "HostIP": "198.18.0.1", "HostPort": 5353, "HostPortEnd": 5353},
            {"Proto": 6, "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080},
        ]));
        let ports = ports_of(Some(&o)).map_err(|e| e.0).unwrap();
        let v4 = vec![
            PortRequest { host_ip: None, host_port: 8080, container_port: 80, proto: Protocol::Tcp },
            PortRequest {
                host_ip: Some(Ipv4Addr::new(198, 18, 0, 1).into()),
                host_port: 5353,
                container_port: 53,
                proto: Protocol::Udp,
            },
        ];
        let v6 = PortRequest {
            host_ip: Some(std::net::Ipv6Addr::UNSPECIFIED.into()),
            host_port: 8080,
            container_port: 80,
            proto: Protocol::Tcp,
        };
        assert_eq!(ports, [v4.clone(), vec![v6.clone()]].concat());
        // The IPv6 binding waits for a container with an IPv6 address.
        assert_eq!(usable_ports(&ports, false), v4);
        assert_eq!(usable_ports(&ports, true), ports);
        assert_eq!(port_spec(&ports[1], "docker-abc"), "198.18.0.1:5353:docker-abc:53/udp");
        assert_eq!(port_spec(&v6, "docker-abc"), "[::]:8080:docker-abc:80/tcp");
        // 0.0.0.0 is IPv4 only: it does not clash with a [::] binding of the
        // same port.
        let o = options(json!([{"Proto": 6, "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8080, "HostPortEnd": 8080}]));
        assert_eq!(ports_of(Some(&o)).map_err(|e| e.0).unwrap()[0].host_ip, Some(Ipv4Addr::UNSPECIFIED.into()));
        assert!(ports_of(None).unwrap().is_empty());
        assert!(ports_of(Some(&options(Value::Null))).unwrap().is_empty());
    }

    #[test]
    fn bindings_netpath_cannot_honour_are_refused_by_name() {
        let refused = |b: Value| ports_of(Some(&options(json!([b])))).map(|_| ()).unwrap_err().0;
        let e = refused(json!({"Proto": 132, "Port": 80, "HostPort": 80, "HostPortEnd": 80}));
        assert!(e.contains("protocol 132"), "{e}");
        let e = refused(json!({"Proto": 6, "Port": 80, "HostPort": 0, "HostPortEnd": 0}));
        assert!(e.contains("use -p HOSTPORT:80"), "{e}");
        let e = refused(json!({"Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 8010}));
        assert!(e.contains("8000-8010"), "{e}");
        let e = refused(json!({"Proto": 6, "Port": 80, "HostIP": "nowhere", "HostPort": 80}));
        assert!(e.contains("\"nowhere\""), "{e}");
        let e = ports_of(Some(&options(json!({"not": "a list"})))).map(|_| ()).unwrap_err().0;
        assert!(e.contains(PORTMAP_OPTION), "{e}");
    }

    fn network(subnet6: Option<&str>) -> NetworkInfo {
        let subnet6: Option<ipnet::Ipv6Net> = subnet6.map(|s| s.parse().unwrap());
        NetworkInfo {
            instance: "np".into(),
            bridge: "np0".into(),
            subnet: Some("10.77.0.0/16".parse().unwrap()),
            gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
            gateway6: subnet6.map(|s| Ipv6Addr::from(u128::from(s.network()) + 1)),
            subnet6,
            mtu: 1500,
        }
    }

    #[test]
    fn an_ipv6_pool_must_be_the_instances_subnet6() {
        let pool = |pool: &str, gateway: &str| IpamData { pool: pool.into(), gateway: gateway.into() };
        let dual = network(Some("fd00:77::/64"));
        assert!(check_ipv6_pool(&[], &dual).is_ok());
        assert!(check_ipv6_pool(&[pool("fd00:77::/64", "")], &dual).is_ok());
        assert!(check_ipv6_pool(&[pool("fd00:77::/64", "fd00:77::1/64")], &dual).is_ok());
        let e = check_ipv6_pool(&[pool("fd00:99::/64", "")], &dual).unwrap_err().0;
        assert!(e.contains("create the network with --ipv6 --subnet fd00:77::/64"), "{e}");
        let e = check_ipv6_pool(&[pool("fd00:77::/64", "fd00:77::9")], &dual).unwrap_err().0;
        assert!(e.contains("--gateway fd00:77::1"), "{e}");
        let e = check_ipv6_pool(&[pool("nonsense", "")], &dual).unwrap_err().0;
        assert!(e.contains("\"nonsense\""), "{e}");
        let e = check_ipv6_pool(&[pool("fd00:77::/64", ""), pool("fd00:78::/64", "")], &dual).unwrap_err().0;
        assert!(e.contains("at most one IPv6 pool, got 2"), "{e}");
        let e = check_ipv6_pool(&[pool("fd00:77::/64", "")], &network(None)).unwrap_err().0;
        assert!(e.contains("without --ipv6"), "{e}");
    }

    #[test]
    fn an_overflow_endpoint_reaches_its_subnet_through_the_gateway() {
        let routes = off_link_routes6("fd00:77::/64".parse().unwrap(), "fd00:77::1".parse().unwrap());
        assert_eq!(
            routes,
            json!([
                {"Destination": "fd00:77::1/128", "RouteType": 1},
                {"Destination": "fd00:77::/65", "RouteType": 0, "NextHop": "fd00:77::1"},
                {"Destination": "fd00:77:0:0:8000::/65", "RouteType": 0, "NextHop": "fd00:77::1"},
            ])
        );
    }

    #[test]
    fn names_fit_the_agent_and_owners_carry_the_ids() {
        let eid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(Driver::container_name(eid), "docker-0123456789ab");
        assert_eq!(Driver::owner("net1", eid), format!("docker:net1:{eid}"));
        assert_eq!(socket_path("np"), PathBuf::from("/run/docker/plugins/np.sock"));
    }
}
