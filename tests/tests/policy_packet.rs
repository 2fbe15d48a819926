//! Packet tests of per-container policy: each precedence case, defaults,
//! icc, and the established-flow path, through veth_ingress (out) and
//! veth_egress (in) under BPF_PROG_TEST_RUN.

use netpath_common::{
    config::{CFG_F_NO_ICC, CFG_F_ROUTED},
    container::{CONTAINER_F_DEFAULT_DENY_IN, CONTAINER_F_DEFAULT_DENY_OUT},
    ContainerEntry, CtKey4, CtScope, DropReason, HookId,
};
use netpath_tests::{
    fixtures::{self, C1, C1_MAC, C2, GATEWAY, GATEWAY_MAC, TC_ACT_OK, TC_ACT_SHOT},
    frames::{self, ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
};
use netpath_userspace::policy::{self, parse_cidr, parse_filter, Action, Direction, Rule};

const C1_ID: u32 = 7;

fn harness(container_flags: u16, cfg_flags: u32, rules: &[(Action, Direction, &str, &str)]) -> PacketHarness {
    // Routed, so that packets from outside reach the container straight
    // (as through a published port) and only the policy decides.
    let mut h = fixtures::harness(&fixtures::config(cfg_flags | CFG_F_ROUTED));
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, C1_ID, container_flags)).unwrap();
    let rules: Vec<Rule> = rules
        .iter()
        .map(|(action, direction, cidr, filter)| {
            let (proto, ports) = parse_filter(filter).unwrap();
            Rule { action: *action, direction: *direction, cidr: parse_cidr(cidr).unwrap(), proto, ports }
        })
        .collect();
    fixtures::write_rules4(&mut h, C1_ID, &rules).unwrap();
    h
}

/// A packet from c1 (through veth_ingress) to `dst`.
fn from_c1(dst: [u8; 4], proto: u8, dport: u16) -> Vec<u8> {
    let l4 = match proto {
        IPPROTO_TCP => frames::tcp(C1, dst, 40000, dport, 0x02, b""),
        IPPROTO_UDP => frames::udp(C1, dst, 40000, dport, b"x"),
        _ => frames::icmp_echo(9, 1, b"x"),
    };
    frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &frames::ipv4(C1, dst, proto, &[], &l4))
}

/// A packet to c1 (through veth_egress) from `src`.
fn to_c1(src: [u8; 4], proto: u8, dport: u16) -> Vec<u8> {
    let l4 = match proto {
        IPPROTO_TCP => frames::tcp(src, C1, 41000, dport, 0x02, b""),
        _ => frames::udp(src, C1, 41000, dport, b"x"),
    };
    frames::eth(C1_MAC, GATEWAY_MAC, ETH_P_IPV4, &frames::ipv4(src, C1, proto, &[], &l4))
}

fn verdict(h: &PacketHarness, program: &str, frame: &[u8]) -> u32 {
    let r = h.run(program, frame).unwrap();
    assert_eq!(r.data, frame, "policy never rewrites");
    r.verdict
}

fn out(h: &PacketHarness, dst: [u8; 4], proto: u8, port: u16) -> u32 {
    verdict(h, HookId::VethIngress.program(), &from_c1(dst, proto, port))
}

fn inbound(h: &PacketHarness, src: [u8; 4], proto: u8, port: u16) -> u32 {
    verdict(h, HookId::VethEgress.program(), &to_c1(src, proto, port))
}

use Action::{Allow, Deny};
use Direction::{In, Out};

#[test]
fn the_longest_prefix_wins() {
    let h = harness(0, 0, &[(Deny, Out, "192.0.0.0/8", "any"), (Allow, Out, "192.168.0.0/16", "any")]);
    assert_eq!(out(&h, [192, 168, 1, 1], IPPROTO_TCP, 80), TC_ACT_OK);
    assert_eq!(out(&h, [192, 1, 1, 1], IPPROTO_TCP, 80), TC_ACT_SHOT);
    assert_eq!(out(&h, [8, 8, 8, 8], IPPROTO_TCP, 80), TC_ACT_OK, "no rule: default allow");
}

#[test]
fn shorter_prefixes_apply_where_the_longer_ones_do_not_match() {
    let h = harness(0, 0, &[(Deny, Out, "192.0.0.0/8", "any"), (Allow, Out, "192.168.0.0/16", "udp")]);
    assert_eq!(out(&h, [192, 168, 1, 1], IPPROTO_UDP, 53), TC_ACT_OK);
    assert_eq!(out(&h, [192, 168, 1, 1], IPPROTO_TCP, 80), TC_ACT_SHOT);
}

#[test]
fn on_equal_prefixes_a_port_beats_no_port() {
    let h = harness(0, 0, &[(Deny, Out, "0.0.0.0/0", "any"), (Allow, Out, "0.0.0.0/0", "tcp/80-81")]);
    assert_eq!(out(&h, [1, 2, 3, 4], IPPROTO_TCP, 80), TC_ACT_OK);
    assert_eq!(out(&h, [1, 2, 3, 5], IPPROTO_TCP, 82), TC_ACT_SHOT);
    assert_eq!(out(&h, [1, 2, 3, 6], IPPROTO_UDP, 80), TC_ACT_SHOT);
}

#[test]
fn then_deny_beats_allow() {
    let h = harness(0, 0, &[(Allow, In, "198.18.0.0/24", "tcp"), (Deny, In, "198.18.0.0/24", "any")]);
    assert_eq!(inbound(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_SHOT);
    let h = harness(0, 0, &[(Allow, In, "198.18.0.0/24", "tcp/80"), (Deny, In, "198.18.0.0/24", "tcp/80-90")]);
    assert_eq!(inbound(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_SHOT, "both name ports: deny wins");
}

#[test]
fn icmp_rules_match_message_types() {
    let h = harness(0, 0, &[(Deny, Out, "0.0.0.0/0", "icmp"), (Allow, Out, "0.0.0.0/0", "icmp/8")]);
    assert_eq!(out(&h, [1, 1, 1, 1], IPPROTO_ICMP, 0), TC_ACT_OK, "echo request (type 8) allowed");
}

#[test]
fn defaults_per_direction() {
    let mut h = harness(CONTAINER_F_DEFAULT_DENY_IN, 0, &[(Allow, In, "10.0.0.3", "any")]);
    assert_eq!(inbound(&h, C2, IPPROTO_TCP, 80), TC_ACT_OK);
    assert_eq!(inbound(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_SHOT);
    assert_eq!(out(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_OK, "out stays allow");
    let s = fixtures::container_counters(&mut h);
    assert_eq!(s.drops[DropReason::Policy as usize], 1, "the drop is counted for the container, as policy");
    let h = harness(CONTAINER_F_DEFAULT_DENY_OUT, 0, &[]);
    assert_eq!(out(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_SHOT);
}

#[test]
fn established_flows_pass_on_the_conntrack_hit_both_ways() {
    let mut h = harness(CONTAINER_F_DEFAULT_DENY_IN, 0, &[]);
    // c1 opens a flow out (allowed); the reply comes in past default-deny.
    assert_eq!(out(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_OK);
    let reply = {
        let l4 = frames::tcp([198, 18, 0, 2], C1, 80, 40000, 0x12, b"");
        frames::eth(C1_MAC, GATEWAY_MAC, ETH_P_IPV4, &frames::ipv4([198, 18, 0, 2], C1, IPPROTO_TCP, &[], &l4))
    };
    assert_eq!(verdict(&h, HookId::VethEgress.program(), &reply), TC_ACT_OK, "replies of an allowed flow pass");
    // A verdict stands for the flow even when the rules change, until the
    // container's policy epoch moves on (see the next test).
    let rules =
        vec![Rule { action: Deny, direction: Out, cidr: parse_cidr("0.0.0.0/0").unwrap(), proto: None, ports: None }];
    let (cidr, entry) = policy::compile(&rules, Out, None).unwrap().entries.into_iter().next().unwrap();
    let (len, key) = policy::lpm_key4(C1_ID, Out, &cidr);
    h.dp.set_policy4(len, &key, &entry).unwrap();
    assert_eq!(out(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_OK);
    assert_eq!(out(&h, [198, 18, 0, 9], IPPROTO_TCP, 80), TC_ACT_SHOT, "a new flow meets the new rule");
}

#[test]
fn icc_off_blocks_direct_container_traffic_only() {
    let h = harness(0, CFG_F_NO_ICC, &[]);
    assert_eq!(out(&h, C2, IPPROTO_TCP, 80), TC_ACT_SHOT);
    assert_eq!(out(&h, GATEWAY, IPPROTO_TCP, 8080), TC_ACT_OK, "the gateway (published ports) stays reachable");
    assert_eq!(out(&h, [198, 18, 0, 2], IPPROTO_TCP, 80), TC_ACT_OK);
}

/// A TCP segment (SYN-ACK) between c1 and `remote`, as `program` sees it.
fn segment(h: &PacketHarness, from_c1: bool, remote: [u8; 4], c1_port: u16, remote_port: u16) -> u32 {
    let (program, frame) = if from_c1 {
        let l4 = frames::tcp(C1, remote, c1_port, remote_port, 0x12, b"");
        (
            HookId::VethIngress,
            frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &frames::ipv4(C1, remote, IPPROTO_TCP, &[], &l4)),
        )
    } else {
        let l4 = frames::tcp(remote, C1, remote_port, c1_port, 0x12, b"");
        (
            HookId::VethEgress,
            frames::eth(C1_MAC, GATEWAY_MAC, ETH_P_IPV4, &frames::ipv4(remote, C1, IPPROTO_TCP, &[], &l4)),
        )
    };
    verdict(h, program.program(), &frame)
}

#[test]
fn a_policy_change_re_judges_established_flows_at_their_next_packet() {
    let mut h = harness(0, 0, &[]);
    let (kept, cut) = ([198, 18, 0, 2], [198, 18, 0, 9]);
    assert_eq!(out(&h, kept, IPPROTO_TCP, 80), TC_ACT_OK);
    assert_eq!(out(&h, cut, IPPROTO_TCP, 80), TC_ACT_OK);
    // And a flow `cut` started to c1 (judged by c1's inbound rules).
    assert_eq!(inbound(&h, cut, IPPROTO_TCP, 22), TC_ACT_OK);
    let verdict_key = |remote: [u8; 4]| {
        CtKey4::new(C1, remote, 40000u16.to_be(), 80u16.to_be(), IPPROTO_TCP).in_scope(CtScope::PolicyOut)
    };
    let reply_key = |remote: [u8; 4]| verdict_key(remote).reversed().in_scope(CtScope::PolicyIn);
    assert!(h.dp.ct_get4(&verdict_key(cut)).unwrap().is_some());

    // The change as the agent writes it: the rule, then a new policy epoch
    // for c1. Nothing walks conntrack.
    let rules = vec![Rule {
        action: Deny,
        direction: Out,
        cidr: parse_cidr("198.18.0.9/32").unwrap(),
        proto: None,
        ports: None,
    }];
    let (cidr, entry) = policy::compile(&rules, Out, None).unwrap().entries.into_iter().next().unwrap();
    let (len, key) = policy::lpm_key4(C1_ID, Out, &cidr);
    h.dp.set_policy4(len, &key, &entry).unwrap();
    let c1 = ContainerEntry { policy_epoch: 1, ..fixtures::container(C1, C1_MAC, C1_ID, 0) };
    h.dp.set_container(TEST_IFINDEX, &c1).unwrap();
    assert!(h.dp.ct_get4(&verdict_key(cut)).unwrap().is_some(), "nothing is cut before a packet comes");

    // The denied flow's next packet, from either end, is dropped and its
    // verdict goes (both halves).
    assert_eq!(segment(&h, false, cut, 40000, 80), TC_ACT_SHOT, "the reply of a now denied flow");
    assert!(h.dp.ct_get4(&verdict_key(cut)).unwrap().is_none());
    assert!(h.dp.ct_get4(&reply_key(cut)).unwrap().is_none());
    assert_eq!(segment(&h, true, cut, 40000, 80), TC_ACT_SHOT, "cut whichever end sends next");
    // The flow the rules still allow passes; both halves confirmed.
    assert_eq!(segment(&h, false, kept, 40000, 80), TC_ACT_OK);
    for k in [verdict_key(kept), reply_key(kept)] {
        assert_eq!(h.dp.ct_get4(&k).unwrap().unwrap().policy_epoch, 1, "{k:?}");
    }
    // The flow `cut` started in: judged by the inbound rules, which allow
    // it, though its reply goes out to a now denied address.
    assert_eq!(segment(&h, true, cut, 22, 41000), TC_ACT_OK);
    let s = fixtures::container_counters(&mut h);
    assert_eq!(s.drops[DropReason::Policy as usize], 2);
}
