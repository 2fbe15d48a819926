//! Address management for the container subnet.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("address {ip} is outside the container subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is reserved in subnet {subnet} (network, broadcast or gateway)")]
    Reserved { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is already in use by container {owner:?}")]
    InUse { ip: Ipv4Addr, owner: String },
    #[error("subnet {subnet} is exhausted: all {capacity} container addresses are in use")]
    Exhausted { subnet: Ipv4Net, capacity: u64 },
}

/// Hands out addresses of one subnet, skipping network, broadcast and
/// gateway. Pure bookkeeping: the agent rebuilds it from its state.
#[derive(Clone, Debug)]
pub struct Ipam4 {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: std::collections::BTreeMap<Ipv4Addr, String>,
}

impl Ipam4 {
    pub fn new(subnet: Ipv4Net, gateway: Ipv4Addr) -> Ipam4 {
        Ipam4 { subnet, gateway, used: Default::default() }
    }

    fn check_usable(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        if !self.subnet.contains(&ip) {
            return Err(IpamError::OutsideSubnet { ip, subnet: self.subnet });
        }
        if ip == self.subnet.network() || ip == self.subnet.broadcast() || ip == self.gateway {
            return Err(IpamError::Reserved { ip, subnet: self.subnet });
        }
        if let Some(owner) = self.used.get(&ip) {
            return Err(IpamError::InUse { ip, owner: owner.clone() });
        }
        Ok(())
    }

    /// Reserves `ip` for `owner`, or the lowest free address if `ip` is None.
    pub fn allocate(&mut self, owner: &str, ip: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        let ip = match ip {
            Some(ip) => {
                self.check_usable(ip)?;
                ip
            }
            None => self.next_free()?,
        };
        self.used.insert(ip, owner.to_string());
        Ok(ip)
    }

    fn next_free(&self) -> Result<Ipv4Addr, IpamError> {
        let start = u32::from(self.subnet.network()) + 1;
        let end = u32::from(self.subnet.broadcast());
        // Walk the gaps of the used set instead of every address.
        let mut candidate = start;
        for used in self.used.keys().map(|ip| u32::from(*ip)).collect::<BTreeSet<_>>() {
            while candidate < used {
                if Ipv4Addr::from(candidate) != self.gateway {
                    return Ok(Ipv4Addr::from(candidate));
                }
                candidate += 1;
            }
            candidate = candidate.max(used + 1);
        }
        while candidate < end {
            if Ipv4Addr::from(candidate) != self.gateway {
                return Ok(Ipv4Addr::from(candidate));
            }
            candidate += 1;
        }
        Err(IpamError::Exhausted { subnet: self.subnet, capacity: self.capacity() })
    }

    /// Usable container addresses: hosts minus the gateway.
    pub fn capacity(&self) -> u64 {
        (1u64 << (32 - self.subnet.prefix_len())).saturating_sub(3)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
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

    #[test]
    fn allocates_lowest_free_skipping_gateway() {
        let mut i = ipam("10.0.0.0/24");
        assert_eq!(i.allocate("a", None).unwrap(), "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(i.allocate("b", None).unwrap(), "10.0.0.3".parse::<Ipv4Addr>().unwrap());
        i.release("10.0.0.2".parse().unwrap());
        assert_eq!(i.allocate("c", None).unwrap(), "10.0.0.2".parse::<Ipv4Addr>().unwrap());
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
}
