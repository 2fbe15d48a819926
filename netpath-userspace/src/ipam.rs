//! Address management for the container subnets, one allocator per
//! family (`Ipam4`, `Ipam6`): the same bookkeeping over the family's
//! addresses seen as integers.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::{Debug, Display},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

/// How many given-back addresses are remembered in order. An older one is
/// forgotten, i.e. counted as never used, which is where the order puts it
/// anyway: after it, every remembered one was given back later.
pub const RELEASED_KEPT: usize = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("address {ip} is outside the container subnet {subnet}")]
    OutsideSubnet { ip: IpAddr, subnet: IpNet },
    #[error("address {ip} is reserved in subnet {subnet} ({})", reserved_what(.ip))]
    Reserved { ip: IpAddr, subnet: IpNet },
    #[error("address {ip} is already in use by container {owner:?}")]
    InUse { ip: IpAddr, owner: String },
    #[error("subnet {subnet} is exhausted: all {capacity} container addresses are in use")]
    Exhausted { subnet: IpNet, capacity: u64 },
}

fn reserved_what(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "network, broadcast or gateway",
        IpAddr::V6(_) => "subnet-router anycast or gateway",
    }
}

/// What an allocator needs of an address family: its addresses as
/// integers, and which of a subnet's addresses containers may have.
pub trait IpamFamily: Copy + Ord + Debug + Display + Into<IpAddr> {
    type Net: Copy + Debug + Display + Into<IpNet>;

    fn as_u128(self) -> u128;
    fn from_u128(bits: u128) -> Self;
    fn contains(net: &Self::Net, ip: Self) -> bool;
    /// The first container address of `net` and the one past its last
    /// (IPv4: without network and broadcast; IPv6: without the
    /// subnet-router anycast `::0`).
    fn host_range(net: &Self::Net) -> (u128, u128);
}

impl IpamFamily for Ipv4Addr {
    type Net = Ipv4Net;

    fn as_u128(self) -> u128 {
        u32::from(self) as u128
    }

    fn from_u128(bits: u128) -> Self {
        Ipv4Addr::from(bits as u32)
    }

    fn contains(net: &Ipv4Net, ip: Self) -> bool {
        net.contains(&ip)
    }

    fn host_range(net: &Ipv4Net) -> (u128, u128) {
        (net.network().as_u128() + 1, net.broadcast().as_u128())
    }
}

impl IpamFamily for Ipv6Addr {
    type Net = Ipv6Net;

    fn as_u128(self) -> u128 {
        u128::from(self)
    }

    fn from_u128(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }

    fn contains(net: &Ipv6Net, ip: Self) -> bool {
        net.contains(&ip)
    }

    fn host_range(net: &Ipv6Net) -> (u128, u128) {
        // The last address (all ones) is an ordinary one in IPv6; the end is
        // exclusive, so it saturates for a /0 that config never allows.
        let start = u128::from(net.network());
        (start + 1, start.saturating_add(1u128.checked_shl(128 - net.prefix_len() as u32).unwrap_or(u128::MAX)))
    }
}

/// Hands out addresses of one subnet, skipping the reserved ones and the
/// gateway: the lowest address never used first, then the ones given back,
/// the longest-free first. So a new container does not get the address of
/// one that just left, and with it the replies still in flight to it.
/// Pure bookkeeping: the agent rebuilds it from its state.
#[derive(Clone, Debug)]
pub struct Ipam<A: IpamFamily> {
    subnet: A::Net,
    gateway: A,
    used: BTreeMap<A, String>,
    /// Given back and not handed out since, the earliest first.
    released: VecDeque<A>,
    /// Every address in `used` or `released` (as an integer): what the
    /// search for a never-used address skips.
    taken: BTreeSet<u128>,
    /// Every address below this one is taken (or the gateway): the search
    /// starts here, so that it costs the same with 10 or 10000 containers.
    floor: u128,
}

pub type Ipam4 = Ipam<Ipv4Addr>;
pub type Ipam6 = Ipam<Ipv6Addr>;

/// Puts `ip` at the back of the queue of released addresses (once), which
/// keeps the latest [`RELEASED_KEPT`]: the allocator's queue, and the saved
/// state's when its journal is replayed.
/// Returns the address it forgot to make room, if any.
pub fn remember_released<A: PartialEq>(released: &mut VecDeque<A>, ip: A) -> Option<A> {
    released.retain(|r| *r != ip);
    released.push_back(ip);
    if released.len() > RELEASED_KEPT {
        return released.pop_front();
    }
    None
}

impl<A: IpamFamily> Ipam<A> {
    pub fn new(subnet: A::Net, gateway: A) -> Ipam<A> {
        Ipam {
            subnet,
            gateway,
            used: Default::default(),
            released: Default::default(),
            taken: Default::default(),
            floor: A::host_range(&subnet).0,
        }
    }

    /// An allocator that remembers addresses given back before (as
    /// [`Ipam::released`] listed them); ones that are not usable are skipped.
    pub fn with_released<'a>(subnet: A::Net, gateway: A, released: impl IntoIterator<Item = &'a A>) -> Ipam<A>
    where
        A: 'a,
    {
        let mut ipam = Ipam::new(subnet, gateway);
        for ip in released {
            ipam.release(*ip);
        }
        ipam
    }

    fn check_usable(&self, ip: A) -> Result<(), IpamError> {
        let (ipa, subnet) = (ip.into(), self.subnet.into());
        if !A::contains(&self.subnet, ip) {
            return Err(IpamError::OutsideSubnet { ip: ipa, subnet });
        }
        let (start, end) = A::host_range(&self.subnet);
        if !(start..end).contains(&ip.as_u128()) || ip == self.gateway {
            return Err(IpamError::Reserved { ip: ipa, subnet });
        }
        if let Some(owner) = self.used.get(&ip) {
            return Err(IpamError::InUse { ip: ipa, owner: owner.clone() });
        }
        Ok(())
    }

    /// Reserves `ip` for `owner`, or the next address in order (see
    /// [`Ipam`]) if `ip` is None.
    pub fn allocate(&mut self, owner: &str, ip: Option<A>) -> Result<A, IpamError> {
        let ip = match ip {
            Some(ip) => {
                self.check_usable(ip)?;
                ip
            }
            None => self.next_free()?,
        };
        self.released.retain(|r| *r != ip);
        self.used.insert(ip, owner.to_string());
        self.taken.insert(ip.as_u128());
        Ok(ip)
    }

    fn next_free(&mut self) -> Result<A, IpamError> {
        if let Some(ip) = self.never_used() {
            return Ok(ip);
        }
        self.released
            .front()
            .copied()
            .ok_or(IpamError::Exhausted { subnet: self.subnet.into(), capacity: self.capacity() })
    }

    /// The lowest address neither in use nor remembered as given back.
    /// Bounded: each step skips the gateway or a taken address.
    fn never_used(&mut self) -> Option<A> {
        let end = A::host_range(&self.subnet).1;
        let gateway = self.gateway.as_u128();
        let mut candidate = self.floor;
        while candidate < end && (candidate == gateway || self.taken.contains(&candidate)) {
            candidate += 1;
        }
        self.floor = candidate;
        (candidate < end).then(|| A::from_u128(candidate))
    }

    /// Usable container addresses: the subnet's minus the reserved ones and
    /// the gateway (saturating: an IPv6 /64 holds more than u64 counts).
    pub fn capacity(&self) -> u64 {
        let (start, end) = A::host_range(&self.subnet);
        u64::try_from((end - start).saturating_sub(1)).unwrap_or(u64::MAX)
    }

    /// Gives `ip` back: it is handed out again after every address that is
    /// free for longer. Addresses that are not container addresses of the
    /// subnet are ignored.
    pub fn release(&mut self, ip: A) {
        self.used.remove(&ip);
        if self.check_usable(ip).is_err() {
            return;
        }
        self.taken.insert(ip.as_u128());
        // Forgotten, the oldest released address counts as never used again.
        if let Some(forgotten) = remember_released(&mut self.released, ip) {
            let forgotten = forgotten.as_u128();
            self.taken.remove(&forgotten);
            self.floor = self.floor.min(forgotten);
        }
    }

    /// The addresses given back and not handed out since, the earliest
    /// first (to persist them).
    pub fn released(&self) -> VecDeque<A> {
        self.released.clone()
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(net: &str) -> Ipam4 {
        let net: Ipv4Net = net.parse().unwrap();
        Ipam4::new(net, net.hosts().next().unwrap())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_never_used_skipping_gateway() {
        let mut i = ipam("10.0.0.0/24");
        assert_eq!(i.allocate("a", None).unwrap(), ip("10.0.0.2"));
        assert_eq!(i.allocate("b", None).unwrap(), ip("10.0.0.3"));
        // A freed address waits while never-used ones remain.
        i.release(ip("10.0.0.2"));
        assert_eq!(i.allocate("c", None).unwrap(), ip("10.0.0.4"));
        assert_eq!(i.released(), vec![ip("10.0.0.2")]);
    }

    #[test]
    fn freed_addresses_come_back_longest_free_first() {
        let mut i = ipam("10.0.0.0/29"); // .2-.6 usable
        for n in 2..=6 {
            assert_eq!(i.allocate(&format!("c{n}"), None).unwrap(), ip(&format!("10.0.0.{n}")));
        }
        for n in [4, 2, 6] {
            i.release(ip(&format!("10.0.0.{n}")));
        }
        assert_eq!(i.allocate("x", None).unwrap(), ip("10.0.0.4"));
        // Freed again: to the back of the queue.
        i.release(ip("10.0.0.4"));
        let got: Vec<_> = (0..3).map(|n| i.allocate(&format!("y{n}"), None).unwrap()).collect();
        assert_eq!(got, vec![ip("10.0.0.2"), ip("10.0.0.6"), ip("10.0.0.4")]);
        assert!(matches!(i.allocate("z", None), Err(IpamError::Exhausted { .. })));
        assert!(i.released().is_empty());
    }

    #[test]
    fn an_explicit_address_leaves_the_queue() {
        let mut i = ipam("10.0.0.0/29");
        i.allocate("a", None).unwrap();
        i.allocate("b", None).unwrap();
        i.release(ip("10.0.0.2"));
        i.release(ip("10.0.0.3"));
        assert_eq!(i.allocate("c", Some(ip("10.0.0.3"))).unwrap(), ip("10.0.0.3"));
        assert_eq!(i.released(), vec![ip("10.0.0.2")]);
    }

    #[test]
    fn the_queue_survives_a_restart() {
        let net: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let mut i = ipam("10.0.0.0/29");
        for n in 0..5 {
            i.allocate(&format!("c{n}"), None).unwrap();
        }
        i.release(ip("10.0.0.5"));
        i.release(ip("10.0.0.3"));
        // Not container addresses of the subnet: not remembered.
        let mut saved = i.released();
        saved.extend([ip("10.0.0.1"), ip("192.0.2.1"), ip("10.0.0.7")]);
        let mut j = Ipam4::with_released(net, ip("10.0.0.1"), &saved);
        assert_eq!(j.released(), vec![ip("10.0.0.5"), ip("10.0.0.3")]);
        // The agent re-reserves its containers' addresses.
        for n in [2, 4, 6] {
            j.allocate("c", Some(ip(&format!("10.0.0.{n}")))).unwrap();
        }
        assert_eq!(j.allocate("x", None).unwrap(), ip("10.0.0.5"));
        assert_eq!(j.allocate("y", None).unwrap(), ip("10.0.0.3"));
    }

    #[test]
    fn the_queue_is_bounded_and_forgets_the_oldest() {
        let mut i = ipam("10.0.0.0/16");
        let n = RELEASED_KEPT as u32 + 10;
        let first = u32::from(ip("10.0.0.2"));
        for k in 0..n {
            assert_eq!(i.allocate("c", None).unwrap(), Ipv4Addr::from(first + k));
        }
        for k in 0..n {
            i.release(Ipv4Addr::from(first + k));
        }
        assert_eq!(i.released().len(), RELEASED_KEPT);
        assert_eq!(i.released()[0], Ipv4Addr::from(first + 10));
        // Forgotten ones count as never used: the lowest comes first.
        assert_eq!(i.allocate("x", None).unwrap(), ip("10.0.0.2"));
    }

    /// The search from a floor hands out exactly what a scan of every
    /// address would, through allocations, releases and explicit addresses
    /// (the queue forgetting is `the_queue_is_bounded_and_forgets_the_oldest`).
    #[test]
    fn the_floor_search_agrees_with_a_full_scan() {
        let net: Ipv4Net = "10.9.0.0/22".parse().unwrap();
        let gateway = ip("10.9.0.1");
        let mut i = Ipam4::new(net, gateway);
        let reference = |i: &Ipam4| -> Option<Ipv4Addr> {
            let released: std::collections::HashSet<&Ipv4Addr> = i.released.iter().collect();
            (u32::from(net.network()) + 1..u32::from(net.broadcast()))
                .map(Ipv4Addr::from)
                .find(|a| *a != gateway && !i.used.contains_key(a) && !released.contains(a))
        };
        let mut live: Vec<Ipv4Addr> = vec![];
        let mut seed: u32 = 7;
        for step in 0..6000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let roll = (seed >> 16) % 10;
            if roll < 6 || live.is_empty() {
                let want = reference(&i).or_else(|| i.released.front().copied());
                let explicit = (roll == 5).then(|| Ipv4Addr::from(u32::from(net.network()) + 2 + (seed >> 8) % 1000));
                match (explicit, i.allocate("c", explicit)) {
                    (Some(_), Ok(got)) => live.push(got),
                    (Some(_), Err(_)) => {}
                    (None, Ok(got)) => {
                        assert_eq!(Some(got), want, "step {step}");
                        live.push(got);
                    }
                    (None, Err(e)) => panic!("step {step}: {e}"),
                }
            } else {
                let victim = live.swap_remove((seed >> 4) as usize % live.len());
                i.release(victim);
            }
        }
    }

    #[test]
    fn explicit_address_checks() {
        let mut i = ipam("10.0.0.0/24");
        i.allocate("a", Some("10.0.0.50".parse().unwrap())).unwrap();
        assert_eq!(
            i.allocate("b", Some("10.0.0.50".parse().unwrap())),
            Err(IpamError::InUse { ip: "10.0.0.50".parse().unwrap(), owner: "a".into() })
        );
        assert!(matches!(i.allocate("b", Some("10.0.1.5".parse().unwrap())), Err(IpamError::OutsideSubnet { .. })));
        assert!(matches!(i.allocate("b", Some("10.0.0.1".parse().unwrap())), Err(IpamError::Reserved { .. })));
        assert!(matches!(i.allocate("b", Some("10.0.0.0".parse().unwrap())), Err(IpamError::Reserved { .. })));
        assert!(matches!(i.allocate("b", Some("10.0.0.255".parse().unwrap())), Err(IpamError::Reserved { .. })));
        // The next free address skips the explicitly taken one.
        assert_eq!(i.allocate("c", None).unwrap(), "10.0.0.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn exhaustion_is_reported() {
        let mut i = ipam("10.0.0.0/29"); // hosts .1-.6, gateway .1 => 5 usable
        for n in 0..5 {
            i.allocate(&format!("c{n}"), None).unwrap();
        }
        let err = i.allocate("x", None).unwrap_err();
        assert_eq!(err, IpamError::Exhausted { subnet: "10.0.0.0/29".parse().unwrap(), capacity: 5 });
        assert!(err.to_string().contains("exhausted"));
    }

    #[test]
    fn gateway_not_first_host() {
        let net: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let mut i = Ipam4::new(net, "10.0.0.6".parse().unwrap());
        let got: Vec<_> = (0..5).map(|n| i.allocate(&n.to_string(), None).unwrap().octets()[3]).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        assert!(i.allocate("x", None).is_err());
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn ipam6(net: &str) -> Ipam6 {
        let net: Ipv6Net = net.parse().unwrap();
        Ipam6::new(net, Ipv6Addr::from(u128::from(net.network()) + 1))
    }

    #[test]
    fn ipv6_allocates_in_order_skipping_anycast_and_gateway() {
        let mut i = ipam6("fd00:77::/64");
        assert_eq!(i.allocate("a", None).unwrap(), ip6("fd00:77::2"));
        assert_eq!(i.allocate("b", None).unwrap(), ip6("fd00:77::3"));
        i.release(ip6("fd00:77::2"));
        assert_eq!(i.allocate("c", None).unwrap(), ip6("fd00:77::4"));
        assert_eq!(i.released(), vec![ip6("fd00:77::2")]);
        assert_eq!(i.capacity(), u64::MAX - 1, "2^64 addresses minus ::0 and the gateway");
        // The last address of the prefix is an ordinary one.
        assert_eq!(
            i.allocate("d", Some(ip6("fd00:77::ffff:ffff:ffff:ffff"))).unwrap(),
            ip6("fd00:77::ffff:ffff:ffff:ffff")
        );
    }

    #[test]
    fn ipv6_explicit_address_checks() {
        let mut i = ipam6("fd00:77::/120");
        i.allocate("a", Some(ip6("fd00:77::50"))).unwrap();
        assert_eq!(
            i.allocate("b", Some(ip6("fd00:77::50"))),
            Err(IpamError::InUse { ip: "fd00:77::50".parse().unwrap(), owner: "a".into() })
        );
        assert!(matches!(i.allocate("b", Some(ip6("fd00:78::5"))), Err(IpamError::OutsideSubnet { .. })));
        let anycast = i.allocate("b", Some(ip6("fd00:77::"))).unwrap_err();
        assert!(anycast.to_string().contains("subnet-router anycast or gateway"), "{anycast}");
        assert!(matches!(i.allocate("b", Some(ip6("fd00:77::1"))), Err(IpamError::Reserved { .. })));
        assert_eq!(i.allocate("c", Some(ip6("fd00:77::ff"))).unwrap(), ip6("fd00:77::ff"));
    }

    #[test]
    fn ipv6_exhaustion_and_the_queue_after_a_restart() {
        let net: Ipv6Net = "fd00:77::/126".parse().unwrap(); // ::1 gateway; ::2, ::3 usable
        let mut i = Ipam6::new(net, ip6("fd00:77::1"));
        assert_eq!(i.capacity(), 2);
        i.allocate("a", None).unwrap();
        i.allocate("b", None).unwrap();
        let err = i.allocate("x", None).unwrap_err();
        assert_eq!(err, IpamError::Exhausted { subnet: "fd00:77::/126".parse().unwrap(), capacity: 2 });
        i.release(ip6("fd00:77::3"));
        i.release(ip6("fd00:77::2"));
        let mut saved = i.released();
        saved.push_back(ip6("fd00:77::1"));
        let mut j = Ipam6::with_released(net, ip6("fd00:77::1"), &saved);
        assert_eq!(j.released(), vec![ip6("fd00:77::3"), ip6("fd00:77::2")]);
        assert_eq!(j.allocate("y", None).unwrap(), ip6("fd00:77::3"));
    }
}
