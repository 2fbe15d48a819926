//! `cargo xtask setup | build | test | demo | bench | fuzz`: the project's automation.
//! Every command that needs the toolchain runs `setup` first, which is quick
//! when everything is present, so a fresh machine needs nothing by hand.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// bpf-linker 0.10.4 is the last release that loads rustc's own LLVM at run
/// time; later ones need a system LLVM 22 (see ../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the project uses: bpftool to inspect pins, iproute2 for
/// the test topologies (ethtool to switch their checksum offload),
/// iptables/nftables for the comparison baselines and
/// the "rulesets stay empty" checks, ping/curl for tests and the demo;
/// podman (CNI backend) with runc, dockerd with containerd (docker.io), and
/// a static busybox for the rootfs of the tests that run real containers on
/// the CNI plugin and the Docker driver.
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "ethtool",
    "iptables",
    "nftables",
    "iputils-ping",
    "curl",
    "procps",
    "podman",
    "runc",
    "docker.io",
    "busybox-static",
];

#[derive(Parser)]
#[command(name = "xtask", about = "netpath automation")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (idempotent).
    Setup,
    /// Build everything, the BPF object included.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the whole test suite (unit, packet and topology tests; root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// A sandbox host with two containers in network namespaces (root).
    Demo {
        /// Run the container with a real runtime instead, in the same
        /// sandbox (docker: dockerd on netpath's Docker network driver;
        /// podman: podman 4 on the netpath CNI plugin).
        #[arg(long, value_enum)]
        runtime: Option<Runtime>,
    },
    /// The side-by-side benchmark (no NAT, iptables, nftables, netpath) on
    /// release builds; writes bench/RESULTS.md, results.json, connrate.svg (root).
    Bench {
        /// Extra arguments for netpath-bench (e.g. --quick, --rounds N, --out DIR).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The crash-safety tests (kill -9 under load, durable acknowledgements,
    /// bpffs wiped) on release builds, one at a time; writes their figures
    /// to bench/chaos/RESULTS.md (root).
    Chaos,
    /// The packet fuzzer for longer than the test suite runs it; writes
    /// fuzz/RESULTS.md (root).
    Fuzz {
        /// Random cases per program and world, after the systematic sweep.
        #[arg(long, default_value_t = 20000)]
        frames: u64,
        /// The PRNG seed (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Container runtimes the demo can run on netpath.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Runtime {
    Docker,
    Podman,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.command {
        Cmd::Setup => setup(),
        Cmd::Build { release } => {
            setup()?;
            build(release)
        }
        Cmd::Test { args } => {
            require_root("the tests create network namespaces and load BPF programs")?;
            setup()?;
            build(false)?;
            test(&args)
        }
        Cmd::Demo { runtime } => {
            require_root("the demo creates network namespaces and loads BPF programs")?;
            setup()?;
            build(false)?;
            let mut args = vec!["run", "--quiet", "-p", "netpath-tests", "--bin", "netpath-demo"];
            match runtime {
                Some(Runtime::Docker) => args.extend(["--", "--runtime", "docker"]),
                Some(Runtime::Podman) => args.extend(["--", "--runtime", "podman"]),
                None => {}
            }
            // The demo catches Ctrl-C and cleans up: wait for it rather
            // than leave it behind with the terminal.
            ignore_interrupts_while_children_run();
            run("cargo", &args)
        }
        Cmd::Bench { args } => {
            require_root("the benchmark creates network namespaces and loads BPF programs")?;
            setup()?;
            // Release builds of everything: the bench finds netpathd next to itself.
            run("cargo", &["build", "--release", "--bins"])?;
            bench(&root, &args)
        }
        Cmd::Chaos => {
            require_root("the chaos tests create network namespaces and load BPF programs")?;
            setup()?;
            build(true)?;
            chaos(&root)
        }
        Cmd::Fuzz { frames, seed } => {
            require_root("the fuzzer loads BPF programs")?;
            setup()?;
            build(false)?;
            fuzz(&root, frames, seed)
        }
    }
}

/// Runs netpath-fuzz with a unique prefix (the convention every root run
/// follows; the fuzzer itself works in anonymous namespaces), writing
/// fuzz/RESULTS.md, then sweeps that prefix.
fn fuzz(root: &Path, frames: u64, seed: Option<u64>) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let prefix = format!("npfuzz{:x}", std::process::id());
    let dir = root.join("fuzz");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut args =
        vec!["--frames".to_string(), frames.to_string(), "--out".into(), dir.join("RESULTS.md").display().to_string()];
    if let Some(seed) = seed {
        args.extend(["--seed".to_string(), seed.to_string()]);
    }
    let status = Command::new(target.join("debug").join("netpath-fuzz"))
        .args(&args)
        .env("NETPATH_TEST_PREFIX", &prefix)
        .status()
        .context("running netpath-fuzz")?;
    sweep(&prefix);
    if !status.success() {
        bail!("netpath-fuzz found property violations or failed ({status}); see fuzz/RESULTS.md");
    }
    Ok(())
}

/// Runs the release netpath-bench with a unique prefix for its namespaces,
/// instances and pins, then removes anything with that prefix it left.
fn bench(root: &Path, extra: &[String]) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let prefix = format!("npbench{:x}", std::process::id());
    let status = Command::new(target.join("release").join("netpath-bench"))
        .args(extra)
        .env("NETPATH_TEST_PREFIX", &prefix)
        .status()
        .context("running netpath-bench")?;
    sweep(&prefix);
    if !status.success() {
        bail!("netpath-bench failed ({status})");
    }
    Ok(())
}

/// Ctrl-C reaches the whole foreground process group: xtask then keeps
/// running (a no-op handler, which unlike SIG_IGN is not inherited across
/// exec) until the child it waits for has cleaned up and exited.
fn ignore_interrupts_while_children_run() {
    extern "C" fn noop(_: libc::c_int) {}
    // SAFETY: installing a handler that does nothing is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, noop as *const () as libc::sighandler_t);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    // The nightly toolchain is preinstalled on these machines; it cannot be
    // fetched, so say so rather than trying.
    let toolchains = output("rustup", &["toolchain", "list"]).context("rustup is needed")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly Rust toolchain: the eBPF crate needs one (rustup toolchain install nightly)");
    }
    let components =
        output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]).unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly");
        run("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION}");
        run("cargo", &["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])?;
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p]).is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        require_root(&format!("installing Debian packages {}", missing.join(" ")))?;
        eprintln!("xtask: installing {}", missing.join(" "));
        run("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--bins", "--tests"];
    if release {
        args.push("--release");
    }
    run("cargo", &args)
}

/// Runs `cargo test` with a unique prefix for every namespace, instance and
/// pin the tests create, then removes anything with that prefix that a
/// crashed test left behind.
fn test(extra: &[String]) -> Result<()> {
    let prefix = format!(
        "npt{:x}",
        std::process::id()
            ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos() & 0xfff)
    );
    let mut args: Vec<&str> = vec!["test"];
    args.extend(extra.iter().map(String::as_str));
    let status =
        Command::new("cargo").args(&args).env("NETPATH_TEST_PREFIX", &prefix).status().context("running cargo test")?;
    sweep(&prefix);
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

/// Runs `tests/tests/chaos.rs` on release builds and collects the figures
/// its tests append to the results file.
fn chaos(root: &Path) -> Result<()> {
    let dir = root.join("bench").join("chaos");
    std::fs::create_dir_all(&dir)?;
    let results = dir.join("RESULTS.md");
    let cpu = output("sh", &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).unwrap_or_default();
    let kernel = output("uname", &["-r"]).unwrap_or_default();
    std::fs::write(
        &results,
        format!(
            "# netpath crash safety (`cargo xtask chaos`)\n\nRelease builds; {} CPUs ({}), kernel {}. Each section is one \
             test of `tests/tests/chaos.rs`; the test asserts what it promises, the figures are what it measured.\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu.trim(),
            kernel.trim()
        ),
    )?;
    std::env::set_var("NETPATH_CHAOS_RESULTS", &results);
    test(&[
        "--release".into(),
        "-p".into(),
        "netpath-tests".into(),
        "--test".into(),
        "chaos".into(),
        "--".into(),
        "--test-threads=1".into(),
    ])?;
    println!("figures in {}", results.display());
    Ok(())
}

fn sweep(prefix: &str) {
    if let Some(list) = output("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(prefix)) {
            eprintln!("xtask: removing leftover netns {ns}");
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
    // Pins, scratch directories, and instance locks (files) or socket
    // directories in the run directory.
    for dir in ["/sys/fs/bpf/netpath", "/run/netpath", &std::env::temp_dir().display().to_string()] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    eprintln!("xtask: removing leftover {}", e.path().display());
                    let path = e.path();
                    let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                }
            }
        }
    }
    // The agents created the shared parents; leave them only if another run
    // (or a real instance) still has pins or locks there.
    let _ = std::fs::remove_dir("/sys/fs/bpf/netpath");
    let _ = std::fs::remove_dir("/run/netpath");
}
