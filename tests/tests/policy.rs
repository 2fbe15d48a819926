//! Per-container policy end to end: allowed and denied flows in both
//! directions, through published ports and directly, icc off, a deny that
//! cuts an established connection, counters, the monitor, bad input.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Result;
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::{
    model::{Container, PolicyView, StatsView},
    monitor::MonitorEvent,
};

fn topology(containers: usize, args: &[&str]) -> (Topology, Vec<Container>) {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    t.agent_args(args);
    t.start_agent().expect("start netpathd");
    let cs = (1..=containers).map(|i| t.add_container(i).expect("add container")).collect();
    (t, cs)
}

/// A server in `ns` that answers every connection with "ok" for 20 s.
fn server(t: &Topology, ns: &str, port: u16) {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(("0.0.0.0", port))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"ok");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

fn reaches(t: &Topology, ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    let attempt = || -> Result<bool> {
        let mut s =
            t.in_ns(ns, || Ok(TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(800))?))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = String::new();
        s.read_to_string(&mut b)?;
        Ok(b == "ok")
    };
    attempt().unwrap_or(false)
}

/// c1's policy and the number of POLICY4 entries: what a refused change
/// must leave as it was.
fn policy_snapshot(t: &Topology) -> (PolicyView, u64) {
    let p: PolicyView = t.ctl_json(&["policy", "ls", "c1"]).unwrap();
    let st: netpath_userspace::model::Status = t.ctl_json(&["status"]).unwrap();
    (p, st.maps.iter().find(|m| m.name == "POLICY4").unwrap().entries)
}

fn policy_drops(t: &Topology, name: &str) -> u64 {
    let st: StatsView = t.ctl_json(&["stats", name]).unwrap();
    st.containers[0].stats.drops.get("policy").copied().unwrap_or(0)
}

#[test]
fn inbound_rules_through_published_ports_and_directly() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    server(&t, &ns1, 80);
    assert!(reaches(&t, &t.world, HOST_UPLINK_IP, 8080));

    // Deny the world's client (its real address, seen through the published port).
    let out = t.ctl_ok(&["policy", "add", "c1", "deny", "in", &format!("{WORLD_IP}/32"), "tcp/80"]).unwrap();
    assert!(out.contains("added deny in 198.18.0.2/32 tcp/80"), "{out}");
    assert!(!reaches(&t, &t.world, HOST_UPLINK_IP, 8080), "denied through the published port");
    assert!(reaches(&t, &ns2, HOST_UPLINK_IP, 8080), "other clients still reach it (hairpin)");
    assert!(reaches(&t, &ns2, cs[0].ip4(), 80), "and directly");
    assert!(policy_drops(&t, "c1") >= 1);

    // Default deny in, with one allowed neighbour.
    t.ctl_ok(&["policy", "rm", "c1", "deny", "in", &format!("{WORLD_IP}/32"), "tcp/80"]).unwrap();
    t.ctl_ok(&["policy", "default", "c1", "in", "deny"]).unwrap();
    assert!(!reaches(&t, &ns2, cs[0].ip4(), 80));
    t.ctl_ok(&["policy", "add", "c1", "allow", "in", &cs[1].ip4().to_string()]).unwrap();
    assert!(reaches(&t, &ns2, cs[0].ip4(), 80));
    assert!(!reaches(&t, &t.world, HOST_UPLINK_IP, 8080), "the world is not the allowed neighbour");
    let p: PolicyView = t.ctl_json(&["policy", "ls", "c1"]).unwrap();
    assert_eq!(p.policy.default_in, netpath_userspace::policy::Action::Deny);
    assert_eq!(p.policy.rules.len(), 1);
    let text = t.ctl_ok(&["policy", "ls", "c1"]).unwrap();
    assert!(text.contains("default in deny") && text.contains(&format!("{}/32", cs[1].ip4())), "{text}");
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn outbound_rules_and_replies() {
    let (t, _) = topology(1, &[]);
    let ns1 = t.container_ns(1);
    server(&t, &t.world, 8000);
    server(&t, &t.world, 8001);
    t.ctl_ok(&["policy", "add", "c1", "deny", "out", "198.18.0.0/24", "tcp/8000"]).unwrap();
    assert!(!reaches(&t, &ns1, WORLD_IP, 8000));
    assert!(reaches(&t, &ns1, WORLD_IP, 8001), "a port the rule does not name");
    assert!(t.ping(&ns1, &WORLD_IP.to_string(), 1).unwrap(), "another protocol");
    // A longer prefix overrides.
    t.ctl_ok(&["policy", "add", "c1", "allow", "out", &format!("{WORLD_IP}/32")]).unwrap();
    assert!(reaches(&t, &ns1, WORLD_IP, 8000));
    // Default deny out: replies to allowed inbound flows still pass.
    t.ctl_ok(&["policy", "default", "c1", "out", "deny"]).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    server(&t, &ns1, 80);
    assert!(reaches(&t, &t.world, HOST_UPLINK_IP, 8080), "stateful: the reply is not judged as a new flow");
}

#[test]
fn icc_off_blocks_direct_traffic_but_not_published_ports() {
    let (t, cs) = topology(2, &["--no-icc"]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    server(&t, &ns1, 80);
    assert!(!reaches(&t, &ns2, cs[0].ip4(), 80), "direct");
    assert!(!t.ping(&ns2, &cs[0].ip4().to_string(), 1).unwrap());
    assert!(reaches(&t, &ns2, HOST_UPLINK_IP, 8080), "published");
    assert!(t.ctl_ok(&["icc"]).unwrap().contains("icc off"));
    t.ctl_ok(&["icc", "on"]).unwrap();
    assert!(reaches(&t, &ns2, cs[0].ip4(), 80));
    t.ctl_ok(&["icc", "off"]).unwrap();
    assert!(!reaches(&t, &ns2, cs[0].ip4(), 80));
}

#[test]
fn a_new_deny_cuts_an_established_connection_within_a_second() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let listener = t.in_ns(&ns1, || Ok(TcpListener::bind(("0.0.0.0", 7000))?)).unwrap();
    let mut client = t
        .in_ns(&ns2, || Ok(TcpStream::connect_timeout(&SocketAddr::from((cs[0].ip4(), 7000)), Duration::from_secs(2))?))
        .unwrap();
    let (mut srv, _) = listener.accept().unwrap();
    srv.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut b = [0u8; 1];
    client.write_all(b"a").unwrap();
    srv.read_exact(&mut b).unwrap();

    let started = Instant::now();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", &cs[1].ip4().to_string()]).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "the change applies before the command returns");
    client.write_all(b"b").unwrap();
    assert!(srv.read_exact(&mut b).is_err(), "data after the deny must not arrive");
    assert!(policy_drops(&t, "c1") >= 1);

    // Removing the rule lets new connections in again.
    t.ctl_ok(&["policy", "rm", "c1", "deny", "in", &cs[1].ip4().to_string()]).unwrap();
    server(&t, &ns1, 7001);
    assert!(reaches(&t, &ns2, cs[0].ip4(), 7001));
}

#[test]
fn monitor_streams_drops_and_flows() {
    let (t, cs) = topology(2, &[]);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", &cs[1].ip4().to_string(), "tcp/9"]).unwrap();
    let (mut child, rx) = t.monitor(&["c1", "--flows"]).unwrap();
    server(&t, &ns1, 80);
    let _ = reaches(&t, &ns2, cs[0].ip4(), 9); // denied
    let _ = reaches(&t, &ns2, cs[0].ip4(), 80); // allowed: a flow event
                                                // A published flow from the world: its verdict is given on the uplink,
                                                // where its translation is created; the event shows it as it reached c1.
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    assert!(reaches(&t, &t.world, HOST_UPLINK_IP, 8080));
    let published = |e: &MonitorEvent| e.kind == "flow" && e.src == WORLD_IP;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events: Vec<MonitorEvent> = vec![];
    while Instant::now() < deadline
        && !(events.iter().any(|e| e.kind == "drop")
            && events.iter().any(|e| e.kind == "flow" && e.src == cs[1].ip4())
            && events.iter().any(published))
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            events.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let drop = events.iter().find(|e| e.kind == "drop").unwrap_or_else(|| panic!("no drop event: {events:?}"));
    assert_eq!((drop.reason.as_deref(), drop.container.as_deref()), (Some("policy"), Some("c1")));
    assert_eq!(
        (drop.src, drop.dst, drop.dport, drop.proto.as_str()),
        (cs[1].ip4().into(), cs[0].ip4().into(), 9, "tcp")
    );
    assert_eq!(drop.direction, Some(netpath_common::Direction::In));
    assert_eq!(drop.hook, "veth_egress");
    let flow = events.iter().find(|e| e.kind == "flow").unwrap_or_else(|| panic!("no flow event: {events:?}"));
    assert_eq!((flow.dst, flow.dport), (cs[0].ip4().into(), 80));
    let flow = events.iter().find(|e| published(e)).unwrap_or_else(|| panic!("no published flow event: {events:?}"));
    assert_eq!((flow.dst, flow.dport, flow.hook.as_str()), (cs[0].ip4().into(), 80, "veth_egress"));
    assert_eq!(flow.direction, Some(netpath_common::Direction::In));
    assert!(events.iter().all(|e| e.container.as_deref() == Some("c1")), "filtered to c1: {events:?}");
    let st: StatsView = t.ctl_json(&["stats"]).unwrap();
    assert_eq!(st.containers.len(), 2);
    let text = t.ctl_ok(&["stats"]).unwrap();
    assert!(text.contains("policy="), "{text}");
}

#[test]
fn bad_rules_are_refused_and_change_nothing() {
    let (t, _) = topology(1, &[]);
    t.ctl_ok(&["policy", "add", "c1", "allow", "in", "10.0.0.0/8", "tcp/80"]).unwrap();
    let snapshot = policy_snapshot;
    let before = snapshot(&t);
    let cases: [(&[&str], &str); 9] = [
        (&["policy", "add", "nope", "allow", "in", "10.0.0.0/8"], "no container named"),
        (&["policy", "add", "c1", "allow", "in", "10.0.0/8"], "malformed CIDR"),
        (&["policy", "add", "c1", "allow", "in", "10.0.0.1/8"], "host bits"),
        (&["policy", "add", "c1", "allow", "in", "10.0.0.0/8", "tcp/90-80"], "reversed"),
        (&["policy", "add", "c1", "allow", "in", "10.0.0.0/8", "sctp"], "malformed protocol"),
        (&["policy", "add", "c1", "allow", "in", "10.0.0.0/8", "tcp/80"], "already exists"),
        (&["policy", "add", "c1", "deny", "in", "10.0.0.0/8", "tcp/80"], "conflicts with existing rule"),
        (&["policy", "rm", "c1", "deny", "in", "10.0.0.0/8", "tcp/81"], "no rule"),
        (&["policy", "default", "nope", "in", "deny"], "no container named"),
    ];
    for (args, want) in cases {
        let err = t.ctl_err(args).unwrap();
        assert!(err.contains(want), "netpathctl {args:?}: expected {want:?} in {err:?}");
        assert_eq!(snapshot(&t), before, "state changed after refused {args:?}");
    }
    // Policy survives an agent restart.
    let mut t = t;
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    assert_eq!(snapshot(&t), before);
}

#[test]
fn bulk_rules_are_all_or_nothing_and_take_effect() {
    let (mut t, cs) = topology(2, &[]);
    t.ctl_ok(&["policy", "add", "c1", "allow", "in", "10.0.0.0/8", "tcp/80"]).unwrap();
    let snapshot = policy_snapshot;
    let before = snapshot(&t);
    let file = t.run_dir().join("rules");
    let f = file.display().to_string();
    let refused = |lines: &[&str], want: &str| {
        std::fs::write(&file, lines.join("\n")).unwrap();
        let err = t.ctl_err(&["policy", "add", "-f", &f]).unwrap();
        assert!(err.contains(want), "{lines:?}: expected {want:?} in {err:?}");
        assert_eq!(snapshot(&t), before, "state changed after refused {lines:?}");
    };
    // Each bad line refuses the whole file, naming the line or the rule.
    refused(&["c1 deny in 192.168.0.0/16", "c1 allow in 10.0.0.0/8 tcp/80"], "already exists");
    refused(&["c1 deny in 192.168.0.0/16", "c1 allow in 192.168.0.0/16"], "conflicts with existing rule");
    refused(&["c1 deny in 192.168.0.0/16", "nope deny in 10.1.0.0/16"], "no container named");
    refused(&["c1 deny in 192.168.0.0/16", "c1 deny sideways 10.1.0.0/16"], "rule 2");
    refused(&["c1 deny in 10.0.0.1/8"], "host bits");

    // 10000 rules for c2 in one call, with the one that matters among them:
    // c1 may no longer reach c2's port 22.
    let c1 = cs[0].ip4();
    let mut lines: Vec<String> =
        (0..9999).map(|i| format!("c2 deny in 172.{}.{}.0/24", 16 + i / 256, i % 256)).collect();
    lines.push(format!("c2 deny in {c1}/32 tcp/22 # the one c1 feels"));
    std::fs::write(&file, lines.join("\n")).unwrap();
    server(&t, &t.container_ns(2), 22);
    assert!(reaches(&t, &t.container_ns(1), cs[1].ip4(), 22), "allowed before");
    let out = t.ctl_ok(&["policy", "add", "-f", &f]).unwrap();
    assert!(out.contains("added 10000 rules"), "{out}");
    let p: PolicyView = t.ctl_json(&["policy", "ls", "c2"]).unwrap();
    assert_eq!(p.policy.rules.len(), 10000);
    assert!(!reaches(&t, &t.container_ns(1), cs[1].ip4(), 22), "denied by the bulk load");
    // Kept across a restart.
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    let p: PolicyView = t.ctl_json(&["policy", "ls", "c2"]).unwrap();
    assert_eq!(p.policy.rules.len(), 10000);
    assert!(!reaches(&t, &t.container_ns(1), cs[1].ip4(), 22));
}
