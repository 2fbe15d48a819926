//! nftables done well: one verdict map from host port to container
//! address and port, looked up once per new connection, on the plain
//! topology. Loaded whole with `nft -f`; one more port is one map element.

use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::Result;
use ipnet::{Ipv4Net, Ipv6Net};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP};

use super::{
    bed::{port_list, AddOne, Bed, HostPort, CONTAINER_PORT, HIT_PORT},
    plain::{timed_in_ns, PlainNet, BRIDGE},
};

pub struct NftablesBed {
    net: PlainNet,
}

impl NftablesBed {
    pub fn new() -> Result<NftablesBed> {
        Ok(NftablesBed { net: PlainNet::new()? })
    }
}

/// The `ip nat` table for `ports` (in order), replacing any previous one
/// atomically (`table` + `delete table` + definition in one transaction).
pub fn ruleset(subnet: &Ipv4Net, container: &str, ports: &[HostPort]) -> String {
    let to = format!("{container} . {CONTAINER_PORT}");
    let on_any: Vec<String> = ports.iter().filter(|p| p.addr.is_none()).map(|p| format!("{} : {to}", p.port)).collect();
    let on_one: Vec<String> = ports.iter().filter_map(|p| p.addr.map(|a| format!("{a} . {} : {to}", p.port))).collect();
    // A map with no elements is written without an `elements` line.
    let elements = |e: &[String]| {
        if e.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", e.join(",\n      "))
        }
    };
    let mut s = String::from("table ip nat\ndelete table ip nat\n");
    let _ = write!(
        s,
        "table ip nat {{
  map ports {{
    type inet_service : ipv4_addr . inet_service
    {}
  }}
  map address_ports {{
    type ipv4_addr . inet_service : ipv4_addr . inet_service
    {}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip to ip daddr . tcp dport map @address_ports
    fib daddr type local dnat ip to tcp dport map @ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != \"{BRIDGE}\" masquerade
  }}
}}
",
        elements(&on_any),
        elements(&on_one)
    );
    s
}

/// The `ip6 nat` table: `ports` (on every address) to the container's
/// IPv6 address through a verdict map, and the masquerade.
pub fn ruleset6(subnet: &Ipv6Net, container: Ipv6Addr, ports: &[u16]) -> String {
    let elements: Vec<String> = ports.iter().map(|p| format!("{p} : {container} . {CONTAINER_PORT}")).collect();
    format!(
        "table ip6 nat
delete table ip6 nat
table ip6 nat {{
  map ports {{
    type inet_service : ipv6_addr . inet_service
    elements = {{ {} }}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip6 to tcp dport map @ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip6 saddr {subnet} oifname != \"{BRIDGE}\" masquerade
  }}
}}
",
        elements.join(", ")
    )
}

/// Only the masquerade, in a nat postrouting chain (no published ports).
pub fn masquerade_ruleset(subnet: &Ipv4Net) -> String {
    format!(
        "table ip nat
delete table ip nat
table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != \"{BRIDGE}\" masquerade
  }}
}}
"
    )
}

impl Bed for NftablesBed {
    fn topology(&self) -> &Topology {
        &self.net.topo
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(HOST_UPLINK_IP, HIT_PORT)
    }

    fn publish(&mut self, ports: usize) -> Result<Duration> {
        let text = ruleset(&self.net.subnet, &self.net.container_ip.to_string(), &port_list(ports));
        self.net.nft_file("ruleset.nft", &text)
    }

    fn add_one(&mut self, port: u16) -> Result<Option<AddOne>> {
        let element = format!("{{ {port} : {} . {CONTAINER_PORT} }}", self.net.container_ip);
        let took = timed_in_ns(
            &self.net.topo,
            &self.net.topo.host,
            "nft",
            &["add", "element", "ip", "nat", "ports", &element],
            None,
        )?;
        Ok(Some(AddOne { op: took, full: took }))
    }
}
