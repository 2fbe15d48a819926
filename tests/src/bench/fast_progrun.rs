//! The published port's conntrack hits under BPF_PROG_TEST_RUN in the
//! default configuration, the fast path on: the client's SYN translated and
//! redirected into the container's `eth0`, the container's reply translated,
//! routed and redirected out of the uplink. The rest of the section times
//! the datapath with the fast path off, where the stack delivers. Beside
//! them, a flow between two containers on the host: each packet judged by
//! its sender's verdict and its receiver's, and redirected into the
//! receiver, as the fast path takes it around the bridge.
//!
//! The fast path looks a container's packet's route up from the interface
//! it arrived on, so here the frames arrive on interfaces of the harness's
//! own network namespace, wired as a host's: an uplink holding the host's
//! addresses, with the client as its resolved neighbour, and the
//! container's veth pair, both ends in that namespace (a redirect is made
//! once the program has returned, which under the test runner it never
//! is: the runner returns the program's action).

use anyhow::{ensure, Context as _, Result};
use netpath_common::{
    config::CFG_F_FAST_PATH,
    conntrack::{TCP_ACK, TCP_SYN},
    ContainerEntry, HookId, Redirect,
};
use netpath_tests::{
    fixtures::{
        self, C1 as CTR, C1_MAC as CTR_MAC, C2, C2_MAC, CLIENT_MAC, HOST_MAC, TC_ACT_REDIRECT, TEST_STATS_SLOT,
    },
    frames::ETH_P_IPV6,
    prog_run::{run_received_on, PacketHarness},
    topology::{cmd, HOST_UPLINK_IP, HOST_UPLINK_IP6, WORLD_IP, WORLD_IP6},
};

use super::progrun::{configure, frames, fresh_median, fresh_median_of, tcp_frame, EmptyProgram, Sample};

const ETH_HLEN: usize = 14;

/// The harness namespace's interfaces (its own: nothing else sees them).
const UPLINK: &str = "up0";
const UPLINK_PEER: &str = "up0-world";
const CONTAINER_VETH: &str = "veth-c1";
const CONTAINER_ETH0: &str = "eth0-c1";
/// A second container's, for the flow between two containers.
const C2_VETH: &str = "veth-c2";
const C2_ETH0: &str = "eth0-c2";

const HIT_CASE: &str = "conntrack hit + DNAT, redirected into the container by the fast path (the default)";
const REPLY_CASE: &str =
    "conntrack hit + reverse NAT, routed and redirected out of the uplink by the fast path (the default)";
const HIT6_CASE: &str = "conntrack hit + DNAT over IPv6, redirected into the container by the fast path (the default)";
const REPLY6_CASE: &str =
    "conntrack hit + reverse NAT over IPv6, routed and redirected out of the uplink by the fast path (the default)";
/// Not a translation: no hit budget (see `progrun::budget_of`).
const C2C_CASE: &str =
    "container to container: the sender's verdict and the receiver's, switched and redirected into the receiver \
     (the default)";
const C2C_REPLY_CASE: &str = "container to container, the reply: the same the other way (the default)";

/// One round: the published port's four hits (one port, its container c1)
/// and the two directions of a flow between c1 and c2, each checked to have
/// taken the fast path on every run (its redirect counted, nothing
/// inserted), after a first run of each checked for its addresses
/// (translated, or between the containers left as they are).
pub(super) fn one_run(calls: u32) -> Result<Vec<Sample>> {
    let mut h = PacketHarness::new()?;
    let (uplink_if, veth_if, c2_if) = wire_host()?;
    configure(&mut h, CFG_F_FAST_PATH, veth_if)?;
    let c2 =
        ContainerEntry { ifindex: c2_if, stats_slot: TEST_STATS_SLOT + 1, ..fixtures::container(C2, C2_MAC, 2, 0) };
    h.dp.set_container(c2_if, &c2)?;
    // c1's connection to c2's server, switched (to c2's MAC), as containers
    // on one bridge talk; and c2's answer.
    let to_c2 = tcp_frame(C2_MAC, CTR_MAC, (CTR, 40001), (C2, 80), TCP_SYN);
    let to_c1 = tcp_frame(CTR_MAC, C2_MAC, (C2, 80), (CTR, 40001), TCP_SYN | TCP_ACK);
    let empty = EmptyProgram::load()?;
    let f = frames();
    let uplink = h.dp.program_fd(HookId::UplinkIngress.program())?;
    let veth = h.dp.program_fd(HookId::VethIngress.program())?;
    let cases = [
        (HIT_CASE, uplink, uplink_if, &f.syn, &f.syn_dnat, Redirect::ToContainer),
        (REPLY_CASE, veth, veth_if, &f.synack, &f.synack_revnat, Redirect::ToHost),
        (HIT6_CASE, uplink, uplink_if, &f.syn6, &f.syn6_dnat, Redirect::ToContainer),
        (REPLY6_CASE, veth, veth_if, &f.synack6, &f.synack6_revnat, Redirect::ToHost),
        (C2C_CASE, veth, veth_if, &to_c2, &to_c2, Redirect::ToContainer),
        (C2C_REPLY_CASE, veth, c2_if, &to_c1, &to_c1, Redirect::ToContainer),
    ];
    // The flows: the first SYN creates both families' entries, the first
    // reply finds them; each comes out translated and redirected. (The
    // first packet between the containers is judged on the way by c2's
    // policy, which keeps its verdict: a redirect too.)
    for (case, prog, ifindex, frame, delivered, _) in cases {
        let r = run_received_on(prog, frame, ifindex).with_context(|| format!("preparing {case}"))?;
        ensure!(r.verdict == TC_ACT_REDIRECT, "{case}: not redirected (verdict {})", r.verdict);
        ensure!(same_addresses(&r.data, delivered), "{case}: its addresses are not the ones expected");
    }
    let base = fresh_median(empty.fd(), &f.syn, calls)?;
    let mut out = vec![];
    for (case, prog, ifindex, frame, _, how) in cases {
        let (before, inserts) = (h.dp.forward_stats()?.redirected[how as usize], h.dp.ct_stats()?.inserts);
        let ns = fresh_median_of(calls, TC_ACT_REDIRECT, || run_received_on(prog, frame, ifindex))?;
        let redirected = h.dp.forward_stats()?.redirected[how as usize] - before;
        ensure!(redirected == calls as u64, "{case}: {redirected} of {calls} runs redirected {}", how.name());
        ensure!(h.dp.ct_stats()?.inserts == inserts, "{case}: the runs inserted conntrack entries (not hits)");
        let program = if prog == uplink { HookId::UplinkIngress } else { HookId::VethIngress }.program();
        // One published port; two containers, the second one c2.
        out.push(Sample::fresh(case, program, (1, 2), ns, base));
    }
    Ok(out)
}

/// Do two frames carry the same IP addresses (IPv4's or IPv6's, by the
/// frame's EtherType)? The fast path rewrites the hop's MACs and TTL too,
/// so the frames are not compared whole.
fn same_addresses(a: &[u8], b: &[u8]) -> bool {
    let ipv6 = a.get(12..14) == Some(&ETH_P_IPV6.to_be_bytes()[..]);
    let addrs = if ipv6 { ETH_HLEN + 8..ETH_HLEN + 40 } else { ETH_HLEN + 12..ETH_HLEN + 20 };
    a.get(12..14) == b.get(12..14) && a.get(addrs.clone()).is_some_and(|x| b.get(addrs).is_some_and(|y| x == y))
}

/// The calling thread's network namespace (the harness's) wired as a
/// host's: the uplink with the host's addresses and the client as a
/// resolved neighbour on both families, the container's interface,
/// forwarding on, and a second container's. Returns the uplink's index
/// and the two containers' interfaces'.
fn wire_host() -> Result<(u32, u32, u32)> {
    let ip = |args: &[&str]| cmd("ip", args).map(drop);
    let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    ip(&["link", "add", UPLINK, "address", &mac(HOST_MAC), "type", "veth", "peer", "name", UPLINK_PEER])?;
    ip(&["link", "add", CONTAINER_VETH, "type", "veth", "peer", "name", CONTAINER_ETH0])?;
    ip(&["link", "add", C2_VETH, "type", "veth", "peer", "name", C2_ETH0])?;
    for dev in [UPLINK, UPLINK_PEER, CONTAINER_VETH, CONTAINER_ETH0, C2_VETH, C2_ETH0] {
        ip(&["link", "set", dev, "up"])?;
    }
    ip(&["addr", "add", &format!("{HOST_UPLINK_IP}/24"), "dev", UPLINK])?;
    ip(&["-6", "addr", "add", &format!("{HOST_UPLINK_IP6}/64"), "dev", UPLINK, "nodad"])?;
    for client in [WORLD_IP.to_string(), WORLD_IP6.to_string()] {
        ip(&["neigh", "replace", &client, "lladdr", &mac(CLIENT_MAC), "dev", UPLINK, "nud", "permanent"])?;
    }
    // Opened by this thread, so its namespace's settings.
    for path in ["/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"] {
        std::fs::write(path, "1").with_context(|| format!("writing {path}"))?;
    }
    let index = |name: &str| nix::net::if_::if_nametoindex(name).with_context(|| format!("the index of {name}"));
    Ok((index(UPLINK)?, index(CONTAINER_VETH)?, index(C2_VETH)?))
}
