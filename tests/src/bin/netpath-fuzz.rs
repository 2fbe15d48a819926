//! `cargo xtask fuzz`: the packet fuzzer (`netpath_tests::fuzz`) for longer
//! than the suite runs it, with a results file.
//!
//! ```text
//! netpath-fuzz [--frames N] [--seed S] [--out FILE]
//!     N random cases per program and world after the systematic sweep
//!     (default 20000); S the PRNG seed (default: from the clock); FILE
//!     gets the counts, the seed and the outcome as Markdown
//! ```
//! Exits with 1 when a property was violated (the file says which).

use anyhow::{bail, Context as _, Result};
use netpath_tests::{
    fuzz,
    machine::{cpu_model, first_line},
};

fn machine() -> String {
    let cpu = cpu_model();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpus} x {cpu}, kernel {}", first_line("uname", &["-r"]))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut frames = 20000;
    let mut seed = fuzz::clock_seed();
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| it.next().with_context(|| format!("{a} needs {what}")).cloned();
        match a.as_str() {
            "--frames" => frames = value("a number")?.parse().context("--frames")?,
            "--seed" => seed = value("a number")?.parse().context("--seed")?,
            "--out" => out = Some(value("a file")?),
            other => bail!("unknown argument {other:?} (netpath-fuzz [--frames N] [--seed S] [--out FILE])"),
        }
    }
    if !netpath_tests::is_root() {
        bail!("the fuzzer loads BPF programs: run it as root");
    }
    println!("fuzz seed {seed}, {frames} random cases per program and world");
    let report = fuzz::run(&fuzz::Options { seed, frames })?;
    println!("{}", report.summary());
    if let Some(path) = out {
        let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        std::fs::write(&path, report.markdown(&date, &machine())).with_context(|| format!("writing {path}"))?;
        println!("wrote {path}");
    }
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
