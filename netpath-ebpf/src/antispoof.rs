//! Anti-spoofing: a container may only send from its own MAC and IP.

use netpath_common::{DropReason, Endpoint};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::packet::{ipv4_eq, mac_eq, ptr_at, Packet};

const ETH_P_IPV4: u16 = EtherType::Ipv4 as u16;
const ETH_P_ARP: u16 = EtherType::Arp as u16;
const ARP_HTYPE_ETHER: [u8; 2] = [0, 1];
const ARP_PTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Checks that a frame sent by `ep` carries its own addresses. Only IPv4 and
/// ARP are carried; everything else is refused until the datapath knows it.
#[inline(always)]
pub fn check_source(pkt: &impl Packet, ep: &Endpoint) -> Result<(), DropReason> {
    let eth: *const EthHdr = ptr_at(pkt, 0).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (src_mac, ether_type) = unsafe { ((*eth).src_addr, (*eth).ether_type) };
    if !mac_eq(&src_mac, &ep.mac) {
        return Err(DropReason::SpoofedMac);
    }
    match ether_type {
        ETH_P_IPV4 => check_ipv4(pkt, ep),
        ETH_P_ARP => check_arp(pkt, ep),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

#[inline(always)]
fn check_ipv4(pkt: &impl Packet, ep: &Endpoint) -> Result<(), DropReason> {
    let ip: *const Ipv4Hdr = ptr_at(pkt, EthHdr::LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, src) = unsafe { ((*ip).vihl, (*ip).src_addr) };
    if vihl >> 4 != 4 || (vihl & 0x0f) < 5 {
        return Err(DropReason::Malformed);
    }
    if !ep.has_ipv4() || !ipv4_eq(&src, &ep.ipv4) {
        return Err(DropReason::SpoofedIp);
    }
    Ok(())
}

#[inline(always)]
fn check_arp(pkt: &impl Packet, ep: &Endpoint) -> Result<(), DropReason> {
    let arp: *const ArpHdr = ptr_at(pkt, EthHdr::LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let arp = unsafe { &*arp };
    if arp.htype != ARP_HTYPE_ETHER || arp.ptype != ARP_PTYPE_IPV4 || arp.hlen != 6 || arp.plen != 4 {
        return Err(DropReason::Malformed);
    }
    if !mac_eq(&arp.sha, &ep.mac) {
        return Err(DropReason::SpoofedMac);
    }
    // 0.0.0.0 is an address-conflict probe (RFC 5227), harmless.
    if arp.spa != [0, 0, 0, 0] && !ipv4_eq(&arp.spa, &ep.ipv4) {
        return Err(DropReason::SpoofedIp);
    }
    Ok(())
}
