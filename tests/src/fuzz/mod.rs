//! A packet fuzzer on `BPF_PROG_TEST_RUN`: random and bent frames (see
//! [`gen`]) through every tc and XDP program, with populated maps (a
//! container, published ports, masquerade, policy rules, flows tracked by
//! running real conversations first), checking on every frame:
//!
//! - **policy**: a new flow the rules deny (judged by
//!   `netpath_userspace::policy::Evaluator` on the same rules, and icc) is
//!   dropped by the veth programs; frames the fuzzer's own parser
//!   ([`model`]) cannot read (malformed, a later fragment whose first one
//!   did not pass, an ICMP error about no flow of the container's) do not
//!   pass them; the container sends from its own MAC and address only;
//! - **checksums**: a rewritten frame keeps every checksum that held;
//! - **private source**: nothing leaves the uplink with a container-subnet
//!   source (masquerade on, not routed), also on the path a frame takes
//!   through the host (veth ingress, the host's IP input, uplink egress);
//! - **direct access**: the uplink drops frames addressed to the subnet;
//! - **runs**: every run succeeds with a known verdict, keeps the frame's
//!   length, and hooks that never translate never rewrite.
//!
//! Two worlds run side by side, each in its own network namespace on its
//! own thread: default allow with a deny and allow rules and icc on, and
//! default deny with allow rules and icc off.

pub mod gen;
pub mod model;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use netpath_common::{
    config::{CFG_F_MASQUERADE, CFG_F_NO_ICC, CFG_F_ROUTED, CFG_F_UPLINK_XDP},
    container::{CONTAINER_F_DEFAULT_DENY_IN, CONTAINER_F_DEFAULT_DENY_OUT},
    CtKey4, CtScope, DatapathConfig, Direction, FragKey4, HookId, MappingEntry4, MappingKey4,
};
use netpath_userspace::policy::{self, parse_cidr, parse_filter, Action, ContainerPolicy, Evaluator, Rule};

use self::{
    gen::{in_subnet, Case, Pools, View, NEXT_HOP_MAC},
    model::Class,
};
use crate::{
    fixtures::{self, hex, C1, C1_MAC, CLIENT, CLIENT_MAC, GATEWAY, GATEWAY_MAC, HOST, HOST_MAC, SERVER},
    frames::{self, ETH_P_ARP, ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    prog_run::{self, PacketHarness, TEST_IFINDEX},
};

/// xorshift64* seeded through splitmix64: deterministic, good enough to
/// pick cases, and no dependency. The state is a `Cell` so that a draw can
/// sit inside the arguments of another (`rng.pick(&[1, rng.u8()])`).
pub struct Rng(std::cell::Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng(std::cell::Cell::new((z ^ (z >> 31)) | 1))
    }

    pub fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn u8(&self) -> u8 {
        self.next() as u8
    }

    pub fn u16(&self) -> u16 {
        self.next() as u16
    }

    pub fn u32(&self) -> u32 {
        self.next() as u32
    }

    /// True `percent` times in a hundred.
    pub fn chance(&self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn bytes(&self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// The programs fuzzed, in report order.
pub const PROGRAMS: [HookId; 5] =
    [HookId::VethIngress, HookId::VethEgress, HookId::UplinkIngress, HookId::UplinkEgress, HookId::UplinkXdp];

/// The container's id in its CONTAINERS entry and policy keys.
const C1_ID: u32 = 7;

pub struct Options {
    pub seed: u64,
    /// Random cases per program and world, after the systematic sweep.
    pub frames: usize,
}

/// What one program did with the frames it was given.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub frames: u64,
    pub passed: u64,
    pub dropped: u64,
    pub rewritten: u64,
    /// Frames a property said the program must drop.
    pub must_drop: u64,
    /// Refused by the test runner before the program ran (shorter than an
    /// Ethernet header).
    pub refused: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.frames += o.frames;
        self.passed += o.passed;
        self.dropped += o.dropped;
        self.rewritten += o.rewritten;
        self.must_drop += o.must_drop;
        self.refused += o.refused;
    }
}

/// A property that failed, with the first frame that showed it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub program: &'static str,
    pub property: &'static str,
    pub detail: String,
    pub count: u64,
    pub world: &'static str,
    pub kind: &'static str,
    pub frame: Vec<u8>,
    pub output: Vec<u8>,
}

impl Violation {
    pub fn describe(&self) -> String {
        format!(
            "{} [{}] {}: {} time(s); first in world {}, case kind {}\n  frame  {}\n  output {}",
            self.program,
            self.property,
            self.detail,
            self.count,
            self.world,
            self.kind,
            hex(&self.frame),
            hex(&self.output)
        )
    }
}

pub struct Report {
    pub seed: u64,
    pub frames_option: usize,
    pub counts: BTreeMap<&'static str, Counts>,
    /// Frames and passes by case kind.
    pub kinds: BTreeMap<&'static str, (u64, u64)>,
    pub violations: Vec<Violation>,
    pub elapsed: Duration,
}

impl Report {
    pub fn total_frames(&self) -> u64 {
        self.counts.values().map(|c| c.frames).sum()
    }

    /// One line per program, then the violations.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fuzz seed {} ({} random cases per program and world): {} frames in {:.1} s\n",
            self.seed,
            self.frames_option,
            self.total_frames(),
            self.elapsed.as_secs_f64()
        );
        for (program, c) in &self.counts {
            let _ = writeln!(
                s,
                "  {program:15} {:6} frames: {:6} passed, {:6} dropped ({:6} had to be), {:5} rewritten, {} refused by the runner",
                c.frames, c.passed, c.dropped, c.must_drop, c.rewritten, c.refused
            );
        }
        if self.violations.is_empty() {
            s.push_str("no property violated\n");
        } else {
            let _ = writeln!(s, "{} violated propert(ies):", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "{}", v.describe());
            }
        }
        s
    }

    /// The results file `cargo xtask fuzz` writes.
    pub fn markdown(&self, date: &str, machine: &str) -> String {
        let mut s = String::from("# Packet fuzzer results\n\n");
        let _ = writeln!(
            s,
            "`cargo xtask fuzz --frames {} --seed {}` on {date}, {machine}.",
            self.frames_option, self.seed
        );
        let _ = writeln!(
            s,
            "\n{} frames in {:.1} s through every tc and XDP program under BPF_PROG_TEST_RUN, in two worlds \
             (default allow with rules and icc on; default deny with rules and icc off); see \
             `tests/src/fuzz/mod.rs` for the properties.\n",
            self.total_frames(),
            self.elapsed.as_secs_f64()
        );
        s.push_str("| program | frames | passed | dropped | of which a property required | rewritten | refused by the runner |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (program, c) in &self.counts {
            let _ = writeln!(
                s,
                "| `{program}` | {} | {} | {} | {} | {} | {} |",
                c.frames, c.passed, c.dropped, c.must_drop, c.rewritten, c.refused
            );
        }
        s.push_str("\nFrames by kind (passed): ");
        let kinds: Vec<String> = self.kinds.iter().map(|(k, (n, p))| format!("{k} {n} ({p})")).collect();
        s.push_str(&kinds.join(", "));
        s.push_str("\n\n## Outcome\n\n");
        if self.violations.is_empty() {
            s.push_str("No property violated.\n");
        } else {
            for v in &self.violations {
                let _ = writeln!(
                    s,
                    "- `{}` **{}**: {} ({} times; world {}, kind {})",
                    v.program, v.property, v.detail, v.count, v.world, v.kind
                );
                let _ = writeln!(s, "  - frame `{}`", hex(&v.frame));
                if !v.output.is_empty() {
                    let _ = writeln!(s, "  - output `{}`", hex(&v.output));
                }
            }
        }
        s
    }
}

type RuleText = (Action, Direction, &'static str, &'static str);

/// Datapath settings, the container's defaults and its rules.
struct World {
    name: &'static str,
    cfg_flags: u32,
    default_in: Action,
    default_out: Action,
    rules: &'static [RuleText],
}

use Action::{Allow, Deny};
use Direction::{In, Out};

const WORLDS: [World; 2] = [
    World {
        name: "allow-by-default",
        cfg_flags: 0,
        default_in: Allow,
        default_out: Allow,
        rules: &[
            (Deny, Out, "203.0.113.0/24", "any"),
            (Allow, Out, "203.0.113.0/25", "tcp/443"),
            (Allow, Out, "203.0.113.0/25", "udp/53"),
            (Allow, Out, "203.0.113.0/25", "icmp/8"),
            (Deny, Out, "10.0.0.0/24", "icmp"),
            (Deny, In, "198.18.0.0/24", "tcp/22"),
            (Deny, In, "198.18.0.0/16", "udp"),
            (Allow, In, "198.18.0.2", "udp/5000-5100"),
            (Deny, In, "192.0.2.0/24", "any"),
        ],
    },
    World {
        name: "deny-by-default-no-icc",
        cfg_flags: CFG_F_NO_ICC,
        default_in: Deny,
        default_out: Deny,
        rules: &[
            (Allow, Out, "203.0.113.0/24", "tcp/443"),
            (Allow, Out, "203.0.113.0/24", "udp/53"),
            (Allow, Out, "0.0.0.0/0", "icmp/8"),
            (Allow, Out, "10.0.0.3", "any"),
            (Allow, In, "198.18.0.0/24", "tcp/80"),
            (Deny, In, "198.18.0.128/25", "tcp/80"),
            (Allow, In, "198.18.0.0/24", "udp/53"),
            (Allow, In, "10.0.0.1", "any"),
        ],
    },
];

/// Runs the sweep and `opts.frames` random cases per program in every
/// world (each on its own thread, in its own network namespace).
pub fn run(opts: &Options) -> Result<Report> {
    let start = Instant::now();
    let results: Vec<Result<WorldResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = WORLDS
            .iter()
            .enumerate()
            .map(|(i, world)| {
                let seed = opts.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                s.spawn(move || Fuzzer::new(world, seed).map(|f| f.fuzz(opts.frames)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a fuzzer thread panicked")))).collect()
    });
    let mut report = Report {
        seed: opts.seed,
        frames_option: opts.frames,
        counts: BTreeMap::new(),
        kinds: BTreeMap::new(),
        violations: vec![],
        elapsed: Duration::ZERO,
    };
    for r in results {
        let r = r?;
        for (program, c) in r.counts {
            report.counts.entry(program).or_default().add(&c);
        }
        for (kind, (n, p)) in r.kinds {
            let k = report.kinds.entry(kind).or_default();
            k.0 += n;
            k.1 += p;
        }
        report.violations.extend(r.violations.into_values());
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

struct WorldResult {
    counts: BTreeMap<&'static str, Counts>,
    kinds: BTreeMap<&'static str, (u64, u64)>,
    violations: BTreeMap<(&'static str, &'static str, String), Violation>,
}

struct Fuzzer {
    world: &'static World,
    h: PacketHarness,
    cfg: DatapathConfig,
    eval: Evaluator,
    fds: BTreeMap<&'static str, i32>,
    rng: Rng,
    pools: Pools,
    out: WorldResult,
}

/// Published ports: wildcard TCP and UDP, one bound to the host address,
/// one inside the masquerade range (which it must never hand out).
const MAPPINGS: [([u8; 4], u16, u8, u16); 4] = [
    ([0; 4], 8080, IPPROTO_TCP, 80),
    ([0; 4], 8053, IPPROTO_UDP, 53),
    (HOST, 8443, IPPROTO_TCP, 443),
    ([0; 4], 20500, IPPROTO_UDP, 5353),
];

/// Addresses the host neither forwards from nor to.
fn martian(a: [u8; 4]) -> bool {
    a[0] == 0 || a[0] == 127 || a[0] >= 224
}

impl Fuzzer {
    fn new(world: &'static World, seed: u64) -> Result<Fuzzer> {
        let cfg = DatapathConfig {
            masq_addr4: HOST,
            masq_port_min: 20000,
            masq_port_max: 20999,
            ..fixtures::config(CFG_F_MASQUERADE | world.cfg_flags)
        };
        let mut h = fixtures::harness(&cfg);
        let mut flags = 0;
        if world.default_in == Deny {
            flags |= CONTAINER_F_DEFAULT_DENY_IN;
        }
        if world.default_out == Deny {
            flags |= CONTAINER_F_DEFAULT_DENY_OUT;
        }
        h.dp.set_container(TEST_IFINDEX, &fixtures::container(C1, C1_MAC, C1_ID, flags))?;
        h.dp.sync_host_addrs4(&[(HOST, 2), (GATEWAY, 3)])?;
        for (i, (addr, port, proto, container_port)) in MAPPINGS.iter().enumerate() {
            let key = MappingKey4 { addr: *addr, port: port.to_be(), proto: *proto, _pad: 0 };
            let value = MappingEntry4 {
                container_addr: C1,
                container_port: container_port.to_be(),
                _pad: 0,
                id: i as u32 + 1,
                container_ifindex: TEST_IFINDEX,
            };
            h.dp.set_mapping(&key, &value)?;
        }
        let rules: Vec<Rule> = world
            .rules
            .iter()
            .map(|(action, direction, cidr, filter)| {
                let (proto, ports) = parse_filter(filter)?;
                Ok(Rule { action: *action, direction: *direction, cidr: parse_cidr(cidr)?, proto, ports })
            })
            .collect::<Result<_, policy::RuleError>>()?;
        fixtures::write_rules4(&mut h, C1_ID, &rules)?;
        let eval =
            Evaluator::new(&ContainerPolicy { default_in: world.default_in, default_out: world.default_out, rules });
        let mut fds = BTreeMap::new();
        for hook in PROGRAMS {
            fds.insert(hook.program(), h.dp.program_fd(hook.program())?);
        }
        let out = WorldResult { counts: BTreeMap::new(), kinds: BTreeMap::new(), violations: BTreeMap::new() };
        Ok(Fuzzer { world, h, cfg, eval, fds, rng: Rng::new(seed), pools: Pools::default(), out })
    }

    fn fuzz(mut self, frames: usize) -> WorldResult {
        self.setup();
        for hook in PROGRAMS {
            let cases = gen::sweep(&self.rng, View::of(hook), &self.pools);
            for case in cases {
                self.case(hook, case);
            }
        }
        for i in 0..frames {
            if i % 256 == 0 {
                self.refresh_pools();
            }
            for hook in PROGRAMS {
                let case = gen::random(&self.rng, View::of(hook), &self.pools);
                self.case(hook, case);
            }
        }
        self.out
    }

    /// Real conversations first, so that the maps hold tracked flows of
    /// every kind: masqueraded TCP, UDP and echo from the container,
    /// published TCP and UDP from outside, hairpin to itself, a flow to
    /// another container, a protocol without ports, a fragmented datagram.
    fn setup(&mut self) {
        let out = |proto: u8, dst: [u8; 4], sport: u16, dport: u16| {
            let key = CtKey4 { icmp_type: 8, ..CtKey4::new(C1, dst, sport.to_be(), dport.to_be(), proto) };
            frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &gen::packet_with(&key, 0x02, b"setup"))
        };
        let from_outside = |proto: u8, dport: u16| {
            let key = CtKey4::new(CLIENT, HOST, 41000u16.to_be(), dport.to_be(), proto);
            frames::eth(HOST_MAC, CLIENT_MAC, ETH_P_IPV4, &gen::packet_with(&key, 0x02, b"setup"))
        };
        let starts = [
            (HookId::VethIngress, out(IPPROTO_TCP, SERVER, 40000, 443)),
            (HookId::VethIngress, out(IPPROTO_UDP, SERVER, 5000, 53)),
            (HookId::VethIngress, out(IPPROTO_ICMP, SERVER, 0x77, 0x77)),
            (HookId::VethIngress, out(IPPROTO_TCP, HOST, 42000, 8080)),
            (HookId::VethIngress, out(IPPROTO_TCP, fixtures::C2, 40001, 80)),
            (HookId::VethIngress, out(47, SERVER, 0, 0)),
            (HookId::UplinkIngress, from_outside(IPPROTO_TCP, 8080)),
            (HookId::UplinkIngress, from_outside(IPPROTO_UDP, 8053)),
            (HookId::UplinkIngress, from_outside(IPPROTO_TCP, 8443)),
        ];
        for (hook, frame) in starts {
            if let Some((last, delivered)) = self.trip(hook, &frame) {
                self.reply(last, &delivered);
            }
        }
        let mut first = out(IPPROTO_UDP, SERVER, 5002, 53);
        first.extend_from_slice(&[0xab; 16]);
        let total = (first.len() - 14) as u16;
        first[16..18].copy_from_slice(&total.to_be_bytes());
        let (a, b) = frames::split_ipv4(&first[14..], 0x4242, 16);
        self.trip(HookId::VethIngress, &frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &a));
        self.trip(HookId::VethIngress, &frames::eth(GATEWAY_MAC, C1_MAC, ETH_P_IPV4, &b));
        self.refresh_pools();
    }

    /// Runs a frame and follows it through the host as far as it goes;
    /// returns the hook that saw it last and what left that hook.
    fn trip(&mut self, hook: HookId, frame: &[u8]) -> Option<(HookId, Vec<u8>)> {
        let mut at = (hook, self.run(hook, "setup", frame)?);
        while let Some((next, fwd)) = next_hop(at.0, &at.1) {
            at = (next, self.run(next, "setup", &fwd)?);
        }
        Some(at)
    }

    /// Answers a delivered frame from its receiver, SYN-ACK for TCP.
    fn reply(&mut self, last: HookId, delivered: &[u8]) {
        let Class::Flow(flow) = model::classify(delivered) else { return };
        let key = flow.key.reversed();
        let (hook, smac, dmac) = match last {
            HookId::VethEgress => (HookId::VethIngress, C1_MAC, GATEWAY_MAC),
            HookId::UplinkEgress => (HookId::UplinkIngress, NEXT_HOP_MAC, HOST_MAC),
            _ => return,
        };
        let frame = frames::eth(dmac, smac, ETH_P_IPV4, &gen::packet_with(&key, 0x12, b"reply"));
        self.trip(hook, &frame);
    }

    /// Tuples tracked now (any scope), for frames of known flows.
    fn refresh_pools(&mut self) {
        let mut keys: Vec<CtKey4> = match self.h.dp.ct_entries() {
            Ok(entries) => entries.into_iter().map(|(k, _)| k.in_scope(CtScope::Nat)).collect(),
            Err(_) => return,
        };
        keys.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto, k.icmp_type));
        keys.dedup();
        while keys.len() > 512 {
            let i = self.rng.below(keys.len());
            keys.swap_remove(i);
        }
        self.pools.tracked = keys;
    }

    fn case(&mut self, hook: HookId, case: Case) {
        for frame in &case.frames {
            if let Some(out) = self.run(hook, case.kind, frame) {
                if let Some((next, fwd)) = next_hop(hook, &out) {
                    self.run(next, "path", &fwd);
                }
            }
        }
    }

    fn violation(
        &mut self,
        program: &'static str,
        property: &'static str,
        detail: String,
        kind: &'static str,
        frame: &[u8],
        output: &[u8],
    ) {
        let world = self.world.name;
        self.out.violations.entry((program, property, detail.clone())).and_modify(|v| v.count += 1).or_insert_with(
            || Violation {
                program,
                property,
                detail,
                count: 1,
                world,
                kind,
                frame: frame.to_vec(),
                output: output.to_vec(),
            },
        );
    }

    /// Runs one frame through one program and checks every property;
    /// returns the output if the frame passed.
    fn run(&mut self, hook: HookId, kind: &'static str, frame: &[u8]) -> Option<Vec<u8>> {
        let program = hook.program();
        let must_drop = self.must_drop(hook, frame);
        let sums_in = model::sums(frame);
        self.out.kinds.entry(kind).or_default().0 += 1;
        self.out.counts.entry(program).or_default().frames += 1;
        let r = match prog_run::run(self.fds[program], frame, 1) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && refused(hook, frame) => {
                self.out.counts.entry(program).or_default().refused += 1;
                return None;
            }
            Err(e) => {
                self.violation(program, "runs", format!("BPF_PROG_TEST_RUN failed: {e}"), kind, frame, &[]);
                return None;
            }
        };
        let pass = match (hook == HookId::UplinkXdp, r.verdict) {
            (true, fixtures::XDP_PASS) | (false, fixtures::TC_ACT_OK) => true,
            (true, fixtures::XDP_DROP) | (false, fixtures::TC_ACT_SHOT) => false,
            _ => {
                self.violation(program, "runs", format!("unknown verdict {}", r.verdict), kind, frame, &r.data);
                return None;
            }
        };
        let rewritten = r.data != frame;
        let counts = self.out.counts.entry(program).or_default();
        counts.must_drop += must_drop.is_some() as u64;
        counts.passed += pass as u64;
        counts.dropped += !pass as u64;
        counts.rewritten += (pass && rewritten) as u64;
        if r.data.len() != frame.len() {
            self.violation(program, "runs", "the frame changed length".into(), kind, frame, &r.data);
        }
        if !pass {
            return None;
        }
        self.out.kinds.entry(kind).or_default().1 += 1;
        if let Some((property, detail)) = must_drop {
            self.violation(program, property, detail, kind, frame, &r.data);
        }
        if rewritten {
            if matches!(hook, HookId::VethEgress | HookId::UplinkXdp) {
                self.violation(
                    program,
                    "runs",
                    "a hook that never translates rewrote the frame".into(),
                    kind,
                    frame,
                    &r.data,
                );
            }
            self.check_checksums(program, kind, frame, &sums_in, &r.data);
        }
        if hook == HookId::UplinkEgress && !self.cfg.has(CFG_F_ROUTED) && leaves_uplink(frame) {
            if let Some((src, _)) = model::ipv4_addrs(&r.data) {
                if self.cfg.in_subnet4(src) {
                    let via = if kind == "path" { ", on the path from veth_ingress" } else { "" };
                    let detail = format!("{} left with its container-subnet source{via}", describe(frame));
                    self.violation(program, "private source", detail, kind, frame, &r.data);
                }
            }
        }
        Some(r.data)
    }

    fn check_checksums(
        &mut self,
        program: &'static str,
        kind: &'static str,
        frame: &[u8],
        before: &model::Sums,
        out: &[u8],
    ) {
        let after = model::sums(out);
        for ((field, was), (_, now)) in before.fields().into_iter().zip(after.fields()) {
            if was == Some(true) && now != Some(true) {
                let detail = format!("{field} checksum held before the rewrite, not after");
                self.violation(program, "checksums", detail, kind, frame, out);
            }
        }
        if before.all_valid() && before.l4 == Some(true) {
            if let Err(e) = frames::verify_checksums(out) {
                self.violation(program, "checksums", format!("frames::verify_checksums: {e}"), kind, frame, out);
            }
        }
    }

    /// Why the program must drop this frame, if it must.
    fn must_drop(&self, hook: HookId, f: &[u8]) -> Option<(&'static str, String)> {
        match hook {
            HookId::VethIngress => self.sent_by_container(f),
            HookId::VethEgress => self.judge(Direction::In, &model::classify(f)),
            HookId::UplinkIngress if self.cfg.has(CFG_F_UPLINK_XDP) => None,
            HookId::UplinkIngress | HookId::UplinkXdp => {
                let (_, dst) = model::ipv4_addrs(f)?;
                (!self.cfg.has(CFG_F_ROUTED) && self.cfg.in_subnet4(dst))
                    .then(|| ("direct access", format!("addressed to {} in the container subnet", Ipv4Addr::from(dst))))
            }
            _ => None,
        }
    }

    /// What the container may send: its own MAC and address, IPv4 and ARP
    /// only, then icc and policy.
    fn sent_by_container(&self, f: &[u8]) -> Option<(&'static str, String)> {
        let ethertype = model::ethertype(f)?;
        if f[6..12] != C1_MAC {
            return Some(("anti-spoofing", "source MAC is not the container's".into()));
        }
        match ethertype {
            ETH_P_ARP => arp_problem(&f[14..]),
            ETH_P_IPV4 => {
                if let Some((src, _)) = model::ipv4_addrs(f) {
                    if src != C1 {
                        return Some((
                            "anti-spoofing",
                            format!("source {} is not the container's", Ipv4Addr::from(src)),
                        ));
                    }
                }
                let class = model::classify(f);
                // (A frame the model cannot read is judged as malformed.)
                let readable = !matches!(class, Class::Malformed(_));
                if self.cfg.has(CFG_F_NO_ICC) && f[..6] != GATEWAY_MAC && readable {
                    let translated =
                        matches!(&class, Class::Flow(fl) if fl.ported && self.ct_has(&fl.key.in_scope(CtScope::Nat)));
                    if !translated {
                        return Some(("icc", "icc off: a frame to a MAC other than the gateway's".into()));
                    }
                }
                self.judge(Direction::Out, &class)
            }
            other => Some(("anti-spoofing", format!("ethertype {other:#06x} from a container"))),
        }
    }

    /// The policy hooks' promise for a frame in direction `d`.
    fn judge(&self, d: Direction, class: &Class) -> Option<(&'static str, String)> {
        let scope = CtScope::policy(d);
        match class {
            Class::Short | Class::NotIpv4(_) => None,
            Class::Malformed(why) => Some(("malformed", why.to_string())),
            Class::LaterFragment(k) => {
                let key = FragKey4 { scope: scope as u8, ..*k };
                let first_passed = self.h.dp.frag_get4(&key).ok().flatten().is_some();
                (!first_passed).then(|| ("fragment", "a later fragment whose first fragment did not pass".into()))
            }
            Class::IcmpError(Err(why)) => Some(("icmp error", why.to_string())),
            Class::IcmpError(Ok(q)) => {
                let verdict = self.h.dp.ct_get4(&q.reversed().in_scope(scope)).ok().flatten();
                // The quoted packet travelled the other way: its flow's tuple
                // as the container sends it is the quote (in) or its reverse.
                let sent = if d == Out { q.reversed() } else { *q };
                match verdict {
                    Some(e) if e.container_id == C1_ID => None,
                    None if self.carries_verdict(&sent) => None,
                    _ => Some(("icmp error", format!("{d}: about a flow without a verdict of this container"))),
                }
            }
            Class::IcmpOther(k) => {
                let remote = if d == Out { k.daddr } else { k.saddr };
                let port = k.icmp_type as u16;
                if self.cfg.icc_denies4(remote) {
                    return Some(("icc", format!("{d}: ICMP (neither echo nor error) with another container")));
                }
                self.denies(d, remote, IPPROTO_ICMP, port)
            }
            Class::Flow(fl) => {
                let sent = if d == Out { fl.key } else { fl.key.reversed() };
                if self.ct_has(&fl.key.in_scope(scope)) || self.carries_verdict(&sent) {
                    return None; // an existing verdict
                }
                let remote = if d == Out { fl.key.daddr } else { fl.key.saddr };
                let mut judged = vec![(d, fl.policy_port(true))];
                // A packet that cannot start a flow revives one only if
                // either end could have started it.
                if !fl.starts_flow() {
                    judged.push((d.reversed(), fl.policy_port(false)));
                }
                judged.into_iter().find_map(|(starter, port)| {
                    if self.icc_denies(fl, starter, remote, d) {
                        return Some(("icc", format!("{d}: a flow started {starter}, with another container")));
                    }
                    self.denies(starter, remote, fl.key.proto, port)
                })
            }
        }
    }

    fn denies(&self, d: Direction, remote: [u8; 4], proto: u8, port: u16) -> Option<(&'static str, String)> {
        // One line per direction and protocol; the frame shows the rest.
        (self.eval.verdict(d, Ipv4Addr::from(remote), proto, port) == Deny)
            .then(|| ("policy", format!("a new flow started {d}, protocol {proto}, that the rules deny")))
    }

    /// icc off: no flow between containers' own addresses, unless a
    /// published port translated it (its NAT entry is there).
    fn icc_denies(&self, fl: &model::Flow, starter: Direction, remote: [u8; 4], d: Direction) -> bool {
        if !self.cfg.icc_denies4(remote) {
            return false;
        }
        if starter == Out {
            return true;
        }
        let sent = if d == Out { fl.key } else { fl.key.reversed() };
        !self.ct_has(&sent.in_scope(CtScope::Nat))
    }

    /// Does the translated flow of `sent` (a tuple as the container sends
    /// it) carry the container's verdict on its entry?
    fn carries_verdict(&self, sent: &CtKey4) -> bool {
        let entry = self.h.dp.ct_get4(&sent.in_scope(CtScope::Nat)).ok().flatten();
        entry.is_some_and(|e| e.verdict_of(C1_ID))
    }

    fn ct_has(&self, key: &CtKey4) -> bool {
        self.h.dp.ct_get4(key).ok().flatten().is_some()
    }
}

/// Ethernet/IPv4 ARP from the container's own MAC and address (or the
/// RFC 5227 probe address).
fn arp_problem(a: &[u8]) -> Option<(&'static str, String)> {
    if a.len() < 28 || a[..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return Some(("malformed", "ARP that is not Ethernet/IPv4, or cut short".into()));
    }
    if a[8..14] != C1_MAC {
        return Some(("anti-spoofing", "ARP sender MAC is not the container's".into()));
    }
    if a[14..18] != C1 && a[14..18] != [0; 4] {
        return Some(("anti-spoofing", "ARP sender address is not the container's".into()));
    }
    None
}

/// What a frame is, in a few words, for violation details (no addresses:
/// one line per cause).
fn describe(f: &[u8]) -> String {
    match model::classify(f) {
        Class::Short => "a short frame".into(),
        Class::NotIpv4(t) => format!("ethertype {t:#06x}"),
        Class::Malformed(why) => format!("a malformed packet ({why})"),
        Class::LaterFragment(_) => "a later fragment".into(),
        Class::IcmpError(_) => "an ICMP error".into(),
        Class::IcmpOther(k) => format!("ICMP type {}", k.icmp_type),
        Class::Flow(fl) if !fl.ported => format!("protocol {} (no ports)", fl.key.proto),
        Class::Flow(fl) => {
            let what = match (fl.key.proto, fl.icmp_type) {
                (IPPROTO_TCP, _) => "TCP",
                (IPPROTO_UDP, _) => "UDP",
                (_, 0) => "ICMP echo reply",
                _ => "ICMP echo request",
            };
            let starts = if fl.starts_flow() { "that can start a flow" } else { "that cannot start a flow" };
            format!("{what} {starts}")
        }
    }
}

/// The test runner refuses tc frames too short for the network header
/// their ethertype names (IPv4: 20 bytes, IPv6: 40) before any program
/// runs, and anything shorter than an Ethernet header.
fn refused(hook: HookId, f: &[u8]) -> bool {
    let need = match model::ethertype(f) {
        None => return true,
        Some(_) if hook == HookId::UplinkXdp => return false,
        Some(ETH_P_IPV4) => 20,
        Some(frames::ETH_P_IPV6) => 40,
        Some(_) => 0,
    };
    f.len() < model::ETH_LEN + need
}

/// The IP total length of a packet (no Ethernet header) that the host's IP
/// input accepts: a whole IPv4 header with a valid checksum, a total length
/// the bytes hold, neither address martian.
fn ip_input_accepts(ip: &[u8]) -> Option<usize> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let header_ok = ihl >= 20 && ip.len() >= ihl && frames::checksum(&ip[..ihl]) == 0;
    let addrs_ok = !martian([ip[12], ip[13], ip[14], ip[15]]) && !martian([ip[16], ip[17], ip[18], ip[19]]);
    (header_ok && addrs_ok && total >= ihl && total <= ip.len()).then_some(total)
}

/// Could the host send this frame out of the uplink? What its IP output
/// hands to the uplink's egress: a valid header, nothing past the total
/// length, a destination that is neither the subnet nor the host's own.
/// (Only such frames can carry a container's source out.)
fn leaves_uplink(f: &[u8]) -> bool {
    let Some((_, dst)) = model::ipv4_addrs(f) else { return false };
    ip_input_accepts(&f[model::ETH_LEN..]) == Some(f.len() - model::ETH_LEN)
        && !in_subnet(dst)
        && dst != HOST
        && dst != GATEWAY
}

/// Where the host sends a frame that passed `hook`, as its IP input and
/// forwarding would (header checked, cut to the IP total length, TTL
/// decremented), with the next hook that sees it.
pub fn next_hop(hook: HookId, out: &[u8]) -> Option<(HookId, Vec<u8>)> {
    let (_, dst) = model::ipv4_addrs(out)?;
    let (next, smac, dmac) = match hook {
        // Bridged back to the container (hairpin), or routed out of the
        // uplink unless it is local or for another container.
        HookId::VethIngress if dst == C1 => (HookId::VethEgress, GATEWAY_MAC, C1_MAC),
        HookId::VethIngress if out[..6] == GATEWAY_MAC && !in_subnet(dst) && dst != HOST => {
            (HookId::UplinkEgress, HOST_MAC, NEXT_HOP_MAC)
        }
        HookId::UplinkIngress if dst == C1 => (HookId::VethEgress, GATEWAY_MAC, C1_MAC),
        _ => return None,
    };
    let ip = &out[model::ETH_LEN..];
    let total = ip_input_accepts(ip)?;
    if ip[8] <= 1 {
        return None; // TTL exceeded: the host answers, it does not forward
    }
    let mut fwd = frames::eth(dmac, smac, ETH_P_IPV4, &ip[..total]);
    fwd[model::ETH_LEN + 8] -= 1;
    gen::fix_ip_checksum(&mut fwd);
    Some((next, fwd))
}

/// A seed from the clock, for runs that do not ask for one.
pub fn clock_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
}
