//! The packet fuzzer's suite run: the systematic sweep and a bounded number
//! of random cases through every tc and XDP program (see
//! `netpath_tests::fuzz` for the properties). The seed comes from the clock
//! unless `NETPATH_FUZZ_SEED` sets it, and is printed; `cargo xtask fuzz`
//! runs longer.

use netpath_tests::fuzz;

/// Random cases per program and world: a few thousand frames per program
/// with the sweep, a few seconds on two vCPUs.
const FRAMES: usize = 1500;

#[test]
fn no_frame_breaks_a_datapath_promise() {
    assert!(netpath_tests::is_root(), "the fuzzer loads BPF programs: run it as root (cargo xtask test)");
    let seed = match std::env::var("NETPATH_FUZZ_SEED") {
        Ok(s) => s.parse().expect("NETPATH_FUZZ_SEED is a number"),
        Err(_) => fuzz::clock_seed(),
    };
    println!("fuzz seed {seed} (rerun with NETPATH_FUZZ_SEED={seed})");
    let report = fuzz::run(&fuzz::Options { seed, frames: FRAMES }).expect("fuzz run");
    if report.violations.is_empty() {
        println!("{}", report.summary());
    }
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {} propert(ies) violated (rerun with NETPATH_FUZZ_SEED={seed}):\n{}",
        report.violations.len(),
        report.summary()
    );
}
