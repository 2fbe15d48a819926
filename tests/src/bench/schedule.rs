//! The order of measurements. All beds of a section exist side by side
//! (each in its own namespaces); each measurement window runs once per bed
//! in turn, for every round, the starting bed rotating from round to round.
//! A burst of load from elsewhere on the machine thus hits every variant
//! about equally, instead of whichever variant happened to be running.
//!
//! [`Lanes`] is that interleaving, shared by the sections; this module also
//! holds the published-ports section's lanes: for every size the beds are
//! grown to that many ports, then measured.

use anyhow::{Context as _, Result};

use super::{
    bed::{self, Bed, Variant, CONTAINER_PORT},
    check_interrupted, load,
    options::Options,
    results::{push_at, VariantSamples},
    server::Server,
};

/// One variant's bed in a section, as the interleaving sees it.
pub trait Lane {
    type Key: Copy + PartialEq;
    type Samples: Default;
    fn key(&self) -> Self::Key;
    fn name(&self) -> &'static str;
    /// Takes the bed down (namespaces, agent), keeping what was measured.
    fn into_samples(self) -> Self::Samples;
}

/// The live lanes of a section, and the samples of those already finished
/// or failed.
pub struct Lanes<'a, L: Lane> {
    /// Prefix of failure messages ("" for the published-ports section).
    section: &'static str,
    live: Vec<L>,
    done: Vec<(L::Key, L::Samples)>,
    failures: &'a mut Vec<String>,
}

impl<'a, L: Lane> Lanes<'a, L> {
    pub fn new(section: &'static str, failures: &'a mut Vec<String>) -> Lanes<'a, L> {
        Lanes { section, live: vec![], done: vec![], failures }
    }

    fn fail(&mut self, name: &str, what: &str, e: &anyhow::Error) {
        let section = if self.section.is_empty() { String::new() } else { format!("{}: ", self.section) };
        eprintln!("   {name} FAILED ({what}): {e:#}");
        self.failures.push(format!("{section}{name} ({what}): {e:#}"));
    }

    /// Sets a lane up; a failure is recorded and the variant left out.
    pub fn set_up(&mut self, key: L::Key, name: &str, make: impl FnOnce() -> Result<L>) -> Result<()> {
        eprintln!(
            "== setting up {name}{}",
            if self.section.is_empty() { String::new() } else { format!(" ({})", self.section) }
        );
        match make() {
            Ok(lane) => self.live.push(lane),
            Err(e) => {
                check_interrupted()?;
                self.fail(name, "setup", &e);
                self.done.push((key, L::Samples::default()));
            }
        }
        Ok(())
    }

    /// Runs `step` on every live lane, starting at lane `first`; a lane
    /// whose step fails is recorded, taken down and left out from then on.
    pub fn each(&mut self, first: usize, what: &str, mut step: impl FnMut(&mut L) -> Result<()>) -> Result<()> {
        let n = self.live.len();
        let mut failed = vec![];
        for i in (0..n).map(|i| (i + first) % n.max(1)) {
            check_interrupted()?;
            if let Err(e) = step(&mut self.live[i]) {
                check_interrupted()?;
                let name = self.live[i].name();
                self.fail(name, what, &e);
                failed.push(i);
            }
        }
        failed.sort_unstable();
        for i in failed.into_iter().rev() {
            let lane = self.live.remove(i);
            self.done.push((lane.key(), lane.into_samples()));
        }
        Ok(())
    }

    /// Samples of every variant, in the order asked for.
    pub fn finish(mut self, order: &[L::Key]) -> Vec<(L::Key, L::Samples)> {
        let live: Vec<L> = self.live.drain(..).collect();
        self.done.extend(live.into_iter().map(|l| (l.key(), l.into_samples())));
        order
            .iter()
            .filter_map(|v| self.done.iter().position(|(d, _)| d == v).map(|i| self.done.swap_remove(i)))
            .collect()
    }
}

/// One variant's bed for published ports, its server and what was measured
/// on it.
struct PublishLane {
    variant: Variant,
    // Held for its Drop, which stops it; dropped before the bed, so the
    // server's threads end before its namespace goes.
    server: Option<Server>,
    bed: Box<dyn Bed>,
    samples: VariantSamples,
}

impl Lane for PublishLane {
    type Key = Variant;
    type Samples = VariantSamples;

    fn key(&self) -> Variant {
        self.variant
    }

    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn into_samples(mut self) -> VariantSamples {
        self.server.take();
        self.samples
    }
}

impl PublishLane {
    fn new(variant: Variant, opts: &Options) -> Result<PublishLane> {
        let bed = bed::create(variant)?;
        let topo = bed.topology();
        load::prepare_clients(topo, &topo.world)?;
        let server = Server::start(topo, &topo.container_ns(1), CONTAINER_PORT, opts.server_threads)?;
        let samples = VariantSamples { notes: bed.notes(), ..Default::default() };
        Ok(PublishLane { variant, server: Some(server), bed, samples })
    }

    fn publish(&mut self, ports: usize) -> Result<()> {
        let took = self.bed.publish(ports).with_context(|| format!("publishing {ports} ports"))?;
        self.samples.publish_all.push((ports, took));
        let topo = self.bed.topology();
        load::wait_reachable(topo, &topo.world, self.bed.target())?;
        self.samples.conn_rate.push((ports, vec![]));
        Ok(())
    }

    fn conn_rate(&mut self, ports: usize, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let rate = load::conn_rate(topo, &topo.world, self.bed.target(), opts.client_threads, opts.load_time())
            .with_context(|| format!("connection rate with {ports} ports"))?;
        eprintln!(
            "   {:<9} {ports:>6} ports: {:>8.0} conn/s ({} errors)",
            self.variant.name(),
            rate.per_sec,
            rate.errors
        );
        if let Some((_, rates)) = self.samples.conn_rate.last_mut() {
            rates.push(rate);
        }
        Ok(())
    }

    /// CPU per connection: see [`load::conn_rate_one_cpu`].
    fn conn_rate_one_cpu(&mut self, ports: usize, opts: &Options) -> Result<()> {
        let server = self.server.as_ref().context("the server is gone")?;
        let topo = self.bed.topology();
        let rate = load::conn_rate_one_cpu(
            topo,
            &topo.world,
            self.bed.target(),
            server,
            opts.client_threads,
            opts.load_time(),
        )
        .with_context(|| format!("connection rate on one vCPU with {ports} ports"))?;
        eprintln!("   {:<9} {ports:>6} ports, one vCPU: {}", self.variant.name(), load::describe_one_cpu(&rate));
        push_at(&mut self.samples.conn_rate_one_cpu, ports, rate);
        Ok(())
    }

    fn throughput_latency(&mut self, opts: &Options) -> Result<()> {
        let (topo, target) = (self.bed.topology(), self.bed.target());
        let gbit = load::throughput(topo, &topo.world, target, opts.load_time()).context("throughput")?;
        let lat = load::latency(topo, target, opts.latency_round_trips).context("latency")?;
        eprintln!(
            "   {:<9} {gbit:.2} Gbit/s, latency p50 {:.1} us p99 {:.1} us",
            self.variant.name(),
            lat.p50_us,
            lat.p99_us
        );
        self.samples.throughput_gbit.push(gbit);
        self.samples.latency.push(lat);
        Ok(())
    }

    fn add_one(&mut self, opts: &Options) -> Result<()> {
        for k in 0..opts.add_one_samples(self.variant) {
            check_interrupted()?;
            if let Some(t) = self.bed.add_one(bed::extra_port(k)).context("publishing one more port")? {
                self.samples.add_one.push(t);
            }
        }
        if let Some(m) = super::results::median_ms(&self.samples.add_one, |a| a.op) {
            eprintln!("   {:<9} one more port: {m:.3} ms (median)", self.variant.name());
        }
        Ok(())
    }
}

/// The published-ports section.
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(Variant, VariantSamples)>> {
    let mut lanes = Lanes::new("", failures);
    for &variant in &opts.variants {
        lanes.set_up(variant, variant.name(), || PublishLane::new(variant, opts))?;
    }
    for &ports in &opts.sizes {
        eprintln!("== {ports} published port(s)");
        lanes.each(0, &format!("publishing {ports} ports"), |l| l.publish(ports))?;
        for round in 0..opts.rounds {
            lanes.each(round, "connection rate", |l| l.conn_rate(ports, opts))?;
        }
        for round in 0..opts.rounds {
            lanes.each(round, "connection rate on one vCPU", |l| l.conn_rate_one_cpu(ports, opts))?;
        }
        if ports == 1 {
            for round in 0..opts.rounds {
                lanes.each(round, "throughput and latency", |l| l.throughput_latency(opts))?;
            }
        }
    }
    eprintln!("== one more port at {} ports", opts.sizes.last().copied().unwrap_or(1));
    lanes.each(0, "publishing one more port", |l| l.add_one(opts))?;
    Ok(lanes.finish(&opts.variants))
}
