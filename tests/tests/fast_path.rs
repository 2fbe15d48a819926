//! The fast path end to end: judged and translated packets are redirected
//! into containers and out of the uplink without crossing the bridge; what
//! the stack must answer (TTL, MTU) still goes to the stack; and it can be
//! switched off. Every other topology test runs with it on, which is what
//! shows the semantics kept (policy, anti-spoofing, hairpin, ICMP errors).

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netpath_common::{Fallback, Redirect};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, HOST_UPLINK_IP6, WORLD_IP, WORLD_IP6};
use netpath_userspace::model::Status;

fn topology(containers: usize, agent_args: &[&str]) -> Topology {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let mut t = Topology::new(containers).expect("build topology");
    t.add_ipv6_uplink().expect("IPv6 on the uplink");
    t.agent_args(agent_args);
    t.start_agent().expect("start netpathd");
    for i in 1..=containers {
        t.add_container(i).expect("add container");
    }
    t
}

/// A UDP socket on `port` in `ns`, for both families.
fn udp_bind(t: &Topology, ns: &str, port: u16) -> Result<UdpSocket> {
    t.in_ns(ns, || Ok(UdpSocket::bind(("::", port))?))
}

/// A UDP echo in `ns` on `port` (both families), answering each datagram
/// with the sender address it sees, until `datagrams` were answered or 20 s
/// passed.
fn udp_echo(t: &Topology, ns: &str, port: u16, datagrams: usize) -> JoinHandle<()> {
    let sock = udp_bind(t, ns, port).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut answered = 0;
        while answered < datagrams && Instant::now() < deadline {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                let seen = SocketAddr::new(from.ip().to_canonical(), from.port());
                let _ = sock.send_to(seen.to_string().as_bytes(), from);
                answered += 1;
            }
        }
    })
}

/// A TCP server in `ns` answering each connection with the peer it sees.
fn tcp_server(t: &Topology, ns: &str, port: u16, conns: usize) -> JoinHandle<()> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(("0.0.0.0", port))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::spawn(move || {
        let mut served = 0;
        while served < conns && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(peer.to_string().as_bytes());
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

fn tcp_ask(t: &Topology, ns: &str, ip: Ipv4Addr, port: u16) -> Result<String> {
    let mut s = t.in_ns(ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(3))
            .with_context(|| format!("connect {ip}:{port}"))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// `n` datagrams from `ns` to `ip:port`, each answered.
fn udp_exchange(t: &Topology, ns: &str, ip: impl Into<IpAddr>, port: u16, n: usize) -> Result<Vec<String>> {
    exchange_on(&udp_socket(t, ns)?, ip, port, n)
}

/// A UDP socket in `ns`: one flow for every exchange on it.
fn udp_socket(t: &Topology, ns: &str) -> Result<UdpSocket> {
    let s = udp_bind(t, ns, 0)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

fn exchange_on(s: &UdpSocket, ip: impl Into<IpAddr>, port: u16, n: usize) -> Result<Vec<String>> {
    let ip = ip.into();
    let mut answers = vec![];
    for _ in 0..n {
        s.send_to(b"who am i", (ip, port))?;
        let mut buf = [0u8; 64];
        let (len, _) = s.recv_from(&mut buf).with_context(|| format!("no answer from {ip}:{port}"))?;
        answers.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    Ok(answers)
}

/// Packets the bridge received and sent (its own counters, in the host).
fn bridge_packets(t: &Topology, bridge: &str) -> u64 {
    let out = t.exec(&t.host, &["ip", "-j", "-s", "link", "show", "dev", bridge]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = &v[0]["stats64"];
    stats["rx"]["packets"].as_u64().unwrap() + stats["tx"]["packets"].as_u64().unwrap()
}

fn status(t: &Topology) -> Status {
    t.ctl_json(&["status"]).unwrap()
}

/// Packets redirected between two readings: into containers judged on the
/// way, into containers on a verdict already there, out of host interfaces.
fn redirected_between(before: &Status, after: &Status) -> (u64, u64, u64) {
    let delta = |how| after.fast_path.redirected_as(how) - before.fast_path.redirected_as(how);
    let out = after.fast_path.redirected_in_and_out().1 - before.fast_path.redirected_in_and_out().1;
    (delta(Redirect::ToContainerJudged), delta(Redirect::ToContainer), out)
}

/// Published, masqueraded and container-to-container traffic: every
/// packet after the first ARP is redirected (a flow's first one into a
/// container judged on the way), none crosses the bridge, and
/// each path's promises hold (the container sees the client, the world
/// sees the host's address).
#[test]
fn every_path_is_redirected_around_the_bridge() {
    let t = topology(2, &[]);
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let st = status(&t);
    assert!(st.fast_path.enabled, "on by default: {:?}", st.fast_path);
    let c1_ip = st.containers.iter().find(|c| c.container.name == "c1").unwrap().container.ip4();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let world = t.world.clone();

    // Warm up ARP on every path (the bridge carries ARP, as it should).
    let echo = udp_echo(&t, &ns1, 53, 1000);
    udp_exchange(&t, &world, HOST_UPLINK_IP, 8053, 1).unwrap();
    udp_exchange(&t, &ns2, c1_ip, 53, 1).unwrap();
    let world_echo = udp_echo(&t, &world, 9053, 1000);
    udp_exchange(&t, &ns2, WORLD_IP, 9053, 1).unwrap();

    let before = status(&t);
    let bridge_before = bridge_packets(&t, &before.bridge);
    const N: usize = 50;
    // From outside through the published port: the container sees the
    // world's address.
    let seen = udp_exchange(&t, &world, HOST_UPLINK_IP, 8053, N).unwrap();
    assert!(seen.iter().all(|s| s.starts_with(&format!("{WORLD_IP}:"))), "{seen:?}");
    // Container to container, at its own address.
    udp_exchange(&t, &ns2, c1_ip, 53, N).unwrap();
    // Masqueraded: the world sees the host's address.
    let seen = udp_exchange(&t, &ns2, WORLD_IP, 9053, N).unwrap();
    assert!(seen.iter().all(|s| s.starts_with(&format!("{HOST_UPLINK_IP}:"))), "{seen:?}");
    let after = status(&t);
    let bridge_after = bridge_packets(&t, &after.bridge);

    // In: world->c1 (N), c2->c1 (N), c1->c2 replies (N), world->c2 replies
    // (N). The first packet of each of the two flows into c1 (new sockets)
    // has no verdict of c1's yet: c1's inbound policy judges it on the way.
    // Replies find the verdict their flow's start left.
    let (judged, into, out) = redirected_between(&before, &after);
    assert_eq!(judged, 2, "one per new flow into a container: {:?}", after.fast_path);
    assert!(into + judged >= 4 * N as u64, "redirected into containers: {into} ({:?})", after.fast_path);
    // Out: c1's replies to the world (N), c2 to the world (N).
    assert!(out >= 2 * N as u64, "redirected out: {out} ({:?})", after.fast_path);
    // 6N packets crossed the host; the bridge saw at most a few (a late
    // ARP).
    assert!(bridge_after - bridge_before < 10, "the bridge carried {} packets", bridge_after - bridge_before);
    let fell_back: u64 = after.fast_path.fallbacks.values().sum();
    assert_eq!(fell_back, 0, "{:?}", after.fast_path);

    // TCP through the published port, and the container's view of it.
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    let tcp = tcp_server(&t, &ns1, 80, 1);
    let answer = tcp_ask(&t, &world, HOST_UPLINK_IP, 8080).unwrap();
    assert!(answer.starts_with(&format!("{WORLD_IP}:")), "{answer}");
    tcp.join().unwrap();
    echo.join().unwrap();
    world_echo.join().unwrap();
}

/// The same over IPv6: published (both families), container to container
/// and masqueraded, every packet redirected (a new flow's first into a
/// container judged on the way), the hop limit down by one on a routed hop.
#[test]
fn every_ipv6_path_is_redirected_around_the_bridge() {
    let t = topology(2, &[]);
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let st = status(&t);
    let c1_ip6 = st.containers.iter().find(|c| c.container.name == "c1").unwrap().container.ip6.unwrap();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let world = t.world.clone();

    // Warm up neighbour discovery on every path.
    let echo = udp_echo(&t, &ns1, 53, 1000);
    udp_exchange(&t, &world, HOST_UPLINK_IP6, 8053, 1).unwrap();
    udp_exchange(&t, &ns2, c1_ip6, 53, 1).unwrap();
    let world_echo = udp_echo(&t, &world, 9053, 1000);
    udp_exchange(&t, &ns2, WORLD_IP6, 9053, 1).unwrap();

    let before = status(&t);
    let bridge_before = bridge_packets(&t, &before.bridge);
    const N: usize = 50;
    let seen = udp_exchange(&t, &world, HOST_UPLINK_IP6, 8053, N).unwrap();
    assert!(seen.iter().all(|s| s.starts_with(&format!("[{WORLD_IP6}]:"))), "{seen:?}");
    udp_exchange(&t, &ns2, c1_ip6, 53, N).unwrap();
    let seen = udp_exchange(&t, &ns2, WORLD_IP6, 9053, N).unwrap();
    assert!(seen.iter().all(|s| s.starts_with(&format!("[{HOST_UPLINK_IP6}]:"))), "{seen:?}");
    let after = status(&t);
    let bridge_after = bridge_packets(&t, &after.bridge);

    let (judged, into, out) = redirected_between(&before, &after);
    assert_eq!(judged, 2, "one per new flow into a container: {:?}", after.fast_path);
    assert!(into + judged >= 4 * N as u64, "redirected into containers: {into} ({:?})", after.fast_path);
    assert!(out >= 2 * N as u64, "redirected out: {out} ({:?})", after.fast_path);
    assert!(bridge_after - bridge_before < 10, "the bridge carried {} packets", bridge_after - bridge_before);
    let fell_back: u64 = after.fast_path.fallbacks.values().sum();
    assert_eq!(fell_back, 0, "{:?}", after.fast_path);
    // A routed hop costs one hop, as the stack's: c2's 64 arrive as 63.
    let out = t.exec(&ns2, &["ping", "-6", "-c", "1", "-W", "2", &WORLD_IP6.to_string()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ttl=63") || text.contains("hlim=63"), "{text}");
    echo.join().unwrap();
    world_echo.join().unwrap();
}

/// A new flow into a container is judged on the way by the container's
/// inbound policy, not left to the stack: one its rules refuse is dropped
/// there, counted on it, whichever family; from the other end, a flow the refusing container starts itself
/// is allowed, and its replies reach it.
#[test]
fn a_new_flow_a_container_refuses_is_dropped_on_the_way() {
    let t = topology(2, &[]);
    let st = status(&t);
    let c = |name: &str| st.containers.iter().find(|c| c.container.name == name).unwrap().container.clone();
    let (c1, c2) = (c("c1"), c("c2"));
    let (c2_ip, c2_ip6) = (c2.ip.unwrap(), c2.ip6.unwrap());
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", &format!("{c2_ip}/32")]).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", &format!("{c2_ip6}/128")]).unwrap();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let c1_echo = udp_echo(&t, &ns1, 53, 1000);
    let c2_echo = udp_echo(&t, &ns2, 53, 1000);
    // The way back first (c1 -> c2 and its replies), which also resolves
    // the neighbours.
    udp_exchange(&t, &ns1, c2_ip, 53, 3).unwrap();
    udp_exchange(&t, &ns1, c2_ip6, 53, 3).unwrap();

    let drops = |st: &Status| {
        let c1 = st.containers.iter().find(|c| c.container.name == "c1").unwrap();
        c1.stats.drops.get("policy").copied().unwrap_or(0)
    };
    let before = status(&t);
    for ip in [IpAddr::from(c2_ip), IpAddr::from(c2_ip6)] {
        // New flows (a new socket each time), from c2 to c1: refused.
        let sock = t.in_ns(&ns2, || Ok(UdpSocket::bind((if ip.is_ipv4() { "0.0.0.0" } else { "::" }, 0))?)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let to = match ip {
            IpAddr::V4(_) => IpAddr::from(c1.ip.unwrap()),
            IpAddr::V6(_) => IpAddr::from(c1.ip6.unwrap()),
        };
        for _ in 0..3 {
            sock.send_to(b"let me in", (to, 53)).unwrap();
            let mut buf = [0u8; 64];
            assert!(sock.recv_from(&mut buf).is_err(), "c1 answered {ip}: its rules refuse it");
        }
    }
    let after = status(&t);
    assert!(drops(&after) - drops(&before) >= 6, "counted on c1: {:?}", after.containers);
    let fell_back: u64 =
        after.fast_path.fallbacks.values().sum::<u64>() - before.fast_path.fallbacks.values().sum::<u64>();
    // (Before the judging on the way, each of them was left to the stack,
    // counted as `unjudged`, to be dropped by c1's veth.)
    assert_eq!(fell_back, 0, "none left to the stack: {:?}", after.fast_path);
    // c1's own flows to c2 still pass, both ways.
    udp_exchange(&t, &ns1, c2_ip, 53, 2).unwrap();
    udp_exchange(&t, &ns1, c2_ip6, 53, 2).unwrap();
    drop((c1_echo, c2_echo));
}

/// A TCP server in `ns` reading one connection to its end and answering
/// with the number of bytes it read.
fn tcp_sink(t: &Topology, ns: &str, addr: SocketAddr) -> JoinHandle<u64> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(addr)?)).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (mut buf, mut total) = (vec![0u8; 1 << 16], 0u64);
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break,
                n => total += n as u64,
            }
        }
        s.write_all(&total.to_le_bytes()).unwrap();
        total
    })
}

/// A bulk transfer out of a container (masqueraded, both families) takes
/// the fast path: the container's TCP hands its veth packets of up to 64
/// KiB (GSO), cut into segments on the way out, and the route's MTU is
/// checked per segment, as the stack's forwarding does. Checked whole,
/// every such packet fell back as MtuExceeded and crossed the bridge.
#[test]
fn a_bulk_transfer_out_of_a_container_stays_on_the_fast_path() {
    let t = topology(1, &[]);
    let ns1 = t.container_ns(1);
    const BYTES: usize = 16 << 20;
    for (i, world_ip) in [IpAddr::from(WORLD_IP), IpAddr::from(WORLD_IP6)].into_iter().enumerate() {
        let server = SocketAddr::new(world_ip, 7100 + i as u16);
        let sink = tcp_sink(&t, &t.world, server);
        let before = status(&t);
        let bridge_before = bridge_packets(&t, &before.bridge);
        let mut s = t.in_ns(&ns1, || Ok(TcpStream::connect_timeout(&server, Duration::from_secs(3))?)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![0x5au8; 1 << 16];
        for _ in 0..BYTES / chunk.len() {
            s.write_all(&chunk).unwrap();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        s.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_le_bytes(count), BYTES as u64, "to {server}");
        assert_eq!(sink.join().unwrap(), BYTES as u64);
        let after = status(&t);
        let bridged = bridge_packets(&t, &after.bridge) - bridge_before;
        let too_big = after.fast_path.fell_back_for(Fallback::MtuExceeded)
            - before.fast_path.fell_back_for(Fallback::MtuExceeded);
        assert_eq!(too_big, 0, "to {server}: packets that fell back as too big ({:?})", after.fast_path);
        // The connection's first packet and a neighbour exchange or two.
        assert!(bridged < 12, "to {server}: the bridge carried {bridged} packets ({:?})", after.fast_path);
    }
}

/// A receiving container's inbound policy holds on the fast path: new
/// flows are judged at its veth, and flows it allowed before a rule change
/// are judged again at their next packet, whichever path brings it; a deny
/// is a drop, counted on that container.
#[test]
fn the_receiving_container_s_policy_holds_on_the_fast_path() {
    let t = topology(2, &[]);
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let st = status(&t);
    let c1_ip = st.containers.iter().find(|c| c.container.name == "c1").unwrap().container.ip4();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let echo = udp_echo(&t, &ns1, 53, 1000);
    // Two established flows, their later packets redirected.
    let (from_c2, from_world) = (udp_socket(&t, &ns2).unwrap(), udp_socket(&t, &t.world).unwrap());
    exchange_on(&from_c2, c1_ip, 53, 3).unwrap();
    exchange_on(&from_world, HOST_UPLINK_IP, 8053, 3).unwrap();
    let before = status(&t);
    assert!(before.fast_path.redirected_as(Redirect::ToContainer) >= 4, "{:?}", before.fast_path);
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", "0.0.0.0/0", "udp/53"]).unwrap();
    assert!(exchange_on(&from_c2, c1_ip, 53, 1).is_err(), "c2 -> c1 cut");
    assert!(exchange_on(&from_world, HOST_UPLINK_IP, 8053, 1).is_err(), "world -> c1 cut");
    assert!(udp_exchange(&t, &ns2, c1_ip, 53, 1).is_err(), "a new flow c2 -> c1 denied");
    assert!(udp_exchange(&t, &t.world, HOST_UPLINK_IP, 8053, 1).is_err(), "a new flow world -> c1 denied");
    let st = status(&t);
    let c1 = st.containers.iter().find(|c| c.container.name == "c1").unwrap();
    assert!(c1.stats.drops.get("policy").copied().unwrap_or(0) >= 4, "{:?}", c1.stats);
    drop(echo);
}

fn set_int_opt(s: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid socket and an option value of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt {name}");
}

/// What only the stack can answer goes to the stack, counted: a datagram
/// too big for the containers' smaller MTU (the client learns the path MTU
/// from the host's "fragmentation needed", translated back), and a TTL
/// that runs out in the host.
#[test]
fn mtu_and_ttl_fall_back_to_the_stack() {
    let t = topology(1, &["--mtu", "1280"]);
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let echo = udp_echo(&t, &t.container_ns(1), 53, 1000);
    udp_exchange(&t, &t.world, HOST_UPLINK_IP, 8053, 1).unwrap();
    let before = status(&t);

    let world = t.world.clone();
    let probe = t
        .in_ns(&world, || {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.connect((HOST_UPLINK_IP, 8053))?;
            set_int_opt(&s, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO);
            set_int_opt(&s, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        })
        .unwrap();
    probe.send(&[0u8; 1400]).unwrap();
    let err = probe.recv(&mut [0u8; 64]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "the host's fragmentation-needed reached the client: {err}");
    let mid = status(&t);
    assert!(
        mid.fast_path.fell_back_for(Fallback::MtuExceeded) > before.fast_path.fell_back_for(Fallback::MtuExceeded),
        "{:?}",
        mid.fast_path
    );
    // Within the path MTU it is redirected again.
    probe.send(&[0u8; 1000]).unwrap();
    let mut buf = [0u8; 64];
    probe.recv(&mut buf).expect("a datagram within the path MTU is answered");

    probe.set_ttl(1).unwrap();
    probe.send(b"probe").unwrap();
    let err = probe.recv(&mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "the time-exceeded reached the client: {err}");
    let after = status(&t);
    assert!(
        after.fast_path.fell_back_for(Fallback::TtlExpiring) > mid.fast_path.fell_back_for(Fallback::TtlExpiring),
        "{:?}",
        after.fast_path
    );
    drop(echo);
}

/// `--no-fast-path`: every packet takes the stack's way (through the
/// bridge), and everything still works.
#[test]
fn the_fast_path_can_be_switched_off() {
    let t = topology(1, &["--no-fast-path"]);
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let echo = udp_echo(&t, &t.container_ns(1), 53, 1000);
    let before = status(&t);
    assert!(!before.fast_path.enabled);
    let bridge_before = bridge_packets(&t, &before.bridge);
    let seen = udp_exchange(&t, &t.world, HOST_UPLINK_IP, 8053, 20).unwrap();
    assert!(seen.iter().all(|s| s.starts_with(&format!("{WORLD_IP}:"))), "{seen:?}");
    let after = status(&t);
    assert_eq!(after.fast_path.redirected.values().sum::<u64>(), 0, "{:?}", after.fast_path);
    assert!(bridge_packets(&t, &after.bridge) - bridge_before >= 40, "the bridge carries the traffic");
    drop(echo);
}

/// A TCP server in `ns` sending `bytes` to its first connection, then
/// closing it.
fn tcp_source(t: &Topology, ns: &str, addr: SocketAddr, bytes: usize) -> JoinHandle<()> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(addr)?)).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let chunk = vec![0xa5u8; 1 << 16];
        for _ in 0..bytes / chunk.len() {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    })
}

/// Sends `bytes` from `ns` to a sink in the world at `server`, each write
/// and the sink's answer within 10 s (a stalled transfer fails).
fn upload_within(t: &Topology, ns: &str, server: SocketAddr, bytes: usize) {
    let sink = tcp_sink(t, &t.world, server);
    let mut s = t.in_ns(ns, || Ok(TcpStream::connect_timeout(&server, Duration::from_secs(3))?)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    for _ in 0..bytes / chunk.len() {
        s.write_all(&chunk).expect("the upload moves");
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut count).expect("the upload ends");
    assert_eq!(u64::from_le_bytes(count), bytes as u64, "to {server}");
    sink.join().unwrap();
}

/// Reads `stream` to its end within `limit`: the bytes read.
fn read_to_end_within(stream: &mut TcpStream, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let (mut buf, mut total) = (vec![0u8; 1 << 16], 0u64);
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    total
}

/// A route to the world whose MTU is smaller than the containers' (a VPN's
/// interface, a route with `mtu lock`). A container's packets too big for
/// it, or whose TTL runs out in the host, are answered by the host's ICMP
/// error, and the error must reach the container: the source of a
/// masqueraded packet, or of a published port's reply, was already
/// translated on the veth, and the error went to that address, the host's
/// own, and was lost. A masqueraded upload and a download from a published
/// port then stalled, never learning the path MTU. Both families.
#[test]
fn a_route_s_smaller_mtu_reaches_translated_flows() {
    a_route_s_smaller_mtu_reaches_translated_flows_with(&[]);
}

/// The same with the fast path off: the veth translates as before.
#[test]
fn a_route_s_smaller_mtu_reaches_translated_flows_without_the_fast_path() {
    a_route_s_smaller_mtu_reaches_translated_flows_with(&["--no-fast-path"]);
}

fn a_route_s_smaller_mtu_reaches_translated_flows_with(agent_args: &[&str]) {
    let t = topology(1, agent_args);
    let ns1 = t.container_ns(1);
    t.exec(&t.host, &["ip", "route", "replace", &format!("{WORLD_IP}/32"), "dev", "up0", "mtu", "lock", "1280"])
        .unwrap();
    t.exec(
        &t.host,
        &["ip", "-6", "route", "replace", &format!("{WORLD_IP6}/128"), "dev", "up0", "mtu", "lock", "1280"],
    )
    .unwrap();
    let echo = udp_echo(&t, &t.world, 7200, 1000);
    for (i, world_ip) in [IpAddr::from(WORLD_IP), IpAddr::from(WORLD_IP6)].into_iter().enumerate() {
        // A masqueraded flow, its later packets translated on the veth.
        // Of the family itself: IPv4's socket options do not reach a
        // dual-stack socket's IPv4 traffic.
        let unspecified = match world_ip {
            IpAddr::V4(_) => IpAddr::from(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let probe = t.in_ns(&ns1, || Ok(UdpSocket::bind((unspecified, 0))?)).unwrap();
        probe.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        probe.connect((world_ip, 7200)).unwrap();
        let seen = exchange_on(&probe, world_ip, 7200, 2).unwrap();
        assert!(
            seen.iter().all(|s| s.contains(&HOST_UPLINK_IP.to_string()) || s.contains(&HOST_UPLINK_IP6.to_string())),
            "{seen:?}"
        );
        let (level, mtu_discover, pmtudisc_do, recverr) = match world_ip {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO, libc::IP_RECVERR),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO, libc::IPV6_RECVERR),
        };
        set_int_opt(&probe, level, mtu_discover, pmtudisc_do);
        set_int_opt(&probe, level, recverr, 1);
        probe.send(&[0u8; 1400]).unwrap();
        let err = probe.recv(&mut [0u8; 64]).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EMSGSIZE),
            "to {world_ip}: the route's MTU reached the container: {err}"
        );
        probe.send(&[0u8; 1000]).unwrap();
        probe.recv(&mut [0u8; 64]).expect("a datagram within the path MTU is answered");
        match world_ip {
            IpAddr::V4(_) => probe.set_ttl(1).unwrap(),
            IpAddr::V6(_) => set_int_opt(&probe, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 1),
        }
        probe.send(b"probe").unwrap();
        let err = probe.recv(&mut [0u8; 64]).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EHOSTUNREACH),
            "to {world_ip}: the time-exceeded reached the container: {err}"
        );

        // A masqueraded upload and a download from a published port.
        const BYTES: usize = 4 << 20;
        upload_within(&t, &ns1, SocketAddr::new(world_ip, 7300 + i as u16), BYTES);

        let port = 7400 + i as u16;
        t.ctl_ok(&["map", &format!("{port}:c1:{port}")]).unwrap();
        let source = tcp_source(&t, &ns1, SocketAddr::new(unspecified, port), BYTES);
        let published = match world_ip {
            IpAddr::V4(_) => IpAddr::from(HOST_UPLINK_IP),
            IpAddr::V6(_) => IpAddr::from(HOST_UPLINK_IP6),
        };
        let mut s = t
            .in_ns(&t.world, || {
                Ok(TcpStream::connect_timeout(&SocketAddr::new(published, port), Duration::from_secs(3))?)
            })
            .unwrap();
        let got = read_to_end_within(&mut s, Duration::from_secs(10));
        assert_eq!(got, BYTES as u64, "the download from {published}:{port} (10 s)");
        source.join().unwrap();
    }
    drop(echo);
}

/// One container and a UDP echo in the world on port 7200; the probe is a
/// socket in the container connected to it, with DF set and errors queued
/// (EMSGSIZE once the path MTU is learned). A 1400-byte datagram is
/// answered before any route has an MTU.
struct MtuBed {
    t: Topology,
    ns1: String,
    probe: UdpSocket,
    echo: JoinHandle<()>,
}

fn mtu_bed() -> MtuBed {
    let t = topology(1, &[]);
    let ns1 = t.container_ns(1);
    let echo = udp_echo(&t, &t.world, 7200, 1000);
    let probe = t.in_ns(&ns1, || Ok(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?)).unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    probe.connect((WORLD_IP, 7200)).unwrap();
    set_int_opt(&probe, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO);
    set_int_opt(&probe, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
    big_datagram(&probe).expect("no route MTU yet: answered");
    MtuBed { t, ns1, probe, echo }
}

/// Sends a 1400-byte datagram and reads the echo's answer (or the error).
fn big_datagram(probe: &UdpSocket) -> std::io::Result<usize> {
    probe.send(&[0u8; 1400]).unwrap();
    probe.recv(&mut [0u8; 64])
}

/// Waits (10 s at most) until a 1400-byte datagram gets EMSGSIZE in the
/// container: the host's "fragmentation needed" reached it; and checks the
/// fast path handed it to the stack (MtuExceeded).
fn expect_emsgsize(t: &Topology, probe: &UdpSocket, what: &str) {
    let before = status(t);
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match big_datagram(probe) {
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break e,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("{what} never came into force: {other:?}"),
        }
    };
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EMSGSIZE),
        "the host's fragmentation-needed reached the container: {err}"
    );
    let after = status(t);
    assert!(
        after.fast_path.fell_back_for(Fallback::MtuExceeded) > before.fast_path.fell_back_for(Fallback::MtuExceeded),
        "{:?}",
        after.fast_path
    );
}

/// An IPv4 route's own MTU, not locked (`ip route ... mtu 1280`): the
/// kernel's forwarding honours it, its route lookup for BPF does not, so
/// the agent mirrors such routes into `ROUTE_MTUS4` and the fast path
/// checks them: a datagram over it with DF set is answered with
/// "fragmentation needed", as without netpath. Before, the fast path sent
/// it on at the interface's MTU. Route changes are followed.
#[test]
fn an_ipv4_route_s_own_mtu_is_checked_on_the_fast_path() {
    let MtuBed { t, ns1, probe, echo } = mtu_bed();
    let route = format!("{WORLD_IP}/32");
    t.exec(&t.host, &["ip", "route", "replace", &route, "dev", "up0", "mtu", "1280"]).unwrap();
    expect_emsgsize(&t, &probe, "the route's MTU");
    // A masqueraded upload through it.
    upload_within(&t, &ns1, SocketAddr::from((WORLD_IP, 7300)), 4 << 20);

    // The route's MTU goes: so does the check (the container forgets the
    // path MTU it learned).
    t.exec(&t.host, &["ip", "route", "replace", &route, "dev", "up0"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        t.exec(&ns1, &["ip", "route", "flush", "cache"]).unwrap();
        if big_datagram(&probe).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the route's MTU stayed in force");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(echo);
}

/// The same MTU on a route of another table, picked by policy routing for
/// the containers' traffic (`ip rule add from <subnet> lookup 100`, as a
/// VPN for containers is set up): `bpf_fib_lookup` follows the rule and
/// still ignores the unlocked MTU, so the agent mirrors every table's
/// routes. Before, only the main table's were, and the fast path forwarded
/// the datagram at 1400 bytes.
#[test]
fn an_ipv4_route_s_own_mtu_in_a_policy_routing_table_is_checked() {
    let MtuBed { t, probe, echo, .. } = mtu_bed();
    let route = format!("{WORLD_IP}/32");
    t.exec(&t.host, &["ip", "route", "replace", &route, "dev", "up0", "mtu", "1280", "table", "100"]).unwrap();
    t.exec(&t.host, &["ip", "rule", "add", "from", &t.subnet, "lookup", "100", "priority", "100"]).unwrap();
    expect_emsgsize(&t, &probe, "the MTU of table 100's route");
    drop(echo);
}
