//! Per-container allow/deny rules: the operator's model, the checks on
//! input, and the compilation into the datapath's LPM entries.
//!
//! Semantics: among the rules that match a new flow, the one with the
//! longest CIDR prefix wins; on equal prefixes a rule naming a port beats
//! one that does not; then deny beats allow; no match falls to the
//! container's default for the direction. `in` is traffic reaching the
//! container (through a published port, the remote is the original client),
//! `out` is traffic the container starts.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use netpath_common::Direction;
use netpath_common::{
    conntrack::IPPROTO_ICMP,
    family::IPPROTO_ICMPV6,
    policy::{
        self as rules, PolicyEntry, PolicyKey, PolicyKey4, PolicyKey6, PolicyRule as DpRule, MAX_RULES_PER_PREFIX,
        POLICY_ALLOW, POLICY_DENY, POLICY_KEY_FIXED_BITS,
    },
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RuleProto {
    Tcp,
    Udp,
    /// The ICMP of the rule's family: ICMPv4 with an IPv4 CIDR, ICMPv6 with
    /// an IPv6 one (ports are the family's message types).
    Icmp,
    /// ICMPv6 (`icmpv6`, `ipv6-icmp`): only with an IPv6 CIDR.
    Icmpv6,
}

impl RuleProto {
    /// The IP protocol number for a rule of the family `ipv6` says.
    pub fn number(self, ipv6: bool) -> u8 {
        match self {
            RuleProto::Tcp => 6,
            RuleProto::Udp => 17,
            RuleProto::Icmp if ipv6 => IPPROTO_ICMPV6,
            RuleProto::Icmp => IPPROTO_ICMP,
            RuleProto::Icmpv6 => IPPROTO_ICMPV6,
        }
    }

    /// The one name of this protocol in a rule of the family `ipv6` says:
    /// `icmp` on an IPv6 prefix is ICMPv6, and is kept, listed, compared
    /// and rebuilt (`netpathd --recover`) as `icmpv6`.
    pub fn in_family(self, ipv6: bool) -> RuleProto {
        match self {
            RuleProto::Icmp if ipv6 => RuleProto::Icmpv6,
            p => p,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == Action::Allow { "allow" } else { "deny" })
    }
}
impl fmt::Display for RuleProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleProto::Tcp => "tcp",
            RuleProto::Udp => "udp",
            RuleProto::Icmp => "icmp",
            RuleProto::Icmpv6 => "icmpv6",
        })
    }
}

/// What a rule matches (all of it but the action): two rules with the
/// same match clash.
pub type RuleMatch = (Direction, IpNet, Option<RuleProto>, Option<(u16, u16)>);

/// One rule, as the operator wrote it (and as the API carries it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub action: Action,
    pub direction: Direction,
    /// An IPv4 or IPv6 prefix: the rule applies to flows of its family only.
    pub cidr: IpNet,
    /// None: any protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<RuleProto>,
    /// Inclusive port range (ICMP: message types); needs `proto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
}

impl Rule {
    /// Everything but the action, the protocol by its one name in the
    /// rule's family: two rules with the same match clash.
    pub fn match_key(&self) -> RuleMatch {
        (self.direction, self.cidr, self.proto.map(|p| p.in_family(self.is_ipv6())), self.ports)
    }

    fn same_match(&self, other: &Rule) -> bool {
        self.match_key() == other.match_key()
    }

    /// The same rule, however its protocol was spelt (a state saved before
    /// rules were kept under the family's name says `icmp`).
    pub fn same_rule(&self, other: &Rule) -> bool {
        self.action == other.action && self.same_match(other)
    }

    /// The rule with its protocol under the family's one name.
    pub fn in_family_names(self) -> Rule {
        let ipv6 = self.is_ipv6();
        Rule { proto: self.proto.map(|p| p.in_family(ipv6)), ..self }
    }

    /// Refuses a rule that mixes the families (an ICMPv6 filter on an IPv4
    /// CIDR): it could never match.
    pub fn check_family(&self) -> Result<(), RuleError> {
        if self.proto == Some(RuleProto::Icmpv6) && matches!(self.cidr, IpNet::V4(_)) {
            return Err(RuleError::MixedFamily(format!(
                "icmpv6 is an IPv6 protocol but {} is an IPv4 CIDR (use icmp for ICMPv4, or an IPv6 CIDR)",
                self.cidr
            )));
        }
        Ok(())
    }

    pub fn is_ipv6(&self) -> bool {
        matches!(self.cidr, IpNet::V6(_))
    }

    pub fn to_datapath(&self) -> DpRule {
        let (port_min, port_max) = self.ports.unwrap_or((0, 0));
        DpRule {
            prefix_len: self.cidr.prefix_len(),
            proto: self.proto.map(|p| p.number(self.is_ipv6())).unwrap_or(0),
            action: if self.action == Action::Allow { POLICY_ALLOW } else { POLICY_DENY },
            has_ports: self.ports.is_some() as u8,
            port_min,
            port_max,
        }
    }

    /// The `proto[/ports]` part as the CLI writes it.
    pub fn filter_text(&self) -> String {
        match (self.proto, self.ports) {
            (None, _) => "any".into(),
            (Some(p), None) => p.to_string(),
            (Some(p), Some((a, b))) if a == b => format!("{p}/{a}"),
            (Some(p), Some((a, b))) => format!("{p}/{a}-{b}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.action, self.direction, self.cidr, self.filter_text())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("malformed CIDR {0:?}: expected an IPv4 or IPv6 address or ADDRESS/PREFIX")]
    Cidr(String),
    #[error("CIDR {given} has host bits set (did you mean {network}?)")]
    HostBits { given: String, network: IpNet },
    #[error("malformed protocol {0:?}: expected tcp, udp, icmp or icmpv6, optionally /PORT or /PORT-END")]
    Proto(String),
    #[error("mixed address families: {0}")]
    MixedFamily(String),
    #[error("port range {0} is reversed")]
    Reversed(String),
    #[error("port {0:?} is not a number from 0 to 65535")]
    Port(String),
    #[error("rule \"{0}\" already exists")]
    Duplicate(String),
    #[error("rule \"{new}\" conflicts with existing rule \"{existing}\" (same match, other action)")]
    Conflict { new: String, existing: String },
    #[error("no rule \"{0}\"")]
    NotFound(String),
    #[error("too many rules apply to {cidr}: {count} across it and the prefixes containing it (at most {MAX_RULES_PER_PREFIX})")]
    TooMany { cidr: IpNet, count: usize },
}

/// An IPv4 or IPv6 address (a /32 or /128) or ADDRESS/PREFIX.
pub fn parse_cidr(s: &str) -> Result<IpNet, RuleError> {
    let net: IpNet = if s.contains('/') {
        s.parse().map_err(|_| RuleError::Cidr(s.into()))?
    } else {
        IpNet::from(s.parse::<IpAddr>().map_err(|_| RuleError::Cidr(s.into()))?)
    };
    if net.trunc() != net {
        return Err(RuleError::HostBits { given: s.into(), network: net.trunc() });
    }
    Ok(net)
}

/// A rule's protocol (None: any) and port range (None: all ports).
pub type Filter = (Option<RuleProto>, Option<(u16, u16)>);

/// `tcp`, `udp/53`, `tcp/8000-8080`, `icmp/8`.
pub fn parse_filter(s: &str) -> Result<Filter, RuleError> {
    let (p, ports) = match s.split_once('/') {
        Some((p, ports)) => (p, Some(ports)),
        None => (s, None),
    };
    let proto = match p.to_ascii_lowercase().as_str() {
        "tcp" => RuleProto::Tcp,
        "udp" => RuleProto::Udp,
        "icmp" => RuleProto::Icmp,
        "icmpv6" | "ipv6-icmp" => RuleProto::Icmpv6,
        "any" if ports.is_none() => return Ok((None, None)),
        _ => return Err(RuleError::Proto(s.into())),
    };
    let Some(ports) = ports else { return Ok((Some(proto), None)) };
    let port = |x: &str| x.parse::<u16>().map_err(|_| RuleError::Port(x.into()));
    let range = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if range.1 < range.0 {
        return Err(RuleError::Reversed(ports.into()));
    }
    Ok((Some(proto), Some(range)))
}

/// A container's policy: defaults per direction and its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPolicy {
    #[serde(default = "allow")]
    pub default_in: Action,
    #[serde(default = "allow")]
    pub default_out: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn allow() -> Action {
    Action::Allow
}

impl ContainerPolicy {
    /// Checks a new rule against the existing ones.
    pub fn check_add(&self, rule: &Rule) -> Result<(), RuleError> {
        if let Some(existing) = self.rules.iter().find(|r| r.same_match(rule)) {
            return Err(if existing.action == rule.action {
                RuleError::Duplicate(rule.to_string())
            } else {
                RuleError::Conflict { new: rule.to_string(), existing: existing.to_string() }
            });
        }
        Ok(())
    }

    pub fn default_for(&self, d: Direction) -> Action {
        if d == Direction::In {
            self.default_in
        } else {
            self.default_out
        }
    }
}

/// The datapath image of one container's rules in one direction: one LPM
/// entry per CIDR that has rules, holding its rules and those of every
/// shorter CIDR containing it, best first. The families compile apart
/// (a prefix of one never contains one of the other): `entries` go into
/// POLICY4, `entries6` into POLICY6.
pub struct Compiled {
    pub entries: BTreeMap<Ipv4Net, PolicyEntry>,
    pub entries6: BTreeMap<Ipv6Net, PolicyEntry>,
}

impl Compiled {
    /// Every compiled CIDR of both families.
    pub fn cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.entries.keys().map(|n| IpNet::V4(*n)).chain(self.entries6.keys().map(|n| IpNet::V6(*n)))
    }

    pub fn get(&self, cidr: &IpNet) -> Option<&PolicyEntry> {
        match cidr {
            IpNet::V4(n) => self.entries.get(n),
            IpNet::V6(n) => self.entries6.get(n),
        }
    }
}

/// LPM key and prefix length of the prefix `addr`/`prefix_len` of either
/// family for container `id`, direction `d`.
pub fn lpm_key<A>(id: u32, d: Direction, addr: A, prefix_len: u8) -> (u32, PolicyKey<A>) {
    (POLICY_KEY_FIXED_BITS + prefix_len as u32, PolicyKey::new(id, d, addr))
}

/// LPM key and prefix length of `cidr` for container `id`, direction `d`.
pub fn lpm_key4(id: u32, d: Direction, cidr: &Ipv4Net) -> (u32, PolicyKey4) {
    lpm_key(id, d, cidr.network().octets(), cidr.prefix_len())
}

/// [`lpm_key4`] for POLICY6.
pub fn lpm_key6(id: u32, d: Direction, cidr: &Ipv6Net) -> (u32, PolicyKey6) {
    lpm_key(id, d, cidr.network().into(), cidr.prefix_len())
}

/// Compiles the rules of one direction. `only`: recompute just these CIDRs
/// (the rest is unchanged); None: all of them.
pub fn compile(rules: &[Rule], d: Direction, only: Option<&[IpNet]>) -> Result<Compiled, RuleError> {
    // Recomputing a few CIDRs needs only the rules at them or at a prefix
    // containing them: adding one rule at 10000 then sorts a handful, not
    // all of them.
    let relevant =
        |r: &&Rule| r.direction == d && only.is_none_or(|targets| targets.iter().any(|t| r.cidr.contains(t)));
    let mut by_cidr: BTreeMap<IpNet, Vec<&Rule>> = BTreeMap::new();
    for r in rules.iter().filter(relevant) {
        by_cidr.entry(r.cidr).or_default().push(r);
    }
    let cidrs: HashSet<IpNet> = by_cidr.keys().copied().collect();
    let targets: Vec<IpNet> = match only {
        Some(list) => list.iter().copied().filter(|c| cidrs.contains(c)).collect(),
        None => by_cidr.keys().copied().collect(),
    };
    let mut compiled = Compiled { entries: BTreeMap::new(), entries6: BTreeMap::new() };
    for cidr in targets {
        let mut entry = PolicyEntry::default();
        let mut count = 0usize;
        // Walk the CIDR and every shorter prefix (of its family) containing it.
        for len in (0..=cidr.prefix_len()).rev() {
            let Ok(anc) = IpNet::new(cidr.network(), len) else { continue };
            let Some(rs) = by_cidr.get(&anc.trunc()) else { continue };
            for r in rs {
                if count < MAX_RULES_PER_PREFIX {
                    entry.rules[count] = r.to_datapath();
                }
                count += 1;
            }
        }
        if count > MAX_RULES_PER_PREFIX {
            return Err(RuleError::TooMany { cidr, count });
        }
        entry.count = count as u32;
        entry.sort();
        match cidr {
            IpNet::V4(n) => compiled.entries.insert(n, entry),
            IpNet::V6(n) => compiled.entries6.insert(n, entry),
        };
    }
    Ok(compiled)
}

/// CIDRs whose entries change when a rule at `cidr` changes: it and every
/// longer CIDR inside it that has rules.
pub fn affected(rules: &[Rule], d: Direction, cidr: &IpNet) -> Vec<IpNet> {
    let mut out: Vec<IpNet> =
        rules.iter().filter(|r| r.direction == d && cidr.contains(&r.cidr)).map(|r| r.cidr).collect();
    out.push(*cidr);
    out.sort();
    out.dedup();
    out
}

/// Judges flows as the datapath does, from the same compiled entries (for
/// re-checking established flows when the policy changes). Built once per
/// container; each verdict is a longest-prefix search of at most 33 (IPv6:
/// 129) steps.
pub struct Evaluator {
    default_in: Action,
    default_out: Action,
    entries: std::collections::HashMap<(Direction, IpNet), PolicyEntry>,
}

impl Evaluator {
    pub fn new(policy: &ContainerPolicy) -> Evaluator {
        let mut entries = std::collections::HashMap::new();
        for d in [Direction::In, Direction::Out] {
            // Stored rules compiled when they were added; a failure cannot
            // happen here, and an empty map would mean "defaults only".
            if let Ok(c) = compile(&policy.rules, d, None) {
                for cidr in c.cidrs() {
                    if let Some(entry) = c.get(&cidr) {
                        entries.insert((d, cidr), *entry);
                    }
                }
            }
        }
        Evaluator { default_in: policy.default_in, default_out: policy.default_out, entries }
    }

    /// The datapath's verdict: the longest-prefix entry of the remote's
    /// family (it carries every rule that covers the address), then
    /// `netpath_common::policy::allows`, the same decision the kernel makes.
    pub fn verdict(&self, d: Direction, remote: impl Into<IpAddr>, proto: u8, port: u16) -> Action {
        let remote = remote.into();
        let max_len = if remote.is_ipv6() { 128 } else { 32 };
        let entry = (0..=max_len).rev().find_map(|len| {
            let prefix = IpNet::new(remote, len).ok()?.trunc();
            self.entries.get(&(d, prefix))
        });
        let default = if d == Direction::In { self.default_in } else { self.default_out };
        if rules::allows(entry, default == Action::Deny, proto, port) {
            Action::Allow
        } else {
            Action::Deny
        }
    }
}

/// The verdict for one flow (builds an [`Evaluator`]; for many flows build
/// it once).
pub fn evaluate(policy: &ContainerPolicy, d: Direction, remote: impl Into<IpAddr>, proto: u8, port: u16) -> Action {
    Evaluator::new(policy).verdict(d, remote, proto, port)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn rule(action: Action, cidr: &str, filter: &str) -> Rule {
        let (proto, ports) = parse_filter(filter).unwrap();
        Rule { action, direction: Direction::In, cidr: parse_cidr(cidr).unwrap(), proto, ports }
    }

    fn policy(rules: Vec<Rule>) -> ContainerPolicy {
        ContainerPolicy { rules, ..Default::default() }
    }

    #[test]
    fn recompiling_some_cidrs_gives_what_a_full_compile_gives_them() {
        let any = |action, cidr: &str| Rule { proto: None, ports: None, ..rule(action, cidr, "tcp") };
        let mut rules = vec![
            rule(Action::Deny, "10.0.0.0/8", "tcp/22"),
            any(Action::Allow, "10.1.0.0/16"),
            rule(Action::Deny, "10.1.2.0/24", "udp"),
            rule(Action::Allow, "0.0.0.0/0", "icmp/8"),
            any(Action::Deny, "192.168.0.0/16"),
        ];
        for i in 0..300u32 {
            rules.push(any(Action::Deny, &format!("10.1.{}.{}/32", i / 200, i % 200)));
        }
        let full = compile(&rules, Direction::In, None).unwrap();
        let targets = affected(&rules, Direction::In, &parse_cidr("10.1.0.0/16").unwrap());
        let part = compile(&rules, Direction::In, Some(&targets)).unwrap();
        assert_eq!(part.entries.len(), targets.len());
        for (cidr, entry) in &part.entries {
            assert_eq!(Some(entry), full.entries.get(cidr), "{cidr}");
        }
    }

    fn eval(p: &ContainerPolicy, ip: &str, proto: u8, port: u16) -> Action {
        evaluate(p, Direction::In, ip.parse::<IpAddr>().unwrap(), proto, port)
    }

    #[test]
    fn longest_prefix_wins() {
        let p = policy(vec![rule(Action::Deny, "10.0.0.0/8", "any"), rule(Action::Allow, "10.1.0.0/16", "any")]);
        assert_eq!(eval(&p, "10.1.2.3", 6, 80), Action::Allow);
        assert_eq!(eval(&p, "10.2.2.3", 6, 80), Action::Deny);
        assert_eq!(eval(&p, "192.168.0.1", 6, 80), Action::Allow, "default");
    }

    #[test]
    fn a_shorter_prefix_applies_when_the_longer_one_does_not_match_the_protocol() {
        let p = policy(vec![rule(Action::Deny, "10.0.0.0/8", "any"), rule(Action::Allow, "10.1.0.0/16", "udp")]);
        assert_eq!(eval(&p, "10.1.2.3", 17, 53), Action::Allow);
        assert_eq!(eval(&p, "10.1.2.3", 6, 80), Action::Deny, "falls through to the /8");
    }

    #[test]
    fn on_equal_prefixes_a_port_beats_no_port_then_deny_beats_allow() {
        let p = policy(vec![rule(Action::Deny, "10.0.0.0/8", "any"), rule(Action::Allow, "10.0.0.0/8", "tcp/80")]);
        assert_eq!(eval(&p, "10.9.9.9", 6, 80), Action::Allow);
        assert_eq!(eval(&p, "10.9.9.9", 6, 81), Action::Deny);
        let p = policy(vec![rule(Action::Allow, "10.0.0.0/8", "tcp"), rule(Action::Deny, "10.0.0.0/8", "any")]);
        assert_eq!(eval(&p, "10.9.9.9", 6, 80), Action::Deny, "deny beats allow without ports");
        let p =
            policy(vec![rule(Action::Allow, "10.0.0.0/8", "tcp/80-90"), rule(Action::Deny, "10.0.0.0/8", "tcp/85")]);
        assert_eq!(eval(&p, "10.9.9.9", 6, 85), Action::Deny);
        assert_eq!(eval(&p, "10.9.9.9", 6, 86), Action::Allow);
    }

    #[test]
    fn defaults_apply_per_direction() {
        let mut p = policy(vec![rule(Action::Allow, "10.0.0.0/8", "any")]);
        p.default_in = Action::Deny;
        assert_eq!(eval(&p, "10.0.0.1", 6, 1), Action::Allow);
        assert_eq!(eval(&p, "11.0.0.1", 6, 1), Action::Deny);
        assert_eq!(evaluate(&p, Direction::Out, "11.0.0.1".parse::<Ipv4Addr>().unwrap(), 6, 1), Action::Allow);
    }

    #[test]
    fn input_errors() {
        assert_eq!(
            parse_cidr("10.0.0.1/8").unwrap_err(),
            RuleError::HostBits { given: "10.0.0.1/8".into(), network: "10.0.0.0/8".parse().unwrap() }
        );
        assert!(matches!(parse_cidr("10.0.0/8"), Err(RuleError::Cidr(_))));
        assert!(matches!(parse_cidr("10.0.0.0/33"), Err(RuleError::Cidr(_))));
        assert_eq!(parse_cidr("10.0.0.7").unwrap(), "10.0.0.7/32".parse::<IpNet>().unwrap());
        assert!(matches!(parse_filter("tcp/90-80"), Err(RuleError::Reversed(_))));
        assert!(matches!(parse_filter("sctp"), Err(RuleError::Proto(_))));
        assert!(matches!(parse_filter("tcp/x"), Err(RuleError::Port(_))));
        assert!(matches!(parse_filter("any/80"), Err(RuleError::Proto(_))));
        assert_eq!(parse_filter("icmp/8").unwrap(), (Some(RuleProto::Icmp), Some((8, 8))));
        let p = policy(vec![rule(Action::Allow, "10.0.0.0/8", "tcp/80")]);
        assert!(matches!(p.check_add(&rule(Action::Allow, "10.0.0.0/8", "tcp/80")), Err(RuleError::Duplicate(_))));
        assert!(matches!(p.check_add(&rule(Action::Deny, "10.0.0.0/8", "tcp/80")), Err(RuleError::Conflict { .. })));
        assert!(p.check_add(&rule(Action::Deny, "10.0.0.0/8", "tcp/81")).is_ok());
    }

    #[test]
    fn compile_folds_ancestors_in_and_limits_the_chain() {
        let rules = vec![
            rule(Action::Deny, "0.0.0.0/0", "any"),
            rule(Action::Allow, "10.0.0.0/8", "tcp"),
            rule(Action::Allow, "10.1.0.0/16", "udp"),
        ];
        let c = compile(&rules, Direction::In, None).unwrap();
        let e = &c.entries[&"10.1.0.0/16".parse().unwrap()];
        assert_eq!(e.count, 3);
        assert_eq!(e.rules[0].prefix_len, 16, "best first");
        assert_eq!(e.rules[2].prefix_len, 0);
        let many: Vec<Rule> = (0..17).map(|i| rule(Action::Allow, "10.0.0.0/8", &format!("tcp/{i}"))).collect();
        assert!(matches!(compile(&many, Direction::In, None), Err(RuleError::TooMany { count: 17, .. })));
        assert_eq!(affected(&rules, Direction::In, &"10.0.0.0/8".parse().unwrap()).len(), 2);
    }

    #[test]
    fn ipv6_rules_parse_compile_and_decide_apart_from_ipv4() {
        assert_eq!(parse_cidr("fd00::7").unwrap(), "fd00::7/128".parse::<IpNet>().unwrap());
        assert_eq!(
            parse_cidr("fd00::1/64").unwrap_err(),
            RuleError::HostBits { given: "fd00::1/64".into(), network: "fd00::/64".parse().unwrap() }
        );
        assert!(matches!(parse_cidr("fd00::/129"), Err(RuleError::Cidr(_))));
        assert_eq!(parse_filter("icmpv6/128").unwrap(), (Some(RuleProto::Icmpv6), Some((128, 128))));
        assert_eq!(parse_filter("ipv6-icmp").unwrap(), (Some(RuleProto::Icmpv6), None));
        let p = policy(vec![
            rule(Action::Deny, "::/0", "any"),
            rule(Action::Allow, "fd00:1::/64", "tcp/80"),
            rule(Action::Allow, "fd00:1::/64", "icmp/128"),
            rule(Action::Deny, "10.0.0.0/8", "any"),
        ]);
        assert_eq!(eval(&p, "fd00:1::5", 6, 80), Action::Allow);
        assert_eq!(eval(&p, "fd00:1::5", 6, 81), Action::Deny, "falls to ::/0");
        assert_eq!(eval(&p, "fd00:1::5", IPPROTO_ICMPV6, 128), Action::Allow, "icmp means ICMPv6 for IPv6");
        assert_eq!(eval(&p, "fd00:1::5", IPPROTO_ICMP, 128), Action::Deny);
        assert_eq!(eval(&p, "192.168.0.1", 6, 80), Action::Allow, "::/0 is no IPv4 rule");
        assert_eq!(eval(&p, "10.1.1.1", 6, 80), Action::Deny, "10/8 is no IPv6 rule");
        let c = compile(&p.rules, Direction::In, None).unwrap();
        assert_eq!(c.entries.len(), 1);
        let e = &c.entries6[&"fd00:1::/64".parse().unwrap()];
        assert_eq!(e.count, 3, "the /64's two rules and ::/0's");
        assert!(e.rules[..3].iter().any(|r| r.proto == IPPROTO_ICMPV6 && r.port_min == 128));
        assert_eq!(e.rules[2].prefix_len, 0);
        // Keys: the fixed bits, then the prefix.
        let (len, key) = lpm_key6(7, Direction::In, &"fd00:1::/64".parse().unwrap());
        assert_eq!((len, key.addr.octets()[..2].to_vec()), (POLICY_KEY_FIXED_BITS + 64, vec![0xfd, 0]));
        let targets = affected(&p.rules, Direction::In, &"::/0".parse().unwrap());
        assert_eq!(targets.len(), 2, "::/0 and the /64 under it, no IPv4 CIDR: {targets:?}");
    }

    #[test]
    fn rules_that_mix_families_are_refused() {
        let r = rule(Action::Allow, "10.0.0.0/8", "icmpv6");
        let e = r.check_family().unwrap_err();
        assert!(e.to_string().contains("mixed address families: icmpv6 is an IPv6 protocol"), "{e}");
        assert!(rule(Action::Allow, "fd00::/8", "icmpv6").check_family().is_ok());
        assert!(rule(Action::Allow, "fd00::/8", "icmp").check_family().is_ok());
    }

    #[test]
    fn icmp_on_an_ipv6_prefix_is_icmpv6_by_one_name() {
        let icmp = rule(Action::Allow, "fd00::/8", "icmp/128");
        let icmpv6 = rule(Action::Deny, "fd00::/8", "icmpv6/128");
        // The same match in the datapath: a clash, not a second rule.
        let p = ContainerPolicy { rules: vec![icmp.clone()], ..Default::default() };
        assert!(matches!(p.check_add(&icmpv6), Err(RuleError::Conflict { .. })), "{:?}", p.check_add(&icmpv6));
        assert_eq!(icmp.clone().in_family_names().proto, Some(RuleProto::Icmpv6));
        assert!(icmp.same_rule(&rule(Action::Allow, "fd00::/8", "icmpv6/128")));
        assert!(!icmp.same_rule(&icmpv6));
        let v4 = rule(Action::Allow, "10.0.0.0/8", "icmp");
        assert_eq!(v4.clone().in_family_names(), v4, "ICMPv4 keeps its name");
    }
}
