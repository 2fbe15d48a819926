//! The setup every packet test shares: verdict constants, one sandbox
//! addressing plan (container subnet, gateway, host, outside peers), the
//! datapath settings and container entries built from it, and the frame
//! assertions. Tests change what they need with struct update syntax.

use netpath_common::{container::CONTAINER_F_IPV4, ContainerEntry, CtTimeouts, DatapathConfig, TrafficStats};
use netpath_userspace::policy::{self, Direction, Rule};

use crate::{
    frames::{self, ETH_P_IPV4},
    prog_run::{PacketHarness, TEST_IFINDEX},
};

/// tc verdicts (linux/pkt_cls.h).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT` (linux/pkt_cls.h): the program redirected the packet.
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdicts (linux/bpf.h).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The container subnet, its gateway (the bridge) and two containers.
pub const SUBNET: [u8; 4] = [10, 0, 0, 0];
pub const SUBNET_PREFIX: u32 = 24;
pub const GATEWAY: [u8; 4] = [10, 0, 0, 1];
/// The bridge's MAC, as the agent sets it (derived from the gateway address).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x4e, 10, 0, 0, 1];
pub const C1: [u8; 4] = [10, 0, 0, 2];
pub const C2: [u8; 4] = [10, 0, 0, 3];
/// Container MACs as the agent derives them from the address.
pub const C1_MAC: [u8; 6] = [0x02, 0x4e, 10, 0, 0, 2];
pub const C2_MAC: [u8; 6] = [0x02, 0x4e, 10, 0, 0, 3];
/// The host's uplink address and MAC, and peers outside.
pub const HOST: [u8; 4] = [198, 18, 0, 1];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const CLIENT: [u8; 4] = [198, 18, 0, 2];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
pub const SERVER: [u8; 4] = [203, 0, 113, 2];

/// The datapath settings of the sandbox: subnet, gateway, default timeouts,
/// the given `CFG_F_*` flags; everything else off.
pub fn config(flags: u32) -> DatapathConfig {
    DatapathConfig {
        subnet4: SUBNET,
        subnet4_prefix: SUBNET_PREFIX,
        gateway4: GATEWAY,
        gateway_mac: GATEWAY_MAC,
        flags,
        timeouts: CtTimeouts::default(),
        ..Default::default()
    }
}

/// The counters slot of the containers [`container`] builds.
pub const TEST_STATS_SLOT: u32 = netpath_common::stats::IFACE_SLOT_FIRST_CONTAINER;

/// A container behind [`TEST_IFINDEX`] (the interface test runs see).
pub fn container(ip: [u8; 4], mac: [u8; 6], id: u32, extra_flags: u16) -> ContainerEntry {
    ContainerEntry {
        ipv4: ip,
        ipv6: netpath_common::In6Addr::UNSPECIFIED,
        mac,
        flags: CONTAINER_F_IPV4 | extra_flags,
        ifindex: TEST_IFINDEX,
        id,
        policy_epoch: 0,
        stats_slot: TEST_STATS_SLOT,
    }
}

/// The counters of the container [`container`] builds.
pub fn container_counters(h: &mut PacketHarness) -> TrafficStats {
    h.dp.stats(TEST_STATS_SLOT).expect("read the container's counters")
}

/// The uplink's counters.
pub fn uplink_counters(h: &mut PacketHarness) -> TrafficStats {
    h.dp.stats(netpath_common::stats::IFACE_SLOT_UPLINK).expect("read the uplink's counters")
}

/// Writes container `id`'s `rules` into `POLICY4` for both directions, as
/// the agent compiles them.
pub fn write_rules4(h: &mut PacketHarness, id: u32, rules: &[Rule]) -> anyhow::Result<()> {
    for d in Direction::BOTH {
        for (cidr, entry) in policy::compile(rules, d, None)?.entries {
            let (len, key) = policy::lpm_key4(id, d, &cidr);
            h.dp.set_policy4(len, &key, &entry)?;
        }
    }
    Ok(())
}

/// The object loaded in a private network namespace, with `cfg` written
/// (its counters start at zero).
pub fn harness(cfg: &DatapathConfig) -> PacketHarness {
    let mut h = unconfigured_harness();
    h.dp.write_config(cfg).expect("write CONFIG");
    h
}

/// The object with CONFIG left empty, as before the agent writes it: the
/// programs do only what needs no settings (anti-spoofing, counting).
pub fn unconfigured_harness() -> PacketHarness {
    assert!(crate::is_root(), "packet tests load BPF programs: run them as root (cargo xtask test)");
    PacketHarness::new().expect("load the BPF object")
}

/// Frames as hex, so that a mismatch shows where.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Runs `program`, asserts it passes the frame with valid checksums, and
/// returns the output.
pub fn pass(h: &PacketHarness, program: &str, input: &[u8]) -> Vec<u8> {
    let r = h.run(program, input).unwrap_or_else(|e| panic!("{program}: {e:#}"));
    assert_eq!(r.verdict, TC_ACT_OK, "{program} verdict");
    let ipv4 = r.data.len() >= 34 && u16::from_be_bytes([r.data[12], r.data[13]]) == ETH_P_IPV4;
    if ipv4 {
        frames::verify_checksums(&r.data).unwrap_or_else(|e| panic!("{program}: {e}"));
    }
    r.data
}

/// Runs `program` and asserts it passes the frame with exactly `want` bytes
/// and valid checksums.
pub fn expect(h: &PacketHarness, program: &str, input: &[u8], want: &[u8]) {
    assert_eq!(hex(&pass(h, program, input)), hex(want), "{program} output bytes");
}
