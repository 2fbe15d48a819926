//! Published ports: the mapping lookup and the conntrack entries a new
//! flow to a published port gets.

use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT},
    CtEntry, CtKey4, DatapathConfig, MappingEntry4, MappingKey4,
};

use crate::maps::{HOST_ADDRS4, MAPPINGS4};

/// The mapping for `addr:port/proto`: one bound to exactly that address,
/// else a wildcard one if `addr` is one of the host's own (or loopback, for
/// the socket hooks, where `allow_loopback` is set).
#[inline(always)]
pub fn lookup4(addr: [u8; 4], port: u16, proto: u8, allow_loopback: bool) -> Option<MappingEntry4> {
    let key = MappingKey4 { addr, port, proto, _pad: 0 };
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { MAPPINGS4.get(&key) } {
        return Some(*v);
    }
    let local = (allow_loopback && addr[0] == 127) || unsafe { HOST_ADDRS4.get(&addr) }.is_some();
    if !local {
        return None;
    }
    let wildcard = MappingKey4 { addr: [0; 4], port, proto, _pad: 0 };
    unsafe { MAPPINGS4.get(&wildcard) }.copied()
}

/// The two conntrack entries of a new flow `orig` to the published port
/// `published`.
///
/// DNAT to the container; replies get the published address back as their
/// source. When the client *is* that container (reaching its own published
/// port), the request is also SNATed to the gateway, as Docker does, or the
/// container would answer itself directly.
#[inline(always)]
pub fn flow_entries4(orig: &CtKey4, published: &MappingEntry4, cfg: &DatapathConfig) -> (CtEntry, CtKey4, CtEntry) {
    let hairpin_self = orig.saddr == published.container_addr;
    let mut fwd = CtEntry {
        dnat_addr: published.container_addr,
        dnat_port: published.container_port,
        flags: CT_F_DNAT,
        mapping_id: published.id,
        ..Default::default()
    };
    let client_addr = if hairpin_self {
        fwd.flags |= CT_F_SNAT;
        fwd.snat_addr = cfg.gateway4;
        fwd.snat_port = orig.sport;
        cfg.gateway4
    } else {
        orig.saddr
    };
    let reply_key =
        CtKey4::new(published.container_addr, client_addr, published.container_port, orig.sport, orig.proto);
    let mut rev = CtEntry {
        snat_addr: orig.daddr,
        snat_port: orig.dport,
        flags: CT_F_SNAT,
        mapping_id: published.id,
        ..Default::default()
    };
    if hairpin_self {
        rev.flags |= CT_F_DNAT;
        rev.dnat_addr = orig.saddr;
        rev.dnat_port = orig.sport;
    }
    (fwd, reply_key, rev)
}
