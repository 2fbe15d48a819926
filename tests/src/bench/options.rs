//! Command-line options and the knobs of the method.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::bed::{Variant, MAX_PORTS};

/// The parts of the benchmark, each with its own beds and report section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Published ports (DNAT from the world to a container).
    Publish,
    /// Masquerade (SNAT from a container to the world).
    Masquerade,
    /// Per-container policy on a published port.
    Policy,
    /// API calls with an empty and a full conntrack table.
    Control,
    /// Floods the uplink never accepts, dropped per core (XDP, tc, nftables).
    Drop,
    /// A published port over IPv4 and IPv6 side by side.
    Ipv6,
    /// Container to container on one host, against a plain Linux bridge.
    Containers,
}

impl Section {
    /// In run order: control last, since its attach curve leaves 1000
    /// namespaces whose deletion keeps kernel workers busy for minutes.
    pub const ALL: [Section; 7] = [
        Section::Publish,
        Section::Masquerade,
        Section::Ipv6,
        Section::Containers,
        Section::Policy,
        Section::Drop,
        Section::Control,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Publish => "publish",
            Section::Masquerade => "masquerade",
            Section::Policy => "policy",
            Section::Control => "control",
            Section::Drop => "drop",
            Section::Ipv6 => "ipv6",
            Section::Containers => "containers",
        }
    }

    pub fn parse(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }
}

pub struct Options {
    pub quick: bool,
    pub sections: Vec<Section>,
    /// Repetitions of every measurement, interleaved across the variants.
    pub rounds: usize,
    /// Published-port counts; the first must be 1 (throughput and latency
    /// are measured there).
    pub sizes: Vec<usize>,
    /// Length of each connection-rate and throughput measurement.
    pub seconds: f64,
    pub variants: Vec<Variant>,
    /// Policy rule counts for the policy section; the first must be 0.
    pub rules: Vec<usize>,
    pub out: PathBuf,
    pub client_threads: usize,
    pub server_threads: usize,
    pub latency_round_trips: usize,
    /// BPF_PROG_TEST_RUN calls per figure.
    pub prog_run_calls: u32,
}

const USAGE: &str =
    "netpath-bench [--quick] [--sections publish,masquerade,ipv6,containers,policy,control,drop] [--rounds N] \
                     [--sizes 1,1000,10000,100000] [--rules 0,1000,10000] [--seconds S] \
                     [--variants no-nat,iptables,nftables,netpath,netpath-stack] [--out DIR]";

/// At most this many policy rules (the filler CIDRs are /32s in 100.64.0.0/10).
pub const MAX_RULES: usize = 100_000;

impl Options {
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut o = Options {
            quick: false,
            sections: Section::ALL.to_vec(),
            rounds: 3,
            sizes: vec![1, 1000, 10000, 100000],
            seconds: 2.0,
            variants: Variant::ALL.to_vec(),
            rules: vec![0, 1000, 10000],
            out: default_out_dir(),
            client_threads: 4,
            server_threads: 4,
            latency_round_trips: 5000,
            prog_run_calls: 100_000,
        };
        let (mut rounds, mut sizes, mut rules, mut seconds, mut out) = (None, None, None, None, None);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value; usage: {USAGE}"));
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--rounds" => rounds = Some(value()?.parse::<usize>().context("--rounds")?),
                "--sections" => o.sections = parse_list(&value()?, Section::parse)?,
                "--sizes" => sizes = Some(parse_list(&value()?, |s| s.parse::<usize>().ok())?),
                "--rules" => rules = Some(parse_list(&value()?, |s| s.parse::<usize>().ok())?),
                "--seconds" => seconds = Some(value()?.parse::<f64>().context("--seconds")?),
                "--variants" => o.variants = parse_list(&value()?, Variant::parse)?,
                "--out" => out = Some(PathBuf::from(value()?)),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}; usage: {USAGE}"),
            }
        }
        if o.quick {
            // A short run for development: one round, two sizes, 1 s loads,
            // written away from the committed results.
            o.rounds = 1;
            o.sizes = vec![1, 1000];
            o.rules = vec![0, 1000];
            o.seconds = 1.0;
            o.latency_round_trips = 2000;
            o.prog_run_calls = 20_000;
            o.out = std::env::temp_dir().join("netpath-bench-quick");
        }
        o.rounds = rounds.unwrap_or(o.rounds);
        o.sizes = sizes.unwrap_or(o.sizes);
        o.rules = rules.unwrap_or(o.rules);
        o.seconds = seconds.unwrap_or(o.seconds);
        o.out = out.unwrap_or(o.out);
        o.check()?;
        Ok(o)
    }

    fn check(&self) -> Result<()> {
        if self.rounds == 0 || !(0.1..=30.0).contains(&self.seconds) {
            bail!("--rounds must be at least 1 and --seconds between 0.1 and 30");
        }
        if self.sizes.first() != Some(&1) || self.sizes.windows(2).any(|w| w[0] >= w[1]) {
            bail!("--sizes must start with 1 and grow (throughput and latency are measured with 1 port)");
        }
        if self.sizes.iter().any(|&s| s > MAX_PORTS) {
            bail!("at most {MAX_PORTS} published ports");
        }
        if self.rules.first() != Some(&0) || self.rules.windows(2).any(|w| w[0] >= w[1]) {
            bail!("--rules must start with 0 and grow (the rate without rules is the reference)");
        }
        if self.rules.iter().any(|&r| r > MAX_RULES) {
            bail!("at most {MAX_RULES} policy rules");
        }
        if self.variants.is_empty() || self.sections.is_empty() {
            bail!("no variant or no section selected");
        }
        Ok(())
    }

    pub fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    pub fn load_time(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// How many single publications are timed at the largest size: the API
    /// call is cheap, so more samples; iptables and nft run a process each.
    pub fn add_one_samples(&self, variant: Variant) -> usize {
        match variant {
            // The same API call with or without the fast path.
            Variant::NoNat | Variant::NetpathStack => 0,
            Variant::Netpath => 20,
            Variant::Iptables | Variant::Nftables => 10,
        }
    }
}

fn parse_list<T>(text: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    text.split(',').map(|s| parse(s.trim()).with_context(|| format!("bad list item {s:?} in {text:?}"))).collect()
}

/// `bench/` at the top of the workspace.
fn default_out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("bench"))
        .unwrap_or_else(|| PathBuf::from("bench"))
}
