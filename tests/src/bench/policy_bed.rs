//! The policy beds: one container behind published port 8080, and N
//! inbound rules of which only the last-added one matches the world's
//! client: N-1 denies of other /32s (100.64.0.0 upwards, none containing
//! the client), then an allow of the client's /32, with everything else
//! denied for the container.
//!
//! - iptables: Docker's layout (the published-ports bed's ruleset with one
//!   port) with the rules in `DOCKER-USER`, the chain Docker keeps for the
//!   operator's rules: `-s <cidr> -d <container> -j DROP` ..., the client's ACCEPT,
//!   then `-d <container> -j DROP` for the default. Every packet of every
//!   flow, both ways, walks that chain.
//! - iptables-ct: the same with `-m conntrack --ctstate RELATED,ESTABLISHED
//!   -j RETURN` first, as a careful operator writes it: only a flow's
//!   first packets walk the rules.
//! - netpath: the agent's API, `PUT /v1/policies/c1/default` (in: deny),
//!   then the missing rules in one bulk `POST /v1/policies` (`{"rules":
//!   [...]}`, all or nothing), the client's allow last.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ipnet::Ipv4Net;
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::{
    model::{DefaultRequest, FlushResult, PolicyView, RuleRequest, RulesRequest},
    policy::{Action, Direction, Rule},
};
use serde::Serialize;

use super::{
    bed::{Bed, HostPort, HIT_PORT},
    iptables,
    netpath::NetpathBed,
    plain::{timed_in_ns, PlainNet},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyVariant {
    Iptables,
    IptablesCt,
    Netpath,
}

impl PolicyVariant {
    pub const ALL: [PolicyVariant; 3] = [PolicyVariant::Iptables, PolicyVariant::IptablesCt, PolicyVariant::Netpath];

    pub fn name(self) -> &'static str {
        match self {
            PolicyVariant::Iptables => "iptables",
            PolicyVariant::IptablesCt => "iptables-ct",
            PolicyVariant::Netpath => "netpath",
        }
    }
}

/// The `i`-th rule that does not match the client: a /32 from 100.64.0.0 up.
pub fn filler_cidr(i: usize) -> Ipv4Net {
    host_net(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i as u32))
}

/// The `k`-th rule added on top for the timing of one more rule (100.96.0.0 up).
pub fn extra_cidr(k: usize) -> Ipv4Net {
    host_net(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 96, 0, 0)) + k as u32))
}

/// The client's /32: the world namespace's address.
pub fn client_cidr() -> Ipv4Net {
    host_net(WORLD_IP)
}

fn host_net(addr: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::from(addr)
}

pub trait PolicyBed {
    fn topology(&self) -> &Topology;
    /// Where the world's clients connect: the published port.
    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(HOST_UPLINK_IP, HIT_PORT)
    }
    /// Makes the container's inbound policy `rules` rules (0: none at all,
    /// everything allowed); returns how long that took.
    fn set_rules(&mut self, rules: usize) -> Result<Duration>;
    /// Adds one more deny rule for `cidr`; returns the operation's time.
    fn add_one(&mut self, cidr: Ipv4Net) -> Result<Duration>;
    /// Facts about the setup as it ran, for the report.
    fn notes(&self) -> Vec<String> {
        vec![]
    }
    fn as_netpath(&mut self) -> Option<&mut NetpathPolicyBed> {
        None
    }
}

pub struct IptablesPolicyBed {
    net: PlainNet,
    stateful: bool,
}

impl IptablesPolicyBed {
    pub fn new(stateful: bool) -> Result<IptablesPolicyBed> {
        let net = PlainNet::new()?;
        net.docker_bridge_netfilter()?;
        let mut bed = IptablesPolicyBed { net, stateful };
        bed.set_rules(0)?;
        Ok(bed)
    }

    fn container(&self) -> Ipv4Addr {
        self.net.container_ip
    }

    /// `DOCKER-USER` for `rules` rules (without the chain name).
    fn user_rules(&self, rules: usize) -> Vec<String> {
        let ctr = self.container();
        let mut out = vec![];
        if self.stateful {
            out.push("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string());
        }
        if rules > 0 {
            out.extend((0..rules - 1).map(|i| format!("-s {} -d {ctr}/32 -j DROP", filler_cidr(i))));
            out.push(format!("-s {} -d {ctr}/32 -j ACCEPT", client_cidr()));
            out.push(format!("-d {ctr}/32 -j DROP"));
        }
        out
    }
}

impl PolicyBed for IptablesPolicyBed {
    fn topology(&self) -> &Topology {
        &self.net.topo
    }

    /// The whole nat and filter tables, loaded with `iptables-restore`.
    fn set_rules(&mut self, rules: usize) -> Result<Duration> {
        let text = iptables::ruleset_with_user_rules(
            &self.net.subnet,
            &self.container().to_string(),
            &[HostPort { addr: None, port: HIT_PORT }],
            &self.user_rules(rules),
        );
        self.net.iptables_restore("policy.rules", &text)
    }

    /// `iptables -I DOCKER-USER -s <cidr> -d <container> -j DROP`.
    fn add_one(&mut self, cidr: Ipv4Net) -> Result<Duration> {
        let (cidr, ctr) = (cidr.to_string(), format!("{}/32", self.container()));
        let args = ["-I", "DOCKER-USER", "-s", &cidr, "-d", &ctr, "-j", "DROP"];
        timed_in_ns(&self.net.topo, &self.net.topo.host, "iptables", &args, None)
    }
}

pub struct NetpathPolicyBed {
    pub bed: NetpathBed,
    /// Filler rules added so far (`filler_cidr(0..fillers)`).
    fillers: usize,
    client_allowed: bool,
    default_deny: bool,
    /// Flows forgotten before each growth: (rules asked, flows).
    flushed: Vec<(usize, usize)>,
}

const CONTAINER: &str = "c1";

impl NetpathPolicyBed {
    pub fn new() -> Result<NetpathPolicyBed> {
        let mut bed = NetpathBed::new()?;
        bed.publish(1)?;
        Ok(NetpathPolicyBed { bed, fillers: 0, client_allowed: false, default_deny: false, flushed: vec![] })
    }

    fn request(action: Action, cidr: Ipv4Net) -> RuleRequest {
        RuleRequest {
            container: CONTAINER.into(),
            action,
            direction: Direction::In,
            cidr: cidr.to_string(),
            filter: None,
        }
    }

    fn rule(&self, action: Action, cidr: Ipv4Net, add: bool) -> Result<Duration> {
        let req = Self::request(action, cidr);
        let path = if add { "/policies" } else { "/policies/remove" };
        let start = Instant::now();
        let _: Rule = self.bed.post(path, &req)?;
        Ok(start.elapsed())
    }

    /// Forgets every tracked flow (`DELETE /v1/conntrack`): a policy change
    /// re-judges every tracked flow, so that thousands of rule changes after
    /// a load window would otherwise spend their time on the window's
    /// leftovers (see the report); returns how many flows went.
    pub fn flush_conntrack(&self) -> Result<usize> {
        let r: FlushResult = self.bed.delete("/conntrack")?;
        Ok(r.flows)
    }
}

impl PolicyBed for NetpathPolicyBed {
    fn topology(&self) -> &Topology {
        self.bed.topology()
    }

    /// Grows the rules (the bed never shrinks): tracked flows are
    /// forgotten first (untimed), then the default goes to deny,
    /// the client's allow is taken out, the missing fillers are added in one
    /// bulk call and the allow is added again last.
    fn set_rules(&mut self, rules: usize) -> Result<Duration> {
        if rules == 0 {
            if self.default_deny {
                bail!("the netpath policy bed only grows");
            }
            return Ok(Duration::ZERO);
        }
        if rules - 1 < self.fillers {
            bail!("the netpath policy bed only grows ({} rules, {rules} asked)", self.fillers + 1);
        }
        let flows = self.flush_conntrack()?;
        self.flushed.push((rules, flows));
        let start = Instant::now();
        if !self.default_deny {
            let req = DefaultRequest { direction: Direction::In, action: Action::Deny };
            let _: PolicyView = self.bed.put(&format!("/policies/{CONTAINER}/default"), &req)?;
            self.default_deny = true;
        }
        if self.client_allowed {
            self.rule(Action::Allow, client_cidr(), false).context("taking the client's allow out")?;
            self.client_allowed = false;
        }
        super::check_interrupted()?;
        if self.fillers < rules - 1 {
            let rules: Vec<RuleRequest> =
                (self.fillers..rules - 1).map(|i| Self::request(Action::Deny, filler_cidr(i))).collect();
            let n = rules.len();
            let _: Vec<Rule> = self
                .bed
                .post("/policies", &RulesRequest { rules })
                .with_context(|| format!("adding {n} rules in one call"))?;
            self.fillers += n;
        }
        self.rule(Action::Allow, client_cidr(), true).context("allowing the client")?;
        self.client_allowed = true;
        Ok(start.elapsed())
    }

    /// `POST /v1/policies` round trip, in-process client.
    fn add_one(&mut self, cidr: Ipv4Net) -> Result<Duration> {
        self.rule(Action::Deny, cidr, true)
    }

    fn notes(&self) -> Vec<String> {
        let flushed: Vec<String> =
            self.flushed.iter().map(|(r, f)| format!("{f} before growing to {r} rules")).collect();
        vec![
            format!("netpath: netpathd with its default settings; {}", self.bed.xdp_note()),
            format!("netpath: tracked flows forgotten with `DELETE /v1/conntrack` (untimed): {}", flushed.join(", ")),
        ]
    }

    fn as_netpath(&mut self) -> Option<&mut NetpathPolicyBed> {
        Some(self)
    }
}
