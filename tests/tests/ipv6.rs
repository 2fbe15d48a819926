//! IPv6 traffic end to end, with the agent and real sockets: containers
//! talk over IPv6 judged by their policy (IPv6 CIDRs) and tracked by
//! conntrack, icc off keeps them apart but lets them reach the gateway, a
//! forged source never leaves, the world reaches a container's IPv6
//! address only when the instance routes, published ports answer over
//! IPv6 (from outside and hairpin, `[::]` on IPv6 only), and containers
//! reach the world through the IPv6 masquerade. Each promise is checked
//! from both ends: the client's connection and what the server saw.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, HOST_UPLINK_IP6, WORLD_IP6};
use netpath_userspace::{
    model::{Container, Flow, Mapping, StatsView, Status},
    monitor::MonitorEvent,
};

/// A topology with its own IPv6 subnet, an agent started with `args`, and
/// `containers` containers.
fn topology(containers: usize, args: &[&str]) -> (Topology, Vec<Container>) {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    let third = t.subnet.split('.').nth(2).unwrap_or("0").to_string();
    let subnet6 = format!("fd00:78:{third}::/64");
    let mut all = vec!["--subnet6", &subnet6];
    // `--subnet` replaces the topology's own (`none`: IPv6 only).
    let mut args = args.to_vec();
    if let Some(at) = args.iter().position(|a| *a == "--subnet") {
        t.subnet = args[at + 1].to_string();
        args.drain(at..at + 2);
    }
    all.extend_from_slice(&args);
    t.agent_args(&all);
    t.add_ipv6_uplink().expect("IPv6 on the uplink");
    t.start_agent().expect("start netpathd");
    let cs: Vec<Container> = (1..=containers).map(|i| t.add_container(i).expect("add container")).collect();
    for c in &cs {
        assert!(c.ip6.is_some(), "{} has an IPv6 address", c.name);
    }
    (t, cs)
}

fn ip6(c: &Container) -> Ipv6Addr {
    c.ip6.expect("the container's IPv6 address")
}

/// A server in `ns` on [::]:`port` that answers every connection with "ok"
/// for 20 s, and reports the peer address of each.
fn server(t: &Topology, ns: &str, port: u16) -> mpsc::Receiver<IpAddr> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(("::", port))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = tx.send(peer.ip());
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"ok");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx
}

/// Does a TCP connection from `ns` (from `bind`, if given) to `dst` get
/// the server's "ok"?
fn reaches(t: &Topology, ns: &str, bind: Option<Ipv6Addr>, dst: Ipv6Addr, port: u16) -> bool {
    let attempt = || -> Result<bool> {
        let to = SocketAddr::from((dst, port));
        let mut s = t.in_ns(ns, || {
            let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            if let Some(src) = bind {
                sock.bind(&SocketAddr::from((src, 0)).into())?;
            }
            sock.connect_timeout(&to.into(), Duration::from_millis(800))?;
            Ok(TcpStream::from(sock))
        })?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = String::new();
        s.read_to_string(&mut b)?;
        Ok(b == "ok")
    };
    attempt().unwrap_or(false)
}

fn drops(t: &Topology, name: &str, reason: &str) -> u64 {
    let st: StatsView = t.ctl_json(&["stats", name]).unwrap();
    st.containers[0].stats.drops.get(reason).copied().unwrap_or(0)
}

fn flows(t: &Topology) -> Vec<Flow> {
    t.ctl_json(&["conntrack"]).unwrap()
}

/// The world's route to the containers' IPv6 subnet through the host
/// (what a router delegating the prefix to the host would have).
fn route_subnet6(t: &Topology, c: &Container) {
    let [a, b, c, d, ..] = ip6(c).segments();
    let subnet6 = format!("{a:x}:{b:x}:{c:x}:{d:x}::/64");
    t.exec(&t.world, &["ip", "-6", "route", "add", &subnet6, "via", &HOST_UPLINK_IP6.to_string()]).unwrap();
}

#[test]
fn containers_talk_over_ipv6_judged_by_policy_and_tracked() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let seen = server(&t, &ns2, 80);
    assert!(reaches(&t, &ns1, None, ip6(&cs[1]), 80), "c1 -> c2 over IPv6");
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(ip6(&cs[0])), "c2 saw c1's address");
    let _back = server(&t, &ns1, 81);
    assert!(reaches(&t, &ns2, None, ip6(&cs[0]), 81), "c2 -> c1 over IPv6");

    // Conntrack lists the flow with its IPv6 tuple.
    let listed = flows(&t);
    assert!(
        listed.iter().any(|f| f.original.src == IpAddr::V6(ip6(&cs[0]))
            && f.original.dst == IpAddr::V6(ip6(&cs[1]))
            && f.original.dport == 80),
        "conntrack lists c1 -> c2:80: {listed:?}"
    );

    // A deny on c2's inbound side for c1's IPv6 address: refused, counted,
    // and c2's other peers are unaffected (c2 still reaches c1).
    let c1_net = format!("{}/128", ip6(&cs[0]));
    let before = drops(&t, "c2", "policy");
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &c1_net, "tcp/80"]).unwrap();
    assert!(!reaches(&t, &ns1, None, ip6(&cs[1]), 80), "c1 -> c2:80 denied by c2's IPv6 rule");
    assert!(drops(&t, "c2", "policy") > before, "the denied SYN is counted on c2");
    assert!(seen.try_recv().is_err(), "the server never saw the denied connection");
    assert!(reaches(&t, &ns2, None, ip6(&cs[0]), 81), "the rule is c2's inbound only");
    // A rule mixing the families is refused, naming what is wrong, and
    // changes nothing.
    let listed_before: serde_json::Value = t.ctl_json(&["policy", "ls", "c2"]).unwrap();
    let err = t.ctl_err(&["policy", "add", "c2", "deny", "in", "10.0.0.0/8", "icmpv6"]).unwrap();
    assert!(err.contains("mixed address families"), "{err}");
    let listed_after: serde_json::Value = t.ctl_json(&["policy", "ls", "c2"]).unwrap();
    assert_eq!(listed_before, listed_after, "a refused rule changes nothing");
    t.ctl_ok(&["policy", "rm", "c2", "deny", "in", &c1_net, "tcp/80"]).unwrap();
    assert!(reaches(&t, &ns1, None, ip6(&cs[1]), 80), "allowed again once the rule is gone");
}

/// A counter of `/proc/net/snmp6` in namespace `ns`.
fn snmp6(t: &Topology, ns: &str, name: &str) -> u64 {
    let out = t.exec(ns, &["cat", "/proc/net/snmp6"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or_else(|| panic!("{name} in {text}"))
}

#[test]
fn a_new_containers_listener_reports_reach_no_other_container() {
    let (mut t, cs) = topology(1, &[]);
    let ns1 = t.container_ns(1);
    // c1's own reports are sent within a second or two of its start.
    std::thread::sleep(Duration::from_secs(3));
    let before = snmp6(&t, &ns1, "Ip6InMcastPkts");
    let ns2 = t.new_netns("late").unwrap();
    let c2: Container = t.ctl_json(&["container", "add", "c2", "--netns", &ns2]).unwrap();
    // The kernel repeats them (robustness 2) within a second.
    std::thread::sleep(Duration::from_secs(3));
    assert!(snmp6(&t, &ns2, "Icmp6OutMLDv2Reports") > 0, "c2 announced its groups");
    assert_eq!(
        snmp6(&t, &ns1, "Ip6InMcastPkts"),
        before,
        "the bridge flooded c2's listener reports to c1 (each container's start costs every port of its bridge)"
    );
    // Neighbour discovery between them is still multicast, and works.
    let _seen = server(&t, &ns2, 80);
    assert!(reaches(&t, &ns1, None, ip6(&c2), 80), "c1 -> c2 over IPv6");
    let _back = server(&t, &ns1, 81);
    assert!(reaches(&t, &ns2, None, ip6(&cs[0]), 81), "c2 -> c1 over IPv6");
}

#[test]
fn monitor_shows_ipv6_flows_and_drops_with_their_tuples() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let (c1, c2) = (IpAddr::V6(ip6(&cs[0])), IpAddr::V6(ip6(&cs[1])));
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &format!("{c1}/128"), "tcp/9"]).unwrap();
    let (mut child, rx) = t.monitor(&["c2", "--flows"]).unwrap();
    let _seen = server(&t, &ns2, 80);
    assert!(!reaches(&t, &ns1, None, ip6(&cs[1]), 9), "denied");
    assert!(reaches(&t, &ns1, None, ip6(&cs[1]), 80), "allowed: a flow event");
    // A published flow from the world over IPv6: the event shows it as it
    // reached c2, from the real client.
    t.ctl_ok(&["map", "8080:c2:80"]).unwrap();
    let (host6, world6): (Ipv6Addr, Ipv6Addr) = (HOST_UPLINK_IP6, WORLD_IP6);
    assert!(reaches(&t, &t.world, None, host6, 8080));
    let wanted = |events: &[MonitorEvent]| {
        let drop = events.iter().find(|e| e.kind == "drop" && e.dport == 9)?.clone();
        let flow = events.iter().find(|e| e.kind == "flow" && e.src == c1 && e.dport == 80)?.clone();
        let published = events.iter().find(|e| e.kind == "flow" && e.src == IpAddr::V6(world6))?.clone();
        Some((drop, flow, published))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events: Vec<MonitorEvent> = vec![];
    while Instant::now() < deadline && wanted(&events).is_none() {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            events.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let (drop, flow, published) = wanted(&events).unwrap_or_else(|| panic!("missing IPv6 events: {events:?}"));
    assert_eq!(
        (drop.reason.as_deref(), drop.container.as_deref(), drop.proto.as_str(), drop.src, drop.dst),
        (Some("policy"), Some("c2"), "tcp", c1, c2)
    );
    assert_eq!((flow.dst, flow.proto.as_str(), flow.hook.as_str()), (c2, "tcp", "veth_egress"));
    assert_eq!((published.dst, published.dport), (c2, 80), "as it reached c2");
    assert!(drop.line().contains(&format!("[{c1}]:")), "the line shows [addr]:port: {}", drop.line());
}

#[test]
fn icc_off_keeps_containers_apart_over_ipv6_but_not_from_the_gateway() {
    let (t, cs) = topology(2, &["--no-icc"]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let seen = server(&t, &ns2, 80);
    assert!(!reaches(&t, &ns1, None, ip6(&cs[1]), 80), "c1 -> c2 over IPv6 with icc off");
    assert!(seen.try_recv().is_err(), "c2 never saw it");
    // The gateway (the host) stays reachable.
    let subnet6 = cs[0].ip6.map(|a| a.segments()).unwrap();
    let gateway6 = Ipv6Addr::new(subnet6[0], subnet6[1], subnet6[2], subnet6[3], 0, 0, 0, 1);
    let host_seen = server(&t, &t.host, 8081);
    assert!(reaches(&t, &ns1, None, gateway6, 8081), "c1 -> the gateway over IPv6");
    assert_eq!(host_seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(ip6(&cs[0])));
    let _ = ns2;
}

#[test]
fn a_forged_ipv6_source_never_leaves_the_container() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let seen = server(&t, &ns2, 80);
    // c1 takes another address of the subnet, as a hostile container can.
    let mut forged = ip6(&cs[0]).segments();
    forged[7] = 0x99;
    let forged = Ipv6Addr::from(forged);
    t.exec(&ns1, &["ip", "-6", "addr", "add", &format!("{forged}/64"), "dev", "eth0", "nodad"]).unwrap();
    let before = drops(&t, "c1", "spoofed-ip");
    assert!(!reaches(&t, &ns1, Some(forged), ip6(&cs[1]), 80), "a connection from a forged source");
    let st: StatsView = t.ctl_json(&["stats", "c1"]).unwrap();
    assert!(drops(&t, "c1", "spoofed-ip") > before, "dropped as spoofed-ip on c1: {:?}", st.containers[0].stats.drops);
    assert!(seen.try_recv().is_err(), "c2 never saw the forged source");
    // Its neighbour solicitations went out from the forged address too (and
    // were dropped): without it, and with its failed neighbour entry gone,
    // c1's own address works.
    t.exec(&ns1, &["ip", "-6", "addr", "del", &format!("{forged}/64"), "dev", "eth0"]).unwrap();
    t.exec(&ns1, &["ip", "-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(reaches(&t, &ns1, None, ip6(&cs[1]), 80), "c1's own address still works");
}

#[test]
fn the_world_reaches_a_containers_ipv6_address_only_when_the_instance_routes() {
    for routed in [false, true] {
        let args: &[&str] = if routed { &["--routed"] } else { &[] };
        let (t, cs) = topology(1, args);
        let ns1 = t.container_ns(1);
        route_subnet6(&t, &cs[0]);
        let seen = server(&t, &ns1, 80);
        assert_eq!(reaches(&t, &t.world, None, ip6(&cs[0]), 80), routed, "world -> c1 over IPv6, routed: {routed}");
        if routed {
            let world: Ipv6Addr = WORLD_IP6;
            assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(world), "c1 saw the world");
            let _w = server(&t, &t.world, 8082);
            assert!(reaches(&t, &ns1, None, world, 8082), "c1 -> the world over IPv6, routed");
        } else {
            assert!(seen.try_recv().is_err(), "c1 never saw the world's connection");
        }
    }
}

#[test]
fn a_published_port_answers_on_both_families_from_outside_and_hairpin() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let host6: Ipv6Addr = HOST_UPLINK_IP6;
    let world6: Ipv6Addr = WORLD_IP6;
    let seen = server(&t, &ns1, 80);
    // No host address: both families, as Docker's -p.
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    assert!(reaches(&t, &t.world, None, host6, 8080), "world -> [host]:8080 over IPv6");
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(world6), "c1 saw the real client");
    assert!(reaches4(&t, &t.world, HOST_UPLINK_IP, 8080), "world -> host:8080 over IPv4 too");
    let _ = seen.recv_timeout(Duration::from_secs(2));
    // Hairpin: c2 through the host's IPv6 address.
    assert!(reaches(&t, &ns2, None, host6, 8080), "c2 -> [host]:8080 -> c1");
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(ip6(&cs[1])), "c1 saw c2");
    // Host processes, through the socket hooks: [::1] and the host's own
    // address; the socket's peer reads as the published address.
    for dst in [Ipv6Addr::LOCALHOST, host6] {
        assert!(reaches(&t, &t.host, None, dst, 8080), "host -> [{dst}]:8080");
        let peer = t.in_ns(&t.host, || Ok(TcpStream::connect((dst, 8080))?.peer_addr()?)).unwrap();
        assert_eq!(peer, SocketAddr::from((dst, 8080)), "getpeername shows the published address");
    }
    let flows = flows(&t);
    assert!(
        flows.iter().any(|f| f.original.dst == IpAddr::V6(host6) && f.mapping_id != 0),
        "conntrack lists the published IPv6 flows: {flows:?}"
    );
    // [::]: IPv6 only.
    let _seen81 = server(&t, &ns1, 81);
    t.ctl_ok(&["map", "[::]:8081:c1:81"]).unwrap();
    assert!(reaches(&t, &t.world, None, host6, 8081), "world -> [host]:8081");
    assert!(!reaches4(&t, &t.world, HOST_UPLINK_IP, 8081), "[::] publishes no IPv4 port");
    // A host process over IPv4 too: both socket translation maps hold
    // entries of 8080's mapping.
    let _ = seen.try_iter().count();
    assert!(reaches4(&t, &t.host, HOST_UPLINK_IP, 8080), "host -> host:8080");
    let sock_revnat = |t: &Topology| {
        let st = t.status_counted().unwrap();
        let n = |name: &str| st.maps.iter().find(|m| m.name == name).map_or(0, |m| m.entries);
        (n("SOCK_REVNAT4"), n("SOCK_REVNAT6"))
    };
    let (v4, v6) = sock_revnat(&t);
    assert!(v4 > 0 && v6 > 0, "socket translations of host processes: {v4} IPv4, {v6} IPv6");
    // Unpublished: gone on both families, and the GC sweeps the sockets'
    // translations of the mapping from both maps.
    t.ctl_ok(&["unmap", "8080:c1:80"]).unwrap();
    assert!(!reaches(&t, &t.world, None, host6, 8080), "unmapped");
    assert!(!reaches4(&t, &t.world, HOST_UPLINK_IP, 8080), "unmapped");
    assert_eq!(sock_revnat(&t), (0, 0), "socket translations of the removed mapping (IPv4, IPv6)");
}

/// A published IPv6 port keeps the L4 checksum right in both states an
/// skb carries it in, as `publish::translated_checksums_hold_*` checks for
/// IPv4: complete (offload off at the senders) and partial (offload on,
/// finished in software by the host's interfaces towards the receivers).
/// IPv6's address change goes to the helper as one difference over the
/// whole address, a mode of its own.
#[test]
fn translated_ipv6_checksums_hold_whether_the_sender_or_the_nic_computes_them() {
    translated_ipv6_checksums_hold(false);
}

/// The same on the fast path (the default), as
/// `publish::translated_checksums_hold_on_the_fast_path` checks for IPv4.
#[test]
fn translated_ipv6_checksums_hold_on_the_fast_path() {
    translated_ipv6_checksums_hold(true);
}

fn translated_ipv6_checksums_hold(fast_path: bool) {
    let (t, cs) = topology(1, if fast_path { &[] } else { &["--no-fast-path"] });
    let ns1 = t.container_ns(1);
    let seen = server(&t, &ns1, 80);
    t.ctl_ok(&["map", "[::]:8080:c1:80"]).unwrap();
    let reached = |state: &str| {
        assert!(reaches(&t, &t.world, None, HOST_UPLINK_IP6, 8080), "world -> [host]:8080, {state}");
        assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(WORLD_IP6), "{state}");
    };
    t.in_both_checksum_states(&ns1, &cs[0].veth, fast_path, reached).unwrap();
}

#[test]
fn containers_reach_the_world_over_ipv6_masqueraded() {
    let (t, cs) = topology(2, &[]);
    let ns1 = t.container_ns(1);
    let host6: Ipv6Addr = HOST_UPLINK_IP6;
    let world6: Ipv6Addr = WORLD_IP6;
    // The world has no route to the containers' subnet: only the
    // masquerade brings the answers back.
    let seen = server(&t, &t.world, 8082);
    assert!(reaches(&t, &ns1, None, world6, 8082), "c1 -> the world over IPv6");
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(host6), "the world saw the host");
    assert!(t.ping(&ns1, &WORLD_IP6.to_string(), 3).unwrap(), "ping through the masquerade (echo ids translated)");
    let flows = flows(&t);
    assert!(
        flows.iter().any(|f| f.original.src == IpAddr::V6(ip6(&cs[0])) && f.reply.dst == IpAddr::V6(host6)),
        "conntrack lists the masqueraded flow: {flows:?}"
    );
    // Routed instead: the container's own address reaches the world.
    let (t, cs) = topology(1, &["--routed"]);
    route_subnet6(&t, &cs[0]);
    let seen = server(&t, &t.world, 8083);
    assert!(reaches(&t, &t.container_ns(1), None, world6, 8083));
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(ip6(&cs[0])), "routed: not translated");
}

/// [`reaches`] over IPv4.
fn reaches4(t: &Topology, ns: &str, dst: std::net::Ipv4Addr, port: u16) -> bool {
    let attempt = || -> Result<bool> {
        let to = SocketAddr::from((dst, port));
        let mut s = t.in_ns(ns, || Ok(TcpStream::connect_timeout(&to, Duration::from_millis(800))?))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = String::new();
        s.read_to_string(&mut b)?;
        Ok(b == "ok")
    };
    attempt().unwrap_or(false)
}

#[test]
fn an_ipv6_only_instance_carries_ipv6_alone() {
    let (t, cs) = topology(2, &["--subnet", "none"]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    // No IPv4 anywhere: containers, the bridge, status.
    for c in &cs {
        assert_eq!(c.ip, None, "{} has an IPv4 address", c.name);
    }
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!((st.subnet.as_deref(), st.gateway), (None, None));
    let ipv4_of = |ns: &str, dev: &str| {
        let out = t.exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", dev]).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ipv4_of(&ns1, "eth0"), "", "c1's eth0 has IPv4");
    assert_eq!(ipv4_of(&t.host, "np0"), "", "the bridge has IPv4");
    // Containers talk over IPv6 and reach the world masqueraded.
    let seen = server(&t, &ns2, 7000);
    assert!(reaches(&t, &ns1, None, ip6(&cs[1]), 7000), "c1 -> c2");
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(ip6(&cs[0])));
    let seen = server(&t, &t.world, 7001);
    assert!(reaches(&t, &ns1, None, WORLD_IP6, 7001), "c1 -> the world");
    assert_eq!(seen.recv_timeout(Duration::from_secs(2)).unwrap(), IpAddr::V6(HOST_UPLINK_IP6), "masqueraded");
    // A port published without a host address answers on IPv6 alone.
    let _seen = server(&t, &ns1, 80);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    assert!(reaches(&t, &t.world, None, HOST_UPLINK_IP6, 8080), "world -> [host]:8080");
    assert!(!reaches4(&t, &t.world, HOST_UPLINK_IP, 8080), "an IPv6-only container is published on IPv4");
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!((maps[0].container_ip, maps[0].container_ip6), (None, Some(ip6(&cs[0]))));
    // An IPv4 host address is refused by name, leaving the mapping table as it was.
    let out = t.ctl(&["map", "0.0.0.0:8081:c1:80"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no IPv4 address"), "{err}");
    assert_eq!(t.ctl_json::<Vec<Mapping>>(&["maps"]).unwrap(), maps);
    // IPv4 a container gives itself never leaves its veth: its ARP and
    // its packets are dropped.
    t.exec(&ns1, &["ip", "addr", "add", "10.99.0.5/24", "dev", "eth0"]).unwrap();
    assert!(!t.ping(&ns1, "10.99.0.1", 1).unwrap());
    assert!(drops(&t, "c1", "unsupported-protocol") > 0, "c1's ARP passed");
    t.exec(&ns1, &["ip", "neigh", "replace", "10.99.0.1", "lladdr", "02:00:00:00:00:01", "dev", "eth0"]).unwrap();
    assert!(!t.ping(&ns1, "10.99.0.1", 1).unwrap());
    assert!(drops(&t, "c1", "spoofed-ip") > 0, "c1's IPv4 passed");
}
