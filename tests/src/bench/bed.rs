//! A test bed: one variant's namespaces with a container behind a
//! published port, and the operations the benchmark needs from it.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::Result;
use netpath_tests::topology::Topology;
use serde::Serialize;

use super::{iptables::IptablesBed, netpath::NetpathBed, nftables::NftablesBed, plain::NoNatBed};

/// The published port every measurement goes through.
pub const HIT_PORT: u16 = 8080;
/// The port the server listens on in the container.
pub const CONTAINER_PORT: u16 = 80;
/// A published host port: on every host address (`addr` None, as Docker
/// publishes by default) or on one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
}

impl HostPort {
    const fn any(port: u16) -> HostPort {
        HostPort { addr: None, port }
    }
}

/// Filler ports are published on addresses of their own, 50000 each (ports
/// 10000..60000): one address has 65535 ports per protocol, so 100000
/// ports need two, and a port published on every address would take that
/// port on all of them. Nothing is sent to them; they only fill the tables.
pub const FILLER_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 0, 11)];
const FILLERS_PER_ADDR: usize = 50_000;
const FIRST_FILLER_PORT: u16 = 10_000;
/// Fillers plus the hit port.
pub const MAX_PORTS: usize = FILLER_ADDRS.len() * FILLERS_PER_ADDR + 1;

/// The `i`-th port published before the hit port (0-based).
pub fn filler(i: usize) -> HostPort {
    HostPort { addr: Some(FILLER_ADDRS[i / FILLERS_PER_ADDR]), port: FIRST_FILLER_PORT + (i % FILLERS_PER_ADDR) as u16 }
}

/// The `i`-th port published after the largest size, for the timing of
/// one more publication (on every address, above the fillers' ports).
pub fn extra_port(i: usize) -> u16 {
    61_000 + i as u16
}

/// The host ports of `count` published ports, the hit port last.
pub fn port_list(count: usize) -> Vec<HostPort> {
    (0..count.saturating_sub(1)).map(filler).chain(std::iter::once(HostPort::any(HIT_PORT))).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    NoNat,
    Iptables,
    Nftables,
    Netpath,
    /// netpath with its fast path off: every packet through the bridge and
    /// the routing pass, to show what the redirects are worth.
    NetpathStack,
}

impl Variant {
    pub const ALL: [Variant; 5] =
        [Variant::NoNat, Variant::Iptables, Variant::Nftables, Variant::Netpath, Variant::NetpathStack];

    pub fn name(self) -> &'static str {
        match self {
            Variant::NoNat => "no-nat",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
            Variant::Netpath => "netpath",
            Variant::NetpathStack => "netpath-stack",
        }
    }

    pub fn parse(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// What publishing one more port cost.
#[derive(Clone, Copy, Debug)]
pub struct AddOne {
    /// The operation the target is about (the API call, the DNAT rule, the
    /// map element).
    pub op: Duration,
    /// Everything the runtime does for one port (Docker: three iptables
    /// commands); the same as `op` elsewhere.
    pub full: Duration,
}

pub trait Bed {
    fn topology(&self) -> &Topology;
    /// Where the world's clients connect.
    fn target(&self) -> SocketAddrV4;
    /// Makes `ports` ports published, the hit port published last; returns
    /// how long that took.
    fn publish(&mut self, ports: usize) -> Result<Duration>;
    /// Publishes `port` on top of what exists; None where nothing is
    /// published (no-nat).
    fn add_one(&mut self, port: u16) -> Result<Option<AddOne>>;
    /// Facts about the setup as it ran, for the report.
    fn notes(&self) -> Vec<String> {
        vec![]
    }
}

pub fn create(variant: Variant) -> Result<Box<dyn Bed>> {
    Ok(match variant {
        Variant::NoNat => Box::new(NoNatBed::new()?),
        Variant::Iptables => Box::new(IptablesBed::new()?),
        Variant::Nftables => Box::new(NftablesBed::new()?),
        Variant::Netpath => Box::new(NetpathBed::new()?),
        Variant::NetpathStack => Box::new(NetpathBed::with_args(&["--no-fast-path"])?),
    })
}
