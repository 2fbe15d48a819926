//! Isolation fails closed: what a hostile container (it has CAP_NET_RAW)
//! sends with raw sockets, checked from the victim's side with real
//! packets. Each test also shows the traffic getting through where netpath
//! promises nothing (icc on, an allowing policy), so that it can fail.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use netpath_tests::{
    frames::{self, ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP},
    raw::{PacketSocket, RawIpSocket},
    topology::{Topology, HOST_UPLINK_IP, WORLD_IP},
};
use netpath_userspace::{agent::container_mac, model::Container};

fn topology(containers: usize) -> (Topology, Vec<Container>) {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let mut t = Topology::new(containers).expect("build topology");
    t.start_agent().expect("start netpathd");
    let cs = (1..=containers).map(|i| t.add_container(i).expect("add container")).collect();
    (t, cs)
}

fn broadcast_of(t: &Topology) -> Ipv4Addr {
    let net: ipnet::Ipv4Net = t.subnet.parse().unwrap();
    net.broadcast()
}

/// What reaches c2 from c1, as seen by a capture on c2's eth0: a UDP
/// broadcast, a subnet broadcast, and a frame to c2's MAC for an address
/// that is not c2's.
fn frames_c2_sees(t: &Topology, c1: &Container, c2: &Container) -> [bool; 3] {
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let capture = t.in_ns(&ns2, || PacketSocket::open("eth0")).unwrap();
    let sender = t
        .in_ns(&ns1, || {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.set_broadcast(true)?;
            Ok(s)
        })
        .unwrap();
    sender.send_to(b"icc-limited-broadcast", (Ipv4Addr::BROADCAST, 7010)).unwrap();
    let limited = capture.saw(b"icc-limited-broadcast", Duration::from_millis(700));
    sender.send_to(b"icc-subnet-broadcast", (broadcast_of(t), 7010)).unwrap();
    let subnet = capture.saw(b"icc-subnet-broadcast", Duration::from_millis(700));
    // A frame to c2's MAC with a foreign destination address: the bridge
    // forwards by MAC.
    let foreign = [192, 0, 2, 77];
    let l4 = frames::udp(c1.ip4().octets(), foreign, 4000, 7010, b"icc-by-mac");
    let frame = frames::eth(
        container_mac(c2.ip, None),
        container_mac(c1.ip, None),
        ETH_P_IPV4,
        &frames::ipv4(c1.ip4().octets(), foreign, IPPROTO_UDP, &[], &l4),
    );
    let raw = t.in_ns(&ns1, || PacketSocket::open("eth0")).unwrap();
    raw.send(&frame).unwrap();
    let by_mac = capture.saw(b"icc-by-mac", Duration::from_millis(700));
    [limited, subnet, by_mac]
}

#[test]
fn icc_off_blocks_broadcast_and_frames_to_other_containers() {
    let (t, cs) = topology(2);
    assert_eq!(frames_c2_sees(&t, &cs[0], &cs[1]), [true; 3], "with icc on the bridge carries all three");
    t.ctl_ok(&["icc", "off"]).unwrap();
    let seen = frames_c2_sees(&t, &cs[0], &cs[1]);
    let st: netpath_userspace::model::ContainerStatus = t.ctl_json(&["container", "show", "c1"]).unwrap();
    assert_eq!(seen, [false; 3], "with icc off none reaches c2 (c1: {:?})", st.stats);
    assert!(st.stats.drops.get("policy").copied().unwrap_or(0) >= 3, "counted as policy drops: {:?}", st.stats);
    // The gateway (and through it, the world) stays reachable.
    assert!(t.ping(&t.container_ns(1), &t.subnet.replace(".0/24", ".1"), 1).unwrap());
}

/// Sends an IPv4 packet from container `i` through a raw socket.
fn raw_send(t: &Topology, i: usize, packet: &[u8]) {
    let sock = t.in_ns(&t.container_ns(i), RawIpSocket::open).unwrap();
    sock.send(packet).unwrap();
}

/// Does a capture on `eth0` of namespace `ns` see `marker` while `act` runs?
fn seen(t: &Topology, ns: &str, marker: &[u8], act: impl FnOnce()) -> bool {
    let capture = t.in_ns(ns, || PacketSocket::open("eth0")).unwrap();
    act();
    capture.saw(marker, Duration::from_millis(700))
}

fn icmp_message(kind: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = frames::icmp_echo(id, 1, payload);
    m[0] = kind;
    m[2] = 0;
    m[3] = 0;
    let c = frames::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

#[test]
fn protocols_without_ports_are_judged() {
    let (t, cs) = topology(2);
    let (c1, c2) = (cs[0].ip4().octets(), cs[1].ip4().octets());
    let ns2 = t.container_ns(2);
    let proto253 = |marker: &[u8]| frames::ipv4(c1, c2, 253, &[], marker);
    assert!(seen(&t, &ns2, b"p253-open", || raw_send(&t, 1, &proto253(b"p253-open"))), "no rule: it passes");
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &format!("{}/32", cs[0].ip4())]).unwrap();
    assert!(!seen(&t, &ns2, b"p253-denied", || raw_send(&t, 1, &proto253(b"p253-denied"))), "denied in at c2");
    t.ctl_ok(&["policy", "rm", "c2", "deny", "in", &format!("{}/32", cs[0].ip4())]).unwrap();
    assert!(seen(&t, &ns2, b"p253-again", || raw_send(&t, 1, &proto253(b"p253-again"))));
    t.ctl_ok(&["icc", "off"]).unwrap();
    assert!(!seen(&t, &ns2, b"p253-icc", || raw_send(&t, 1, &proto253(b"p253-icc"))), "icc off blocks it");
}

#[test]
fn every_icmp_type_is_judged() {
    let (t, cs) = topology(2);
    let (c1, c2) = (cs[0].ip4().octets(), cs[1].ip4().octets());
    let ns2 = t.container_ns(2);
    // ICMP timestamp requests (type 13): neither echo nor an error.
    let timestamp = |marker: &[u8]| frames::ipv4(c1, c2, 1, &[], &icmp_message(13, 0x1313, marker));
    assert!(seen(&t, &ns2, b"ts-open", || raw_send(&t, 1, &timestamp(b"ts-open"))), "no rule: it passes");
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &format!("{}/32", cs[0].ip4()), "icmp/8"]).unwrap();
    assert!(seen(&t, &ns2, b"ts-other", || raw_send(&t, 1, &timestamp(b"ts-other"))), "a rule on type 8 only");
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &format!("{}/32", cs[0].ip4()), "icmp/13"]).unwrap();
    assert!(!seen(&t, &ns2, b"ts-denied", || raw_send(&t, 1, &timestamp(b"ts-denied"))), "type 13 denied");
}

#[test]
fn an_echo_reply_never_opens_the_way_for_echo_requests() {
    let (t, cs) = topology(2);
    let (c1, c2) = (cs[0].ip4().octets(), cs[1].ip4().octets());
    let ns2 = t.container_ns(2);
    let echo = |kind: u8, marker: &[u8]| frames::ipv4(c1, c2, 1, &[], &icmp_message(kind, 0x5151, marker));
    assert!(seen(&t, &ns2, b"req-open", || raw_send(&t, 1, &echo(8, b"req-open"))), "no rule: requests pass");
    t.ctl_ok(&["policy", "add", "c1", "deny", "out", &format!("{}/32", cs[1].ip4()), "icmp/8"]).unwrap();
    assert!(!seen(&t, &ns2, b"req-denied", || raw_send(&t, 1, &echo(8, b"req-denied"))));
    // An unsolicited echo reply first, then requests with its identifier.
    raw_send(&t, 1, &echo(0, b"reply-first"));
    assert!(!seen(&t, &ns2, b"req-after-reply", || raw_send(&t, 1, &echo(8, b"req-after-reply"))));
}

#[test]
fn fragments_follow_their_first_fragment_and_tiny_ones_are_dropped() {
    let (t, cs) = topology(2);
    let (c1, c2) = (cs[0].ip4().octets(), cs[1].ip4().octets());
    let ns2 = t.container_ns(2);
    // An allowed UDP datagram in two fragments: both arrive.
    let mut payload = vec![b'a'; 48];
    payload.extend_from_slice(b"frag-tail-allowed");
    let datagram = frames::ipv4(c1, c2, IPPROTO_UDP, &[], &frames::udp(c1, c2, 5000, 7020, &payload));
    let (first, later) = frames::split_ipv4(&datagram, 0x4242, 24);
    assert!(seen(&t, &ns2, b"frag-tail-allowed", || {
        raw_send(&t, 1, &first);
        raw_send(&t, 1, &later);
    }));
    // A later fragment on its own never passes unjudged.
    let mut payload = vec![b'b'; 48];
    payload.extend_from_slice(b"frag-lone-later");
    let datagram = frames::ipv4(c1, c2, IPPROTO_UDP, &[], &frames::udp(c1, c2, 5000, 7020, &payload));
    let (_, later) = frames::split_ipv4(&datagram, 0x4343, 24);
    assert!(!seen(&t, &ns2, b"frag-lone-later", || raw_send(&t, 1, &later)));
    // RFC 1858: a first fragment with only 8 bytes of TCP (no flags) to a
    // port c2 denies; neither it nor the rest may reach c2.
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &format!("{}/32", cs[0].ip4()), "tcp/22"]).unwrap();
    let segment = frames::tcp(c1, c2, 0x7a7a, 22, 0x02, b"tiny-frag-rest");
    let datagram = frames::ipv4(c1, c2, IPPROTO_TCP, &[], &segment);
    let (first, later) = frames::split_ipv4(&datagram, 0x4444, 8);
    let tiny_marker = &segment[..8];
    let capture = t.in_ns(&ns2, || PacketSocket::open("eth0")).unwrap();
    raw_send(&t, 1, &first);
    assert!(!capture.saw(tiny_marker, Duration::from_millis(700)), "the tiny first fragment is dropped");
    assert!(!seen(&t, &ns2, b"tiny-frag-rest", || raw_send(&t, 1, &later)), "and so is the rest");
    // A container that goes takes its datagrams' fragment records along: the
    // next owner of its address inherits no verdict.
    let frags = |t: &Topology| {
        let st = t.status_counted().unwrap();
        st.maps.iter().find(|m| m.name == "FRAGS4").map(|m| m.entries).unwrap()
    };
    assert!(frags(&t) > 0, "the allowed datagram's first fragment is recorded");
    t.ctl_ok(&["container", "del", "c1"]).unwrap();
    assert_eq!(frags(&t), 0, "forgotten with c1");
}

#[test]
fn a_cut_flow_stays_cut_from_both_ends() {
    let (t, cs) = topology(2);
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let listener = t.in_ns(&ns2, || Ok(TcpListener::bind(("0.0.0.0", 9100))?)).unwrap();
    let c2 = cs[1].ip4();
    let mut client = t.in_ns(&ns1, || Ok(TcpStream::connect((c2, 9100))?)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    }
    let mut buf = [0u8; 64];
    client.write_all(b"hello").unwrap();
    assert_eq!(server.read(&mut buf).unwrap(), 5);
    server.write_all(b"hi").unwrap();
    assert_eq!(client.read(&mut buf).unwrap(), 2);
    // c2 now denies c1: the agent cuts the flow.
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", &format!("{}/32", cs[0].ip4())]).unwrap();
    // The server speaks first: its packets must not revive the flow.
    server.write_all(b"from-server-after-cut").unwrap();
    assert!(client.read(&mut buf).is_err(), "the server's data does not reach the client");
    client.write_all(b"from-client-after-cut").unwrap();
    assert!(server.read(&mut buf).is_err(), "the client's data does not reach the server");
}

#[test]
fn a_container_cannot_forge_icmp_errors_about_others_flows() {
    let (t, cs) = topology(2);
    let world = t.world.clone();
    let sink = t.in_ns(&world, || Ok(UdpSocket::bind(("0.0.0.0", 7030))?)).unwrap();
    // c2 talks to the world through the masquerade on a connected socket.
    let victim = t
        .in_ns(&t.container_ns(2), || {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.connect((WORLD_IP, 7030))?;
            Ok(s)
        })
        .unwrap();
    victim.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    victim.send(b"to-the-world").unwrap();
    let mut buf = [0u8; 64];
    let (_, seen_from) = sink.recv_from(&mut buf).unwrap();
    assert_eq!(seen_from.ip(), std::net::IpAddr::V4(HOST_UPLINK_IP), "masqueraded");
    let masq_port = seen_from.port();
    // c1 forges "port unreachable" quoting c2's translated datagram.
    let (host, w, c1) = (HOST_UPLINK_IP.octets(), WORLD_IP.octets(), cs[0].ip4().octets());
    let quoted = frames::ipv4(host, w, IPPROTO_UDP, &[], &frames::udp(host, w, masq_port, 7030, b"to-the-world"));
    let forged = frames::ipv4(c1, w, 1, &[], &frames::icmp_error(3, 3, 0, &quoted[..28]));
    raw_send(&t, 1, &forged);
    let err = victim.recv(&mut buf).expect_err("nothing answers c2");
    assert_ne!(err.kind(), std::io::ErrorKind::ConnectionRefused, "a forged error reset c2's socket");
    // A genuine error about c2's own flow still reaches it.
    victim.connect((WORLD_IP, 7031)).unwrap();
    victim.send(b"nobody-listens").unwrap();
    let err = victim.recv(&mut buf).expect_err("port 7031 is closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "the world's own port unreachable");
}

#[test]
fn untranslatable_traffic_never_leaves_with_a_private_source() {
    let (t, cs) = topology(1);
    let (c1, w) = (cs[0].ip4().octets(), WORLD_IP.octets());
    let world = t.world.clone();
    // Protocol 253, a lone later fragment, an ICMP timestamp request: the
    // masquerade cannot translate them.
    let proto253 = frames::ipv4(c1, w, 253, &[], b"leak-proto253");
    let mut payload = vec![b'c'; 48];
    payload.extend_from_slice(b"leak-later-fragment");
    let (_, later) = frames::split_ipv4(
        &frames::ipv4(c1, w, IPPROTO_UDP, &[], &frames::udp(c1, w, 5000, 7020, &payload)),
        0x4545,
        24,
    );
    let timestamp = frames::ipv4(c1, w, 1, &[], &icmp_message(13, 0x1414, b"leak-timestamp"));
    for (packet, marker) in
        [(proto253, &b"leak-proto253"[..]), (later, b"leak-later-fragment"), (timestamp, b"leak-timestamp")]
    {
        assert!(
            !seen(&t, &world, marker, || raw_send(&t, 1, &packet)),
            "{} left the host",
            String::from_utf8_lossy(marker)
        );
    }
    // Translatable traffic still leaves, translated.
    let sink = t.in_ns(&world, || Ok(UdpSocket::bind(("0.0.0.0", 7032))?)).unwrap();
    let client = t.in_ns(&t.container_ns(1), || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    client.send_to(b"translated", (WORLD_IP, 7032)).unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 32];
    let (_, from) = sink.recv_from(&mut buf).unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::V4(HOST_UPLINK_IP));
}

#[test]
fn host_connection_from_published_port_number() {
    let (t, _) = topology(1);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    let world = t.world.clone();
    let listener = t.in_ns(&world, || Ok(TcpListener::bind(("0.0.0.0", 7040))?)).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    // A host process whose local port is the published port number.
    let url = format!("http://{WORLD_IP}:7040/");
    let out = t.exec(&t.host, &["curl", "-s", "--max-time", "4", "--local-port", "8080", &url]);
    let body = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    assert_eq!(body, "hello", "the SYN-ACK and replies reach the host socket, not the container");
    let _ = server.join();
}

#[test]
fn denied_connections_to_a_published_port_fill_no_table() {
    let (t, _) = topology(1);
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    let listener = t.in_ns(&t.container_ns(1), || Ok(TcpListener::bind(("0.0.0.0", 80))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", &format!("{WORLD_IP}/32")]).unwrap();
    let world = t.world.clone();
    let connect = || {
        t.in_ns(&world, || Ok(TcpStream::connect_timeout(&(HOST_UPLINK_IP, 8080).into(), Duration::from_millis(300))?))
            .is_ok()
    };
    for _ in 0..10 {
        assert!(!connect(), "the policy denies the world");
    }
    let flows: Vec<netpath_userspace::model::Flow> = t.ctl_json(&["conntrack"]).unwrap();
    assert!(flows.iter().all(|f| f.original.src != WORLD_IP), "denied SYNs left no entries behind: {flows:?}");
    let stats: netpath_userspace::model::StatsView = t.ctl_json(&["stats"]).unwrap();
    let uplink_policy = stats.uplink.and_then(|u| u.drops.get("policy").copied()).unwrap_or(0);
    assert!(uplink_policy >= 10, "dropped (and counted) on the uplink: {uplink_policy}");
    // Allowed again, the same connection is tracked and works.
    t.ctl_ok(&["policy", "rm", "c1", "deny", "in", &format!("{WORLD_IP}/32")]).unwrap();
    assert!(connect());
    let flows: Vec<netpath_userspace::model::Flow> = t.ctl_json(&["conntrack"]).unwrap();
    assert!(flows.iter().any(|f| f.original.src == WORLD_IP && f.scope == "nat"), "{flows:?}");
}

#[test]
fn a_container_s_icmp_error_leaves_translated() {
    let (t, _) = topology(1);
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    let world = t.world.clone();
    // The world's client of the published port, on a connected socket; c1
    // has nothing on port 53 and answers "port unreachable".
    let client = t
        .in_ns(&world, || {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.connect((HOST_UPLINK_IP, 8053))?;
            Ok(s)
        })
        .unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    client.send(b"anyone-on-53").unwrap();
    let mut buf = [0u8; 64];
    let err = client.recv(&mut buf).expect_err("c1 does not answer on 53");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the error reaches the client as about its own datagram: from the published address, quoting it \
         (it used to be dropped on the uplink, never sent with the container's private address)"
    );
}
