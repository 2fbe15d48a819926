//! Masquerade end to end: containers reach a server in the world namespace
//! through the host address, collisions and many concurrent flows,
//! exhaustion of a small port range, ICMP errors (traceroute, path MTU).

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;
use netpath_tests::{
    chaos::FlowsProcess,
    topology::{Topology, HOST_UPLINK_IP, WORLD_IP},
};
use netpath_userspace::model::{Flow, Status};

fn topology_with(containers: usize, agent_args: &[&str]) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    t.agent_args(agent_args);
    t.start_agent().expect("start netpathd");
    for i in 1..=containers {
        t.add_container(i).expect("add container");
    }
    t
}

/// A TCP server in the world answering each connection with the client
/// address it sees; serves until `conns` were handled or 20 s passed.
fn world_tcp_server(t: &Topology, port: u16, conns: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let listener = t.in_ns(&t.world, || Ok(TcpListener::bind(("0.0.0.0", port))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::spawn(move || {
        let mut seen = vec![];
        while seen.len() < conns && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(peer.to_string().as_bytes());
                    seen.push(peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        seen
    })
}

fn tcp_ask(t: &Topology, ns: &str, local_port: Option<u16>, dst: SocketAddr) -> Result<String> {
    let mut s = t.in_ns(ns, || {
        let s = match local_port {
            // A fixed source port, to make two containers collide.
            Some(p) => tcp_from_port(p, dst)?,
            None => TcpStream::connect_timeout(&dst, Duration::from_secs(3))?,
        };
        Ok(s)
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A TCP connection from a given local port (std cannot bind before connect).
fn tcp_from_port(port: u16, dst: SocketAddr) -> Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else { anyhow::bail!("IPv4 only") };
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a fresh descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const libc::c_void, 4);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        let rc =
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32);
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            anyhow::bail!("bind :{port}: {e}");
        }
        let tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &to as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            anyhow::bail!("connect {dst} from :{port}: {e}");
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

#[test]
fn containers_reach_the_world_through_the_host_address() {
    let t = topology_with(2, &[]);
    let server = world_tcp_server(&t, 8000, 2);
    for i in 1..=2 {
        let seen = tcp_ask(&t, &t.container_ns(i), None, SocketAddr::from((WORLD_IP, 8000))).unwrap();
        assert!(seen.starts_with(&format!("{HOST_UPLINK_IP}:")), "the world sees the host address, not {seen}");
    }
    server.join().unwrap();

    // UDP.
    let sock = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 5353))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let client = t.in_ns(&t.container_ns(1), || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    client.send_to(b"q", (WORLD_IP, 5353)).unwrap();
    let mut buf = [0u8; 8];
    let (_, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::V4(HOST_UPLINK_IP));
    sock.send_to(b"a", from).unwrap();
    let (_, back) = client.recv_from(&mut buf).unwrap();
    assert_eq!(back, SocketAddr::from((WORLD_IP, 5353)));

    // ICMP echo.
    assert!(t.ping(&t.container_ns(2), &WORLD_IP.to_string(), 3).unwrap());

    // Translated flows show both tuples.
    let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
    let udp = flows.iter().find(|f| f.proto == "udp" && f.scope == "nat").expect("udp flow");
    let ip = std::net::IpAddr::V4;
    assert_eq!((udp.original.dst, udp.original.dport), (ip(WORLD_IP), 5353));
    assert_eq!((udp.reply.src, udp.reply.dst), (ip(WORLD_IP), ip(HOST_UPLINK_IP)));
    // The translation carries c1's verdict: no verdict pair beside it.
    assert_eq!((udp.container.as_deref(), udp.direction), (Some("c1"), Some(netpath_common::Direction::Out)));
    assert!(
        !flows.iter().any(|f| f.scope == "policy" && f.original.dst == WORLD_IP && f.original.dport == 5353),
        "{flows:?}"
    );
    assert!(flows.iter().any(|f| f.proto == "1" || f.proto == "icmp"), "ping is tracked: {flows:?}");
    let text = t.ctl_ok(&["conntrack"]).unwrap();
    assert!(text.contains(&format!("-> {HOST_UPLINK_IP}:")), "{text}");
    t.assert_no_netfilter_rules().unwrap();
}

/// Masqueraded flows keep their L4 checksums right in both states an skb
/// carries them in, as `publish::translated_checksums_hold_*` checks for
/// published ports: complete (offload off at the container and the
/// world's server) and partial (offload on, finished in software by the
/// host's interfaces towards the receivers), each verified by its
/// receiver. The source's translation on the uplink's egress and the
/// reply's on its ingress, TCP and UDP.
#[test]
fn masqueraded_checksums_hold_whether_the_sender_or_the_nic_computes_them() {
    masqueraded_checksums_hold(false);
}

/// The same on the fast path (the default), as for published ports: the
/// container's packets redirected out of the uplink (translated by its
/// egress program on the way), the replies redirected into the container.
#[test]
fn masqueraded_checksums_hold_on_the_fast_path() {
    masqueraded_checksums_hold(true);
}

fn masqueraded_checksums_hold(fast_path: bool) {
    let mut t = Topology::new(1).expect("build topology");
    if !fast_path {
        t.agent_args(&["--no-fast-path"]);
    }
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    let ns1 = t.container_ns(1);
    let server = world_tcp_server(&t, 8000, 2);
    let sock = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 5353))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let both_ways = |state: &str| {
        let seen = tcp_ask(&t, &ns1, None, SocketAddr::from((WORLD_IP, 8000)))
            .unwrap_or_else(|e| panic!("TCP, {state}: {e:#}"));
        assert!(seen.starts_with(&format!("{HOST_UPLINK_IP}:")), "{state}: {seen}");
        let client = t.in_ns(&ns1, || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        client.send_to(b"q", (WORLD_IP, 5353)).unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("UDP out, {state}: {e}"));
        sock.send_to(b"a", from).unwrap();
        client.recv_from(&mut buf).unwrap_or_else(|e| panic!("UDP back, {state}: {e}"));
    };
    t.in_both_checksum_states(&ns1, &c1.veth, fast_path, both_ways).unwrap();
    server.join().unwrap();
}

#[test]
fn local_traffic_is_not_masqueraded() {
    let t = topology_with(2, &[]);
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!(st.masquerade, Some(HOST_UPLINK_IP));
    let c2 = st.containers[1].container.ip4();
    // Container to container and to the gateway: no conntrack entries.
    assert!(t.ping(&t.container_ns(1), &c2.to_string(), 2).unwrap());
    assert!(t.ping(&t.container_ns(1), &st.gateway.unwrap().to_string(), 2).unwrap());
    let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
    assert!(flows.iter().all(|f| f.scope != "nat"), "nothing translated: {flows:?}");
    assert!(
        flows.iter().any(|f| f.scope == "policy" && f.direction == Some(netpath_common::Direction::Out)),
        "but tracked for policy: {flows:?}"
    );
}

#[test]
fn masquerade_can_be_switched_off() {
    let t = topology_with(1, &["--no-masquerade"]);
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!(st.masquerade, None);
    let c1 = st.containers[0].container.ip4();
    let sock = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 5353))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let client = t.in_ns(&t.container_ns(1), || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    client.send_to(b"q", (WORLD_IP, 5353)).unwrap();
    let mut buf = [0u8; 8];
    let (_, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::V4(c1), "without masquerade the container's own address leaves");
}

#[test]
fn two_containers_with_the_same_source_port_both_work() {
    let t = topology_with(2, &[]);
    let server = world_tcp_server(&t, 8000, 2);
    let dst = SocketAddr::from((WORLD_IP, 8000));
    let a = tcp_ask(&t, &t.container_ns(1), Some(20001), dst).unwrap();
    let b = tcp_ask(&t, &t.container_ns(2), Some(20001), dst).unwrap();
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 2);
    assert_ne!(a, b, "two flows, two translated ports");
    assert!(seen.iter().all(|s| s.ip() == std::net::IpAddr::V4(HOST_UPLINK_IP)));
}

#[test]
fn a_small_port_range_runs_out_for_new_flows_only() {
    let t = topology_with(1, &["--masquerade-ports", "20000-20003"]);
    let listener = t.in_ns(&t.world, || Ok(TcpListener::bind(("0.0.0.0", 8000))?)).unwrap();
    let other = t.in_ns(&t.world, || Ok(TcpListener::bind(("0.0.0.0", 8001))?)).unwrap();
    let dst = SocketAddr::from((WORLD_IP, 8000));
    let mut held = vec![];
    for _ in 0..4 {
        let s = t.in_ns(&t.container_ns(1), || Ok(TcpStream::connect_timeout(&dst, Duration::from_secs(3))?)).unwrap();
        let (peer, from) = listener.accept().unwrap();
        assert!((20000..=20003).contains(&from.port()), "{from}");
        held.push((s, peer));
    }
    // The fifth flow to the same destination finds no port: dropped.
    let fifth = t.in_ns(&t.container_ns(1), || Ok(TcpStream::connect_timeout(&dst, Duration::from_millis(1500))?));
    assert!(fifth.is_err(), "no port left");
    let st: Status = t.ctl_json(&["status"]).unwrap();
    let drops = st.uplink_stats.unwrap().drops.get("nat-ports-exhausted").copied().unwrap_or(0);
    assert!(drops >= 1, "exhaustion is counted");
    // Existing flows carry on undisturbed.
    for (client, server) in &mut held {
        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        server.read_exact(&mut b).unwrap();
    }
    // Another destination has its own ports.
    let ok = t.in_ns(&t.container_ns(1), || {
        Ok(TcpStream::connect_timeout(&SocketAddr::from((WORLD_IP, 8001)), Duration::from_secs(3))?)
    });
    assert!(ok.is_ok());
    drop(other);
}

/// A far network behind the world namespace (the world routes), reached
/// over a link whose world end has `mtu`.
fn add_far_network(t: &mut Topology, mtu: u32) -> (String, Ipv4Addr) {
    let far = t.new_netns("far").unwrap();
    t.exec(&t.world, &["ip", "link", "add", "tofar", "type", "veth", "peer", "name", "eth0", "netns", &far]).unwrap();
    t.exec(&t.world, &["ip", "addr", "add", "203.0.113.1/24", "dev", "tofar"]).unwrap();
    t.exec(&t.world, &["ip", "link", "set", "tofar", "mtu", &mtu.to_string(), "up"]).unwrap();
    t.exec(&t.world, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    t.exec(&far, &["ip", "addr", "add", "203.0.113.2/24", "dev", "eth0"]).unwrap();
    t.exec(&far, &["ip", "link", "set", "eth0", "up"]).unwrap();
    t.exec(&far, &["ip", "link", "set", "lo", "up"]).unwrap();
    t.exec(&far, &["ip", "route", "add", "default", "via", "203.0.113.1"]).unwrap();
    t.exec(&t.host, &["ip", "route", "add", "203.0.113.0/24", "via", &WORLD_IP.to_string()]).unwrap();
    (far, Ipv4Addr::new(203, 0, 113, 2))
}

#[test]
fn icmp_errors_reach_the_container_traceroute_and_path_mtu() {
    let mut t = topology_with(1, &[]);
    let (far, far_ip) = add_far_network(&mut t, 1280);
    let ns1 = t.container_ns(1);
    assert!(t.ping(&ns1, &far_ip.to_string(), 1).unwrap(), "the far network answers through the masquerade");

    // Hop 2 (the world router) answers a TTL-2 probe with "time exceeded";
    // the container sees it from the router, about its own packet.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns1, "ping", "-c", "1", "-W", "2", "-t", "2", &far_ip.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("From {WORLD_IP}")) && text.contains("Time to live exceeded"), "{text}");

    // Path MTU: the world->far link is 1280 while everything else is 1500.
    // Full-size TCP segments from the container need "fragmentation needed"
    // to come back through the masquerade, or the transfer stalls.
    let listener = t.in_ns(&far, || Ok(TcpListener::bind(("0.0.0.0", 9000))?)).unwrap();
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    });
    let mut s = t
        .in_ns(&ns1, || Ok(TcpStream::connect_timeout(&SocketAddr::from((far_ip, 9000)), Duration::from_secs(3))?))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = vec![0x5a; 256 * 1024];
    s.write_all(&data).expect("large transfer through a smaller path MTU");
    drop(s);
    assert_eq!(server.join().unwrap().unwrap(), data.len());
    let route = t.exec(&ns1, &["ip", "route", "get", &far_ip.to_string()]).unwrap();
    assert!(
        String::from_utf8_lossy(&route.stdout).contains("mtu 1280"),
        "the container learned the path MTU: {}",
        String::from_utf8_lossy(&route.stdout)
    );
}

#[test]
fn twenty_thousand_concurrent_flows_from_several_containers() {
    const CONTAINERS: usize = 4;
    const PER: usize = 5000;
    let t = topology_with(CONTAINERS, &[]);
    t.exec(&t.world, &["sysctl", "-qw", "net.core.somaxconn=8192"]).unwrap();
    let _servers: Vec<FlowsProcess> =
        (0..CONTAINERS).map(|i| FlowsProcess::serve(&t.world, 7001 + i as u16, PER, 120).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut clients: Vec<FlowsProcess> = (0..CONTAINERS)
        .map(|i| FlowsProcess::connect(&t.container_ns(i + 1), WORLD_IP, 7001 + i as u16, PER, 120).unwrap())
        .collect();
    let result = (|| -> Result<()> {
        for c in &mut clients {
            let line = c.read_line()?;
            anyhow::ensure!(line == format!("established {PER}"), "client said {line:?}");
        }
        let flows: Vec<Flow> = t.ctl_json(&["conntrack"])?;
        let open = flows.iter().filter(|f| f.proto == "tcp" && f.scope == "nat" && f.original.dst == WORLD_IP).count();
        anyhow::ensure!(open >= CONTAINERS * PER, "only {open} tracked flows");
        for c in &mut clients {
            c.go()?;
        }
        for c in &mut clients {
            let line = c.read_line()?;
            anyhow::ensure!(line == format!("verified {PER}"), "client said {line:?}");
        }
        Ok(())
    })();
    // The processes are killed on drop.
    drop(clients);
    result.unwrap();
    let _ = SocketAddrV4::new(HOST_UPLINK_IP, 0);
}
