//! Per-container policy: rules compiled into POLICY4 and POLICY6 (by the
//! family of their CIDR), container defaults,
//! and having established flows re-judged when the policy changes (by the
//! datapath, at their next packet: see `rejudge_flows`).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use ipnet::IpNet;
use netpath_common::{
    maps::{self as names, MAX_POLICY_PREFIXES},
    PolicyEntry,
};

use super::{AgentError, Inner};
use crate::{
    model::{Container, PolicyView, RuleRequest},
    policy::{self, Action, ContainerPolicy, Direction, Rule, RuleError},
    state::Change,
};

/// Refuses `adding` more prefixes to a trie holding `used` (POLICY6 if
/// `v6`) when they do not fit.
fn policy_room(used: usize, adding: usize, v6: bool) -> Result<(), AgentError> {
    if used + adding <= MAX_POLICY_PREFIXES {
        return Ok(());
    }
    let table = if v6 { names::POLICY6 } else { names::POLICY4 };
    Err(AgentError::Conflict(format!(
        "the policy table {table} is full: {used} of {MAX_POLICY_PREFIXES} prefixes used, these rules need {adding} \
         more; nothing changed"
    )))
}

/// A map write the kernel refused for want of room (a full trie).
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC)))
}

/// The rule a request describes, checked.
fn rule_of(req: &RuleRequest) -> Result<Rule, AgentError> {
    let cidr = policy::parse_cidr(&req.cidr)?;
    let (proto, ports) = match &req.filter {
        Some(f) => policy::parse_filter(f)?,
        None => (None, None),
    };
    let rule = Rule { action: req.action, direction: req.direction, cidr, proto, ports };
    rule.check_family()?;
    Ok(rule.in_family_names())
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
        cidrs: Option<&[IpNet]>,
    ) -> Result<(), AgentError> {
        let compiled = policy::compile(rules, d, cidrs)?;
        if let Some(cidrs) = cidrs {
            for cidr in cidrs {
                if compiled.get(cidr).is_none() {
                    self.set_policy_entry(id, d, cidr, &PolicyEntry::default())?;
                }
            }
        }
        for cidr in compiled.cidrs() {
            if let Some(entry) = compiled.get(&cidr) {
                self.set_policy_entry(id, d, &cidr, entry)?;
            }
        }
        Ok(())
    }

    /// [`Inner::write_policy`] of `rules` over `was` (the container's
    /// rules as written), all or nothing: refused before anything is
    /// written if the trie has no room for the prefixes they add, and if a
    /// write fails anyway (the trie filled behind the agent), the prefixes
    /// are written back as `was` compiles them, so the datapath never
    /// holds part of a change.
    fn replace_policy(
        &mut self,
        id: u32,
        rules: &[Rule],
        was: &[Rule],
        d: Direction,
        cidrs: Option<&[IpNet]>,
    ) -> Result<(), AgentError> {
        let (new, old) = (policy::compile(rules, d, cidrs)?, policy::compile(was, d, cidrs)?);
        for (v6, wanted, had) in
            [(false, new.entries.len(), old.entries.len()), (true, new.entries6.len(), old.entries6.len())]
        {
            policy_room(self.dp.policy_prefixes(v6), wanted.saturating_sub(had), v6)?;
        }
        let Err(e) = self.write_policy(id, rules, d, cidrs) else { return Ok(()) };
        let touched: Vec<IpNet> = new.cidrs().chain(old.cidrs()).collect();
        if let Err(undo) = self.write_policy(id, was, d, Some(&touched)) {
            tracing::error!(container_id = id, "restoring the policy after a failed write: {undo}");
        }
        Err(match e {
            AgentError::Internal(e) if is_no_space(&e) => AgentError::Conflict(format!(
                "the policy table is full (the kernel refused a prefix: {e:#}); nothing changed"
            )),
            e => e,
        })
    }

    /// Writes one compiled prefix into its family's trie (an empty entry
    /// removes it).
    fn set_policy_entry(&mut self, id: u32, d: Direction, cidr: &IpNet, entry: &PolicyEntry) -> Result<()> {
        match cidr {
            IpNet::V4(net) => {
                let (len, key) = policy::lpm_key4(id, d, net);
                self.dp.set_policy4(len, &key, entry)
            }
            IpNet::V6(net) => {
                let (len, key) = policy::lpm_key6(id, d, net);
                self.dp.set_policy6(len, &key, entry)
            }
        }
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
            rules.retain(|r| !r.same_rule(&rule));
            if rules.len() == before {
                return Err(RuleError::NotFound(rule.to_string()).into());
            }
        }
        let touched = policy::affected(&rules, rule.direction, &cidr);
        // Compile first: a rule that cannot be represented changes nothing.
        policy::compile(&rules, rule.direction, Some(&touched))?;
        self.replace_policy(c.id, &rules, &current.rules, rule.direction, Some(&touched))?;
        let change = if add {
            Change::AddRule { container: c.name.clone(), rule: rule.clone() }
        } else {
            Change::RemoveRule { container: c.name.clone(), rule: rule.clone() }
        };
        self.record(change)?;
        // Only a new deny or a removed allow can deny a flow.
        if add == (rule.action == Action::Deny) {
            self.rejudge_flows(Some(c.id))?;
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
            plans.push((c, current.rules, rules, new, directions));
        }
        let mut added = vec![];
        let mut written: Vec<(u32, &[Rule], &[Rule], Direction)> = vec![];
        for (c, was, rules, _, directions) in &plans {
            for d in directions {
                if let Err(e) = self.replace_policy(c.id, rules, was, *d, None) {
                    // All or nothing across containers too: the ones
                    // written already get their rules back.
                    for &(id, rules, was, d) in written.iter().rev() {
                        let cidrs: Vec<IpNet> = policy::compile(rules, d, None)?.cidrs().collect();
                        self.write_policy(id, was, d, Some(&cidrs))?;
                    }
                    return Err(e);
                }
                written.push((c.id, rules, was, *d));
            }
        }
        for (c, _, _, new, _) in plans {
            tracing::info!(container = %c.name, rules = new.len(), "policy rules added");
            self.record(Change::AddRules { container: c.name.clone(), rules: new.clone() })?;
            if new.iter().any(|r| r.action == Action::Deny) {
                self.rejudge_flows(Some(c.id))?;
            }
            added.extend(new);
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
        // The new default and a new policy epoch: flows a deny now denies
        // are cut at their next packet.
        self.write_container_entry(&c)?;
        tracing::info!(container = %c.name, ?direction, ?action, "policy default set");
        Ok(PolicyView { container: c.name.clone(), policy: self.policy_of(&c.name) })
    }

    /// Has established flows judged again under the current policy, by the
    /// datapath at their next packet (kept if still allowed, cut if now
    /// denied): the policy epoch of `only` (one container) or of every
    /// container moves on. O(containers), never a walk of conntrack.
    pub(super) fn rejudge_flows(&mut self, only: Option<u32>) -> Result<()> {
        let containers: Vec<Container> =
            self.state.containers.iter().filter(|c| only.is_none_or(|id| id == c.id)).cloned().collect();
        for c in &containers {
            self.write_container_entry(c)?;
        }
        Ok(())
    }

    /// Removes a container's rules and their compiled entries (its verdicts
    /// go with its flows: `forget_flows`).
    pub(super) fn forget_policy(&mut self, c: &Container) -> Result<()> {
        let rules = self.policy_of(&c.name).rules;
        self.state.policies.remove(&c.name);
        for d in Direction::BOTH {
            let cidrs: Vec<IpNet> = policy::compile(&rules, d, None).map(|x| x.cidrs().collect()).unwrap_or_default();
            for cidr in cidrs {
                self.set_policy_entry(c.id, d, &cidr, &PolicyEntry::default())?;
            }
        }
        Ok(())
    }

    /// POLICY4 and POLICY6 hold exactly the compiled rules of live containers.
    pub(super) fn reconcile_policies(&mut self) -> Result<()> {
        let live: HashSet<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        self.state.policies.retain(|name, _| live.contains(name));
        let mut wanted4 = HashSet::new();
        let mut wanted6 = HashSet::new();
        for c in self.state.containers.clone() {
            let rules = self.policy_of(&c.name).rules;
            for d in Direction::BOTH {
                self.write_policy(c.id, &rules, d, None).map_err(|e| anyhow::anyhow!("policy of {}: {e}", c.name))?;
                let compiled = policy::compile(&rules, d, None).map_err(|e| anyhow::anyhow!("{e}"))?;
                wanted4.extend(compiled.entries.keys().map(|cidr| policy::lpm_key4(c.id, d, cidr)));
                wanted6.extend(compiled.entries6.keys().map(|cidr| policy::lpm_key6(c.id, d, cidr)));
            }
        }
        for (len, key) in self.dp.policy_keys4()? {
            if !wanted4.contains(&(len, key)) {
                self.dp.set_policy4(len, &key, &PolicyEntry::default())?;
            }
        }
        for (len, key) in self.dp.policy_keys6()? {
            if !wanted6.contains(&(len, key)) {
                self.dp.set_policy6(len, &key, &PolicyEntry::default())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_refused_whole_when_their_prefixes_do_not_fit_and_the_table_is_named() {
        assert!(policy_room(0, MAX_POLICY_PREFIXES, false).is_ok());
        assert!(policy_room(MAX_POLICY_PREFIXES, 0, true).is_ok(), "rules that add no prefix always fit");
        let err = policy_room(MAX_POLICY_PREFIXES - 1, 2, true).unwrap_err().to_string();
        assert!(err.contains("the policy table POLICY6 is full"), "{err}");
        assert!(err.contains(&format!("{} of {MAX_POLICY_PREFIXES} prefixes used", MAX_POLICY_PREFIXES - 1)), "{err}");
        assert!(err.contains("need 2 more; nothing changed"), "{err}");
    }

    #[test]
    fn a_full_trie_is_told_from_other_write_failures() {
        let full = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC)).context("writing into POLICY4");
        assert!(is_no_space(&full));
        let other = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM)).context("writing into POLICY4");
        assert!(!is_no_space(&other));
    }
}
