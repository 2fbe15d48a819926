//! The host's own traffic beside netpath's: its sockets keep their ports
//! and tuples whatever is published or masqueraded.

use netpath_tests::topology::Topology;
use netpath_tests::Ipv4Of as _;

fn reserved_ports(t: &Topology) -> String {
    let out = t.exec(&t.host, &["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn published_ports_in_the_ephemeral_range_are_reserved_from_the_host() {
    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(1).unwrap();
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    // The operator's own reservation stays whatever netpath does.
    t.exec(&t.host, &["sysctl", "-qw", "net.ipv4.ip_local_reserved_ports=50000"]).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    assert_eq!(reserved_ports(&t), "50000", "8080 is outside the ephemeral range: nothing to reserve");
    t.ctl_ok(&["map", "40000-40002:c1:80-82"]).unwrap();
    t.ctl_ok(&["map", "45000:c1:90/udp"]).unwrap();
    assert_eq!(reserved_ports(&t), "40000-40002,45000,50000");
    t.ctl_ok(&["unmap", "40000-40002"]).unwrap();
    assert_eq!(reserved_ports(&t), "45000,50000");
    // A restarted agent knows which reservations are its own.
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    t.ctl_ok(&["unmap", "45000/udp"]).unwrap();
    assert_eq!(reserved_ports(&t), "50000");
    // netpath's last reservation goes too when nothing else is reserved
    // (an empty write leaves the sysctl as it was: a newline clears it).
    t.exec(&t.host, &["sysctl", "-qw", "net.ipv4.ip_local_reserved_ports="]).unwrap();
    t.ctl_ok(&["map", "40000:c1:80"]).unwrap();
    assert_eq!(reserved_ports(&t), "40000");
    t.ctl_ok(&["unmap", "40000"]).unwrap();
    assert_eq!(reserved_ports(&t), "", "the last published port stays reserved from the host");
}

#[test]
fn a_masquerade_range_overlapping_the_ephemeral_ports_is_refused() {
    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(0).unwrap();
    t.agent_args(&["--masquerade-ports", "30000-40000"]);
    let err = t.start_agent().unwrap_err().to_string();
    assert!(err.contains("overlap the host's ephemeral ports") && err.contains("30000-40000"), "{err}");
    assert!(!t.links(&t.host.clone()).unwrap().iter().any(|l| l == "np0"), "nothing was set up");
}

#[test]
fn host_sockets_keep_their_tuples_from_the_masquerade() {
    use std::{net::UdpSocket, time::Duration};

    use netpath_tests::topology::{HOST_UPLINK_IP, WORLD_IP};

    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(1).unwrap();
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let bind = |ns: &str, port: u16| {
        let s = t.in_ns(ns, || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    // A host agent gossiping from 7946 (inside the masquerade range) to a
    // peer's 7946, and a container doing the same.
    let (host, world, c1) = (t.host.clone(), t.world.clone(), t.container_ns(1));
    let peer = bind(&world, 7946);
    let host_sock = bind(&host, 7946);
    let container_sock = bind(&c1, 7946);
    host_sock.send_to(b"from-host", (WORLD_IP, 7946)).unwrap();
    container_sock.send_to(b"from-container", (WORLD_IP, 7946)).unwrap();
    let mut buf = [0u8; 64];
    let mut sources = std::collections::HashMap::new();
    for _ in 0..2 {
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        sources.insert(String::from_utf8_lossy(&buf[..n]).into_owned(), from);
    }
    let (h, c) = (sources["from-host"], sources["from-container"]);
    assert_eq!(h.ip(), std::net::IpAddr::V4(HOST_UPLINK_IP));
    assert_eq!(c.ip(), std::net::IpAddr::V4(HOST_UPLINK_IP), "masqueraded");
    assert_ne!(c.port(), 7946, "the host socket's port is not handed to the container");
    // Each answer reaches its own socket.
    peer.send_to(b"to-host", h).unwrap();
    peer.send_to(b"to-container", c).unwrap();
    let n = host_sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to-host");
    let n = container_sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to-container");
}

#[test]
fn containers_are_not_reachable_through_other_host_interfaces() {
    use std::{
        net::{SocketAddr, TcpListener, TcpStream},
        time::Duration,
    };

    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(1).unwrap();
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    let listener = t.in_ns(&t.container_ns(1), || Ok(TcpListener::bind(("0.0.0.0", 80))?)).unwrap();
    listener.set_nonblocking(true).unwrap();
    // A second network on the host (a LAN, a VPN), routing the container
    // subnet through the host.
    let lan = t.new_netns("lan").unwrap();
    let host = t.host.clone();
    t.exec(&host, &["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &lan]).unwrap();
    t.exec(&host, &["ip", "addr", "add", "192.168.77.1/24", "dev", "lan0"]).unwrap();
    t.exec(&host, &["ip", "link", "set", "lan0", "up"]).unwrap();
    t.exec(&lan, &["ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"]).unwrap();
    t.exec(&lan, &["ip", "link", "set", "eth0", "up"]).unwrap();
    t.exec(&lan, &["ip", "route", "add", &t.subnet, "via", "192.168.77.1"]).unwrap();
    assert!(t.ping(&lan, "192.168.77.1", 1).unwrap(), "the LAN reaches the host");
    let reaches = |t: &Topology, ns: &str| {
        t.in_ns(ns, || Ok(TcpStream::connect_timeout(&SocketAddr::from((c1.ip4(), 80)), Duration::from_millis(800))?))
            .is_ok()
    };
    assert!(!reaches(&t, &lan), "no TCP straight to a container's address from the LAN");
    assert!(!t.ping(&lan, &c1.ip4().to_string(), 1).unwrap(), "nor ICMP");
    // The host itself still reaches its containers.
    assert!(reaches(&t, &host), "the host connects to the container");
    // Routed instances make container addresses reachable on purpose.
    t.stop_agent().unwrap();
    t.agent_args(&["--routed"]);
    t.start_agent().unwrap();
    assert!(reaches(&t, &lan), "routed: the LAN reaches the container");
}

#[test]
fn pmtu_through_smaller_uplink() {
    use std::{
        io::{Read as _, Write as _},
        net::{Shutdown, TcpListener, TcpStream},
        time::Duration,
    };

    use netpath_tests::topology::{HOST_UPLINK, HOST_UPLINK_IP, WORLD_IP};

    const SIZE: usize = 200_000;
    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(1).unwrap();
    // The host's uplink carries 1400 bytes; the far side announces 1500.
    t.exec(&t.host, &["ip", "link", "set", HOST_UPLINK, "mtu", "1400"]).unwrap();
    t.start_agent().unwrap();
    let c1 = t.container_ns(1);
    t.add_container(1).unwrap();
    let link = t.exec(&c1, &["ip", "-o", "link", "show", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("mtu 1400"), "the container's MTU follows the uplink");
    let timeouts = |s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
    };
    // Upload from the container through the masquerade.
    let world = t.world.clone();
    let sink = t.in_ns(&world, || Ok(TcpListener::bind(("0.0.0.0", 7050))?)).unwrap();
    let counter = std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = vec![];
        let n = s.read_to_end(&mut buf).unwrap_or(0);
        let _ = s.write_all(n.to_string().as_bytes());
    });
    let mut up = t.in_ns(&c1, || Ok(TcpStream::connect((WORLD_IP, 7050))?)).unwrap();
    timeouts(&up);
    up.write_all(&vec![b'u'; SIZE]).expect("the upload goes through");
    up.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    up.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, SIZE.to_string(), "the world received everything");
    counter.join().unwrap();
    // Download from the container through a published port.
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    let server = t.in_ns(&c1, || Ok(TcpListener::bind(("0.0.0.0", 80))?)).unwrap();
    let source = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
        let _ = s.write_all(&vec![b'd'; SIZE]);
    });
    let mut down = t.in_ns(&world, || Ok(TcpStream::connect((HOST_UPLINK_IP, 8080))?)).unwrap();
    timeouts(&down);
    let mut buf = vec![];
    down.read_to_end(&mut buf).expect("the download goes through");
    assert_eq!(buf.len(), SIZE);
    source.join().unwrap();
}

#[test]
fn masquerade_ports_nobody_owns_are_dropped_not_reset() {
    use std::{
        io::ErrorKind,
        net::{SocketAddr, TcpListener, TcpStream},
        time::Duration,
    };

    use netpath_tests::topology::HOST_UPLINK_IP;

    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(0).unwrap();
    t.start_agent().unwrap();
    let world = t.world.clone();
    let connect = |port: u16| {
        t.in_ns(&world, || {
            Ok(TcpStream::connect_timeout(&SocketAddr::from((HOST_UPLINK_IP, port)), Duration::from_millis(800)))
        })
        .unwrap()
    };
    // A host service listening inside the masquerade range (1024-32767)
    // keeps working.
    let service = t.in_ns(&t.host.clone(), || Ok(TcpListener::bind(("0.0.0.0", 20002))?)).unwrap();
    assert!(connect(20002).is_ok(), "the host's own listener is reachable");
    drop(service);
    // A port of the range nobody owns (a masqueraded flow's port after its
    // entry went): dropped, not reset by the host.
    let err = connect(20001).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock), "dropped, not refused: {err}");
    // Outside the range the host answers as it always did.
    assert_eq!(connect(40000).unwrap_err().kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn the_host_s_icmp_errors_about_a_published_port_reach_the_client() {
    use std::{net::UdpSocket, os::fd::AsRawFd as _, time::Duration};

    use netpath_tests::topology::HOST_UPLINK_IP;

    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(1).unwrap();
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.ctl_ok(&["map", "8053:c1:53/udp"]).unwrap();
    // A traceroute-like probe: TTL 1 runs out in the host, after the
    // published port translated it. The host's "time exceeded" must quote
    // the datagram as the client sent it, or the client's stack cannot
    // match it to the socket (and the container's address leaks).
    let world = t.world.clone();
    let probe = t
        .in_ns(&world, || {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.connect((HOST_UPLINK_IP, 8053))?;
            s.set_ttl(1)?;
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and option value of the declared size.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_RECVERR,
                    &on as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        })
        .unwrap();
    probe.send(b"probe").unwrap();
    let err = probe.recv(&mut [0u8; 64]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "the time-exceeded reached the socket: {err}");
}

#[test]
fn fragmented_datagrams_cross_masquerade_and_published_ports() {
    use std::{
        net::{SocketAddr, UdpSocket},
        time::Duration,
    };

    use netpath_tests::topology::{HOST_UPLINK_IP, WORLD_IP};

    const SIZE: usize = 4000; // three fragments at the 1500 MTU
    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root");
    let mut t = Topology::new(1).unwrap();
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.ctl_ok(&["map", "8054:c1:54/udp"]).unwrap();
    let bind = |ns: &str, port: u16| {
        let s = t.in_ns(ns, || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let (world, c1) = (t.world.clone(), t.container_ns(1));
    let receive = |s: &UdpSocket, what: &str| -> (usize, SocketAddr) {
        let mut buf = vec![0u8; 65536];
        let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(buf[..n].iter().all(|b| *b == buf[0]), "{what}: intact");
        (n, from)
    };
    // Masquerade: a big datagram out, a big answer back.
    let peer = bind(&world, 7060);
    let client = bind(&c1, 0);
    client.send_to(&[b'o'; SIZE], (WORLD_IP, 7060)).unwrap();
    let (n, from) = receive(&peer, "masqueraded datagram");
    assert_eq!((n, from.ip()), (SIZE, HOST_UPLINK_IP.into()), "whole, from the host's address");
    peer.send_to(&[b'i'; SIZE], from).unwrap();
    assert_eq!(receive(&client, "answer to the masqueraded datagram").0, SIZE);
    // Published port: a big request in, a big answer out.
    let server = bind(&c1, 54);
    let outside = bind(&world, 0);
    outside.send_to(&[b'q'; SIZE], (HOST_UPLINK_IP, 8054)).unwrap();
    let (n, from) = receive(&server, "datagram to the published port");
    assert_eq!((n, from.ip()), (SIZE, WORLD_IP.into()), "whole, from the real client");
    server.send_to(&[b'r'; SIZE], from).unwrap();
    let (n, from) = receive(&outside, "answer from the published port");
    assert_eq!((n, from), (SIZE, SocketAddr::from((HOST_UPLINK_IP, 8054))), "whole, from the published address");
}

/// The agent writes each new veth's host-side setting through the host's
/// `net.ipv6.conf` directory held open (a lookup from /proc/sys costs a
/// walk over every namespace's entry). What it writes there lands in the
/// namespace the directory was opened in, whichever namespace the writing
/// thread is in.
#[test]
fn a_sysctl_section_writes_where_it_was_opened() {
    use netpath_userspace::netns::{Netns, SysctlSection};
    assert!(netpath_tests::is_root(), "creates namespaces: run as root");
    let mut t = Topology::new(0).unwrap();
    let (a, b) = (t.new_netns("sa").unwrap(), t.new_netns("sb").unwrap());
    for ns in [&a, &b] {
        t.exec(ns, &["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]).unwrap();
    }
    let read = |ns: &str| {
        let out = t.exec(ns, &["cat", "/proc/sys/net/ipv6/conf/d0/disable_ipv6"]).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!((read(&a), read(&b)), ("0".to_string(), "0".to_string()));
    let in_a = Netns::open(&a).unwrap();
    let in_b = Netns::open(&b).unwrap();
    let conf = in_a.run(|| SysctlSection::open("net.ipv6.conf")).unwrap();
    in_b.run(|| conf.write("d0", "disable_ipv6", "1")).unwrap();
    assert_eq!((read(&a), read(&b)), ("1".to_string(), "0".to_string()), "written in a, from a thread in b");
    // A name that would leave the section is refused, naming it.
    let e = conf.write("../../ipv4/conf/d0", "forwarding", "1").unwrap_err();
    assert!(format!("{e:#}").contains("not a sysctl name"), "{e:#}");
    let e = in_a.run(|| conf.write("nosuch0", "disable_ipv6", "1")).unwrap_err();
    assert!(format!("{e:#}").contains("net.ipv6.conf.nosuch0.disable_ipv6"), "{e:#}");
}

/// A container's `net.ipv6.conf` is opened on a thread of its own inside
/// the container's namespace (`Netns::spawn`) while the agent sets up the
/// host end: what that thread opens is the container's, and the caller
/// goes on meanwhile.
#[test]
fn a_thread_spawned_in_a_namespace_opens_that_namespaces_settings() {
    use netpath_userspace::netns::{Netns, SysctlSection};
    assert!(netpath_tests::is_root(), "creates namespaces: run as root");
    let mut t = Topology::new(0).unwrap();
    let ns = t.new_netns("sp").unwrap();
    t.exec(&ns, &["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]).unwrap();
    let own = Netns::current().unwrap().inode().unwrap();
    let opening = Netns::open(&ns).unwrap().spawn(|| SysctlSection::open("net.ipv6.conf")).unwrap();
    // The caller stays where it was.
    assert_eq!(Netns::current().unwrap().inode().unwrap(), own);
    let conf = opening.join().unwrap().unwrap();
    conf.write("d0", "accept_ra", "0").unwrap();
    let out = t.exec(&ns, &["cat", "/proc/sys/net/ipv6/conf/d0/accept_ra"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "written in the spawned thread's namespace");
    // A failure in the spawned thread comes back whole.
    let e = Netns::open(&ns).unwrap().spawn(|| SysctlSection::open("net.nosuch")).unwrap().join().unwrap().unwrap_err();
    assert!(format!("{e:#}").contains("/proc/sys/net/nosuch"), "{e:#}");
}
