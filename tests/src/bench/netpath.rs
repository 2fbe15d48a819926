//! netpath: the agent (release build) in the host namespace, one
//! container, ports published through the API by an in-process client.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netpath_common::{conntrack::CtState, CtTimeouts};
use netpath_tests::topology::{Topology, HOST_UPLINK, HOST_UPLINK_IP};
use netpath_userspace::{
    client::Client,
    model::{Flow, Mapping, MappingRequest, StatsView, Status},
};
use serde::{de::DeserializeOwned, Serialize};

use super::bed::{filler, AddOne, Bed, HostPort, CONTAINER_PORT, HIT_PORT};

pub struct NetpathBed {
    topo: Topology,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Filler ports published so far (`filler(0..fillers)`).
    fillers: usize,
    hit_published: bool,
    uplink_xdp: bool,
    /// The containers' addresses as the agent gave them, `c1` first.
    container_ips: Vec<Ipv4Addr>,
}

impl NetpathBed {
    /// The agent with its default settings, and container `c1`.
    pub fn new() -> Result<NetpathBed> {
        Self::with_args(&[])
    }

    /// The agent started with `args` on top of the defaults, and `c1`.
    pub fn with_args(args: &[&str]) -> Result<NetpathBed> {
        Self::build(args, false, 1)
    }

    /// [`NetpathBed::with_args`] with containers `c1`..`c<containers>`.
    pub fn with_containers(args: &[&str], containers: usize) -> Result<NetpathBed> {
        Self::build(args, false, containers)
    }

    /// [`NetpathBed::with_args`] with IPv6 on the uplink pair too (the
    /// instance carries IPv6 by default, so `c1` gets an address).
    pub fn dual_stack(args: &[&str]) -> Result<NetpathBed> {
        Self::build(args, true, 1)
    }

    fn build(args: &[&str], ipv6_uplink: bool, containers: usize) -> Result<NetpathBed> {
        let mut topo = Topology::new(containers)?;
        if ipv6_uplink {
            topo.add_ipv6_uplink()?;
        }
        // As on the plain beds: netpath has no use for br_netfilter.
        super::plain::bridge_netfilter(&topo, false)?;
        topo.agent_args(args);
        topo.start_agent()?;
        let mut container_ips = vec![];
        for i in 1..=containers {
            let c = topo.add_container(i)?;
            container_ips.push(c.ip.with_context(|| format!("container c{i} got no IPv4 address"))?);
        }
        // The agent decides whether XDP goes on the uplink (not on a veth by default).
        let link = topo.exec(&topo.host, &["ip", "link", "show", HOST_UPLINK])?;
        let uplink_xdp = String::from_utf8_lossy(&link.stdout).contains("xdp");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
        let client = Client::new(&topo.socket());
        Ok(NetpathBed { topo, rt, client, fillers: 0, hit_published: false, uplink_xdp, container_ips })
    }

    /// Container `c<i>`'s IPv4 address (1-based).
    pub fn container_ip(&self, i: usize) -> Option<Ipv4Addr> {
        i.checked_sub(1).and_then(|k| self.container_ips.get(k)).copied()
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.rt.block_on(self.client.get(path)).with_context(|| format!("GET {path}"))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.rt.block_on(self.client.post(path, body)).with_context(|| format!("POST {path}"))
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.rt.block_on(self.client.put(path, body)).with_context(|| format!("PUT {path}"))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.rt.block_on(self.client.delete(path)).with_context(|| format!("DELETE {path}"))
    }

    pub fn xdp_note(&self) -> String {
        let xdp = if self.uplink_xdp { "attached" } else { "not attached" };
        format!("XDP program on the uplink `{HOST_UPLINK}` (a veth here): {xdp}")
    }

    fn spec(host: HostPort) -> String {
        match host.addr {
            Some(addr) => format!("{addr}:{}:c1:{CONTAINER_PORT}", host.port),
            None => format!("{}:c1:{CONTAINER_PORT}", host.port),
        }
    }

    /// `POST /v1/mappings`; returns the call's round-trip time.
    fn map(&self, port: u16) -> Result<Duration> {
        let spec = Self::spec(HostPort { addr: None, port });
        let start = Instant::now();
        let _: Vec<Mapping> = self
            .rt
            .block_on(self.client.post("/mappings", &MappingRequest::one(spec.clone())))
            .with_context(|| format!("publishing {spec}"))?;
        Ok(start.elapsed())
    }

    fn unmap(&self, port: u16) -> Result<()> {
        let spec = Self::spec(HostPort { addr: None, port });
        let _: Vec<Mapping> = self
            .rt
            .block_on(self.client.post("/mappings/unmap", &MappingRequest::one(spec.clone())))
            .with_context(|| format!("unpublishing {spec}"))?;
        Ok(())
    }
}

impl Bed for NetpathBed {
    fn topology(&self) -> &Topology {
        &self.topo
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(HOST_UPLINK_IP, HIT_PORT)
    }

    /// Grows to `ports` in one bulk API call (`"specs": [...]`, all or
    /// nothing), as the other variants load a whole ruleset; the hit port is
    /// taken out first and published again last.
    fn publish(&mut self, ports: usize) -> Result<Duration> {
        let wanted_fillers = ports.saturating_sub(1);
        if wanted_fillers < self.fillers {
            bail!("the netpath bed only grows ({} ports published, {ports} asked)", self.fillers + 1);
        }
        let start = Instant::now();
        if self.hit_published {
            self.unmap(HIT_PORT)?;
            self.hit_published = false;
        }
        super::check_interrupted()?;
        let mut specs: Vec<String> = (self.fillers..wanted_fillers).map(|i| Self::spec(filler(i))).collect();
        specs.push(Self::spec(HostPort { addr: None, port: HIT_PORT }));
        let request = MappingRequest { spec: None, specs };
        let _: Vec<Mapping> = self
            .rt
            .block_on(self.client.post("/mappings", &request))
            .with_context(|| format!("publishing {} ports in one call", request.specs.len()))?;
        self.fillers = wanted_fillers;
        self.hit_published = true;
        Ok(start.elapsed())
    }

    fn add_one(&mut self, port: u16) -> Result<Option<AddOne>> {
        let took = self.map(port)?;
        Ok(Some(AddOne { op: took, full: took }))
    }

    fn notes(&self) -> Vec<String> {
        vec![format!("netpath: netpathd with its default settings; {}", self.xdp_note())]
    }
}

impl NetpathBed {
    /// Drops by reason (uplink and containers, non-zero only) and the fill
    /// of the conntrack table, for the report: evidence that a measurement
    /// ran without the datapath refusing anything.
    pub fn counters_note(&self) -> Result<String> {
        let stats: StatsView = self.get("/stats")?;
        let status: Status = self.get("/status")?;
        let drops = |d: &std::collections::BTreeMap<String, u64>| {
            if d.is_empty() {
                "none".to_string()
            } else {
                d.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
            }
        };
        let mut parts = vec![];
        if let Some(up) = &stats.uplink {
            parts.push(format!("uplink drops: {}", drops(&up.drops)));
        }
        for c in &stats.containers {
            parts.push(format!("{} drops: {}", c.container.name, drops(&c.stats.drops)));
        }
        if let Some(ct) = status.maps.iter().find(|m| m.name == netpath_common::maps::CT4) {
            parts.push(format!("CT4 entries {} of {}", ct.entries, ct.max_entries));
        }
        Ok(parts.join("; "))
    }

    /// The tracked flows after loads of connections closed with RST, and
    /// when those flows go. A flow's state lives in each direction's
    /// entry and the agent collects a flow only when both have expired, so
    /// how long a reset flow stays is up to its other direction.
    pub fn reset_flows_note(&self) -> Result<String> {
        let flows: Vec<Flow> = self.get("/conntrack")?;
        let mut scopes: std::collections::BTreeMap<&str, usize> = Default::default();
        for f in &flows {
            *scopes.entry(f.scope.as_str()).or_default() += 1;
        }
        let scopes: Vec<String> = scopes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let reset: Vec<&Flow> = flows.iter().filter(|f| f.state == CtState::Reset.name()).collect();
        let t = CtTimeouts::default();
        let within =
            |lo: u32, hi: u32| reset.iter().filter(|f| f.expires_in > lo as i64 && f.expires_in <= hi as i64).count();
        Ok(format!(
            "{} flows tracked ({}); {} of them saw a RST, and go in at most {} s (the reset timeout): {}, in {}-{} s: {}, \
             in more than {} s: {}",
            flows.len(),
            scopes.join(", "),
            reset.len(),
            t.tcp_reset,
            within(0, t.tcp_reset) + reset.iter().filter(|f| f.expires_in <= 0).count(),
            t.tcp_reset,
            t.tcp_closing,
            within(t.tcp_reset, t.tcp_closing),
            t.tcp_closing,
            within(t.tcp_closing, u32::MAX),
        ))
    }

    /// Entries in the conntrack table (both directions, every scope).
    pub fn ct_entries(&self) -> Result<u64> {
        let status: Status = self.get("/status")?;
        status
            .maps
            .iter()
            .find(|m| m.name == netpath_common::maps::CT4)
            .map(|m| m.entries)
            .context("no CT4 in the agent's status")
    }
}
