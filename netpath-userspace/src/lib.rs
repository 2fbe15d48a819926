//! netpath's agent logic: configuration, address management, state,
//! netlink plumbing, the BPF datapath, the API and its client. The binaries
//! `netpathd` and `netpathctl` are thin wrappers around this library.

pub mod agent;
pub mod api;
pub mod client;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod docker;
pub mod flags;
pub mod host_ports;
pub mod host_record;
pub mod ipam;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod output;
pub mod policy;
pub mod portspec;
pub mod recover;
pub mod route_mtu;
pub mod state;
pub mod uninstall;

/// FNV-1a over `parts`, one after another: a short hash that stays the same
/// across builds and machines (names derived from it are kept in state).
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
