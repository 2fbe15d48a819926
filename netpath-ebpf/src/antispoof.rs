//! Anti-spoofing: a container may only send from its own MAC and IP.

use netpath_common::{ContainerEntry, DropReason};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    offsets::{ip_hdr_len, ip_version, IPV4_MIN_HDR_LEN},
    packet::{ipv4_eq, mac_eq, ptr_at, Packet},
};

const ETH_P_IPV4: u16 = EtherType::Ipv4 as u16;
const ETH_P_ARP: u16 = EtherType::Arp as u16;
const ARP_HTYPE_ETHER: [u8; 2] = [0, 1];
const ARP_PTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Checks that a frame sent by `container` carries its own addresses. Only IPv4 and
/// ARP are carried; everything else is refused until the datapath knows it.
#[inline(always)]
pub fn check_source(pkt: &impl Packet, container: &ContainerEntry) -> Result<(), DropReason> {
    let eth: *const EthHdr = ptr_at(pkt, 0).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (src_mac, ether_type) = unsafe { ((*eth).src_addr, (*eth).ether_type) };
    if !mac_eq(&src_mac, &container.mac) {
        return Err(DropReason::SpoofedMac);
    }
    match ether_type {
        ETH_P_IPV4 => check_ipv4(pkt, container),
        ETH_P_ARP => check_arp(pkt, container),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

#[inline(always)]
fn check_ipv4(pkt: &impl Packet, container: &ContainerEntry) -> Result<(), DropReason> {
    let ip: *const Ipv4Hdr = ptr_at(pkt, EthHdr::LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, src) = unsafe { ((*ip).vihl, (*ip).src_addr) };
    if ip_version(vihl) != 4 || ip_hdr_len(vihl) < IPV4_MIN_HDR_LEN {
        return Err(DropReason::Malformed);
    }
    if !container.has_ipv4() || !ipv4_eq(&src, &container.ipv4) {
        return Err(DropReason::SpoofedIp);
    }
    Ok(())
}

#[inline(always)]
fn check_arp(pkt: &impl Packet, container: &ContainerEntry) -> Result<(), DropReason> {
    let arp: *const ArpHdr = ptr_at(pkt, EthHdr::LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let arp = unsafe { &*arp };
    if arp.htype != ARP_HTYPE_ETHER || arp.ptype != ARP_PTYPE_IPV4 || arp.hlen != 6 || arp.plen != 4 {
        return Err(DropReason::Malformed);
    }
    if !mac_eq(&arp.sha, &container.mac) {
        return Err(DropReason::SpoofedMac);
    }
    // 0.0.0.0 is an address-conflict probe (RFC 5227), harmless.
    if arp.spa != [0, 0, 0, 0] && !ipv4_eq(&arp.spa, &container.ipv4) {
        return Err(DropReason::SpoofedIp);
    }
    Ok(())
}
