//! Packet tests of the uplink guard (`netpath-ebpf/src/uplink_guard.rs`):
//! denied sources and guarded ports, judged by `uplink_xdp` and, when no
//! XDP is attached, by `uplink_ingress` before conntrack and NAT. Every
//! case runs on both hooks: the verdict, the frame (untouched, or
//! translated exactly as a frame built from scratch), and the counters.

use netpath_common::{
    config::{CFG_F_DENIED_SOURCES, CFG_F_GUARDED_PORTS, CFG_F_UPLINK_XDP},
    uplink_guard::GuardedPorts,
    DropReason, HookId, MappingEntry4, MappingKey4,
};
use netpath_tests::{
    fixtures::{
        self, expect, hex, C1, CLIENT, CLIENT_MAC, GATEWAY, HOST, HOST_MAC, SERVER, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP,
        XDP_PASS,
    },
    frames::{self, ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{PacketHarness, TEST_IFINDEX},
};

/// A second host address, with a mapping bound to it alone.
const BOUND: [u8; 4] = [198, 18, 0, 10];
/// The denied prefix 203.0.113.0/24 holds SERVER (203.0.113.2); one /32
/// beside it.
const DENIED_NET: [u8; 4] = [203, 0, 113, 0];
const DENIED_HOST: [u8; 4] = [192, 0, 2, 66];
const ALLOWED: [u8; 4] = [203, 0, 114, 1];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The two hooks that judge first, with their pass and drop verdicts.
#[derive(Clone, Copy, Debug)]
enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Hook::Xdp => HookId::UplinkXdp.program(),
            Hook::Tc => HookId::UplinkIngress.program(),
        }
    }
    fn verdicts(self) -> (u32, u32) {
        match self {
            Hook::Xdp => (XDP_PASS, XDP_DROP),
            Hook::Tc => (TC_ACT_OK, TC_ACT_SHOT),
        }
    }
}

const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

/// The sandbox as the agent sets it up with
/// `guarded_ports = ["8000-8999/tcp", "5000-5999/udp"]` and
/// `denied_sources = ["203.0.113.0/24", "192.0.2.66"]`: host addresses, a
/// wildcard TCP mapping 8080 -> C1:80, a UDP one 5353 -> C1:53, and 8082
/// bound to BOUND only. `extra_flags` adds CFG_F_UPLINK_XDP where needed.
fn harness(extra_flags: u32) -> PacketHarness {
    let mut h = fixtures::harness(&fixtures::config(CFG_F_GUARDED_PORTS | CFG_F_DENIED_SOURCES | extra_flags));
    h.dp.sync_host_addrs4(&[(HOST, 2), (BOUND, 2), (GATEWAY, 3)]).unwrap();
    let mut ports = GuardedPorts::default();
    ports.add(IPPROTO_TCP, 8000, 8999);
    ports.add(IPPROTO_UDP, 5000, 5999);
    h.dp.write_guarded_ports(&ports).unwrap();
    h.dp.sync_denied_sources4(&[(24, DENIED_NET), (32, DENIED_HOST)]).unwrap();
    for (addr, port, proto, container_port, id) in
        [([0; 4], 8080, IPPROTO_TCP, 80, 1), ([0; 4], 5353, IPPROTO_UDP, 53, 2), (BOUND, 8082, IPPROTO_TCP, 80, 3)]
    {
        let key = MappingKey4 { addr, port: u16::to_be(port), proto, _pad: 0 };
        let entry = MappingEntry4 {
            container_addr: C1,
            container_port: u16::to_be(container_port),
            _pad: 0,
            id,
            container_ifindex: TEST_IFINDEX,
        };
        h.dp.set_mapping(&key, &entry).unwrap();
    }
    h
}

fn tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    let seg = frames::tcp(src.0, dst.0, src.1, dst.1, flags, b"payload");
    frames::eth(HOST_MAC, CLIENT_MAC, ETH_P_IPV4, &frames::ipv4(src.0, dst.0, IPPROTO_TCP, &[], &seg))
}

fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let seg = frames::udp(src.0, dst.0, src.1, dst.1, b"datagram-of-sixteen-bytes");
    frames::eth(HOST_MAC, CLIENT_MAC, ETH_P_IPV4, &frames::ipv4(src.0, dst.0, IPPROTO_UDP, &[], &seg))
}

/// Sets the MF flag and offset (8-byte units) of an IPv4 frame, IP
/// checksum fixed.
fn fragment(mut f: Vec<u8>, more: bool, offset: u16) -> Vec<u8> {
    frames::set_fragment(&mut f[14..], 0x4242, more, offset);
    f
}

/// Runs `hook` on `frame` and asserts a drop for `reason`: counted once by
/// reason on the interface, not as traffic.
fn expect_drop(h: &mut PacketHarness, hook: Hook, frame: &[u8], reason: DropReason) {
    let before = fixtures::uplink_counters(h);
    let r = h.run(hook.program(), frame).unwrap_or_else(|e| panic!("{hook:?}: {e:#}"));
    assert_eq!(r.verdict, hook.verdicts().1, "{hook:?} drops {}", hex(frame));
    let after = fixtures::uplink_counters(h);
    assert_eq!(after.drops[reason as usize], before.drops[reason as usize] + 1, "{hook:?} counts {reason:?}");
    assert_eq!(after.total_drops(), before.total_drops() + 1, "{hook:?}: one drop");
    assert_eq!(after.ingress, before.ingress, "{hook:?}: a drop is not traffic");
}

/// Runs `hook` on `frame` and asserts it passes untouched, counted as traffic.
fn expect_pass(h: &mut PacketHarness, hook: Hook, frame: &[u8]) {
    let before = fixtures::uplink_counters(h);
    let r = h.run(hook.program(), frame).unwrap_or_else(|e| panic!("{hook:?}: {e:#}"));
    assert_eq!(r.verdict, hook.verdicts().0, "{hook:?} passes {}", hex(frame));
    assert_eq!(hex(&r.data), hex(frame), "{hook:?} leaves the frame as it was");
    let after = fixtures::uplink_counters(h);
    assert_eq!(after.total_drops(), before.total_drops(), "{hook:?}: no drop");
    assert_eq!(after.ingress.packets, before.ingress.packets + 1, "{hook:?} counts the frame");
}

#[test]
fn a_guarded_port_nothing_publishes_is_dropped_on_both_hooks() {
    let mut h = harness(0);
    for hook in HOOKS {
        // A new connection, and a packet in the middle of one (a host
        // service on a guarded port is unreachable from the uplink: the
        // point of guarding it).
        expect_drop(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 8500), SYN), DropReason::NotPublished);
        expect_drop(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 8000), ACK), DropReason::NotPublished);
        expect_drop(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 8999), SYN), DropReason::NotPublished);
        expect_drop(&mut h, hook, &udp((CLIENT, 40000), (HOST, 5000)), DropReason::NotPublished);
        // Published on BOUND only: on another host address it is not.
        expect_drop(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 8082), SYN), DropReason::NotPublished);
        // The first fragment carries the port: judged like a whole datagram.
        let first = fragment(udp((CLIENT, 40000), (HOST, 5999)), true, 0);
        expect_drop(&mut h, hook, &first, DropReason::NotPublished);
    }
    // No flow was tracked for any of them.
    assert!(h.dp.ct_entries().unwrap().is_empty());
}

#[test]
fn a_published_port_inside_a_guarded_range_passes_and_is_translated() {
    let mut h = harness(0);
    let syn = tcp((CLIENT, 40000), (HOST, 8080), SYN);
    expect_pass(&mut h, Hook::Xdp, &syn);
    // Behind the guard, uplink_ingress translates it as before.
    expect(&h, Hook::Tc.program(), &syn, &tcp((CLIENT, 40000), (C1, 80), SYN));
    let bound = tcp((CLIENT, 40001), (BOUND, 8082), SYN);
    expect_pass(&mut h, Hook::Xdp, &bound);
    expect(&h, Hook::Tc.program(), &bound, &tcp((CLIENT, 40001), (C1, 80), SYN));
    let dgram = udp((CLIENT, 40002), (HOST, 5353));
    expect_pass(&mut h, Hook::Xdp, &dgram);
    expect(&h, Hook::Tc.program(), &dgram, &udp((CLIENT, 40002), (C1, 53)));
    assert_eq!(h.dp.ct_entries().unwrap().len(), 6, "three flows, two halves each");
}

#[test]
fn unguarded_ports_other_protocols_and_other_addresses_pass() {
    let mut h = harness(0);
    for hook in HOOKS {
        // Outside the ranges, or a guarded number of the other protocol.
        expect_pass(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 9000), SYN));
        expect_pass(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 7999), SYN));
        expect_pass(&mut h, hook, &udp((CLIENT, 40000), (HOST, 8500)));
        expect_pass(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 5500), SYN));
        // Not one of the host's addresses (the host routes it, or not).
        expect_pass(&mut h, hook, &tcp((CLIENT, 40000), (SERVER, 8500), SYN));
        // ICMP has no ports.
        let echo = frames::icmp_echo(8500, 1, b"ping");
        let f = frames::eth(HOST_MAC, CLIENT_MAC, ETH_P_IPV4, &frames::ipv4(CLIENT, HOST, IPPROTO_ICMP, &[], &echo));
        expect_pass(&mut h, hook, &f);
        // A later fragment carries no port: left to tc and the host, which
        // handle fragments (its first fragment was judged above).
        let mut later = fragment(udp((CLIENT, 40000), (HOST, 5000)), false, 2);
        later[14 + 20..].fill(0xab);
        expect_pass(&mut h, hook, &later);
    }
}

#[test]
fn denied_sources_never_reach_anything() {
    let mut h = harness(0);
    for hook in HOOKS {
        // A published port, a new flow and mid-stream.
        expect_drop(&mut h, hook, &tcp((SERVER, 40000), (HOST, 8080), SYN), DropReason::DeniedSource);
        expect_drop(&mut h, hook, &tcp((DENIED_HOST, 40000), (HOST, 8080), SYN), DropReason::DeniedSource);
        // The reply of a flow a container or the host opened to it:
        // never accepted means never.
        expect_drop(&mut h, hook, &tcp((SERVER, 443), (HOST, 12345), SYN | ACK), DropReason::DeniedSource);
        expect_drop(&mut h, hook, &udp((SERVER, 53), (HOST, 20000)), DropReason::DeniedSource);
        // ICMP and fragments too, and a container address (the source
        // decides first).
        let echo = frames::icmp_echo(1, 1, b"ping");
        let f = frames::eth(HOST_MAC, CLIENT_MAC, ETH_P_IPV4, &frames::ipv4(SERVER, HOST, IPPROTO_ICMP, &[], &echo));
        expect_drop(&mut h, hook, &f, DropReason::DeniedSource);
        let mut later = fragment(udp((SERVER, 40000), (HOST, 5353)), false, 2);
        later[14 + 20..].fill(0xab);
        expect_drop(&mut h, hook, &later, DropReason::DeniedSource);
        expect_drop(&mut h, hook, &udp((SERVER, 40000), (C1, 53)), DropReason::DeniedSource);
        // Next to the prefix: not denied.
        expect_pass(&mut h, hook, &tcp((ALLOWED, 443), (HOST, 12345), SYN | ACK));
    }
    assert!(h.dp.ct_entries().unwrap().is_empty(), "nothing from a denied source is tracked");
    // An allowed client still reaches the published port through tc.
    expect(&h, Hook::Tc.program(), &tcp((ALLOWED, 40000), (HOST, 8080), SYN), &tcp((ALLOWED, 40000), (C1, 80), SYN));
}

#[test]
fn behind_xdp_uplink_ingress_leaves_the_guard_to_it() {
    // With XDP attached (CFG_F_UPLINK_XDP) the guard ran there: tc does not
    // judge (nor count) the same frame twice.
    let mut h = harness(CFG_F_UPLINK_XDP);
    let guarded = tcp((CLIENT, 40000), (HOST, 8500), SYN);
    expect_drop(&mut h, Hook::Xdp, &guarded, DropReason::NotPublished);
    let r = h.run(Hook::Tc.program(), &guarded).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK);
    let s = fixtures::uplink_counters(&mut h);
    assert_eq!(s.total_drops(), 1, "only XDP's drop");
}

#[test]
fn without_the_settings_nothing_is_guarded() {
    // The maps filled, the flags off (what a restarted agent without the
    // settings leaves for a moment): the lookups are not made.
    let mut h = harness(0);
    h.dp.write_config(&fixtures::config(0)).unwrap();
    for hook in HOOKS {
        expect_pass(&mut h, hook, &tcp((CLIENT, 40000), (HOST, 8500), SYN));
        expect_pass(&mut h, hook, &tcp((SERVER, 443), (HOST, 12345), SYN | ACK));
    }
}
