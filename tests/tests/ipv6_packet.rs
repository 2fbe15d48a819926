//! Packet tests of IPv6 through the container programs under
//! BPF_PROG_TEST_RUN: anti-spoofing with neighbour discovery, the RA and
//! DHCPv6 guards, the extension-header walk and its bound, policy and
//! conntrack of IPv6 flows, fragments, ICMPv6 errors, what the uplink
//! lets in and out, and published IPv6 ports translated both ways (each
//! output frame compared with one built for it, checksums over the new
//! pseudo-header). Frames are built by `frames` (independently of the
//! datapath's parsers).

use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_ROUTED},
    conntrack::CT_F_MASQ_PENDING,
    container::{CONTAINER_F_DEFAULT_DENY_IN, CONTAINER_F_DEFAULT_DENY_OUT, CONTAINER_F_IPV4, CONTAINER_F_IPV6},
    CtKey6, CtScope, DatapathConfig, DropReason, HookId, In6Addr, MappingEntry6, MappingKey6,
};
use netpath_tests::{
    fixtures::{self, C1, C1_MAC, C2_MAC, GATEWAY_MAC, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    frames::{self, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
};

const C1_ID: u32 = 7;

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn c1() -> [u8; 16] {
    v6("fd00:77::2")
}
fn c2() -> [u8; 16] {
    v6("fd00:77::3")
}
fn remote() -> [u8; 16] {
    v6("2001:db8::9")
}

fn config6(flags: u32) -> DatapathConfig {
    DatapathConfig {
        subnet6: In6Addr::from_octets(v6("fd00:77::")),
        subnet6_prefix: 64,
        gateway6: In6Addr::from_octets(v6("fd00:77::1")),
        ..fixtures::config(flags)
    }
}

/// c1 with its IPv6 address (and `flags`), behind the test interface.
fn harness(cfg_flags: u32, container_flags: u16) -> PacketHarness {
    harness_with(&config6(cfg_flags), container_flags)
}

fn harness_with(cfg: &DatapathConfig, container_flags: u16) -> PacketHarness {
    let mut h = fixtures::harness(cfg);
    let mut c = fixtures::container(C1, C1_MAC, C1_ID, CONTAINER_F_IPV6 | container_flags);
    c.ipv6 = In6Addr::from_octets(c1());
    h.dp.set_container(TEST_IFINDEX, &c).unwrap();
    h
}

/// An IPv6 frame from c1's MAC to the gateway's.
fn sent(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV6, &frames::ipv6(src, dst, next, payload))
}

/// An IPv6 frame to c1's MAC from the gateway's.
fn received(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    frames::eth(C1_MAC, GATEWAY_MAC, ETH_P_IPV6, &frames::ipv6(src, dst, next, payload))
}

fn syn(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    frames::tcp6(src, dst, 40000, 80, 0x02, b"")
}

fn verdict(h: &PacketHarness, hook: HookId, frame: &[u8]) -> u32 {
    let r = h.run(hook.program(), frame).unwrap();
    assert_eq!(r.data, frame, "IPv6 is judged, never rewritten");
    r.verdict
}

fn out(h: &PacketHarness, frame: &[u8]) -> u32 {
    verdict(h, HookId::VethIngress, frame)
}

fn inbound(h: &PacketHarness, frame: &[u8]) -> u32 {
    verdict(h, HookId::VethEgress, frame)
}

/// Drops for `reason` on the container's veth and the uplink together
/// (each test's hooks are of one or the other, or both where said).
fn drops(h: &mut PacketHarness, reason: DropReason) -> u64 {
    fixtures::container_counters(h).drops[reason as usize] + fixtures::uplink_counters(h).drops[reason as usize]
}

#[test]
fn the_frames_are_built_right() {
    let f = sent(c1(), c2(), IPPROTO_TCP, &syn(c1(), c2()));
    frames::verify_checksum6(&f).unwrap();
    let f = sent(c1(), c2(), IPPROTO_ICMPV6, &frames::icmp6(c1(), c2(), 128, 0, &frames::echo6_body(1, 1)));
    frames::verify_checksum6(&f).unwrap();
}

#[test]
fn a_container_without_an_ipv6_address_sends_no_ipv6() {
    let mut h = fixtures::harness(&config6(0));
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, C1_ID, 0)).unwrap();
    assert_eq!(out(&h, &sent(c1(), c2(), IPPROTO_TCP, &syn(c1(), c2()))), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::UnsupportedProtocol), 1);
}

#[test]
fn a_container_without_an_ipv4_address_sends_no_ipv4_and_no_arp() {
    // An IPv6-only instance's container: IPv6 carried, IPv4 not.
    let mut h = fixtures::harness(&DatapathConfig { subnet4_prefix: 0, ..config6(0) });
    let mut c = fixtures::container([0; 4], C1_MAC, C1_ID, CONTAINER_F_IPV6);
    c.flags &= !CONTAINER_F_IPV4;
    c.ipv6 = In6Addr::from_octets(c1());
    h.dp.set_container(TEST_IFINDEX, &c).unwrap();
    assert_eq!(out(&h, &sent(c1(), c2(), IPPROTO_TCP, &syn(c1(), c2()))), TC_ACT_OK);
    // IPv4 from any source, the unspecified one included.
    for src in [C1, [0; 4]] {
        let l4 = frames::udp(src, [10, 77, 0, 3], 68, 67, b"x");
        let ip = frames::ipv4(src, [10, 77, 0, 3], IPPROTO_UDP, &[], &l4);
        assert_eq!(out(&h, &frames::eth(GATEWAY_MAC, C1_MAC, frames::ETH_P_IPV4, &ip)), TC_ACT_SHOT, "from {src:?}");
    }
    assert_eq!(drops(&mut h, DropReason::SpoofedIp), 2);
    // ARP, even an address-conflict probe from 0.0.0.0.
    let probe = frames::arp(1, C1_MAC, [0; 4], [0; 6], [10, 77, 0, 3]);
    assert_eq!(out(&h, &frames::eth([0xff; 6], C1_MAC, frames::ETH_P_ARP, &probe)), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::UnsupportedProtocol), 1);
}

#[test]
fn a_container_sends_from_its_own_address_and_link_local_only() {
    let mut h = harness(0, 0);
    assert_eq!(out(&h, &sent(c1(), c2(), IPPROTO_TCP, &syn(c1(), c2()))), TC_ACT_OK);
    let ll = frames::link_local(C1_MAC);
    let peer_ll = frames::link_local(C2_MAC);
    assert_eq!(out(&h, &sent(ll, peer_ll, IPPROTO_TCP, &syn(ll, peer_ll))), TC_ACT_OK, "its own link-local");
    for forged in [c2(), peer_ll, remote(), [0; 16]] {
        assert_eq!(out(&h, &sent(forged, c2(), IPPROTO_TCP, &syn(forged, c2()))), TC_ACT_SHOT, "{forged:?}");
    }
    assert_eq!(drops(&mut h, DropReason::SpoofedIp), 4);
    // Its MAC too.
    let f = frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &frames::ipv6(c1(), c2(), IPPROTO_TCP, &syn(c1(), c2())));
    assert_eq!(out(&h, &f), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::SpoofedMac), 1);
}

#[test]
fn neighbour_advertisements_claim_only_the_containers_own_addresses() {
    let mut h = harness(0, 0);
    let all_nodes = v6("ff02::1");
    let na = |src: [u8; 16], target: [u8; 16]| {
        sent(src, all_nodes, IPPROTO_ICMPV6, &frames::icmp6(src, all_nodes, 136, 0, &frames::nd_body(target)))
    };
    assert_eq!(out(&h, &na(c1(), c1())), TC_ACT_OK);
    assert_eq!(out(&h, &na(frames::link_local(C1_MAC), frames::link_local(C1_MAC))), TC_ACT_OK);
    assert_eq!(out(&h, &na(c1(), c2())), TC_ACT_SHOT, "claims another container's address");
    assert_eq!(out(&h, &na(c1(), v6("fd00:77::1"))), TC_ACT_SHOT, "claims the gateway");
    assert_eq!(drops(&mut h, DropReason::SpoofedIp), 2);
}

#[test]
fn duplicate_address_detection_probes_only_the_containers_own_addresses() {
    let h = harness(0, CONTAINER_F_DEFAULT_DENY_OUT);
    let solicited = v6("ff02::1:ff00:2");
    let ns = |target: [u8; 16]| {
        sent([0; 16], solicited, IPPROTO_ICMPV6, &frames::icmp6([0; 16], solicited, 135, 0, &frames::nd_body(target)))
    };
    assert_eq!(out(&h, &ns(c1())), TC_ACT_OK, "a probe for its own address, policy or not");
    assert_eq!(out(&h, &ns(c2())), TC_ACT_SHOT, "a probe that would make c2 give up its address");
    // An ordinary solicitation from its own address may ask for anyone.
    let ns_from_c1 =
        sent(c1(), solicited, IPPROTO_ICMPV6, &frames::icmp6(c1(), solicited, 135, 0, &frames::nd_body(c2())));
    assert_eq!(out(&h, &ns_from_c1), TC_ACT_OK);
}

#[test]
fn router_advertisements_redirects_and_dhcpv6_servers_are_dropped() {
    let mut h = harness(0, 0);
    let ll = frames::link_local(C1_MAC);
    let all_nodes = v6("ff02::1");
    let ra = sent(
        ll,
        all_nodes,
        IPPROTO_ICMPV6,
        &frames::icmp6(ll, all_nodes, 134, 0, &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]),
    );
    assert_eq!(out(&h, &ra), TC_ACT_SHOT);
    let redirect = sent(
        ll,
        frames::link_local(C2_MAC),
        IPPROTO_ICMPV6,
        &frames::icmp6(ll, frames::link_local(C2_MAC), 137, 0, &[0; 36]),
    );
    assert_eq!(out(&h, &redirect), TC_ACT_SHOT);
    let dhcp_servers = v6("ff02::1:2");
    let advertise = sent(ll, dhcp_servers, IPPROTO_UDP, &frames::udp6(ll, dhcp_servers, 547, 546, &[2, 0, 0, 1]));
    assert_eq!(out(&h, &advertise), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::RouterRole), 3);
    let solicit = sent(ll, dhcp_servers, IPPROTO_UDP, &frames::udp6(ll, dhcp_servers, 546, 547, &[1, 0, 0, 1]));
    assert_eq!(out(&h, &solicit), TC_ACT_OK, "a DHCPv6 client may ask");
}

#[test]
fn neighbour_discovery_stays_on_the_link() {
    let mut h = harness(0, CONTAINER_F_DEFAULT_DENY_OUT | CONTAINER_F_DEFAULT_DENY_IN);
    let solicited = v6("ff02::1:ff00:3");
    let ns = sent(c1(), solicited, IPPROTO_ICMPV6, &frames::icmp6(c1(), solicited, 135, 0, &frames::nd_body(c2())));
    assert_eq!(out(&h, &ns), TC_ACT_OK, "address resolution passes whatever the policy");
    let na = received(c2(), c1(), IPPROTO_ICMPV6, &frames::icmp6(c2(), c1(), 136, 0, &frames::nd_body(c2())));
    assert_eq!(inbound(&h, &na), TC_ACT_OK);
    // An NS-shaped message to a remote address would be routed: it is
    // judged as traffic, and the policy denies it.
    let far = sent(c1(), remote(), IPPROTO_ICMPV6, &frames::icmp6(c1(), remote(), 135, 0, &frames::nd_body(remote())));
    assert_eq!(out(&h, &far), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::Policy), 1);
}

/// What a container's kernel sends when its interface comes up: a
/// multicast listener message from its link-local address, with hop limit
/// 1 behind a hop-by-hop header (RFC 3810: the router alert), to the
/// Ethernet address of the IPv6 group `dst`.
fn listener_message(kind: u8, dst: [u8; 16], body: &[u8]) -> Vec<u8> {
    let ll = frames::link_local(C1_MAC);
    let icmp = frames::icmp6(ll, dst, kind, 0, body);
    let mac = [0x33, 0x33, dst[12], dst[13], dst[14], dst[15]];
    let ip = frames::ipv6_hop_limit(ll, dst, 0, 1, &frames::ipv6_ext(IPPROTO_ICMPV6, 0, &icmp));
    frames::eth(mac, C1_MAC, ETH_P_IPV6, &ip)
}

#[test]
fn listener_reports_go_to_the_host_alone() {
    let h = harness(0, CONTAINER_F_DEFAULT_DENY_OUT);
    let group = v6("ff02::1:ff00:2");
    // MLDv2: one record (change to exclude, no sources) for c1's
    // solicited-node group; MLDv1 report (to the group) and done (to all
    // routers).
    let mut record = vec![0, 0, 0, 1, 4, 0, 0, 0];
    record.extend_from_slice(&group);
    let reports = [
        listener_message(143, v6("ff02::16"), &record),
        listener_message(131, group, &[0, 0, 0, 0].iter().chain(&group).copied().collect::<Vec<_>>()),
        listener_message(132, v6("ff02::2"), &[0, 0, 0, 0].iter().chain(&group).copied().collect::<Vec<_>>()),
    ];
    for report in &reports {
        let r = h.run(HookId::VethIngress.program(), report).unwrap();
        assert_eq!(r.verdict, TC_ACT_OK, "a listener report passes, policy or not");
        // The same frame, addressed to the gateway's MAC: the bridge hands
        // it up instead of flooding it to every container.
        let expected = frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV6, &report[14..]);

        assert_eq!(r.data, expected, "type {}", report[14 + 40 + 8]);
    }
    // Neighbour discovery and a listener query keep their multicast
    // destination: every container on the link may need them.
    let ns = sent(c1(), group, IPPROTO_ICMPV6, &frames::icmp6(c1(), group, 135, 0, &frames::nd_body(c2())));
    let mut ns_multicast = ns.clone();
    ns_multicast[..6].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 2]);
    assert_eq!(out(&h, &ns_multicast), TC_ACT_OK);
    let query = listener_message(130, v6("ff02::1"), &[0; 20]);
    assert_eq!(out(&h, &query), TC_ACT_OK);
}

#[test]
fn extension_headers_are_walked_up_to_the_bound() {
    let mut h = harness(CFG_F_ROUTED, 0);
    // Hop-by-hop, then destination options, then TCP.
    let tcp = syn(c1(), remote());
    let two = frames::ipv6_ext(60, 0, &frames::ipv6_ext(IPPROTO_TCP, 0, &tcp));
    assert_eq!(out(&h, &sent(c1(), remote(), 0, &two)), TC_ACT_OK);
    // Five destination-options headers: beyond the bound.
    let mut five = frames::ipv6_ext(IPPROTO_TCP, 0, &tcp);
    for _ in 0..4 {
        five = frames::ipv6_ext(60, 0, &five);
    }
    assert_eq!(out(&h, &sent(c1(), remote(), 60, &five)), TC_ACT_SHOT);
    // A routing header with a segment left: its destination is not final.
    let routing = frames::ipv6_ext(IPPROTO_TCP, 1, &tcp);
    assert_eq!(out(&h, &sent(c1(), remote(), 43, &routing)), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::Ipv6Headers), 2);
    let visited = frames::ipv6_ext(IPPROTO_TCP, 0, &tcp);
    assert_eq!(out(&h, &sent(c1(), remote(), 43, &visited)), TC_ACT_OK, "all segments visited");
    // The same rule on the way in.
    let mut five_in = frames::ipv6_ext(IPPROTO_TCP, 0, &syn(remote(), c1()));
    for _ in 0..4 {
        five_in = frames::ipv6_ext(60, 0, &five_in);
    }
    assert_eq!(inbound(&h, &received(remote(), c1(), 60, &five_in)), TC_ACT_SHOT);
    // A header cut short by the payload length is malformed.
    let mut cut = sent(c1(), remote(), 60, &two[8..]);
    cut[14 + 5] = 4;
    assert_eq!(out(&h, &cut), TC_ACT_SHOT);
}

#[test]
fn policy_judges_ipv6_flows_once_and_conntrack_keeps_the_verdict() {
    let mut h = harness(CFG_F_ROUTED, CONTAINER_F_DEFAULT_DENY_IN);
    // Inbound is denied by default: a SYN from outside is dropped, and so
    // is a mid-stream segment that no verdict covers.
    assert_eq!(inbound(&h, &received(remote(), c1(), IPPROTO_TCP, &syn(remote(), c1()))), TC_ACT_SHOT);
    let ack = frames::tcp6(remote(), c1(), 40001, 80, 0x10, b"x");
    assert_eq!(inbound(&h, &received(remote(), c1(), IPPROTO_TCP, &ack)), TC_ACT_SHOT);
    // A flow c1 starts is allowed, and its replies come in.
    assert_eq!(out(&h, &sent(c1(), remote(), IPPROTO_TCP, &syn(c1(), remote()))), TC_ACT_OK);
    let syn_ack = frames::tcp6(remote(), c1(), 80, 40000, 0x12, b"");
    assert_eq!(inbound(&h, &received(remote(), c1(), IPPROTO_TCP, &syn_ack)), TC_ACT_OK, "the reply of c1's flow");
    // Echo: a request out lets its reply in, never a request in.
    let request = frames::icmp6(c1(), remote(), 128, 0, &frames::echo6_body(5, 1));
    assert_eq!(out(&h, &sent(c1(), remote(), IPPROTO_ICMPV6, &request)), TC_ACT_OK);
    let reply = frames::icmp6(remote(), c1(), 129, 0, &frames::echo6_body(5, 1));
    assert_eq!(inbound(&h, &received(remote(), c1(), IPPROTO_ICMPV6, &reply)), TC_ACT_OK);
    let request_in = frames::icmp6(remote(), c1(), 128, 0, &frames::echo6_body(5, 1));
    assert_eq!(inbound(&h, &received(remote(), c1(), IPPROTO_ICMPV6, &request_in)), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::Policy), 3);
}

#[test]
fn ipv6_from_outside_reaches_containers_only_when_the_instance_routes() {
    let mut h = harness(0, 0);
    // Not from the subnet, not from the host: it came in some other way.
    assert_eq!(inbound(&h, &received(remote(), c1(), IPPROTO_TCP, &syn(remote(), c1()))), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::NotPublished), 1);
    assert_eq!(inbound(&h, &received(c2(), c1(), IPPROTO_TCP, &syn(c2(), c1()))), TC_ACT_OK, "a neighbour may");
    // The uplink drops it first, on both hooks.
    let from_outside =
        frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &frames::ipv6(remote(), c1(), IPPROTO_TCP, &syn(remote(), c1())));
    assert_eq!(h.run(HookId::UplinkIngress.program(), &from_outside).unwrap().verdict, TC_ACT_SHOT);
    assert_eq!(h.run(HookId::UplinkXdp.program(), &from_outside).unwrap().verdict, XDP_DROP);
    let routed = harness(CFG_F_ROUTED, 0);
    assert_eq!(routed.run(HookId::UplinkIngress.program(), &from_outside).unwrap().verdict, TC_ACT_OK);
    assert_eq!(routed.run(HookId::UplinkXdp.program(), &from_outside).unwrap().verdict, XDP_PASS);
}

#[test]
fn container_ipv6_leaves_the_uplink_masqueraded_unless_the_instance_routes() {
    let tcp = |src, dst, sport, dport, flags| frames::tcp6(src, dst, sport, dport, flags, b"");
    let leaving =
        frames::eth(C2_MAC, GATEWAY_MAC, ETH_P_IPV6, &frames::ipv6(c1(), remote(), IPPROTO_TCP, &syn(c1(), remote())));
    let egress = |h: &PacketHarness, frame: &[u8]| h.run(HookId::UplinkEgress.program(), frame).unwrap();
    // Masquerade on, but the uplink has no IPv6 address: dropped, never
    // sent with a container's private source.
    let mut h = harness(CFG_F_MASQUERADE, 0);
    assert_eq!(egress(&h, &leaving).verdict, TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::NatUnavailable), 1);
    // With the uplink's address: the source is the host's, the port kept
    // (it is in the range), the checksum over the new pseudo-header.
    let masq = masq_config6();
    let h = harness_with(&masq, 0);
    let c1_syn = frames::eth(
        C2_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &frames::ipv6(c1(), remote(), IPPROTO_TCP, &tcp(c1(), remote(), 20000, 80, 0x02)),
    );
    let r = egress(&h, &c1_syn);
    let want = frames::eth(
        C2_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &frames::ipv6(host6(), remote(), IPPROTO_TCP, &tcp(host6(), remote(), 20000, 80, 0x02)),
    );
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &want), "masqueraded to the uplink's IPv6 address");
    frames::verify_checksum6(&r.data).unwrap();
    // The answer comes back to c1, exactly.
    let answer = from_world(remote(), host6(), &tcp(remote(), host6(), 80, 20000, 0x12));
    let r = h.run(HookId::UplinkIngress.program(), &answer).unwrap();
    let want = from_world(remote(), c1(), &tcp(remote(), c1(), 80, 20000, 0x12));
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &want), "the reply translated back to c1");
    // A mid-stream segment of a flow it never had gets no translation.
    let stray = frames::eth(
        C2_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &frames::ipv6(c1(), remote(), IPPROTO_TCP, &tcp(c1(), remote(), 20001, 80, 0x10)),
    );
    assert_eq!(egress(&h, &stray).verdict, TC_ACT_SHOT, "no flow, no new translation");
    // The host's own traffic passes as it is.
    let hosts = frames::eth(
        C2_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &frames::ipv6(host6(), remote(), IPPROTO_TCP, &syn(host6(), remote())),
    );
    let r = egress(&h, &hosts);
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &hosts), "the host's own");
    // Routed, or with masquerade off (the operator's choice, as IPv4's
    // --no-masquerade): the container's address leaves as it is.
    for flags in [CFG_F_ROUTED | CFG_F_MASQUERADE, 0] {
        let h = harness(flags, 0);
        let r = egress(&h, &leaving);
        assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &leaving), "flags {flags:#x}");
    }
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut h = harness(CFG_F_ROUTED, CONTAINER_F_DEFAULT_DENY_OUT);
    let udp = frames::udp6(c1(), remote(), 5000, 53, &[7; 64]);
    let first = frames::ipv6_fragment(IPPROTO_UDP, 0, true, 0x1234, &udp[..32]);
    let later = frames::ipv6_fragment(IPPROTO_UDP, 4, false, 0x1234, &udp[32..]);
    // Denied out: neither part passes.
    assert_eq!(out(&h, &sent(c1(), remote(), 44, &first)), TC_ACT_SHOT);
    assert_eq!(out(&h, &sent(c1(), remote(), 44, &later)), TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::Fragment), 1, "a later fragment alone is never passed unjudged");
    // Allowed (routed, default allow): the first passes, then the later.
    let h = harness(CFG_F_ROUTED, 0);
    assert_eq!(out(&h, &sent(c1(), remote(), 44, &later)), TC_ACT_SHOT, "before its first fragment");
    assert_eq!(out(&h, &sent(c1(), remote(), 44, &first)), TC_ACT_OK);
    assert_eq!(out(&h, &sent(c1(), remote(), 44, &later)), TC_ACT_OK);
    // A later fragment from a forged source is spoofing, whatever passed.
    let forged = sent(c2(), remote(), 44, &later);
    assert_eq!(out(&h, &forged), TC_ACT_SHOT);
}

#[test]
fn icmpv6_errors_pass_only_about_a_flow_with_a_verdict() {
    let h = harness(CFG_F_ROUTED, CONTAINER_F_DEFAULT_DENY_IN);
    let c1_syn = sent(c1(), remote(), IPPROTO_TCP, &syn(c1(), remote()));
    assert_eq!(out(&h, &c1_syn), TC_ACT_OK);
    // Packet too big, quoting c1's SYN.
    let quote = &c1_syn[14..];
    let mut body = 1280u32.to_be_bytes().to_vec();
    body.extend_from_slice(quote);
    let router = v6("2001:db8::fe");
    let ptb = received(router, c1(), IPPROTO_ICMPV6, &frames::icmp6(router, c1(), 2, 0, &body));
    assert_eq!(inbound(&h, &ptb), TC_ACT_OK, "about c1's flow");
    // About a flow c1 never had.
    let other = frames::ipv6(c1(), v6("2001:db8::77"), IPPROTO_TCP, &syn(c1(), v6("2001:db8::77")));
    let mut body = 1280u32.to_be_bytes().to_vec();
    body.extend_from_slice(&other);
    let forged = received(router, c1(), IPPROTO_ICMPV6, &frames::icmp6(router, c1(), 2, 0, &body));
    assert_eq!(inbound(&h, &forged), TC_ACT_SHOT);
}

/// As IPv4's: the container's veth keeps the verdict of a flow masquerade
/// will translate on the flow's NAT entry, pending, and the uplink
/// completes it in place; two entries in all, both carrying the rewrite and
/// the verdict, so that the reply and the container's next packets are
/// one lookup each (a verdict pair besides was four inserts).
#[test]
fn a_masqueraded_ipv6_flow_is_two_entries_that_carry_the_rewrite_and_the_verdict() {
    let tcp = |src, dst, sport, dport, flags| frames::tcp6(src, dst, sport, dport, flags, b"");
    let mut h = harness_with(&masq_config6(), 0);
    let c1_syn = sent(c1(), remote(), IPPROTO_TCP, &tcp(c1(), remote(), 40000, 80, 0x02));
    assert_eq!(out(&h, &c1_syn), TC_ACT_OK);
    let flow = CtKey6::new(
        In6Addr::from_octets(c1()),
        In6Addr::from_octets(remote()),
        40000u16.to_be(),
        80u16.to_be(),
        IPPROTO_TCP,
    );
    let ct = h.dp.ct_entries6().unwrap();
    assert_eq!(ct.len(), 1, "one entry, no verdict pair: {ct:?}");
    let (key, e) = ct[0];
    assert_eq!((key, e.peer), (flow, flow), "the flow's own tuple, in the NAT scope");
    assert!(e.flags & CT_F_MASQ_PENDING != 0 && e.verdict_of(C1_ID) && e.packets == 1, "{e:?}");
    // The uplink completes it with a port (40000 is outside the range) and
    // inserts the reply half.
    let leaving = frames::eth(
        C2_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &frames::ipv6(c1(), remote(), IPPROTO_TCP, &tcp(c1(), remote(), 40000, 80, 0x02)),
    );
    let r = h.run(HookId::UplinkEgress.program(), &leaving).unwrap();
    let port = u16::from_be_bytes([r.data[54], r.data[55]]);
    assert!((1024..=32767).contains(&port), "a port of the range: {port}");
    let want = frames::eth(
        C2_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &frames::ipv6(host6(), remote(), IPPROTO_TCP, &tcp(host6(), remote(), port, 80, 0x02)),
    );
    assert_eq!((r.verdict, fixtures::hex(&r.data)), (TC_ACT_OK, fixtures::hex(&want)), "masqueraded");
    let ct = h.dp.ct_entries6().unwrap();
    assert_eq!(ct.len(), 2, "one entry per direction: {ct:?}");
    assert!(
        ct.iter()
            .all(|(k, e)| k.scope() == Some(CtScope::Nat) && e.verdict_of(C1_ID) && e.flags & CT_F_MASQ_PENDING == 0),
        "{ct:?}"
    );
    let stats = h.dp.ct_stats().unwrap();
    assert_eq!((stats.inserts, stats.removals), (2, 0), "two inserts, nothing deleted");
    // The answer comes back to c1 and is let in on the verdict its entry
    // carries; c1's next segment is translated on its veth already.
    let answer = from_world(remote(), host6(), &tcp(remote(), host6(), 80, port, 0x12));
    let r = h.run(HookId::UplinkIngress.program(), &answer).unwrap();
    let back = from_world(remote(), c1(), &tcp(remote(), c1(), 80, 40000, 0x12));
    assert_eq!((r.verdict, fixtures::hex(&r.data)), (TC_ACT_OK, fixtures::hex(&back)), "back to c1");
    let at_c1 = received(remote(), c1(), IPPROTO_TCP, &tcp(remote(), c1(), 80, 40000, 0x12));
    assert_eq!(inbound(&h, &at_c1), TC_ACT_OK);
    let ack = sent(c1(), remote(), IPPROTO_TCP, &tcp(c1(), remote(), 40000, 80, 0x10));
    let r = h.run(HookId::VethIngress.program(), &ack).unwrap();
    let want = sent(host6(), remote(), IPPROTO_TCP, &tcp(host6(), remote(), port, 80, 0x10));
    assert_eq!((r.verdict, fixtures::hex(&r.data)), (TC_ACT_OK, fixtures::hex(&want)), "translated on c1's veth");
    assert_eq!(h.dp.ct_entries6().unwrap().len(), 2, "the reply and the next packet added none");
}

/// A host address of the uplink's (the test's own documentation prefix).
/// Masquerade on, to [`host6`], ports 1024-32767 (as the agent sets it).
fn masq_config6() -> DatapathConfig {
    DatapathConfig {
        masq_addr6: In6Addr::from_octets(host6()),
        masq_port_min: 1024,
        masq_port_max: 32767,
        ..config6(CFG_F_MASQUERADE)
    }
}

fn host6() -> [u8; 16] {
    v6("2001:db8:18::1")
}

/// `[::]:8080` published to c1:80, the host owning [`host6`]; with
/// `container_flags` on c1.
fn published(container_flags: u16) -> PacketHarness {
    let mut h = harness(0, container_flags);
    h.dp.sync_host_addrs6(&[(In6Addr::from_octets(host6()), 2)]).unwrap();
    let key = MappingKey6 { addr: In6Addr::UNSPECIFIED, port: 8080u16.to_be(), proto: IPPROTO_TCP, _pad: 0 };
    let entry = MappingEntry6 {
        container_addr: In6Addr::from_octets(c1()),
        container_port: 80u16.to_be(),
        _pad: 0,
        id: 1,
        container_ifindex: TEST_IFINDEX,
    };
    h.dp.set_mapping(&key, &entry).unwrap();
    h
}

/// A frame from the world to the host (uplink ingress).
fn from_world(src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &frames::ipv6(src, dst, IPPROTO_TCP, l4))
}

#[test]
fn a_published_ipv6_port_is_translated_both_ways() {
    let h = published(0);
    // The client's SYN to [host]:8080 leaves the uplink's ingress for c1:80,
    // byte for byte the frame built for c1 (checksum over the new
    // pseudo-header).
    let syn_in = from_world(remote(), host6(), &frames::tcp6(remote(), host6(), 40000, 8080, 0x02, b""));
    let r = h.run(HookId::UplinkIngress.program(), &syn_in).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    let want = from_world(remote(), c1(), &frames::tcp6(remote(), c1(), 40000, 80, 0x02, b""));
    assert_eq!(r.data, want, "DNAT to c1:80");
    frames::verify_checksum6(&r.data).unwrap();
    // c1's inbound side lets it in: the flow's entries carry its verdict
    // (the client is not from the subnet, and the instance does not route).
    assert_eq!(inbound(&h, &r.data), TC_ACT_OK);
    // c1's SYN-ACK leaves its veth as the published address.
    let syn_ack = sent(c1(), remote(), IPPROTO_TCP, &frames::tcp6(c1(), remote(), 80, 40000, 0x12, b""));
    let r = h.run(HookId::VethIngress.program(), &syn_ack).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    let want = sent(host6(), remote(), IPPROTO_TCP, &frames::tcp6(host6(), remote(), 8080, 40000, 0x12, b""));
    assert_eq!(r.data, want, "the reply's source is the published address again");
    frames::verify_checksum6(&r.data).unwrap();
    // ... and the uplink lets it out (its source is the host's).
    assert_eq!(h.run(HookId::UplinkEgress.program(), &r.data).unwrap().verdict, TC_ACT_OK);
    // The client's next segment follows the flow's entry.
    let ack = from_world(remote(), host6(), &frames::tcp6(remote(), host6(), 40000, 8080, 0x10, b"data"));
    let r = h.run(HookId::UplinkIngress.program(), &ack).unwrap();
    let want = from_world(remote(), c1(), &frames::tcp6(remote(), c1(), 40000, 80, 0x10, b"data"));
    assert_eq!((r.verdict, r.data), (TC_ACT_OK, want));
}

/// Destination options (next header 60) before TCP: the ports then sit at
/// an offset of the packet's own, which the translation writes by another
/// way than right behind the fixed header.
#[test]
fn a_published_ipv6_port_is_translated_behind_extension_headers_too() {
    let h = published(0);
    let opts = |tcp: &[u8]| frames::ipv6_ext(IPPROTO_TCP, 0, tcp);
    let behind =
        |src, dst, tcp: &[u8]| frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &frames::ipv6(src, dst, 60, &opts(tcp)));
    let syn_in = behind(remote(), host6(), &frames::tcp6(remote(), host6(), 40000, 8080, 0x02, b""));
    let r = h.run(HookId::UplinkIngress.program(), &syn_in).unwrap();
    let want = behind(remote(), c1(), &frames::tcp6(remote(), c1(), 40000, 80, 0x02, b""));
    assert_eq!((r.verdict, fixtures::hex(&r.data)), (TC_ACT_OK, fixtures::hex(&want)), "DNAT to c1:80");
    assert_eq!(inbound(&h, &r.data), TC_ACT_OK);
    // The reply, with its own destination options, leaves as the published
    // address; and one right behind the fixed header follows the same flow.
    let from_c1 =
        |src, tcp: &[u8]| frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV6, &frames::ipv6(src, remote(), 60, &opts(tcp)));
    let syn_ack = from_c1(c1(), &frames::tcp6(c1(), remote(), 80, 40000, 0x12, b""));
    let r = h.run(HookId::VethIngress.program(), &syn_ack).unwrap();
    let want = from_c1(host6(), &frames::tcp6(host6(), remote(), 8080, 40000, 0x12, b""));
    assert_eq!((r.verdict, fixtures::hex(&r.data)), (TC_ACT_OK, fixtures::hex(&want)), "the reply's source");
    let ack = sent(c1(), remote(), IPPROTO_TCP, &frames::tcp6(c1(), remote(), 80, 40000, 0x10, b"data"));
    let r = h.run(HookId::VethIngress.program(), &ack).unwrap();
    let want = sent(host6(), remote(), IPPROTO_TCP, &frames::tcp6(host6(), remote(), 8080, 40000, 0x10, b"data"));
    assert_eq!((r.verdict, fixtures::hex(&r.data)), (TC_ACT_OK, fixtures::hex(&want)));
}

#[test]
fn only_published_ipv6_ports_on_host_addresses_are_translated() {
    let h = published(0);
    for (dst, port, why) in
        [(host6(), 8081, "an unpublished port"), (v6("2001:db8:99::1"), 8080, "an address that is not the host's")]
    {
        let syn_in = from_world(remote(), dst, &frames::tcp6(remote(), dst, 40000, port, 0x02, b""));
        let r = h.run(HookId::UplinkIngress.program(), &syn_in).unwrap();
        assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &syn_in), "{why}: left to the host, untouched");
    }
    // UDP to a TCP mapping: untouched too.
    let dgram = frames::eth(
        GATEWAY_MAC,
        C2_MAC,
        ETH_P_IPV6,
        &frames::ipv6(remote(), host6(), IPPROTO_UDP, &frames::udp6(remote(), host6(), 5000, 8080, b"x")),
    );
    assert_eq!(h.run(HookId::UplinkIngress.program(), &dgram).unwrap().data, dgram);
}

#[test]
fn a_published_ipv6_port_answers_only_clients_the_containers_policy_admits() {
    let mut h = published(CONTAINER_F_DEFAULT_DENY_IN);
    let syn_in = from_world(remote(), host6(), &frames::tcp6(remote(), host6(), 40000, 8080, 0x02, b""));
    assert_eq!(h.run(HookId::UplinkIngress.program(), &syn_in).unwrap().verdict, TC_ACT_SHOT);
    // Counted on c1 and on the uplink.
    let policy = |s: netpath_common::TrafficStats| s.drops[DropReason::Policy as usize];
    assert_eq!(policy(fixtures::container_counters(&mut h)), 1, "counted on c1");
    assert_eq!(policy(fixtures::uplink_counters(&mut h)), 1, "counted on the uplink");
    assert!(h.dp.ct_entries6().unwrap().is_empty(), "a denied flood fills no table");
}

#[test]
fn icmpv6_errors_about_translated_flows_reach_the_container() {
    let masq = masq_config6();
    let h = harness_with(&masq, 0);
    let router = v6("2001:db8:77::1");
    let ip6_syn = |src| frames::ipv6(src, remote(), IPPROTO_TCP, &frames::tcp6(src, remote(), 20000, 80, 0x02, b""));
    // c1's SYN: judged on its veth (its verdict kept), masqueraded on the
    // uplink.
    assert_eq!(out(&h, &sent(c1(), remote(), IPPROTO_TCP, &ip6_syn(c1())[40..])), TC_ACT_OK);
    let c1_syn = frames::eth(C2_MAC, GATEWAY_MAC, ETH_P_IPV6, &ip6_syn(c1()));
    let r = h.run(HookId::UplinkEgress.program(), &c1_syn).unwrap();
    assert_eq!(r.data[14..], ip6_syn(host6())[..], "masqueraded");
    // A router's "packet too big" about it, as it left.
    let ptb = |dst, quote: &[u8]| {
        let mut body = 1280u32.to_be_bytes().to_vec();
        body.extend_from_slice(quote);
        frames::eth(
            GATEWAY_MAC,
            C2_MAC,
            ETH_P_IPV6,
            &frames::ipv6(router, dst, IPPROTO_ICMPV6, &frames::icmp6(router, dst, 2, 0, &body)),
        )
    };
    let r = h.run(HookId::UplinkIngress.program(), &ptb(host6(), &ip6_syn(host6()))).unwrap();
    // To c1, quoting c1's SYN as c1 sent it: every checksum right (the
    // expected frame is built from scratch).
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &ptb(c1(), &ip6_syn(c1()))), "translated back to c1");
    frames::verify_checksum6(&r.data).unwrap();
    // c1's inbound policy lets it in: it is about c1's own flow.
    assert_eq!(inbound(&h, &r.data), TC_ACT_OK);
    // An error about a flow nobody has goes to the host untouched.
    let stray_quote =
        frames::ipv6(host6(), remote(), IPPROTO_TCP, &frames::tcp6(host6(), remote(), 20999, 80, 0x02, b""));
    let stray = ptb(host6(), &stray_quote);
    assert_eq!(h.run(HookId::UplinkIngress.program(), &stray).unwrap().data, stray);
}

#[test]
fn the_later_fragments_of_a_masqueraded_datagram_leave_translated() {
    let masq = masq_config6();
    let h = harness_with(&masq, 0);
    let egress = |frame: &[u8]| h.run(HookId::UplinkEgress.program(), frame).unwrap();
    let frame =
        |src, fragment: &[u8]| frames::eth(C2_MAC, GATEWAY_MAC, ETH_P_IPV6, &frames::ipv6(src, remote(), 44, fragment));
    // One UDP datagram in two fragments, as c1 sent it and as it must leave
    // (the UDP checksum, in the first fragment, covers the whole datagram).
    let sent_udp = frames::udp6(c1(), remote(), 5000, 53, &[7; 64]);
    let left_udp = frames::udp6(host6(), remote(), 5000, 53, &[7; 64]);
    let part = |udp: &[u8], first: bool| {
        if first {
            frames::ipv6_fragment(IPPROTO_UDP, 0, true, 0x1234, &udp[..32])
        } else {
            frames::ipv6_fragment(IPPROTO_UDP, 4, false, 0x1234, &udp[32..])
        }
    };
    // A later fragment before any first one: dropped, never a private source.
    assert_eq!(egress(&frame(c1(), &part(&sent_udp, false))).verdict, TC_ACT_SHOT);
    // The first fragment (judged on c1's veth first) leaves translated...
    assert_eq!(out(&h, &sent(c1(), remote(), 44, &part(&sent_udp, true))), TC_ACT_OK);
    let r = egress(&frame(c1(), &part(&sent_udp, true)));
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &frame(host6(), &part(&left_udp, true))), "the first fragment");
    // ... and so does the later one, with the same addresses: translated
    // on c1's veth already (as a masqueraded flow's later packets are), and
    // on the uplink if it got there untranslated.
    let later = frame(c1(), &part(&sent_udp, false));
    let want = frame(host6(), &part(&left_udp, false));
    let on_veth = h.run(HookId::VethIngress.program(), &sent(c1(), remote(), 44, &part(&sent_udp, false))).unwrap();
    assert_eq!(on_veth.verdict, TC_ACT_OK);
    assert_eq!(on_veth.data[14..], want[14..], "the later fragment, on the veth");
    let r = egress(&later);
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &want), "the later fragment, on the uplink");
    assert_eq!(egress(&want).data, want, "translated already: left as it is");
}

#[test]
fn a_containers_icmpv6_errors_about_translated_flows_leave_translated() {
    let masq = masq_config6();
    let h = harness_with(&masq, 0);
    let run = |hook: HookId, frame: &[u8]| h.run(hook.program(), frame).unwrap();
    // c1's SYN leaves masqueraded; the world's SYN-ACK comes back to it.
    let c1_syn = frames::tcp6(c1(), remote(), 20000, 80, 0x02, b"");
    assert_eq!(out(&h, &sent(c1(), remote(), IPPROTO_TCP, &c1_syn)), TC_ACT_OK);
    let on_uplink = |src| {
        frames::eth(
            C2_MAC,
            GATEWAY_MAC,
            ETH_P_IPV6,
            &frames::ipv6(src, remote(), IPPROTO_TCP, &frames::tcp6(src, remote(), 20000, 80, 0x02, b"")),
        )
    };
    assert_eq!(run(HookId::UplinkEgress, &on_uplink(c1())).data, on_uplink(host6()), "masqueraded");
    let synack = |dst| frames::ipv6(remote(), dst, IPPROTO_TCP, &frames::tcp6(remote(), dst, 80, 20000, 0x12, b""));
    let back = run(HookId::UplinkIngress, &frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &synack(host6())));
    assert_eq!(back.data[14..], synack(c1())[..], "the SYN-ACK, translated back to c1");
    // c1 answers it with "port unreachable", quoting it as c1 got it: the
    // error must leave as if the host had sent it about the packet the
    // host got (outer source, quoted destination and port, every checksum;
    // the expected frame is built from scratch).
    let unreachable = |src, quote: &[u8]| {
        let mut body = vec![0u8; 4];
        body.extend_from_slice(quote);
        frames::ipv6(src, remote(), IPPROTO_ICMPV6, &frames::icmp6(src, remote(), 1, 4, &body))
    };
    let from_c1 = unreachable(c1(), &synack(c1()));
    let leaves = unreachable(host6(), &synack(host6()));
    // On c1's veth (its policy lets it out: it is about c1's own flow).
    let r = run(HookId::VethIngress, &sent(c1(), remote(), IPPROTO_ICMPV6, &from_c1[40..]));
    assert_eq!((r.verdict, &r.data[14..]), (TC_ACT_OK, &leaves[..]), "translated on c1's veth");
    frames::verify_checksum6(&r.data).unwrap();
    // On the uplink, for what got there untranslated; translated already:
    // left as it is.
    let uplink = |ip: &[u8]| frames::eth(C2_MAC, GATEWAY_MAC, ETH_P_IPV6, ip);
    let r = run(HookId::UplinkEgress, &uplink(&from_c1));
    assert_eq!((r.verdict, &r.data), (TC_ACT_OK, &uplink(&leaves)), "translated on the uplink");
    assert_eq!(run(HookId::UplinkEgress, &uplink(&leaves)).data, uplink(&leaves));
    // An error c2 sends about c1's flow (c2 never got that packet), and one
    // about a flow nobody has: never leave with a private source.
    let forged = unreachable(c2(), &synack(c1()));
    assert_eq!(run(HookId::UplinkEgress, &uplink(&forged)).verdict, TC_ACT_SHOT, "not the quoted packet's receiver");
    let stray_quote = frames::ipv6(remote(), c1(), IPPROTO_TCP, &frames::tcp6(remote(), c1(), 80, 20999, 0x12, b""));
    let stray = unreachable(c1(), &stray_quote);
    assert_eq!(run(HookId::UplinkEgress, &uplink(&stray)).verdict, TC_ACT_SHOT, "about no flow");
}

#[test]
fn misses_on_ipv6_masquerade_ports_are_dropped_not_handed_to_the_host() {
    let mut h = harness_with(&masq_config6(), 0);
    let ingress = |h: &PacketHarness, l4: Vec<u8>, next: u8| {
        let frame = frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &frames::ipv6(remote(), host6(), next, &l4));
        let r = h.run(HookId::UplinkIngress.program(), &frame).unwrap();
        (r.verdict, r.data == frame)
    };
    // A reply on a masquerade port whose flow is gone (expired, flushed):
    // the host would reset it while the port can go to another flow.
    let stale = frames::tcp6(remote(), host6(), 80, 20002, 0x10, b"");
    assert_eq!(ingress(&h, stale, IPPROTO_TCP).0, TC_ACT_SHOT);
    let stale = frames::udp6(remote(), host6(), 53, 20003, b"x");
    assert_eq!(ingress(&h, stale, IPPROTO_UDP).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut h, DropReason::NoFlow), 2);
    // Outside the range, or to another address, it is the host's.
    let other = frames::tcp6(remote(), host6(), 80, 40000, 0x10, b"");
    assert_eq!(ingress(&h, other, IPPROTO_TCP), (TC_ACT_OK, true));
    let elsewhere = v6("2001:db8:18::7");
    let other = frames::tcp6(remote(), elsewhere, 80, 20002, 0x10, b"");
    let frame = frames::eth(GATEWAY_MAC, C2_MAC, ETH_P_IPV6, &frames::ipv6(remote(), elsewhere, IPPROTO_TCP, &other));
    let r = h.run(HookId::UplinkIngress.program(), &frame).unwrap();
    assert_eq!((r.verdict, r.data == frame), (TC_ACT_OK, true));
    // Echo replies are not ported flows of the host's sockets: they pass.
    let pong = frames::icmp6(remote(), host6(), 129, 0, &frames::echo6_body(20002, 1));
    assert_eq!(ingress(&h, pong, IPPROTO_ICMPV6), (TC_ACT_OK, true));
    assert_eq!(drops(&mut h, DropReason::NoFlow), 2);
}
