//! What the figures were measured on.

use std::process::Command;

use netpath_tests::machine::{cpu_model, first_line};

use serde::Serialize;

#[derive(Serialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// `model name` in /proc/cpuinfo.
    pub cpu: String,
    /// `nproc`.
    pub nproc: usize,
    pub iptables: String,
    pub nft: String,
    pub clocksource: String,
    /// `/proc/loadavg` when the benchmark started (others' work shows here).
    pub loadavg_before: String,
    /// The commit measured, and whether the work tree had changes to
    /// tracked files (they are built and measured too).
    pub source: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

pub fn describe() -> Machine {
    let cpu = cpu_model();
    Machine {
        kernel: first_line("uname", &["-r"]),
        cpu,
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        iptables: first_line("iptables", &["--version"]),
        nft: first_line("nft", &["--version"]),
        clocksource: read_trimmed("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        loadavg_before: loadavg(),
        source: source_state(),
    }
}

/// The current UTC time, ISO 8601.
pub fn now_utc() -> String {
    first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let text = read_trimmed("/proc/loadavg");
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// `<commit>` or `<commit> plus uncommitted changes to N files`.
fn source_state() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = first_line("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
    let changed = Command::new("git")
        .args(["-C", root, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    if changed == 0 {
        commit
    } else {
        format!("{commit} plus uncommitted changes to {changed} tracked files")
    }
}
