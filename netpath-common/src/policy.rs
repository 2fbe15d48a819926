//! Per-container allow/deny rules, as the datapath looks them up: one LPM
//! trie keyed by (container, direction, remote address prefix). Each entry
//! carries every rule that applies to its prefix, its own and those of the
//! shorter prefixes that contain it (the agent compiles them in), so one
//! longest-prefix lookup and a scan of at most [`MAX_RULES_PER_PREFIX`]
//! rules decide a new flow, however many rules there are.

use crate::{family::In6Addr, Direction};

pub const POLICY_ALLOW: u8 = 1;
pub const POLICY_DENY: u8 = 2;

/// Bits of a [`PolicyKey`] before the address: container id, direction, padding.
pub const POLICY_KEY_FIXED_BITS: u32 = 64;

pub const MAX_RULES_PER_PREFIX: usize = 16;

/// The data part of an LPM trie key (the trie adds a prefix length in
/// front). Matching runs over the bytes in order, so the fixed fields come
/// first and the address last.
/// `PolicyKey4` and `PolicyKey6` (in `POLICY4` and `POLICY6`) are its
/// instances.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey<A> {
    /// Big-endian, so that the trie sees it as plain bytes.
    pub container_id: [u8; 4],
    /// [`Direction`] as u8.
    pub direction: u8,
    pub _pad: [u8; 3],
    pub addr: A,
}

pub type PolicyKey4 = PolicyKey<[u8; 4]>;
pub type PolicyKey6 = PolicyKey<In6Addr>;

impl<A> PolicyKey<A> {
    #[inline(always)]
    pub fn new(container_id: u32, direction: Direction, addr: A) -> PolicyKey<A> {
        PolicyKey { container_id: container_id.to_be_bytes(), direction: direction as u8, _pad: [0; 3], addr }
    }
}

/// One rule as the datapath evaluates it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// The rule's CIDR prefix length (0-32, IPv6 0-128): longer wins.
    pub prefix_len: u8,
    /// IP protocol, 0 for any.
    pub proto: u8,
    /// `POLICY_ALLOW` or `POLICY_DENY`.
    pub action: u8,
    /// 1 if the rule names ports (ICMP: types); it then beats one that does
    /// not on equal prefixes.
    pub has_ports: u8,
    /// Inclusive range, host byte order.
    pub port_min: u16,
    pub port_max: u16,
}

impl PolicyRule {
    /// Rank among matching rules: longest prefix, then naming a port, then
    /// deny over allow.
    #[inline(always)]
    pub fn rank(&self) -> u32 {
        ((self.prefix_len as u32) << 2) | ((self.has_ports as u32) << 1) | (self.action == POLICY_DENY) as u32
    }

    #[inline(always)]
    pub fn matches(&self, proto: u8, port: u16) -> bool {
        (self.proto == 0 || self.proto == proto)
            && (self.has_ports == 0 || (port >= self.port_min && port <= self.port_max))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    pub count: u32,
    pub rules: [PolicyRule; MAX_RULES_PER_PREFIX],
}

impl PolicyEntry {
    /// The winning rule's action for a flow, if any rule matches. The agent
    /// stores the rules best first (see [`PolicyRule::rank`]), so the first
    /// match wins; a first-match scan also keeps the verifier's work linear
    /// in the number of rules (a running maximum would make it explore every
    /// combination of outcomes).
    #[inline(always)]
    pub fn decide(&self, proto: u8, port: u16) -> Option<u8> {
        let n = if (self.count as usize) < MAX_RULES_PER_PREFIX { self.count as usize } else { MAX_RULES_PER_PREFIX };
        for i in 0..MAX_RULES_PER_PREFIX {
            if i >= n {
                break;
            }
            let r = &self.rules[i];
            if r.matches(proto, port) {
                return Some(r.action);
            }
        }
        None
    }

    /// Orders the first `count` rules best first.
    pub fn sort(&mut self) {
        let n = (self.count as usize).min(MAX_RULES_PER_PREFIX);
        // Insertion sort: no allocation, n <= 16.
        for i in 1..n {
            let mut j = i;
            while j > 0 && self.rules[j].rank() > self.rules[j - 1].rank() {
                self.rules.swap(j, j - 1);
                j -= 1;
            }
        }
    }
}

/// The verdict on a new flow: the winning rule of the remote prefix's
/// entry (if the lookup found one and a rule matches), else the container's
/// default for the direction. Kernel and agent both decide through here.
#[inline(always)]
pub fn allows(entry: Option<&PolicyEntry>, default_deny: bool, proto: u8, port: u16) -> bool {
    if let Some(entry) = entry {
        if let Some(action) = entry.decide(proto, port) {
            return action == POLICY_ALLOW;
        }
    }
    !default_deny
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PolicyKey4 {}
    unsafe impl aya::Pod for PolicyKey6 {}
    unsafe impl aya::Pod for PolicyRule {}
    unsafe impl aya::Pod for PolicyEntry {}
}
