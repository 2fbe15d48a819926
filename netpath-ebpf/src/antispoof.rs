//! Anti-spoofing: a container may only send from its own MAC and IP, and
//! may not act as a router or a DHCP server for its neighbours.
//!
//! IPv6 adds neighbour discovery, which is IPv6's ARP: a container's
//! neighbour advertisements may only claim its own addresses (its address
//! and its EUI-64 link-local), its duplicate-address probes (sent from the
//! unspecified address) only probe those, and router advertisements,
//! redirects and DHCPv6 server messages from it are dropped (RA guard).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    conntrack::IPPROTO_UDP,
    family::{link_local_of, In6Addr, IPPROTO_ICMPV6},
    ContainerEntry, DropReason,
};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    flow::{NoFlow, Parsed6},
    ipv6::{
        l4_field, walk6, Headers6, ICMPV6_MLD2_REPORT, ICMPV6_NEIGH_ADVERT, ICMPV6_NEIGH_SOLICIT, ICMPV6_REDIRECT,
        ICMPV6_ROUTER_ADVERT, ND_TARGET_OFF,
    },
    offsets::{ip_hdr_len, ip_version, IPV4_MIN_HDR_LEN, L4_SPORT_OFF},
    packet::{ipv4_eq, mac_eq, ptr_at, Packet},
};

const ETH_P_IPV4: u16 = EtherType::Ipv4 as u16;
const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
/// DHCPv6 servers and relays send from this port.
const DHCPV6_SERVER_PORT: u16 = 547;
const ETH_P_ARP: u16 = EtherType::Arp as u16;
const ARP_HTYPE_ETHER: [u8; 2] = [0, 1];
const ARP_PTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Checks that a frame sent by `container` carries its own addresses. IPv4,
/// ARP and (for a container with an IPv6 address) IPv6 are carried;
/// everything else is refused until the datapath knows it. IPv6's address
/// checks need its extension headers walked: [`check_ipv6`] does them.
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
        // ARP is IPv4's: a container without IPv4 has none to send.
        ETH_P_ARP if container.has_ipv4() => check_arp(pkt, container),
        ETH_P_IPV6 if container.has_ipv6() => Ok(()),
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

/// Is `addr` one of `container`'s own IPv6 addresses (its address, its
/// link-local)?
#[inline(always)]
pub fn own_ipv6(container: &ContainerEntry, addr: &In6Addr) -> bool {
    *addr == container.ipv6 || *addr == link_local_of(container.mac)
}

/// The IPv6 checks of a packet `container` sent, parsed (`parsed`). A flow
/// (TCP, UDP, ICMPv6 echo, another protocol) is checked by what its parse
/// read, without a second walk of its headers: its source, and for UDP the
/// DHCPv6 server's port (the neighbour discovery and router roles are
/// other ICMPv6 messages, never a flow). Anything else is checked by
/// [`check_sent6`].
#[inline(always)]
pub fn check_parsed6(ctx: &TcContext, parsed: &Parsed6, container: &ContainerEntry) -> Result<(), DropReason> {
    let Ok(flow) = parsed else { return check_sent6(ctx, container) };
    if flow.key.proto == IPPROTO_UDP && u16::from_be(flow.key.sport) == DHCPV6_SERVER_PORT {
        return Err(DropReason::RouterRole);
    }
    if !own_ipv6(container, &flow.key.saddr) {
        return Err(DropReason::SpoofedIp);
    }
    Ok(())
}

/// The IPv6 checks of a packet `container` sent. A packet whose headers do
/// not walk is checked for its source only (a later fragment has nothing
/// else to check); the judge drops the rest.
#[inline(never)]
pub fn check_sent6(ctx: &TcContext, container: &ContainerEntry) -> Result<(), DropReason> {
    match walk6(ctx) {
        Ok(headers) => check_ipv6(ctx, &headers, container),
        Err(NoFlow::LaterFragment(frag)) if !own_ipv6(container, &frag.saddr) => Err(DropReason::SpoofedIp),
        Err(_) => Ok(()),
    }
}

/// The IPv6 checks of a packet `container` sent (see the module): its
/// source, and the neighbour discovery, router and DHCPv6 roles it may not
/// take.
#[inline(always)]
fn check_ipv6(ctx: &TcContext, h: &Headers6, container: &ContainerEntry) -> Result<(), DropReason> {
    if h.proto == IPPROTO_ICMPV6 {
        let kind: u8 = l4_field(ctx, h.l4_off as usize, 0)?;
        if kind == ICMPV6_ROUTER_ADVERT || kind == ICMPV6_REDIRECT {
            return Err(DropReason::RouterRole);
        }
        let unspecified = h.saddr == In6Addr::UNSPECIFIED;
        if kind == ICMPV6_NEIGH_ADVERT || (kind == ICMPV6_NEIGH_SOLICIT && unspecified) {
            let target: In6Addr = l4_field(ctx, h.l4_off as usize, ND_TARGET_OFF)?;
            if !own_ipv6(container, &target) {
                return Err(DropReason::SpoofedIp);
            }
        }
        // Duplicate address detection and its listener report are sent
        // before the address is the container's (RFC 4862, 3810).
        if unspecified && (kind == ICMPV6_NEIGH_SOLICIT || kind == ICMPV6_MLD2_REPORT) {
            return Ok(());
        }
    } else if h.proto == IPPROTO_UDP {
        let sport = u16::from_be(l4_field::<u16>(ctx, h.l4_off as usize, L4_SPORT_OFF)?);
        if sport == DHCPV6_SERVER_PORT {
            return Err(DropReason::RouterRole);
        }
    }
    if !own_ipv6(container, &h.saddr) {
        return Err(DropReason::SpoofedIp);
    }
    Ok(())
}
