//! netpath: the agent (release build) in the host namespace, one
//! container, ports published through the API by an in-process client.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netpath_tests::topology::{Topology, HOST_UPLINK, HOST_UPLINK_IP};
use netpath_userspace::{
    client::Client,
    model::{Mapping, MappingRequest},
};

use super::bed::{filler_port, AddOne, Bed, CONTAINER_PORT, HIT_PORT};

pub struct NetpathBed {
    topo: Topology,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Filler ports published so far (ports 0..fillers of `filler_port`).
    fillers: usize,
    hit_published: bool,
    uplink_xdp: bool,
}

impl NetpathBed {
    pub fn new() -> Result<NetpathBed> {
        let mut topo = Topology::new(1)?;
        topo.start_agent()?;
        topo.add_container(1)?;
        // The agent decides whether XDP goes on the uplink (not on a veth by default).
        let link = topo.exec(&topo.host, &["ip", "link", "show", HOST_UPLINK])?;
        let uplink_xdp = String::from_utf8_lossy(&link.stdout).contains("xdp");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
        let client = Client::new(&topo.socket());
        Ok(NetpathBed { topo, rt, client, fillers: 0, hit_published: false, uplink_xdp })
    }

    fn spec(port: u16) -> String {
        format!("{port}:c1:{CONTAINER_PORT}")
    }

    /// `POST /v1/mappings`; returns the call's round-trip time.
    fn map(&self, port: u16) -> Result<Duration> {
        let req = MappingRequest { spec: Self::spec(port) };
        let start = Instant::now();
        let _: Vec<Mapping> = self.rt.block_on(self.client.post("/v1/mappings", &req)).with_context(|| format!("publishing {}", req.spec))?;
        Ok(start.elapsed())
    }

    fn unmap(&self, port: u16) -> Result<()> {
        let req = MappingRequest { spec: Self::spec(port) };
        let _: Vec<Mapping> = self.rt.block_on(self.client.post("/v1/mappings/unmap", &req)).with_context(|| format!("unpublishing {}", req.spec))?;
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

    /// Grows to `ports` one API call per port; the hit port is taken out
    /// first and published again last, as in the other variants.
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
        for i in self.fillers..wanted_fillers {
            super::check_interrupted()?;
            self.map(filler_port(i))?;
            self.fillers = i + 1;
        }
        self.map(HIT_PORT)?;
        self.hit_published = true;
        Ok(start.elapsed())
    }

    fn add_one(&mut self, port: u16) -> Result<Option<AddOne>> {
        let took = self.map(port)?;
        Ok(Some(AddOne { op: took, full: took }))
    }

    fn notes(&self) -> Vec<String> {
        let xdp = if self.uplink_xdp { "attached" } else { "not attached" };
        vec![format!("netpath: netpathd with its default settings; XDP program on the uplink `{HOST_UPLINK}` (a veth here): {xdp}")]
    }
}
