//! Tracked flows: listing them for the API, collecting the expired ones,
//! and forgetting the ones a container or a masquerade address leaves.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::Result;
use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_MASQ_PENDING, CT_F_POLICY, CT_F_REPLY, CT_F_SNAT, IPPROTO_ICMP},
    family::IPPROTO_ICMPV6,
    CtEntry, CtKey, CtScope, CtState, Direction, In6Addr,
};

use super::Inner;
use crate::{
    datapath::{monotonic_ns, FamilyMaps, LiveOwners},
    model::{Container, Flow, Tuple},
    portspec::Protocol,
};

/// One direction of a flow as the API shows it (either family).
fn tuple<A: Into<IpAddr>>(addr_s: A, sport: u16, addr_d: A, dport: u16) -> Tuple {
    Tuple { src: addr_s.into(), sport: u16::from_be(sport), dst: addr_d.into(), dport: u16::from_be(dport) }
}

fn proto_name(proto: u8) -> String {
    match Protocol::from_number(proto) {
        Some(p) => p.to_string(),
        None if proto == IPPROTO_ICMP => "icmp".into(),
        None if proto == IPPROTO_ICMPV6 => "icmpv6".into(),
        None => proto.to_string(),
    }
}

impl Inner {
    /// Cuts every tracked flow of a container that goes, without walking
    /// conntrack: its id leaves its owner slot (`remove_container` did so
    /// already, unless its entry was gone), which makes its policy verdicts
    /// and masqueraded flows stale, both directions of each; flows to its
    /// published ports went with its mappings. Otherwise replies still in
    /// flight would be translated to whoever gets the address next. Its
    /// datagrams' recorded first fragments go too, for the same reason (a
    /// walk of the small fragment table).
    pub(super) fn forget_flows(&mut self, c: &Container) -> Result<()> {
        self.dp.retire_container(c.id)?;
        if let Some(ip) = c.ip.map(|a| a.octets()) {
            self.dp.frags_remove_where4(|k, e| [k.saddr, k.daddr, e.nat_saddr, e.nat_daddr].contains(&ip))?;
        }
        if let Some(ip6) = c.ip6.map(In6Addr::from) {
            self.dp.frags_remove_where6(|k, e| [k.saddr, k.daddr, e.nat_saddr, e.nat_daddr].contains(&ip6))?;
        }
        Ok(())
    }

    /// Removes the flows translated to a masquerade address the host no
    /// longer has (both directions): their entries would keep rewriting
    /// packets to it. The next packet of such a flow starts a new one, from
    /// the current address. Returns how many flows went.
    pub(super) fn forget_masquerade(&mut self, old: [u8; 4]) -> Result<usize> {
        let cut = self
            .dp
            .ct_remove_where(|k, e| k.scope == CtScope::Nat as u8 && e.flags & CT_F_SNAT != 0 && e.snat_addr == old)?;
        if cut > 0 {
            tracing::info!(
                flows = cut,
                "forgot flows translated to {}, which the host no longer has",
                Ipv4Addr::from(old)
            );
        }
        Ok(cut)
    }

    /// The tracked flows of both families, except stale ones (of owners
    /// removed since; the datapath and the GC delete them lazily).
    pub(super) fn flows(&mut self) -> Result<Vec<Flow>> {
        let live = self.dp.live_owners()?;
        let names: HashMap<u32, String> = self.state.containers.iter().map(|c| (c.id, c.name.clone())).collect();
        let entries4 = self.dp.ct_entries()?;
        let entries6 = self.dp.ct_entries6()?;
        let mut flows = flows_of(entries4, &live, &names);
        flows.extend(flows_of(entries6, &live, &names));
        flows.sort_by_key(|f| (f.scope.clone(), f.direction, f.mapping_id, f.original.src, f.original.sport));
        Ok(flows)
    }
}

/// The flows of one family's conntrack entries, as the API shows them.
fn flows_of<A: FamilyMaps + Into<IpAddr>>(
    entries: Vec<(CtKey<A>, CtEntry<A>)>,
    live: &LiveOwners,
    names: &HashMap<u32, String>,
) -> Vec<Flow> {
    let now = monotonic_ns() as i128;
    let entries: HashMap<CtKey<A>, CtEntry<A>> = entries.into_iter().filter(|(_, e)| live.owns(e)).collect();
    let mut flows = vec![];
    for (key, e) in entries.iter().filter(|(_, e)| e.flags & CT_F_REPLY == 0) {
        let pending = e.flags & CT_F_MASQ_PENDING != 0;
        let reply = if pending { CtEntry::default() } else { entries.get(&e.peer).copied().unwrap_or_default() };
        let expires = e.expires_ns.max(reply.expires_ns) as i128;
        let state = CtState::from_u8(e.state.max(reply.state));
        let scope = key.scope().unwrap_or(CtScope::Nat);
        // A translated flow carrying its container's verdict was judged
        // in: to a published port (translated to the container), or out.
        let carried = (e.flags & CT_F_POLICY != 0).then_some(if e.flags & CT_F_DNAT != 0 {
            Direction::In
        } else {
            Direction::Out
        });
        let direction = scope.direction().or(carried);
        flows.push(Flow {
            proto: proto_name(key.proto),
            original: tuple(key.saddr, key.sport, key.daddr, key.dport),
            // A pending masquerade is its own peer: no reply tuple yet
            // but the one it would have untranslated.
            reply: if pending {
                tuple(key.daddr, key.dport, key.saddr, key.sport)
            } else {
                tuple(e.peer.saddr, e.peer.sport, e.peer.daddr, e.peer.dport)
            },
            state: state.name().into(),
            expires_in: ((expires - now) / 1_000_000_000) as i64,
            packets: e.packets,
            bytes: e.bytes,
            reply_packets: reply.packets,
            reply_bytes: reply.bytes,
            mapping_id: e.mapping_id,
            scope: if scope == CtScope::Nat { "nat" } else { "policy" }.into(),
            direction,
            container: names.get(&e.container_id).cloned(),
        });
    }
    flows
}
