//! `cargo xtask bench`: four ways of publishing a container port, measured
//! side by side in one run on the same topology shape (no NAT at all,
//! Docker's iptables layout, an nftables map, netpath), with the figures
//! written to `bench/RESULTS.md`, `bench/results.json` and
//! `bench/connrate.svg`. See `tests/src/bench/mod.rs` for the method.
//!
//! ```text
//! netpath-bench [--quick] [--rounds N] [--sizes 1,1000,10000] [--seconds S]
//!               [--variants no-nat,iptables,nftables,netpath] [--out DIR]
//! ```

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    bench::main()
}
