//! Per-container policy: rules compiled into POLICY, endpoint defaults,
//! and re-judging established flows when the policy changes.

use super::*;

impl Inner {
    pub(super) fn policy_of(&self, name: &str) -> ContainerPolicy {
        self.state.policies.get(name).cloned().unwrap_or_default()
    }

    /// Writes the compiled entries of `cidrs` (one container, one direction);
    /// CIDRs without rules lose their entry.
    pub(super) fn write_policy(
        &mut self,
        id: u32,
        rules: &[Rule],
        d: Direction,
        cidrs: Option<&[ipnet::Ipv4Net]>,
    ) -> Result<(), AgentError> {
        let compiled = policy::compile(rules, d, cidrs)?;
        if let Some(cidrs) = cidrs {
            for cidr in cidrs {
                if !compiled.entries.contains_key(cidr) {
                    let (len, key) = policy::lpm_key(id, d, cidr);
                    self.dp.set_policy(len, &key, &netpath_common::PolicyEntry::default())?;
                }
            }
        }
        for (cidr, entry) in &compiled.entries {
            let (len, key) = policy::lpm_key(id, d, cidr);
            self.dp.set_policy(len, &key, entry)?;
        }
        Ok(())
    }

    /// Adds (or removes) one rule: checked, compiled for the prefixes it
    /// touches, written, recorded; then established flows it now denies are
    /// cut.
    pub(super) fn change_rule(&mut self, req: RuleRequest, add: bool) -> Result<Rule, AgentError> {
        let c = self.find(&req.container)?.clone();
        let cidr = policy::parse_cidr(&req.cidr)?;
        let (proto, ports) = match &req.filter {
            Some(f) => policy::parse_filter(f)?,
            None => (None, None),
        };
        let rule = Rule { action: req.action, direction: req.direction, cidr, proto, ports };
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

    pub(super) fn set_default(
        &mut self,
        name: &str,
        direction: Direction,
        action: Action,
    ) -> Result<PolicyView, AgentError> {
        let c = self.find(name)?.clone();
        self.record(Change::SetDefault { container: c.name.clone(), direction, action })?;
        self.write_endpoint(&c)?;
        if action == Action::Deny {
            self.recheck_flows(Some(c.id), None)?;
        }
        Ok(PolicyView { container: c.name.clone(), policy: self.policy_of(&c.name) })
    }

    /// Re-judges established flows under the current policy and cuts the
    /// ones it now denies: their verdict entries go, so the next packet is
    /// judged as new, and dropped. `only`: flows of one endpoint; `within`:
    /// flows whose remote address lies in this CIDR (the others cannot have
    /// changed). A container's rules are compiled only if it has a flow to
    /// judge.
    pub(super) fn recheck_flows(&mut self, only: Option<u32>, within: Option<ipnet::Ipv4Net>) -> Result<usize> {
        let policies: HashMap<u32, ContainerPolicy> = self
            .state
            .containers
            .iter()
            .filter(|c| only.is_none_or(|id| id == c.id))
            .map(|c| (c.id, self.policy_of(&c.name)))
            .collect();
        let mut evaluators: HashMap<u32, policy::Evaluator> = HashMap::new();
        let icc = self.dp_config.flags & CFG_F_NO_ICC == 0;
        let (subnet, gateway) = (self.cfg_subnet(), Ipv4Addr::from(self.dp_config.gateway));
        let denied = |k: &netpath_common::CtKey, e: &netpath_common::CtEntry| {
            if e.flags & CT_F_POLICY == 0 || e.flags & CT_F_REPLY != 0 || only.is_some_and(|id| id != e.endpoint_id) {
                return false;
            }
            let (d, remote) = if k.scope == CT_SCOPE_FROM_EP {
                (Direction::Out, Ipv4Addr::from(k.daddr))
            } else {
                (Direction::In, Ipv4Addr::from(k.saddr))
            };
            if within.is_some_and(|net| !net.contains(&remote)) {
                return false;
            }
            // A verdict of an endpoint that is gone goes too.
            let Some(p) = policies.get(&e.endpoint_id) else { return true };
            if d == Direction::Out && !icc && subnet.contains(&remote) && remote != gateway {
                return true;
            }
            let eval = evaluators.entry(e.endpoint_id).or_insert_with(|| policy::Evaluator::new(p));
            // Tracked ICMP flows are echo flows: judged as type 8.
            let port = if k.proto == 1 { 8 } else { u16::from_be(k.dport) };
            eval.verdict(d, remote, k.proto, port) == Action::Deny
        };
        let cut = self.dp.ct_remove_where(denied)?;
        if cut > 0 {
            tracing::info!(flows = cut, "cut established flows the policy now denies");
        }
        Ok(cut)
    }

    pub(super) fn cfg_subnet(&self) -> ipnet::Ipv4Net {
        ipnet::Ipv4Net::new(Ipv4Addr::from(self.dp_config.subnet), self.dp_config.subnet_prefix as u8)
            .unwrap_or_default()
    }

    /// POLICY holds exactly the compiled rules of live containers.
    pub(super) fn reconcile_policies(&mut self) -> Result<()> {
        let live: Vec<String> = self.state.containers.iter().map(|c| c.name.clone()).collect();
        self.state.policies.retain(|name, _| live.contains(name));
        let mut wanted = std::collections::HashSet::new();
        for c in self.state.containers.clone() {
            let rules = self.policy_of(&c.name).rules;
            for d in [Direction::In, Direction::Out] {
                self.write_policy(c.id, &rules, d, None).map_err(|e| anyhow::anyhow!("policy of {}: {e}", c.name))?;
                for cidr in policy::compile(&rules, d, None).map_err(|e| anyhow::anyhow!("{e}"))?.entries.keys() {
                    wanted.insert(policy::lpm_key(c.id, d, cidr));
                }
            }
        }
        for (len, key) in self.dp.policy_keys()? {
            if !wanted.contains(&(len, key)) {
                self.dp.set_policy(len, &key, &netpath_common::PolicyEntry::default())?;
            }
        }
        Ok(())
    }
}
