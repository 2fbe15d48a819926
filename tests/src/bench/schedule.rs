//! The order of measurements. All beds exist side by side (each in its
//! own namespaces); for every size they are grown to that many ports, then
//! each measurement window runs once per bed in turn, for every round, the
//! starting bed rotating from round to round. A burst of load from
//! elsewhere on the machine thus hits every variant about equally, instead
//! of whichever variant happened to be running.

use anyhow::{Context as _, Result};

use super::{
    bed::{self, Bed, Variant, CONTAINER_PORT},
    check_interrupted, load,
    options::Options,
    results::VariantSamples,
    server::Server,
};

/// One variant's bed, its server and what was measured on it.
struct Lane {
    variant: Variant,
    // Held for its Drop, which stops it; dropped before the bed, so the
    // server's threads end before its namespace goes.
    _server: Server,
    bed: Box<dyn Bed>,
    samples: VariantSamples,
}

impl Lane {
    fn new(variant: Variant, opts: &Options) -> Result<Lane> {
        let bed = bed::create(variant)?;
        let topo = bed.topology();
        load::prepare_world(topo)?;
        let server = Server::start(topo, &topo.container_ns(1), CONTAINER_PORT, opts.server_threads)?;
        let samples = VariantSamples { notes: bed.notes(), ..Default::default() };
        Ok(Lane { variant, _server: server, bed, samples })
    }

    fn publish(&mut self, ports: usize) -> Result<()> {
        let took = self.bed.publish(ports).with_context(|| format!("publishing {ports} ports"))?;
        self.samples.publish_all.push((ports, took));
        load::wait_reachable(self.bed.topology(), self.bed.target())?;
        self.samples.conn_rate.push((ports, vec![]));
        Ok(())
    }

    fn conn_rate(&mut self, ports: usize, opts: &Options) -> Result<()> {
        let rate = load::conn_rate(self.bed.topology(), self.bed.target(), opts.client_threads, opts.load_time())
            .with_context(|| format!("connection rate with {ports} ports"))?;
        eprintln!("   {:<9} {ports:>6} ports: {:>8.0} conn/s ({} errors)", self.variant.name(), rate.per_sec, rate.errors);
        if let Some((_, rates)) = self.samples.conn_rate.last_mut() {
            rates.push(rate);
        }
        Ok(())
    }

    fn throughput_latency(&mut self, opts: &Options) -> Result<()> {
        let (topo, target) = (self.bed.topology(), self.bed.target());
        let gbit = load::throughput(topo, target, opts.load_time()).context("throughput")?;
        let lat = load::latency(topo, target, opts.latency_round_trips).context("latency")?;
        eprintln!("   {:<9} {gbit:.2} Gbit/s, latency p50 {:.1} us p99 {:.1} us", self.variant.name(), lat.p50_us, lat.p99_us);
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

/// The live lanes, and the samples of those already finished or failed.
struct Lanes<'a> {
    live: Vec<Lane>,
    done: Vec<(Variant, VariantSamples)>,
    failures: &'a mut Vec<String>,
}

impl Lanes<'_> {
    /// Runs `step` on every live lane, starting at lane `first`; a lane
    /// whose step fails is recorded, taken down and left out from then on.
    fn each(&mut self, first: usize, what: &str, mut step: impl FnMut(&mut Lane) -> Result<()>) -> Result<()> {
        let n = self.live.len();
        let mut failed = vec![];
        for i in (0..n).map(|i| (i + first) % n.max(1)) {
            check_interrupted()?;
            let lane = &mut self.live[i];
            if let Err(e) = step(lane) {
                check_interrupted()?;
                eprintln!("   {} FAILED ({what}): {e:#}", lane.variant.name());
                self.failures.push(format!("{} ({what}): {e:#}", lane.variant.name()));
                failed.push(i);
            }
        }
        for i in failed.into_iter().rev() {
            let lane = self.live.remove(i);
            self.done.push((lane.variant, lane.samples));
        }
        Ok(())
    }

    /// Samples of every variant, in the order asked for.
    fn finish(mut self, order: &[Variant]) -> Vec<(Variant, VariantSamples)> {
        self.done.extend(self.live.drain(..).map(|l| (l.variant, l.samples)));
        order.iter().filter_map(|v| self.done.iter().position(|(d, _)| d == v).map(|i| self.done.swap_remove(i))).collect()
    }
}

pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(Variant, VariantSamples)>> {
    let mut lanes = Lanes { live: vec![], done: vec![], failures };
    for &variant in &opts.variants {
        eprintln!("== setting up {}", variant.name());
        match Lane::new(variant, opts) {
            Ok(lane) => lanes.live.push(lane),
            Err(e) => {
                check_interrupted()?;
                eprintln!("   FAILED: {e:#}");
                lanes.failures.push(format!("{} (setup): {e:#}", variant.name()));
                lanes.done.push((variant, VariantSamples::default()));
            }
        }
    }
    for &ports in &opts.sizes {
        eprintln!("== {ports} published port(s)");
        lanes.each(0, &format!("publishing {ports} ports"), |l| l.publish(ports))?;
        for round in 0..opts.rounds {
            lanes.each(round, "connection rate", |l| l.conn_rate(ports, opts))?;
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
