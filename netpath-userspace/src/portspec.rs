//! Docker's `-p` grammar for published ports:
//! `[HOSTIP:]HOSTPORT[-END]:CONTAINER:PORT[-END][/tcp|/udp]`, where the
//! middle part names the container (`netpathctl map 8080:ctr1:80`).
//! `unmap` also takes the host side alone: `[HOSTIP:]HOSTPORT[-END][/proto]`.

use std::{fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An inclusive port range (a single port has `start == end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn len(&self) -> u32 {
        (self.end - self.start) as u32 + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The host side of a spec: where the port is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSide {
    /// None: every host address.
    pub ip: Option<Ipv4Addr>,
    pub ports: PortRange,
    pub proto: Protocol,
}

/// A full `map` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub host: HostSide,
    pub container: String,
    pub container_ports: PortRange,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid port spec {spec:?}: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

fn err(spec: &str, reason: impl Into<String>) -> SpecError {
    SpecError { spec: spec.to_string(), reason: reason.into() }
}

fn parse_port(spec: &str, s: &str, what: &str) -> Result<u16, SpecError> {
    if s.is_empty() {
        return Err(err(spec, format!("{what} port is missing")));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(spec, format!("{what} port {s:?} is not a number")));
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(err(spec, format!("{what} port {s} is out of range (1-65535)"))),
    }
}

fn parse_range(spec: &str, s: &str, what: &str) -> Result<PortRange, SpecError> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (parse_port(spec, a, what)?, parse_port(spec, b, what)?),
        None => {
            let p = parse_port(spec, s, what)?;
            (p, p)
        }
    };
    if b < a {
        return Err(err(spec, format!("{what} port range {s} is reversed")));
    }
    Ok(PortRange { start: a, end: b })
}

fn split_proto<'a>(spec: &str, s: &'a str) -> Result<(&'a str, Protocol), SpecError> {
    match s.rsplit_once('/') {
        None => Ok((s, Protocol::Tcp)),
        Some((rest, p)) => match p.to_ascii_lowercase().as_str() {
            "tcp" => Ok((rest, Protocol::Tcp)),
            "udp" => Ok((rest, Protocol::Udp)),
            "sctp" => Err(err(spec, "sctp is not supported (tcp or udp)")),
            other => Err(err(spec, format!("unknown protocol {other:?} (tcp or udp)"))),
        },
    }
}

fn parse_ip(spec: &str, s: &str) -> Result<Ipv4Addr, SpecError> {
    if s.starts_with('[') {
        return Err(err(spec, "IPv6 host addresses are not supported yet"));
    }
    s.parse().map_err(|_| err(spec, format!("host address {s:?} is not an IPv4 address")))
}

impl PortSpec {
    pub fn parse(spec: &str) -> Result<PortSpec, SpecError> {
        let (body, proto) = split_proto(spec, spec.trim())?;
        if body.starts_with('[') {
            return Err(err(spec, "IPv6 host addresses are not supported yet"));
        }
        let parts: Vec<&str> = body.split(':').collect();
        let (ip, host, container, cport) = match parts.as_slice() {
            [host, container, cport] => (None, *host, *container, *cport),
            [ip, host, container, cport] => (Some(parse_ip(spec, ip)?), *host, *container, *cport),
            _ => {
                return Err(err(spec, "expected [HOSTIP:]HOSTPORT[-END]:CONTAINER:PORT[-END][/tcp|/udp]"));
            }
        };
        if container.is_empty() {
            return Err(err(spec, "container name is missing"));
        }
        let host_ports = parse_range(spec, host, "host")?;
        let container_ports = parse_range(spec, cport, "container")?;
        if host_ports.len() != container_ports.len() {
            return Err(err(
                spec,
                format!(
                    "host range {host_ports} has {} ports but container range {container_ports} has {}",
                    host_ports.len(),
                    container_ports.len()
                ),
            ));
        }
        Ok(PortSpec {
            host: HostSide { ip, ports: host_ports, proto },
            container: container.to_string(),
            container_ports,
        })
    }

    /// (host port, container port) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.host.ports.ports().zip(self.container_ports.ports())
    }
}

impl HostSide {
    /// `[HOSTIP:]HOSTPORT[-END][/proto]`.
    pub fn parse(spec: &str) -> Result<HostSide, SpecError> {
        let (body, proto) = split_proto(spec, spec.trim())?;
        let (ip, ports) = match body.rsplit_once(':') {
            Some((ip, ports)) => (Some(parse_ip(spec, ip)?), ports),
            None => (None, body),
        };
        Ok(HostSide { ip, ports: parse_range(spec, ports, "host")?, proto })
    }
}

/// What `unmap` accepts: a full spec, or only the host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnmapSpec {
    Full(PortSpec),
    Host(HostSide),
}

impl UnmapSpec {
    pub fn parse(spec: &str) -> Result<UnmapSpec, SpecError> {
        let colons = spec.split('/').next().unwrap_or("").matches(':').count();
        if colons >= 2 {
            PortSpec::parse(spec).map(UnmapSpec::Full)
        } else {
            HostSide::parse(spec).map(UnmapSpec::Host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_example() {
        let s = PortSpec::parse("8080:ctr1:80").unwrap();
        assert_eq!(s.host, HostSide { ip: None, ports: PortRange { start: 8080, end: 8080 }, proto: Protocol::Tcp });
        assert_eq!(s.container, "ctr1");
        assert_eq!(s.pairs().collect::<Vec<_>>(), vec![(8080, 80)]);
    }

    #[test]
    fn full_grammar() {
        let s = PortSpec::parse("127.0.0.1:8000-8002:web:9000-9002/udp").unwrap();
        assert_eq!(s.host.ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(s.host.proto, Protocol::Udp);
        assert_eq!(s.pairs().collect::<Vec<_>>(), vec![(8000, 9000), (8001, 9001), (8002, 9002)]);
        assert_eq!(PortSpec::parse("1:c:1/TCP").unwrap().host.proto, Protocol::Tcp);
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("8080", "expected"),
            ("8080:ctr1", "expected"),
            ("8080::80", "container name is missing"),
            ("0:c:80", "out of range"),
            ("65536:c:80", "out of range"),
            ("80:c:x", "not a number"),
            ("80-79:c:80-79", "reversed"),
            ("8000-8002:c:80", "has 3 ports but container range 80 has 1"),
            ("8080:c:80/sctp", "sctp"),
            ("8080:c:80/icmp", "unknown protocol"),
            ("300.1.1.1:80:c:80", "not an IPv4 address"),
            ("[::1]:80:c:80", "IPv6"),
            ("a:b:c:d:e", "expected"),
        ];
        for (spec, want) in cases {
            let e = PortSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.contains(spec), "error names the spec: {e}");
        }
    }

    #[test]
    fn unmap_forms() {
        assert!(matches!(UnmapSpec::parse("8080:ctr1:80").unwrap(), UnmapSpec::Full(_)));
        assert_eq!(
            UnmapSpec::parse("10.0.0.1:8080/udp").unwrap(),
            UnmapSpec::Host(HostSide {
                ip: Some("10.0.0.1".parse().unwrap()),
                ports: PortRange { start: 8080, end: 8080 },
                proto: Protocol::Udp
            })
        );
        assert_eq!(
            UnmapSpec::parse("9000-9001").unwrap(),
            UnmapSpec::Host(HostSide { ip: None, ports: PortRange { start: 9000, end: 9001 }, proto: Protocol::Tcp })
        );
        assert!(UnmapSpec::parse("x").is_err());
    }
}
