//! Raw samples per variant, and the figures the report quotes: medians over
//! rounds, ratios to no-nat, and the targets. The masquerade and policy
//! sections aggregate their own figures (`masquerade.rs`, `policy.rs`).

use std::time::Duration;

use serde::Serialize;

use super::{
    attach::AttachFigures,
    bed::{AddOne, Variant},
    control::ControlFigures,
    load::{ConnRate, Latency},
    machine::Machine,
    masquerade::MasqFigures,
    options::{Options, Section},
    policy::PolicyFigures,
    progrun,
};

/// Everything measured on one variant's bed.
#[derive(Default)]
pub struct VariantSamples {
    /// Per size, one value per round.
    pub conn_rate: Vec<(usize, Vec<ConnRate>)>,
    /// The same with clients and server on one vCPU.
    pub conn_rate_one_cpu: Vec<(usize, Vec<ConnRate>)>,
    /// One value per round (1 published port).
    pub throughput_gbit: Vec<f64>,
    pub latency: Vec<Latency>,
    /// Time to get to each size.
    pub publish_all: Vec<(usize, Duration)>,
    /// Every timed single publication at the largest size.
    pub add_one: Vec<AddOne>,
    /// Facts about the setup as it ran.
    pub notes: Vec<String>,
}

/// Values and their median.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    pub median: f64,
    pub values: Vec<f64>,
}

impl Series {
    pub fn new(values: Vec<f64>) -> Series {
        Series { median: median(&values), values }
    }

    pub fn of<T>(items: &[T], f: impl Fn(&T) -> f64) -> Series {
        Series::new(items.iter().map(f).collect())
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median_ms(samples: &[AddOne], f: impl Fn(&AddOne) -> Duration) -> Option<f64> {
    (!samples.is_empty()).then(|| median(&samples.iter().map(|a| f(a).as_secs_f64() * 1e3).collect::<Vec<_>>()))
}

/// Adds `rate` to the rates measured at `ports` (sizes come in order).
pub fn push_at(rates: &mut Vec<(usize, Vec<ConnRate>)>, ports: usize, rate: ConnRate) {
    match rates.last_mut() {
        Some((p, at)) if *p == ports => at.push(rate),
        _ => rates.push((ports, vec![rate])),
    }
}

#[derive(Serialize)]
pub struct SizePoint {
    pub ports: usize,
    pub per_sec: Series,
    /// Failed connections per run (timeouts, resets).
    pub errors: Vec<u64>,
    pub connections: Vec<u64>,
}

impl SizePoint {
    /// One point per size, from the rates measured at it.
    pub fn all(rates: &[(usize, Vec<ConnRate>)]) -> Vec<SizePoint> {
        rates
            .iter()
            .map(|(ports, rates)| SizePoint {
                ports: *ports,
                per_sec: Series::of(rates, |c| c.per_sec),
                errors: rates.iter().map(|c| c.errors).collect(),
                connections: rates.iter().map(|c| c.connections).collect(),
            })
            .collect()
    }

    /// The median rate at `ports` in `points`, if measured.
    pub fn rate_at(points: &[SizePoint], ports: usize) -> Option<f64> {
        points.iter().find(|p| p.ports == ports).map(|p| p.per_sec.median).filter(|r| r.is_finite())
    }
}

#[derive(Serialize)]
pub struct VariantFigures {
    pub variant: Variant,
    pub conn_rate: Vec<SizePoint>,
    /// Clients and server on one vCPU.
    pub conn_rate_one_cpu: Vec<SizePoint>,
    /// Per round.
    pub throughput_gbit: Series,
    pub latency_p50_us: Series,
    pub latency_p99_us: Series,
    /// Every timed single publication at the largest size (the
    /// containers section does not time them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_one_ms: Option<Series>,
    /// Same, everything the runtime does for a port (Docker: 3 commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_one_full_ms: Option<Series>,
    /// Time to get to each size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_all_ms: Vec<(usize, f64)>,
    pub notes: Vec<String>,
}

impl VariantFigures {
    pub fn new(variant: Variant, s: &VariantSamples) -> VariantFigures {
        let conn_rate = SizePoint::all(&s.conn_rate);
        let conn_rate_one_cpu = SizePoint::all(&s.conn_rate_one_cpu);
        let ms = |f: fn(&AddOne) -> Duration| {
            (!s.add_one.is_empty()).then(|| Series::of(&s.add_one, |a| f(a).as_secs_f64() * 1e3))
        };
        VariantFigures {
            variant,
            conn_rate,
            conn_rate_one_cpu,
            throughput_gbit: Series::new(s.throughput_gbit.clone()),
            latency_p50_us: Series::of(&s.latency, |l| l.p50_us),
            latency_p99_us: Series::of(&s.latency, |l| l.p99_us),
            publish_one_ms: ms(|a| a.op),
            publish_one_full_ms: ms(|a| a.full),
            publish_all_ms: s.publish_all.iter().map(|(p, d)| (*p, d.as_secs_f64() * 1e3)).collect(),
            notes: s.notes.clone(),
        }
    }

    pub fn rate_at(&self, ports: usize) -> Option<f64> {
        SizePoint::rate_at(&self.conn_rate, ports)
    }

    pub fn one_cpu_rate_at(&self, ports: usize) -> Option<f64> {
        SizePoint::rate_at(&self.conn_rate_one_cpu, ports)
    }
}

#[derive(Serialize)]
pub struct Method {
    pub sections: Vec<&'static str>,
    pub rounds: usize,
    pub sizes: Vec<usize>,
    pub rules: Vec<usize>,
    pub seconds_per_load_measurement: f64,
    pub client_threads: usize,
    pub server_threads: usize,
    pub latency_round_trips: usize,
    pub prog_run_calls: u32,
    pub quick: bool,
}

#[derive(Serialize)]
pub struct Target {
    /// The section it belongs to (`publish`, `masquerade`, `policy`).
    pub section: &'static str,
    pub what: String,
    pub measured: String,
    /// None: not measured in this run (a variant was left out).
    pub met: Option<bool>,
}

impl Target {
    pub fn new(section: &'static str, what: &str, measured: String, met: bool) -> Target {
        Target { section, what: what.into(), measured, met: Some(met) }
    }

    pub fn not_measured(section: &'static str, what: &str) -> Target {
        Target { section, what: what.into(), measured: "not measured in this run".into(), met: None }
    }
}

/// What the sections measured, before aggregation.
pub struct Measured {
    pub publish: Vec<(Variant, VariantSamples)>,
    pub prog_run: Vec<progrun::Figure>,
    pub masquerade: Option<MasqFigures>,
    pub ipv6: Option<super::ipv6::Ipv6Figures>,
    pub containers: Option<super::containers::C2cFigures>,
    pub policy: Option<PolicyFigures>,
    pub control: Option<ControlFigures>,
    pub attach: Option<AttachFigures>,
    pub drop: Option<super::drop::DropFigures>,
    pub settles: Vec<super::machine::Settle>,
}

#[derive(Serialize)]
pub struct Results {
    pub date: String,
    pub machine: Machine,
    pub method: Method,
    pub wall_time_s: f64,
    /// `/proc/loadavg` at the end.
    pub loadavg_after: String,
    /// Published ports.
    pub variants: Vec<VariantFigures>,
    pub prog_run: Vec<progrun::Figure>,
    pub masquerade: Option<MasqFigures>,
    /// A published port over both families.
    pub ipv6: Option<super::ipv6::Ipv6Figures>,
    /// Container to container on one host.
    pub containers: Option<super::containers::C2cFigures>,
    pub policy: Option<PolicyFigures>,
    pub control: Option<ControlFigures>,
    pub attach: Option<AttachFigures>,
    /// Floods dropped per core.
    pub drop: Option<super::drop::DropFigures>,
    /// How quiet the machine was when each phase started.
    pub settles: Vec<super::machine::Settle>,
    /// Every section's targets.
    pub targets: Vec<Target>,
    /// Runs or phases that failed (left out of the medians).
    pub failures: Vec<String>,
}

impl Results {
    pub fn aggregate(
        date: String,
        machine: Machine,
        opts: &Options,
        measured: Measured,
        failures: Vec<String>,
        wall_time: Duration,
    ) -> Results {
        let variants: Vec<VariantFigures> = measured.publish.iter().map(|(v, s)| VariantFigures::new(*v, s)).collect();
        let mut all_targets = if opts.runs(Section::Publish) { targets(&variants, opts) } else { vec![] };
        all_targets.extend(progrun::targets(&measured.prog_run));
        all_targets.extend(measured.masquerade.iter().flat_map(MasqFigures::targets));
        all_targets.extend(measured.ipv6.iter().flat_map(super::ipv6::Ipv6Figures::targets));
        all_targets.extend(measured.containers.iter().flat_map(super::containers::C2cFigures::targets));
        all_targets.extend(measured.policy.iter().flat_map(PolicyFigures::targets));
        all_targets.extend(measured.control.iter().flat_map(ControlFigures::targets));
        all_targets.extend(measured.attach.iter().flat_map(AttachFigures::targets));
        all_targets.extend(measured.drop.iter().flat_map(super::drop::DropFigures::targets));
        Results {
            date,
            machine,
            method: Method {
                sections: opts.sections.iter().map(|s| s.name()).collect(),
                rounds: opts.rounds,
                sizes: opts.sizes.clone(),
                rules: opts.rules.clone(),
                seconds_per_load_measurement: opts.seconds,
                client_threads: opts.client_threads,
                server_threads: opts.server_threads,
                latency_round_trips: opts.latency_round_trips,
                prog_run_calls: opts.prog_run_calls,
                quick: opts.quick,
            },
            wall_time_s: wall_time.as_secs_f64(),
            loadavg_after: super::machine::loadavg(),
            variants,
            prog_run: measured.prog_run,
            masquerade: measured.masquerade,
            ipv6: measured.ipv6,
            containers: measured.containers,
            policy: measured.policy,
            control: measured.control,
            attach: measured.attach,
            drop: measured.drop,
            settles: measured.settles,
            targets: all_targets,
            failures,
        }
    }

    pub fn variant(&self, v: Variant) -> Option<&VariantFigures> {
        self.variants.iter().find(|f| f.variant == v)
    }
}

const PUBLISH: &str = "publish";

/// The count the bulk target names: 10000 mappings, or 10000
/// rules, applied in under [`BULK_BUDGET_MS`].
pub const BULK_COUNT: usize = 10_000;
pub const BULK_BUDGET_MS: f64 = 1000.0;

/// The bulk target of a section whose bed grows in bulk calls (`steps`:
/// the count each call got to, and its milliseconds): the calls that got
/// from nothing to [`BULK_COUNT`] `things`, summed, under
/// [`BULK_BUDGET_MS`]. Each call is all or nothing, so the sum is an upper
/// bound of one call with all of them.
pub fn bulk_target(section: &'static str, things: &str, steps: &[(usize, f64)]) -> Target {
    let what = format!("{BULK_COUNT} {things} applied in bulk in under {BULK_BUDGET_MS:.0} ms");
    let upto: Vec<&(usize, f64)> = steps.iter().filter(|(count, _)| *count <= BULK_COUNT).collect();
    if upto.last().map(|(count, _)| *count) != Some(BULK_COUNT) {
        return Target::not_measured(section, &what);
    }
    let total: f64 = upto.iter().map(|(_, ms)| ms).sum();
    let calls: Vec<String> = upto.iter().map(|(count, ms)| format!("to {count}: {ms:.1} ms")).collect();
    Target::new(
        section,
        &what,
        format!("{total:.1} ms in {} all-or-nothing calls ({})", upto.len(), calls.join(", ")),
        total < BULK_BUDGET_MS,
    )
}

/// The published-ports section's targets.
fn targets(variants: &[VariantFigures], opts: &Options) -> Vec<Target> {
    let find = |v: Variant| variants.iter().find(|f| f.variant == v);
    let (np, ipt, nonat) = (find(Variant::Netpath), find(Variant::Iptables), find(Variant::NoNat));
    let largest = *opts.sizes.last().unwrap_or(&1);
    let mut out = vec![];

    let keep = np.and_then(|n| Some((n.rate_at(largest)?, n.rate_at(1)?)));
    out.push(match keep {
        Some((big, one)) => Target::new(
            PUBLISH,
            &format!("netpath at {largest} ports keeps >= 95% of its own 1-port connection rate"),
            format!("{big:.0} vs {one:.0} conn/s = {:.1}%", 100.0 * big / one),
            big >= 0.95 * one,
        ),
        None => Target::not_measured(PUBLISH, "netpath keeps >= 95% of its 1-port connection rate at the largest size"),
    });

    out.push(match (np, ipt) {
        (Some(n), Some(i)) => {
            let pairs: Vec<(usize, f64, f64)> =
                opts.sizes.iter().filter_map(|&s| Some((s, n.rate_at(s)?, i.rate_at(s)?))).collect();
            Target::new(
                PUBLISH,
                "netpath beats Docker-style iptables at every size (connection rate)",
                pairs
                    .iter()
                    .map(|(s, a, b)| format!("{s} port(s): netpath {a:.0} vs iptables {b:.0} conn/s ({:.2}x)", a / b))
                    .collect::<Vec<_>>()
                    .join("; "),
                pairs.iter().all(|(_, a, b)| a > b),
            )
        }
        _ => Target::not_measured(PUBLISH, "netpath beats Docker-style iptables at every size"),
    });

    out.push(match (np, nonat) {
        (Some(n), Some(z)) => {
            let pairs: Vec<(usize, f64, f64)> = opts
                .sizes
                .iter()
                .filter_map(|&s| Some((s, n.one_cpu_rate_at(s)?, z.one_cpu_rate_at(s)?)))
                .collect();
            Target::new(
                PUBLISH,
                "on one vCPU, netpath's connection rate through a published port >= plain routing's (no-nat) at every size",
                pairs
                    .iter()
                    .map(|(s, a, b)| {
                        format!("{s} port(s): {a:.0} vs {b:.0} conn/s ({:.2}x, {:+.1} us per connection)", a / b, 1e6 / a - 1e6 / b)
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                !pairs.is_empty() && pairs.iter().all(|(_, a, b)| a >= b),
            )
        }
        _ => Target::not_measured(PUBLISH, "on one vCPU, netpath's connection rate >= no-nat's"),
    });

    out.push(match (np, nonat) {
        (Some(n), Some(z)) => {
            let (a, b) = (n.throughput_gbit.median, z.throughput_gbit.median);
            Target::new(
                PUBLISH,
                "netpath single-stream throughput >= 95% of no-nat",
                format!("{a:.2} vs {b:.2} Gbit/s = {:.1}%", 100.0 * a / b),
                a >= 0.95 * b,
            )
        }
        _ => Target::not_measured(PUBLISH, "netpath throughput >= 95% of no-nat"),
    });

    out.push(bulk_target(PUBLISH, "published ports", np.map(|n| n.publish_all_ms.as_slice()).unwrap_or_default()));

    out.push(match np.and_then(|n| n.publish_one_ms.as_ref()) {
        Some(s) => Target::new(
            PUBLISH,
            &format!("publishing one more port at {largest} takes < 1 ms (netpath API round trip, median)"),
            format!("{:.3} ms", s.median),
            s.median < 1.0,
        ),
        None => Target::not_measured(PUBLISH, "publishing one more port takes < 1 ms"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_target_sums_the_calls_that_got_to_ten_thousand() {
        let t = bulk_target("s", "things", &[(1, 1.0), (1000, 15.0), (10_000, 60.0), (100_000, 600.0)]);
        assert_eq!(t.met, Some(true));
        assert!(t.measured.starts_with("76.0 ms in 3 all-or-nothing calls"), "{}", t.measured);
        let slow = bulk_target("s", "things", &[(0, 1.0), (1000, 15.0), (10_000, 990.0)]);
        assert_eq!(slow.met, Some(false), "{}", slow.measured);
        assert_eq!(bulk_target("s", "things", &[(1, 1.0), (1000, 15.0)]).met, None, "never got to 10000");
        assert_eq!(bulk_target("s", "things", &[]).met, None);
    }
}
