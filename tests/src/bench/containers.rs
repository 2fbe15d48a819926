//! Container to container on one host (issue 11): short connections, one
//! vCPU's worth of them, a stream and request/response from container `c1`
//! to a server in `c2`, both on the same bridge, nothing translated.
//!
//! - no-nat: the plain Linux bridge, br_netfilter's hooks off: the ceiling;
//! - iptables: the same bridge with Docker's layout loaded and
//!   br_netfilter's hooks on, as Docker's bridge driver sets them, so every
//!   packet between two containers walks `FORWARD` (its ICC accept, the
//!   conntrack match) on its way across the bridge;
//! - netpath: the agent with its default settings: the veth's program
//!   redirects to the other container's veth peer, past the bridge;
//! - netpath-stack: the same with the fast path off (through the bridge).
//!
//! nftables is left out: a port map does nothing to traffic that stays on
//! the bridge, so its path is the plain bridge's.

use std::{fmt::Write as _, net::SocketAddrV4};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    bed::{Variant, CONTAINER_PORT},
    iptables,
    load::{self, ConnRate, Latency},
    netpath::NetpathBed,
    options::{Options, Section},
    plain::PlainNet,
    report::{ratio, section_targets, values},
    results::{Results, Series, Target},
    schedule::{Lane, Lanes},
    server::Server,
};

/// The variants this section measures (see the module's comment).
fn applies(v: Variant) -> bool {
    !matches!(v, Variant::Nftables)
}

enum C2cBed {
    Plain(PlainNet),
    Netpath(NetpathBed),
}

impl C2cBed {
    fn new(variant: Variant) -> Result<C2cBed> {
        Ok(match variant {
            Variant::NoNat => C2cBed::Plain(PlainNet::with_containers(2)?),
            Variant::Nftables => bail!("no container-to-container bed for nftables (its path is the bridge's)"),
            Variant::Iptables => {
                let net = PlainNet::with_containers(2)?;
                net.docker_bridge_netfilter()?;
                let c2 = net.container_ips[1].to_string();
                net.iptables_restore("c2c.rules", &iptables::ruleset(&net.subnet, &c2, &[]))?;
                C2cBed::Plain(net)
            }
            Variant::Netpath => C2cBed::Netpath(NetpathBed::with_containers(&[], 2)?),
            Variant::NetpathStack => C2cBed::Netpath(NetpathBed::with_containers(&["--no-fast-path"], 2)?),
        })
    }

    fn topology(&self) -> &netpath_tests::topology::Topology {
        match self {
            C2cBed::Plain(net) => &net.topo,
            C2cBed::Netpath(bed) => super::bed::Bed::topology(bed),
        }
    }

    /// The server in `c2`.
    fn target(&self) -> Result<SocketAddrV4> {
        let ip = match self {
            C2cBed::Plain(net) => net.container_ips.get(1).copied(),
            C2cBed::Netpath(bed) => bed.container_ip(2),
        };
        Ok(SocketAddrV4::new(ip.context("the bed has no container c2")?, CONTAINER_PORT))
    }
}

/// Everything measured on one variant's bed.
#[derive(Default)]
pub struct C2cSamples {
    pub conn_rate: Vec<ConnRate>,
    pub conn_rate_one_cpu: Vec<ConnRate>,
    pub throughput_gbit: Vec<f64>,
    pub latency: Vec<Latency>,
    pub notes: Vec<String>,
}

struct C2cLane {
    variant: Variant,
    // Dropped before the bed, so that the server threads end before c2's
    // namespace goes.
    server: Option<Server>,
    bed: C2cBed,
    target: SocketAddrV4,
    client_ns: String,
    samples: C2cSamples,
}

impl Lane for C2cLane {
    type Key = Variant;
    type Samples = C2cSamples;

    fn key(&self) -> Variant {
        self.variant
    }

    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn into_samples(mut self) -> C2cSamples {
        self.server.take();
        self.samples
    }
}

impl C2cLane {
    fn new(variant: Variant, opts: &Options) -> Result<C2cLane> {
        let bed = C2cBed::new(variant)?;
        let target = bed.target()?;
        let topo = bed.topology();
        let client_ns = topo.container_ns(1);
        load::prepare_clients(topo, &client_ns)?;
        let server = Server::start(topo, &topo.container_ns(2), CONTAINER_PORT, opts.server_threads)?;
        load::wait_reachable(topo, &client_ns, target)?;
        // Nothing on the way may translate: c2 must see c1's own address.
        let seen = load::seen_as(topo, &client_ns, target).context("asking c2's server how it sees c1")?;
        let mut samples = C2cSamples::default();
        samples.notes.push(format!("{}: c1 -> {target}, seen by the server as {seen}", variant.name()));
        if matches!(bed, C2cBed::Netpath(_)) {
            samples.notes.push(format!("{}: netpathd with its default settings", variant.name()));
        }
        Ok(C2cLane { variant, server: Some(server), bed, target, client_ns, samples })
    }

    fn conn_rate(&mut self, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let rate = load::conn_rate(topo, &self.client_ns, self.target, opts.client_threads, opts.load_time())?;
        eprintln!("   {:<13} {:>8.0} conn/s ({} errors)", self.variant.name(), rate.per_sec, rate.errors);
        self.samples.conn_rate.push(rate);
        Ok(())
    }

    /// Clients, server and so the softirq work of both veths on one vCPU:
    /// the rate is the inverse of the path's CPU cost per connection.
    fn conn_rate_one_cpu(&mut self, opts: &Options) -> Result<()> {
        let cpu = super::cpu::latency_cpu();
        let server = self.server.as_ref().context("the server is gone")?;
        server.pin(Some(cpu))?;
        let topo = self.bed.topology();
        let rate =
            load::conn_rate_on(topo, &self.client_ns, self.target, opts.client_threads, opts.load_time(), Some(cpu));
        server.pin(None)?;
        let rate = rate.context("connection rate on one vCPU")?;
        eprintln!(
            "   {:<13} one vCPU: {:>8.0} conn/s, {:.1} us per connection ({} errors)",
            self.variant.name(),
            rate.per_sec,
            1e6 / rate.per_sec,
            rate.errors
        );
        self.samples.conn_rate_one_cpu.push(rate);
        Ok(())
    }

    fn throughput_latency(&mut self, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let gbit = load::throughput(topo, &self.client_ns, self.target, opts.load_time()).context("throughput")?;
        let lat =
            load::latency_from(topo, &self.client_ns, self.target, opts.latency_round_trips).context("latency")?;
        eprintln!(
            "   {:<13} {gbit:.2} Gbit/s, latency p50 {:.1} us p99 {:.1} us",
            self.variant.name(),
            lat.p50_us,
            lat.p99_us
        );
        self.samples.throughput_gbit.push(gbit);
        self.samples.latency.push(lat);
        Ok(())
    }

    /// netpath's drop counters after the measurements: evidence that they
    /// ran without the datapath refusing anything.
    fn counters(&mut self) -> Result<()> {
        if let C2cBed::Netpath(np) = &self.bed {
            let note = np.counters_note()?;
            eprintln!("   {:<13} after the section: {note}", self.variant.name());
            self.samples.notes.push(format!("{} after the measurements: {note}", self.variant.name()));
        }
        Ok(())
    }
}

/// The section's measurements, interleaved across the variants.
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(Variant, C2cSamples)>> {
    let variants: Vec<Variant> = opts.variants.iter().copied().filter(|&v| applies(v)).collect();
    let mut lanes = Lanes::new(Section::Containers.name(), failures);
    for &variant in &variants {
        lanes.set_up(variant, variant.name(), || C2cLane::new(variant, opts))?;
    }
    eprintln!("== container to container: short connections from c1 to c2");
    for round in 0..opts.rounds {
        lanes.each(round, "connection rate", |l| l.conn_rate(opts))?;
    }
    for round in 0..opts.rounds {
        lanes.each(round, "connection rate on one vCPU", |l| l.conn_rate_one_cpu(opts))?;
    }
    eprintln!("== container to container: a stream and request/response");
    for round in 0..opts.rounds {
        lanes.each(round, "throughput and latency", |l| l.throughput_latency(opts))?;
    }
    lanes.each(0, "counters", C2cLane::counters)?;
    Ok(lanes.finish(&variants))
}

#[derive(Serialize)]
pub struct C2cVariantFigures {
    pub variant: Variant,
    pub conn_rate: Series,
    pub conn_rate_one_cpu: Series,
    /// Failed connections per round, both modes.
    pub errors: Vec<u64>,
    pub throughput_gbit: Series,
    pub latency_p50_us: Series,
    pub latency_p99_us: Series,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct C2cFigures {
    pub variants: Vec<C2cVariantFigures>,
    /// Whether br_netfilter was loaded on the machine (without it the
    /// iptables variant's chains are never walked by bridged packets).
    pub br_netfilter_loaded: bool,
}

/// Which of a variant's series a target compares.
type Pick = fn(&C2cVariantFigures) -> &Series;

/// A median, or None where nothing was measured.
fn measured(s: &Series) -> Option<f64> {
    Some(s.median).filter(|m| m.is_finite())
}

impl C2cFigures {
    pub fn new(samples: &[(Variant, C2cSamples)]) -> C2cFigures {
        let variants = samples
            .iter()
            .map(|(v, s)| C2cVariantFigures {
                variant: *v,
                conn_rate: Series::of(&s.conn_rate, |c| c.per_sec),
                conn_rate_one_cpu: Series::of(&s.conn_rate_one_cpu, |c| c.per_sec),
                errors: s.conn_rate.iter().chain(&s.conn_rate_one_cpu).map(|c| c.errors).collect(),
                throughput_gbit: Series::new(s.throughput_gbit.clone()),
                latency_p50_us: Series::of(&s.latency, |l| l.p50_us),
                latency_p99_us: Series::of(&s.latency, |l| l.p99_us),
                notes: s.notes.clone(),
            })
            .collect();
        C2cFigures { variants, br_netfilter_loaded: super::plain::br_netfilter_loaded() }
    }

    pub fn variant(&self, v: Variant) -> Option<&C2cVariantFigures> {
        self.variants.iter().find(|f| f.variant == v)
    }

    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Containers.name();
        let (np, bridge) = (self.variant(Variant::Netpath), self.variant(Variant::NoNat));
        let pair = |f: Pick| Some((measured(f(np?))?, measured(f(bridge?))?)).filter(|(_, b)| *b > 0.0);
        let mut out = vec![];
        let checks: [(&str, Pick, &str, bool); 4] = [
            (
                "container to container: netpath's connection rate >= the plain bridge's",
                |f| &f.conn_rate,
                "conn/s",
                true,
            ),
            (
                "container to container, on one vCPU: netpath's connection rate >= the plain bridge's",
                |f| &f.conn_rate_one_cpu,
                "conn/s",
                true,
            ),
            (
                "container to container: netpath's single-stream throughput >= the plain bridge's",
                |f| &f.throughput_gbit,
                "Gbit/s",
                true,
            ),
            (
                "container to container: netpath's request/response p50 <= the plain bridge's",
                |f| &f.latency_p50_us,
                "us",
                false,
            ),
        ];
        for (what, series, unit, higher_is_better) in checks {
            out.push(match pair(series) {
                Some((a, b)) => Target::new(
                    section,
                    what,
                    format!("{a:.2} vs {b:.2} {unit} ({:.2}x)", a / b),
                    if higher_is_better { a >= b } else { a <= b },
                ),
                None => Target::not_measured(section, what),
            });
        }
        out
    }
}

pub fn section(s: &mut String, r: &Results, f: &C2cFigures) {
    let _ = writeln!(s, "## Container to container on one host\n");
    section_targets(s, r, Section::Containers);
    let _ = writeln!(
        s,
        "Containers c1 and c2 on the same bridge; the server (port {CONTAINER_PORT}, {} accept threads) in c2, \
         the clients in c1, connecting to c2's own address: nothing is translated (each bed checks that c2 sees \
         c1's address). Short connections as in the published-ports section ({} client threads; and on one \
         vCPU: clients and server pinned to vCPU {}, where the softirq work of both veths runs too, so the rate \
         is the inverse of the path's CPU cost per connection), single-stream throughput ({} s) and \
         request/response on one connection ({} round trips, client and server on one vCPU). Medians over {} \
         rounds, interleaved across the beds; ratios to no-nat, the plain Linux bridge.\n",
        r.method.server_threads,
        r.method.client_threads,
        super::cpu::latency_cpu(),
        r.method.seconds_per_load_measurement,
        r.method.latency_round_trips,
        r.method.rounds
    );
    let base = f.variant(Variant::NoNat);
    let _ = writeln!(
        s,
        "| variant | conn/s | vs bridge | rounds | conn/s, one vCPU | vs bridge | us/conn | rounds | failed connections | \
         Gbit/s | vs bridge | RR p50 us | vs bridge | RR p99 us | vs bridge |"
    );
    let _ = writeln!(s, "|---|---:|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for v in &f.variants {
        let r = |x: &Series, b: Option<&Series>| ratio(x.median, b.map(|b| b.median));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {:.0} | {} | {:.1} | {} | {} | {:.2} | {} | {:.1} | {} | {:.1} | {} |",
            v.variant.name(),
            v.conn_rate.median,
            r(&v.conn_rate, base.map(|b| &b.conn_rate)),
            values(&v.conn_rate, 0),
            v.conn_rate_one_cpu.median,
            r(&v.conn_rate_one_cpu, base.map(|b| &b.conn_rate_one_cpu)),
            1e6 / v.conn_rate_one_cpu.median,
            values(&v.conn_rate_one_cpu, 0),
            v.errors.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "),
            v.throughput_gbit.median,
            r(&v.throughput_gbit, base.map(|b| &b.throughput_gbit)),
            v.latency_p50_us.median,
            r(&v.latency_p50_us, base.map(|b| &b.latency_p50_us)),
            v.latency_p99_us.median,
            r(&v.latency_p99_us, base.map(|b| &b.latency_p99_us)),
        );
    }
    s.push('\n');
    let netfilter = if f.br_netfilter_loaded {
        "br_netfilter was loaded on this machine: its hooks were set off in every bed's host namespace but \
         iptables', where Docker turns them on"
    } else {
        "br_netfilter was not loaded on this machine, so bridged packets never met netfilter and the iptables \
         variant's chains were not walked (the benchmark does not load kernel modules)"
    };
    let _ = writeln!(
        s,
        "How: **no-nat** is a Linux bridge with two veth ports and nothing else. **iptables** is the same bridge \
         with Docker 20.10's layout (`-i np0 -o np0 -j ACCEPT` for inter-container traffic, after `DOCKER-USER`, \
         the isolation stages and the conntrack match) and br_netfilter's `bridge-nf-call-iptables` on, as \
         Docker's bridge driver sets it. **netpath** is netpathd with its default settings: c1's veth program \
         judges the packet (policy, anti-spoofing, conntrack) and redirects it to c2's veth peer, past the \
         bridge; **netpath-stack** is the same with `--no-fast-path`. {netfilter}.\n"
    );
    let notes: Vec<&String> = f.variants.iter().flat_map(|v| &v.notes).collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "Setup as it ran:\n");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: f64) -> ConnRate {
        ConnRate { per_sec, connections: 1, errors: 0, seconds: 1.0 }
    }

    fn samples(conn: f64, one_cpu: f64, gbit: f64, p50_us: f64) -> C2cSamples {
        C2cSamples {
            conn_rate: vec![rate(conn)],
            conn_rate_one_cpu: vec![rate(one_cpu)],
            throughput_gbit: vec![gbit],
            latency: vec![Latency { p50_us, p99_us: 2.0 * p50_us, round_trips: 1 }],
            notes: vec![],
        }
    }

    fn met(figures: &C2cFigures) -> Vec<Option<bool>> {
        figures.targets().iter().map(|t| t.met).collect()
    }

    #[test]
    fn targets_compare_netpath_with_the_plain_bridge_each_way() {
        // Faster at connections, slower at the stream, a lower p50 is better.
        let f = C2cFigures::new(&[
            (Variant::NoNat, samples(100.0, 50.0, 10.0, 20.0)),
            (Variant::Iptables, samples(500.0, 500.0, 50.0, 1.0)),
            (Variant::Netpath, samples(101.0, 49.0, 9.0, 19.0)),
        ]);
        assert_eq!(met(&f), [Some(true), Some(false), Some(false), Some(true)]);
        // iptables is not the reference, whatever it measured.
        let f = C2cFigures::new(&[
            (Variant::NoNat, samples(100.0, 50.0, 10.0, 20.0)),
            (Variant::Netpath, samples(100.0, 50.0, 10.0, 20.0)),
        ]);
        assert_eq!(met(&f), [Some(true); 4]);
    }

    #[test]
    fn a_variant_that_failed_leaves_the_targets_unmeasured() {
        let f = C2cFigures::new(&[
            (Variant::NoNat, C2cSamples::default()),
            (Variant::Netpath, samples(100.0, 50.0, 10.0, 20.0)),
        ]);
        assert_eq!(met(&f), [None; 4]);
        let f = C2cFigures::new(&[(Variant::Netpath, samples(100.0, 50.0, 10.0, 20.0))]);
        assert_eq!(met(&f), [None; 4]);
    }
}
