//! The masquerade section of `RESULTS.md`.

use std::fmt::Write as _;

use super::{
    bed::Variant,
    masquerade::MasqFigures,
    options::Section,
    report::{ratio, section_targets, values},
    results::Results,
    snat_progrun::FLOWS_PER_DESTINATION,
};

pub fn section(s: &mut String, r: &Results, m: &MasqFigures) {
    let _ = writeln!(s, "## Masquerade: connections and a stream from a container to the world\n");
    section_targets(s, r, Section::Masquerade);
    let _ = writeln!(
        s,
        "Short connections (connect, 32-byte request, 64-byte answer, close with RST) from {} client \
         threads in the container namespace to the server in the world namespace (198.18.0.2, port {}, \
         {} accept threads); single-stream throughput: one connection from the container, 256 KiB \
         writes for {} s. Medians over {} rounds, ratios to no-nat (routed, nothing translated) and to \
         iptables MASQUERADE.\n",
        r.method.client_threads,
        m.server_port,
        r.method.server_threads,
        r.method.seconds_per_load_measurement,
        r.method.rounds
    );
    let base = m.variant(Variant::NoNat);
    let ipt = m.variant(Variant::Iptables);
    let _ = writeln!(s, "| variant | conn/s | vs no-nat | vs iptables | rounds | failed connections | Gbit/s | vs no-nat | rounds | the world's server saw the client as |");
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|---:|---:|---|---|");
    for v in &m.variants {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
            v.variant.name(),
            v.conn_rate.median,
            ratio(v.conn_rate.median, base.map(|b| b.conn_rate.median)),
            ratio(v.conn_rate.median, ipt.map(|b| b.conn_rate.median)),
            values(&v.conn_rate, 0),
            v.errors.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "),
            v.throughput_gbit.median,
            ratio(v.throughput_gbit.median, base.map(|b| b.throughput_gbit.median)),
            values(&v.throughput_gbit, 2),
            v.seen_as.as_deref().unwrap_or("-"),
        );
    }
    s.push('\n');

    let _ = writeln!(s, "### Nanoseconds per packet of the SNAT path under BPF_PROG_TEST_RUN\n");
    let _ = writeln!(
        s,
        "Same method as for the published ports (fresh copy of the frame per run, repeat = 1, \"net\" \
         minus an empty tc program; median over {} rounds, each loading the object afresh), datapath \
         configured as the agent does with masquerade on (masquerade address 198.18.0.1, ports \
         1024-32767). First packets: {} new flows per round, one per run, each judged on the container's veth \
         (where its verdict waits on its NAT entry) and then masqueraded on the uplink, both timed; the container's source port \
         (40000 up, outside the range like Linux's ephemeral ports) cycles over {FLOWS_PER_DESTINATION} \
         values and the destination port moves on after each cycle, so no destination's range is more \
         than 3% used and the first port tried is nearly always free. Later packets (on the uplink, and \
         on the container's veth, where one lookup of the flow's entry judges and translates them) and \
         replies: {} runs on one flow, started as the first packets. The kernel's repeat loop is not used: it reruns the program on its own output, \
         whose source is then the host's address, which is never translated. The same cases over \
         IPv6 (masquerade address {}, the container dual-stack), as many flows, in a table of their own.\n",
        r.method.rounds,
        m.prog_run_allocations,
        r.method.prog_run_calls,
        netpath_tests::topology::HOST_UPLINK_IP6
    );
    let _ = writeln!(s, "| program | case | fresh-frame ns | net ns | rounds (net) |");
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    for f in &m.prog_run {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} |",
            f.program,
            f.case,
            f.fresh_ns.median,
            f.net_ns.median,
            values(&f.net_ns, 1)
        );
    }
    s.push('\n');

    let _ = writeln!(
        s,
        "How: the container's default route is the bridge's gateway, and its connections leave through \
         the host's uplink `up0` to the world.\n\n\
         - **no-nat**: the plain bridge topology; the world has a route back to the container subnet via \
           198.18.0.1; no netfilter rules, no BPF: nothing is translated.\n\
         - **iptables**: the plain topology with Docker 20.10's layout loaded by `iptables-restore`, no \
           port published: nat `POSTROUTING -s <subnet> ! -o np0 -j MASQUERADE`, and the filter `FORWARD` \
           chains a container's packets walk (`DOCKER-USER`, the isolation stages, `-i np0 ! -o np0 -j \
           ACCEPT`, the conntrack ACCEPT for replies).\n\
         - **nftables**: the plain topology with one table, `ip saddr <subnet> oifname != \"np0\" masquerade` \
           in a nat postrouting chain, loaded with `nft -f`.\n\
         - **netpath**: netpathd with its default settings: masquerade to the address of `up0`, ports \
           1024-32767; the world has no route to the container subnet.\n\n\
         Ports and conntrack: a masqueraded flow holds its translated port (per destination) until its \
         tracking goes. The clients close with RST (`SO_LINGER` 0), so the container reuses its \
         ephemeral ports (32768-60999; Linux prefers the even ones for `connect()`) at once, and a \
         reused source port finds its still tracked flow and its translated port again (netpath turns \
         the entry back to new on a SYN; Linux conntrack deletes the closed entry and tracks the new \
         connection afresh). One container calling one server port therefore never needs more \
         translated ports than it has ephemeral ones (28232 <= 31744), whatever the timeouts: that is \
         the bound on this load, rather than shorter timeouts or more server ports (each server port \
         would multiply the flows tracked at once). After the section netpath's drop counters \
         (`nat-ports-exhausted`, `table-full`), the conntrack fill and how long the reset flows stay are \
         read and quoted below: a run that ran out of ports or entries shows there and in the \
         failed-connection counts.\n"
    );
    super::report::setup_notes(s, m.variants.iter().flat_map(|v| &v.notes));
}
