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
//!   destination translated back to the container.

use anyhow::{ensure, Context as _, Result};
use netpath_common::{
    config::CFG_F_MASQUERADE,
    conntrack::{TCP_ACK, TCP_SYN},
    DatapathConfig, HookId,
};
use netpath_tests::{
    fixtures::{self, C1 as CTR, C1_MAC as CTR_MAC, GATEWAY_MAC, HOST_MAC},
    prog_run::{run, PacketHarness, TEST_IFINDEX},
    topology::{HOST_UPLINK_IP, WORLD_IP},
};
use serde::Serialize;

use super::{
    options::Options,
    progrun::{budget_of, budget_targets, fresh_median, lowest_batch_median, tcp_frame, EmptyProgram, TC_ACT_OK},
    results::{Series, Target},
};

const HOST: [u8; 4] = HOST_UPLINK_IP.octets();
const SERVER: [u8; 4] = WORLD_IP.octets();
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

/// How many first packets (allocations) a run times.
pub fn allocations(calls: u32) -> u32 {
    calls.min(MAX_ALLOCATIONS)
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

/// The datapath config as the agent writes it with masquerade on.
fn configure(h: &mut PacketHarness) -> Result<()> {
    h.dp.write_config(&DatapathConfig {
        masq_addr4: HOST,
        masq_port_min: SNAT_PORTS.0,
        masq_port_max: SNAT_PORTS.1,
        ..fixtures::config(CFG_F_MASQUERADE)
    })?;
    h.dp.sync_host_addrs4(&[(HOST, 2)])?;
    h.dp.set_container(TEST_IFINDEX, &fixtures::container(CTR, CTR_MAC, 1, 0))?;
    Ok(())
}

fn frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame(NEXT_HOP_MAC, HOST_MAC, src, dst, flags)
}

/// Source port of a frame (Ethernet + 20-byte IPv4 header).
fn src_port(frame: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(34)?, *frame.get(35)?]))
}

fn one_run(calls: u32) -> Result<Vec<Sample>> {
    let mut h = PacketHarness::new()?;
    configure(&mut h)?;
    let empty = EmptyProgram::load()?;
    let egress = h.dp.program_fd(HookId::UplinkEgress.program())?;
    let ingress = h.dp.program_fd(HookId::UplinkIngress.program())?;
    let veth = h.dp.program_fd(HookId::VethIngress.program())?;
    let probe = frame((CTR, CTR_PORT), (SERVER, SERVER_PORT), TCP_SYN);
    let base = fresh_median(empty.fd(), &probe, calls)?;
    let sample = |case, program, fresh: f64| Sample { case, program, fresh_ns: fresh, net_ns: fresh - base };
    let mut out = vec![sample("empty tc program (runner overhead)", "-", base)];

    // First packets: a new flow every run, judged on the container's veth,
    // then masqueraded on the uplink.
    let n = allocations(calls);
    let (mut judged, mut masqueraded) = (Vec::with_capacity(n as usize), Vec::with_capacity(n as usize));
    for i in 0..n {
        if i % 10_000 == 0 {
            super::check_interrupted()?;
        }
        let sport = CTR_PORT + (i % FLOWS_PER_DESTINATION) as u16;
        let dport = 10_000 + (i / FLOWS_PER_DESTINATION) as u16;
        let sent = tcp_frame(GATEWAY_MAC, CTR_MAC, (CTR, sport), (SERVER, dport), TCP_SYN);
        let r = run(veth, &sent, 1).context("BPF_PROG_TEST_RUN")?;
        ensure!(r.verdict == TC_ACT_OK && r.data == sent, "new flow {i} did not pass c1's veth untouched");
        judged.push(r.duration_ns as u64);
        let r = run(egress, &frame((CTR, sport), (SERVER, dport), TCP_SYN), 1).context("BPF_PROG_TEST_RUN")?;
        let port = src_port(&r.data).unwrap_or(0);
        ensure!(
            r.verdict == TC_ACT_OK
                && r.data.get(26..30) == Some(&HOST[..])
                && (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&port),
            "new flow {i} was not masqueraded (verdict {}, source port {port})",
            r.verdict
        );
        masqueraded.push(r.duration_ns as u64);
    }
    // The pending entry and the reply half of every flow, and nothing else.
    let inserted = h.dp.ct_stats()?.inserts;
    ensure!(inserted == 2 * n as u64, "{n} new flows inserted {inserted} conntrack entries, not {}", 2 * n);
    out.push(sample(
        "first packet of a flow, on the container's veth: conntrack misses, policy, the verdict kept pending masquerade",
        HookId::VethIngress.program(),
        lowest_batch_median(&judged),
    ));
    out.push(sample(
        "first packet of a flow, on the uplink: port allocation, the reply half inserted, SNAT",
        HookId::UplinkEgress.program(),
        lowest_batch_median(&masqueraded),
    ));

    // One flow, then its later packets and its replies.
    let syn = run(egress, &probe, 1).context("BPF_PROG_TEST_RUN")?;
    let port = src_port(&syn.data).context("short output frame")?;
    ensure!(
        syn.verdict == TC_ACT_OK && syn.data == frame((HOST, port), (SERVER, SERVER_PORT), TCP_SYN),
        "the probe flow was not masqueraded"
    );
    let ack = frame((CTR, CTR_PORT), (SERVER, SERVER_PORT), TCP_ACK);
    let r = run(egress, &ack, 1).context("BPF_PROG_TEST_RUN")?;
    ensure!(
        r.data == frame((HOST, port), (SERVER, SERVER_PORT), TCP_ACK),
        "a later packet was not translated as its flow"
    );
    out.push(sample(
        "later packet of the flow: conntrack hit, SNAT",
        HookId::UplinkEgress.program(),
        fresh_median(egress, &ack, calls)?,
    ));

    let reply = frame((SERVER, SERVER_PORT), (HOST, port), TCP_ACK);
    let r = run(ingress, &reply, 1).context("BPF_PROG_TEST_RUN")?;
    ensure!(
        r.data == frame((SERVER, SERVER_PORT), (CTR, CTR_PORT), TCP_ACK),
        "a reply was not translated back to the container"
    );
    out.push(sample(
        "reply of the flow: conntrack hit, back to the container",
        HookId::UplinkIngress.program(),
        fresh_median(ingress, &reply, calls)?,
    ));
    Ok(out)
}
