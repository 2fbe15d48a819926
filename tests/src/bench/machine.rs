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

/// How quiet the machine was when a timed phase started (see [`settle`]).
#[derive(Clone, Debug, Serialize)]
pub struct Settle {
    /// The phase that waited.
    pub phase: &'static str,
    /// Seconds waited.
    pub waited_s: f64,
    /// Busy share of all CPUs (%) over the last second before it started.
    pub busy_pct: f64,
}

/// A phase starts when the whole machine was at most this busy (%) for a
/// second: the benchmark's own earlier beds are torn down by kernel
/// workers (namespace cleanup) for a while after they are dropped, and a
/// phase timed meanwhile measures that, not what it names.
const QUIET_BUSY_PCT: f64 = 25.0;
/// The longest wait: a machine that never gets quiet (others' work) is
/// measured as it is, and the busy share recorded says so.
const MAX_SETTLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (up to [`MAX_SETTLE`]) for a second in which all CPUs together
/// were at most [`QUIET_BUSY_PCT`] busy, per `/proc/stat`.
pub fn settle(phase: &'static str) -> Settle {
    let started = std::time::Instant::now();
    let mut busy_pct = f64::NAN;
    let mut last = cpu_ticks();
    while started.elapsed() < MAX_SETTLE {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = cpu_ticks();
        if let (Some((busy0, all0)), Some((busy1, all1))) = (last, now) {
            busy_pct = busy_share(busy1 - busy0, all1 - all0);
            if busy_pct <= QUIET_BUSY_PCT {
                break;
            }
        }
        last = now;
    }
    Settle { phase, waited_s: started.elapsed().as_secs_f64(), busy_pct }
}

/// Busy share (%) of `busy` ticks in `all`.
fn busy_share(busy: u64, all: u64) -> f64 {
    if all == 0 {
        return 0.0;
    }
    100.0 * busy as f64 / all as f64
}

/// Busy and total ticks of all CPUs together (the `cpu` line of
/// `/proc/stat`: idle and iowait are not busy).
fn cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(text.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already inside user and nice.
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some((all - idle, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_gives_busy_and_all_ticks() {
        assert_eq!(parse_cpu_line("cpu  100 5 50 800 20 3 2 20 0 0"), Some((180, 1000)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
        assert_eq!(parse_cpu_line("cpu  1 x 3 4"), None);
        assert_eq!(busy_share(180, 1000), 18.0);
        assert_eq!(busy_share(0, 0), 0.0);
    }
}
