//! The IPv6 section of `RESULTS.md`.

use std::fmt::Write as _;

use super::{
    bed::{Variant, CONTAINER_PORT, HIT_PORT},
    ipv6::{Family, Ipv6Figures},
    options::Section,
    report::{ratio, section_targets, values},
    results::Results,
};

pub fn section(s: &mut String, r: &Results, f: &Ipv6Figures) {
    let _ = writeln!(s, "## IPv6 beside IPv4: a published port over both families\n");
    section_targets(s, r, Section::Ipv6);
    let _ = writeln!(
        s,
        "Dual-stack beds: the same short connections ({} client threads in the world, {} accept threads \
         in the container per family) and single-stream throughput as for the published ports, to one \
         published port ({HIT_PORT} -> {CONTAINER_PORT}) over IPv4 (198.18.0.1) and over IPv6 \
         (2001:db8:18::1), {} s each, the families and variants interleaved round by round. Medians over \
         {} rounds; ratios to no-nat over the same family.\n",
        r.method.client_threads, r.method.server_threads, r.method.seconds_per_load_measurement, r.method.rounds
    );
    let base = f.variant(Variant::NoNat);
    let _ = writeln!(
        s,
        "| variant | IPv4 conn/s | vs no-nat | IPv6 conn/s | vs no-nat | IPv6/IPv4 | IPv6 rounds | IPv6 failed | \
         IPv4 Gbit/s | vs no-nat | IPv6 Gbit/s | vs no-nat |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|");
    for v in &f.variants {
        let (Some(v4), Some(v6)) = (v.family(Family::Ipv4), v.family(Family::Ipv6)) else { continue };
        let rate4 = v4.conn_rate.median;
        let rate6 = v6.conn_rate.median;
        let _ = writeln!(
            s,
            "| {} | {rate4:.0} | {} | {rate6:.0} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} |",
            v.variant.name(),
            ratio(rate4, base.and_then(|b| b.rate(Family::Ipv4))),
            ratio(rate6, base.and_then(|b| b.rate(Family::Ipv6))),
            ratio(rate6, Some(rate4)),
            values(&v6.conn_rate, 0),
            v6.errors.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "),
            v4.throughput_gbit.median,
            ratio(v4.throughput_gbit.median, base.and_then(|b| b.gbit(Family::Ipv4))),
            v6.throughput_gbit.median,
            ratio(v6.throughput_gbit.median, base.and_then(|b| b.gbit(Family::Ipv6))),
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "How: the plain beds add IPv6 to the plain topology (fd00:b6::/64 on the bridge, the container \
         fd00:b6::2 with a default route, IPv6 forwarding on; the uplink pair 2001:db8:18::1 and ::2).\n\n\
         - **no-nat**: the world routes both container subnets via the host and connects to the \
           container's own addresses.\n\
         - **iptables**: Docker 20.10's layout for a container with an IPv6 address: the IPv4 rules by \
           `iptables-restore`, the same chains by `ip6tables-restore` (DNAT to [fd00:b6::2]:80, the \
           filter FORWARD chains, MASQUERADE of the subnet).\n\
         - **nftables**: the `ip nat` table of the published-ports section and an `ip6 nat` table with \
           the same verdict map typed `ipv6_addr . inet_service`.\n\
         - **netpath** / **netpath-stack**: netpathd with IPv6 on its uplink before it starts and its \
           default `subnet6 auto` (a ULA /64: the container gets its IPv6 address from it) and one \
           mapping without a host address, which answers on both families. netpath takes the fast path \
           over IPv6 as over IPv4 (`forward6`); netpath-stack (`--no-fast-path`) goes through the \
           bridge and the stack.\n"
    );
    super::report::setup_notes(s, f.variants.iter().flat_map(|v| &v.notes));
}
