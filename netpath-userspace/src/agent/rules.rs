//! Per-container policy: rules compiled into POLICY4, container defaults,
//! and re-judging established flows when the policy changes.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use ipnet::Ipv4Net;
use netpath_common::{
    conntrack::{CT_F_POLICY, CT_F_REPLY, IPPROTO_ICMP},
    CtEntry, CtKey4, PolicyEntry,
};

use super::{AgentError, Inner};
use crate::{
    model::{Container, PolicyView, RuleRequest},
    policy::{self, Action, ContainerPolicy, Direction, Rule, RuleError},
    state::Change,
};

/// Tracked ICMP flows are echo flows: re-judged as echo requests (type 8).
const ICMP_ECHO_REQUEST: u16 = 8;

/// The rule a request describes, checked.
fn rule_of(req: &RuleRequest) -> Result<Rule, AgentError> {
    let cidr = policy::parse_cidr(&req.cidr)?;
    let (proto, ports) = match &req.filter {
        Some(f) => policy::parse_filter(f)?,
        None => (None, None),
    };
    Ok(Rule { action: req.action, direction: req.direction, cidr, proto, ports })
}

impl Inner {
    pub(super) fn policy_of(&self, name: &str) -> ContainerPolicy {
        self.state.policies.get(name).cloned().unwrap_or_default()
    }

    /// Writes the compiled entries of `cidrs` (one container, one direction);
    /// CIDRs without rules lose their entry.
    fn write_policy(
        &mut self,
        id: u32,
        rules: &[Rule],
        d: Direction,
        cidrs: Option<&[Ipv4Net]>,
    ) -> Result<(), AgentError> {
        let compiled = policy::compile(rules, d, cidrs)?;
        if let Some(cidrs) = cidrs {
            for cidr in cidrs {
                if !compiled.entries.contains_key(cidr) {
                    let (len, key) = policy::lpm_key4(id, d, cidr);
                    self.dp.set_policy4(len, &key, &PolicyEntry::default())?;
                }
            }
        }
        for (cidr, entry) in &compiled.entries {
            let (len, key) = policy::lpm_key4(id, d, cidr);
            self.dp.set_policy4(len, &key, entry)?;
        }
        Ok(())
    }

    /// Adds (or removes) one rule: checked, compiled for the prefixes it
    /// touches, written, recorded; then established flows it now denies are
    /// cut.
    pub(super) fn change_rule(&mut self, req: RuleRequest, add: bool) -> Result<Rule, AgentError> {
        let c = self.find(&req.container)?.clone();
        let rule = rule_of(&req)?;
        let cidr = rule.cidr;
        let current = self.policy_of(&c.name);
        let mut rules = current.rules.clone();
        if add {
            current.check_add(&rule)?;
            rules.push(rule.clone());
        } else {
            let before = rules.len();
            rules.retain(|r| *r != rule);
            if rules.len() == before {
                return Err(RuleError::NotFound(rule.to_string()).into());
            }
        }
        let touched = policy::affected(&rules, rule.direction, &cidr);
        // Compile first: a rule that cannot be represented changes nothing.
        policy::compile(&rules, rule.direction, Some(&touched))?;
        self.write_policy(c.id, &rules, rule.direction, Some(&touched))?;
        let change = if add {
            Change::AddRule { container: c.name.clone(), rule: rule.clone() }
        } else {
            Change::RemoveRule { container: c.name.clone(), rule: rule.clone() }
        };
        self.record(change)?;
        // Only a new deny or a removed allow can deny a flow, and only flows
        // whose remote lies in the rule's CIDR.
        if add == (rule.action == Action::Deny) {
            self.recheck_flows(Some(c.id), Some(cidr))?;
        }
        tracing::info!(container = %c.name, rule = %rule, "{}", if add { "policy rule added" } else { "policy rule removed" });
        Ok(rule)
    }

    /// Adds many rules at once, all or nothing: every rule is checked and
    /// every touched container and direction compiled before anything is
    /// written; then one journal line per container, and one pass over the
    /// tracked flows if a deny was added.
    pub(super) fn add_rules(&mut self, reqs: &[RuleRequest]) -> Result<Vec<Rule>, AgentError> {
        if reqs.is_empty() {
            return Err(AgentError::BadRequest("no rules given".into()));
        }
        // Per container, in the order they first appear.
        let mut by_container: Vec<(Container, Vec<Rule>)> = vec![];
        for req in reqs {
            let c = self.find(&req.container)?.clone();
            let rule = rule_of(req)?;
            match by_container.iter_mut().find(|(x, _)| x.name == c.name) {
                Some((_, rules)) => rules.push(rule),
                None => by_container.push((c, vec![rule])),
            }
        }
        let mut plans = vec![];
        for (c, new) in by_container {
            let current = self.policy_of(&c.name);
            // The rules a new one would clash with, by what they match.
            let mut matched: HashMap<policy::RuleMatch, &Rule> =
                current.rules.iter().map(|r| (r.match_key(), r)).collect();
            for r in &new {
                if let Some(existing) = matched.insert(r.match_key(), r) {
                    return Err(if existing.action == r.action {
                        RuleError::Duplicate(r.to_string())
                    } else {
                        RuleError::Conflict { new: r.to_string(), existing: existing.to_string() }
                    }
                    .into());
                }
            }
            let mut rules = current.rules.clone();
            rules.extend(new.iter().cloned());
            let directions: Vec<Direction> =
                [Direction::In, Direction::Out].into_iter().filter(|d| new.iter().any(|r| r.direction == *d)).collect();
            for d in &directions {
                policy::compile(&rules, *d, None)?;
            }
            plans.push((c, rules, new, directions));
        }
        let mut added = vec![];
        let mut deny = false;
        for (c, rules, new, directions) in plans {
            for d in directions {
                self.write_policy(c.id, &rules, d, None)?;
            }
            deny |= new.iter().any(|r| r.action == Action::Deny);
            tracing::info!(container = %c.name, rules = new.len(), "policy rules added");
            self.record(Change::AddRules { container: c.name.clone(), rules: new.clone() })?;
            added.extend(new);
        }
        if deny {
            self.recheck_flows(None, None)?;
        }
        Ok(added)
    }

    pub(super) fn set_default(
        &mut self,
        name: &str,
        direction: Direction,
        action: Action,
    ) -> Result<PolicyView, AgentError> {
        let c = self.find(name)?.clone();
        self.record(Change::SetDefault { container: c.name.clone(), direction, action })?;
        self.write_container_entry(&c)?;
        if action == Action::Deny {
            self.recheck_flows(Some(c.id), None)?;
        }
        Ok(PolicyView { container: c.name.clone(), policy: self.policy_of(&c.name) })
    }

    /// Re-judges established flows under the current policy and cuts the
    /// ones it now denies: their verdict entries go, so the next packet is
    /// judged as new, and dropped. `only`: flows of one container; `within`:
    /// flows whose remote address lies in this CIDR (the others cannot have
    /// changed). A container's rules are compiled only if it has a flow to
    /// judge.
    pub(super) fn recheck_flows(&mut self, only: Option<u32>, within: Option<Ipv4Net>) -> Result<usize> {
        let policies: HashMap<u32, ContainerPolicy> = self
            .state
            .containers
            .iter()
            .filter(|c| only.is_none_or(|id| id == c.id))
            .map(|c| (c.id, self.policy_of(&c.name)))
            .collect();
        let mut evaluators: HashMap<u32, policy::Evaluator> = HashMap::new();
        let dp_config = self.dp_config;
        let denied = |k: &CtKey4, e: &CtEntry| {
            if e.flags & CT_F_POLICY == 0 || e.flags & CT_F_REPLY != 0 || only.is_some_and(|id| id != e.container_id) {
                return false;
            }
            let Some(d) = k.scope().and_then(|s| s.direction()) else { return false };
            let remote = match d {
                Direction::Out => k.daddr,
                Direction::In => k.saddr,
            };
            if within.is_some_and(|net| !net.contains(&Ipv4Addr::from(remote))) {
                return false;
            }
            // A verdict of a container that is gone goes too.
            let Some(p) = policies.get(&e.container_id) else { return true };
            if d == Direction::Out && dp_config.icc_denies4(remote) {
                return true;
            }
            let eval = evaluators.entry(e.container_id).or_insert_with(|| policy::Evaluator::new(p));
            let port = if k.proto == IPPROTO_ICMP { ICMP_ECHO_REQUEST } else { u16::from_be(k.dport) };
            eval.verdict(d, Ipv4Addr::from(remote), k.proto, port) == Action::Deny
        };
        let cut = self.dp.ct_remove_where(denied)?;
        if cut > 0 {
            tracing::info!(flows = cut, "cut established flows the policy now denies");
        }
        Ok(cut)
    }

    /// Removes a container's rules and their compiled entries (its verdicts
    /// go with its flows: `forget_flows`).
    pub(super) fn forget_policy(&mut self, c: &Container) -> Result<()> {
        let rules = self.policy_of(&c.name).rules;
        self.state.policies.remove(&c.name);
        for d in Direction::BOTH {
            let cidrs: Vec<Ipv4Net> =
                policy::compile(&rules, d, None).map(|x| x.entries.into_keys().collect()).unwrap_or_default();
            for cidr in cidrs {
                let (len, key) = policy::lpm_key4(c.id, d, &cidr);
                self.dp.set_policy4(len, &key, &PolicyEntry::default())?;
            }
        }
        Ok(())
    }

    /// POLICY4 holds exactly the compiled rules of live containers.
    pub(super) fn reconcile_policies(&mut self) -> Result<()> {
        let live: Vec<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        self.state.policies.retain(|name, _| live.contains(name));
        let mut wanted = HashSet::new();
        for c in self.state.containers.clone() {
            let rules = self.policy_of(&c.name).rules;
            for d in Direction::BOTH {
                self.write_policy(c.id, &rules, d, None).map_err(|e| anyhow::anyhow!("policy of {}: {e}", c.name))?;
                for cidr in policy::compile(&rules, d, None).map_err(|e| anyhow::anyhow!("{e}"))?.entries.keys() {
                    wanted.insert(policy::lpm_key4(c.id, d, cidr));
                }
            }
        }
        for (len, key) in self.dp.policy_keys4()? {
            if !wanted.contains(&(len, key)) {
                self.dp.set_policy4(len, &key, &PolicyEntry::default())?;
            }
        }
        Ok(())
    }
}
