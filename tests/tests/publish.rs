//! Published ports end to end: every path a client can come from, TCP and
//! UDP, bound addresses, unmap and remap, container removal, conntrack.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::model::{Flow, Mapping, Status};

fn topology(containers: usize) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    t.start_agent().expect("start netpathd");
    for i in 1..=containers {
        t.add_container(i).expect("add container");
    }
    t
}

/// A TCP server in `ns` on `port` that answers every connection with the
/// peer address it sees, for `conns` connections.
fn tcp_server(t: &Topology, ns: &str, port: u16, conns: usize) -> JoinHandle<()> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(("0.0.0.0", port))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    // Bounded: a test that fails to connect must not hang on join.
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

/// A UDP server in `ns` answering each datagram with the sender address it sees.
fn udp_server(t: &Topology, ns: &str, port: u16, datagrams: usize) -> JoinHandle<()> {
    let sock = t.in_ns(ns, || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..datagrams {
            let Ok((_, from)) = sock.recv_from(&mut buf) else { return };
            let _ = sock.send_to(from.to_string().as_bytes(), from);
        }
    })
}

/// Connects from `ns` to `ip:port` and returns what the server said (the
/// client address it saw) and the peer address the client socket reports.
fn tcp_ask(t: &Topology, ns: &str, ip: Ipv4Addr, port: u16) -> Result<(String, SocketAddr)> {
    let mut s = t.in_ns(ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2))
            .with_context(|| format!("connect {ip}:{port}"))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if answer.is_empty() {
        bail!("empty answer from {ip}:{port}");
    }
    Ok((answer, s.peer_addr()?))
}

/// Sends a datagram from `ns` to `ip:port`; returns the answer and the
/// address it came from.
fn udp_ask(t: &Topology, ns: &str, ip: Ipv4Addr, port: u16) -> Result<(String, SocketAddr)> {
    let s = t.in_ns(ns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?))?;
    udp_ask_on(&s, ip, port)
}

fn udp_ask_on(s: &UdpSocket, ip: Ipv4Addr, port: u16) -> Result<(String, SocketAddr)> {
    s.set_read_timeout(Some(Duration::from_millis(1500)))?;
    s.send_to(b"who am i", (ip, port))?;
    let mut buf = [0u8; 64];
    let (n, from) = s.recv_from(&mut buf).with_context(|| format!("no UDP answer from {ip}:{port}"))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

fn ip_of(answer: &str) -> Ipv4Addr {
    answer.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(answer).parse().unwrap()
}

#[test]
fn card_example_works_as_written_from_outside() {
    let t = topology(1);
    let out = t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    assert!(out.contains("published 8080:c1:80/tcp"), "{out}");
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let ns1 = t.container_ns(1);
    let tcp = tcp_server(&t, &ns1, 80, 1);
    let udp = udp_server(&t, &ns1, 53, 1);

    // The container sees the client's real address: no proxy in the path.
    let (seen, peer) = tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).unwrap();
    assert_eq!(ip_of(&seen), WORLD_IP);
    assert_eq!(peer, SocketAddr::from((HOST_UPLINK_IP, 8080)));
    let (seen, from) = udp_ask(&t, &t.world, HOST_UPLINK_IP, 8053).unwrap();
    assert_eq!(ip_of(&seen), WORLD_IP);
    assert_eq!(from, SocketAddr::from((HOST_UPLINK_IP, 8053)), "the reply comes from the published address");
    tcp.join().unwrap();
    udp.join().unwrap();

    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.iter().map(Mapping::spec).collect::<Vec<_>>(), vec!["8080:c1:80/tcp", "8053:c1:53/udp"]);
    let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
    let f = flows.iter().find(|f| f.proto == "tcp" && f.scope == "nat").expect("the TCP flow is tracked");
    let ip = std::net::IpAddr::V4;
    assert_eq!((f.original.src, f.original.dst, f.original.dport), (ip(WORLD_IP), ip(HOST_UPLINK_IP), 8080));
    assert_eq!((f.reply.src, f.reply.sport, f.reply.dst), (ip(maps[0].container_ip.unwrap()), 80, ip(WORLD_IP)));
    assert!(f.packets >= 3 && f.reply_packets >= 2, "{f:?}");
    let text = t.ctl_ok(&["conntrack"]).unwrap();
    assert!(text.contains(&format!("{WORLD_IP}:")) && text.contains("-> 198.18.0.1:8080"), "{text}");
    t.assert_no_netfilter_rules().unwrap();
}

/// The L4 checksum of a translated packet is right in both states an skb
/// can carry it in, checked by receivers that verify it: complete (the
/// sender computed it) and partial (a local socket left it to the NIC:
/// the field holds only the pseudo-header's sum, which the address change
/// enters and the port change must not, finished in software on the way
/// here by interfaces without checksum offload). The program cannot read
/// which state a packet is in; the kernel's L4 checksum helper can, and
/// this is what would fail if the program wrote the checksum on its own
/// for one state only. The fast path is off so that the partial packets
/// take the stack's way through those interfaces; the fast path's own
/// redirects are checked below.
#[test]
fn translated_checksums_hold_whether_the_sender_or_the_nic_computes_them() {
    translated_checksums_hold(false);
}

/// The same on the fast path (the default): the world's packets
/// translated and redirected into the container, its replies translated
/// and redirected out of the uplink, both ways counted as redirected.
/// Complete checksums are verified by both receivers; of the partial
/// ones, the replies' (finished by the uplink's transmit after the
/// redirect) by the world's.
#[test]
fn translated_checksums_hold_on_the_fast_path() {
    translated_checksums_hold(true);
}

fn translated_checksums_hold(fast_path: bool) {
    let mut t = Topology::new(1).expect("build topology");
    if !fast_path {
        t.agent_args(&["--no-fast-path"]);
    }
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let ns1 = t.container_ns(1);
    let tcp = tcp_server(&t, &ns1, 80, 2);
    let udp = udp_server(&t, &ns1, 53, 2);
    let both_ways = |state: &str| {
        let (seen, _) = tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).unwrap_or_else(|e| panic!("TCP, {state}: {e:#}"));
        assert_eq!(ip_of(&seen), WORLD_IP, "{state}");
        let (seen, _) = udp_ask(&t, &t.world, HOST_UPLINK_IP, 8053).unwrap_or_else(|e| panic!("UDP, {state}: {e:#}"));
        assert_eq!(ip_of(&seen), WORLD_IP, "{state}");
    };
    t.in_both_checksum_states(&ns1, &c1.veth, fast_path, both_ways).unwrap();
    tcp.join().unwrap();
    udp.join().unwrap();
}

#[test]
fn hairpin_from_another_container_and_from_itself() {
    let t = topology(2);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let st: Status = t.ctl_json(&["status"]).unwrap();
    let c2_ip = st.containers.iter().find(|c| c.container.name == "c2").unwrap().container.ip.unwrap();
    let tcp = tcp_server(&t, &ns1, 80, 3);
    let udp = udp_server(&t, &ns1, 53, 2);

    // Another container through the host address: it keeps its own source.
    let (seen, peer) = tcp_ask(&t, &ns2, HOST_UPLINK_IP, 8080).unwrap();
    assert_eq!(ip_of(&seen), c2_ip);
    assert_eq!(peer, SocketAddr::from((HOST_UPLINK_IP, 8080)));
    let (seen, from) = udp_ask(&t, &ns2, HOST_UPLINK_IP, 8053).unwrap();
    assert_eq!((ip_of(&seen), from), (c2_ip, SocketAddr::from((HOST_UPLINK_IP, 8053))));
    // Through the gateway address too (every host address).
    let (seen, _) = tcp_ask(&t, &ns2, st.gateway.unwrap(), 8080).unwrap();
    assert_eq!(ip_of(&seen), c2_ip);

    // The container to its own published port: SNATed to the gateway, as
    // Docker does, or it would answer itself directly.
    let (seen, peer) = tcp_ask(&t, &ns1, HOST_UPLINK_IP, 8080).unwrap();
    assert_eq!(ip_of(&seen), st.gateway.unwrap());
    assert_eq!(peer, SocketAddr::from((HOST_UPLINK_IP, 8080)));
    let (seen, from) = udp_ask(&t, &ns1, HOST_UPLINK_IP, 8053).unwrap();
    assert_eq!((ip_of(&seen), from), (st.gateway.unwrap(), SocketAddr::from((HOST_UPLINK_IP, 8053))));
    tcp.join().unwrap();
    udp.join().unwrap();
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn host_processes_reach_published_ports_on_host_addresses_and_loopback() {
    let t = topology(1);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let ns1 = t.container_ns(1);
    let tcp = tcp_server(&t, &ns1, 80, 2);
    let udp = udp_server(&t, &ns1, 53, 2);
    for addr in [HOST_UPLINK_IP, Ipv4Addr::LOCALHOST] {
        let (_, peer) =
            tcp_ask(&t, &t.host, addr, 8080).unwrap_or_else(|e| panic!("TCP to {addr}:8080 from the host: {e:#}"));
        assert_eq!(peer, SocketAddr::from((addr, 8080)), "getpeername shows the published address");
        let (_, from) =
            udp_ask(&t, &t.host, addr, 8053).unwrap_or_else(|e| panic!("UDP to {addr}:8053 from the host: {e:#}"));
        assert_eq!(from, SocketAddr::from((addr, 8053)), "recvfrom shows the published address");
    }
    tcp.join().unwrap();
    udp.join().unwrap();
    // Other namespaces are not touched by the socket hooks: the world's own
    // loopback has nothing on 8080.
    assert!(tcp_ask(&t, &t.world, Ipv4Addr::LOCALHOST, 8080).is_err());
}

#[test]
fn a_mapping_answers_only_on_its_host_address() {
    let t = topology(1);
    let extra = Ipv4Addr::new(198, 18, 0, 10);
    t.exec(&t.host, &["ip", "addr", "add", &format!("{extra}/24"), "dev", "up0"]).unwrap();
    t.ctl_ok(&["map", "127.0.0.1:8081:c1:80"]).unwrap();
    t.ctl_ok(&["map", &format!("{extra}:8082:c1:80")]).unwrap();
    let tcp = tcp_server(&t, &t.container_ns(1), 80, 3);

    assert!(tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8081).is_err(), "127.0.0.1:8081 is not reachable from outside");
    tcp_ask(&t, &t.host, Ipv4Addr::LOCALHOST, 8081).expect("127.0.0.1:8081 from the host");
    // Wait for the agent to notice the new host address (it polls netlink).
    let (seen, _) = retry(|| tcp_ask(&t, &t.world, extra, 8082)).expect("bound address from outside");
    assert_eq!(ip_of(&seen), WORLD_IP);
    assert!(tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8082).is_err(), "8082 is published on {extra} only");
    tcp_ask(&t, &t.host, extra, 8082).expect("bound address from the host");
    tcp.join().unwrap();
}

fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn containers_are_not_reachable_directly_from_outside() {
    direct_access_is_dropped(&[]);
}

#[test]
fn containers_are_not_reachable_directly_from_outside_with_xdp() {
    direct_access_is_dropped(&["--uplink-xdp", "on"]);
}

fn direct_access_is_dropped(agent_args: &[&str]) {
    assert!(netpath_tests::is_root());
    let mut t = Topology::new(1).unwrap();
    t.agent_args(agent_args);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let st: Status = t.ctl_json(&["status"]).unwrap();
    let c1 = &st.containers[0].container;
    t.exec(&t.world, &["ip", "route", "add", &t.subnet, "via", &HOST_UPLINK_IP.to_string()]).unwrap();
    let tcp = tcp_server(&t, &t.container_ns(1), 80, 1);
    let before = st.uplink_stats.unwrap().drops.get("not-published").copied().unwrap_or(0);
    assert!(tcp_ask(&t, &t.world, c1.ip4(), 80).is_err(), "moby#45610: no direct access to container addresses");
    assert!(!t.ping(&t.world, &c1.ip4().to_string(), 1).unwrap());
    let st: Status = t.ctl_json(&["status"]).unwrap();
    let after = st.uplink_stats.unwrap().drops.get("not-published").copied().unwrap_or(0);
    assert!(after >= before + 2, "direct packets are counted: {before} -> {after}");
    // Published, the same container answers.
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    let (seen, _) = tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).unwrap();
    assert_eq!(ip_of(&seen), WORLD_IP);
    tcp.join().unwrap();
}

#[test]
fn routed_mode_allows_direct_access() {
    assert!(netpath_tests::is_root());
    let mut t = Topology::new(1).unwrap();
    t.agent_args(&["--routed"]);
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    t.exec(&t.world, &["ip", "route", "add", &t.subnet, "via", &HOST_UPLINK_IP.to_string()]).unwrap();
    let tcp = tcp_server(&t, &t.container_ns(1), 80, 1);
    let (seen, _) = tcp_ask(&t, &t.world, c1.ip4(), 80).unwrap();
    assert_eq!(ip_of(&seen), WORLD_IP);
    tcp.join().unwrap();
}

#[test]
fn unmap_takes_effect_for_the_next_packet_udp_included() {
    let t = topology(2);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "9000:c1:53/udp"]).unwrap();
    let tcp = tcp_server(&t, &ns1, 80, 1);
    tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).unwrap();
    tcp.join().unwrap();
    let out = t.ctl_ok(&["unmap", "8080:c1:80"]).unwrap();
    assert!(out.contains("removed 8080:c1:80/tcp"), "{out}");
    let _tcp = tcp_server(&t, &ns1, 80, 1);
    assert!(tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).is_err(), "new connections are refused after unmap");

    // UDP: the same client socket keeps sending; after the mapping moves to
    // c2, the very next datagram goes to c2, not to a stale flow (moby#8795).
    let client = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    let s1 = udp_server(&t, &ns1, 53, 5);
    for _ in 0..3 {
        udp_ask_on(&client, HOST_UPLINK_IP, 9000).unwrap();
    }
    t.ctl_ok(&["unmap", "9000/udp"]).unwrap();
    t.ctl_ok(&["map", "9000:c2:53/udp"]).unwrap();
    let s2 = udp_server(&t, &ns2, 53, 1);
    let (seen, from) = udp_ask_on(&client, HOST_UPLINK_IP, 9000).unwrap();
    assert_eq!(ip_of(&seen), WORLD_IP);
    assert_eq!(from, SocketAddr::from((HOST_UPLINK_IP, 9000)));
    s2.join().unwrap();
    let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert!(
        flows.iter().filter(|f| f.scope == "nat").all(|f| f.mapping_id == maps[0].id),
        "only flows of the live mapping remain: {flows:?}"
    );
    drop(s1);
}

#[test]
fn container_removal_takes_its_mappings() {
    let t = topology(2);
    t.ctl_ok(&["map", "8080-8082:c1:80-82"]).unwrap();
    t.ctl_ok(&["map", "9090:c2:80"]).unwrap();
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.len(), 4);
    t.ctl_ok(&["container", "del", "c1"]).unwrap();
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.iter().map(Mapping::spec).collect::<Vec<_>>(), vec!["9090:c2:80/tcp"]);
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!(st.maps.iter().find(|m| m.name == "MAPPINGS4").unwrap().entries, 1);
    assert!(tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8081).is_err());
}

#[test]
fn mappings_survive_an_agent_restart() {
    let mut t = topology(1);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.stop_agent().unwrap();
    let tcp = tcp_server(&t, &t.container_ns(1), 80, 1);
    tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).expect("published port works with the agent stopped");
    tcp.join().unwrap();
    t.start_agent().unwrap();
    // A server of its own after the restart, which on a loaded machine can
    // outlast the first one's bounded wait.
    let tcp = tcp_server(&t, &t.container_ns(1), 80, 1);
    tcp_ask(&t, &t.world, HOST_UPLINK_IP, 8080).expect("and after the restart");
    tcp.join().unwrap();
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.len(), 1);
}

#[test]
fn bad_specs_are_refused_and_change_nothing() {
    let t = topology(1);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "127.0.0.1:9000:c1:90"]).unwrap();
    let snapshot = || {
        let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
        let st: Status = t.ctl_json(&["status"]).unwrap();
        (maps, st.maps.iter().find(|m| m.name == "MAPPINGS4").unwrap().entries)
    };
    let before = snapshot();
    let cases = [
        (vec!["map", "8080:c1"], "expected [HOSTIP:]HOSTPORT"),
        (vec!["map", "8080:nope:80"], "no container named \"nope\""),
        (vec!["map", "8080:c1:81"], "already published by 8080:c1:80/tcp"),
        (vec!["map", "198.18.0.1:8080:c1:81"], "already published"),
        (vec!["map", "9000:c1:91"], "already published by 127.0.0.1:9000:c1:90/tcp"),
        (vec!["map", "7000-7002:c1:80-81"], "has 3 ports but container range"),
        (vec!["map", "70000:c1:80"], "out of range"),
        (vec!["map", "7000:c1:0"], "out of range"),
        (vec!["map", "7000-6999:c1:80-79"], "reversed"),
        (vec!["map", "7999-8081:c1:1000-1082"], "already published"),
        (vec!["map", "7000:c1:80/sctp"], "sctp"),
        (vec!["unmap", "8080:c1:81"], "is not published"),
        (vec!["unmap", "8080/udp"], "is not published"),
        (vec!["unmap", "8080-8081"], "8081/tcp is not published"),
    ];
    for (args, want) in &cases {
        let err = t.ctl_err(args).unwrap();
        assert!(err.contains(want), "netpathctl {args:?}: expected {want:?} in {err:?}");
        assert_eq!(snapshot(), before, "state changed after refused {args:?}");
    }
    // The same port on another protocol, or another address, is fine.
    t.ctl_ok(&["map", "8080:c1:80/udp"]).unwrap();
    t.ctl_ok(&["map", "127.0.0.2:9000:c1:90"]).unwrap();
}

#[test]
fn expired_flows_are_collected() {
    assert!(netpath_tests::is_root());
    let mut t = Topology::new(1).unwrap();
    let cfg = std::env::temp_dir().join(format!("{}-netpathd.toml", t.prefix));
    std::fs::write(&cfg, "[conntrack]\nudp = 2\ngc_interval = 1\n").unwrap();
    t.agent_args(&["--config", &cfg.display().to_string()]);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let udp = udp_server(&t, &t.container_ns(1), 53, 1);
    udp_ask(&t, &t.world, HOST_UPLINK_IP, 8053).unwrap();
    udp.join().unwrap();
    let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
    let nat: Vec<_> = flows.iter().filter(|f| f.scope == "nat").collect();
    assert_eq!(nat.len(), 1, "{flows:?}");
    assert_eq!(flows.len(), 1, "the translation carries c1's verdict: {flows:?}");
    assert_eq!((nat[0].container.as_deref(), nat[0].direction), (Some("c1"), Some(netpath_common::Direction::In)));
    assert_eq!(nat[0].state, "established");
    assert!(nat[0].expires_in <= 2);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
        if flows.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "flow not collected: {flows:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = std::fs::remove_file(cfg);
    // Flush cuts live flows.
    let udp = udp_server(&t, &t.container_ns(1), 53, 1);
    udp_ask(&t, &t.world, HOST_UPLINK_IP, 8053).unwrap();
    udp.join().unwrap();
    let out = t.ctl_ok(&["conntrack", "flush"]).unwrap();
    assert!(out.contains("flushed 1 flows"), "the NAT flow, which carries the container's verdict: {out}");
}

#[test]
fn bulk_publish_and_unmap_are_all_or_nothing() {
    let t = topology(2);
    t.ctl_ok(&["map", "9000:c2:80"]).unwrap();
    let maps = |t: &Topology| -> Vec<String> {
        let ms: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
        let mut specs: Vec<String> = ms.iter().map(|m| m.spec()).collect();
        specs.sort();
        specs
    };
    let file = t.run_dir().join("specs");
    let write = |lines: &[&str]| std::fs::write(&file, lines.join("\n")).unwrap();
    let f = file.display().to_string();
    // One spec clashes with c2's port: refused by name, nothing published.
    write(&["# web ports", "8080:c1:80", "8443:c1:443  # tls", "9000:c1:90"]);
    let err = t.ctl_err(&["map", "-f", &f]).unwrap();
    assert!(err.contains("9000/tcp is already published by 9000:c2:80/tcp"), "{err}");
    assert_eq!(maps(&t), vec!["9000:c2:80/tcp"]);
    // A malformed line names itself.
    write(&["8080:c1:80", "80800:c1:80"]);
    let err = t.ctl_err(&["map", "-f", &f]).unwrap();
    assert!(err.contains("\"80800:c1:80\""), "{err}");
    assert_eq!(maps(&t), vec!["9000:c2:80/tcp"]);
    // Two specs of one request that clash with each other.
    write(&["8080:c1:80", "8080:c2:80"]);
    assert!(t.ctl_err(&["map", "-f", &f]).unwrap().contains("already published"));
    assert_eq!(maps(&t), vec!["9000:c2:80/tcp"]);
    // 10000 ports in one call, then all of them reachable by the table.
    let many: Vec<String> = (20000..30000).map(|p| format!("{p}:c1:80")).collect();
    std::fs::write(&file, many.join("\n")).unwrap();
    t.ctl_ok(&["map", "-f", &f]).unwrap();
    assert_eq!(maps(&t).len(), 10001);
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!(st.maps.iter().find(|m| m.name == "MAPPINGS4").unwrap().entries, 10001);
    // Unmap: one spec that names nothing, nothing goes.
    write(&["20000/tcp", "31000/tcp"]);
    let err = t.ctl_err(&["unmap", "-f", &f]).unwrap();
    assert!(err.contains("31000/tcp is not published"), "{err}");
    assert_eq!(maps(&t).len(), 10001);
    let all: Vec<String> = (20000..30000).map(|p| format!("{p}/tcp")).collect();
    std::fs::write(&file, all.join("\n")).unwrap();
    t.ctl_ok(&["unmap", "-f", &f]).unwrap();
    assert_eq!(maps(&t), vec!["9000:c2:80/tcp"]);
}

/// 100000 published ports (issue 11): beyond the 65535 ports of one
/// address, on two host addresses; each of them reached from the world, and
/// a request past the table's capacity refused whole.
#[test]
fn a_hundred_thousand_ports_are_published_and_reached() {
    let t = topology(1);
    let second = Ipv4Addr::new(198, 18, 0, 3);
    t.exec(&t.host, &["ip", "addr", "add", &format!("{second}/24"), "dev", netpath_tests::topology::HOST_UPLINK])
        .unwrap();
    let specs: Vec<String> = (1024..=65535u16)
        .map(|p| format!("{HOST_UPLINK_IP}:{p}:c1:80"))
        .chain((1024..=36511u16).map(|p| format!("{second}:{p}:c1:80")))
        .collect();
    assert_eq!(specs.len(), 100_000);
    let file = t.run_dir().join("specs");
    let f = file.display().to_string();
    // In one call, all or nothing.
    let started = Instant::now();
    std::fs::write(&file, specs.join("\n")).unwrap();
    t.ctl_ok(&["map", "-f", &f]).unwrap();
    eprintln!("100000 ports published in {:?}", started.elapsed());
    let mappings = |t: &Topology| {
        let st: Status = t.ctl_json(&["status"]).unwrap();
        st.maps.iter().find(|m| m.name == "MAPPINGS4").unwrap().entries
    };
    assert_eq!(mappings(&t), 100_000);
    let ends = [(HOST_UPLINK_IP, 1024), (HOST_UPLINK_IP, 65535), (second, 1024), (second, 36511)];
    let server = tcp_server(&t, &t.container_ns(1), 80, ends.len());
    for (ip, port) in ends {
        tcp_ask(&t, &t.world, ip, port).unwrap_or_else(|e| panic!("{ip}:{port} reaches c1: {e:#}"));
    }
    server.join().unwrap();
    // 31072 entries are left: a request for one more is refused whole.
    let past: Vec<String> = (1024..=32096u16).map(|p| format!("{HOST_UPLINK_IP}:{p}:c1:80/udp")).collect();
    assert_eq!(past.len(), 131_072 - 100_000 + 1);
    std::fs::write(&file, past.join("\n")).unwrap();
    let err = t.ctl_err(&["map", "-f", &f]).unwrap();
    assert!(err.contains("published-port table is full: 100000 of 131072"), "{err}");
    assert_eq!(mappings(&t), 100_000);
    // Exactly the capacity fits.
    std::fs::write(&file, past[1..].join("\n")).unwrap();
    t.ctl_ok(&["map", "-f", &f]).unwrap();
    assert_eq!(mappings(&t), 131_072);
    // A restarted agent adopts the full table (reconciled by index, not by
    // comparing every entry with every mapping).
    let mut t = t;
    t.stop_agent().unwrap();
    let started = Instant::now();
    t.start_agent().unwrap();
    eprintln!("agent restarted over 131072 mappings in {:?}", started.elapsed());
    assert_eq!(mappings(&t), 131_072);
    let server = tcp_server(&t, &t.container_ns(1), 80, 1);
    tcp_ask(&t, &t.world, second, 36511).unwrap();
    server.join().unwrap();
}

#[test]
fn a_large_table_is_collected_beside_the_api() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use netpath_common::{CtEntry4, CtKey4};

    assert!(netpath_tests::is_root());
    let mut t = Topology::new(1).unwrap();
    let cfg = t.run_dir().join("netpathd.toml");
    std::fs::write(&cfg, "[conntrack]\ngc_interval = 1\n").unwrap();
    t.agent_args(&["--config", &cfg.display().to_string()]);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let entries = |t: &Topology| {
        let st: Status = t.ctl_json(&["status"]).unwrap();
        st.maps.iter().find(|m| m.name == "CT4").unwrap().entries
    };
    // 50000 expired flows (100000 entries), written straight into the pinned
    // table as the datapath would have left them.
    const FLOWS: u32 = 50_000;
    let data = MapData::from_pin(t.pin_dir().join("maps").join("CT4")).unwrap();
    let mut ct: BpfHashMap<MapData, CtKey4, CtEntry4> = BpfHashMap::try_from(Map::LruHashMap(data)).unwrap();
    for i in 0..FLOWS {
        let client = [100, 64, (i >> 8) as u8, i as u8];
        let key = CtKey4::new(client, [198, 18, 0, 1], 40000u16.to_be(), 8080u16.to_be(), 6);
        let reply = CtKey4::new([10, 1, 0, 2], client, 80u16.to_be(), 40000u16.to_be(), 6);
        let entry = |peer: CtKey4, flags: u8| CtEntry4 { peer, flags, expires_ns: 1, ..Default::default() };
        ct.insert(key, entry(reply, 0), 0).unwrap();
        ct.insert(reply, entry(key, netpath_common::conntrack::CT_F_REPLY), 0).unwrap();
    }
    // `status` does not walk the table: its CT4 level is the GC's count
    // (in batches, across many of them), with its age.
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert!(st.maps.iter().find(|m| m.name == "CT4").unwrap().counted_ms_ago.is_some());
    let flows: Vec<Flow> = t.ctl_json(&["conntrack"]).unwrap();
    assert!(flows.len() >= FLOWS as usize, "listed: {}", flows.len());
    // The agent answers while its GC works through them, and they go.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = 9000;
    while entries(&t) > 0 {
        assert!(Instant::now() < deadline, "{} entries left", entries(&t));
        t.ctl_ok(&["map", &format!("{port}:c1:80")]).unwrap();
        port += 1;
    }
}
