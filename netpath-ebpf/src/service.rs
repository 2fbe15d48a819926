//! Published ports: the service lookup and the conntrack entries a new
//! flow to a published port gets.

use netpath_common::{
    conntrack::{CT_F_DNAT, CT_F_SNAT},
    CtEntry, CtKey, DatapathConfig, ServiceKey, ServiceValue,
};

use crate::maps::{HOST_ADDRS, SERVICES};

/// The mapping for `addr:port/proto`: one bound to exactly that address,
/// else a wildcard one if `addr` is one of the host's own (or loopback, for
/// the socket hooks, where `allow_loopback` is set).
#[inline(always)]
pub fn lookup(addr: [u8; 4], port: u16, proto: u8, allow_loopback: bool) -> Option<ServiceValue> {
    let key = ServiceKey { addr, port, proto, _pad: 0 };
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { SERVICES.get(&key) } {
        return Some(*v);
    }
    let local = (allow_loopback && addr[0] == 127) || unsafe { HOST_ADDRS.get(&addr) }.is_some();
    if !local {
        return None;
    }
    let wildcard = ServiceKey { addr: [0; 4], port, proto, _pad: 0 };
    unsafe { SERVICES.get(&wildcard) }.copied()
}

/// The two conntrack entries of a new flow `orig` to service `svc`.
///
/// DNAT to the backend; replies get the published address back as their
/// source. When the client *is* the backend (a container reaching its own
/// published port), the request is also SNATed to the gateway, as Docker
/// does, or the container would answer itself directly.
#[inline(always)]
pub fn flow_entries(orig: &CtKey, svc: &ServiceValue, cfg: &DatapathConfig) -> (CtEntry, CtKey, CtEntry) {
    let hairpin_self = orig.saddr == svc.backend_addr;
    let mut fwd = CtEntry {
        dnat_addr: svc.backend_addr,
        dnat_port: svc.backend_port,
        flags: CT_F_DNAT,
        service_id: svc.id,
        ..Default::default()
    };
    let client_addr = if hairpin_self {
        fwd.flags |= CT_F_SNAT;
        fwd.snat_addr = cfg.gateway;
        fwd.snat_port = orig.sport;
        cfg.gateway
    } else {
        orig.saddr
    };
    let reply_key = CtKey::new(svc.backend_addr, client_addr, svc.backend_port, orig.sport, orig.proto);
    let mut rev = CtEntry {
        snat_addr: orig.daddr,
        snat_port: orig.dport,
        flags: CT_F_SNAT,
        service_id: svc.id,
        ..Default::default()
    };
    if hairpin_self {
        rev.flags |= CT_F_DNAT;
        rev.dnat_addr = orig.saddr;
        rev.dnat_port = orig.sport;
    }
    (fwd, reply_key, rev)
}
