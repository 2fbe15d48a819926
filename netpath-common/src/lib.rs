//! Types shared by the netpath BPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` and plain data so that the kernel side and
//! the user side agree on the layout byte for byte. The `user` feature adds
//! `aya::Pod` impls so the agent can read and write the maps.
#![cfg_attr(not(test), no_std)]

pub mod config;
pub mod conntrack;
pub mod container;
pub mod direction;
pub mod event;
pub mod family;
pub mod forward;
pub mod fragment;
pub mod hooks;
pub mod mapping;
pub mod maps;
pub mod masquerade;
pub mod owner;
pub mod policy;
pub mod stats;
pub mod uplink_guard;

pub use config::DatapathConfig;
pub use conntrack::{CtEntry, CtEntry4, CtEntry6, CtKey, CtKey4, CtKey6, CtScope, CtState, CtTimeouts};
pub use container::ContainerEntry;
pub use direction::Direction;
pub use event::{Event, Event4, Event6, EventBudget};
pub use family::{AddrFamily, In6Addr};
pub use forward::{Fallback, ForwardStats, Redirect};
pub use fragment::{FragEntry, FragEntry4, FragEntry6, FragKey, FragKey4, FragKey6};
pub use hooks::{Hook, HookId, Side, TailCall, DELIVER_CALLS, HOOKS, TAIL_CALLS};
pub use mapping::{
    HostAddr, MappingEntry, MappingEntry4, MappingEntry6, MappingKey, MappingKey4, MappingKey6, SockRevNatEntry4,
    SockRevNatEntry6, SockRevNatKey4, SockRevNatKey6,
};
pub use policy::{PolicyEntry, PolicyKey, PolicyKey4, PolicyKey6, PolicyRule};
pub use stats::{Counter, CtStats, DropReason, TrafficStats};
