//! The benchmark behind `cargo xtask bench`.
//!
//! Every variant gets its own fresh namespaces (the [`Topology`] harness:
//! host, world and one container, all named with the per-run prefix and
//! deleted on drop, also on failure), a multi-threaded server on port 80 in
//! the container and load generators in the world namespace that talk to
//! the published port on the host's uplink address (or, for `no-nat`, to
//! the container address through a plain route). The four beds live side
//! by side and every measurement window is interleaved across them (see
//! [`schedule`]), so that load from elsewhere on a shared machine falls on
//! all variants alike; the report quotes the median of the rounds.
//!
//! [`Topology`]: netpath_tests::topology::Topology

mod bed;
mod cpu;
mod iptables;
mod load;
mod machine;
mod netpath;
mod nftables;
mod options;
mod plain;
mod plot;
mod progrun;
mod report;
mod results;
mod schedule;
mod server;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Result};

use self::options::Options;

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
    eprintln!("netpath-bench: {} round(s), ports {:?}, {} s per load measurement", opts.rounds, opts.sizes, opts.seconds);

    // A failing variant is dropped (and reported) while the others go on;
    // the process still fails at the end, after writing what was measured.
    let mut failures: Vec<String> = vec![];
    let samples = schedule::run(&opts, &mut failures)?;
    eprintln!("== BPF_PROG_TEST_RUN");
    let prog_run = progrun::measure(&opts).unwrap_or_else(|e| {
        eprintln!("   FAILED: {e:#}");
        failures.push(format!("BPF_PROG_TEST_RUN: {e:#}"));
        vec![]
    });
    check_interrupted()?;

    let results = results::Results::aggregate(date, machine, &opts, &samples, prog_run, failures, started.elapsed());
    report::write(&opts.out, &results)?;
    eprintln!("netpath-bench: results in {} ({:.0} s)", opts.out.display(), started.elapsed().as_secs_f64());
    if !results.failures.is_empty() {
        bail!("{} measurement(s) failed (listed in {}/RESULTS.md)", results.failures.len(), opts.out.display());
    }
    Ok(())
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
