//! Published ports: the mapping lookup (per family) and the conntrack
//! entries a new flow to a published port gets (written once).

use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT},
    AddrFamily, CtEntry, CtKey, DatapathConfig, In6Addr, MappingEntry, MappingEntry4, MappingEntry6, MappingKey4,
    MappingKey6,
};

use crate::maps::{HOST_ADDRS4, HOST_ADDRS6, MAPPINGS4, MAPPINGS6};

/// The mapping for `addr:port/proto`: one bound to exactly that address,
/// else a wildcard one if `addr` is one of the host's own (or loopback, for
/// the socket hooks, where `allow_loopback` is set). The entry is the map's
/// own (not a copy on the tight stack of the NAT path).
#[inline(always)]
pub fn lookup4(addr: [u8; 4], port: u16, proto: u8, allow_loopback: bool) -> Option<&'static MappingEntry4> {
    if let Some(v) = lookup_bound4(addr, port, proto) {
        return Some(v);
    }
    let local = (allow_loopback && addr[0] == 127) || unsafe { HOST_ADDRS4.get(&addr) }.is_some();
    if !local {
        return None;
    }
    lookup_wildcard4(port, proto)
}

/// [`lookup4`] for an address already known to be the host's own (the
/// uplink guard checked `HOST_ADDRS4` itself; the masquerade address is the
/// uplink's): the same two lookups, without asking `HOST_ADDRS4`.
#[inline(always)]
pub fn lookup_on_host4(addr: [u8; 4], port: u16, proto: u8) -> Option<&'static MappingEntry4> {
    match lookup_bound4(addr, port, proto) {
        Some(v) => Some(v),
        None => lookup_wildcard4(port, proto),
    }
}

/// A mapping bound to exactly `addr`.
#[inline(always)]
fn lookup_bound4(addr: [u8; 4], port: u16, proto: u8) -> Option<&'static MappingEntry4> {
    let key = MappingKey4 { addr, port, proto, _pad: 0 };
    // SAFETY: map values stay valid for the program's run; the agent
    // replaces entries whole.
    unsafe { MAPPINGS4.get(&key) }
}

/// A mapping on every host address.
#[inline(always)]
fn lookup_wildcard4(port: u16, proto: u8) -> Option<&'static MappingEntry4> {
    let wildcard = MappingKey4 { addr: [0; 4], port, proto, _pad: 0 };
    // SAFETY: as above.
    unsafe { MAPPINGS4.get(&wildcard) }
}

/// The two conntrack entries of a new flow `orig` to the published port
/// `published`, written into `fwd` and `rev` (zeroed by the caller, in its
/// frame: returning them by value would copy them on the tight stack of
/// the NAT path); returns the reply direction's key.
///
/// DNAT to the container; replies get the published address back as their
/// source. When the client *is* that container (reaching its own published
/// port), the request is also SNATed to the gateway, as Docker does, or the
/// container would answer itself directly.
#[inline(always)]
pub fn flow_entries<A: AddrFamily>(
    orig: &CtKey<A>,
    published: &MappingEntry<A>,
    cfg: &DatapathConfig,
    fwd: &mut CtEntry<A>,
    rev: &mut CtEntry<A>,
) -> CtKey<A> {
    let hairpin_self = orig.saddr == published.container_addr;
    fwd.dnat_addr = published.container_addr;
    fwd.dnat_port = published.container_port;
    fwd.flags = CT_F_DNAT;
    fwd.mapping_id = published.id;
    let client_addr = if hairpin_self {
        fwd.flags |= CT_F_SNAT;
        fwd.snat_addr = A::gateway(cfg);
        fwd.snat_port = orig.sport;
        A::gateway(cfg)
    } else {
        orig.saddr
    };
    rev.snat_addr = orig.daddr;
    rev.snat_port = orig.dport;
    rev.flags = CT_F_SNAT;
    rev.mapping_id = published.id;
    if hairpin_self {
        rev.flags |= CT_F_DNAT;
        rev.dnat_addr = orig.saddr;
        rev.dnat_port = orig.sport;
    }
    CtKey::new(published.container_addr, client_addr, published.container_port, orig.sport, orig.proto)
}

/// [`lookup4`] for IPv6 (`::1` counts as the host's with
/// `allow_loopback`, for the socket hooks). The keys, 20 bytes each, are
/// built on the caller's stack: the IPv6 programs have it to spare.
#[inline(always)]
pub fn lookup6(addr: &In6Addr, port: u16, proto: u8, allow_loopback: bool) -> Option<&'static MappingEntry6> {
    let mut key = MappingKey6 { addr: *addr, port, proto, _pad: 0 };
    // SAFETY: map values stay valid for the program's run; the agent
    // replaces entries whole.
    if let Some(v) = unsafe { MAPPINGS6.get(&key) } {
        return Some(v);
    }
    // SAFETY: the value is only tested for presence.
    let loopback = allow_loopback && *addr == In6Addr::LOOPBACK;
    if !loopback && unsafe { HOST_ADDRS6.get(addr) }.is_none() {
        return None;
    }
    // SAFETY: a local.
    unsafe { crate::zero::zero(&raw mut key.addr) };
    // SAFETY: as above.
    unsafe { MAPPINGS6.get(&key) }
}
