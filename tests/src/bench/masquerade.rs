//! Masquerade (issue 4): short connections and single-stream throughput
//! from a container to a server in the world namespace, through each
//! variant's source translation (see [`super::masq_bed`]), interleaved like
//! the published-ports section.
//!
//! Translated ports are a per-destination resource: a masqueraded flow
//! holds its port (and its conntrack entries) until it expires and is
//! collected, and short connections come at tens of thousands a second.
//! What bounds the load here is the container's own ephemeral range: the
//! clients close with RST, so the container reuses its source ports at
//! once, and a reused port finds its tracked flow (and translated port)
//! again, so one container calling one server port never needs more
//! translated ports than it has ephemeral ones (28232 <= 31744). More
//! server ports would multiply the flows tracked at once, for no gain.
//! netpath's drop counters, conntrack fill and the lifetime of the reset
//! flows are read after the section and quoted, so that a run that ran
//! out of ports or entries shows.

use std::net::SocketAddrV4;

use anyhow::{ensure, Context as _, Result};
use netpath_tests::topology::WORLD_IP;
use serde::Serialize;

use super::{
    bed::Variant,
    load::{self, ConnRate},
    masq_bed::MasqBed,
    options::{Options, Section},
    results::{Series, Target},
    schedule::{Lane, Lanes},
    server::Server,
    snat_progrun,
};

/// The world's server: one destination for the translation.
pub const SERVER_PORT: u16 = 7001;

fn target() -> SocketAddrV4 {
    SocketAddrV4::new(WORLD_IP, SERVER_PORT)
}

/// Everything measured on one variant's masquerade bed.
#[derive(Default)]
pub struct MasqSamples {
    pub conn_rate: Vec<ConnRate>,
    pub throughput_gbit: Vec<f64>,
    /// The client address the world's server saw, checked at setup.
    pub seen_as: Option<SocketAddrV4>,
    pub notes: Vec<String>,
}

struct MasqLane {
    variant: Variant,
    // Dropped before the bed, so that the server threads end before the
    // world namespace goes.
    server: Option<Server>,
    bed: MasqBed,
    samples: MasqSamples,
}

impl Lane for MasqLane {
    type Key = Variant;
    type Samples = MasqSamples;

    fn key(&self) -> Variant {
        self.variant
    }

    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn into_samples(mut self) -> MasqSamples {
        self.server.take();
        self.samples
    }
}

impl MasqLane {
    fn new(variant: Variant, opts: &Options) -> Result<MasqLane> {
        let bed = MasqBed::new(variant)?;
        let topo = bed.topology();
        let ctr = topo.container_ns(1);
        load::prepare_clients(topo, &ctr)?;
        let server = Server::start(topo, &topo.world, SERVER_PORT, opts.server_threads)?;
        load::wait_reachable(topo, &ctr, target())?;
        let seen = load::seen_as(topo, &ctr, target()).context("asking the server how it sees the client")?;
        ensure!(
            *seen.ip() == bed.expected_source(),
            "the world's server sees the container as {seen}, expected {}",
            bed.expected_source()
        );
        let mut samples = MasqSamples { seen_as: Some(seen), ..Default::default() };
        if let Some(np) = bed.netpath() {
            samples.notes.push(format!("netpath: netpathd with its default settings; {}", np.xdp_note()));
        }
        Ok(MasqLane { variant, server: Some(server), bed, samples })
    }

    fn conn_rate(&mut self, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let rate = load::conn_rate(topo, &topo.container_ns(1), target(), opts.client_threads, opts.load_time())?;
        eprintln!("   {:<9} {:>8.0} conn/s ({} errors)", self.variant.name(), rate.per_sec, rate.errors);
        self.samples.conn_rate.push(rate);
        Ok(())
    }

    fn throughput(&mut self, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let gbit = load::throughput(topo, &topo.container_ns(1), target(), opts.load_time())?;
        eprintln!("   {:<9} {gbit:.2} Gbit/s", self.variant.name());
        self.samples.throughput_gbit.push(gbit);
        Ok(())
    }

    /// netpath's drop counters, conntrack fill and reset flows after the
    /// measurements.
    fn counters(&mut self) -> Result<()> {
        if let Some(np) = self.bed.netpath() {
            for note in [np.counters_note()?, np.reset_flows_note()?] {
                eprintln!("   netpath   after the section: {note}");
                self.samples.notes.push(format!("netpath after the masquerade measurements: {note}"));
            }
        }
        Ok(())
    }
}

/// The masquerade section's measurements, interleaved across the variants.
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(Variant, MasqSamples)>> {
    let mut lanes = Lanes::new(Section::Masquerade.name(), failures);
    for &variant in &opts.variants {
        lanes.set_up(variant, variant.name(), || MasqLane::new(variant, opts))?;
    }
    eprintln!("== masquerade: short connections from the container to the world");
    for round in 0..opts.rounds {
        lanes.each(round, "connection rate", |l| l.conn_rate(opts))?;
    }
    eprintln!("== masquerade: single-stream throughput from the container to the world");
    for round in 0..opts.rounds {
        lanes.each(round, "throughput", |l| l.throughput(opts))?;
    }
    lanes.each(0, "counters", MasqLane::counters)?;
    Ok(lanes.finish(&opts.variants))
}

#[derive(Serialize)]
pub struct MasqVariantFigures {
    pub variant: Variant,
    pub conn_rate: Series,
    pub errors: Vec<u64>,
    pub connections: Vec<u64>,
    pub throughput_gbit: Series,
    pub seen_as: Option<String>,
    pub notes: Vec<String>,
}

impl MasqVariantFigures {
    fn rate(&self) -> Option<f64> {
        Some(self.conn_rate.median).filter(|r| r.is_finite())
    }

    fn gbit(&self) -> Option<f64> {
        Some(self.throughput_gbit.median).filter(|r| r.is_finite())
    }
}

#[derive(Serialize)]
pub struct MasqFigures {
    pub server_port: u16,
    pub variants: Vec<MasqVariantFigures>,
    pub prog_run: Vec<snat_progrun::Figure>,
    /// Allocations timed per run (each a flow of its own).
    pub prog_run_allocations: u32,
}

impl MasqFigures {
    pub fn new(samples: &[(Variant, MasqSamples)], prog_run: Vec<snat_progrun::Figure>, opts: &Options) -> MasqFigures {
        let variants = samples
            .iter()
            .map(|(v, s)| MasqVariantFigures {
                variant: *v,
                conn_rate: Series::of(&s.conn_rate, |c| c.per_sec),
                errors: s.conn_rate.iter().map(|c| c.errors).collect(),
                connections: s.conn_rate.iter().map(|c| c.connections).collect(),
                throughput_gbit: Series::new(s.throughput_gbit.clone()),
                seen_as: s.seen_as.map(|a| a.to_string()),
                notes: s.notes.clone(),
            })
            .collect();
        MasqFigures {
            server_port: SERVER_PORT,
            variants,
            prog_run,
            prog_run_allocations: snat_progrun::allocations(opts.prog_run_calls),
        }
    }

    pub fn variant(&self, v: Variant) -> Option<&MasqVariantFigures> {
        self.variants.iter().find(|f| f.variant == v)
    }

    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Masquerade.name();
        let (np, ipt, nonat) =
            (self.variant(Variant::Netpath), self.variant(Variant::Iptables), self.variant(Variant::NoNat));
        let mut out = vec![];
        let what = "masquerade: netpath's connection rate >= iptables MASQUERADE's (container -> world)";
        out.push(match (np.and_then(|n| n.rate()), ipt.and_then(|i| i.rate())) {
            (Some(a), Some(b)) => {
                Target::new(section, what, format!("{a:.0} vs {b:.0} conn/s ({:.2}x)", a / b), a >= b)
            }
            _ => Target::not_measured(section, what),
        });
        let what = "masquerade: netpath's single-stream throughput >= 95% of the no-NAT (routed) path";
        out.push(match (np.and_then(|n| n.gbit()), nonat.and_then(|z| z.gbit())) {
            (Some(a), Some(b)) => {
                Target::new(section, what, format!("{a:.2} vs {b:.2} Gbit/s = {:.1}%", 100.0 * a / b), a >= 0.95 * b)
            }
            _ => Target::not_measured(section, what),
        });
        out.extend(snat_progrun::targets(&self.prog_run));
        out
    }
}
