//! Prometheus metrics: `GET /metrics` on the API socket, and on
//! `metrics_address` when configured. Each scrape reads the datapath's
//! counters afresh (as `status` does) into a registry of its own; only the
//! API's request counters and latency histograms live between scrapes.
//! Names follow Prometheus conventions (`netpath_` prefix, `_total` on
//! counters, units in names); the README lists them.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::{MatchedPath, OriginalUri, Request, State},
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
    },
    registry::Registry,
};

use tracing::Instrument as _;

use crate::{
    agent::{Agent, AgentError},
    datapath::DESTINATION_PORT_BUCKETS,
};

/// The content type of the OpenMetrics text format `encode` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// Latency buckets: 50 µs to ~1.6 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// API requests and their latency, by route (the route's pattern, e.g.
/// `/v1/containers/{name}`, so that names do not make new series).
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// When the agent started, for `netpath_agent_start_time_seconds`.
    started: SystemTime,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            started: SystemTime::now(),
        }
    }
}

impl ApiMetrics {
    pub fn observe(&self, method: &str, route: &str, code: u16, elapsed: Duration) {
        let (method, route) = (method.to_string(), route.to_string());
        self.requests
            .get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), code: code.to_string() })
            .inc();
        self.duration.get_or_create(&RouteLabels { method, route }).observe(elapsed.as_secs_f64());
    }
}

/// Numbers the API's requests for the logs.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// Middleware on the API's routes: counts every request and its latency,
/// and runs it in a `request` span, so that every log line a change writes
/// names the request that caused it (id, method, path).
pub async fn track(State(agent): State<std::sync::Arc<Agent>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let span = tracing::info_span!(
        "request",
        id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed),
        method = %method,
        // The path as the client sent it (routing strips the /v1 prefix).
        path = %req.extensions().get::<OriginalUri>().map_or(req.uri(), |u| &u.0).path(),
    );
    let resp = next.run(req).instrument(span).await;
    agent.api_metrics().observe(&method, &route, resp.status().as_u16(), started.elapsed());
    resp
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerDirection {
    container: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerReason {
    container: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingLabels {
    mapping: String,
    id: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortsInUse {
    ports_in_use: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<u64, std::sync::atomic::AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// One counter per label set, each read from the agent's atomic counter.
fn labelled_counters<L, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    counts: [(L, &std::sync::atomic::AtomicU64); N],
) where
    L: EncodeLabelSet + Clone + std::fmt::Debug + std::hash::Hash + Eq + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    for (label, n) in counts {
        family.get_or_create(&label).inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
    }
    registry.register(name, help, family);
}

/// Everything a scrape shows, in the OpenMetrics text format.
pub async fn render(agent: &Agent) -> Result<String, AgentError> {
    let status = agent.status().await?;
    let gc = agent.gc_report();
    let mappings = agent.mappings().await?;
    let starts = agent.starts().await;
    let mut reg = Registry::with_prefix("netpath");

    reg.register("build", "netpath's version", Info::new(vec![("version", status.version.clone())]));
    counter(&mut reg, "agent_starts", "Agent starts on this instance's state, this one included", starts);
    let started = agent.api_metrics().started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    gauge(&mut reg, "agent_start_time_seconds", "When this agent started (Unix time)", started.as_secs());
    gauge(&mut reg, "agent_resident_memory_bytes", "The agent's resident memory", status.agent_memory_bytes);
    counter(
        &mut reg,
        "pins_restored",
        "Times the instance's pins vanished under the running agent (bpffs wiped or unmounted) and were put back",
        agent.pins_restored(),
    );
    let (syncs, synced_changes) = agent.state_syncs();
    counter(
        &mut reg,
        "state_syncs",
        "Syncs of the state journal before answering (one covers every change written before it)",
        syncs,
    );
    counter(&mut reg, "state_synced_changes", "Changes made durable by those syncs", synced_changes);
    let lost = agent.interfaces_lost();
    labelled_counters(
        &mut reg,
        "interfaces_lost",
        "Interfaces deleted behind the agent's back: a container whose veth went is removed, a bridge is rebuilt",
        [(KindLabel { kind: "veth" }, &lost.veths), (KindLabel { kind: "bridge" }, &lost.bridges)],
    );
    let changes = agent.masquerade_address_changes();
    labelled_counters(
        &mut reg,
        "masquerade_address_changes",
        "Times the uplink's masquerade address changed under the running agent (to another address, or to none: \
         masquerade paused); flows translated to an address the host no longer has are forgotten",
        [(FamilyLabel { family: "ipv4" }, &changes.ipv4), (FamilyLabel { family: "ipv6" }, &changes.ipv6)],
    );
    gauge(&mut reg, "containers", "Containers attached", status.containers.len() as u64);
    gauge(&mut reg, "mappings", "Published port mappings", status.mappings as u64);

    let packets = Family::<ContainerDirection, Counter>::default();
    let bytes = Family::<ContainerDirection, Counter>::default();
    let drops = Family::<ContainerReason, Counter>::default();
    let interfaces = status
        .containers
        .iter()
        .map(|c| (c.container.name.clone(), &c.stats))
        .chain(status.uplink_stats.iter().map(|s| ("uplink".to_string(), s)));
    for (container, s) in interfaces {
        for (direction, p, b) in [("rx", s.rx_packets, s.rx_bytes), ("tx", s.tx_packets, s.tx_bytes)] {
            let labels = ContainerDirection { container: container.clone(), direction };
            packets.get_or_create(&labels).inc_by(p);
            bytes.get_or_create(&labels).inc_by(b);
        }
        for (reason, n) in &s.drops {
            drops.get_or_create(&ContainerReason { container: container.clone(), reason: reason.clone() }).inc_by(*n);
        }
    }
    reg.register(
        "container_packets",
        "Packets from (rx) and to (tx) each container, as the datapath counted them; container=\"uplink\" for the uplink",
        packets,
    );
    reg.register(
        "container_bytes",
        "Bytes from (rx) and to (tx) each container; container=\"uplink\" for the uplink",
        bytes,
    );
    reg.register("container_drops", "Packets the datapath dropped, by container and reason", drops);
    let unattributed = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in &status.unattributed_drops {
        unattributed.get_or_create(&ReasonLabel { reason: reason.clone() }).inc_by(*n);
    }
    reg.register(
        "unattributed_drops",
        "Packets dropped on veths the datapath has no container for (their entry gone: they fail closed), by reason",
        unattributed,
    );

    let flows = Family::<MappingLabels, Gauge>::default();
    for m in &mappings {
        let n = gc.flows_by_mapping.get(&m.id).copied().unwrap_or(0);
        flows
            .get_or_create(&MappingLabels { mapping: m.spec(), id: m.id.to_string(), container: m.container.clone() })
            .set(n as i64);
    }
    reg.register("mapping_flows", "Tracked flows through each published port mapping (at the last GC walk)", flows);

    let ct = &status.conntrack;
    gauge(&mut reg, "conntrack_entries", "Conntrack entries (both families, at the last GC walk)", ct.entries);
    gauge(&mut reg, "conntrack_max_entries", "Capacity of the IPv4 conntrack table", ct.max_entries.into());
    counter(&mut reg, "conntrack_inserts", "Conntrack entries the datapath inserted", ct.inserts);
    counter(&mut reg, "conntrack_insert_failures", "Conntrack inserts that failed", ct.insert_failures);
    counter(&mut reg, "conntrack_evictions", "Conntrack entries the LRU evicted", ct.evictions);
    gauge(&mut reg, "conntrack_pressure", "1 while the conntrack table is under pressure", ct.pressure.into());
    counter(&mut reg, "conntrack_gc_runs", "Conntrack GC rounds", ct.gc_runs);
    counter(&mut reg, "conntrack_gc_flows_removed", "Flows the conntrack GC removed", ct.gc_flows_removed);
    let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last.set(ct.gc_last_us as f64 / 1e6);
    reg.register("conntrack_gc_last_duration_seconds", "How long the last conntrack GC round took", last);

    let entries = Family::<MapLabels, Gauge>::default();
    let capacity = Family::<MapLabels, Gauge>::default();
    let memory = Family::<MapLabels, Gauge>::default();
    for m in &status.maps {
        let labels = MapLabels { map: m.name.clone() };
        entries.get_or_create(&labels).set(m.entries as i64);
        capacity.get_or_create(&labels).set(m.max_entries.into());
        memory.get_or_create(&labels).set(m.memory_bytes as i64);
    }
    reg.register("map_entries", "Entries in each BPF map (fill level)", entries);
    reg.register("map_max_entries", "Capacity of each BPF map", capacity);
    reg.register("map_memory_bytes", "Memory the kernel reports for each BPF map", memory);

    gauge(&mut reg, "masquerade_flows", "Masqueraded flows (at the last GC walk)", gc.masquerade_flows);
    gauge(
        &mut reg,
        "masquerade_busiest_destination_ports",
        "Masquerade ports in use toward the busiest destination (address, port, protocol) at the last GC walk",
        gc.masquerade_busiest_destination,
    );
    let destinations = Family::<PortsInUse, Gauge>::default();
    for ((bucket, _), n) in DESTINATION_PORT_BUCKETS.iter().zip(gc.masquerade_destinations) {
        destinations.get_or_create(&PortsInUse { ports_in_use: bucket.to_string() }).set(n as i64);
    }
    reg.register(
        "masquerade_destinations",
        "Destinations (address, port, protocol) by the masquerade ports in use toward them at the last GC walk",
        destinations,
    );
    let range: Vec<u64> = status.masquerade_ports.split('-').filter_map(|p| p.parse().ok()).collect();
    let size = match range[..] {
        [lo, hi] if hi >= lo => hi - lo + 1,
        _ => 0,
    };
    gauge(&mut reg, "masquerade_ports", "Ports the masquerade allocates per destination", size);

    let redirected = Family::<NameLabel, Counter>::default();
    for (path, n) in &status.fast_path.redirected {
        redirected.get_or_create(&NameLabel { name: path.clone() }).inc_by(*n);
    }
    reg.register("fast_path_redirected_packets", "Packets the fast path redirected, by path", redirected);
    let fallbacks = Family::<NameLabel, Counter>::default();
    for (reason, n) in &status.fast_path.fallbacks {
        fallbacks.get_or_create(&NameLabel { name: reason.clone() }).inc_by(*n);
    }
    reg.register("fast_path_fallback_packets", "Packets the fast path handed to the stack, by reason", fallbacks);
    counter(
        &mut reg,
        "drop_events_suppressed",
        "Drop events not sent to monitors (rate limit)",
        status.drop_events_suppressed,
    );

    let api = agent.api_metrics();
    reg.register("api_requests", "API requests, by method, route and status code", api.requests.clone());
    reg.register("api_request_duration_seconds", "API request latency, by method and route", api.duration.clone());

    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| anyhow::anyhow!("encoding metrics: {e}"))?;
    Ok(out)
}
