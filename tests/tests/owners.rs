//! Removing a mapping or a container costs what it owns, not what conntrack
//! holds: its flows are cut in the datapath (their owner's id leaves its
//! slot), not found by a walk of the table. With 100000 unrelated entries in
//! CT4, each removal leaves those untouched, hides its own flows from the
//! listing at once, cuts them for the next packet, and leaves their entries
//! for the datapath (on that packet) or the GC to delete: proof that nothing
//! walked the table. A policy change is the same: the container's policy
//! epoch moves on, and the datapath judges each of its flows again at the
//! next packet.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use netpath_common::{
    conntrack::{CT_F_REPLY, IPPROTO_TCP, IPPROTO_UDP},
    CtEntry4, CtKey4, CtScope,
};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::model::{Flow, Mapping, Status, Tuple};

type Ct = BpfHashMap<MapData, CtKey4, CtEntry4>;

/// Unrelated flows written straight into CT4 (live, far from expiry).
const UNRELATED_FLOWS: u32 = 50_000;

fn unrelated(i: u32) -> (CtKey4, CtKey4) {
    let client = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let key = CtKey4::new(client, [198, 18, 0, 1], 40000u16.to_be(), 8080u16.to_be(), 6);
    let reply = CtKey4::new([10, 1, 0, 2], client, 80u16.to_be(), 40000u16.to_be(), 6);
    (key, reply)
}

fn fill_unrelated(ct: &mut Ct) {
    for i in 0..UNRELATED_FLOWS {
        let (key, reply) = unrelated(i);
        let entry = |peer: CtKey4, flags: u8| CtEntry4 { peer, flags, expires_ns: u64::MAX / 2, ..Default::default() };
        ct.insert(key, entry(reply, 0), 0).unwrap();
        ct.insert(reply, entry(key, CT_F_REPLY), 0).unwrap();
    }
}

fn unrelated_untouched(ct: &Ct) -> bool {
    (0..UNRELATED_FLOWS).all(|i| {
        let (key, reply) = unrelated(i);
        ct.get(&key, 0).is_ok_and(|e| e.peer == reply) && ct.get(&reply, 0).is_ok_and(|e| e.peer == key)
    })
}

fn key_of(t: &Tuple, scope: CtScope) -> CtKey4 {
    let v4 = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => a.octets(),
        std::net::IpAddr::V6(a) => panic!("an IPv4 flow was expected, not {a}"),
    };
    CtKey4::new(v4(t.src), v4(t.dst), t.sport.to_be(), t.dport.to_be(), IPPROTO_UDP).in_scope(scope)
}

fn flows(t: &Topology) -> Vec<Flow> {
    t.ctl_json(&["conntrack"]).unwrap()
}

fn ask(s: &UdpSocket, to: SocketAddr) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    s.send_to(b"who am i", to).unwrap();
    let mut buf = [0u8; 64];
    s.recv_from(&mut buf).ok().map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Answers `n` datagrams on `sock` with the sender's address.
fn echo(sock: UdpSocket, n: usize) -> std::thread::JoinHandle<()> {
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let Ok((_, from)) = sock.recv_from(&mut buf) else { return };
            let _ = sock.send_to(from.to_string().as_bytes(), from);
        }
    })
}

#[test]
fn unmap_and_container_del_cut_their_flows_without_walking_conntrack() {
    assert!(netpath_tests::is_root(), "run as root");
    let mut t = Topology::new(3).unwrap();
    // The GC runs once at start, then not again during the test: whatever
    // goes from CT4 below goes by the datapath's hand.
    let cfg = t.run_dir().join("netpathd.toml");
    std::fs::write(&cfg, "[conntrack]\ngc_interval = 3600\n").unwrap();
    t.agent_args(&["--config", &cfg.display().to_string()]);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let data = MapData::from_pin(t.pin_dir().join("maps").join("CT4")).unwrap();
    let mut ct: Ct = BpfHashMap::try_from(Map::LruHashMap(data)).unwrap();
    fill_unrelated(&mut ct);

    // A published UDP flow from the world to c1.
    t.ctl_ok(&["map", "9000:c1:53/udp"]).unwrap();
    let published = SocketAddr::from((HOST_UPLINK_IP, 9000));
    let server1 = echo(t.in_ns(&t.container_ns(1), || Ok(UdpSocket::bind(("0.0.0.0", 53))?)).unwrap(), 2);
    let client = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    for _ in 0..2 {
        assert!(ask(&client, published).is_some(), "c1 answers through the published port");
    }
    server1.join().unwrap();
    let old_id = t.ctl_json::<Vec<Mapping>>(&["maps"]).unwrap()[0].id;
    let listed = flows(&t);
    let flow = listed.iter().find(|f| f.scope == "nat" && f.mapping_id == old_id).expect("the published flow");
    let (orig, reply) = (key_of(&flow.original, CtScope::Nat), key_of(&flow.reply, CtScope::Nat));
    assert_eq!(ct.get(&orig, 0).unwrap().mapping_id, old_id);

    t.ctl_ok(&["unmap", "9000/udp"]).unwrap();
    assert!(flows(&t).iter().all(|f| f.mapping_id != old_id), "the unmapped port's flows are not listed");
    assert!(
        ct.get(&orig, 0).is_ok() && ct.get(&reply, 0).is_ok(),
        "unmap did not walk conntrack: the flow's entries are still there, stale"
    );
    assert!(unrelated_untouched(&ct), "unrelated flows untouched by unmap");
    // The next datagram of the same client socket follows the new mapping
    // to c2; the stale entries went on its way in.
    t.ctl_ok(&["map", "9000:c2:53/udp"]).unwrap();
    let new_id = t.ctl_json::<Vec<Mapping>>(&["maps"]).unwrap()[0].id;
    assert_ne!(new_id, old_id);
    let server2 = echo(t.in_ns(&t.container_ns(2), || Ok(UdpSocket::bind(("0.0.0.0", 53))?)).unwrap(), 1);
    assert!(ask(&client, published).is_some(), "c2 answers the same client socket");
    server2.join().unwrap();
    assert_eq!(ct.get(&orig, 0).unwrap().mapping_id, new_id, "the tuple is the new mapping's flow now");
    assert!(ct.get(&reply, 0).is_err(), "the stale reply half (to c1) is gone");

    // A masqueraded flow of c2 to the world, then c2 goes.
    let world = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 7000))?)).unwrap();
    world.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let c2_sock = t.in_ns(&t.container_ns(2), || Ok(UdpSocket::bind(("0.0.0.0", 5555))?)).unwrap();
    c2_sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    c2_sock.send_to(b"out", (WORLD_IP, 7000)).unwrap();
    let mut buf = [0u8; 64];
    let (_, masq) = world.recv_from(&mut buf).unwrap();
    assert_eq!(masq.ip(), HOST_UPLINK_IP, "masqueraded");
    world.send_to(b"back", masq).unwrap();
    assert!(c2_sock.recv_from(&mut buf).is_ok(), "the reply reaches c2");
    let listed = flows(&t);
    let out = listed
        .iter()
        .find(|f| f.scope == "nat" && f.original.src == c2.ip4() && f.original.dport == 7000)
        .expect("the masqueraded flow");
    let (m_orig, m_reply) = (key_of(&out.original, CtScope::Nat), key_of(&out.reply, CtScope::Nat));
    assert_eq!(ct.get(&m_orig, 0).unwrap().container_id, c2.id, "masqueraded flows carry their container");
    // And c2's verdict: the flow's two entries are all it has.
    for k in [m_orig, m_reply] {
        assert!(ct.get(&k, 0).unwrap().verdict_of(c2.id), "the masqueraded flow's entries carry c2's verdict");
    }
    let verdict = key_of(&out.original, CtScope::PolicyOut);
    assert!(ct.get(&verdict, 0).is_err(), "no verdict pair of its own beside the translation");

    t.ctl_ok(&["container", "del", "c2"]).unwrap();
    let listed = flows(&t);
    assert!(
        listed.iter().all(|f| f.original.src != c2.ip4() && f.container.as_deref() != Some("c2")),
        "c2's flows are not listed: {listed:?}"
    );
    assert!(
        [m_orig, m_reply].iter().all(|k| ct.get(k, 0).is_ok()),
        "container del did not walk conntrack: c2's entries are still there, stale"
    );
    assert!(unrelated_untouched(&ct), "unrelated flows untouched by container del");
    // Its address goes to a new container, listening on the same port: the
    // old flow's reply must not reach it (dropped as a reply of no flow),
    // and the stale entries go on the way.
    let reborn: netpath_userspace::model::Container =
        t.ctl_json(&["container", "add", "c2b", "--netns", &t.container_ns(3), "--ip", &c2.ip4().to_string()]).unwrap();
    assert_eq!(reborn.ip, c2.ip);
    let heir = t.in_ns(&t.container_ns(3), || Ok(UdpSocket::bind(("0.0.0.0", 5555))?)).unwrap();
    heir.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    world.send_to(b"late reply", masq).unwrap();
    assert!(heir.recv_from(&mut buf).is_err(), "the new owner of the address inherits no flow");
    assert!(ct.get(&m_reply, 0).is_err() && ct.get(&m_orig, 0).is_err(), "the stale pair went with that packet");
    let st: Status = t.ctl_json(&["status"]).unwrap();
    let ct4 = st.maps.iter().find(|m| m.name == "CT4").unwrap();
    assert!(ct4.counted_ms_ago.is_some(), "status reports the GC's count, it does not walk CT4: {ct4:?}");
    let ids = st.maps.iter().find(|m| m.name == "CONTAINER_IDS").unwrap();
    assert_eq!((ids.entries, ids.counted_ms_ago), (2, None), "c1 and c2b, as the agent wrote them");
    drop(client);
}

#[test]
fn a_rule_change_cuts_denied_flows_in_the_datapath_without_walking_conntrack() {
    assert!(netpath_tests::is_root(), "run as root");
    let mut t = Topology::new(3).unwrap();
    let cfg = t.run_dir().join("netpathd.toml");
    std::fs::write(&cfg, "[conntrack]\ngc_interval = 3600\n").unwrap();
    t.agent_args(&["--config", &cfg.display().to_string()]);
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let c3 = t.add_container(3).unwrap();
    let data = MapData::from_pin(t.pin_dir().join("maps").join("CT4")).unwrap();
    let mut ct: Ct = BpfHashMap::try_from(Map::LruHashMap(data)).unwrap();
    fill_unrelated(&mut ct);

    // Connections to c1 from c2 (to be denied) and from c3 (to stay).
    let listener = t.in_ns(&t.container_ns(1), || Ok(TcpListener::bind(("0.0.0.0", 7000))?)).unwrap();
    let connect = |i: usize| {
        t.in_ns(&t.container_ns(i), || {
            Ok(TcpStream::connect_timeout(&SocketAddr::from((c1.ip4(), 7000)), Duration::from_secs(2))?)
        })
        .unwrap()
    };
    let (mut from_c2, mut from_c3) = (connect(2), connect(3));
    let mut accepted = vec![];
    for _ in 0..2 {
        let (s, peer) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        accepted.push((s, peer));
    }
    let mut server_of = |ip| {
        let i = accepted.iter().position(|(_, peer)| peer.ip() == ip).unwrap();
        accepted.remove(i).0
    };
    let (mut to_c2, mut to_c3) = (server_of(c2.ip4()), server_of(c3.ip4()));
    let mut b = [0u8; 1];
    for (client, server) in [(&mut from_c2, &mut to_c2), (&mut from_c3, &mut to_c3)] {
        client.write_all(b"a").unwrap();
        server.read_exact(&mut b).unwrap();
    }
    // c1's verdict of the flow from c2, as its veth's egress keeps it.
    let c2_port = from_c2.local_addr().unwrap().port();
    let verdict = CtKey4::new(c2.ip4().octets(), c1.ip4().octets(), c2_port.to_be(), 7000u16.to_be(), IPPROTO_TCP)
        .in_scope(CtScope::PolicyIn);
    let before = ct.get(&verdict, 0).unwrap();
    assert_eq!(before.container_id, c1.id);

    t.ctl_ok(&["policy", "add", "c1", "deny", "in", &c2.ip4().to_string()]).unwrap();
    assert!(
        ct.get(&verdict, 0).is_ok_and(|e| e.policy_epoch == before.policy_epoch),
        "the change did not walk conntrack: the verdict is still there, under the old epoch"
    );
    assert!(unrelated_untouched(&ct), "unrelated flows untouched by the rule change");
    // The next packet of each flow is judged again: c2's is cut (its verdict
    // pair gone), c3's goes on under the new epoch.
    from_c2.write_all(b"b").unwrap();
    assert!(to_c2.read_exact(&mut b).is_err(), "data after the deny must not arrive");
    assert!(ct.get(&verdict, 0).is_err(), "the denied flow's verdict went on its next packet");
    assert!(ct.get(&verdict.reversed().in_scope(CtScope::PolicyOut), 0).is_err(), "both halves");
    from_c3.write_all(b"c").unwrap();
    to_c3.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"c", "the flow the rules still allow goes on");
    to_c3.write_all(b"d").unwrap();
    from_c3.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    from_c3.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"d", "both ways");
}
