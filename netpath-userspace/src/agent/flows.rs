//! Tracked flows: listing them and collecting the expired ones.

use super::*;

pub(super) fn monotonic_ns() -> u64 {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

pub(super) fn tuple(addr_s: [u8; 4], sport: u16, addr_d: [u8; 4], dport: u16) -> Tuple {
    Tuple {
        src: Ipv4Addr::from(addr_s),
        sport: u16::from_be(sport),
        dst: Ipv4Addr::from(addr_d),
        dport: u16::from_be(dport),
    }
}

impl Inner {
    /// Deletes flows whose entries have all expired.
    pub(super) fn collect_expired(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let entries: HashMap<netpath_common::CtKey, netpath_common::CtEntry> =
            self.dp.ct_entries()?.into_iter().collect();
        let expired = |e: &netpath_common::CtEntry| e.expires_ns < now;
        let dead: Vec<netpath_common::CtKey> = entries
            .iter()
            .filter(|(_, e)| expired(e) && entries.get(&e.peer).is_none_or(expired))
            .map(|(k, _)| *k)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        self.dp.ct_remove_expired(&dead, now)
    }

    pub(super) fn flows(&mut self) -> Result<Vec<Flow>> {
        let now = monotonic_ns() as i128;
        let entries: HashMap<netpath_common::CtKey, netpath_common::CtEntry> =
            self.dp.ct_entries()?.into_iter().collect();
        let names: HashMap<u32, String> = self.state.containers.iter().map(|c| (c.id, c.name.clone())).collect();
        let mut flows = vec![];
        for (key, e) in entries.iter().filter(|(_, e)| e.flags & CT_F_REPLY == 0) {
            let reply = entries.get(&e.peer).copied().unwrap_or_default();
            let expires = e.expires_ns.max(reply.expires_ns) as i128;
            let state = CtState::from_u8(e.state.max(reply.state));
            let (scope, container) = match key.scope {
                CT_SCOPE_NAT => ("nat", None),
                CT_SCOPE_FROM_EP => ("from-container", names.get(&e.endpoint_id).cloned()),
                _ => ("to-container", names.get(&e.endpoint_id).cloned()),
            };
            flows.push(Flow {
                proto: Protocol::from_number(key.proto).map(|p| p.to_string()).unwrap_or_else(|| {
                    if key.proto == 1 {
                        "icmp".into()
                    } else {
                        key.proto.to_string()
                    }
                }),
                original: tuple(key.saddr, key.sport, key.daddr, key.dport),
                reply: tuple(e.peer.saddr, e.peer.sport, e.peer.daddr, e.peer.dport),
                state: state.name().into(),
                expires_in: ((expires - now) / 1_000_000_000) as i64,
                packets: e.packets,
                bytes: e.bytes,
                reply_packets: reply.packets,
                reply_bytes: reply.bytes,
                mapping_id: e.service_id,
                scope: scope.into(),
                container,
            });
        }
        flows.sort_by_key(|f| (f.scope.clone(), f.mapping_id, f.original.src, f.original.sport));
        Ok(flows)
    }
}
