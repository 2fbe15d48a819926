//! Nanoseconds per packet of the datapath programs under
//! BPF_PROG_TEST_RUN, on a dedicated thread (PacketHarness unshares the
//! thread's network namespace).
//!
//! The kernel's test runner builds the skb once and runs the program
//! `repeat` times on that same skb: a program that rewrites the packet sees
//! its own output from the second repetition on. A DNATed SYN is then
//! addressed to the container and misses conntrack, so a `repeat` loop
//! would mostly time the miss path. The hit paths are therefore timed with
//! `calls` separate runs of one repetition each (a fresh copy of the frame
//! every time), taking the median of the kernel's per-run durations, and the
//! same is done for an empty tc program (`r0 = 0; exit`) so that the
//! runner's own overhead can be subtracted. The `repeat` loop is kept
//! where it is valid (the miss, which does not rewrite, and the empty
//! program) as a cross-check, and for the hit to show how many of its
//! repetitions really hit.

use std::os::fd::RawFd;

use anyhow::{ensure, Context as _, Result};
use netpath_common::{
    conntrack::{TCP_ACK, TCP_SYN},
    container::CONTAINER_F_IPV6,
    maps::MAX_CT_ENTRIES,
    ContainerEntry, CtKey4, CtKey6, DatapathConfig, HookId, In6Addr, MappingEntry4, MappingEntry6, MappingKey4,
    MappingKey6,
};
use netpath_tests::{
    fixtures::{self, C1 as CTR, C1_MAC as CTR_MAC, CLIENT_MAC, GATEWAY, GATEWAY_MAC, HOST_MAC},
    frames::{self, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP},
    prog_run::{run, PacketHarness, RunResult, TEST_IFINDEX},
    topology::{HOST_UPLINK_IP, HOST_UPLINK_IP6, WORLD_IP, WORLD_IP6},
};
use serde::Serialize;

pub(super) use super::baseline_prog::EmptyProgram;
use super::{
    baseline_prog::{ConntrackFloor, FloorFamily},
    bed::{filler, HostPort, CONTAINER_PORT, HIT_PORT},
    options::Options,
    plain::{CONTAINER_IP6, SUBNET6},
    results::{Series, Target},
};

pub(super) use fixtures::TC_ACT_OK;
/// The benchmark's own sandbox addresses, so that frames look like its traffic.
const HOST: [u8; 4] = HOST_UPLINK_IP.octets();
const CLIENT: [u8; 4] = WORLD_IP.octets();
const CLIENT_PORT: u16 = 40000;
const UNPUBLISHED_PORT: u16 = 9999;
/// The same over IPv6: the host's uplink address, the client's, the
/// container's (in the plain beds' subnet, [`SUBNET6`]).
const HOST6: [u8; 16] = HOST_UPLINK_IP6.octets();
const CLIENT6: [u8; 16] = WORLD_IP6.octets();
const CTR6: [u8; 16] = CONTAINER_IP6.octets();
const TCP_SYN_ACK: u8 = TCP_SYN | TCP_ACK;

/// One figure: a case at a number of published ports, one value per run.
#[derive(Serialize)]
pub struct Figure {
    pub case: &'static str,
    pub program: &'static str,
    /// The most net ns the case may take (the per-program budget), if it has one.
    pub budget_ns: Option<f64>,
    pub mappings: usize,
    /// Containers in CONTAINERS (the measured one and fillers).
    pub containers: usize,
    /// Median kernel-measured ns per run, fresh frame each run.
    pub fresh_ns: Series,
    /// `fresh_ns` minus the empty program's.
    pub net_ns: Series,
    /// Kernel repeat loop, ns per repetition, where measured.
    pub loop_ns: Option<Series>,
    /// `loop_ns` minus the empty program's.
    pub loop_net_ns: Option<Series>,
    /// For the DNAT hit's repeat loop: repetitions that hit the flow's entry.
    pub loop_hits: Option<Series>,
}

/// Raw values of one run, keyed like [`Figure`].
pub(super) struct Sample {
    case: &'static str,
    program: &'static str,
    budget_ns: Option<f64>,
    mappings: usize,
    containers: usize,
    fresh_ns: f64,
    net_ns: f64,
    loop_ns: Option<f64>,
    loop_net_ns: Option<f64>,
    loop_hits: Option<f64>,
}

impl Sample {
    /// A fresh-frame figure of `case` at (mappings, containers), `base`
    /// being the empty program's; no repeat loop.
    pub(super) fn fresh(
        case: &'static str,
        program: &'static str,
        (mappings, containers): (usize, usize),
        fresh: f64,
        base: f64,
    ) -> Sample {
        Sample {
            case,
            program,
            budget_ns: budget_of(case),
            mappings,
            containers,
            fresh_ns: fresh,
            net_ns: fresh - base,
            loop_ns: None,
            loop_net_ns: None,
            loop_hits: None,
        }
    }
}

pub fn measure(opts: &Options) -> Result<Vec<Figure>> {
    // The smallest table and the largest; once when they are the same (a
    // second pass would replay the first one's flows as hits).
    let mut sizes: Vec<usize> = vec![1, *opts.sizes.last().unwrap_or(&1)];
    sizes.dedup();
    let mut runs: Vec<Vec<Sample>> = vec![];
    for round in 0..opts.rounds {
        super::check_interrupted()?;
        if round > 0 {
            // The previous round's maps (a conntrack table holding some
            // 300000 entries among them) are freed by a kernel worker once
            // their last fd closes: while it runs, it competes with this
            // round's first figures for the CPU and its caches.
            super::machine::settle("BPF_PROG_TEST_RUN round");
        }
        let (calls, sizes) = (opts.prog_run_calls, sizes.clone());
        let mut samples = std::thread::spawn(move || one_run(calls, &sizes))
            .join()
            .unwrap_or_else(|_| anyhow::bail!("the BPF_PROG_TEST_RUN thread panicked"))?;
        // The default configuration's hits and a flow between two
        // containers, in a harness of their own (its namespace wired as a
        // host's).
        samples.extend(
            std::thread::spawn(move || super::fast_progrun::one_run(calls))
                .join()
                .unwrap_or_else(|_| anyhow::bail!("the fast path's BPF_PROG_TEST_RUN thread panicked"))?,
        );
        runs.push(samples);
    }
    Ok(aggregate(&runs))
}

fn aggregate(runs: &[Vec<Sample>]) -> Vec<Figure> {
    let Some(first) = runs.first() else { return vec![] };
    (0..first.len())
        .map(|i| {
            let col = |f: &dyn Fn(&Sample) -> Option<f64>| -> Option<Series> {
                let v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).and_then(f)).collect();
                (!v.is_empty()).then(|| Series::new(v))
            };
            let s = &first[i];
            Figure {
                case: s.case,
                program: s.program,
                budget_ns: s.budget_ns,
                mappings: s.mappings,
                containers: s.containers,
                fresh_ns: col(&|s| Some(s.fresh_ns)).unwrap_or_default(),
                net_ns: col(&|s| Some(s.net_ns)).unwrap_or_default(),
                loop_ns: col(&|s| s.loop_ns),
                loop_net_ns: col(&|s| s.loop_net_ns),
                loop_hits: col(&|s| s.loop_hits),
            }
        })
        .collect()
}

pub(super) fn tcp_frame(dmac: [u8; 6], smac: [u8; 6], src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    let seg = frames::tcp(src.0, dst.0, src.1, dst.1, flags, b"");
    frames::eth(dmac, smac, ETH_P_IPV4, &frames::ipv4(src.0, dst.0, IPPROTO_TCP, &[], &seg))
}

pub(super) fn tcp_frame6(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    flags: u8,
) -> Vec<u8> {
    let seg = frames::tcp6(src.0, dst.0, src.1, dst.1, flags, b"");
    frames::eth(dmac, smac, ETH_P_IPV6, &frames::ipv6(src.0, dst.0, IPPROTO_TCP, &seg))
}

pub(super) struct Frames {
    pub syn: Vec<u8>,
    pub syn_dnat: Vec<u8>,
    pub synack: Vec<u8>,
    pub synack_revnat: Vec<u8>,
    pub miss: Vec<u8>,
    /// The published port's flow over IPv6: the SYN and the reply, as
    /// they come in and as they leave translated.
    pub syn6: Vec<u8>,
    pub syn6_dnat: Vec<u8>,
    pub synack6: Vec<u8>,
    pub synack6_revnat: Vec<u8>,
}

pub(super) fn frames() -> Frames {
    let client = (CLIENT, CLIENT_PORT);
    let client6 = (CLIENT6, CLIENT_PORT);
    Frames {
        syn: tcp_frame(HOST_MAC, CLIENT_MAC, client, (HOST, HIT_PORT), TCP_SYN),
        syn_dnat: tcp_frame(HOST_MAC, CLIENT_MAC, client, (CTR, CONTAINER_PORT), TCP_SYN),
        synack: tcp_frame(GATEWAY_MAC, CTR_MAC, (CTR, CONTAINER_PORT), client, TCP_SYN_ACK),
        synack_revnat: tcp_frame(GATEWAY_MAC, CTR_MAC, (HOST, HIT_PORT), client, TCP_SYN_ACK),
        miss: tcp_frame(HOST_MAC, CLIENT_MAC, client, (HOST, UNPUBLISHED_PORT), TCP_SYN),
        syn6: tcp_frame6(HOST_MAC, CLIENT_MAC, client6, (HOST6, HIT_PORT), TCP_SYN),
        syn6_dnat: tcp_frame6(HOST_MAC, CLIENT_MAC, client6, (CTR6, CONTAINER_PORT), TCP_SYN),
        synack6: tcp_frame6(GATEWAY_MAC, CTR_MAC, (CTR6, CONTAINER_PORT), client6, TCP_SYN_ACK),
        synack6_revnat: tcp_frame6(GATEWAY_MAC, CTR_MAC, (HOST6, HIT_PORT), client6, TCP_SYN_ACK),
    }
}

/// `host` published to the container on `ifindex` under mapping `id`.
fn mapping(host: HostPort, id: u32, ifindex: u32) -> (MappingKey4, MappingEntry4) {
    let addr = host.addr.map_or([0; 4], |a| a.octets());
    (
        MappingKey4 { addr, port: host.port.to_be(), proto: IPPROTO_TCP, _pad: 0 },
        MappingEntry4 {
            container_addr: CTR,
            container_port: CONTAINER_PORT.to_be(),
            _pad: 0,
            id,
            container_ifindex: ifindex,
        },
    )
}

/// The maps as the agent fills them for one dual-stack container behind
/// the hit port, on the interface `ifindex`, published on both families (a
/// mapping without a host address answers on both, under one id), with
/// the datapath's `flags`.
pub(super) fn configure(h: &mut PacketHarness, flags: u32, ifindex: u32) -> Result<()> {
    h.dp.write_config(&DatapathConfig {
        subnet6: In6Addr::from_octets(SUBNET6.network().octets()),
        subnet6_prefix: SUBNET6.prefix_len().into(),
        gateway6: In6Addr::from_octets((u128::from(SUBNET6.network()) + 1).to_be_bytes()),
        ..fixtures::config(flags)
    })?;
    h.dp.sync_host_addrs4(&[(HOST, 2), (GATEWAY, 3)])?;
    h.dp.sync_host_addrs6(&[(In6Addr::from_octets(HOST6), 2)])?;
    let (k, v) = mapping(HostPort { addr: None, port: HIT_PORT }, 1, ifindex);
    h.dp.set_mapping(&k, &v)?;
    let key6 = MappingKey6 { addr: In6Addr::UNSPECIFIED, port: HIT_PORT.to_be(), proto: IPPROTO_TCP, _pad: 0 };
    let entry6 = MappingEntry6 {
        container_addr: In6Addr::from_octets(CTR6),
        container_port: CONTAINER_PORT.to_be(),
        _pad: 0,
        id: 1,
        container_ifindex: ifindex,
    };
    h.dp.set_mapping(&key6, &entry6)?;
    let container = ContainerEntry {
        ipv6: In6Addr::from_octets(CTR6),
        ifindex,
        ..fixtures::container(CTR, CTR_MAC, 1, CONTAINER_F_IPV6)
    };
    h.dp.set_container(ifindex, &container)?;
    Ok(())
}

/// Containers beside the measured one at the largest size: as many as the
/// attach curve attaches, so that the per-packet cost is shown flat in
/// containers too.
const MANY_CONTAINERS: usize = super::attach::CONTAINERS;

/// Publishes filler ports until `mappings` are published in all, and adds
/// filler containers (on ifindexes and addresses of their own) until
/// `containers` are attached.
fn fill_tables(h: &mut PacketHarness, mappings: usize, containers: usize) -> Result<()> {
    for i in 0..mappings.saturating_sub(1) {
        let (k, v) = mapping(filler(i), 2 + i as u32, TEST_IFINDEX);
        h.dp.set_mapping(&k, &v)?;
    }
    for i in 1..containers as u32 {
        let ip = [10, 99, (i >> 8) as u8, i as u8];
        let mac = [0x02, 0x4e, 10, 99, (i >> 8) as u8, i as u8];
        let ifindex = TEST_IFINDEX + 1000 + i;
        h.dp.set_container(ifindex, &ContainerEntry { ifindex, ..fixtures::container(ip, mac, 1 + i, 0) })?;
    }
    Ok(())
}

/// Runs `program` once and checks it passes `input` rewritten to `want`.
fn expect(h: &PacketHarness, program: &str, input: &[u8], want: &[u8]) -> Result<()> {
    let r = h.run(program, input)?;
    ensure!(
        r.verdict == TC_ACT_OK && r.data == want,
        "{program} did not translate the frame as expected (verdict {})",
        r.verdict
    );
    Ok(())
}

fn one_run(calls: u32, sizes: &[usize]) -> Result<Vec<Sample>> {
    let mut h = PacketHarness::new()?;
    configure(&mut h, 0, TEST_IFINDEX)?;
    let empty = EmptyProgram::load()?;
    let f = frames();
    // The flow: the first SYN creates both conntrack entries.
    expect(&h, HookId::UplinkIngress.program(), &f.syn, &f.syn_dnat).context("preparing the flow")?;
    expect(&h, HookId::VethIngress.program(), &f.synack, &f.synack_revnat).context("preparing the reply")?;
    expect(&h, HookId::UplinkIngress.program(), &f.syn6, &f.syn6_dnat).context("preparing the IPv6 flow")?;
    expect(&h, HookId::VethIngress.program(), &f.synack6, &f.synack6_revnat).context("preparing the IPv6 reply")?;
    // The flow's original direction, as the first SYN carries it.
    let flow_key = |k: &CtKey4| {
        (k.saddr, k.daddr, k.sport, k.dport, k.proto)
            == (CLIENT, HOST, CLIENT_PORT.to_be(), HIT_PORT.to_be(), IPPROTO_TCP)
    };
    let uplink = h.dp.program_fd(HookId::UplinkIngress.program())?;
    let veth = h.dp.program_fd(HookId::VethIngress.program())?;
    let mut out = vec![];
    for &mappings in sizes {
        let containers = if mappings > 1 { MANY_CONTAINERS } else { 1 };
        fill_tables(&mut h, mappings, containers)?;
        let base = fresh_median(empty.fd(), &f.syn, calls)?;
        let base_loop = run(empty.fd(), &f.syn, calls)?.duration_ns as f64;
        let sample = |case, program, fresh: f64, loop_ns: Option<f64>, loop_hits| Sample {
            loop_ns,
            loop_net_ns: loop_ns.map(|l| l - base_loop),
            loop_hits,
            ..Sample::fresh(case, program, (mappings, containers), fresh, base)
        };
        out.push(sample("empty tc program (runner overhead)", "-", base, Some(base_loop), None));

        let before = flow_packets(&mut h, flow_key)?;
        let hit = fresh_median(uplink, &f.syn, calls)?;
        let after = flow_packets(&mut h, flow_key)?;
        ensure!(
            after - before == calls as u64,
            "only {} of {calls} SYNs hit the flow's conntrack entry",
            after - before
        );
        let hit_loop = run(uplink, &f.syn, calls)?.duration_ns as f64;
        let loop_hits = (flow_packets(&mut h, flow_key)? - after) as f64;
        out.push(sample(
            "conntrack hit + DNAT (SYN to the published port)",
            HookId::UplinkIngress.program(),
            hit,
            Some(hit_loop),
            Some(loop_hits),
        ));

        let reply = fresh_median(veth, &f.synack, calls)?;
        out.push(sample("conntrack hit + reverse NAT (the reply)", HookId::VethIngress.program(), reply, None, None));

        if mappings == 1 {
            // IPv6 at the smallest size only: its mapping table holds just
            // the hit port at every size.
            let (hit6, reply6) = ipv6_hits(&mut h, (uplink, veth), &f, calls)?;
            out.push(sample(HIT6_CASE, HookId::UplinkIngress.program(), hit6, None, None));
            out.push(sample(REPLY6_CASE, HookId::VethIngress.program(), reply6, None, None));
        }

        expect(&h, HookId::UplinkIngress.program(), &f.miss, &f.miss).context("the miss passes untouched")?;
        let miss = fresh_median(uplink, &f.miss, calls)?;
        let miss_loop = run(uplink, &f.miss, calls)?.duration_ns as f64;
        out.push(sample(
            "miss (SYN to a port not published)",
            HookId::UplinkIngress.program(),
            miss,
            Some(miss_loop),
            None,
        ));

        // Every size's new flows start from the same table: the previous
        // size's are forgotten first (see [`forget_new_flows`]).
        forget_new_flows(&mut h)?;
        let client = if mappings > 1 { ClientSet::LargestSize } else { ClientSet::SmallestSize };
        let new_flows = calls.min(MAX_NEW_FLOWS);
        let new_flow = new_flows_median(&h, uplink, new_flows, |i| new_flow4(client, i))?;
        out.push(sample(NEW_FLOW_CASE, HookId::UplinkIngress.program(), new_flow, None, None));
        let floor = ConntrackFloor::load(MAX_CT_ENTRIES as u32, FloorFamily::Ipv4)?;
        let floor_ns = floor_median(floor.fd(), new_flows, |i| new_flow4(client, i).0)?;
        out.push(sample(FLOOR_CASE, "-", floor_ns, None, None));
        if mappings == 1 {
            // IPv6's new flows at the smallest size, as its hits, beside
            // the floor of IPv6's keys and entries.
            let new_flow = new_flows_median(&h, uplink, new_flows, new_flow6)?;
            out.push(sample(NEW_FLOW6_CASE, HookId::UplinkIngress.program(), new_flow, None, None));
            let floor = ConntrackFloor::load(MAX_CT_ENTRIES as u32, FloorFamily::Ipv6)?;
            let floor_ns = floor_median(floor.fd(), new_flows, |i| new_flow6(i).0)?;
            out.push(sample(FLOOR6_CASE, "-", floor_ns, None, None));
        }
    }
    // The same new flows once the table already holds FILL_FLOWS flows (both
    // halves each), beside the kernel floor at the same fill: a fuller table
    // makes every lookup and insert walk longer, colder buckets, the
    // kernel's own included.
    let mappings = *sizes.last().unwrap_or(&1);
    let containers = if mappings > 1 { MANY_CONTAINERS } else { 1 };
    let base = fresh_median(empty.fd(), &f.syn, calls)?;
    let filled = |case, program, fresh| Sample::fresh(case, program, (mappings, containers), fresh, base);
    forget_new_flows(&mut h)?;
    new_flows_median(&h, uplink, FILL_FLOWS, |i| new_flow4(ClientSet::Fill, i))?;
    let new_flows = calls.min(MAX_NEW_FLOWS);
    let new_flow = new_flows_median(&h, uplink, new_flows, |i| new_flow4(ClientSet::AtFill, i))?;
    out.push(filled(NEW_FLOW_FILLED_CASE, HookId::UplinkIngress.program(), new_flow));
    let floor = ConntrackFloor::load(MAX_CT_ENTRIES as u32, FloorFamily::Ipv4)?;
    floor_median(floor.fd(), FILL_FLOWS, |i| new_flow4(ClientSet::Fill, i).0)?;
    let floor_ns = floor_median(floor.fd(), new_flows, |i| new_flow4(ClientSet::AtFill, i).0)?;
    out.push(filled(FLOOR_FILLED_CASE, "-", floor_ns));
    Ok(out)
}

/// The IPv6 flow's hits: the SYN on the uplink (`uplink_ingress`, which
/// tail-calls `uplink_ingress6`, which tail-calls `uplink_forward6`) and
/// the reply on the container's veth (`veth_ingress` -> `veth_ingress6` ->
/// `veth_forward6`), each checked to have hit the flow's entries (its
/// packet counts moved by the runs, nothing inserted).
fn ipv6_hits(h: &mut PacketHarness, (uplink, veth): (RawFd, RawFd), f: &Frames, calls: u32) -> Result<(f64, f64)> {
    let is_flow = |k: &CtKey6| {
        (k.saddr.octets(), k.daddr.octets(), k.sport, k.dport, k.proto)
            == (CLIENT6, HOST6, CLIENT_PORT.to_be(), HIT_PORT.to_be(), IPPROTO_TCP)
    };
    let is_reply = |k: &CtKey6| {
        (k.saddr.octets(), k.daddr.octets(), k.sport, k.dport, k.proto)
            == (CTR6, CLIENT6, CONTAINER_PORT.to_be(), CLIENT_PORT.to_be(), IPPROTO_TCP)
    };
    let packets = |h: &mut PacketHarness| -> Result<(u64, u64)> {
        let entries = h.dp.ct_entries6()?;
        let of = |want: &dyn Fn(&CtKey6) -> bool| entries.iter().find(|(k, _)| want(k)).map(|(_, e)| e.packets);
        Ok((of(&is_flow).context("the IPv6 flow's entry is gone")?, of(&is_reply).context("its reply's is gone")?))
    };
    let (inserts, before) = (h.dp.ct_stats()?.inserts, packets(h)?);
    let hit = fresh_median(uplink, &f.syn6, calls)?;
    let reply = fresh_median(veth, &f.synack6, calls)?;
    let after = packets(h)?;
    ensure!(
        after == (before.0 + calls as u64, before.1 + calls as u64) && h.dp.ct_stats()?.inserts == inserts,
        "the IPv6 runs did not all hit their flow's entries (packets {before:?} -> {after:?})"
    );
    Ok((hit, reply))
}

const HIT6_CASE: &str = "conntrack hit + DNAT over IPv6 (SYN to the published port)";
const REPLY6_CASE: &str = "conntrack hit + reverse NAT over IPv6 (the reply)";

/// The per-program budgets (net ns under BPF_PROG_TEST_RUN): a conntrack
/// hit with its translation, and a new flow (lookups, entries, translation).
pub const HIT_BUDGET_NS: f64 = 120.0;
pub const NEW_FLOW_BUDGET_NS: f64 = 600.0;

/// The budget of a case, by the kind of work its name says it does.
pub(super) fn budget_of(case: &str) -> Option<f64> {
    if case.starts_with("conntrack hit") || case.starts_with("later packet") || case.starts_with("reply of the flow") {
        Some(HIT_BUDGET_NS)
    } else if case.starts_with("new flow") || case.starts_with("first packet") {
        Some(NEW_FLOW_BUDGET_NS)
    } else {
        None
    }
}

/// One target per case with a budget: its net median within it.
pub(super) fn budget_targets<'a>(
    section: &'static str,
    figures: impl Iterator<Item = (&'a str, &'a str, Option<f64>, &'a Series, String)>,
) -> Vec<Target> {
    figures
        .filter_map(|(program, case, budget, net, at)| {
            let budget = budget?;
            let what = format!("{program}, {case}{at}: <= {budget:.0} ns net under BPF_PROG_TEST_RUN");
            Some(Target::new(section, &what, format!("{:.1} ns", net.median), net.median <= budget))
        })
        .collect()
}

/// The published ports' per-program targets.
pub fn targets(figures: &[Figure]) -> Vec<Target> {
    budget_targets(
        super::options::Section::Publish.name(),
        figures.iter().map(|f| {
            let at = format!(" ({} ports, {} containers)", f.mappings, f.containers);
            (f.program, f.case, f.budget_ns, &f.net_ns, at)
        }),
    )
}

/// New flows per size: each adds two conntrack entries, and the table must
/// keep room for them at both sizes (`MAX_CT_ENTRIES` is 262144).
const MAX_NEW_FLOWS: u32 = 50_000;

/// The new-flow case, and the minimal program that does only what any new
/// flow pays hash-table conntrack in the kernel, on the same frames.
const NEW_FLOW_CASE: &str = "new flow: conntrack miss, mapping, policy, two inserts, DNAT (a new client port each run)";
const FLOOR_CASE: &str =
    "kernel floor of a new flow: one lookup miss and two inserts into an LRU hash of the conntrack \
                          table's size (a minimal program, the same frames)";
/// The new-flow case over IPv6 (the entry point, the tail call to its IPv6
/// half, that half's tail call to the IPv6 fast path).
const NEW_FLOW6_CASE: &str =
    "new flow over IPv6: conntrack miss, mapping, policy, two inserts, DNAT (a new client port each run)";
const FLOOR6_CASE: &str = "kernel floor of a new IPv6 flow: the same with IPv6's conntrack keys and entries";
/// The same two once the table holds [`FILL_FLOWS`] flows.
const NEW_FLOW_FILLED_CASE: &str = "new flow, the conntrack table already holding 100000 entries (50000 flows)";
const FLOOR_FILLED_CASE: &str = "kernel floor of a new flow, its table already holding 100000 entries";

/// Flows put in the table before the filled cases: with the measured ones
/// after them (both halves each) the table stays below its size, so no
/// insert has to evict.
const FILL_FLOWS: u32 = 50_000;
const _: () = assert!(2 * (FILL_FLOWS + MAX_NEW_FLOWS) < MAX_CT_ENTRIES as u32);

/// Whose new flows: a client address of its own per set, next to the
/// benchmark's client, so that the measured flow is never hit and no set
/// replays another's flows.
#[derive(Clone, Copy)]
enum ClientSet {
    SmallestSize = 1,
    LargestSize,
    Fill,
    AtFill,
}

/// New flow `i` of `set`: a SYN from a client port of its own to the hit
/// port, or as DNAT delivers it (`to` the container).
fn new_flow_syn(set: ClientSet, i: u32, to: ([u8; 4], u16)) -> Vec<u8> {
    let client = [CLIENT[0], CLIENT[1], CLIENT[2], CLIENT[3].wrapping_add(set as u8)];
    tcp_frame(HOST_MAC, CLIENT_MAC, (client, 10_000 + i as u16), to, TCP_SYN)
}

/// New flow `i` of `set` as it arrives, and as DNAT delivers it.
fn new_flow4(set: ClientSet, i: u32) -> (Vec<u8>, Vec<u8>) {
    (new_flow_syn(set, i, (HOST, HIT_PORT)), new_flow_syn(set, i, (CTR, CONTAINER_PORT)))
}

/// New IPv6 flow `i` as it arrives, and as DNAT delivers it: a SYN from a
/// client port of its own, from an address next to the benchmark's IPv6
/// client (so that the measured IPv6 flow is never hit).
fn new_flow6(i: u32) -> (Vec<u8>, Vec<u8>) {
    let mut client = CLIENT6;
    client[15] = client[15].wrapping_add(1);
    let syn = |to| tcp_frame6(HOST_MAC, CLIENT_MAC, (client, 10_000 + i as u16), to, TCP_SYN);
    (syn((HOST6, HIT_PORT)), syn((CTR6, CONTAINER_PORT)))
}

/// Forgets every flow but the measured ones (the new flows of earlier
/// cases), so that a new-flow case starts from the table the smallest size
/// started from: a fuller table would slow the inserts whatever the
/// numbers of ports and containers, which is what the sizes vary.
fn forget_new_flows(h: &mut PacketHarness) -> Result<()> {
    h.dp.ct_remove_where(|k, _| k.saddr != CLIENT && k.daddr != CLIENT)?;
    h.dp.ct_remove_where6(|k, _| k.saddr.octets() != CLIENT6 && k.daddr.octets() != CLIENT6)?;
    Ok(())
}

/// The duration (as [`fresh_median`] takes it) of `n` new flows, flow `i`
/// being `frames(i)` (as it arrives, as DNAT delivers it), each checked to
/// come out translated to the container.
fn new_flows_median(
    h: &PacketHarness,
    uplink: RawFd,
    n: u32,
    frames: impl Fn(u32) -> (Vec<u8>, Vec<u8>),
) -> Result<f64> {
    let inserts = h.dp.ct_stats()?.inserts;
    let mut runs = Vec::with_capacity(n as usize);
    for i in 0..n {
        if i % 10_000 == 0 {
            super::check_interrupted()?;
        }
        let (syn, want) = frames(i);
        let r = run(uplink, &syn, 1).context("BPF_PROG_TEST_RUN")?;
        ensure!(r.verdict == TC_ACT_OK && r.data == want, "new flow {i} was not translated (verdict {})", r.verdict);
        runs.push(r.duration_ns as u64);
    }
    // Translated the same way, a hit would pass for a new flow: every run
    // must have inserted its two entries.
    let inserted = h.dp.ct_stats()?.inserts - inserts;
    ensure!(inserted == 2 * n as u64, "{n} new flows inserted {inserted} conntrack entries, not {}", 2 * n);
    Ok(lowest_batch_median(&runs))
}

/// [`new_flows_median`]'s frames as they arrive (`syn(i)`), through the
/// [`ConntrackFloor`] program.
fn floor_median(floor: RawFd, n: u32, syn: impl Fn(u32) -> Vec<u8>) -> Result<f64> {
    let mut runs = Vec::with_capacity(n as usize);
    for i in 0..n {
        let r = run(floor, &syn(i), 1).context("BPF_PROG_TEST_RUN")?;
        ensure!(
            r.verdict == TC_ACT_OK,
            "the conntrack floor program's inserts failed for flow {i} ({})",
            r.verdict as i32
        );
        runs.push(r.duration_ns as u64);
    }
    Ok(lowest_batch_median(&runs))
}

fn flow_packets(h: &mut PacketHarness, is_flow: impl Fn(&CtKey4) -> bool) -> Result<u64> {
    h.dp.ct_entries()?
        .into_iter()
        .find(|(k, _)| is_flow(k))
        .map(|(_, e)| e.packets)
        .context("the flow's conntrack entry is gone")
}

/// The kernel's duration of one run of one repetition, as the lowest of
/// [`BATCHES`] batch medians over `calls` runs in all.
///
/// Medians, not means: on a shared VM a run that a host interrupt or stolen
/// time lands in takes microseconds, and a few of them move the mean of a
/// 150 ns program by tens of percent. The lowest batch: a neighbour that
/// thrashes the shared caches for a while slows a program that reads maps
/// (not the empty one) by up to 2x for that while, which is the neighbour's
/// cost, not the program's. Every figure, the empty program's included, is
/// taken the same way.
pub(super) fn fresh_median(fd: RawFd, frame: &[u8], calls: u32) -> Result<f64> {
    fresh_median_of(calls, TC_ACT_OK, || run(fd, frame, 1))
}

/// [`fresh_median`] of `calls` runs made by `run_once`, each of which must
/// end in `verdict`.
pub(super) fn fresh_median_of(
    calls: u32,
    verdict: u32,
    mut run_once: impl FnMut() -> std::io::Result<RunResult>,
) -> Result<f64> {
    let mut runs = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        if i % 10_000 == 0 {
            super::check_interrupted()?;
        }
        let r = run_once().context("BPF_PROG_TEST_RUN")?;
        ensure!(r.verdict == verdict, "verdict {} instead of {verdict}", r.verdict);
        runs.push(r.duration_ns as u64);
    }
    Ok(lowest_batch_median(&runs))
}

/// The lowest median of [`BATCHES`] consecutive batches of per-run
/// durations (see [`fresh_median`]; 0 for none).
pub(super) fn lowest_batch_median(runs: &[u64]) -> f64 {
    if runs.is_empty() {
        return 0.0;
    }
    let per_batch = runs.len().div_ceil(BATCHES as usize);
    runs.chunks(per_batch).map(|batch| median_ns(&mut batch.to_vec())).fold(f64::INFINITY, f64::min)
}

/// Batches per fresh-frame figure (see [`fresh_median`]).
pub(super) const BATCHES: u32 = 10;

/// The median of per-run durations (0 for none).
pub(super) fn median_ns(runs: &mut [u64]) -> f64 {
    if runs.is_empty() {
        return 0.0;
    }
    runs.sort_unstable();
    let mid = runs.len() / 2;
    if runs.len().is_multiple_of(2) {
        (runs[mid - 1] + runs[mid]) as f64 / 2.0
    } else {
        runs[mid] as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median_ns(&mut [3, 1, 2]), 2.0);
        assert_eq!(median_ns(&mut [4, 1, 3, 2]), 2.5);
        assert_eq!(median_ns(&mut []), 0.0);
    }

    #[test]
    fn a_slow_stretch_and_interrupted_runs_do_not_move_the_figure() {
        let mut runs = vec![100u64; 1000];
        runs[300..400].fill(200);
        runs[5] = 50_000;
        runs[700] = 30_000;
        assert_eq!(lowest_batch_median(&runs), 100.0);
        // A program that is slower everywhere is slower.
        assert_eq!(lowest_batch_median(&[150; 1000]), 150.0);
        assert_eq!(lowest_batch_median(&[]), 0.0);
    }

    #[test]
    fn budgets_follow_the_kind_of_case() {
        assert_eq!(budget_of("conntrack hit + DNAT (SYN to the published port)"), Some(HIT_BUDGET_NS));
        assert_eq!(budget_of("reply of the flow: conntrack hit, back to the container"), Some(HIT_BUDGET_NS));
        assert_eq!(budget_of("new flow: conntrack miss, mapping"), Some(NEW_FLOW_BUDGET_NS));
        assert_eq!(budget_of("first packet of a flow, on the uplink"), Some(NEW_FLOW_BUDGET_NS));
        assert_eq!(budget_of("miss (SYN to a port not published)"), None);
        assert_eq!(budget_of("empty tc program (runner overhead)"), None);
        // A new flow into a filled table keeps the budget; the floors have none.
        assert_eq!(budget_of(NEW_FLOW_CASE), Some(NEW_FLOW_BUDGET_NS));
        assert_eq!(budget_of(NEW_FLOW_FILLED_CASE), Some(NEW_FLOW_BUDGET_NS));
        assert_eq!(budget_of(NEW_FLOW6_CASE), Some(NEW_FLOW_BUDGET_NS));
        assert_eq!((budget_of(FLOOR_CASE), budget_of(FLOOR_FILLED_CASE), budget_of(FLOOR6_CASE)), (None, None, None));
    }

    #[test]
    fn every_set_of_new_flows_is_new_to_the_others_and_to_the_measured_flow() {
        let sets = [ClientSet::SmallestSize, ClientSet::LargestSize, ClientSet::Fill, ClientSet::AtFill];
        let client = |set| new_flow_syn(set, 0, (HOST, HIT_PORT))[26..30].to_vec();
        let mut clients: Vec<Vec<u8>> = sets.iter().map(|&s| client(s)).collect();
        clients.push(CLIENT.to_vec());
        clients.sort();
        clients.dedup();
        assert_eq!(clients.len(), sets.len() + 1, "a client address per set, none the measured flow's");
        // Within a set, every run is a new client port.
        assert_ne!(
            new_flow_syn(ClientSet::Fill, 0, (HOST, HIT_PORT)),
            new_flow_syn(ClientSet::Fill, 1, (HOST, HIT_PORT))
        );
    }
}
