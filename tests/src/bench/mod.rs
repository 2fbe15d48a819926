//! The benchmark behind `cargo xtask bench`, in three sections, each with
//! its own beds:
//!
//! - publish: a published container port reached from the world (no NAT,
//!   Docker's iptables, an nftables map, netpath) as the number of
//!   published ports grows; BPF_PROG_TEST_RUN figures of the DNAT path;
//! - masquerade ([`masquerade`]): connections and a stream from a
//!   container to the world through each variant's SNAT; BPF_PROG_TEST_RUN
//!   figures of the SNAT path;
//! - ipv6 ([`ipv6`]): a published port over IPv4 and IPv6 side by side
//!   (ip6tables, an nftables ip6 map, netpath);
//! - containers ([`containers`]): container to container on one host,
//!   against a plain Linux bridge and Docker's bridge with br_netfilter;
//! - policy ([`policy`]): the published port with 0..10000 inbound rules
//!   (iptables' DOCKER-USER, netpath's API), and the time to add one more;
//! - control ([`control`]): API calls (map, unmap, status) with an empty
//!   and a full conntrack table, the GC walking it meanwhile;
//! - drop ([`drop`]): floods the uplink never accepts (a guarded port, a
//!   denied source), dropped per core by netpath's XDP, its tc hook,
//!   nftables' netdev ingress hook, or not early at all.
//!
//! Every variant gets its own fresh namespaces (the [`Topology`] harness:
//! host, world and one container, all named with the per-run prefix and
//! deleted on drop, also on failure), a multi-threaded server (in the
//! container, or in the world for the masquerade) and load generators on
//! the other side. A section's beds live side by side and every
//! measurement window is interleaved across them (see [`schedule`]), so
//! that load from elsewhere on a shared machine falls on all variants
//! alike; the report quotes the median of the rounds. Sections run one
//! after the other, so that at most one netpath agent runs at a time.
//!
//! [`Topology`]: netpath_tests::topology::Topology

mod attach;
mod baseline_prog;
mod bed;
mod containers;
mod control;
mod cpu;
mod drop;
mod fast_progrun;
mod iptables;
mod ipv6;
mod load;
mod machine;
mod masq_bed;
mod masquerade;
mod netpath;
mod nftables;
mod options;
mod plain;
mod plot;
mod policy;
mod policy_bed;
mod progrun;
mod report;
mod report_ipv6;
mod report_masq;
mod report_policy;
mod results;
mod schedule;
mod server;
mod snat_progrun;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Result};

use self::{
    masquerade::MasqFigures,
    options::{Options, Section},
    policy::PolicyFigures,
    results::Measured,
};

pub fn main() -> Result<()> {
    let opts = Options::parse(std::env::args().skip(1))?;
    if !netpath_tests::is_root() {
        bail!("the benchmark creates network namespaces and loads BPF programs: run it as root (cargo xtask bench)");
    }
    if std::env::var_os("NETPATH_TEST_PREFIX").is_none() {
        std::env::set_var("NETPATH_TEST_PREFIX", format!("npbench{:x}", std::process::id()));
    }
    install_interrupt_handler();
    let started = Instant::now();
    let date = machine::now_utc();
    let machine = machine::describe();
    let sections: Vec<&str> = opts.sections.iter().map(|s| s.name()).collect();
    eprintln!(
        "netpath-bench: sections {sections:?}, {} round(s), ports {:?}, rules {:?}, {} s per load measurement",
        opts.rounds, opts.sizes, opts.rules, opts.seconds
    );

    // A failing variant is dropped (and reported) while the others go on;
    // the process still fails at the end, after writing what was measured.
    let mut failures: Vec<String> = vec![];
    let mut measured = Measured {
        publish: vec![],
        prog_run: vec![],
        masquerade: None,
        ipv6: None,
        containers: None,
        policy: None,
        control: None,
        attach: None,
        drop: None,
        settles: vec![],
    };
    // Every phase starts on a machine that the previous one's teardown has
    // left (see machine::settle); how long that took is reported.
    let mut settles = vec![];
    let mut settle = |phase| {
        let s = machine::settle(phase);
        eprintln!("   (waited {:.0} s for a quiet machine: {:.0}% busy)", s.waited_s, s.busy_pct);
        settles.push(s);
    };
    if opts.runs(Section::Publish) {
        settle("publish");
        measured.publish = schedule::run(&opts, &mut failures)?;
        eprintln!("== BPF_PROG_TEST_RUN (published ports)");
        settle("publish: BPF_PROG_TEST_RUN");
        measured.prog_run = prog_run("BPF_PROG_TEST_RUN", progrun::measure(&opts), &mut failures);
        check_interrupted()?;
    }
    if opts.runs(Section::Masquerade) {
        settle("masquerade");
        let samples = masquerade::run(&opts, &mut failures)?;
        eprintln!("== BPF_PROG_TEST_RUN (masquerade)");
        settle("masquerade: BPF_PROG_TEST_RUN");
        let snat = prog_run("masquerade: BPF_PROG_TEST_RUN", snat_progrun::measure(&opts), &mut failures);
        check_interrupted()?;
        measured.masquerade = Some(MasqFigures::new(&samples, snat, &opts));
    }
    if opts.runs(Section::Ipv6) {
        settle("ipv6");
        let samples = ipv6::run(&opts, &mut failures)?;
        check_interrupted()?;
        measured.ipv6 = Some(ipv6::Ipv6Figures::new(&samples));
    }
    if opts.runs(Section::Containers) {
        settle("containers");
        let samples = containers::run(&opts, &mut failures)?;
        check_interrupted()?;
        measured.containers = Some(containers::C2cFigures::new(&samples));
    }
    if opts.runs(Section::Policy) {
        settle("policy");
        let samples = policy::run(&opts, &mut failures)?;
        check_interrupted()?;
        measured.policy = Some(PolicyFigures::new(&samples, &opts));
    }
    // Control last: its attach curve leaves 1000 namespaces whose deletion
    // keeps kernel workers busy for minutes.
    if opts.runs(Section::Drop) {
        settle("drop");
        match drop::run(&opts, &mut failures) {
            Ok(figures) => measured.drop = Some(figures),
            Err(e) => {
                eprintln!("   FAILED: {e:#}");
                failures.push(format!("drop: {e:#}"));
            }
        }
        check_interrupted()?;
    }
    if opts.runs(Section::Control) {
        settle("control");
        match control::run(&opts) {
            Ok(figures) => measured.control = Some(figures),
            Err(e) => {
                eprintln!("   FAILED: {e:#}");
                failures.push(format!("control: {e:#}"));
            }
        }
        check_interrupted()?;
        match attach::run(&opts) {
            Ok(figures) => measured.attach = Some(figures),
            Err(e) => {
                eprintln!("   FAILED: {e:#}");
                failures.push(format!("control: attach curve: {e:#}"));
            }
        }
        check_interrupted()?;
    }

    measured.settles = settles;
    let results = results::Results::aggregate(date, machine, &opts, measured, failures, started.elapsed());
    report::write(&opts.out, &results)?;
    eprintln!("netpath-bench: results in {} ({:.0} s)", opts.out.display(), started.elapsed().as_secs_f64());
    if !results.failures.is_empty() {
        bail!("{} measurement(s) failed (listed in {}/RESULTS.md)", results.failures.len(), opts.out.display());
    }
    Ok(())
}

/// A BPF_PROG_TEST_RUN measurement's figures, or none and a recorded failure.
fn prog_run<T>(what: &str, r: Result<Vec<T>>, failures: &mut Vec<String>) -> Vec<T> {
    r.unwrap_or_else(|e| {
        eprintln!("   FAILED: {e:#}");
        failures.push(format!("{what}: {e:#}"));
        vec![]
    })
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM stop the benchmark at the next check, so that the beds
/// are dropped (namespaces, agent, pins removed) rather than left behind.
fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores into an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
