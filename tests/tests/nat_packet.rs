//! Packet tests of published ports: the exact bytes DNAT and the reverse
//! translation produce (addresses, ports, IP and L4 checksums, checked
//! against frames built from scratch and verified independently), and the
//! packets that must pass untouched.

use netpath_common::{conntrack::CT_F_POLICY, ContainerEntry, CtKey4, CtScope, HookId, MappingEntry4, MappingKey4};
use netpath_tests::{
    fixtures::{
        self, expect, hex, C1, C1_MAC, C2, C2_MAC, CLIENT, CLIENT_MAC, GATEWAY, GATEWAY_MAC, HOST, HOST_MAC, TC_ACT_OK,
        TC_ACT_SHOT,
    },
    frames::{self, ETH_P_ARP, ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
};
use netpath_userspace::policy::{parse_cidr, Action, Direction, Rule};

/// A host address that one mapping is bound to.
const BOUND: [u8; 4] = [198, 18, 0, 10];

fn harness() -> PacketHarness {
    let mut h = fixtures::harness(&fixtures::config(0));
    h.dp.sync_host_addrs4(&[(HOST, 2), (BOUND, 2), (GATEWAY, 3)]).unwrap();
    let mapping = |addr: [u8; 4], port: u16, proto: u8, container: [u8; 4], container_port: u16, id: u32| {
        (
            MappingKey4 { addr, port: port.to_be(), proto, _pad: 0 },
            MappingEntry4 {
                container_addr: container,
                container_port: container_port.to_be(),
                _pad: 0,
                id,
                container_ifindex: TEST_IFINDEX,
            },
        )
    };
    for (k, v) in [
        mapping([0; 4], 8080, IPPROTO_TCP, C1, 80, 1),
        mapping([0; 4], 8053, IPPROTO_UDP, C1, 53, 2),
        mapping(BOUND, 8082, IPPROTO_TCP, C1, 80, 3),
    ] {
        h.dp.set_mapping(&k, &v).unwrap();
    }
    h
}

fn container(h: &mut PacketHarness, ip: [u8; 4], mac: [u8; 6]) {
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(ip, mac, 1, 0)).unwrap();
}

fn tcp_frame(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: u8,
    options: &[u8],
) -> Vec<u8> {
    let seg = frames::tcp(src.0, dst.0, src.1, dst.1, flags, b"payload");
    frames::eth(dmac, smac, ETH_P_IPV4, &frames::ipv4(src.0, dst.0, IPPROTO_TCP, options, &seg))
}

fn udp_frame(dmac: [u8; 6], smac: [u8; 6], src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let seg = frames::udp(src.0, dst.0, src.1, dst.1, b"query");
    frames::eth(dmac, smac, ETH_P_IPV4, &frames::ipv4(src.0, dst.0, IPPROTO_UDP, &[], &seg))
}

#[test]
fn dnat_from_outside_and_reverse_translation_tcp() {
    let mut h = harness();
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 8080), 0x02, &[]);
    let dnat = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (C1, 80), 0x02, &[]);
    expect(&h, HookId::UplinkIngress.program(), &syn, &dnat);
    // Both directions are tracked.
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 2, "{ct:?}");

    // The reply leaves the container and gets the published address back.
    container(&mut h, C1, C1_MAC);
    let synack = tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (CLIENT, 40000), 0x12, &[]);
    let back = tcp_frame(HOST_MAC, C1_MAC, (HOST, 8080), (CLIENT, 40000), 0x12, &[]);
    expect(&h, HookId::VethIngress.program(), &synack, &back);

    // Later packets of the flow hit conntrack, both ways.
    let ack = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 8080), 0x10, &[]);
    expect(
        &h,
        HookId::UplinkIngress.program(),
        &ack,
        &tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (C1, 80), 0x10, &[]),
    );
    let flows: Vec<_> = h.dp.ct_entries().unwrap();
    let nat: Vec<_> = flows.iter().filter(|(k, _)| k.scope() == Some(netpath_common::CtScope::Nat)).collect();
    assert_eq!(nat.len(), 2);
    assert!(nat.iter().all(|(_, e)| e.state == netpath_common::CtState::Established as u8), "{nat:?}");
}

/// c1's rules, as the agent writes them, all in one direction.
fn set_rules(h: &mut PacketHarness, direction: Direction, rules: &[(Action, &str)]) {
    let rules: Vec<Rule> = rules
        .iter()
        .map(|(action, cidr)| Rule {
            action: *action,
            direction,
            cidr: parse_cidr(cidr).unwrap(),
            proto: None,
            ports: None,
        })
        .collect();
    fixtures::write_rules4(h, C1_ID, &rules).unwrap();
}

const C1_ID: u32 = 1;

#[test]
fn a_published_flow_is_two_entries_that_carry_the_rewrite_and_the_verdict() {
    let mut h = harness();
    container(&mut h, C1, C1_MAC);
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 8080), 0x02, &[]);
    expect(
        &h,
        HookId::UplinkIngress.program(),
        &syn,
        &tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (C1, 80), 0x02, &[]),
    );
    // c1's veth judges the translated SYN and its answer, both ways, on the
    // flow's own two entries: no verdict pair of their own.
    let at_c1 = tcp_frame(C1_MAC, GATEWAY_MAC, (CLIENT, 40000), (C1, 80), 0x02, &[]);
    expect(&h, HookId::VethEgress.program(), &at_c1, &at_c1);
    let synack = tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (CLIENT, 40000), 0x12, &[]);
    expect(
        &h,
        HookId::VethIngress.program(),
        &synack,
        &tcp_frame(HOST_MAC, C1_MAC, (HOST, 8080), (CLIENT, 40000), 0x12, &[]),
    );
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 2, "one entry per direction: {ct:?}");
    assert!(ct.iter().all(|(k, e)| k.scope() == Some(CtScope::Nat) && e.verdict_of(C1_ID)), "{ct:?}");
    assert!(ct.iter().all(|(_, e)| e.policy_epoch == 0));

    // A rule change (a deny for the client, then a new epoch, as the agent
    // writes it) judges the flow again at its next packet: the reply is
    // dropped, the verdict leaves both entries, and the flow stays cut from
    // both ends; the translation stays until it expires.
    set_rules(&mut h, Direction::In, &[(Action::Deny, "198.18.0.2/32")]);
    let c1 = ContainerEntry { policy_epoch: 1, ..fixtures::container(C1, C1_MAC, C1_ID, 0) };
    h.dp.set_container(TEST_IFINDEX, &c1).unwrap();
    let ack = tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (CLIENT, 40000), 0x10, &[]);
    assert_eq!(h.run(HookId::VethIngress.program(), &ack).unwrap().verdict, TC_ACT_SHOT);
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 2, "{ct:?}");
    assert!(ct.iter().all(|(_, e)| e.flags & CT_F_POLICY == 0), "the verdict is gone: {ct:?}");
    let in_ack = tcp_frame(C1_MAC, GATEWAY_MAC, (CLIENT, 40000), (C1, 80), 0x10, &[]);
    assert_eq!(h.run(HookId::VethEgress.program(), &in_ack).unwrap().verdict, TC_ACT_SHOT, "cut from the client's end");
    assert_eq!(h.run(HookId::VethIngress.program(), &ack).unwrap().verdict, TC_ACT_SHOT, "and from c1's");

    // A flow the rules still allow is confirmed under the new epoch.
    let other = [198, 18, 0, 3];
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (other, 40001), (HOST, 8080), 0x02, &[]);
    expect(
        &h,
        HookId::UplinkIngress.program(),
        &syn,
        &tcp_frame(HOST_MAC, CLIENT_MAC, (other, 40001), (C1, 80), 0x02, &[]),
    );
    h.dp.set_container(TEST_IFINDEX, &ContainerEntry { policy_epoch: 2, ..c1 }).unwrap();
    let synack = tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (other, 40001), 0x12, &[]);
    expect(
        &h,
        HookId::VethIngress.program(),
        &synack,
        &tcp_frame(HOST_MAC, C1_MAC, (HOST, 8080), (other, 40001), 0x12, &[]),
    );
    let confirmed: Vec<_> =
        h.dp.ct_entries().unwrap().into_iter().filter(|(k, _)| k.saddr == other || k.daddr == other).collect();
    assert_eq!(confirmed.len(), 2, "{confirmed:?}");
    assert!(confirmed.iter().all(|(_, e)| e.verdict_of(C1_ID) && e.policy_epoch == 2), "{confirmed:?}");
}

#[test]
fn an_orphaned_half_never_blocks_its_tuple() {
    let mut h = harness();
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 8080), 0x02, &[]);
    let dnat = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (C1, 80), 0x02, &[]);
    expect(&h, HookId::UplinkIngress.program(), &syn, &dnat);
    // The LRU evicts the original half; the reply half stays behind.
    let orig = CtKey4::new(CLIENT, HOST, 40000u16.to_be(), 8080u16.to_be(), IPPROTO_TCP);
    h.dp.ct_remove_half4(&orig).unwrap();
    assert_eq!(h.dp.ct_entries().unwrap().len(), 1);
    // The client connects again on the same tuple: a new flow replaces the
    // orphan (it used to be dropped as "table full" until the orphan expired).
    expect(&h, HookId::UplinkIngress.program(), &syn, &dnat);
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 2, "a whole pair again: {ct:?}");
    // The agent's collector removes orphans too.
    h.dp.ct_remove_half4(&orig).unwrap();
    assert_eq!(h.dp.ct_collect_expired(netpath_userspace::datapath::monotonic_ns()).unwrap(), 1);
    assert!(h.dp.ct_entries().unwrap().is_empty());
}

#[test]
fn dnat_and_reverse_udp() {
    let mut h = harness();
    let q = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (HOST, 8053));
    expect(&h, HookId::UplinkIngress.program(), &q, &udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (C1, 53)));
    container(&mut h, C1, C1_MAC);
    let a = udp_frame(HOST_MAC, C1_MAC, (C1, 53), (CLIENT, 5000));
    expect(&h, HookId::VethIngress.program(), &a, &udp_frame(HOST_MAC, C1_MAC, (HOST, 8053), (CLIENT, 5000)));
}

#[test]
fn a_container_s_icmp_error_about_a_published_flow_is_translated() {
    let mut h = harness();
    let q = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (HOST, 8053));
    let dnat = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (C1, 53));
    expect(&h, HookId::UplinkIngress.program(), &q, &dnat);
    container(&mut h, C1, C1_MAC);
    // Delivered to c1 (its policy keeps the verdict the error relates to).
    fixtures::pass(&h, HookId::VethEgress.program(), &dnat);
    // c1 has nothing on 53: "port unreachable", quoting what it received.
    let error = |src: [u8; 4], quoted_frame: &[u8]| {
        let quoted = &quoted_frame[14..14 + 28];
        let icmp = frames::icmp_error(3, 3, 0, quoted);
        frames::eth(HOST_MAC, C1_MAC, ETH_P_IPV4, &frames::ipv4(src, CLIENT, 1, &[], &icmp))
    };
    // It leaves as the published address's, quoting the datagram the
    // client sent, every checksum recomputed independently.
    expect(&h, HookId::VethIngress.program(), &error(C1, &dnat), &error(HOST, &q));
}

#[test]
fn udp_without_checksum_keeps_it_zero() {
    let h = harness();
    let mut q = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (HOST, 8053));
    let csum = 14 + 20 + 6;
    q[csum] = 0;
    q[csum + 1] = 0;
    let mut want = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (C1, 53));
    want[csum] = 0;
    want[csum + 1] = 0;
    let r = h.run(HookId::UplinkIngress.program(), &q).unwrap();
    assert_eq!(hex(&r.data), hex(&want));
}

#[test]
fn ip_options_shift_the_l4_header() {
    let h = harness();
    let opts = [0x94, 0x04, 0, 0]; // router alert
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40001), (HOST, 8080), 0x02, &opts);
    let want = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40001), (C1, 80), 0x02, &opts);
    expect(&h, HookId::UplinkIngress.program(), &syn, &want);
}

#[test]
fn hairpin_from_another_container_and_to_itself() {
    let mut h = harness();
    // c2 -> host:8080: DNAT only; c1 answers c2 directly over the bridge.
    container(&mut h, C2, C2_MAC);
    let req = tcp_frame(HOST_MAC, C2_MAC, (C2, 41000), (HOST, 8080), 0x02, &[]);
    expect(&h, HookId::VethIngress.program(), &req, &tcp_frame(HOST_MAC, C2_MAC, (C2, 41000), (C1, 80), 0x02, &[]));
    container(&mut h, C1, C1_MAC);
    let rep = tcp_frame(C2_MAC, C1_MAC, (C1, 80), (C2, 41000), 0x12, &[]);
    expect(&h, HookId::VethIngress.program(), &rep, &tcp_frame(C2_MAC, C1_MAC, (HOST, 8080), (C2, 41000), 0x12, &[]));

    // c1 -> host:8080 lands on c1 itself: also SNAT to the gateway.
    let req = tcp_frame(HOST_MAC, C1_MAC, (C1, 42000), (HOST, 8080), 0x02, &[]);
    expect(
        &h,
        HookId::VethIngress.program(),
        &req,
        &tcp_frame(HOST_MAC, C1_MAC, (GATEWAY, 42000), (C1, 80), 0x02, &[]),
    );
    let rep = tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (GATEWAY, 42000), 0x12, &[]);
    expect(&h, HookId::VethIngress.program(), &rep, &tcp_frame(HOST_MAC, C1_MAC, (HOST, 8080), (C1, 42000), 0x12, &[]));
}

#[test]
fn mappings_answer_only_on_their_addresses() {
    let mut h = harness();
    // Wildcard mapping, but not a host address: untouched.
    let other = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), ([198, 18, 0, 77], 8080), 0x02, &[]);
    expect(&h, HookId::UplinkIngress.program(), &other, &other);
    // Bound to BOUND: DNAT there, nothing on HOST.
    let on_bound = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (BOUND, 8082), 0x02, &[]);
    expect(
        &h,
        HookId::UplinkIngress.program(),
        &on_bound,
        &tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (C1, 80), 0x02, &[]),
    );
    let on_host = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 8082), 0x02, &[]);
    expect(&h, HookId::UplinkIngress.program(), &on_host, &on_host);
    assert_eq!(h.dp.ct_entries().unwrap().len(), 2, "only the bound flow is tracked");
}

#[test]
fn misses_and_other_frames_pass_untouched() {
    let mut h = harness();
    let unpublished = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 9999), 0x02, &[]);
    expect(&h, HookId::UplinkIngress.program(), &unpublished, &unpublished);
    let udp_on_tcp_port = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (HOST, 8080));
    expect(&h, HookId::UplinkIngress.program(), &udp_on_tcp_port, &udp_on_tcp_port);
    let arp = frames::eth([0xff; 6], CLIENT_MAC, ETH_P_ARP, &frames::arp(1, CLIENT_MAC, CLIENT, [0; 6], HOST));
    expect(&h, HookId::UplinkIngress.program(), &arp, &arp);
    let icmp = frames::eth(
        HOST_MAC,
        CLIENT_MAC,
        ETH_P_IPV4,
        &frames::ipv4(CLIENT, HOST, 1, &[], &frames::icmp_echo(1, 1, b"x")),
    );
    expect(&h, HookId::UplinkIngress.program(), &icmp, &icmp);
    let v6 = frames::eth(HOST_MAC, CLIENT_MAC, frames::ETH_P_IPV6, &[0x60; 60]);
    let r = h.run(HookId::UplinkIngress.program(), &v6).unwrap();
    assert_eq!((r.verdict, r.data), (TC_ACT_OK, v6));
    // Truncated TCP header: no rewrite.
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40000), (HOST, 8080), 0x02, &[]);
    let mut cut = syn[..14 + 20 + 10].to_vec();
    cut[14 + 3] = 30; // IP total length matching the cut
    let r = h.run(HookId::UplinkIngress.program(), &cut).unwrap();
    assert_eq!((r.verdict, hex(&r.data)), (TC_ACT_OK, hex(&cut)));
    assert!(h.dp.ct_entries().unwrap().is_empty(), "nothing was tracked");
}

/// Sets the fragment field (MF flag and offset in 8-byte units) and fixes
/// the IP header checksum.
fn fragment(mut f: Vec<u8>, more: bool, offset: u16) -> Vec<u8> {
    let v = (if more { 0x2000 } else { 0 }) | offset;
    f[14 + 6..14 + 8].copy_from_slice(&v.to_be_bytes());
    f[14 + 10] = 0;
    f[14 + 11] = 0;
    let c = frames::checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// Gives a fragment frame the identification `id` (IP checksum fixed).
fn with_id(mut f: Vec<u8>, id: u16) -> Vec<u8> {
    let (more, offset) = (f[14 + 6] & 0x20 != 0, u16::from_be_bytes([f[14 + 6] & 0x1f, f[14 + 7]]));
    frames::set_fragment(&mut f[14..], id, more, offset);
    f
}

#[test]
fn later_fragments_get_their_first_fragment_s_translation() {
    let mut h = harness();
    // The first fragment carries the UDP header: translated like any packet
    // (its L4 checksum covers the whole datagram, so only the IP header
    // checksum is checked against the frame built from scratch).
    let first = with_id(fragment(udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (HOST, 8053)), true, 0), 0x77);
    let want = with_id(fragment(udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (C1, 53)), true, 0), 0x77);
    expect(&h, HookId::UplinkIngress.program(), &first, &want);
    // A later fragment of the same datagram has no ports: it gets the
    // addresses its first fragment got, and nothing else changes.
    let later = |src: [u8; 4], dst: [u8; 4], id: u16| {
        let mut f = fragment(udp_frame(HOST_MAC, CLIENT_MAC, (src, 5000), (dst, 8053)), false, 4);
        f[14 + 20..].fill(0xab);
        with_id(f, id)
    };
    expect(&h, HookId::UplinkIngress.program(), &later(CLIENT, HOST, 0x77), &later(CLIENT, C1, 0x77));
    // One of a datagram whose first fragment was not translated here is
    // left to the host, untouched.
    let stray = later(CLIENT, HOST, 0x78);
    expect(&h, HookId::UplinkIngress.program(), &stray, &stray);
    // The container's fragmented answer leaves as the published address's.
    container(&mut h, C1, C1_MAC);
    let answer = |src: ([u8; 4], u16), more: bool, offset: u16| {
        let mut f = fragment(udp_frame(HOST_MAC, C1_MAC, src, (CLIENT, 5000)), more, offset);
        if offset != 0 {
            f[14 + 20..].fill(0xcd);
        }
        with_id(f, 0x99)
    };
    expect(&h, HookId::VethIngress.program(), &answer((C1, 53), true, 0), &answer((HOST, 8053), true, 0));
    expect(&h, HookId::VethIngress.program(), &answer((C1, 53), false, 4), &answer((HOST, 8053), false, 4));
}

#[test]
fn the_host_s_icmp_errors_quote_a_published_flow_as_the_client_sent_it() {
    let h = harness();
    // The client's datagram, translated on the way in; the host cannot
    // forward it (its TTL runs out) and says so, quoting what it routed.
    let sent = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (HOST, 8053));
    let routed = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5000), (C1, 53));
    expect(&h, HookId::UplinkIngress.program(), &sent, &routed);
    let error = |quoted_frame: &[u8]| {
        let icmp = frames::icmp_error(11, 0, 0, &quoted_frame[14..]);
        frames::eth(CLIENT_MAC, HOST_MAC, ETH_P_IPV4, &frames::ipv4(HOST, CLIENT, 1, &[], &icmp))
    };
    // It leaves quoting the datagram as the client sent it (the container's
    // address never leaves), the host's own source kept.
    expect(&h, HookId::UplinkEgress.program(), &error(&routed), &error(&sent));
    // About a flow nobody tracks: untouched.
    let other = udp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 5001), (C2, 53));
    expect(&h, HookId::UplinkEgress.program(), &error(&other), &error(&other));
}

#[test]
fn a_new_connection_on_a_reused_tuple_starts_over() {
    let mut h = harness();
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40100), (HOST, 8080), 0x02, &[]);
    let rst = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40100), (HOST, 8080), 0x04, &[]);
    let state = |h: &mut PacketHarness| {
        let key = netpath_common::CtKey4::new(CLIENT, HOST, 40100u16.to_be(), 8080u16.to_be(), IPPROTO_TCP);
        h.dp.ct_entries().unwrap().into_iter().find(|(k, _)| *k == key).map(|(_, e)| e.state).unwrap()
    };
    h.run(HookId::UplinkIngress.program(), &syn).unwrap();
    h.run(HookId::UplinkIngress.program(), &rst).unwrap();
    assert_eq!(state(&mut h), netpath_common::CtState::Reset as u8);
    // An RST ends both directions (the reply entry gets the short timeout).
    let reply = netpath_common::CtKey4::new(C1, CLIENT, 80u16.to_be(), 40100u16.to_be(), IPPROTO_TCP);
    let r = h.dp.ct_entries().unwrap().into_iter().find(|(k, _)| *k == reply).map(|(_, e)| e.state);
    assert_eq!(r, Some(netpath_common::CtState::Reset as u8));
    // The client reuses its port for a new connection: not a 10 s leftover.
    expect(
        &h,
        HookId::UplinkIngress.program(),
        &syn,
        &tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40100), (C1, 80), 0x02, &[]),
    );
    assert_eq!(state(&mut h), netpath_common::CtState::New as u8);
}

#[test]
fn fins_both_ways_close_the_flow_with_the_short_timeout() {
    let mut h = harness();
    container(&mut h, C1, C1_MAC);
    let orig = CtKey4::new(CLIENT, HOST, 40200u16.to_be(), 8080u16.to_be(), IPPROTO_TCP);
    let reply = CtKey4::new(C1, CLIENT, 80u16.to_be(), 40200u16.to_be(), IPPROTO_TCP);
    let states = |h: &mut PacketHarness| {
        let entries = h.dp.ct_entries().unwrap();
        let state = |k: &CtKey4| entries.iter().find(|(x, _)| x == k).map(|(_, e)| e.state).unwrap();
        (state(&orig), state(&reply))
    };
    let client = |flags: u8| tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40200), (HOST, 8080), flags, &[]);
    let server = |flags: u8| tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (CLIENT, 40200), flags, &[]);
    fixtures::pass(&h, HookId::UplinkIngress.program(), &client(0x02));
    fixtures::pass(&h, HookId::VethIngress.program(), &server(0x12));
    fixtures::pass(&h, HookId::UplinkIngress.program(), &client(0x10));
    let (closing, closed) = (netpath_common::CtState::Closing as u8, netpath_common::CtState::Closed as u8);
    // The client half-closes: the server may go on sending.
    fixtures::pass(&h, HookId::UplinkIngress.program(), &client(0x11));
    assert_eq!(states(&mut h), (closing, netpath_common::CtState::Established as u8));
    fixtures::pass(&h, HookId::VethIngress.program(), &server(0x10));
    // The server's FIN closes both halves, with the short timeout.
    fixtures::pass(&h, HookId::VethIngress.program(), &server(0x11));
    assert_eq!(states(&mut h), (closed, closed));
    let now = netpath_userspace::datapath::monotonic_ns();
    let timeouts = netpath_common::CtTimeouts::default();
    for (_, e) in h.dp.ct_entries().unwrap().iter().filter(|(k, _)| *k == orig || *k == reply) {
        assert!(e.expires_ns <= now + timeouts.tcp_closed as u64 * 1_000_000_000, "closed: {e:?}");
    }
    // The last ACK keeps it closed.
    fixtures::pass(&h, HookId::UplinkIngress.program(), &client(0x10));
    assert_eq!(states(&mut h), (closed, closed));
}

/// The datapath's clock (netpath-ebpf's `clock`: the coarse clock, kept per
/// CPU and read again once the tick moves on) gives expiries on the
/// agent's clock, a tick or two late at most, and moves with it: a SYN
/// retransmitted a second and a half later pushes the flow's expiry on
/// (a reading kept past its tick would leave it where it was).
#[test]
fn expiries_follow_the_monotonic_clock_across_ticks() {
    let mut h = harness();
    container(&mut h, C1, C1_MAC);
    let orig = CtKey4::new(CLIENT, HOST, 40400u16.to_be(), 8080u16.to_be(), IPPROTO_TCP);
    let syn = tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40400), (HOST, 8080), 0x02, &[]);
    let new_secs = netpath_common::CtTimeouts::default().tcp_new as u64 * 1_000_000_000;
    // Two ticks at the slowest tick rate (HZ=100), and some room.
    let late = 50_000_000;
    let expiry_of_syn_at = |h: &mut PacketHarness| {
        let before = netpath_userspace::datapath::monotonic_ns();
        fixtures::pass(h, HookId::UplinkIngress.program(), &syn);
        let after = netpath_userspace::datapath::monotonic_ns();
        let entries = h.dp.ct_entries().unwrap();
        let expires = entries.iter().find(|(k, _)| *k == orig).map(|(_, e)| e.expires_ns).unwrap();
        assert!(
            expires + late >= before + new_secs && expires <= after + new_secs,
            "expiry {expires} not {new_secs} ns after a time in {before}..{after}"
        );
        expires
    };
    let first = expiry_of_syn_at(&mut h);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = expiry_of_syn_at(&mut h);
    assert!(second >= first + 1_000_000_000, "the expiry did not move on: {first} -> {second}");
}

#[test]
fn an_answered_syn_keeps_the_handshake_timeout_until_the_ack() {
    let mut h = harness();
    container(&mut h, C1, C1_MAC);
    let orig = CtKey4::new(CLIENT, HOST, 40300u16.to_be(), 8080u16.to_be(), IPPROTO_TCP);
    let reply = CtKey4::new(C1, CLIENT, 80u16.to_be(), 40300u16.to_be(), IPPROTO_TCP);
    let halves = |h: &mut PacketHarness| {
        let entries = h.dp.ct_entries().unwrap();
        let half = |k: &CtKey4| entries.iter().find(|(x, _)| x == k).map(|(_, e)| (e.state, e.expires_ns)).unwrap();
        [half(&orig), half(&reply)]
    };
    let client = |flags: u8| tcp_frame(HOST_MAC, CLIENT_MAC, (CLIENT, 40300), (HOST, 8080), flags, &[]);
    let server = |flags: u8| tcp_frame(HOST_MAC, C1_MAC, (C1, 80), (CLIENT, 40300), flags, &[]);
    let timeouts = netpath_common::CtTimeouts::default();
    let secs = |s: u32| s as u64 * 1_000_000_000;
    fixtures::pass(&h, HookId::UplinkIngress.program(), &client(0x02));
    // The container answers; nobody completes the handshake (a SYN flood):
    // both halves stay new, under the short handshake timeout.
    fixtures::pass(&h, HookId::VethIngress.program(), &server(0x12));
    let now = netpath_userspace::datapath::monotonic_ns();
    for (state, expires) in halves(&mut h) {
        assert_eq!(state, netpath_common::CtState::New as u8);
        assert!(expires <= now + secs(timeouts.tcp_new), "handshake timeout: {expires} vs {now}");
    }
    // The client's ACK completes it: the whole connection is established.
    fixtures::pass(&h, HookId::UplinkIngress.program(), &client(0x10));
    let now = netpath_userspace::datapath::monotonic_ns();
    for (state, expires) in halves(&mut h) {
        assert_eq!(state, netpath_common::CtState::Established as u8);
        assert!(expires > now + secs(timeouts.tcp_established) - secs(60), "established timeout");
    }
}
