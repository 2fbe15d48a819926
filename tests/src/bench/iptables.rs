//! Docker's iptables layout (docker 20.10, `iptables-save` of a host with
//! one published container), on the plain topology. Loaded whole with
//! `iptables-restore`; one more port is timed as Docker adds it.

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

pub struct IptablesBed {
    net: PlainNet,
}

impl IptablesBed {
    pub fn new() -> Result<IptablesBed> {
        let net = PlainNet::new()?;
        net.docker_bridge_netfilter()?;
        Ok(IptablesBed { net })
    }

    fn iptables(&self, args: &[&str]) -> Result<Duration> {
        timed_in_ns(&self.net.topo, &self.net.topo.host, "iptables", args, None)
    }
}

/// The three rules Docker adds per published port, as `iptables` arguments
/// (`-d` for a port published on one host address); `host_len` is the
/// family's host prefix length (32, or 128 for `ip6tables`).
fn port_rules(container: &str, host_len: u8, host: HostPort) -> [Vec<String>; 3] {
    let split = |s: String| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let dst = host.addr.map(|a| format!("-d {a}/32 ")).unwrap_or_default();
    let port = host.port;
    // ip6tables takes an IPv6 DNAT target with its port in brackets.
    let to = if host_len == 128 { format!("[{container}]") } else { container.to_string() };
    [
        split(format!(
            "-t nat -A DOCKER {dst}! -i {BRIDGE} -p tcp -m tcp --dport {port} -j DNAT --to-destination {to}:{CONTAINER_PORT}"
        )),
        split(format!("-t filter -A DOCKER -d {container}/{host_len} ! -i {BRIDGE} -o {BRIDGE} -p tcp -m tcp --dport {CONTAINER_PORT} -j ACCEPT")),
        split(format!("-t nat -A POSTROUTING -s {container}/{host_len} -d {container}/{host_len} -p tcp -m tcp --dport {CONTAINER_PORT} -j MASQUERADE")),
    ]
}

/// The whole ruleset for `ports` (in order), as Docker lays it out.
pub fn ruleset(subnet: &Ipv4Net, container: &str, ports: &[HostPort]) -> String {
    ruleset_with_user_rules(subnet, container, ports, &[])
}

/// The same with the operator's rules in `DOCKER-USER` (each an
/// `iptables-restore` line without `-A DOCKER-USER`), before its final
/// RETURN.
pub fn ruleset_with_user_rules(subnet: &Ipv4Net, container: &str, ports: &[HostPort], user_rules: &[String]) -> String {
    layout(&subnet.to_string(), container, Family::V4, ports, user_rules)
}

/// Docker's `ip6tables` layout for a container with an IPv6 address
/// (`--ipv6`), ports published on every address.
pub fn ruleset6(subnet: &Ipv6Net, container: Ipv6Addr, ports: &[u16]) -> String {
    let ports: Vec<HostPort> = ports.iter().map(|&port| HostPort { addr: None, port }).collect();
    layout(&subnet.to_string(), &container.to_string(), Family::V6, &ports, &[])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn layout(subnet: &str, container: &str, family: Family, ports: &[HostPort], user_rules: &[String]) -> String {
    let (host_len, loopback) = match family {
        Family::V4 => (32, "127.0.0.0/8"),
        Family::V6 => (128, "::1/128"),
    };
    let rules: Vec<[Vec<String>; 3]> = ports.iter().map(|p| port_rules(container, host_len, *p)).collect();
    // `-t TABLE` is not part of iptables-restore syntax: drop the first two words.
    let line = |r: &Vec<String>| r[2..].join(" ");
    let mut s = String::new();
    s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n");
    s.push_str("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n");
    let _ = writeln!(s, "-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER");
    let _ = writeln!(s, "-A POSTROUTING -s {subnet} ! -o {BRIDGE} -j MASQUERADE");
    for r in &rules {
        let _ = writeln!(s, "{}", line(&r[2]));
    }
    let _ = writeln!(s, "-A DOCKER -i {BRIDGE} -j RETURN");
    for r in &rules {
        let _ = writeln!(s, "{}", line(&r[0]));
    }
    s.push_str("COMMIT\n");
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n");
    s.push_str(":DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]\n");
    s.push_str("-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n");
    let _ = writeln!(s, "-A FORWARD -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    let _ = writeln!(s, "-A FORWARD -o {BRIDGE} -j DOCKER");
    let _ = writeln!(s, "-A FORWARD -i {BRIDGE} ! -o {BRIDGE} -j ACCEPT");
    let _ = writeln!(s, "-A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT");
    for r in &rules {
        let _ = writeln!(s, "{}", line(&r[1]));
    }
    let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-1 -i {BRIDGE} ! -o {BRIDGE} -j DOCKER-ISOLATION-STAGE-2");
    s.push_str("-A DOCKER-ISOLATION-STAGE-1 -j RETURN\n");
    let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-2 -o {BRIDGE} -j DROP");
    s.push_str("-A DOCKER-ISOLATION-STAGE-2 -j RETURN\n");
    for rule in user_rules {
        let _ = writeln!(s, "-A DOCKER-USER {rule}");
    }
    s.push_str("-A DOCKER-USER -j RETURN\nCOMMIT\n");
    s
}

impl Bed for IptablesBed {
    fn topology(&self) -> &Topology {
        &self.net.topo
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(HOST_UPLINK_IP, HIT_PORT)
    }

    /// Replaces the nat and filter tables with the layout for `ports` ports.
    fn publish(&mut self, ports: usize) -> Result<Duration> {
        let text = ruleset(&self.net.subnet, &self.net.container_ip.to_string(), &port_list(ports));
        self.net.iptables_restore("iptables.rules", &text)
    }

    /// The DNAT rule is the operation timed; Docker runs all three.
    fn add_one(&mut self, port: u16) -> Result<Option<AddOne>> {
        let mut times = vec![];
        for rule in port_rules(&self.net.container_ip.to_string(), 32, HostPort { addr: None, port }) {
            times.push(self.iptables(&rule.iter().map(String::as_str).collect::<Vec<_>>())?);
        }
        Ok(Some(AddOne { op: times[0], full: times.iter().sum() }))
    }
}
