//! What the uplink never accepts, judged in one place for both hooks that
//! can see a packet first: `uplink_xdp` when XDP is attached (before an skb
//! exists, so a flood costs the least), else `uplink_ingress` before
//! conntrack and NAT. In order:
//!
//! 1. a source in the operator's `denied_sources` (LPM trie): dropped as
//!    `DeniedSource`, whatever it is (replies of flows containers or the
//!    host opened to it included: never accepted means never);
//! 2. a destination in the container subnet (unless the instance routes):
//!    `NotPublished`, containers are reachable from outside only through
//!    published ports;
//! 3. TCP or UDP to one of the host's addresses on a guarded port that no
//!    mapping publishes: `NotPublished`. Later fragments carry no ports and
//!    are left to tc and the host (which handle fragments); so are frames
//!    the parser cannot read.
//!
//! The lookups run only for what is configured (`CFG_F_DENIED_SOURCES`,
//! `CFG_F_GUARDED_PORTS`), cheapest first: the bitmap (an array read)
//! before `HOST_ADDRS4` and the mapping lookups.

use aya_ebpf::btf_maps::lpm_trie::Key;
use netpath_common::{
    config::{CFG_F_DENIED_SOURCES, CFG_F_GUARDED_PORTS, CFG_F_ROUTED},
    uplink_guard::guarded_bit,
    DatapathConfig, DropReason, In6Addr,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    flow, mapping,
    maps::{DENIED_SOURCES4, GUARDED_PORTS, HOST_ADDRS4},
    packet::{ptr_at, Packet},
};

/// The uplink guard's verdict on a frame arriving from outside.
///
/// An IPv4 frame without denied sources or guarded ports configured (the
/// default) leaves only the subnet check, a header read and a compare:
/// done in line, so that every packet from outside does not pay a
/// BPF-to-BPF call and its return (a return thunk under the kernel's
/// return-stack mitigations) for it. Everything else goes to
/// [`judge_apart`].
#[inline(always)]
pub fn judge(pkt: &impl Packet, cfg: &DatapathConfig) -> Result<(), DropReason> {
    if cfg.has(CFG_F_DENIED_SOURCES | CFG_F_GUARDED_PORTS) {
        return judge_apart(pkt, cfg);
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(pkt, 0), ptr_at::<Ipv4Hdr>(pkt, EthHdr::LEN)) else {
        return judge_apart(pkt, cfg);
    };
    // SAFETY: bounds checked by ptr_at.
    let (ether_type, daddr) = unsafe { ((*eth).ether_type, (*ip).dst_addr) };
    if ether_type != EtherType::Ipv4 as u16 {
        return judge_apart(pkt, cfg);
    }
    if !cfg.has(CFG_F_ROUTED) && cfg.in_subnet4(daddr) {
        return Err(DropReason::NotPublished);
    }
    Ok(())
}

/// The whole guard, out of line (a BPF-to-BPF call, one per program type):
/// its frame (the parsed flow, the trie key, IPv6's addresses) is gone
/// before `uplink_ingress` starts the NAT chain, which needs all of the
/// 512-byte stack it can get. Two arguments, both pointers.
#[inline(never)]
fn judge_apart(pkt: &impl Packet, cfg: &DatapathConfig) -> Result<(), DropReason> {
    if crate::packet::is_ipv6(pkt) {
        return judge6(pkt, cfg);
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(pkt, 0), ptr_at::<Ipv4Hdr>(pkt, EthHdr::LEN)) else {
        return Ok(());
    };
    // SAFETY: bounds checked by ptr_at.
    let (ether_type, saddr, daddr) = unsafe { ((*eth).ether_type, (*ip).src_addr, (*ip).dst_addr) };
    if ether_type != EtherType::Ipv4 as u16 {
        return Ok(());
    }
    if cfg.has(CFG_F_DENIED_SOURCES) && denied_source4(saddr) {
        return Err(DropReason::DeniedSource);
    }
    if !cfg.has(CFG_F_ROUTED) && cfg.in_subnet4(daddr) {
        return Err(DropReason::NotPublished);
    }
    if cfg.has(CFG_F_GUARDED_PORTS) && guarded_unpublished4(pkt, daddr) {
        return Err(DropReason::NotPublished);
    }
    Ok(())
}

/// Is `saddr` inside a denied prefix? (The trie key, 8 bytes, lives on this
/// frame's stack: the helper reads it from there.)
#[inline(always)]
fn denied_source4(saddr: [u8; 4]) -> bool {
    DENIED_SOURCES4.get(&Key { prefix_len: 32, data: saddr }).is_some()
}

/// TCP or UDP (a whole datagram or its first fragment) to a guarded port of
/// a host address, without a mapping for it. The flow parser is the one
/// conntrack and NAT use (IP options, total length, truncation), so the
/// guard reads the same port they would.
#[inline(always)]
fn guarded_unpublished4(pkt: &impl Packet, daddr: [u8; 4]) -> bool {
    let Ok(flow) = flow::parse4(pkt) else {
        return false;
    };
    let port = u16::from_be(flow.key.dport);
    let Some((word, bit)) = guarded_bit(flow.key.proto, port) else {
        return false;
    };
    if !GUARDED_PORTS.get(word).is_some_and(|w| *w & bit != 0) {
        return false;
    }
    // SAFETY: map values stay valid for the program's run.
    if unsafe { HOST_ADDRS4.get(&daddr) }.is_none() {
        return false;
    }
    mapping::lookup_on_host4(daddr, flow.key.dport, flow.key.proto).is_none()
}

/// The guard over IPv6: containers' addresses are reachable from outside
/// only when the instance routes (IPv6 publishes no ports yet). Denied
/// sources and guarded ports are IPv4's for now.
#[inline(always)]
fn judge6(pkt: &impl Packet, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(pkt, EthHdr::LEN) else { return Ok(()) };
    // SAFETY: bounds checked by ptr_at.
    let daddr = In6Addr::from_octets(unsafe { (*ip).dst_addr });
    if !cfg.has(CFG_F_ROUTED) && cfg.in_subnet6(daddr) {
        return Err(DropReason::NotPublished);
    }
    Ok(())
}
