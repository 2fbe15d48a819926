//! Packet tests: the anti-spoofing and counting programs run under
//! BPF_PROG_TEST_RUN on crafted frames, with prepared map contents.

use netpath_common::{stats::IFACE_SLOT_UNATTRIBUTED, DropReason, HookId};
use netpath_tests::{
    fixtures::{
        self, C1 as CTR_IP, C1_MAC as CTR_MAC, C2 as PEER_IP, C2_MAC as PEER_MAC, CLIENT_MAC, HOST, HOST_MAC, SERVER,
        TC_ACT_OK, TC_ACT_SHOT, XDP_PASS,
    },
    frames::{self, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
};

fn harness() -> PacketHarness {
    let mut h = fixtures::unconfigured_harness();
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(CTR_IP, CTR_MAC, 1, 0)).unwrap();
    h
}

fn udp_frame(src_mac: [u8; 6], src_ip: [u8; 4]) -> Vec<u8> {
    let l4 = frames::udp(src_ip, PEER_IP, 40000, 53, b"query");
    frames::eth(PEER_MAC, src_mac, ETH_P_IPV4, &frames::ipv4(src_ip, PEER_IP, IPPROTO_UDP, &[], &l4))
}

/// Runs veth_ingress and checks the verdict, that the frame is unchanged,
/// and what was counted.
fn expect_ingress(h: &mut PacketHarness, frame: &[u8], verdict: u32, drop: Option<DropReason>) {
    // Without a container behind the interface, its drops are unattributed.
    let slot = h.dp.container(TEST_IFINDEX).unwrap().map_or(IFACE_SLOT_UNATTRIBUTED, |c| c.stats_slot);
    let before = h.dp.stats(slot).unwrap();
    let r = h
        .run(HookId::VethIngress.program(), frame)
        .unwrap_or_else(|e| panic!("{e:#} on frame of {} bytes", frame.len()));
    assert_eq!(r.verdict, verdict, "verdict");
    assert_eq!(r.data, frame, "anti-spoofing never rewrites a frame");
    let after = h.dp.stats(slot).unwrap();
    match drop {
        None => {
            assert_eq!(after.ingress.packets, before.ingress.packets + 1);
            assert_eq!(after.ingress.bytes, before.ingress.bytes + frame.len() as u64);
            assert_eq!(after.total_drops(), before.total_drops());
        }
        Some(reason) => {
            assert_eq!(after.ingress, before.ingress, "a dropped frame is not counted as traffic");
            assert_eq!(after.drops[reason as usize], before.drops[reason as usize] + 1, "drop reason {reason:?}");
            assert_eq!(after.total_drops(), before.total_drops() + 1);
        }
    }
}

#[test]
fn own_addresses_pass_for_udp_tcp_icmp() {
    let mut h = harness();
    expect_ingress(&mut h, &udp_frame(CTR_MAC, CTR_IP), TC_ACT_OK, None);
    let tcp = frames::tcp(CTR_IP, PEER_IP, 40000, 80, 0x02, b"");
    let f = frames::eth(PEER_MAC, CTR_MAC, ETH_P_IPV4, &frames::ipv4(CTR_IP, PEER_IP, IPPROTO_TCP, &[], &tcp));
    expect_ingress(&mut h, &f, TC_ACT_OK, None);
    // IP options do not confuse the source check.
    let icmp = frames::icmp_echo(1, 1, b"abc");
    let f =
        frames::eth(PEER_MAC, CTR_MAC, ETH_P_IPV4, &frames::ipv4(CTR_IP, PEER_IP, IPPROTO_ICMP, &[1, 1, 1, 0], &icmp));
    expect_ingress(&mut h, &f, TC_ACT_OK, None);
}

#[test]
fn spoofed_source_ip_is_dropped() {
    let mut h = harness();
    expect_ingress(&mut h, &udp_frame(CTR_MAC, [10, 0, 0, 99]), TC_ACT_SHOT, Some(DropReason::SpoofedIp));
    expect_ingress(&mut h, &udp_frame(CTR_MAC, PEER_IP), TC_ACT_SHOT, Some(DropReason::SpoofedIp));
    expect_ingress(&mut h, &udp_frame(CTR_MAC, [0, 0, 0, 0]), TC_ACT_SHOT, Some(DropReason::SpoofedIp));
}

#[test]
fn spoofed_source_mac_is_dropped() {
    let mut h = harness();
    expect_ingress(&mut h, &udp_frame(PEER_MAC, CTR_IP), TC_ACT_SHOT, Some(DropReason::SpoofedMac));
    let mut one_bit = CTR_MAC;
    one_bit[5] ^= 1;
    expect_ingress(&mut h, &udp_frame(one_bit, CTR_IP), TC_ACT_SHOT, Some(DropReason::SpoofedMac));
}

#[test]
fn arp_is_checked_on_sender_fields() {
    let mut h = harness();
    let bcast = [0xff; 6];
    let req = |sha, spa| frames::eth(bcast, CTR_MAC, ETH_P_ARP, &frames::arp(1, sha, spa, [0; 6], PEER_IP));
    expect_ingress(&mut h, &req(CTR_MAC, CTR_IP), TC_ACT_OK, None);
    // RFC 5227 probe: sender address 0.0.0.0.
    expect_ingress(&mut h, &req(CTR_MAC, [0, 0, 0, 0]), TC_ACT_OK, None);
    // ARP poisoning: claiming the peer's (or the gateway's) address.
    expect_ingress(&mut h, &req(CTR_MAC, PEER_IP), TC_ACT_SHOT, Some(DropReason::SpoofedIp));
    expect_ingress(&mut h, &req(PEER_MAC, CTR_IP), TC_ACT_SHOT, Some(DropReason::SpoofedMac));
    // Not Ethernet/IPv4 ARP.
    let mut odd = frames::arp(1, CTR_MAC, CTR_IP, [0; 6], PEER_IP);
    odd[5] = 16;
    expect_ingress(&mut h, &frames::eth(bcast, CTR_MAC, ETH_P_ARP, &odd), TC_ACT_SHOT, Some(DropReason::Malformed));
}

#[test]
fn other_protocols_and_malformed_frames_are_dropped() {
    let mut h = harness();
    let v6 = frames::eth(PEER_MAC, CTR_MAC, ETH_P_IPV6, &[0x60; 40]);
    expect_ingress(&mut h, &v6, TC_ACT_SHOT, Some(DropReason::UnsupportedProtocol));
    let vlan = frames::eth(PEER_MAC, CTR_MAC, 0x8100, &[0; 46]);
    expect_ingress(&mut h, &vlan, TC_ACT_SHOT, Some(DropReason::UnsupportedProtocol));
    // (A frame shorter than an IPv4 header cannot be tested here: the
    // kernel's test runner refuses it with EINVAL before the program runs.)
    let full = udp_frame(CTR_MAC, CTR_IP);
    // IHL below 5 and a wrong version.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    expect_ingress(&mut h, &bad_ihl, TC_ACT_SHOT, Some(DropReason::Malformed));
    let mut v6_in_v4 = full.clone();
    v6_in_v4[14] = 0x65;
    expect_ingress(&mut h, &v6_in_v4, TC_ACT_SHOT, Some(DropReason::Malformed));
    // A total length of 0 states "longer than 64 KiB" only on a GSO packet
    // (BIG TCP); on a single frame it is shorter than the IP header.
    let mut no_length = full.clone();
    no_length[16..18].copy_from_slice(&[0, 0]);
    expect_ingress(&mut h, &no_length, TC_ACT_SHOT, Some(DropReason::Malformed));
    // Truncated ARP.
    let arp = frames::eth([0xff; 6], CTR_MAC, ETH_P_ARP, &frames::arp(1, CTR_MAC, CTR_IP, [0; 6], PEER_IP));
    expect_ingress(&mut h, &arp[..14 + 20], TC_ACT_SHOT, Some(DropReason::Malformed));
}

#[test]
fn unknown_interface_fails_closed() {
    let mut h = harness();
    h.dp.remove_container(TEST_IFINDEX).unwrap();
    expect_ingress(&mut h, &udp_frame(CTR_MAC, CTR_IP), TC_ACT_SHOT, Some(DropReason::UnknownContainer));
}

#[test]
fn egress_and_uplink_count_and_pass() {
    // Configured as the agent does: traffic from another container to this
    // one is judged (and allowed) on the veth's egress.
    let mut h = fixtures::harness(&fixtures::config(0));
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(CTR_IP, CTR_MAC, 1, 0)).unwrap();
    let l4 = frames::udp(PEER_IP, CTR_IP, 40000, 53, b"query");
    let f = frames::eth(CTR_MAC, PEER_MAC, ETH_P_IPV4, &frames::ipv4(PEER_IP, CTR_IP, IPPROTO_UDP, &[], &l4));
    let r = h.run(HookId::VethEgress.program(), &f).unwrap();
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &f));
    let s = fixtures::container_counters(&mut h);
    assert_eq!((s.egress.packets, s.egress.bytes), (1, f.len() as u64));

    // The host's own traffic on the uplink passes, counted.
    let l4 = frames::udp(HOST, SERVER, 40000, 53, b"query");
    let f = frames::eth(HOST_MAC, CLIENT_MAC, ETH_P_IPV4, &frames::ipv4(HOST, SERVER, IPPROTO_UDP, &[], &l4));
    let r = h.run(HookId::UplinkXdp.program(), &f).unwrap();
    assert_eq!((r.verdict, &r.data), (XDP_PASS, &f));
    let s = fixtures::uplink_counters(&mut h);
    assert_eq!(s.ingress.packets, 1, "XDP on the uplink counts what arrives");

    // Every entry point ends through the same count: the uplink's tc hooks
    // too (its egress counted nothing before).
    let r = h.run(HookId::UplinkEgress.program(), &f).unwrap();
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &f));
    let s = fixtures::uplink_counters(&mut h);
    assert_eq!(s.egress.packets, 1, "uplink egress counts what leaves");
    let r = h.run(HookId::UplinkIngress.program(), &f).unwrap();
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &f));
    let s = fixtures::uplink_counters(&mut h);
    assert_eq!(s.ingress.packets, 2, "uplink tc ingress counts without XDP");
}
