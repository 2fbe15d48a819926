//! Which of the host's IPv4 routes the fast path must check a packet's
//! length against (`ROUTE_MTUS4`). The kernel's IPv4 forwarding honours a
//! route's own MTU (`ip route add ... mtu 1400`); `bpf_fib_lookup`, which
//! the fast path routes with, checks only a locked one (`mtu lock 1400`)
//! and the interface's. So the routes whose unlocked MTU is smaller than
//! the containers' are mirrored into a trie, with every route inside them
//! (a more specific route, which the kernel would pick instead, with its
//! own MTU or none): the trie's longest match for a destination is then the
//! route the kernel picks, wherever one of those MTUs can apply, and no
//! match elsewhere.
//!
//! Policy routing (`ip rule`) may pick another table than the main one for
//! a packet (by its source, its mark, where it came in), and the trie is
//! keyed by destination alone: every table's routes are mirrored, and a
//! destination gets the smallest MTU any table's pick for it has. A packet
//! over it that its own table would have let through only falls back to
//! the stack, which routes it as the kernel does; one the fast path let
//! through is within every table's MTU.

use std::{collections::HashMap, net::Ipv4Addr};

/// One unicast route of the host, as far as its MTU goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route4 {
    /// The routing table it is in (`RT_TABLE_MAIN`: the main one).
    pub table: u32,
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    /// The route's own MTU (`RTAX_MTU`), if it has one.
    pub mtu: Option<u32>,
    /// Is that MTU locked (`RTAX_LOCK`)? The route lookup then checks it.
    pub mtu_locked: bool,
    /// The route's metric: of two routes to one prefix the kernel picks
    /// the lower.
    pub priority: u32,
}

/// An entry of `ROUTE_MTUS4`: (prefix length, network address, MTU; 0:
/// the route has none the fast path must check).
pub type RouteMtuEntry = (u32, [u8; 4], u32);

impl Route4 {
    /// The MTU the fast path must check for this route, where the lookup
    /// does not and it is smaller than the containers' `link_mtu`.
    fn unchecked_mtu(&self, link_mtu: u32) -> Option<u32> {
        self.mtu.filter(|mtu| !self.mtu_locked && *mtu < link_mtu)
    }

    fn contains(&self, other: &Route4) -> bool {
        other.prefix_len >= self.prefix_len && network(other.dst, self.prefix_len) == network(self.dst, self.prefix_len)
    }
}

fn network(addr: Ipv4Addr, prefix_len: u8) -> u32 {
    let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix_len.min(32))) };
    u32::from(addr) & mask
}

/// The entries of `ROUTE_MTUS4` for `routes` (the host's unicast routes,
/// every table's but the local one) and containers whose interfaces have
/// `link_mtu`: empty when no route has an MTU the fast path must check,
/// which leaves the check off.
pub fn route_mtus4(routes: &[Route4], link_mtu: u32) -> Vec<RouteMtuEntry> {
    let mut tables: Vec<u32> = routes.iter().map(|r| r.table).collect();
    tables.sort_unstable();
    tables.dedup();
    let mut per_table: Vec<Vec<RouteMtuEntry>> = tables
        .into_iter()
        .map(|table| table_mtus4(routes.iter().filter(|r| r.table == table), link_mtu))
        .filter(|entries| !entries.is_empty())
        .collect();
    if per_table.len() <= 1 {
        return per_table.pop().unwrap_or_default();
    }
    merge_tables(&per_table)
}

/// One table's entries: its routes with an MTU to check, and the routes
/// inside them.
fn table_mtus4<'a>(routes: impl Iterator<Item = &'a Route4> + Clone, link_mtu: u32) -> Vec<RouteMtuEntry> {
    let binding: Vec<&Route4> = routes.clone().filter(|r| r.unchecked_mtu(link_mtu).is_some()).collect();
    if binding.is_empty() {
        return vec![];
    }
    let mut out: Vec<(RouteMtuEntry, u32)> = vec![];
    for route in routes.filter(|r| binding.iter().any(|b| b.contains(r))) {
        let key = (u32::from(route.prefix_len), network(route.dst, route.prefix_len).to_be_bytes());
        let entry = ((key.0, key.1, route.unchecked_mtu(link_mtu).unwrap_or(0)), route.priority);
        match out.iter_mut().find(|((len, addr, _), _)| (*len, *addr) == key) {
            // The kernel's pick among routes to one prefix: the lowest metric.
            Some(existing) if existing.1 > route.priority => *existing = entry,
            Some(_) => {}
            None => out.push(entry),
        }
    }
    out.sort_unstable();
    out.into_iter().map(|(entry, _)| entry).collect()
}

/// Several tables' entries as one trie: every prefix any of them has, with
/// the smallest MTU among the tables' picks for it. A destination whose
/// longest match in the merged trie is prefix P lies in no longer prefix of
/// any table, so each table's longest match for it is its longest prefix
/// containing P, the same for every destination in P.
fn merge_tables(per_table: &[Vec<RouteMtuEntry>]) -> Vec<RouteMtuEntry> {
    let lookups: Vec<HashMap<(u32, [u8; 4]), u32>> =
        per_table.iter().map(|entries| entries.iter().map(|&(len, addr, mtu)| ((len, addr), mtu)).collect()).collect();
    let pick = |table: &HashMap<(u32, [u8; 4]), u32>, len: u32, addr: [u8; 4]| {
        (0..=len).rev().find_map(|l| {
            let net = network(Ipv4Addr::from(addr), l as u8).to_be_bytes();
            table.get(&(l, net)).copied()
        })
    };
    let mut keys: Vec<(u32, [u8; 4])> = per_table.iter().flatten().map(|&(len, addr, _)| (len, addr)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|(len, addr)| {
            let mtu = lookups.iter().filter_map(|t| pick(t, len, addr)).filter(|mtu| *mtu != 0).min();
            (len, addr, mtu.unwrap_or(0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, mtu: Option<u32>) -> Route4 {
        let (addr, len) = dst.split_once('/').unwrap();
        Route4 {
            table: u32::from(libc::RT_TABLE_MAIN),
            dst: addr.parse().unwrap(),
            prefix_len: len.parse().unwrap(),
            mtu,
            mtu_locked: false,
            priority: 0,
        }
    }

    #[test]
    fn without_a_smaller_unlocked_mtu_nothing_is_mirrored() {
        let locked = Route4 { mtu_locked: true, ..route("10.8.0.0/16", Some(1280)) };
        let routes = [route("0.0.0.0/0", None), route("192.0.2.0/24", Some(1500)), locked];
        assert_eq!(route_mtus4(&routes, 1500), vec![]);
    }

    #[test]
    fn a_route_s_mtu_comes_with_the_routes_inside_it() {
        let routes = [
            route("0.0.0.0/0", None),
            route("10.0.0.0/8", Some(1400)),
            // More specific: the kernel picks it, and it has no MTU.
            route("10.1.0.0/16", None),
            route("10.1.2.0/24", Some(1300)),
            // Outside the routes with an MTU: not needed.
            route("192.0.2.0/24", None),
        ];
        assert_eq!(
            route_mtus4(&routes, 1500),
            vec![(8, [10, 0, 0, 0], 1400), (16, [10, 1, 0, 0], 0), (24, [10, 1, 2, 0], 1300)]
        );
    }

    #[test]
    fn the_default_route_with_an_mtu_takes_every_route_and_host_bits_are_cleared() {
        let routes = [route("0.0.0.0/0", Some(1400)), route("198.18.0.7/24", None)];
        assert_eq!(route_mtus4(&routes, 1500), vec![(0, [0; 4], 1400), (24, [198, 18, 0, 0], 0)]);
    }

    #[test]
    fn of_two_routes_to_one_prefix_the_lower_metric_counts() {
        let primary = Route4 { priority: 100, ..route("10.0.0.0/8", Some(1400)) };
        let backup = Route4 { priority: 200, ..route("10.0.0.0/8", Some(1300)) };
        assert_eq!(route_mtus4(&[backup, primary], 1500), vec![(8, [10, 0, 0, 0], 1400)]);
        assert_eq!(route_mtus4(&[primary, backup], 1500), vec![(8, [10, 0, 0, 0], 1400)]);
    }

    fn in_table(table: u32, route: Route4) -> Route4 {
        Route4 { table, ..route }
    }

    #[test]
    fn another_table_s_route_mtu_is_mirrored_too() {
        // A VPN's table, picked by a rule for the containers' traffic: the
        // main table has no MTU at all.
        let routes = [route("0.0.0.0/0", None), in_table(100, route("0.0.0.0/0", Some(1380)))];
        assert_eq!(route_mtus4(&routes, 1500), vec![(0, [0; 4], 1380)]);
    }

    #[test]
    fn across_tables_a_destination_gets_the_smallest_mtu_of_every_table_s_pick() {
        let routes = [
            route("0.0.0.0/0", None),
            route("10.0.0.0/8", Some(1400)),
            route("10.1.0.0/16", None),
            in_table(100, route("10.0.0.0/8", None)),
            in_table(100, route("10.1.2.0/24", Some(1300))),
            in_table(100, route("10.1.0.0/16", Some(1450))),
            in_table(200, route("192.0.2.0/24", Some(1280))),
        ];
        assert_eq!(
            route_mtus4(&routes, 1500),
            vec![
                // Main's 10/8 (1400); table 100 has no MTU there.
                (8, [10, 0, 0, 0], 1400),
                // Main picks 10.1/16 (none), table 100 its own (1450).
                (16, [10, 1, 0, 0], 1450),
                // Main: 10.1/16 (none); table 100: 1300.
                (24, [10, 1, 2, 0], 1300),
                (24, [192, 0, 2, 0], 1280),
            ]
        );
        // Within one table the merge changes nothing.
        let main_only: Vec<Route4> =
            routes.iter().copied().filter(|r| r.table == u32::from(libc::RT_TABLE_MAIN)).collect();
        assert_eq!(route_mtus4(&main_only, 1500), vec![(8, [10, 0, 0, 0], 1400), (16, [10, 1, 0, 0], 0)]);
    }
}
