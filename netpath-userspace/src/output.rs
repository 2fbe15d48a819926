//! Human-readable tables for `netpathctl`.

use crate::model::{ConntrackStatus, Container, Flow, InterfaceStats, Mapping, PolicyView, StatsView, Status};

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn drops_summary(s: &InterfaceStats) -> String {
    if s.drops.is_empty() {
        return "0".into();
    }
    s.drops.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub fn containers_table(containers: &[Container]) -> String {
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.runtime_name.clone().unwrap_or_else(|| "-".into()),
                c.ip.map_or_else(|| "-".into(), |a| a.to_string()),
                c.ip6.map_or_else(|| "-".into(), |a| a.to_string()),
                c.mac.clone(),
                c.veth.clone(),
                c.ifindex.to_string(),
                c.netns.clone(),
            ]
        })
        .collect();
    table(&["NAME", "RUNTIME NAME", "IP", "IP6", "MAC", "VETH", "IFINDEX", "NETNS"], &rows)
}

/// Published ports: the host side as a spec writes it (`*:8080` for every
/// address of both families, `0.0.0.0:8080`, `[::]:8080`,
/// `[2001:db8::1]:8080`) and the backend of each family it answers on.
pub fn mappings_table(ms: &[Mapping]) -> String {
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            let host = match m.host_ip {
                None => format!("*:{}", m.host_port),
                Some(_) => format!("{}{}", crate::portspec::host_prefix(m.host_ip), m.host_port),
            };
            let mut backends = vec![];
            if let Some(ip) = m.container_ip.filter(|_| m.on_ipv4()) {
                backends.push(format!("{ip}:{}", m.container_port));
            }
            if let Some(ip6) = m.container_ip6.filter(|_| m.on_ipv6()) {
                backends.push(format!("[{ip6}]:{}", m.container_port));
            }
            vec![host, m.proto.to_string(), m.container.clone(), backends.join(" "), m.id.to_string()]
        })
        .collect();
    table(&["HOST", "PROTO", "CONTAINER", "BACKEND", "ID"], &rows)
}

pub fn flows_table(flows: &[Flow]) -> String {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            vec![
                f.proto.clone(),
                format!("{}:{} -> {}:{}", f.original.src, f.original.sport, f.original.dst, f.original.dport),
                format!("{}:{} -> {}:{}", f.reply.src, f.reply.sport, f.reply.dst, f.reply.dport),
                f.state.clone(),
                f.expires_in.to_string(),
                format!("{}/{}", f.packets, f.reply_packets),
                f.mapping_id.to_string(),
                [Some(f.scope.clone()), f.direction.map(|d| d.to_string()), f.container.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    table(&["PROTO", "ORIGINAL", "REPLY", "STATE", "EXPIRES", "PKTS ORIG/REPLY", "MAPPING", "SCOPE"], &rows)
}

pub fn policy_table(p: &PolicyView) -> String {
    let mut out = format!(
        "container {}: default in {}, default out {}\n",
        p.container, p.policy.default_in, p.policy.default_out
    );
    let mut rules = p.policy.rules.clone();
    rules.sort_by_key(|r| (r.direction, std::cmp::Reverse(r.cidr.prefix_len()), r.cidr, r.proto, r.ports));
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| vec![r.direction.to_string(), r.action.to_string(), r.cidr.to_string(), r.filter_text()])
        .collect();
    out.push_str(&table(&["DIR", "ACTION", "CIDR", "PROTO/PORTS"], &rows));
    out
}

pub fn stats_table(s: &StatsView) -> String {
    let mut rows: Vec<Vec<String>> = s
        .containers
        .iter()
        .map(|c| {
            vec![
                c.container.name.clone(),
                format!("{}/{}", c.stats.tx_packets, c.stats.tx_bytes),
                format!("{}/{}", c.stats.rx_packets, c.stats.rx_bytes),
                drops_summary(&c.stats),
            ]
        })
        .collect();
    if let Some(u) = &s.uplink {
        rows.push(vec!["(uplink)".into(), "-".into(), format!("{}/{}", u.rx_packets, u.rx_bytes), drops_summary(u)]);
    }
    table(&["NAME", "TX PKTS/BYTES", "RX PKTS/BYTES", "DROPS BY REASON"], &rows)
}

pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("instance  {} (netpath {})\n", s.instance, s.version));
    match (&s.subnet, s.gateway) {
        (Some(subnet), Some(gateway)) => {
            out.push_str(&format!("bridge    {} gateway {gateway} subnet {subnet}\n", s.bridge))
        }
        _ => out.push_str(&format!("bridge    {} (IPv6 only: no IPv4 subnet)\n", s.bridge)),
    }
    if let (Some(subnet6), Some(gateway6)) = (&s.subnet6, s.gateway6) {
        out.push_str(&format!("ipv6      gateway {gateway6} subnet {subnet6}\n"));
    }
    if s.bridges.len() > 1 {
        let list: Vec<String> = s.bridges.iter().map(|b| format!("{} ({} containers)", b.name, b.containers)).collect();
        out.push_str(&format!("bridges   {}\n", list.join(", ")));
    }
    out.push_str(&format!("uplink    {}\n", s.uplink.as_deref().unwrap_or("(none)")));
    out.push_str(&format!("pins      {}\n", s.pin_dir));
    out.push_str(&format!(
        "sockets   {}\n",
        s.cgroup
            .as_deref()
            .map(|c| format!("cgroup {c}"))
            .unwrap_or_else(|| "(no cgroup v2: host processes cannot use published ports)".into())
    ));
    out.push_str(&format!(
        "mode      {}, {} published ports, icc {}\n",
        if s.routed { "routed" } else { "published ports only from outside" },
        s.mappings,
        if s.icc { "on" } else { "off" }
    ));
    out.push_str(&format!(
        "masq      {}\n",
        s.masquerade.map(|a| format!("to {a}, ports {}", s.masquerade_ports)).unwrap_or_else(|| "off".into())
    ));
    if !s.guarded_ports.is_empty() || !s.denied_sources.is_empty() {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        out.push_str(&format!(
            "guard     guarded ports {}; denied sources {}\n",
            list(&s.guarded_ports),
            list(&s.denied_sources)
        ));
    }
    if s.drop_events_suppressed > 0 {
        out.push_str(&format!(
            "events    {} drop events held back under floods (counted, not streamed to the monitor)\n",
            s.drop_events_suppressed
        ));
    }
    if let Some(u) = &s.uplink_stats {
        out.push_str(&format!("uplink rx {} packets, {} bytes\n", u.rx_packets, u.rx_bytes));
    }
    if !s.unattributed_drops.is_empty() {
        let drops: Vec<String> = s.unattributed_drops.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        out.push_str(&format!("unknown   dropped on veths without a container: {}\n", drops.join(", ")));
    }
    let fp = &s.fast_path;
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    };
    out.push_str(&format!(
        "fastpath  {}{}{}\n",
        if fp.enabled { "on" } else { "off" },
        Some(counts(&fp.redirected))
            .filter(|c| !c.is_empty())
            .map(|c| format!("; redirected: {c}"))
            .unwrap_or_default(),
        Some(counts(&fp.fallbacks))
            .filter(|c| !c.is_empty())
            .map(|c| format!("; to the stack: {c}"))
            .unwrap_or_default(),
    ));
    let maps: u64 = s.maps.iter().map(|m| m.memory_bytes).sum();
    out.push_str(&format!("memory    agent {}, maps {}\n", mib(s.agent_memory_bytes), mib(maps)));
    out.push_str(&conntrack_text(&s.conntrack));
    out.push_str("\nPROGRAMS\n");
    let rows: Vec<Vec<String>> =
        s.programs.iter().map(|p| vec![p.name.clone(), p.kind.clone(), p.id.to_string()]).collect();
    out.push_str(&table(&["NAME", "TYPE", "ID"], &rows));
    out.push_str("\nATTACH POINTS\n");
    let rows: Vec<Vec<String>> = s
        .attach_points
        .iter()
        .map(|a| {
            let ids: Vec<String> = a.attached_program_ids.iter().map(u32::to_string).collect();
            vec![a.interface.clone(), a.hook.clone(), a.program.clone(), ids.join(","), a.link_pin.clone()]
        })
        .collect();
    out.push_str(&table(&["INTERFACE", "HOOK", "PROGRAM", "PROG IDS", "LINK PIN"], &rows));
    out.push_str("\nMAPS\n");
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.kind.clone(),
                m.id.to_string(),
                match m.counted_ms_ago {
                    // Counted by the GC, not now.
                    Some(ms) => format!("{}/{} ({:.0}s ago)", m.entries, m.max_entries, ms as f64 / 1e3),
                    None => format!("{}/{}", m.entries, m.max_entries),
                },
                mib(m.memory_bytes),
                m.pin.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["NAME", "TYPE", "ID", "ENTRIES", "MEMORY", "PIN"], &rows));
    out.push_str("\nCONTAINERS\n");
    let rows: Vec<Vec<String>> = s
        .containers
        .iter()
        .map(|c| {
            vec![
                c.container.name.clone(),
                c.container.ip.map_or_else(|| "-".into(), |a| a.to_string()),
                c.container.ip6.map_or_else(|| "-".into(), |a| a.to_string()),
                c.container.veth.clone(),
                format!("{}/{}", c.stats.tx_packets, c.stats.tx_bytes),
                format!("{}/{}", c.stats.rx_packets, c.stats.rx_bytes),
                drops_summary(&c.stats),
            ]
        })
        .collect();
    out.push_str(&table(&["NAME", "IP", "IP6", "VETH", "TX PKTS/BYTES", "RX PKTS/BYTES", "DROPS"], &rows));
    out
}

/// The conntrack lines of `status`: fill and pressure, the datapath's
/// counters, the GC.
fn conntrack_text(c: &ConntrackStatus) -> String {
    format!(
        "conntrack {}/{} entries{}; {} inserts, {} refused, {} evicted, {} removed by the datapath\n\
         ct gc    {} runs (last {:.1} ms), {} flows / {} entries removed, {} early under pressure\n",
        c.entries,
        c.max_entries,
        if c.pressure { " (pressure)" } else { "" },
        c.inserts,
        c.insert_failures,
        c.evictions,
        c.datapath_removals,
        c.gc_runs,
        c.gc_last_us as f64 / 1000.0,
        c.gc_flows_removed,
        c.gc_entries_removed,
        c.gc_early_flows_removed,
    )
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_pressure_reads_in_status() {
        let c = ConntrackStatus {
            inserts: 10,
            insert_failures: 1,
            datapath_removals: 2,
            evictions: 3,
            entries: 40,
            max_entries: 64,
            pressure: true,
            gc_runs: 5,
            gc_last_us: 1500,
            gc_flows_removed: 6,
            gc_entries_removed: 12,
            gc_early_flows_removed: 4,
        };
        assert_eq!(
            conntrack_text(&c),
            "conntrack 40/64 entries (pressure); 10 inserts, 1 refused, 3 evicted, 2 removed by the datapath\n\
             ct gc    5 runs (last 1.5 ms), 6 flows / 12 entries removed, 4 early under pressure\n"
        );
    }

    #[test]
    fn mappings_show_ipv6_hosts_in_brackets() {
        let m = |id: u32, host_ip: Option<&str>, ip6: Option<&str>| Mapping {
            id,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
            host_port: 8080,
            proto: crate::portspec::Protocol::Tcp,
            container: "web".into(),
            container_ip: Some("10.77.0.5".parse().unwrap()),
            container_ip6: ip6.map(|s| s.parse().unwrap()),
            container_port: 80,
        };
        let t = mappings_table(&[
            m(1, None, Some("fd00::5")),
            m(2, Some("0.0.0.0"), None),
            m(3, Some("::"), Some("fd00::5")),
            m(4, Some("2001:db8::1"), Some("fd00::5")),
            m(5, None, None),
        ]);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["HOST", "PROTO", "CONTAINER", "BACKEND", "ID"]);
        assert_eq!(lines[1], ["*:8080", "tcp", "web", "10.77.0.5:80", "[fd00::5]:80", "1"]);
        assert_eq!(lines[2], ["0.0.0.0:8080", "tcp", "web", "10.77.0.5:80", "2"]);
        assert_eq!(lines[3], ["[::]:8080", "tcp", "web", "[fd00::5]:80", "3"]);
        assert_eq!(lines[4], ["[2001:db8::1]:8080", "tcp", "web", "[fd00::5]:80", "4"]);
        assert_eq!(lines[5], ["*:8080", "tcp", "web", "10.77.0.5:80", "5"]);
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }
}
