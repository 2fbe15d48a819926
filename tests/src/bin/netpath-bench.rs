//! `cargo xtask bench`: netpath against no NAT at all, Docker's iptables
//! layout and nftables, side by side in one run, in three sections (each
//! variant on its own namespaces of the same shape): a published container
//! port, masquerade from a container to the world, and per-container policy
//! on a published port. The figures go to `bench/RESULTS.md`,
//! `bench/results.json` and `bench/connrate.svg`. See
//! `tests/src/bench/mod.rs` for the method.
//!
//! ```text
//! netpath-bench [--quick] [--sections publish,masquerade,policy] [--rounds N]
//!               [--sizes 1,1000,10000] [--rules 0,1000,10000] [--seconds S]
//!               [--variants no-nat,iptables,nftables,netpath] [--out DIR]
//! ```

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    bench::main()
}
