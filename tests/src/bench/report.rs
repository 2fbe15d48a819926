//! `RESULTS.md` (tables, targets, method), `results.json` (every raw
//! number) and `connrate.svg`. The masquerade and policy sections are
//! rendered by `report_masq.rs` and `report_policy.rs`.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use super::{
    bed::{Variant, HIT_PORT},
    options::Section,
    plot, report_masq, report_policy,
    results::{Results, Series, Target, VariantFigures},
};

pub fn write(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("results.json"), json + "\n").context("writing results.json")?;
    if !r.variants.is_empty() {
        plot::conn_rate_svg(r, &dir.join("connrate.svg"))?;
    }
    std::fs::write(dir.join("RESULTS.md"), markdown(r)).context("writing RESULTS.md")?;
    Ok(())
}

pub(super) fn values(s: &Series, digits: usize) -> String {
    s.values.iter().map(|v| format!("{v:.digits$}")).collect::<Vec<_>>().join(" / ")
}

pub(super) fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn markdown(r: &Results) -> String {
    let mut s = String::new();
    header(&mut s, r);
    targets(&mut s, r);
    failures(&mut s, r);
    if r.method.sections.contains(&Section::Publish.name()) {
        conn_rate(&mut s, r);
        throughput_latency(&mut s, r);
        publish_one(&mut s, r);
        publish_all(&mut s, r);
        prog_run(&mut s, r);
    }
    if let Some(m) = &r.masquerade {
        report_masq::section(&mut s, r, m);
    }
    if let Some(f) = &r.ipv6 {
        super::report_ipv6::section(&mut s, r, f);
    }
    if let Some(c) = &r.containers {
        super::containers::section(&mut s, r, c);
    }
    if let Some(p) = &r.policy {
        report_policy::section(&mut s, r, p);
    }
    if let Some(c) = &r.control {
        super::control::section(&mut s, r, c);
    }
    if let Some(a) = &r.attach {
        super::attach::section(&mut s, a);
    }
    if let Some(d) = &r.drop {
        super::drop::section(&mut s, r, d);
    }
    method(&mut s, r);
    s
}

pub(super) fn met(t: &Target) -> &'static str {
    match t.met {
        Some(true) => "**yes**",
        Some(false) => "**NO**",
        None => "not measured",
    }
}

/// A section's own targets, repeated under its heading.
pub(super) fn section_targets(s: &mut String, r: &Results, section: Section) {
    let _ = writeln!(
        s,
        "Targets:
"
    );
    for t in r.targets.iter().filter(|t| t.section == section.name()) {
        let _ = writeln!(s, "- {}: {} — met: {}", t.what, t.measured, met(t));
    }
    s.push('\n');
}

fn header(s: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(s, "# netpath benchmark: published ports, masquerade and policy, against iptables and nftables\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` (`tests/src/bin/netpath-bench.rs`); raw numbers in \
         [`results.json`](results.json). Absolute figures drift on shared machines: compare within \
         one run, by the ratios. Sections: {}.{}\n",
        r.method.sections.join(", "),
        if r.method.quick { " **This is a `--quick` run (1 run, fewer sizes): not for quoting.**" } else { "" }
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date (UTC) | {} |", r.date);
    let _ = writeln!(s, "| source measured | {} |", m.source);
    let _ = writeln!(s, "| kernel (`uname -r`) | {} |", m.kernel);
    let _ = writeln!(s, "| CPU (`/proc/cpuinfo`) | {} |", m.cpu);
    let _ = writeln!(s, "| `nproc` | {} |", m.nproc);
    let _ = writeln!(s, "| clocksource | {} |", m.clocksource);
    let _ = writeln!(s, "| iptables | {} |", m.iptables);
    let _ = writeln!(s, "| nft | {} |", m.nft);
    let _ = writeln!(
        s,
        "| load average (`/proc/loadavg`) before the run / after it (includes the run's own threads) | {} / {} |",
        m.loadavg_before, r.loadavg_after
    );
    let _ = writeln!(
        s,
        "| rounds | {} (medians quoted), {} s per load measurement, total {:.0} s |",
        r.method.rounds, r.method.seconds_per_load_measurement, r.wall_time_s
    );
    let settles: Vec<String> =
        r.settles.iter().map(|q| format!("{} {:.0} s ({:.0}% busy)", q.phase, q.waited_s, q.busy_pct)).collect();
    let _ = writeln!(
        s,
        "| waited for a quiet machine (all CPUs at most 25% busy for a second, up to 60 s) before each phase | {} |\n",
        if settles.is_empty() { "-".to_string() } else { settles.join("; ") }
    );
}

fn targets(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Targets\n\n| section | target | measured (medians) | met |\n|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(s, "| {} | {} | {} | {} |", t.section, t.what, t.measured, met(t));
    }
    s.push('\n');
}

fn failures(s: &mut String, r: &Results) {
    if r.failures.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Failures\n\nThese were left out of the medians (full messages in results.json):\n");
    for f in &r.failures {
        let one_line = f.replace('\n', " ");
        let short: String = one_line.chars().take(400).collect();
        let _ = writeln!(s, "- {short}{}", if short.len() < one_line.len() { " ..." } else { "" });
    }
    s.push('\n');
}

fn nonat(r: &Results) -> Option<&VariantFigures> {
    r.variant(Variant::NoNat)
}

fn conn_rate(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Published ports: short TCP connections per second\n");
    let _ = writeln!(
        s,
        "Connect, 32-byte request, 64-byte answer, close; {} client threads in the world namespace, \
         {} accept threads in the container. Median connections/s over the rounds, and the ratio to \
         no-nat at the same size (no-nat publishes nothing: its row is the same setup measured again).\n",
        r.method.client_threads, r.method.server_threads
    );
    let _ = write!(s, "| published ports |");
    for v in &r.variants {
        let _ = write!(s, " {} | ratio |", v.variant.name());
    }
    let _ = write!(s, "\n|---:|");
    for _ in &r.variants {
        s.push_str("---:|---:|");
    }
    s.push('\n');
    for &ports in &r.method.sizes {
        let base = nonat(r).and_then(|z| z.rate_at(ports));
        let _ = write!(s, "| {ports} |");
        for v in &r.variants {
            let rate = v.rate_at(ports).unwrap_or(f64::NAN);
            let _ = write!(s, " {rate:.0} | {} |", ratio(rate, base));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nPer round (connections/s, failed connections):\n");
    for v in &r.variants {
        let cells: Vec<String> = v
            .conn_rate
            .iter()
            .map(|p| {
                format!(
                    "{} ports: {} (errors {})",
                    p.ports,
                    values(&p.per_sec, 0),
                    p.errors.iter().map(u64::to_string).collect::<Vec<_>>().join("/")
                )
            })
            .collect();
        let _ = writeln!(s, "- {}: {}", v.variant.name(), cells.join("; "));
    }
    let _ = writeln!(s, "\n![connection rate against published ports](connrate.svg)\n");
    conn_rate_one_cpu(s, r);
}

/// The CPU cost of the path: clients, server and softirq on one vCPU.
fn conn_rate_one_cpu(s: &mut String, r: &Results) {
    if r.variants.iter().all(|v| v.conn_rate_one_cpu.is_empty()) {
        return;
    }
    let _ = writeln!(s, "## Published ports: connections per second on one vCPU\n");
    let _ = writeln!(
        s,
        "The same short connections with the client threads and the server's accept threads pinned to one vCPU; \
         veth delivery runs its softirq on the sending CPU, so the whole path shares it and the rate is the \
         inverse of the CPU it costs per connection (µs/conn). Ratios to no-nat (plain routing) at the same size.\n"
    );
    let _ = write!(s, "| published ports |");
    for v in &r.variants {
        let _ = write!(s, " {} | ratio | µs/conn |", v.variant.name());
    }
    let _ = write!(s, "\n|---:|");
    for _ in &r.variants {
        s.push_str("---:|---:|---:|");
    }
    s.push('\n');
    for &ports in &r.method.sizes {
        let base = nonat(r).and_then(|z| z.one_cpu_rate_at(ports));
        let _ = write!(s, "| {ports} |");
        for v in &r.variants {
            let rate = v.one_cpu_rate_at(ports).unwrap_or(f64::NAN);
            let _ = write!(s, " {rate:.0} | {} | {:.1} |", ratio(rate, base), 1e6 / rate);
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nPer round (connections/s):\n");
    for v in &r.variants {
        let cells: Vec<String> =
            v.conn_rate_one_cpu.iter().map(|p| format!("{} ports: {}", p.ports, values(&p.per_sec, 0))).collect();
        let _ = writeln!(s, "- {}: {}", v.variant.name(), cells.join("; "));
    }
    s.push('\n');
}

fn throughput_latency(s: &mut String, r: &Results) {
    let base = nonat(r);
    let _ =
        writeln!(s, "## Published ports: single-stream throughput and request/response latency (1 published port)\n");
    let _ = writeln!(
        s,
        "Throughput: one connection, 256 KiB writes for {} s, counted by the receiver. Latency: one \
         persistent connection with TCP_NODELAY, {} round trips of 64 bytes after 200 warm-up ones, \
         with the client and the server thread pinned to the same CPU (without that, wake-ups across \
         the two vCPUs of this machine add a bimodal 15-50 µs that has nothing to do with the path).\n",
        r.method.seconds_per_load_measurement, r.method.latency_round_trips
    );
    let _ = writeln!(s, "| variant | Gbit/s | vs no-nat | rounds | p50 µs | p99 µs | p50 vs no-nat | p99 vs no-nat | p50 rounds | p99 rounds |");
    let _ = writeln!(s, "|---|---:|---:|---|---:|---:|---:|---:|---|---|");
    for v in &r.variants {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |",
            v.variant.name(),
            v.throughput_gbit.median,
            ratio(v.throughput_gbit.median, base.map(|b| b.throughput_gbit.median)),
            values(&v.throughput_gbit, 2),
            v.latency_p50_us.median,
            v.latency_p99_us.median,
            ratio(v.latency_p50_us.median, base.map(|b| b.latency_p50_us.median)),
            ratio(v.latency_p99_us.median, base.map(|b| b.latency_p99_us.median)),
            values(&v.latency_p50_us, 1),
            values(&v.latency_p99_us, 1),
        );
    }
    s.push('\n');
}

fn publish_one(s: &mut String, r: &Results) {
    let largest = r.method.sizes.last().copied().unwrap_or(1);
    let _ = writeln!(s, "## Published ports: publishing one more port when {largest} exist\n");
    let _ = writeln!(
        s,
        "| variant | operation timed | samples | median ms | min - max ms | everything per port (median ms) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---|---|");
    for v in &r.variants {
        let (Some(op), Some(full)) = (&v.publish_one_ms, &v.publish_one_full_ms) else { continue };
        let (what, everything) = match v.variant {
            Variant::Netpath => {
                ("`POST /v1/mappings` round trip, in-process client".to_string(), "the same".to_string())
            }
            Variant::Iptables => (
                "`iptables -t nat -A DOCKER ... -j DNAT` wall time".to_string(),
                format!("{:.3} for Docker's 3 commands (DNAT, filter ACCEPT, POSTROUTING MASQUERADE)", full.median),
            ),
            Variant::Nftables => {
                ("`nft add element ip nat ports { P : C . 80 }` wall time".to_string(), "the same".to_string())
            }
            Variant::NoNat | Variant::NetpathStack => continue,
        };
        let min = op.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = op.values.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {} | {what} | {} | {:.3} | {min:.3} - {max:.3} | {everything} |",
            v.variant.name(),
            op.values.len(),
            op.median
        );
    }
    let _ = writeln!(
        s,
        "\nThe iptables and nft figures are whole process runs (fork, exec, netlink), started from a \
         thread inside the host namespace (no `ip netns exec`), which is how Docker runs iptables.\n"
    );
}

fn publish_all(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Published ports: getting to N published ports (informational)\n");
    let _ = writeln!(
        s,
        "iptables: `iptables-restore` of the whole Docker layout; nftables: `nft -f` of the whole \
         table; netpath: one bulk API call (`\"specs\": [...]`, all or nothing) with every port \
         added since the previous size, after taking the hit port out (it is published again last). \
         One value each, milliseconds (informational).\n"
    );
    let _ = write!(s, "| variant |");
    for p in &r.method.sizes {
        let _ = write!(s, " {p} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &r.method.sizes {
        s.push_str("---:|");
    }
    s.push('\n');
    for v in r.variants.iter().filter(|v| v.variant != Variant::NoNat) {
        let _ = write!(s, "| {} |", v.variant.name());
        for (_, ms) in &v.publish_all_ms {
            let _ = write!(s, " {ms:.1} |");
        }
        s.push('\n');
    }
    s.push('\n');
}

fn prog_run(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Published ports: nanoseconds per packet under BPF_PROG_TEST_RUN\n");
    let _ = writeln!(
        s,
        "The kernel's per-run duration with a fresh copy of the frame each time (repeat = 1), over {} runs in \
         10 consecutive batches, taking the lowest batch median (medians: a run that a host interrupt or stolen time \
         lands in takes microseconds and moves a mean by tens of percent on a shared machine; the lowest batch: a \
         neighbour thrashing the shared caches for a while slows a program that reads maps by up to 2x, not the \
         empty one), median over the rounds (each round loads the object afresh); \"net\" subtracts the same figure for an empty tc program \
         (`r0 = 0; exit`); \"loop net\" does the same for the repeat loop. The kernel's own repeat loop (repeat = {}) reruns the program on the *same* \
         skb, so after the first repetition a DNATed SYN is addressed to the container and misses \
         conntrack: the loop column for the hit shows that figure and how many repetitions really hit. \
         For the miss, which rewrites nothing, the loop is valid and cross-checks the fresh-frame method. \
         At the largest number of ports `CONTAINERS` also holds {} containers (as many as the attach curve \
         attaches), so that the cost is shown against both. The \"kernel floor\" row is a minimal program, \
         assembled by the benchmark, that does only what any new flow pays hash-table conntrack in the kernel: \
         one lookup that misses and two inserts into an LRU hash of the conntrack table's size, key and value, \
         on the new-flow case's frames; the new flow's figure minus it is netpath's own work, and it shows how \
         much of the new-flow budget this machine leaves at the time of the run. Every size's new flows start \
         from the same table (the earlier sizes' new flows are removed first: a fuller table slows every insert \
         whatever the numbers of ports and containers, which is what the sizes vary); the \"already holding\" \
         rows time the same new flows, and the floor, once the table holds 100000 entries of other flows. \
         The IPv6 rows time the same flow's hits over IPv6 (the mapping answers on both families), and new \
         IPv6 flows to the same port beside the kernel floor of IPv6's keys and entries (40 and 120 bytes \
         against IPv4's 16 and 72), at one published port: the IPv4 entry point, its tail call to the IPv6 \
         half, and that half's tail call to the IPv6 fast path, whose decision, with the flags the benchmark \
         configures, is to leave the packet to the stack. The container's reply is addressed to the gateway's \
         MAC, as a container sends it to the world, so the veth's figures include the routing decision's call \
         of the route lookup that checks a translated packet against its route, which fails at once there \
         since the runner's frame arrives on no interface (runs before 2026-12-06 addressed it to the \
         uplink's MAC, which the routing decision left at once: about 100 ns less). Those rows time the \
         datapath with the fast path off, the stack delivering. The rows marked \"(the default)\" time the \
         same hits with the fast path on, as the agent configures it by default, in a harness whose namespace \
         is wired as a host's (an uplink with the host's addresses and the client as a resolved neighbour, \
         the container's veth pair, forwarding on), the frames arriving on those interfaces: the SYN \
         translated and redirected into the container (its MTU checked, its verdict carried, counted on its \
         veth), the reply translated, its route looked up in full and redirected out of the uplink; every run \
         checked to have been redirected and to have inserted nothing. The two \"container to container\" \
         rows time, in the same harness, a second container's flow with the first (c1's SYN to c2's MAC, \
         c2's answer): judged by the sender's verdict and by the receiver's, looked up in their scopes \
         after the NAT scope's miss, and redirected into the receiver (no translation: no hit budget).\n",
        r.method.prog_run_calls,
        r.method.prog_run_calls,
        super::attach::CONTAINERS
    );
    let _ = writeln!(
        s,
        "| program | case | published ports | containers | fresh-frame ns | net ns | repeat-loop ns | loop net ns | loop repetitions that hit |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in &r.prog_run {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
            f.program,
            f.case,
            f.mappings,
            f.containers,
            f.fresh_ns.median,
            f.net_ns.median,
            f.loop_ns.as_ref().map(|l| format!("{:.1}", l.median)).unwrap_or_else(|| "-".into()),
            f.loop_net_ns.as_ref().map(|l| format!("{:.1}", l.median)).unwrap_or_else(|| "-".into()),
            f.loop_hits
                .as_ref()
                .map(|l| format!("{:.0} of {}", l.median, r.method.prog_run_calls))
                .unwrap_or_else(|| "-".into()),
        );
    }
    s.push('\n');
}

fn method(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Method (published ports; the other sections build on it)

Every variant has its own fresh network namespaces, built with the test harness (`Topology`): a
host namespace (uplink `up0` 198.18.0.1/24, bridge `np0`, one container veth), a world namespace
(`eth0` 198.18.0.2/24) and one container namespace; names carry a per-run prefix and everything is
deleted afterwards, also on failure or Ctrl-C. Nothing is added to the machine's own namespace and
no packet leaves the namespaces.

The four beds exist side by side for the whole section (each section has beds of its own, and the
sections run one after the other, so at most one netpath agent runs at a time). At each size every bed is first grown to that
many published ports; then each measurement window runs on one bed after the other, and this is
repeated {rounds} times (rounds), the starting bed rotating from round to round, so that load from
elsewhere on the machine falls on every variant about equally. Tables quote the median over the
rounds. While netpath's agent runs, its cgroup socket hooks (filtered to its own namespace) also
see the other beds' `connect()` calls, a cost of a few tens of nanoseconds per connection.

- **no-nat** (the ceiling): a plain Linux bridge and veth pair made with `ip`, IPv4 forwarding on,
  no netfilter rules, no BPF; the world routes the container subnet via 198.18.0.1 and connects
  straight to the container's address, port 80.
- **iptables**: the same plain topology with Docker 20.10's layout loaded by `iptables-restore`
  into the host namespace: nat `PREROUTING -m addrtype --dst-type LOCAL -j DOCKER`, `OUTPUT`,
  `POSTROUTING -s <subnet> ! -o np0 -j MASQUERADE`, and per published port a DNAT rule in the nat
  `DOCKER` chain, an ACCEPT in the filter `DOCKER` chain and a hairpin MASQUERADE in `POSTROUTING`;
  filter `FORWARD` policy DROP with `DOCKER-USER` and the two isolation stages. The hit port's
  rules come last, so a new connection walks every DNAT rule before its own. (All ports lead to
  the container's port 80, so the filter `DOCKER` rules are identical and the first one matches.)
  `iptables` here is the nf_tables backend (`iptables --version` above), as Docker uses on Debian 12.
- **nftables**: the same plain topology with one `ip nat` table: a map `inet_service : ipv4_addr .
  inet_service` holding every port, `fib daddr type local dnat ip to tcp dport map @ports` in a
  prerouting nat chain and a masquerade rule; loaded with `nft -f`.
- **netpath**: the release `netpathd` started by the harness in the host namespace with its default
  settings (tc programs on the uplink and the container's veth; whether XDP goes on the uplink is
  the agent's choice, stated below), container attached with `netpathctl container add`, ports published with
  `POST /v1/mappings {{\"spec\": \"<port>:c1:80\"}}` through `netpath_userspace::client::Client`
  in-process; the hit port {HIT_PORT} is taken out and published again last at every size.

Ports: the hit port is {HIT_PORT}; the others are 20000 upwards, all to the container's port 80;
one-more-port timings use 40000 upwards. Sizes: {sizes:?}.

Load: the server in the container has {st} threads blocking in `accept()` on one listener
(backlog 4096); each connection starts with a 32-byte hello that selects short request, sink or
echo. Clients run on {ct} threads in the world namespace; short connections close with
`SO_LINGER` 0 (RST, no TIME_WAIT) and `net.ipv4.tcp_tw_reuse=1` is set in the world, so the
ephemeral range (32768-60999) is never exhausted. Each connection-rate and throughput figure
is a {secs} s window; every loop is also bounded in count. The machine has {nproc} CPUs shared by
clients, server, forwarding and the agent, so all figures are CPU-bound: read the ratios.
",
        rounds = r.method.rounds,
        sizes = r.method.sizes,
        st = r.method.server_threads,
        ct = r.method.client_threads,
        secs = r.method.seconds_per_load_measurement,
        nproc = r.machine.nproc,
    );
    setup_notes(s, r.variants.iter().flat_map(|v| &v.notes));
}

/// The "Setup as it ran" list closing a section: every variant's notes, as
/// the beds recorded them.
pub fn setup_notes<'a>(s: &mut String, notes: impl IntoIterator<Item = &'a String>) {
    let mut notes = notes.into_iter().peekable();
    if notes.peek().is_none() {
        return;
    }
    let _ = writeln!(s, "Setup as it ran:\n");
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push('\n');
}
