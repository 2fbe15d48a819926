//! Docker's `-p` grammar for published ports:
//! `[HOSTIP:]HOSTPORT[-END]:CONTAINER:PORT[-END][/tcp|/udp]`, where the
//! middle part names the container (`netpathctl map 8080:ctr1:80`) and an
//! IPv6 HOSTIP is written in brackets (`[::]:8080:ctr1:80`,
//! `[2001:db8::1]:8080:ctr1:80/udp`). `unmap` also takes the host side
//! alone: `[HOSTIP:]HOSTPORT[-END][/proto]`.
//!
//! The host address says which families a port answers on, as in Docker:
//! none, both (IPv6 only if the container has an IPv6 address); `0.0.0.0`,
//! every IPv4 address; `[::]`, every IPv6 address; any other, that address.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

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
    /// None: every host address of both families; `0.0.0.0`: every IPv4
    /// one; `::`: every IPv6 one.
    pub ip: Option<IpAddr>,
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

/// The `map` grammar, for errors.
const GRAMMAR: &str = "[HOSTIP:]HOSTPORT[-END]:CONTAINER:PORT[-END][/tcp|/udp]";

/// A host address as a spec writes it: IPv4 bare, IPv6 in brackets.
fn parse_ip(spec: &str, s: &str) -> Result<IpAddr, SpecError> {
    if let Some(inner) = s.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return Err(err(spec, format!("IPv6 host address {s:?} lacks its closing ']'")));
        };
        return parse_ip6(spec, inner).map(IpAddr::V6);
    }
    if s.contains(':') || s.parse::<Ipv6Addr>().is_ok() {
        return Err(err(spec, format!("IPv6 host address {s} must be in brackets: [{s}]")));
    }
    s.parse().map(IpAddr::V4).map_err(|_| err(spec, format!("host address {s:?} is not an IPv4 address")))
}

/// The inside of `[...]`.
fn parse_ip6(spec: &str, s: &str) -> Result<Ipv6Addr, SpecError> {
    if s.is_empty() {
        return Err(err(spec, "the brackets hold no IPv6 host address (every IPv6 address is [::])"));
    }
    if let Some((addr, zone)) = s.split_once('%') {
        return Err(err(
            spec,
            format!(
                "scoped IPv6 host address {s} is not supported (zone %{zone}): publish on a global address or on \
                 [::], not on {addr} of one interface"
            ),
        ));
    }
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(err(spec, format!("host address [{s}] is IPv4: write it without brackets ({s}:...)")));
    }
    let ip: Ipv6Addr = s.parse().map_err(|_| err(spec, format!("host address [{s}] is not an IPv6 address")))?;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Err(err(spec, format!("host address [{s}] is an IPv4-mapped address: write {v4} without brackets")));
    }
    Ok(ip)
}

/// Splits `[HOSTIP:]REST` into the host address and the rest: a bracketed
/// IPv6 address, or the part before the first ':' when `rest_parts` more
/// ':'-separated parts follow it; `grammar` names the whole for errors.
fn split_host<'a>(
    spec: &str,
    body: &'a str,
    rest_parts: usize,
    grammar: &str,
) -> Result<(Option<IpAddr>, &'a str), SpecError> {
    if body.starts_with('[') {
        let Some(close) = body.find(']') else {
            return Err(err(spec, format!("IPv6 host address {body:?} lacks its closing ']'")));
        };
        let (ip, rest) = body.split_at(close + 1);
        let Some(rest) = rest.strip_prefix(':') else {
            return Err(err(spec, format!("expected ':' after the host address {ip}")));
        };
        return Ok((Some(parse_ip(spec, ip)?), rest));
    }
    if let Some(close) = body.find(']') {
        return Err(err(spec, format!("host address {:?} has a ']' without its opening '['", &body[..=close])));
    }
    // An IPv6 address without brackets: its own ':' would pass for the
    // grammar's (`::1:8080:c:80`), so it is refused by name (the one that
    // leaves the grammar's parts if it is one, else the longest).
    let parts = body.split(':').count();
    let is_ip6 = |p: &str| p.contains(':') && p.parse::<Ipv6Addr>().is_ok();
    let prefixes: Vec<&str> = body.match_indices(':').map(|(i, _)| &body[..i]).collect();
    let expected = parts.checked_sub(rest_parts + 1).and_then(|i| prefixes.get(i)).filter(|p| is_ip6(p));
    if let Some(ip) = expected.or_else(|| prefixes.iter().rev().find(|p| is_ip6(p))) {
        return Err(err(spec, format!("IPv6 host address {ip} must be in brackets: [{ip}]")));
    }
    if parts <= rest_parts {
        return Ok((None, body));
    }
    match body.split_once(':') {
        Some((ip, rest)) if parts == rest_parts + 1 => Ok((Some(parse_ip(spec, ip)?), rest)),
        _ => Err(err(spec, format!("expected {grammar} (an IPv6 HOSTIP in brackets)"))),
    }
}

/// `HOSTIP:` as a spec writes it (IPv6 in brackets), empty for none.
pub fn host_prefix(ip: Option<IpAddr>) -> String {
    match ip {
        None => String::new(),
        Some(IpAddr::V4(ip)) => format!("{ip}:"),
        Some(IpAddr::V6(ip)) => format!("[{ip}]:"),
    }
}

impl PortSpec {
    pub fn parse(spec: &str) -> Result<PortSpec, SpecError> {
        let (body, proto) = split_proto(spec, spec.trim())?;
        let (ip, rest) = split_host(spec, body, 3, GRAMMAR)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [host, container, cport] = parts.as_slice() else {
            return Err(err(spec, format!("expected {GRAMMAR} (an IPv6 HOSTIP in brackets)")));
        };
        let (host, container, cport) = (*host, *container, *cport);
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
        let (ip, ports) = split_host(spec, body, 1, "[HOSTIP:]HOSTPORT[-END][/tcp|/udp]")?;
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
        // The ':' of a bracketed IPv6 address do not count.
        let body = spec.split('/').next().unwrap_or("");
        let body = match (body.find('['), body.find(']')) {
            (Some(open), Some(close)) if open < close => &body[close..],
            _ => body,
        };
        let colons = body.matches(':').count();
        if colons >= 2 {
            PortSpec::parse(spec).map(UnmapSpec::Full)
        } else {
            HostSide::parse(spec).map(UnmapSpec::Host)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
        assert_eq!(s.host.ip, Some(Ipv4Addr::LOCALHOST.into()));
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
            ("a:b:c:d:e", "expected"),
            // IPv6 host addresses: in brackets, global or loopback, one
            // address.
            ("::1:8080:c:80", "IPv6 host address ::1 must be in brackets: [::1]"),
            ("2001:db8::1:8080:c:80", "must be in brackets"),
            ("::8080:c:80", "must be in brackets"),
            ("[::1:8080:c:80", "lacks its closing ']'"),
            ("::1]:8080:c:80", "\"::1]\" has a ']' without its opening '['"),
            ("1.2.3.4]:8080:c:80", "']' without its opening '['"),
            ("[::1]8080:c:80", "expected ':' after the host address [::1]"),
            ("[fe80::1%eth0]:8080:c:80", "scoped IPv6 host address fe80::1%eth0 is not supported"),
            ("[]:8080:c:80", "no IPv6 host address"),
            ("[1.2.3.4]:8080:c:80", "is IPv4: write it without brackets"),
            ("[::ffff:1.2.3.4]:8080:c:80", "IPv4-mapped address: write 1.2.3.4"),
            ("[2001:db8::g]:8080:c:80", "[2001:db8::g] is not an IPv6 address"),
            ("[::1]:8080:c", "expected"),
            ("[::1]:8080:c:80:90", "expected"),
            ("[::1]:8080-8081:c:80", "has 2 ports but container range 80 has 1"),
            ("[::1]:0:c:80", "out of range"),
        ];
        for (spec, want) in cases {
            let e = PortSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.contains(spec), "error names the spec: {e}");
        }
    }

    #[test]
    fn ipv6_host_addresses_in_brackets() {
        let s = PortSpec::parse("[::1]:8080:c:80").unwrap();
        assert_eq!(s.host.ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(s.host.proto, Protocol::Tcp);
        assert_eq!(s.container, "c");
        assert_eq!(s.pairs().collect::<Vec<_>>(), vec![(8080, 80)]);
        let s = PortSpec::parse("[::]:8080:ctr:80").unwrap();
        assert_eq!(s.host.ip, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        let s = PortSpec::parse("[2001:db8::1]:8080:ctr:80/udp").unwrap();
        assert_eq!(s.host.ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(s.host.proto, Protocol::Udp);
        let s = PortSpec::parse("[::]:8080-8081:c:80-81").unwrap();
        assert_eq!(s.host.ip, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(s.pairs().collect::<Vec<_>>(), vec![(8080, 80), (8081, 81)]);
        // Containers whose names look like hex digits stay names.
        let s = PortSpec::parse("[::]:8080:cafe:80").unwrap();
        assert_eq!(s.container, "cafe");
        assert_eq!(PortSpec::parse("8080:beef:80").unwrap().host.ip, None);
        // IPv4 as before: the wildcard is an address of its own.
        assert_eq!(PortSpec::parse("0.0.0.0:8080:c:80").unwrap().host.ip, Some(Ipv4Addr::UNSPECIFIED.into()));
    }

    #[test]
    fn host_prefix_writes_what_parse_reads() {
        assert_eq!(host_prefix(None), "");
        assert_eq!(host_prefix(Some(Ipv4Addr::new(198, 18, 0, 1).into())), "198.18.0.1:");
        assert_eq!(host_prefix(Some(Ipv6Addr::UNSPECIFIED.into())), "[::]:");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(host_prefix(Some(ip)), "[2001:db8::1]:");
        let text = format!("{}8080:c:80", host_prefix(Some(ip)));
        assert_eq!(PortSpec::parse(&text).unwrap().host.ip, Some(ip));
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
        // IPv6: the brackets' ':' do not make a full spec.
        assert_eq!(
            UnmapSpec::parse("[::]:8080/tcp").unwrap(),
            UnmapSpec::Host(HostSide {
                ip: Some(Ipv6Addr::UNSPECIFIED.into()),
                ports: PortRange { start: 8080, end: 8080 },
                proto: Protocol::Tcp
            })
        );
        assert_eq!(
            UnmapSpec::parse("[2001:db8::1]:8080-8081/udp").unwrap(),
            UnmapSpec::Host(HostSide {
                ip: Some("2001:db8::1".parse().unwrap()),
                ports: PortRange { start: 8080, end: 8081 },
                proto: Protocol::Udp
            })
        );
        match UnmapSpec::parse("[::]:8080:ctr:80/udp").unwrap() {
            UnmapSpec::Full(s) => {
                assert_eq!(s.host.ip, Some(Ipv6Addr::UNSPECIFIED.into()));
                assert_eq!(s.container, "ctr");
            }
            other => panic!("{other:?}"),
        }
        for (spec, want) in [
            ("::1:8080", "IPv6 host address ::1 must be in brackets: [::1]"),
            ("::1:8080/tcp", "must be in brackets"),
            ("[::1]8080", "expected ':' after"),
            ("[::1:8080", "lacks its closing ']'"),
            ("[fe80::1%eth0]:8080", "scoped"),
        ] {
            let e = UnmapSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
