//! Types shared by the netpath BPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` and plain data so that the kernel side and
//! the user side agree on the layout byte for byte. The `user` feature adds
//! `aya::Pod` impls so the agent can read and write the maps.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod endpoint;
pub mod event;
pub mod maps;
pub mod policy;
pub mod service;
pub mod stats;

pub use config::DatapathConfig;
pub use conntrack::{CtEntry, CtKey, CtState, CtTimeouts};
pub use endpoint::Endpoint;
pub use event::Event;
pub use policy::{PolicyEntry, PolicyKey, PolicyRule};
pub use service::{HostAddr, ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue};
pub use stats::{Counter, DropReason, TrafficStats};
