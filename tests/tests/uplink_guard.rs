//! The uplink guard end to end, from the world namespace, with XDP on the
//! uplink (`--uplink-xdp on`: native XDP on the sandbox's veth uplink) and
//! without it (`off`: uplink_ingress judges): guarded ports nothing
//! publishes are unreachable and counted at the hook that judged, published
//! ports inside a guarded range and host listeners outside it work, denied
//! sources reach nothing; bad settings are refused naming the setting and
//! leave nothing behind.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::{model::Status, monitor::MonitorEvent};

/// A second address of the world, inside the denied prefix.
const DENIED_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const DENIED_PREFIX: &str = "198.18.0.192/26";
const GUARDED: &str = "8000-8999/tcp,5000-5999/udp";

fn guarded_topology(xdp: &str) -> Topology {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let mut t = Topology::new(1).expect("build topology");
    t.agent_args(&[
        "--uplink-xdp",
        xdp,
        // Below the default 1024-32767: the guarded ranges must miss it.
        "--masquerade-ports",
        "10000-20000",
        "--guarded-ports",
        GUARDED,
        "--denied-sources",
        DENIED_PREFIX,
    ]);
    t.start_agent().expect("start netpathd");
    t.add_container(1).expect("add container");
    let world = t.world.clone();
    t.exec(&world, &["ip", "addr", "add", &format!("{DENIED_CLIENT}/24"), "dev", "eth0"]).unwrap();
    t
}

/// A TCP server in `ns` on `port` answering each connection with "hello",
/// for at most 20 s.
fn tcp_server(t: &Topology, ns: &str, port: u16) -> JoinHandle<()> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(("0.0.0.0", port))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    // Long enough for a test that restarts the agent twice on a loaded
    // machine (20 s was not: the port then refused before the test ended).
    let deadline = Instant::now() + Duration::from_secs(90);
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"hello");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// Connects from `ns` (from `from`, if given) to `ip:port` and reads the
/// greeting.
fn tcp_hello(t: &Topology, ns: &str, from: Option<Ipv4Addr>, ip: Ipv4Addr, port: u16) -> Result<()> {
    let mut s = t.in_ns(ns, || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(from) = from {
            sock.bind(&SocketAddr::from((from, 0)).into())?;
        }
        sock.connect_timeout(&SocketAddr::from((ip, port)).into(), Duration::from_millis(1500))
            .with_context(|| format!("connect {ip}:{port}"))?;
        Ok(TcpStream::from(sock))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if answer != "hello" {
        bail!("answer {answer:?} from {ip}:{port}");
    }
    Ok(())
}

/// A UDP echo in `ns` on `port`, for at most 10 s.
fn udp_echo(t: &Topology, ns: &str, port: u16) -> JoinHandle<()> {
    let sock = t.in_ns(ns, || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    })
}

/// Does a datagram from `ns` to `ip:port` come back?
fn udp_answers(t: &Topology, ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    t.in_ns(ns, || {
        let sock = UdpSocket::bind(("0.0.0.0", 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            sock.send_to(b"ping", (ip, port))?;
            if sock.recv_from(&mut buf).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .unwrap()
}

fn status(t: &Topology) -> Status {
    t.ctl_json(&["status"]).unwrap()
}

/// The drop events seen within 3 s (or until `want` of them).
fn drop_events(rx: &mpsc::Receiver<String>, want: usize) -> Vec<MonitorEvent> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut events = vec![];
    while Instant::now() < deadline && events.len() < want {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let e: MonitorEvent = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if e.kind == "drop" {
                events.push(e);
            }
        }
    }
    events
}

fn guard_end_to_end(xdp: &str, hook: &str) {
    let t = guarded_topology(xdp);
    let st = status(&t);
    assert_eq!(st.guarded_ports, ["8000-8999/tcp", "5000-5999/udp"]);
    assert_eq!(st.denied_sources, [DENIED_PREFIX]);
    let xdp_attached = st.attach_points.iter().any(|a| a.program == "uplink_xdp");
    assert_eq!(xdp_attached, xdp == "on", "uplink_xdp attached: {:?}", st.attach_points);
    let text = t.ctl_ok(&["status"]).unwrap();
    assert!(text.contains("guard     guarded ports 8000-8999/tcp, 5000-5999/udp; denied sources"), "{text}");

    let (host, ctr) = (t.host.clone(), t.container_ns(1));
    let _srv = tcp_server(&t, &ctr, 80);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    // Host services: one on a guarded port, one outside the ranges, UDP on
    // a guarded port.
    let _guarded = tcp_server(&t, &host, 8500);
    let _open = tcp_server(&t, &host, 9000);
    let _udp = udp_echo(&t, &host, 5500);
    let (mut mon, rx) = t.monitor(&[]).unwrap();

    // The published port inside the guarded range works from the world.
    tcp_hello(&t, &t.world, None, HOST_UPLINK_IP, 8080).expect("published port inside a guarded range");
    // A host listener outside the ranges works; from the host itself the
    // guarded one answers (only the uplink is guarded).
    tcp_hello(&t, &t.world, None, HOST_UPLINK_IP, 9000).expect("host listener on an unguarded port");
    tcp_hello(&t, &host, None, HOST_UPLINK_IP, 8500).expect("the host reaches its own guarded port");

    // The guarded host port is not reachable from the uplink, counted.
    let before = t.uplink_drops("not-published").unwrap();
    assert!(tcp_hello(&t, &t.world, None, HOST_UPLINK_IP, 8500).is_err(), "guarded unpublished port answered");
    assert!(!udp_answers(&t, &t.world, HOST_UPLINK_IP, 5500), "guarded UDP port answered");
    let after = t.uplink_drops("not-published").unwrap();
    assert!(after >= before + 3, "SYN(s) and datagrams counted as not-published: {before} -> {after}");

    // A denied source reaches nothing, the published port included.
    let before = t.uplink_drops("denied-source").unwrap();
    let e = tcp_hello(&t, &t.world, Some(DENIED_CLIENT), HOST_UPLINK_IP, 8080);
    assert!(e.is_err(), "a denied source reached the published port");
    assert!(tcp_hello(&t, &t.world, Some(DENIED_CLIENT), HOST_UPLINK_IP, 9000).is_err());
    let after = t.uplink_drops("denied-source").unwrap();
    assert!(after >= before + 2, "denied-source counted: {before} -> {after}");
    // The world's other address still gets in.
    tcp_hello(&t, &t.world, Some(WORLD_IP), HOST_UPLINK_IP, 8080).expect("an allowed source");

    // Each drop was reported by the hook that judged.
    let events = drop_events(&rx, 6);
    let _ = mon.kill();
    let _ = mon.wait();
    let guarded = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("not-published") && e.dport == 8500)
        .unwrap_or_else(|| panic!("no not-published event for 8500: {events:?}"));
    assert_eq!((guarded.hook.as_str(), guarded.src, guarded.dst), (hook, WORLD_IP.into(), HOST_UPLINK_IP.into()));
    let denied = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("denied-source"))
        .unwrap_or_else(|| panic!("no denied-source event: {events:?}"));
    assert_eq!((denied.hook.as_str(), denied.src), (hook, DENIED_CLIENT.into()));
    let stats = t.ctl_ok(&["stats"]).unwrap();
    assert!(stats.contains("denied-source="), "{stats}");
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn guarded_ports_and_denied_sources_with_xdp() {
    guard_end_to_end("on", "uplink_xdp");
}

#[test]
fn guarded_ports_and_denied_sources_without_xdp() {
    guard_end_to_end("off", "uplink_ingress");
}

#[test]
fn bad_guard_settings_are_refused_and_leave_nothing() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let cases: [(&[&str], &str); 6] = [
        (&["--guarded-ports", "20000-20100/udp"], "uplink.guarded_ports 20000-20100/udp overlaps masquerade_ports 1024-32767"),
        (
            &["--masquerade-ports", "10000-20000", "--guarded-ports", "40000-40010"],
            "uplink.guarded_ports 40000-40010/tcp overlaps the host's ephemeral ports (net.ipv4.ip_local_port_range = 32768-60999)",
        ),
        (&["--guarded-ports", "900-800"], "uplink.guarded_ports: invalid port spec \"900-800\""),
        (&["--guarded-ports", "80/sctp"], "uplink.guarded_ports: invalid port spec \"80/sctp\""),
        (&["--denied-sources", "203.0.113.0/33"], "uplink.denied_sources: \"203.0.113.0/33\" is not an IPv4 address or CIDR"),
        (&["--denied-sources", "203.0.113.1/24"], "uplink.denied_sources: 203.0.113.1/24 has host bits set"),
    ];
    for (args, want) in cases {
        let mut t = Topology::new(0).expect("build topology");
        let before = t.links(&t.host).unwrap();
        t.agent_args(args);
        let err = format!("{:#}", t.start_agent().expect_err("a bad setting must be refused"));
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert_eq!(t.links(&t.host).unwrap(), before, "{args:?}: no bridge, no interface");
        assert!(!t.pin_dir().exists(), "{args:?}: no pins at {}", t.pin_dir().display());
        assert!(!t.socket().exists(), "{args:?}: no API socket");
        let lock = netpath_userspace::config::instance_lock(t.instance());
        assert!(!lock.exists(), "{args:?}: no instance lock left at {}", lock.display());
        t.assert_no_netfilter_rules().unwrap();
    }
}

#[test]
fn a_restarted_agent_applies_the_settings_it_was_given() {
    let mut t = guarded_topology("off");
    let host = t.host.clone();
    let _guarded = tcp_server(&t, &host, 8500);
    assert!(tcp_hello(&t, &t.world, None, HOST_UPLINK_IP, 8500).is_err(), "guarded while configured");
    // Restarted without the guard: the pinned maps are emptied, the port
    // answers, the denied source gets in.
    t.stop_agent().unwrap();
    t.agent_args(&["--uplink-xdp", "off", "--masquerade-ports", "10000-20000"]);
    t.start_agent().unwrap();
    let st = status(&t);
    assert!(st.guarded_ports.is_empty() && st.denied_sources.is_empty(), "{st:?}");
    let maps: std::collections::BTreeMap<String, u64> = st.maps.iter().map(|m| (m.name.clone(), m.entries)).collect();
    assert_eq!((maps["GUARDED_PORTS"], maps["DENIED_SOURCES4"]), (0, 0), "{maps:?}");
    tcp_hello(&t, &t.world, None, HOST_UPLINK_IP, 8500).expect("unguarded after the restart");
    tcp_hello(&t, &t.world, Some(DENIED_CLIENT), HOST_UPLINK_IP, 8500).expect("no longer denied");
    // And back: guarded again, with another range.
    t.stop_agent().unwrap();
    t.agent_args(&["--uplink-xdp", "off", "--masquerade-ports", "10000-20000", "--guarded-ports", "8400-8600"]);
    t.start_agent().unwrap();
    assert_eq!(status(&t).guarded_ports, ["8400-8600/tcp"]);
    assert!(tcp_hello(&t, &t.world, None, HOST_UPLINK_IP, 8500).is_err(), "guarded again");
}
