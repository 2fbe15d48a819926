//! Packet tests of the fast path: the exact frame a redirect hands over
//! (translated, the routing hop applied: TTL, MACs, checksum; checked
//! against frames built from scratch), a new flow's first packet judged on
//! the way by the receiving container's policy, and what falls back to the
//! stack untouched, counted. The redirects themselves are topology tests
//! (`fast_path.rs`): a test run reports the verdict but delivers nothing.

use netpath_common::{
    config::CFG_F_FAST_PATH,
    container::{CONTAINER_F_DEFAULT_DENY_IN, CONTAINER_F_IPV6},
    forward::FALLBACK_COUNT,
    DatapathConfig, Fallback, ForwardStats, HookId, In6Addr, MappingEntry4, MappingEntry6, MappingKey4, MappingKey6,
    Redirect,
};
use netpath_tests::{
    fixtures::{
        self, hex, C1, C1_MAC, CLIENT, CLIENT_MAC, GATEWAY_MAC, HOST, SERVER, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    frames::{self, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
    topology::cmd,
};

/// The test device's own MAC (the loopback's): a frame to it is the
/// host's (`PACKET_HOST`), as a frame to the uplink's MAC is on the uplink.
const LO_MAC: [u8; 6] = [0; 6];

fn harness(flags: u32) -> PacketHarness {
    let mut h = fixtures::harness(&fixtures::config(flags));
    h.dp.sync_host_addrs4(&[(HOST, 2)]).unwrap();
    let key = MappingKey4 { addr: [0; 4], port: 8053u16.to_be(), proto: IPPROTO_UDP, _pad: 0 };
    let entry =
        MappingEntry4 { container_addr: C1, container_port: 53u16.to_be(), _pad: 0, id: 1, container_ifindex: 1 };
    h.dp.set_mapping(&key, &entry).unwrap();
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, 1, 0)).unwrap();
    h
}

fn udp_packet(src: ([u8; 4], u16), dst: ([u8; 4], u16), ttl: u8) -> Vec<u8> {
    let mut ip = frames::ipv4(src.0, dst.0, IPPROTO_UDP, &[], &frames::udp(src.0, dst.0, src.1, dst.1, b"query"));
    frames::set_ttl(&mut ip, ttl);
    ip
}

fn forward_stats(h: &mut PacketHarness) -> ForwardStats {
    h.dp.forward_stats().unwrap()
}

#[test]
fn a_published_flow_is_handed_to_its_container_with_the_hop_applied() {
    let mut h = harness(CFG_F_FAST_PATH);
    let query = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 64));
    // DNAT, one hop: TTL 63, to the container's MAC from the gateway's.
    let routed = frames::eth(C1_MAC, GATEWAY_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (C1, 53), 63));
    // The flow's first datagram: no verdict of the container's yet, so its
    // inbound policy judges it on the way (the judging program, jumped to
    // by the fast path), and it is handed over as the next ones are.
    let r = h.run(HookId::UplinkIngress.program(), &query).unwrap();
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "judged on the way, into the container");
    assert_eq!(hex(&r.data), hex(&routed));
    frames::verify_checksums(&r.data).unwrap();
    let stats = forward_stats(&mut h);
    assert_eq!(stats.redirected[Redirect::ToContainerJudged as usize], 1, "{stats:?}");
    assert_eq!(stats.fallbacks, [0; FALLBACK_COUNT], "nothing left to the stack: {stats:?}");
    // The next datagram finds the verdict the first one left.
    let r = h.run(HookId::UplinkIngress.program(), &query).unwrap();
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "redirected into the container");
    assert_eq!(hex(&r.data), hex(&routed));
    let stats = forward_stats(&mut h);
    assert_eq!(stats.redirected[Redirect::ToContainer as usize], 1, "{stats:?}");
    // The container's counters moved as its veth's egress would have.
    let c1 = fixtures::container_counters(&mut h);
    assert_eq!(c1.egress.packets, 2, "{c1:?}");
}

#[test]
fn a_flow_the_container_s_rules_now_deny_is_no_longer_redirected() {
    let mut h = harness(CFG_F_FAST_PATH);
    let query = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 64));
    let uplink = |h: &PacketHarness| h.run(HookId::UplinkIngress.program(), &query).unwrap().verdict;
    assert_eq!(uplink(&h), TC_ACT_REDIRECT, "judged on the way and allowed");
    assert_eq!(uplink(&h), TC_ACT_REDIRECT);
    // The container's rules change (default deny in; its policy epoch
    // moves on, as the agent writes it): the verdict is of an older epoch,
    // judged again on the way, and denied.
    let mut c1 = fixtures::container(C1, C1_MAC, 1, CONTAINER_F_DEFAULT_DENY_IN);
    c1.policy_epoch = 1;
    h.dp.set_container(TEST_IFINDEX, &c1).unwrap();
    assert_eq!(uplink(&h), TC_ACT_SHOT, "judged again, and denied");
    assert_eq!(uplink(&h), TC_ACT_SHOT, "never redirected again");
    let stats = forward_stats(&mut h);
    assert_eq!(stats.redirected[Redirect::ToContainerJudged as usize], 1, "{stats:?}");
    assert_eq!(stats.redirected[Redirect::ToContainer as usize], 1, "{stats:?}");
    assert_eq!(stats.fallbacks, [0; FALLBACK_COUNT], "{stats:?}");
}

#[test]
fn a_ttl_running_out_in_the_host_goes_to_the_stack_untouched() {
    let mut h = harness(CFG_F_FAST_PATH);
    let query = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 1));
    let r = h.run(HookId::UplinkIngress.program(), &query).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK, "to the stack, which sends time exceeded");
    // Translated (the stack's error quotes it and is translated back), TTL kept.
    let want = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (C1, 53), 1));
    assert_eq!(hex(&r.data), hex(&want));
    assert_eq!(forward_stats(&mut h).fallbacks[Fallback::TtlExpiring as usize], 1);
}

#[test]
fn a_frame_for_another_host_is_not_routed() {
    // Seen on the uplink but addressed to another MAC (promiscuous mode):
    // not the host's to route.
    let mut h = harness(CFG_F_FAST_PATH);
    let other = [0x02, 9, 9, 9, 9, 9];
    let query = frames::eth(other, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 64));
    let r = h.run(HookId::UplinkIngress.program(), &query).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(forward_stats(&mut h), ForwardStats::default());
}

#[test]
fn without_a_route_a_container_s_packet_goes_to_the_stack_untouched() {
    // The test namespace has no routes: the lookup fails, nothing changes.
    let mut h = harness(CFG_F_FAST_PATH);
    let seg = frames::tcp(C1, SERVER, 40000, 443, 0x02, b"");
    let syn = frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &frames::ipv4(C1, SERVER, IPPROTO_TCP, &[], &seg));
    let r = h.run(HookId::VethIngress.program(), &syn).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(hex(&r.data), hex(&syn));
    assert_eq!(forward_stats(&mut h).fallbacks[Fallback::NoRoute as usize], 1);
}

#[test]
fn switched_off_nothing_is_redirected() {
    let mut h = harness(0);
    let query = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 64));
    let r = h.run(HookId::UplinkIngress.program(), &query).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    let want = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (C1, 53), 64));
    assert_eq!(hex(&r.data), hex(&want), "translated, not routed");
    assert_eq!(forward_stats(&mut h), ForwardStats::default());
}

/// A published port's reply whose TTL runs out in the host: the veth
/// translated its source, and the fast path gives the container's back
/// before the stack gets it (the stack's time exceeded goes to the source,
/// which must be the container's, not the host's own address). One that
/// falls back for another reason (here: no route) keeps its translation.
#[test]
fn a_reply_the_stack_answers_goes_to_it_with_the_container_s_source() {
    let mut h = harness(CFG_F_FAST_PATH);
    let query = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 64));
    assert_eq!(h.run(HookId::UplinkIngress.program(), &query).unwrap().verdict, TC_ACT_REDIRECT);

    let reply = |ttl| frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &udp_packet((C1, 53), (CLIENT, 40000), ttl));
    let r = h.run(HookId::VethIngress.program(), &reply(1)).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK, "to the stack, which sends time exceeded");
    assert_eq!(hex(&r.data), hex(&reply(1)), "with the container's source and port");
    frames::verify_checksums(&r.data).unwrap();
    assert_eq!(forward_stats(&mut h).fallbacks[Fallback::TtlExpiring as usize], 1);

    let r = h.run(HookId::VethIngress.program(), &reply(64)).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    let translated = frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &udp_packet((HOST, 8053), (CLIENT, 40000), 64));
    assert_eq!(hex(&r.data), hex(&translated), "no route: translated, for the stack to forward");
    assert_eq!(forward_stats(&mut h).fallbacks[Fallback::NoRoute as usize], 1);
}

/// The test interface's MTU (the container's interface here), set in the
/// harness's own network namespace.
fn set_container_mtu(mtu: u32) {
    cmd("ip", &["link", "set", "lo", "mtu", &mtu.to_string()]).unwrap();
}

/// A packet no longer than IPv4's least MTU (68 bytes) fits every
/// interface, and is handed to the container without its interface's MTU
/// being asked; one byte longer is checked against it, and here, the
/// container's interface having that least MTU, falls back to the stack
/// (which fragments it, or tells the sender the path MTU).
#[test]
fn only_ipv4_packets_longer_than_68_bytes_are_checked_against_the_container_s_mtu() {
    let mut h = harness(CFG_F_FAST_PATH);
    set_container_mtu(68);
    // 20 bytes of IP header and 8 of UDP: 68 bytes with 40 of payload.
    let query = |payload: usize| {
        let udp = frames::udp(CLIENT, HOST, 40000, 8053, &vec![0; payload]);
        frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &frames::ipv4(CLIENT, HOST, IPPROTO_UDP, &[], &udp))
    };
    only_longer_packets_are_checked(&mut h, query, 40);
}

/// The same for IPv6, whose least MTU is 1280 bytes.
#[test]
fn only_ipv6_packets_longer_than_1280_bytes_are_checked_against_the_container_s_mtu() {
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let (c1, host, client) = (v6("fd00:77::2"), v6("2001:db8:18::1"), v6("2001:db8::9"));
    let mut h = fixtures::harness(&DatapathConfig {
        subnet6: In6Addr::from_octets(v6("fd00:77::")),
        subnet6_prefix: 64,
        gateway6: In6Addr::from_octets(v6("fd00:77::1")),
        ..fixtures::config(CFG_F_FAST_PATH)
    });
    h.dp.sync_host_addrs6(&[(In6Addr::from_octets(host), 2)]).unwrap();
    let key = MappingKey6 { addr: In6Addr::UNSPECIFIED, port: 8053u16.to_be(), proto: IPPROTO_UDP, _pad: 0 };
    let entry = MappingEntry6 {
        container_addr: In6Addr::from_octets(c1),
        container_port: 53u16.to_be(),
        _pad: 0,
        id: 1,
        container_ifindex: TEST_IFINDEX,
    };
    h.dp.set_mapping(&key, &entry).unwrap();
    let container = fixtures::container(C1, C1_MAC, 1, CONTAINER_F_IPV6);
    h.dp.set_container(TEST_IFINDEX, &netpath_common::ContainerEntry { ipv6: In6Addr::from_octets(c1), ..container })
        .unwrap();
    set_container_mtu(1280);
    // 40 bytes of IPv6 header and 8 of UDP: 1280 bytes with 1232 of payload.
    let query = |payload: usize| {
        let udp = frames::udp6(client, host, 40000, 8053, &vec![0; payload]);
        frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV6, &frames::ipv6(client, host, IPPROTO_UDP, &udp))
    };
    only_longer_packets_are_checked(&mut h, query, 1232);
}

/// A query to the published port with `at_bound` bytes of payload (a
/// packet of exactly the family's least MTU, which the container's
/// interface has) is redirected into the container; one byte more falls
/// back to the stack as `mtu-exceeded`.
fn only_longer_packets_are_checked(h: &mut PacketHarness, query: impl Fn(usize) -> Vec<u8>, at_bound: usize) {
    assert_eq!(h.run(HookId::UplinkIngress.program(), &query(at_bound)).unwrap().verdict, TC_ACT_REDIRECT);
    let r = h.run(HookId::UplinkIngress.program(), &query(at_bound + 1)).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK, "one byte more: to the stack");
    let stats = forward_stats(h);
    assert_eq!(stats.redirected[Redirect::ToContainerJudged as usize], 1, "{stats:?}");
    assert_eq!(stats.fallbacks[Fallback::MtuExceeded as usize], 1, "{stats:?}");
}

/// With the fast path off the stack forwards, and a container's packet is
/// only looked at for what the stack answers with an ICMP error instead:
/// a published port's reply whose TTL runs out here still goes to it with
/// the container's source, however small; one with hops to spare goes
/// translated, as the stack forwards it.
#[test]
fn off_a_reply_whose_ttl_runs_out_still_goes_to_the_stack_with_the_container_s_source() {
    let mut h = harness(0);
    let query = frames::eth(LO_MAC, CLIENT_MAC, ETH_P_IPV4, &udp_packet((CLIENT, 40000), (HOST, 8053), 64));
    assert_eq!(h.run(HookId::UplinkIngress.program(), &query).unwrap().verdict, TC_ACT_OK);
    let reply = |ttl| frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &udp_packet((C1, 53), (CLIENT, 40000), ttl));
    let r = h.run(HookId::VethIngress.program(), &reply(1)).unwrap();
    assert_eq!((r.verdict, hex(&r.data)), (TC_ACT_OK, hex(&reply(1))), "with the container's source and port");
    let r = h.run(HookId::VethIngress.program(), &reply(64)).unwrap();
    let translated = frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &udp_packet((HOST, 8053), (CLIENT, 40000), 64));
    assert_eq!((r.verdict, hex(&r.data)), (TC_ACT_OK, hex(&translated)));
    let stats = forward_stats(&mut h);
    assert_eq!(stats, ForwardStats::default(), "off, nothing is counted: {stats:?}");
}
