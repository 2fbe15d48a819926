//! Packet tests of masquerade: SNAT on the uplink's egress, the reverse on
//! its ingress, ICMP echo identifiers, port collisions and exhaustion, and
//! ICMP errors whose quoted packet is translated back, byte for byte.

use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_NO_ICC},
    conntrack::CT_F_MASQ_PENDING,
    CtKey4, CtScope, DatapathConfig, DropReason, HookId,
};
use netpath_tests::{
    fixtures::{self, hex, pass, C1, C1_MAC, C2, C2_MAC, GATEWAY_MAC, HOST, HOST_MAC, SERVER, TC_ACT_SHOT},
    frames::{self, ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
};

/// A router on the way out, which sends ICMP errors.
const ROUTER: [u8; 4] = [198, 18, 0, 2];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// A small masquerade range, so that tests can exhaust it.
const PORTS: (u16, u16) = (20000, 20003);

/// The settings with `flags`, the masquerade address and the small range.
fn config(flags: u32) -> DatapathConfig {
    DatapathConfig { masq_addr4: HOST, masq_port_min: PORTS.0, masq_port_max: PORTS.1, ..fixtures::config(flags) }
}

fn harness(flags: u32) -> PacketHarness {
    let mut h = fixtures::harness(&config(flags));
    h.dp.sync_host_addrs4(&[(HOST, 2)]).unwrap();
    h
}

fn ip_frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    frames::eth(NEXT_HOP_MAC, HOST_MAC, ETH_P_IPV4, &frames::ipv4(src, dst, proto, &[], l4))
}

fn tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    ip_frame(src.0, dst.0, IPPROTO_TCP, &frames::tcp(src.0, dst.0, src.1, dst.1, flags, b"data"))
}

fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    ip_frame(src.0, dst.0, IPPROTO_UDP, &frames::udp(src.0, dst.0, src.1, dst.1, b"probe"))
}

fn echo(src: [u8; 4], dst: [u8; 4], kind: u8, id: u16) -> Vec<u8> {
    let mut m = frames::icmp_echo(id, 7, b"ping");
    m[0] = kind;
    m[2] = 0;
    m[3] = 0;
    let c = frames::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ip_frame(src, dst, IPPROTO_ICMP, &m)
}

fn src_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[34], frame[35]])
}

#[test]
fn tcp_is_masqueraded_and_replies_are_translated_back() {
    let h = harness(CFG_F_MASQUERADE);
    let syn = tcp((C1, 40000), (SERVER, 80), 0x02);
    let out = pass(&h, HookId::UplinkEgress.program(), &syn);
    let port = src_port(&out);
    assert!((PORTS.0..=PORTS.1).contains(&port), "allocated {port}");
    assert_eq!(hex(&out), hex(&tcp((HOST, port), (SERVER, 80), 0x02)));

    let synack = tcp((SERVER, 80), (HOST, port), 0x12);
    let back = pass(&h, HookId::UplinkIngress.program(), &synack);
    assert_eq!(hex(&back), hex(&tcp((SERVER, 80), (C1, 40000), 0x12)));
    // The next packet of the flow reuses the port.
    let ack = tcp((C1, 40000), (SERVER, 80), 0x10);
    assert_eq!(hex(&pass(&h, HookId::UplinkEgress.program(), &ack)), hex(&tcp((HOST, port), (SERVER, 80), 0x10)));
}

/// c1's TCP segment to the server, as its veth sees it.
fn from_c1(flags: u8) -> Vec<u8> {
    let seg = frames::tcp(C1, SERVER, 40000, 80, flags, b"data");
    frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &frames::ipv4(C1, SERVER, IPPROTO_TCP, &[], &seg))
}

/// The reply, and c1's next packet, pass on the flow's two entries and are
/// translated (the next packet on c1's veth already), adding none.
fn replies_and_next_packets_pass(h: &mut PacketHarness, port: u16) {
    let back = pass(h, HookId::UplinkIngress.program(), &tcp((SERVER, 80), (HOST, port), 0x12));
    assert_eq!(hex(&back), hex(&tcp((SERVER, 80), (C1, 40000), 0x12)));
    let at_c1 = frames::eth(C1_MAC, GATEWAY_MAC, ETH_P_IPV4, &back[14..]);
    pass(h, HookId::VethEgress.program(), &at_c1);
    let ack = pass(h, HookId::VethIngress.program(), &from_c1(0x10));
    assert_eq!(src_port(&ack), port, "translated on c1's veth already");
    assert_eq!(h.dp.ct_entries().unwrap().len(), 2);
}

#[test]
fn a_masqueraded_flow_is_two_entries_that_carry_the_rewrite_and_the_verdict() {
    let mut h = harness(CFG_F_MASQUERADE);
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, 5, 0)).unwrap();
    // c1's veth judges the SYN of a flow masquerade will translate: the
    // verdict waits on the flow's NAT entry, its own peer, for the uplink.
    pass(&h, HookId::VethIngress.program(), &from_c1(0x02));
    let flow = CtKey4::new(C1, SERVER, 40000u16.to_be(), 80u16.to_be(), IPPROTO_TCP);
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 1, "one entry, no verdict pair: {ct:?}");
    let (key, e) = ct[0];
    assert_eq!((key, e.peer), (flow, flow), "the flow's own tuple, in the NAT scope");
    assert!(e.flags & CT_F_MASQ_PENDING != 0 && e.verdict_of(5) && e.packets == 1, "{e:?}");
    // The uplink completes it with a port and inserts the reply half.
    let port = src_port(&pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 40000), (SERVER, 80), 0x02)));
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 2, "one entry per direction: {ct:?}");
    assert!(
        ct.iter().all(|(k, e)| k.scope() == Some(CtScope::Nat) && e.verdict_of(5) && e.flags & CT_F_MASQ_PENDING == 0),
        "{ct:?}"
    );
    let stats = h.dp.ct_stats().unwrap();
    assert_eq!((stats.inserts, stats.removals), (2, 0), "two inserts, nothing deleted");
    replies_and_next_packets_pass(&mut h, port);
}

#[test]
fn a_verdict_pair_kept_before_masquerade_was_on_is_taken_over() {
    let mut h = harness(0);
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, 5, 0)).unwrap();
    // Without masquerade, c1's veth keeps the verdict as a pair of its own.
    pass(&h, HookId::VethIngress.program(), &from_c1(0x02));
    let ct = h.dp.ct_entries().unwrap();
    assert!(ct.len() == 2 && ct.iter().all(|(k, _)| k.scope() != Some(CtScope::Nat)), "the verdict pair: {ct:?}");
    // Masquerade comes on: the translation takes the verdict over, and the
    // pair goes.
    h.dp.write_config(&config(CFG_F_MASQUERADE)).unwrap();
    let port = src_port(&pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 40000), (SERVER, 80), 0x02)));
    let ct = h.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 2, "one entry per direction: {ct:?}");
    assert!(ct.iter().all(|(k, e)| k.scope() == Some(CtScope::Nat) && e.verdict_of(5)), "{ct:?}");
    replies_and_next_packets_pass(&mut h, port);
}

#[test]
fn with_icc_off_a_masqueraded_flow_opens_no_way_to_another_container() {
    let mut h = harness(CFG_F_MASQUERADE | CFG_F_NO_ICC);
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, 5, 0)).unwrap();
    // c1's flow to the server, and the same tuple framed to c2's MAC (the
    // bridge forwards by MAC): the flow's NAT entry is no answer to a
    // container, pending or completed.
    let to_c2_mac = |flags: u8| {
        let mut frame = from_c1(flags);
        frame[..6].copy_from_slice(&C2_MAC);
        frame
    };
    pass(&h, HookId::VethIngress.program(), &from_c1(0x02));
    assert_eq!(h.run(HookId::VethIngress.program(), &to_c2_mac(0x10)).unwrap().verdict, TC_ACT_SHOT, "pending");
    pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 40000), (SERVER, 80), 0x02));
    assert_eq!(h.run(HookId::VethIngress.program(), &to_c2_mac(0x10)).unwrap().verdict, TC_ACT_SHOT, "completed");
    // The flow itself goes on, through the gateway.
    pass(&h, HookId::VethIngress.program(), &from_c1(0x10));
}

#[test]
fn a_port_inside_the_range_is_kept_and_udp_works() {
    let h = harness(CFG_F_MASQUERADE);
    let out = pass(&h, HookId::UplinkEgress.program(), &udp((C1, 20002), (SERVER, 53)));
    assert_eq!(hex(&out), hex(&udp((HOST, 20002), (SERVER, 53))));
    let back = pass(&h, HookId::UplinkIngress.program(), &udp((SERVER, 53), (HOST, 20002)));
    assert_eq!(hex(&back), hex(&udp((SERVER, 53), (C1, 20002))));
}

#[test]
fn icmp_echo_identifier_is_translated_like_a_port() {
    let h = harness(CFG_F_MASQUERADE);
    let out = pass(&h, HookId::UplinkEgress.program(), &echo(C1, SERVER, 8, 0x1234));
    let id = u16::from_be_bytes([out[14 + 20 + 4], out[14 + 20 + 5]]);
    assert!((PORTS.0..=PORTS.1).contains(&id), "identifier {id}");
    assert_eq!(hex(&out), hex(&echo(HOST, SERVER, 8, id)));
    let back = pass(&h, HookId::UplinkIngress.program(), &echo(SERVER, HOST, 0, id));
    assert_eq!(hex(&back), hex(&echo(SERVER, C1, 0, 0x1234)));
}

#[test]
fn same_source_port_from_two_containers_gets_two_ports() {
    let h = harness(CFG_F_MASQUERADE);
    let a = pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 20001), (SERVER, 80), 0x02));
    let b = pass(&h, HookId::UplinkEgress.program(), &tcp((C2, 20001), (SERVER, 80), 0x02));
    assert_eq!(src_port(&a), 20001);
    assert_ne!(src_port(&b), 20001);
    // Each reply finds its own container.
    let back_b = pass(&h, HookId::UplinkIngress.program(), &tcp((SERVER, 80), (HOST, src_port(&b)), 0x12));
    assert_eq!(hex(&back_b), hex(&tcp((SERVER, 80), (C2, 20001), 0x12)));
    let back_a = pass(&h, HookId::UplinkIngress.program(), &tcp((SERVER, 80), (HOST, 20001), 0x12));
    assert_eq!(hex(&back_a), hex(&tcp((SERVER, 80), (C1, 20001), 0x12)));
}

#[test]
fn exhausted_range_drops_new_flows_only() {
    let mut h = harness(CFG_F_MASQUERADE);
    let mut ports = vec![];
    for i in 0..4 {
        let out = pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 41000 + i), (SERVER, 80), 0x02));
        ports.push(src_port(&out));
    }
    ports.sort();
    assert_eq!(ports, vec![20000, 20001, 20002, 20003], "every port of the range in use");
    let r = h.run(HookId::UplinkEgress.program(), &tcp((C1, 41010), (SERVER, 80), 0x02)).unwrap();
    assert_eq!(r.verdict, TC_ACT_SHOT, "no port left for this destination");
    let stats = fixtures::uplink_counters(&mut h);
    assert_eq!(stats.drops[DropReason::NatExhausted as usize], 1);
    // Existing flows are untouched, another destination still has ports.
    let again = pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 41000), (SERVER, 80), 0x10));
    assert!((20000..=20003).contains(&src_port(&again)));
    pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 41010), (SERVER, 81), 0x02));
}

#[test]
fn without_an_address_new_flows_are_dropped_never_sent_untranslated() {
    // The uplink has no address yet (or the agent is starting).
    let mut h = fixtures::harness(&DatapathConfig {
        masq_port_min: PORTS.0,
        masq_port_max: PORTS.1,
        ..fixtures::config(CFG_F_MASQUERADE)
    });
    let r = h.run(HookId::UplinkEgress.program(), &tcp((C1, 41000), (SERVER, 80), 0x02)).unwrap();
    assert_eq!(r.verdict, TC_ACT_SHOT, "neither 0.0.0.0 nor the private source goes out");
    assert_eq!(fixtures::uplink_counters(&mut h).drops[DropReason::NatUnavailable as usize], 1);
    assert!(h.dp.ct_entries().unwrap().is_empty(), "nothing tracked with a zero address");
}

#[test]
fn published_ports_are_never_handed_out() {
    let mut h = harness(CFG_F_MASQUERADE);
    let key = netpath_common::MappingKey4 { addr: [0; 4], port: 20002u16.to_be(), proto: IPPROTO_TCP, _pad: 0 };
    let value = netpath_common::MappingEntry4 {
        container_addr: C2,
        container_port: 80u16.to_be(),
        _pad: 0,
        id: 9,
        container_ifindex: 1,
    };
    h.dp.set_mapping(&key, &value).unwrap();
    let out = pass(&h, HookId::UplinkEgress.program(), &tcp((C1, 20002), (SERVER, 80), 0x02));
    assert_ne!(src_port(&out), 20002);
}

#[test]
fn other_traffic_is_not_masqueraded() {
    let h = harness(CFG_F_MASQUERADE);
    // The host's own traffic keeps its source.
    let own = tcp((HOST, 45000), (SERVER, 80), 0x02);
    assert_eq!(hex(&pass(&h, HookId::UplinkEgress.program(), &own)), hex(&own));
    // Masquerade off: containers keep their address.
    let h = harness(0);
    let syn = tcp((C1, 40000), (SERVER, 80), 0x02);
    assert_eq!(hex(&pass(&h, HookId::UplinkEgress.program(), &syn)), hex(&syn));
}

/// What an ICMP error about `quoted_frame` from `router` to `dst` looks
/// like; routers quote the IP header and at least 8 bytes after it.
fn error_about(
    router: [u8; 4],
    dst: [u8; 4],
    kind: u8,
    code: u8,
    mtu: u16,
    quoted_frame: &[u8],
    quote: usize,
) -> Vec<u8> {
    let quoted = &quoted_frame[14..(14 + quote).min(quoted_frame.len())];
    ip_frame(router, dst, IPPROTO_ICMP, &frames::icmp_error(kind, code, mtu, quoted))
}

#[test]
fn icmp_errors_reach_the_container_with_the_quoted_packet_translated_back() {
    let h = harness(CFG_F_MASQUERADE);
    // TCP, quoted in full (time exceeded, as traceroute sees it).
    let sent = tcp((C1, 40000), (SERVER, 80), 0x02);
    let on_wire = pass(&h, HookId::UplinkEgress.program(), &sent);
    let err = error_about(ROUTER, HOST, 11, 0, 0, &on_wire, 64);
    let want = error_about(ROUTER, C1, 11, 0, 0, &sent, 64);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &err)), hex(&want));

    // UDP, only 8 bytes quoted (fragmentation needed, for path MTU discovery).
    let sent = udp((C1, 33434), (SERVER, 33434));
    let on_wire = pass(&h, HookId::UplinkEgress.program(), &sent);
    let err = error_about(ROUTER, HOST, 3, 4, 1280, &on_wire, 28);
    let want = error_about(ROUTER, C1, 3, 4, 1280, &sent, 28);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &err)), hex(&want));

    // ICMP echo (ping with a small TTL).
    let sent = echo(C1, SERVER, 8, 0x4242);
    let on_wire = pass(&h, HookId::UplinkEgress.program(), &sent);
    let err = error_about(ROUTER, HOST, 11, 0, 0, &on_wire, 64);
    let want = error_about(ROUTER, C1, 11, 0, 0, &sent, 64);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &err)), hex(&want));

    // An error about a flow nobody tracks passes untouched.
    let stray = error_about(ROUTER, HOST, 3, 3, 0, &udp((HOST, 5000), (SERVER, 53)), 28);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &stray)), hex(&stray));
}

/// `frame` as fragment `(more, offset)` of datagram `id`; a later fragment's
/// payload is replaced by filler (it carries no L4 header).
fn as_fragment(mut f: Vec<u8>, id: u16, more: bool, offset: u16) -> Vec<u8> {
    if offset != 0 {
        f[14 + 20..].fill(0xab);
    }
    frames::set_fragment(&mut f[14..], id, more, offset);
    f
}

#[test]
fn fragmented_datagrams_leave_translated_or_not_at_all() {
    let mut h = harness(CFG_F_MASQUERADE);
    // A big datagram from c1: its first fragment starts the flow.
    let first = as_fragment(udp((C1, 20001), (SERVER, 53)), 0x1234, true, 0);
    let out = pass(&h, HookId::UplinkEgress.program(), &first);
    let port = src_port(&out);
    assert_eq!(hex(&out), hex(&as_fragment(udp((HOST, port), (SERVER, 53)), 0x1234, true, 0)));
    // Its later fragment gets the same source (only the IP header changes).
    let later = as_fragment(udp((C1, 20001), (SERVER, 53)), 0x1234, false, 4);
    let want = as_fragment(udp((HOST, 20001), (SERVER, 53)), 0x1234, false, 4);
    assert_eq!(hex(&pass(&h, HookId::UplinkEgress.program(), &later)), hex(&want));
    // A later fragment whose first one was never translated is dropped,
    // never sent with the private source.
    let lone = as_fragment(udp((C1, 20001), (SERVER, 53)), 0x4321, false, 4);
    let r = h.run(HookId::UplinkEgress.program(), &lone).unwrap();
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(fixtures::uplink_counters(&mut h).drops[DropReason::Fragment as usize], 1);
    // A fragmented answer reaches c1 whole: both fragments translated back.
    let answer =
        |dst: ([u8; 4], u16), more: bool, offset: u16| as_fragment(udp((SERVER, 53), dst), 0x5555, more, offset);
    let got = pass(&h, HookId::UplinkIngress.program(), &answer((HOST, port), true, 0));
    assert_eq!(hex(&got), hex(&answer((C1, 20001), true, 0)));
    let got = pass(&h, HookId::UplinkIngress.program(), &answer((HOST, port), false, 4));
    assert_eq!(hex(&got), hex(&answer((C1, 20001), false, 4)));
}

#[test]
fn a_first_fragment_the_uplink_drops_lets_no_later_fragment_leave_untranslated() {
    let mut h = harness(CFG_F_MASQUERADE);
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, 5, 0)).unwrap();
    // c1's SYN is judged on its veth (the verdict pending on the NAT entry)
    // and lost before the uplink.
    pass(&h, HookId::VethIngress.program(), &from_c1(0x02));
    // A mid-stream first fragment of the flow passes the veth on that
    // verdict, untranslated, and the uplink drops it: it cannot start the
    // translation.
    pass(&h, HookId::VethIngress.program(), &as_fragment(from_c1(0x10), 0x7777, true, 0));
    let first = as_fragment(tcp((C1, 40000), (SERVER, 80), 0x10), 0x7777, true, 0);
    assert_eq!(h.run(HookId::UplinkEgress.program(), &first).unwrap().verdict, TC_ACT_SHOT);
    // Its later fragment follows it through the veth, and leaves the
    // uplink translated or not at all: never with c1's source.
    pass(&h, HookId::VethIngress.program(), &as_fragment(from_c1(0x10), 0x7777, false, 4));
    let later = as_fragment(tcp((C1, 40000), (SERVER, 80), 0x10), 0x7777, false, 4);
    let r = h.run(HookId::UplinkEgress.program(), &later).unwrap();
    assert_eq!(r.verdict, TC_ACT_SHOT, "left as {}", hex(&r.data));
}

#[test]
fn misses_on_masquerade_ports_are_dropped_not_handed_to_the_host() {
    let mut h = harness(CFG_F_MASQUERADE);
    // A reply on a masquerade port whose flow is gone (expired, flushed):
    // the host would reset it while the port can go to another flow.
    let stale = tcp((SERVER, 80), (HOST, 20002), 0x10);
    let r = h.run(HookId::UplinkIngress.program(), &stale).unwrap();
    assert_eq!(r.verdict, TC_ACT_SHOT);
    let r = h.run(HookId::UplinkIngress.program(), &udp((SERVER, 53), (HOST, 20003))).unwrap();
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(fixtures::uplink_counters(&mut h).drops[DropReason::NoFlow as usize], 2);
    // Outside the range, or to another address, it is the host's.
    let other = tcp((SERVER, 80), (HOST, 40000), 0x10);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &other)), hex(&other));
    let other = tcp((SERVER, 80), ([198, 18, 0, 9], 20002), 0x10);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &other)), hex(&other));
    // ICMP echo replies are not ported flows of the host's sockets: they pass.
    let pong = echo(SERVER, HOST, 0, 20002);
    assert_eq!(hex(&pass(&h, HookId::UplinkIngress.program(), &pong)), hex(&pong));
}
