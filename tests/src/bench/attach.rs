//! The attach curve (control section): containers attached one after the
//! other through the API, each into a namespace of its own, up to
//! [`CONTAINERS`]; the time of each `POST /v1/containers` (veth pair,
//! addresses, routes, tcx programs, maps, state), and the agent's memory
//! before and after. Attaching must not get slower as containers pile up.
//!
//! Beside it, in the same run, the kernel's part: every
//! [`KERNEL_SAMPLE_EVERY`] containers, the two tcx attachments a
//! container's veth gets (ingress and egress), of a bare program on a veth
//! of the benchmark's own ([`KernelAttach`]). Each tcx attachment waits for
//! an RCU grace period under the RTNL lock (the kernel publishes the
//! interface's new program list, then waits until no CPU can still run the
//! old one), which is most of a container's attach time and moves with the
//! machine, not with netpath.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netpath_tests::topology::Topology;
use netpath_userspace::{
    client::Client,
    model::{Container, Status},
};
use serde::Serialize;

use super::baseline_prog::{tcx_link, EmptyProgram};
use super::options::{Options, Section};
use super::results::Target;

/// Containers attached in a full run (the quick run attaches a tenth):
/// past the 1023 one Linux bridge takes, so that the instance opens an
/// overflow bridge on the way.
pub const CONTAINERS: usize = 2000;
/// Attach times compared: the first and the last this many.
const EDGE: usize = 100;
/// Points of the curve reported: the median of every this many.
pub const STEP: usize = 100;
/// Containers attached between two samples of the kernel's own part.
const KERNEL_SAMPLE_EVERY: usize = 5;

#[derive(Clone, Debug, Default, Serialize)]
pub struct AttachFigures {
    pub containers: usize,
    /// Median attach time of each successive [`STEP`] containers, ms.
    pub curve_ms: Vec<f64>,
    pub first_ms: f64,
    pub last_ms: f64,
    /// The kernel's two tcx attachments of a bare program, sampled beside
    /// each [`STEP`] containers: medians, ms.
    pub kernel_curve_ms: Vec<f64>,
    /// Their medians beside the first and the last [`EDGE`] containers.
    pub kernel_first_ms: f64,
    pub kernel_last_ms: f64,
    pub total_s: f64,
    pub agent_memory_before_bytes: u64,
    pub agent_memory_after_bytes: u64,
    /// The instance's bridges at the end, with their containers.
    pub bridges: Vec<(String, usize)>,
    /// Stopping the agent (SIGTERM) and starting it again over every
    /// container: from the start until its API answers, s.
    pub restart_s: f64,
}

impl AttachFigures {
    pub fn targets(&self) -> Vec<Target> {
        let n = self.containers;
        let ratio = self.last_ms / self.first_ms;
        vec![Target::new(
            Section::Control.name(),
            &format!("control: attaching the last {EDGE} of {n} containers takes within 20% of the first {EDGE}"),
            format!(
                "median {:.1} ms vs {:.1} ms ({ratio:.2}x); the kernel's two tcx attachments alone (a bare \
                 program's, sampled in the same run) {:.1} ms vs {:.1} ms ({:.2}x); agent memory {:.1} -> {:.1} MiB",
                self.last_ms,
                self.first_ms,
                self.kernel_last_ms,
                self.kernel_first_ms,
                self.kernel_last_ms / self.kernel_first_ms,
                self.agent_memory_before_bytes as f64 / 1048576.0,
                self.agent_memory_after_bytes as f64 / 1048576.0
            ),
            ratio <= 1.2,
        )]
    }
}

pub fn run(opts: &Options) -> Result<AttachFigures> {
    let n = if opts.quick { CONTAINERS / 10 } else { CONTAINERS };
    eprintln!("== control: attaching {n} containers");
    let mut topo = Topology::new(0)?;
    // Room for every container: a /20 (4094 addresses) instead of the
    // harness's /24, in this bed's own namespaces.
    let second = topo.subnet.split('.').nth(1).unwrap_or("200").to_string();
    topo.subnet = format!("10.{second}.240.0/20");
    topo.start_agent()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let client = Client::new(&topo.socket());
    let status = |client: &Client| -> Result<Status> { rt.block_on(client.get("/status")).context("GET /status") };
    let before = status(&client)?;
    let kernel = KernelAttach::new(&mut topo)?;
    let started = Instant::now();
    let mut took = Vec::with_capacity(n);
    // (container index, the kernel's two attachments) every few containers.
    let mut kernel_took = Vec::with_capacity(n / KERNEL_SAMPLE_EVERY + 1);
    for i in 0..n {
        if i % KERNEL_SAMPLE_EVERY == 0 {
            kernel_took.push((i, kernel.sample(&topo)?));
        }
        let name = format!("a{i}");
        let netns = topo.new_netns(&name)?;
        let request = serde_json::json!({ "name": name, "netns": netns });
        let t = Instant::now();
        let _: Container =
            rt.block_on(client.post("/containers", &request)).with_context(|| format!("attaching container {name}"))?;
        took.push(t.elapsed());
        if i % 50 == 0 {
            super::check_interrupted()?;
        }
    }
    let total = started.elapsed();
    let after = status(&client)?;
    // A restart adopts every container (bridges, routes, programs, maps).
    topo.stop_agent()?;
    let restart = Instant::now();
    topo.start_agent()?;
    let restart_s = restart.elapsed().as_secs_f64();
    let adopted = status(&client)?;
    anyhow::ensure!(
        adopted.containers.len() == n,
        "the restarted agent has {} containers, not {n}",
        adopted.containers.len()
    );
    let curve_ms: Vec<f64> = took.chunks(STEP).map(median_ms).collect();
    let edge = EDGE.min(n / 2);
    let kernel_in = |range: std::ops::Range<usize>| {
        let samples: Vec<Duration> = kernel_took.iter().filter(|(i, _)| range.contains(i)).map(|(_, d)| *d).collect();
        median_ms(&samples)
    };
    let figures = AttachFigures {
        containers: n,
        first_ms: median_ms(&took[..edge]),
        last_ms: median_ms(&took[n - edge..]),
        kernel_curve_ms: (0..n.div_ceil(STEP)).map(|c| kernel_in(c * STEP..(c + 1) * STEP)).collect(),
        kernel_first_ms: kernel_in(0..edge),
        kernel_last_ms: kernel_in(n - edge..n),
        curve_ms,
        total_s: total.as_secs_f64(),
        agent_memory_before_bytes: before.agent_memory_bytes,
        agent_memory_after_bytes: after.agent_memory_bytes,
        bridges: after.bridges.iter().map(|b| (b.name.clone(), b.containers)).collect(),
        restart_s,
    };
    eprintln!(
        "   first {edge}: {:.1} ms, last {edge}: {:.1} ms (the kernel's tcx attachments {:.1} -> {:.1} ms), {:.0} s \
         in all; restart over them {:.1} s",
        figures.first_ms,
        figures.last_ms,
        figures.kernel_first_ms,
        figures.kernel_last_ms,
        figures.total_s,
        figures.restart_s
    );
    Ok(figures)
}

/// The kernel's part of a container's attach, measured apart: the two tcx
/// attachments of a bare program (`r0 = 0; exit`) on a veth in a namespace
/// of the benchmark's own, the links closed again after each sample (so
/// that each sample, as each container, starts the interface's program
/// lists afresh).
struct KernelAttach {
    netns: String,
    ifindex: u32,
    program: EmptyProgram,
}

impl KernelAttach {
    fn new(topo: &mut Topology) -> Result<KernelAttach> {
        let netns = topo.new_netns("kattach")?;
        topo.exec(&netns, &["ip", "link", "add", "ka0", "type", "veth", "peer", "name", "ka1"])?;
        let ifindex =
            topo.in_ns(&netns, || nix::net::if_::if_nametoindex("ka0").context("the kernel sample's veth (ka0)"))?;
        let program = EmptyProgram::load()?;
        Ok(KernelAttach { netns, ifindex, program })
    }

    /// The time of one pair of attachments (ingress, then egress).
    fn sample(&self, topo: &Topology) -> Result<Duration> {
        let (fd, ifindex) = (self.program.fd(), self.ifindex);
        topo.in_ns(&self.netns, || {
            let t = Instant::now();
            let ingress = tcx_link(fd, ifindex, false)?;
            let egress = tcx_link(fd, ifindex, true)?;
            let took = t.elapsed();
            // Detached here, untimed, before netpath's next attach.
            drop((ingress, egress));
            Ok(took)
        })
    }
}

fn median_ms(d: &[Duration]) -> f64 {
    super::results::median(&d.iter().map(|m| m.as_secs_f64() * 1e3).collect::<Vec<_>>())
}

/// The attach curve's part of `RESULTS.md` (under the control section).
pub fn section(s: &mut String, a: &AttachFigures) {
    let _ = writeln!(s, "### Attaching {} containers\n", a.containers);
    let _ = writeln!(
        s,
        "A fresh netpathd; containers attached one after the other with `POST /v1/containers`, each into \
         a namespace of its own (created just before, untimed): veth pair, addresses, routes, tcx programs, \
         map entries, state. {:.0} s in all; the agent's resident memory went from {:.1} to {:.1} MiB. \
         Bridges at the end (a Linux bridge takes at most 1023 ports; past them the instance opens \
         overflow bridges on the same subnet): {}. Stopped (SIGTERM) and started again, the agent took {:.1} s \
         from its start until its API answered, having adopted every container.\n",
        a.total_s,
        a.agent_memory_before_bytes as f64 / 1048576.0,
        a.agent_memory_after_bytes as f64 / 1048576.0,
        a.bridges.iter().map(|(name, n)| format!("{name} with {n} containers")).collect::<Vec<_>>().join(", "),
        a.restart_s
    );
    let _ = writeln!(
        s,
        "Beside it, every {KERNEL_SAMPLE_EVERY} containers, the kernel's part measured apart: the two tcx \
         attachments a container's veth gets (ingress, egress), of a bare program (`r0 = 0; exit`) on a veth of \
         the benchmark's own, detached again after each sample. Each tcx attachment waits for an RCU grace \
         period under the RTNL lock (the interface's new program list is published, then the kernel waits \
         until no CPU can still run the old one): those waits, not netpath's own work, are most of a \
         container's attach, and they move with the machine.\n"
    );
    let _ = writeln!(s, "| containers | median attach ms | kernel: two tcx attachments alone, ms |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (i, ms) in a.curve_ms.iter().enumerate() {
        let kernel = a.kernel_curve_ms.get(i).copied().unwrap_or(f64::NAN);
        let _ = writeln!(s, "| {}-{} | {ms:.1} | {kernel:.1} |", i * STEP + 1, ((i + 1) * STEP).min(a.containers));
    }
    s.push('\n');
}
