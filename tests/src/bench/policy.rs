//! Policy (issue 5): short connections per second from the world to a
//! published port of a container with 0, 1000 and 10000 inbound rules, of
//! which only the last-added one matches the client (see
//! [`super::policy_bed`]), interleaved like the other sections; then the
//! time to add one more rule at the largest count, idle and with a known
//! number of tracked flows (netpath re-judges tracked flows on every policy
//! change).

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    bed::{Variant, CONTAINER_PORT},
    check_interrupted,
    load::{self, ConnRate},
    options::{Options, Section},
    policy_bed::{extra_cidr, IptablesPolicyBed, NetpathPolicyBed, PolicyBed, PolicyVariant},
    results::{median, Series, Target},
    schedule::{Lane, Lanes},
    server::Server,
};

/// Timings of one more rule, idle: the API call is cheap, so more samples.
fn add_one_samples(v: PolicyVariant) -> usize {
    if v == PolicyVariant::Netpath {
        20
    } else {
        10
    }
}
/// Short connections made before timing one more netpath rule with tracked
/// flows, and how many such timings.
const TRACKED_CONNECTIONS: u64 = 1000;
const TRACKED_SAMPLES: usize = 3;

/// The variants of this section that `--variants` selects.
pub fn variants(opts: &Options) -> Vec<PolicyVariant> {
    PolicyVariant::ALL
        .into_iter()
        .filter(|v| match v {
            PolicyVariant::Iptables | PolicyVariant::IptablesCt => opts.variants.contains(&Variant::Iptables),
            PolicyVariant::Netpath => opts.variants.contains(&Variant::Netpath),
        })
        .collect()
}

/// One more rule timed while flows were tracked.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tracked {
    /// Short connections made just before (each leaves its flow tracked for
    /// the reset timeout).
    pub connections: u64,
    /// Conntrack entries when the timing started (NAT and verdicts, both
    /// directions: four per connection).
    pub ct_entries: u64,
    pub ms: Series,
}

#[derive(Default)]
pub struct PolicySamples {
    /// Per rule count, one value per round.
    pub conn_rate: Vec<(usize, Vec<ConnRate>)>,
    /// Time to get to each rule count.
    pub set_rules: Vec<(usize, Duration)>,
    /// One more rule at the largest count, idle.
    pub add_one: Vec<Duration>,
    pub add_one_tracked: Option<Tracked>,
    pub notes: Vec<String>,
}

struct PolicyLane {
    variant: PolicyVariant,
    // Dropped before the bed, so that its threads end before the namespace goes.
    server: Option<Server>,
    bed: Box<dyn PolicyBed>,
    samples: PolicySamples,
}

impl Lane for PolicyLane {
    type Key = PolicyVariant;
    type Samples = PolicySamples;

    fn key(&self) -> PolicyVariant {
        self.variant
    }

    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn into_samples(mut self) -> PolicySamples {
        self.server.take();
        self.samples
    }
}

impl PolicyLane {
    fn new(variant: PolicyVariant, opts: &Options) -> Result<PolicyLane> {
        let bed: Box<dyn PolicyBed> = match variant {
            PolicyVariant::Iptables => Box::new(IptablesPolicyBed::new(false)?),
            PolicyVariant::IptablesCt => Box::new(IptablesPolicyBed::new(true)?),
            PolicyVariant::Netpath => Box::new(NetpathPolicyBed::new()?),
        };
        let topo = bed.topology();
        load::prepare_clients(topo, &topo.world)?;
        let server = Server::start(topo, &topo.container_ns(1), CONTAINER_PORT, opts.server_threads)?;
        Ok(PolicyLane { variant, server: Some(server), bed, samples: PolicySamples::default() })
    }

    fn set_rules(&mut self, rules: usize) -> Result<()> {
        let took = self.bed.set_rules(rules)?;
        eprintln!("   {:<11} {rules:>6} rules in {:.1} s", self.variant.name(), took.as_secs_f64());
        self.samples.set_rules.push((rules, took));
        let topo = self.bed.topology();
        load::wait_reachable(topo, &topo.world, self.bed.target())?;
        self.samples.conn_rate.push((rules, vec![]));
        Ok(())
    }

    fn conn_rate(&mut self, rules: usize, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let rate = load::conn_rate(topo, &topo.world, self.bed.target(), opts.client_threads, opts.load_time())?;
        eprintln!(
            "   {:<11} {rules:>6} rules: {:>8.0} conn/s ({} errors)",
            self.variant.name(),
            rate.per_sec,
            rate.errors
        );
        if let Some((_, rates)) = self.samples.conn_rate.last_mut() {
            rates.push(rate);
        }
        Ok(())
    }

    /// One more rule, idle: for netpath with no flow tracked (the table is
    /// flushed first: the last load window left tens of thousands).
    fn add_one(&mut self) -> Result<()> {
        if let Some(np) = self.bed.as_netpath() {
            np.flush_conntrack()?;
        }
        for k in 0..add_one_samples(self.variant) {
            check_interrupted()?;
            let took = self.bed.add_one(extra_cidr(k))?;
            self.samples.add_one.push(took);
        }
        let ms: Vec<f64> = self.samples.add_one.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        eprintln!("   {:<11} one more rule: {:.3} ms (median)", self.variant.name(), median(&ms));
        Ok(())
    }

    /// netpath only: one more rule after `TRACKED_CONNECTIONS` short
    /// connections, whose flows are then tracked.
    fn add_one_tracked(&mut self) -> Result<()> {
        let target = self.bed.target();
        let Some(np) = self.bed.as_netpath() else { return Ok(()) };
        let topo = np.topology();
        let connections = load::short_requests(topo, &topo.world, target, TRACKED_CONNECTIONS)?;
        let ct_entries = np.bed.ct_entries()?;
        let first = add_one_samples(PolicyVariant::Netpath);
        let mut ms = vec![];
        for k in 0..TRACKED_SAMPLES {
            check_interrupted()?;
            ms.push(np.add_one(extra_cidr(first + k))?.as_secs_f64() * 1e3);
        }
        eprintln!(
            "   netpath     one more rule with {ct_entries} conntrack entries ({connections} connections): {:.1} ms (median)",
            median(&ms)
        );
        self.samples.add_one_tracked = Some(Tracked { connections, ct_entries, ms: Series::new(ms) });
        Ok(())
    }

    fn counters(&mut self) -> Result<()> {
        self.samples.notes.extend(self.bed.notes());
        if let Some(np) = self.bed.as_netpath() {
            for note in [np.bed.counters_note()?, np.bed.reset_flows_note()?] {
                eprintln!("   netpath     after the section: {note}");
                self.samples.notes.push(format!("netpath after the policy measurements: {note}"));
            }
        }
        Ok(())
    }
}

/// The policy section's measurements, interleaved across the variants.
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(PolicyVariant, PolicySamples)>> {
    let order = variants(opts);
    let mut lanes = Lanes::new(Section::Policy.name(), failures);
    for &variant in &order {
        lanes.set_up(variant, variant.name(), || PolicyLane::new(variant, opts))?;
    }
    for &rules in &opts.rules {
        eprintln!("== policy: {rules} rule(s)");
        lanes.each(0, &format!("setting {rules} rules"), |l| {
            l.set_rules(rules).with_context(|| format!("{rules} rules"))
        })?;
        for round in 0..opts.rounds {
            lanes.each(round, "connection rate", |l| l.conn_rate(rules, opts))?;
        }
    }
    eprintln!("== policy: one more rule at {} rules", opts.rules.last().copied().unwrap_or(0));
    lanes.each(0, "one more rule", PolicyLane::add_one)?;
    lanes.each(0, "one more rule with tracked flows", PolicyLane::add_one_tracked)?;
    lanes.each(0, "counters", PolicyLane::counters)?;
    Ok(lanes.finish(&order))
}

#[derive(Serialize)]
pub struct RulesPoint {
    pub rules: usize,
    pub per_sec: Series,
    pub errors: Vec<u64>,
    pub connections: Vec<u64>,
}

#[derive(Serialize)]
pub struct PolicyVariantFigures {
    pub variant: PolicyVariant,
    pub conn_rate: Vec<RulesPoint>,
    /// Time to get to each rule count (informational).
    pub set_rules_ms: Vec<(usize, f64)>,
    /// One more rule at the largest count, idle.
    pub add_one_ms: Option<Series>,
    pub add_one_tracked: Option<Tracked>,
    pub notes: Vec<String>,
}

impl PolicyVariantFigures {
    pub fn rate_at(&self, rules: usize) -> Option<f64> {
        self.conn_rate.iter().find(|p| p.rules == rules).map(|p| p.per_sec.median).filter(|r| r.is_finite())
    }

    /// The rate at `rules` over the rate without rules.
    pub fn kept(&self, rules: usize) -> Option<f64> {
        Some(self.rate_at(rules)? / self.rate_at(0)?)
    }
}

#[derive(Serialize)]
pub struct PolicyFigures {
    pub rules: Vec<usize>,
    pub tracked_connections: u64,
    pub variants: Vec<PolicyVariantFigures>,
}

impl PolicyFigures {
    pub fn new(samples: &[(PolicyVariant, PolicySamples)], opts: &Options) -> PolicyFigures {
        let variants = samples
            .iter()
            .map(|(v, s)| PolicyVariantFigures {
                variant: *v,
                conn_rate: s
                    .conn_rate
                    .iter()
                    .map(|(rules, rates)| RulesPoint {
                        rules: *rules,
                        per_sec: Series::of(rates, |c| c.per_sec),
                        errors: rates.iter().map(|c| c.errors).collect(),
                        connections: rates.iter().map(|c| c.connections).collect(),
                    })
                    .collect(),
                set_rules_ms: s.set_rules.iter().map(|(r, d)| (*r, d.as_secs_f64() * 1e3)).collect(),
                add_one_ms: (!s.add_one.is_empty()).then(|| Series::of(&s.add_one, |d| d.as_secs_f64() * 1e3)),
                add_one_tracked: s.add_one_tracked.clone(),
                notes: s.notes.clone(),
            })
            .collect();
        PolicyFigures { rules: opts.rules.clone(), tracked_connections: TRACKED_CONNECTIONS, variants }
    }

    pub fn variant(&self, v: PolicyVariant) -> Option<&PolicyVariantFigures> {
        self.variants.iter().find(|f| f.variant == v)
    }

    pub fn largest(&self) -> usize {
        self.rules.last().copied().unwrap_or(0)
    }

    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Policy.name();
        let largest = self.largest();
        let what = format!("policy: netpath at {largest} rules keeps >= 95% of its 0-rule connection rate (iptables shown for comparison)");
        let np = self.variant(PolicyVariant::Netpath);
        let Some((kept, big, zero)) = np.and_then(|n| Some((n.kept(largest)?, n.rate_at(largest)?, n.rate_at(0)?)))
        else {
            return vec![Target::not_measured(section, &what)];
        };
        let others: Vec<String> = [PolicyVariant::Iptables, PolicyVariant::IptablesCt]
            .into_iter()
            .filter_map(|v| Some(format!("{} {:.1}%", v.name(), 100.0 * self.variant(v)?.kept(largest)?)))
            .collect();
        let measured = format!(
            "netpath {big:.0} vs {zero:.0} conn/s = {:.1}%{}",
            100.0 * kept,
            if others.is_empty() { String::new() } else { format!("; {}", others.join(", ")) }
        );
        let mut out = vec![Target::new(section, &what, measured, kept >= 0.95)];
        out.push(super::results::bulk_target(
            section,
            "policy rules",
            np.map(|n| n.set_rules_ms.as_slice()).unwrap_or_default(),
        ));
        let what = format!("policy: adding one rule at {largest} rules takes < 1 ms (netpath API round trip, median)");
        out.push(match np.and_then(|n| n.add_one_ms.as_ref()) {
            Some(idle) => {
                let tracked = np
                    .and_then(|n| n.add_one_tracked.as_ref())
                    .map(|t| format!("; {:.3} ms with {} conntrack entries tracked", t.ms.median, t.ct_entries))
                    .unwrap_or_default();
                Target::new(section, &what, format!("{:.3} ms{tracked}", idle.median), idle.median < 1.0)
            }
            None => Target::not_measured(section, &what),
        });
        out
    }
}
