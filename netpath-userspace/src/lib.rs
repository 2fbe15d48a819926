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
pub mod host_ports;
pub mod ipam;
pub mod lock;
pub mod model;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod output;
pub mod policy;
pub mod portspec;
pub mod state;
