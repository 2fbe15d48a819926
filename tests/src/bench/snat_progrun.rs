//! Nanoseconds per packet of the masquerade under BPF_PROG_TEST_RUN, with
//! the fresh-frame method of [`super::progrun`] (one repetition per run, a
//! fresh copy of the frame each time, minus an empty tc program's figure):
//! the kernel's repeat loop would rerun the program on its own output,
//! whose source is then the host's address and is never masqueraded.
//!
//! - first packet of a flow, as the datapath takes it: on the container's
//!   veth (`veth_ingress`: conntrack misses, the container's policy, the
//!   verdict kept on the flow's NAT entry pending its masquerade), then on
//!   the uplink (`uplink_egress`: the pending entry found, port allocation
//!   (the container's port lies outside the range, as Linux's ephemeral
//!   ports do, so a random port is tried first), the reply half inserted,
//!   the rewrite), each timed. Every run is a new flow: the source port
//!   cycles over [`FLOWS_PER_DESTINATION`] values and the destination port
//!   moves on after each cycle, so no destination's range gets more than 3%
//!   full and the first port tried is nearly always free;
//! - a later packet of the same flow (`uplink_egress`): conntrack hit;
//! - a reply of that flow (`uplink_ingress`): conntrack hit, the
//!   destination translated back to the container;
//! - a later packet on the container's veth (`veth_ingress`), where the
//!   flow's entry, carrying the verdict, judges and translates it at once.
//!
//! The same five over IPv6 (the entry points tail-call their IPv6 halves).

use std::os::fd::RawFd;

use anyhow::{ensure, Context as _, Result};
use netpath_common::{
    config::CFG_F_MASQUERADE,
    conntrack::{TCP_ACK, TCP_SYN},
    container::CONTAINER_F_IPV6,
    ContainerEntry, DatapathConfig, HookId, In6Addr,
};
use netpath_tests::{
    fixtures::{self, C1 as CTR, C1_MAC as CTR_MAC, GATEWAY_MAC, HOST_MAC},
    prog_run::{run, PacketHarness, TEST_IFINDEX},
    topology::{HOST_UPLINK_IP, HOST_UPLINK_IP6, WORLD_IP, WORLD_IP6},
};
use serde::Serialize;

use super::{
    options::Options,
    plain::{CONTAINER_IP6, SUBNET6},
    progrun::{
        budget_of, budget_targets, fresh_median, lowest_batch_median, tcp_frame, tcp_frame6, EmptyProgram, TC_ACT_OK,
    },
    results::{Series, Target},
};

const HOST: [u8; 4] = HOST_UPLINK_IP.octets();
const SERVER: [u8; 4] = WORLD_IP.octets();
const HOST6: [u8; 16] = HOST_UPLINK_IP6.octets();
const SERVER6: [u8; 16] = WORLD_IP6.octets();
const CTR6: [u8; 16] = CONTAINER_IP6.octets();
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// netpathd's default `masquerade_ports`.
const SNAT_PORTS: (u16, u16) = (1024, 32767);
/// A container source port in Linux's ephemeral range, outside SNAT_PORTS.
const CTR_PORT: u16 = 40000;
const SERVER_PORT: u16 = 80;
/// New flows per destination in the allocation figure.
pub const FLOWS_PER_DESTINATION: u32 = 1000;
/// At most this many allocations per run: two conntrack entries each, well
/// below the table's 262144, so that LRU eviction plays no part.
const MAX_ALLOCATIONS: u32 = 50_000;

/// How many first packets (allocations) a run times, per family.
pub fn allocations(calls: u32) -> u32 {
    calls.min(MAX_ALLOCATIONS)
}

/// A family's frames and figures' names, for the cases both share.
trait MasqFamily {
    type Addr: Copy + PartialEq + core::fmt::Debug;
    const CTR: Self::Addr;
    const HOST: Self::Addr;
    const SERVER: Self::Addr;
    /// The cases: the first packet on the veth, on the uplink, a later
    /// packet on the uplink, a reply, a later packet on the veth.
    const CASES: [&'static str; 5];
    /// A TCP frame between `dmac` and `smac`.
    fn tcp(dmac: [u8; 6], smac: [u8; 6], src: (Self::Addr, u16), dst: (Self::Addr, u16), flags: u8) -> Vec<u8>;
    /// The source address and port of a TCP frame of the family.
    fn source(frame: &[u8]) -> Option<(Self::Addr, u16)>;
}

struct V4;
struct V6;

impl MasqFamily for V4 {
    type Addr = [u8; 4];
    const CTR: [u8; 4] = CTR;
    const HOST: [u8; 4] = HOST;
    const SERVER: [u8; 4] = SERVER;
    const CASES: [&'static str; 5] = [
        "first packet of a flow, on the container's veth: conntrack misses, policy, the verdict kept pending masquerade",
        "first packet of a flow, on the uplink: port allocation, the reply half inserted, SNAT",
        "later packet of the flow: conntrack hit, SNAT",
        "reply of the flow: conntrack hit, back to the container",
        "later packet of the flow, on the container's veth: one conntrack hit judges and translates it",
    ];
    fn tcp(dmac: [u8; 6], smac: [u8; 6], src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
        tcp_frame(dmac, smac, src, dst, flags)
    }
    fn source(frame: &[u8]) -> Option<([u8; 4], u16)> {
        let addr = frame.get(26..30)?.try_into().ok()?;
        Some((addr, u16::from_be_bytes([*frame.get(34)?, *frame.get(35)?])))
    }
}

impl MasqFamily for V6 {
    type Addr = [u8; 16];
    const CTR: [u8; 16] = CTR6;
    const HOST: [u8; 16] = HOST6;
    const SERVER: [u8; 16] = SERVER6;
    const CASES: [&'static str; 5] = [
        "first packet of a flow over IPv6, on the container's veth: conntrack misses, policy, the verdict kept pending masquerade",
        "first packet of a flow over IPv6, on the uplink: port allocation, the reply half inserted, SNAT",
        "later packet of the flow over IPv6: conntrack hit, SNAT",
        "reply of the flow over IPv6: conntrack hit, back to the container",
        "later packet of the flow over IPv6, on the container's veth: one conntrack hit judges and translates it",
    ];
    fn tcp(dmac: [u8; 6], smac: [u8; 6], src: ([u8; 16], u16), dst: ([u8; 16], u16), flags: u8) -> Vec<u8> {
        tcp_frame6(dmac, smac, src, dst, flags)
    }
    fn source(frame: &[u8]) -> Option<([u8; 16], u16)> {
        let addr = frame.get(22..38)?.try_into().ok()?;
        Some((addr, u16::from_be_bytes([*frame.get(54)?, *frame.get(55)?])))
    }
}

#[derive(Serialize)]
pub struct Figure {
    pub case: &'static str,
    pub program: &'static str,
    /// The most net ns the case may take, if it has a budget (progrun::budget_of).
    pub budget_ns: Option<f64>,
    /// Median kernel-measured ns per run, fresh frame each run.
    pub fresh_ns: Series,
    /// `fresh_ns` minus the empty program's.
    pub net_ns: Series,
}

struct Sample {
    case: &'static str,
    program: &'static str,
    fresh_ns: f64,
    net_ns: f64,
}

pub fn measure(opts: &Options) -> Result<Vec<Figure>> {
    let mut runs: Vec<Vec<Sample>> = vec![];
    for _ in 0..opts.rounds {
        super::check_interrupted()?;
        let calls = opts.prog_run_calls;
        // PacketHarness unshares the calling thread's network namespace.
        let samples = std::thread::spawn(move || one_run(calls))
            .join()
            .unwrap_or_else(|_| anyhow::bail!("the BPF_PROG_TEST_RUN thread panicked"))?;
        runs.push(samples);
    }
    let Some(first) = runs.first() else { return Ok(vec![]) };
    Ok((0..first.len())
        .map(|i| {
            let col = |f: fn(&Sample) -> f64| Series::new(runs.iter().filter_map(|r| r.get(i).map(f)).collect());
            Figure {
                case: first[i].case,
                program: first[i].program,
                budget_ns: budget_of(first[i].case),
                fresh_ns: col(|s| s.fresh_ns),
                net_ns: col(|s| s.net_ns),
            }
        })
        .collect())
}

/// The masquerade's per-program targets.
pub fn targets(figures: &[Figure]) -> Vec<Target> {
    budget_targets(
        super::options::Section::Masquerade.name(),
        figures.iter().map(|f| (f.program, f.case, f.budget_ns, &f.net_ns, String::new())),
    )
}

/// The datapath config as the agent writes it with masquerade on, for a
/// dual-stack container (the IPv6 subnet the plain beds use).
fn configure(h: &mut PacketHarness) -> Result<()> {
    h.dp.write_config(&DatapathConfig {
        masq_addr4: HOST,
        masq_addr6: In6Addr::from_octets(HOST6),
        masq_port_min: SNAT_PORTS.0,
        masq_port_max: SNAT_PORTS.1,
        subnet6: In6Addr::from_octets(SUBNET6.network().octets()),
        subnet6_prefix: SUBNET6.prefix_len().into(),
        gateway6: In6Addr::from_octets((u128::from(SUBNET6.network()) + 1).to_be_bytes()),
        ..fixtures::config(CFG_F_MASQUERADE)
    })?;
    h.dp.sync_host_addrs4(&[(HOST, 2)])?;
    h.dp.sync_host_addrs6(&[(In6Addr::from_octets(HOST6), 2)])?;
    let container =
        ContainerEntry { ipv6: In6Addr::from_octets(CTR6), ..fixtures::container(CTR, CTR_MAC, 1, CONTAINER_F_IPV6) };
    h.dp.set_container(TEST_IFINDEX, &container)?;
    Ok(())
}

/// The programs the cases run.
struct Programs {
    veth: RawFd,
    egress: RawFd,
    ingress: RawFd,
}

fn one_run(calls: u32) -> Result<Vec<Sample>> {
    let mut h = PacketHarness::new()?;
    configure(&mut h)?;
    let empty = EmptyProgram::load()?;
    let progs = Programs {
        veth: h.dp.program_fd(HookId::VethIngress.program())?,
        egress: h.dp.program_fd(HookId::UplinkEgress.program())?,
        ingress: h.dp.program_fd(HookId::UplinkIngress.program())?,
    };
    let probe = V4::tcp(NEXT_HOP_MAC, HOST_MAC, (CTR, CTR_PORT), (SERVER, SERVER_PORT), TCP_SYN);
    let base = fresh_median(empty.fd(), &probe, calls)?;
    let mut out =
        vec![Sample { case: "empty tc program (runner overhead)", program: "-", fresh_ns: base, net_ns: 0.0 }];
    out.extend(flows::<V4>(&mut h, &progs, calls, base)?);
    out.extend(flows::<V6>(&mut h, &progs, calls, base)?);
    Ok(out)
}

/// A family's cases (`F::CASES`), `base` being the empty program's
/// figure: new flows, each judged on the container's veth then
/// masqueraded on the uplink, then one flow's later packets and replies.
fn flows<F: MasqFamily>(h: &mut PacketHarness, p: &Programs, calls: u32, base: f64) -> Result<Vec<Sample>> {
    // A frame leaving the uplink.
    let out = |src: (F::Addr, u16), dst: (F::Addr, u16), flags| F::tcp(NEXT_HOP_MAC, HOST_MAC, src, dst, flags);
    let sample =
        |i: usize, program, fresh: f64| Sample { case: F::CASES[i], program, fresh_ns: fresh, net_ns: fresh - base };
    let inserted_before = h.dp.ct_stats()?.inserts;
    let n = allocations(calls);
    let (mut judged, mut masqueraded) = (Vec::with_capacity(n as usize), Vec::with_capacity(n as usize));
    for i in 0..n {
        if i % 10_000 == 0 {
            super::check_interrupted()?;
        }
        let sport = CTR_PORT + (i % FLOWS_PER_DESTINATION) as u16;
        let dport = 10_000 + (i / FLOWS_PER_DESTINATION) as u16;
        let sent = F::tcp(GATEWAY_MAC, CTR_MAC, (F::CTR, sport), (F::SERVER, dport), TCP_SYN);
        let r = run(p.veth, &sent, 1).context("BPF_PROG_TEST_RUN")?;
        ensure!(r.verdict == TC_ACT_OK && r.data == sent, "new flow {i} did not pass c1's veth untouched");
        judged.push(r.duration_ns as u64);
        let r = run(p.egress, &out((F::CTR, sport), (F::SERVER, dport), TCP_SYN), 1).context("BPF_PROG_TEST_RUN")?;
        let source = F::source(&r.data);
        ensure!(
            r.verdict == TC_ACT_OK
                && source.is_some_and(|(a, port)| a == F::HOST && (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&port)),
            "new flow {i} was not masqueraded (verdict {}, source {source:?})",
            r.verdict
        );
        masqueraded.push(r.duration_ns as u64);
    }
    // The pending entry and the reply half of every flow, in either
    // family, and nothing else.
    let inserted = h.dp.ct_stats()?.inserts - inserted_before;
    let want = 2 * u64::from(n);
    ensure!(inserted == want, "{n} new flows inserted {inserted} conntrack entries, not {want}");
    let mut samples = vec![
        sample(0, HookId::VethIngress.program(), lowest_batch_median(&judged)),
        sample(1, HookId::UplinkEgress.program(), lowest_batch_median(&masqueraded)),
    ];

    // One flow, then its later packets and its replies.
    let (ctr, server) = ((F::CTR, CTR_PORT), (F::SERVER, SERVER_PORT));
    // Its first packet as the datapath takes it: judged on the veth, the
    // verdict kept pending, then masqueraded on the uplink.
    let from_ctr = |src: (F::Addr, u16), flags| F::tcp(GATEWAY_MAC, CTR_MAC, src, server, flags);
    let r = run(p.veth, &from_ctr(ctr, TCP_SYN), 1).context("BPF_PROG_TEST_RUN")?;
    ensure!(r.verdict == TC_ACT_OK, "the probe flow did not pass c1's veth");
    let syn = run(p.egress, &out(ctr, server, TCP_SYN), 1).context("BPF_PROG_TEST_RUN")?;
    let (_, port) = F::source(&syn.data).context("short output frame")?;
    let host = (F::HOST, port);
    ensure!(syn.verdict == TC_ACT_OK && syn.data == out(host, server, TCP_SYN), "the probe flow was not masqueraded");
    let ack = out(ctr, server, TCP_ACK);
    let r = run(p.egress, &ack, 1).context("BPF_PROG_TEST_RUN")?;
    ensure!(r.data == out(host, server, TCP_ACK), "a later packet was not translated as its flow");
    samples.push(sample(2, HookId::UplinkEgress.program(), fresh_median(p.egress, &ack, calls)?));
    // On the veth, one lookup judges and translates it.
    let sent = from_ctr(ctr, TCP_ACK);
    let r = run(p.veth, &sent, 1).context("BPF_PROG_TEST_RUN")?;
    ensure!(
        r.verdict == TC_ACT_OK && r.data == from_ctr(host, TCP_ACK),
        "a later packet was not translated on c1's veth"
    );
    samples.push(sample(4, HookId::VethIngress.program(), fresh_median(p.veth, &sent, calls)?));

    let reply = out(server, host, TCP_ACK);
    let r = run(p.ingress, &reply, 1).context("BPF_PROG_TEST_RUN")?;
    ensure!(r.data == out(server, ctr, TCP_ACK), "a reply was not translated back to the container");
    samples.push(sample(3, HookId::UplinkIngress.program(), fresh_median(p.ingress, &reply, calls)?));
    Ok(samples)
}
