//! Container to container on one host (issue 11): short connections, one
//! vCPU's worth of them, a stream and request/response from container `c1`
//! to a server in `c2`, both on the same bridge, nothing translated. The
//! connection rates are measured with 1, 1000, ... ports published to c1
//! (the published-ports section's sizes and fillers): traffic between
//! containers does not use them, and whether it pays for them anyway is
//! what the sizes show (Docker's `FORWARD` walks its `DOCKER` chain, one
//! rule per published port, for every new connection between containers).
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

use std::{fmt::Write as _, net::SocketAddrV4, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    bed::{port_list, Bed, Variant, CONTAINER_PORT},
    iptables, load,
    netpath::NetpathBed,
    options::{Options, Section},
    plain::PlainNet,
    report::{ratio, section_targets, values},
    results::{push_at, Results, Series, SizePoint, Target, VariantFigures, VariantSamples},
    schedule::{Lane, Lanes},
    server::Server,
};

/// The variants this section measures (see the module's comment).
fn applies(v: Variant) -> bool {
    !matches!(v, Variant::Nftables)
}

enum C2cBed {
    Plain { docker: bool, net: PlainNet },
    Netpath(NetpathBed),
}

impl C2cBed {
    fn new(variant: Variant) -> Result<C2cBed> {
        Ok(match variant {
            Variant::NoNat => C2cBed::Plain { docker: false, net: PlainNet::with_containers(2)? },
            Variant::Nftables => bail!("no container-to-container bed for nftables (its path is the bridge's)"),
            Variant::Iptables => {
                let net = PlainNet::with_containers(2)?;
                net.docker_bridge_netfilter()?;
                C2cBed::Plain { docker: true, net }
            }
            Variant::Netpath => C2cBed::Netpath(NetpathBed::with_containers(&[], 2)?),
            Variant::NetpathStack => C2cBed::Netpath(NetpathBed::with_containers(&["--no-fast-path"], 2)?),
        })
    }

    fn topology(&self) -> &netpath_tests::topology::Topology {
        match self {
            C2cBed::Plain { net, .. } => &net.topo,
            C2cBed::Netpath(bed) => bed.topology(),
        }
    }

    /// `ports` ports published to c1 (none on the plain bridge); returns
    /// how long that took. Docker's whole layout is loaded again, as in
    /// the published-ports section.
    fn publish(&mut self, ports: usize) -> Result<Duration> {
        match self {
            C2cBed::Plain { docker: false, .. } => Ok(Duration::ZERO),
            C2cBed::Plain { docker: true, net } => {
                let c1 = net.container_ip.to_string();
                net.iptables_restore("c2c.rules", &iptables::ruleset(&net.subnet, &c1, &port_list(ports)))
            }
            C2cBed::Netpath(bed) => bed.publish(ports),
        }
    }

    /// The server in `c2`.
    fn target(&self) -> Result<SocketAddrV4> {
        let ip = match self {
            C2cBed::Plain { net, .. } => net.container_ips.get(1).copied(),
            C2cBed::Netpath(bed) => bed.container_ip(2),
        };
        Ok(SocketAddrV4::new(ip.context("the bed has no container c2")?, CONTAINER_PORT))
    }
}

struct C2cLane {
    variant: Variant,
    // Dropped before the bed, so that the server threads end before c2's
    // namespace goes.
    server: Option<Server>,
    bed: C2cBed,
    target: SocketAddrV4,
    client_ns: String,
    samples: VariantSamples,
}

impl Lane for C2cLane {
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
        let mut samples = VariantSamples::default();
        samples.notes.push(format!("{}: c1 -> {target}, seen by the server as {seen}", variant.name()));
        if matches!(bed, C2cBed::Netpath(_)) {
            samples.notes.push(format!("{}: netpathd with its default settings", variant.name()));
        }
        Ok(C2cLane { variant, server: Some(server), bed, target, client_ns, samples })
    }

    fn publish(&mut self, ports: usize) -> Result<()> {
        self.bed.publish(ports).with_context(|| format!("publishing {ports} ports to c1"))?;
        load::wait_reachable(self.bed.topology(), &self.client_ns, self.target)
    }

    fn conn_rate(&mut self, ports: usize, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let rate = load::conn_rate(topo, &self.client_ns, self.target, opts.client_threads, opts.load_time())
            .with_context(|| format!("connection rate with {ports} ports"))?;
        eprintln!(
            "   {:<13} {ports:>6} ports: {:>8.0} conn/s ({} errors)",
            self.variant.name(),
            rate.per_sec,
            rate.errors
        );
        push_at(&mut self.samples.conn_rate, ports, rate);
        Ok(())
    }

    /// Clients, server and so the softirq work of both veths on one vCPU:
    /// the rate is the inverse of the path's CPU cost per connection.
    /// CPU per connection: see [`load::conn_rate_one_cpu`].
    fn conn_rate_one_cpu(&mut self, ports: usize, opts: &Options) -> Result<()> {
        let server = self.server.as_ref().context("the server is gone")?;
        let topo = self.bed.topology();
        let rate =
            load::conn_rate_one_cpu(topo, &self.client_ns, self.target, server, opts.client_threads, opts.load_time())
                .with_context(|| format!("connection rate on one vCPU with {ports} ports"))?;
        eprintln!("   {:<13} {ports:>6} ports, one vCPU: {}", self.variant.name(), load::describe_one_cpu(&rate));
        push_at(&mut self.samples.conn_rate_one_cpu, ports, rate);
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
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(Variant, VariantSamples)>> {
    let variants: Vec<Variant> = opts.variants.iter().copied().filter(|&v| applies(v)).collect();
    let mut lanes = Lanes::new(Section::Containers.name(), failures);
    for &variant in &variants {
        lanes.set_up(variant, variant.name(), || C2cLane::new(variant, opts))?;
    }
    for &ports in &opts.sizes {
        eprintln!("== container to container: short connections from c1 to c2, {ports} port(s) published to c1");
        lanes.each(0, &format!("publishing {ports} ports"), |l| l.publish(ports))?;
        for round in 0..opts.rounds {
            lanes.each(round, "connection rate", |l| l.conn_rate(ports, opts))?;
        }
        for round in 0..opts.rounds {
            lanes.each(round, "connection rate on one vCPU", |l| l.conn_rate_one_cpu(ports, opts))?;
        }
        if ports == 1 {
            eprintln!("== container to container: a stream and request/response");
            for round in 0..opts.rounds {
                lanes.each(round, "throughput and latency", |l| l.throughput_latency(opts))?;
            }
        }
    }
    lanes.each(0, "counters", C2cLane::counters)?;
    Ok(lanes.finish(&variants))
}

#[derive(Serialize)]
pub struct C2cFigures {
    pub variants: Vec<VariantFigures>,
    /// Whether br_netfilter was loaded on the machine (without it the
    /// iptables variant's chains are never walked by bridged packets).
    pub br_netfilter_loaded: bool,
}

/// Which of a variant's series a target compares.
type Pick = fn(&VariantFigures) -> &Series;
/// Which of a variant's per-size rates a target compares.
type PickRates = fn(&VariantFigures) -> &[SizePoint];

/// `series`' medians of netpath and of the bridge, if both were measured.
fn medians(np: Option<&VariantFigures>, bridge: Option<&VariantFigures>, series: Pick) -> Option<(f64, f64)> {
    Some((measured(series(np?))?, measured(series(bridge?))?)).filter(|(_, b)| *b > 0.0)
}

/// A median, or None where nothing was measured.
fn measured(s: &Series) -> Option<f64> {
    Some(s.median).filter(|m| m.is_finite())
}

impl C2cFigures {
    pub fn new(samples: &[(Variant, VariantSamples)]) -> C2cFigures {
        let variants = samples.iter().map(|(v, s)| VariantFigures::new(*v, s)).collect();
        C2cFigures { variants, br_netfilter_loaded: super::plain::br_netfilter_loaded() }
    }

    pub fn variant(&self, v: Variant) -> Option<&VariantFigures> {
        self.variants.iter().find(|f| f.variant == v)
    }

    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Containers.name();
        let (np, bridge) = (self.variant(Variant::Netpath), self.variant(Variant::NoNat));
        let mut out = vec![];
        let rates: [(&str, PickRates); 2] = [
            ("container to container: netpath's connection rate >= the plain bridge's at every size", |f| &f.conn_rate),
            (
                "container to container, on one vCPU: netpath's connection rate >= the plain bridge's at every size",
                |f| &f.conn_rate_one_cpu,
            ),
        ];
        for (what, points) in rates {
            let pairs: Vec<(usize, f64, f64)> = match (np, bridge) {
                (Some(n), Some(z)) => points(n)
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p.ports,
                            SizePoint::rate_at(points(n), p.ports)?,
                            SizePoint::rate_at(points(z), p.ports)?,
                        ))
                    })
                    .collect(),
                _ => vec![],
            };
            out.push(if pairs.is_empty() {
                Target::not_measured(section, what)
            } else {
                Target::new(
                    section,
                    what,
                    pairs
                        .iter()
                        .map(|(p, a, b)| format!("{p} port(s): {a:.0} vs {b:.0} conn/s ({:.2}x)", a / b))
                        .collect::<Vec<_>>()
                        .join("; "),
                    pairs.iter().all(|(_, a, b)| a >= b),
                )
            });
        }
        // (target, series, unit and digits, whether more is better)
        let at_one_port: [(&str, Pick, (&str, usize), bool); 2] = [
            (
                "container to container: netpath's single-stream throughput >= the plain bridge's",
                |f| &f.throughput_gbit,
                ("Gbit/s", 2),
                true,
            ),
            (
                "container to container: netpath's request/response p50 <= the plain bridge's",
                |f| &f.latency_p50_us,
                ("us", 1),
                false,
            ),
        ];
        for (what, series, (unit, digits), more_is_better) in at_one_port {
            out.push(match medians(np, bridge, series) {
                Some((a, b)) => Target::new(
                    section,
                    what,
                    format!("{a:.digits$} vs {b:.digits$} {unit} ({:.2}x)", a / b),
                    if more_is_better { a >= b } else { a <= b },
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
         request/response on one connection ({} round trips, client and server on one vCPU). The connection \
         rates are measured with the published-ports section's numbers of ports published to c1 (which \
         traffic between containers does not use). Medians over {} rounds, interleaved across the beds; ratios \
         to no-nat, the plain Linux bridge.\n",
        r.method.server_threads,
        r.method.client_threads,
        super::cpu::latency_cpu(),
        r.method.seconds_per_load_measurement,
        r.method.latency_round_trips,
        r.method.rounds
    );
    let base = f.variant(Variant::NoNat);
    let sizes: Vec<usize> =
        f.variants.iter().flat_map(|v| v.conn_rate.iter().map(|p| p.ports)).fold(vec![], |mut a, p| {
            if !a.contains(&p) {
                a.push(p);
            }
            a
        });
    let tables: [(&str, PickRates, bool); 2] = [
        ("Connections per second", |f| &f.conn_rate, false),
        ("Connections per second on one vCPU (and µs of CPU per connection)", |f| &f.conn_rate_one_cpu, true),
    ];
    for (title, points, per_conn) in tables {
        let _ = writeln!(s, "{title}, by the number of ports published to c1; ratios to the plain bridge:\n");
        let mut head = "| ports published |".to_string();
        let mut rule = "|---:|".to_string();
        for v in &f.variants {
            let _ = write!(head, " {} | ratio |{}", v.variant.name(), if per_conn { " µs/conn |" } else { "" });
            rule.push_str(if per_conn { "---:|---:|---:|" } else { "---:|---:|" });
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for &ports in &sizes {
            let _ = write!(s, "| {ports} |");
            let bridge = base.and_then(|b| SizePoint::rate_at(points(b), ports));
            for v in &f.variants {
                let rate = SizePoint::rate_at(points(v), ports).unwrap_or(f64::NAN);
                let _ = write!(s, " {rate:.0} | {} |", ratio(rate, bridge));
                if per_conn {
                    let _ = write!(s, " {:.1} |", 1e6 / rate);
                }
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\nPer round (connections/s, failed connections):\n");
        for v in &f.variants {
            let rounds: Vec<String> = points(v)
                .iter()
                .map(|p| {
                    let errors: Vec<String> = p.errors.iter().map(u64::to_string).collect();
                    format!("{} ports: {} (errors {})", p.ports, values(&p.per_sec, 0), errors.join("/"))
                })
                .collect();
            let _ = writeln!(s, "- {}: {}", v.variant.name(), rounds.join("; "));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "Single-stream throughput and request/response latency, 1 port published:\n");
    let _ = writeln!(s, "| variant | Gbit/s | vs bridge | rounds | RR p50 µs | vs bridge | RR p99 µs | vs bridge |");
    let _ = writeln!(s, "|---|---:|---:|---|---:|---:|---:|---:|");
    for v in &f.variants {
        let r = |x: &Series, b: Option<&Series>| ratio(x.median, b.map(|b| b.median));
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} | {:.1} | {} | {:.1} | {} |",
            v.variant.name(),
            v.throughput_gbit.median,
            r(&v.throughput_gbit, base.map(|b| &b.throughput_gbit)),
            values(&v.throughput_gbit, 2),
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
         the isolation stages, the conntrack match for established flows and the `DOCKER` chain, which holds \
         Docker's filter rule of every published port, so a new connection between containers walks one rule \
         per published port) and br_netfilter's `bridge-nf-call-iptables` on, as Docker's bridge driver sets \
         it; the ports are loaded with `iptables-restore`, as in the published-ports section. **netpath** is netpathd with its default settings: c1's veth program \
         judges the packet (policy, anti-spoofing, conntrack) and redirects it to c2's veth peer, past the \
         bridge; **netpath-stack** is the same with `--no-fast-path`; both publish the ports in one bulk API \
         call. {netfilter}.\n"
    );
    super::report::setup_notes(s, f.variants.iter().flat_map(|v| &v.notes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::{ConnRate, Latency};

    fn rate(per_sec: f64) -> ConnRate {
        ConnRate { per_sec, connections: 1, errors: 0, seconds: 1.0 }
    }

    /// Rates at 1 and 1000 ports (the same on one vCPU), a stream, an RR p50.
    fn samples(conn: [f64; 2], one_cpu: [f64; 2], gbit: f64, p50_us: f64) -> VariantSamples {
        VariantSamples {
            conn_rate: vec![(1, vec![rate(conn[0])]), (1000, vec![rate(conn[1])])],
            conn_rate_one_cpu: vec![(1, vec![rate(one_cpu[0])]), (1000, vec![rate(one_cpu[1])])],
            throughput_gbit: vec![gbit],
            latency: vec![Latency { p50_us, p99_us: 2.0 * p50_us, round_trips: 1 }],
            ..Default::default()
        }
    }

    fn met(figures: &C2cFigures) -> Vec<Option<bool>> {
        figures.targets().iter().map(|t| t.met).collect()
    }

    #[test]
    fn targets_compare_netpath_with_the_plain_bridge_at_every_size() {
        let bridge = samples([100.0, 100.0], [50.0, 50.0], 10.0, 20.0);
        // Faster at connections at both sizes; on one vCPU slower at 1000
        // ports only; a slower stream; a lower p50 is better.
        let f = C2cFigures::new(&[
            (Variant::NoNat, bridge),
            (Variant::Iptables, samples([500.0; 2], [500.0; 2], 50.0, 1.0)),
            (Variant::Netpath, samples([101.0, 100.0], [51.0, 49.0], 9.0, 19.0)),
        ]);
        assert_eq!(met(&f), [Some(true), Some(false), Some(false), Some(true)]);
        // iptables is not the reference, whatever it measured.
        let same = || samples([100.0; 2], [50.0; 2], 10.0, 20.0);
        let f = C2cFigures::new(&[(Variant::NoNat, same()), (Variant::Netpath, same())]);
        assert_eq!(met(&f), [Some(true); 4]);
        let measured = &f.targets()[0].measured;
        assert!(measured.contains("1 port(s): 100 vs 100") && measured.contains("1000 port(s)"), "{measured}");
    }

    #[test]
    fn a_variant_that_failed_leaves_the_targets_unmeasured() {
        let f = C2cFigures::new(&[
            (Variant::NoNat, VariantSamples::default()),
            (Variant::Netpath, samples([100.0; 2], [50.0; 2], 10.0, 20.0)),
        ]);
        assert_eq!(met(&f), [None; 4]);
        let f = C2cFigures::new(&[(Variant::Netpath, samples([100.0; 2], [50.0; 2], 10.0, 20.0))]);
        assert_eq!(met(&f), [None; 4]);
    }
}
