//! End-to-end tests: a sandbox host with netpathd and containers in network
//! namespaces, real TCP/UDP/ICMP traffic.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    time::Duration,
};

use anyhow::{Context as _, Result};
use netpath_common::stats::IFACE_SLOT_FIRST_CONTAINER;
use netpath_tests::topology::{cmd, Topology, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::model::{Container, ContainerStatus, Status};

fn topology(containers: usize) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    t.start_agent().expect("start netpathd");
    t
}

fn status(t: &Topology) -> Status {
    t.ctl_json(&["status"]).unwrap()
}

fn container_status(t: &Topology, name: &str) -> ContainerStatus {
    t.ctl_json(&["container", "show", name]).unwrap()
}

/// A TCP echo exchange from namespace `client_ns` to `server_ns` at `ip:port`.
fn tcp_exchange(t: &Topology, server_ns: &str, client_ns: &str, ip: Ipv4Addr, port: u16) -> Result<Vec<u8>> {
    let listener = t.in_ns(server_ns, || Ok(TcpListener::bind(("0.0.0.0", port))?))?;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(&buf[..n])?;
        Ok(())
    });
    let stream =
        t.in_ns(client_ns, || Ok(TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(3))?))?;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"hello netpath")?;
    let mut buf = vec![0u8; 64];
    let n = stream.read(&mut buf)?;
    buf.truncate(n);
    server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(buf)
}

fn udp_exchange(t: &Topology, server_ns: &str, client_ns: &str, ip: Ipv4Addr, port: u16) -> Result<Vec<u8>> {
    let server = t.in_ns(server_ns, || Ok(UdpSocket::bind(("0.0.0.0", port))?))?;
    server.set_read_timeout(Some(Duration::from_secs(3)))?;
    let client = t.in_ns(client_ns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?))?;
    client.set_read_timeout(Some(Duration::from_secs(3)))?;
    client.send_to(b"dgram", (ip, port))?;
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).context("server receive")?;
    server.send_to(&buf[..n], from)?;
    let (n, _) = client.recv_from(&mut buf).context("client receive")?;
    Ok(buf[..n].to_vec())
}

#[test]
fn containers_talk_tcp_udp_icmp_through_netpath() {
    let t = topology(2);
    let c1 = t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    assert_ne!(c1.ip, c2.ip);

    assert!(t.ping(&ns1, &c2.ip4().to_string(), 3).unwrap(), "c1 pings c2");
    let gateway = status(&t).gateway.unwrap();
    assert!(t.ping(&ns2, &gateway.to_string(), 2).unwrap(), "c2 pings the gateway");
    assert_eq!(tcp_exchange(&t, &ns2, &ns1, c2.ip4(), 8080).unwrap(), b"hello netpath");
    assert_eq!(udp_exchange(&t, &ns1, &ns2, c1.ip4(), 5353).unwrap(), b"dgram");
    // The container reaches the host's own address through the gateway.
    assert!(t.ping(&ns1, &HOST_UPLINK_IP.to_string(), 1).unwrap(), "c1 pings the host's uplink address");

    // The counters saw it, both ways, from the container's point of view.
    for name in ["c1", "c2"] {
        let s = container_status(&t, name).stats;
        assert!(s.tx_packets >= 5 && s.rx_packets >= 5, "{name}: {s:?}");
        assert!(s.drops.is_empty(), "{name} dropped nothing: {s:?}");
    }
    // Container addresses and routes as promised.
    let addr = t.exec(&ns1, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&c1.ip4().to_string()));
    let route = t.exec(&ns1, &["ip", "route", "show", "default"]).unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains(&format!("via {gateway}")));
    t.assert_no_netfilter_rules().unwrap();
}

/// Sends one UDP datagram from `client_ns` (bound to `src`, or any) and
/// reports whether the server in `server_ns` received it.
fn udp_delivered(
    t: &Topology,
    server_ns: &str,
    client_ns: &str,
    src: Option<Ipv4Addr>,
    dst: Ipv4Addr,
    port: u16,
) -> bool {
    let server = t.in_ns(server_ns, || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
    server.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let client = t.in_ns(client_ns, || Ok(UdpSocket::bind((src.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?)).unwrap();
    // A datagram every 100 ms for 1.5 s: the first ones may wait on ARP
    // (which queues only a few packets) on a loaded machine.
    let mut buf = [0u8; 16];
    (0..15).any(|_| {
        let _ = client.send_to(b"spoof?", (dst, port));
        server.recv_from(&mut buf).is_ok()
    })
}

#[test]
fn spoofed_traffic_is_dropped_and_counted() {
    let t = topology(2);
    let _c1 = t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    assert!(udp_delivered(&t, &ns2, &ns1, None, c2.ip4(), 7001), "genuine traffic passes");

    // Source IP spoofing: an address the agent did not assign.
    let subnet: ipnet::Ipv4Net = t.subnet.parse().unwrap();
    let fake = Ipv4Addr::from(u32::from(subnet.network()) + 200);
    t.exec(&ns1, &["ip", "addr", "add", &format!("{fake}/32"), "dev", "eth0"]).unwrap();
    assert!(!udp_delivered(&t, &ns2, &ns1, Some(fake), c2.ip4(), 7002), "a spoofed source IP must not reach c2");
    let spoofed_ping = t
        .try_exec(
            &ns1,
            &["ping", "-q", "-c", "3", "-i", "0.05", "-W", "1", "-I", &fake.to_string(), &c2.ip4().to_string()],
        )
        .unwrap();
    assert!(!spoofed_ping, "pings from a spoofed source must not be answered");
    let s1 = container_status(&t, "c1").stats;
    assert!(s1.drops.get("spoofed-ip").copied().unwrap_or(0) >= 6, "{s1:?}");
    t.exec(&ns1, &["ip", "addr", "del", &format!("{fake}/32"), "dev", "eth0"]).unwrap();
    assert!(udp_delivered(&t, &ns2, &ns1, None, c2.ip4(), 7003), "genuine traffic still passes");

    // MAC spoofing: the container changes its own MAC.
    t.exec(&ns1, &["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"]).unwrap();
    t.exec(&ns1, &["ip", "neigh", "flush", "all"]).unwrap();
    assert!(!udp_delivered(&t, &ns2, &ns1, None, c2.ip4(), 7004), "frames from a foreign MAC must not reach c2");
    let s1 = container_status(&t, "c1").stats;
    assert!(s1.drops.get("spoofed-mac").copied().unwrap_or(0) >= 1, "{s1:?}");
    t.assert_no_netfilter_rules().unwrap();
}

/// Are the counters in `slot` of the pinned `IFACE_STATS` all zero, on
/// every CPU?
fn counters_zero(t: &Topology, slot: u32) -> bool {
    let pin = t.pin_dir().join("maps").join("IFACE_STATS").display().to_string();
    let key: Vec<String> = slot.to_le_bytes().iter().map(|b| b.to_string()).collect();
    let mut args = vec!["-j", "map", "lookup", "pinned", pin.as_str(), "key"];
    args.extend(key.iter().map(String::as_str));
    let out = std::process::Command::new("bpftool").args(&args).output().unwrap();
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let values = v["values"].as_array().unwrap_or_else(|| panic!("no per-CPU values: {v}"));
    assert!(!values.is_empty(), "{v}");
    // Each CPU's value as bytes ("0x00" strings).
    values.iter().all(|cpu| {
        let bytes = cpu["value"].as_array().unwrap_or_else(|| panic!("value not as bytes: {cpu}"));
        bytes.iter().all(|b| b.as_str() == Some("0x00"))
    })
}

#[test]
fn container_del_leaves_nothing_behind() {
    let t = topology(1);
    let host_links_before = t.links(&t.host).unwrap();
    let c1 = t.add_container(1).unwrap();
    assert!(t.links(&t.host).unwrap().contains(&c1.veth));
    assert!(t.links(&t.container_ns(1)).unwrap().contains(&"eth0".to_string()));
    assert!(t.ping(&t.container_ns(1), &HOST_UPLINK_IP.to_string(), 1).unwrap());
    assert!(!counters_zero(&t, c1.stats_slot), "c1's pings were counted in its slot");

    t.ctl_ok(&["container", "del", "c1"]).unwrap();
    // Its counters are zeroed for the next container given the slot.
    assert!(counters_zero(&t, c1.stats_slot), "c1's counters outlive it");
    assert_eq!(t.links(&t.host).unwrap(), host_links_before, "host interfaces back to what they were");
    assert!(!t.links(&t.container_ns(1)).unwrap().contains(&"eth0".to_string()));
    let ls: Vec<Container> = t.ctl_json(&["container", "ls"]).unwrap();
    assert!(ls.is_empty());
    let st = t.status_counted().unwrap();
    for m in &st.maps {
        let expected = match m.name.as_str() {
            // The uplink's and the unattributed slot stay.
            "IFACE_STATS" => IFACE_SLOT_FIRST_CONTAINER as u64,
            "CONFIG" => 1,
            "FORWARD_STATS" | "CT_STATS" | "EVENT_BUDGET" => 1, // arrays: their one slot
            "HOST_ADDRS4" | "HOST_ADDRS6" => m.entries,         // the host's addresses, whatever the containers
            _ => 0,
        };
        assert_eq!(m.entries, expected, "map {} after del: {m:?}", m.name);
    }
    assert!(st.attach_points.iter().all(|a| a.interface != c1.veth));
    let pins: Vec<_> = std::fs::read_dir(t.pin_dir().join("links")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        pins.iter().all(|p| !p.to_string_lossy().contains(&c1.veth)),
        "no link pin of the container is left: {pins:?}"
    );
    assert_eq!(pins.len(), 2 + 8, "the uplink's two tcx links, 4 socket hooks per family: {pins:?}");
    // bpftool agrees: the CONTAINERS map is empty.
    let dump =
        cmd("bpftool", &["-j", "map", "dump", "pinned", &t.pin_dir().join("maps/CONTAINERS").display().to_string()])
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&dump.stdout).trim(), "[]");
    // The address is free again (handed out unasked only after the never
    // used ones), and the name can be reused.
    let again: Container =
        t.ctl_json(&["container", "add", "c1", "--netns", &t.container_ns(1), "--ip", &c1.ip4().to_string()]).unwrap();
    assert_eq!(again.ip, c1.ip);
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn agent_restart_keeps_traffic_and_does_not_double_attach() {
    let mut t = topology(2);
    let _c1 = t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let ns1 = t.container_ns(1);
    // Any of three echoes answered: this checks the path works before the
    // restart, it counts no loss (CI failed here once, its one echo
    // unanswered within the second; not reproduced in 140 tries under
    // load).
    assert!(t.ping(&ns1, &c2.ip4().to_string(), 3).unwrap());
    let ids_before = attached_ids(&t);

    t.stop_agent().unwrap();
    // The datapath keeps forwarding (and filtering) while the agent is away.
    assert!(t.ping(&ns1, &c2.ip4().to_string(), 3).unwrap(), "traffic flows with the agent stopped");
    assert_eq!(tcp_exchange(&t, &t.container_ns(2), &ns1, c2.ip4(), 9000).unwrap(), b"hello netpath");

    t.start_agent().unwrap();
    let st = status(&t);
    assert_eq!(st.containers.len(), 2, "containers adopted from state");
    assert_eq!(st.attach_points.len(), ids_before.len());
    for a in &st.attach_points {
        assert_eq!(a.attached_program_ids.len(), 1, "exactly one program on {} {}: {a:?}", a.interface, a.hook);
    }
    // The same build over the same maps adopts the programs it left
    // loaded (pinned under progs/): none is loaded, and so verified, again.
    assert_eq!(attached_ids(&t), ids_before, "the restarted agent loaded its programs again");
    // Exactly one count per packet: with a second attachment every ping
    // would count twice.
    let before = container_status(&t, "c1").stats.tx_packets;
    assert!(t.ping(&ns1, &c2.ip4().to_string(), 20).unwrap());
    let sent = container_status(&t, "c1").stats.tx_packets - before;
    assert!((20..=24).contains(&sent), "20 echo requests counted as {sent}");
    // Restarted agent still manages containers.
    t.ctl_ok(&["container", "del", "c2"]).unwrap();
    assert!(!t.ping(&ns1, &c2.ip4().to_string(), 1).unwrap());
    t.assert_no_netfilter_rules().unwrap();
}

/// The program ids attached at every attach point, sorted.
fn attached_ids(t: &Topology) -> Vec<Vec<u32>> {
    let mut ids: Vec<Vec<u32>> = status(t).attach_points.into_iter().map(|a| a.attached_program_ids).collect();
    ids.sort();
    ids
}

/// The programs' pins, one directory named by the digest of the object
/// and of the maps they were loaded against.
fn programs_dirs(t: &Topology) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(t.pin_dir().join("progs")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs
}

/// Programs are adopted only from the directory this build over these
/// maps would pin them in: pins under another digest (another build's
/// object, or other maps) are not what this agent would load. It loads and
/// pins its own then (the others removed), swaps them in, and traffic goes
/// on.
#[test]
fn programs_pinned_from_another_object_are_loaded_again_not_adopted() {
    let mut t = topology(2);
    let _c1 = t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let ns1 = t.container_ns(1);
    let own = programs_dirs(&t);
    assert_eq!(own.len(), 1, "{own:?}");
    assert!(own[0].join("veth_ingress").exists() && own[0].join("deliver4").exists());
    let ids_before = attached_ids(&t);
    t.stop_agent().unwrap();
    let other = own[0].with_file_name("0".repeat(64));
    std::fs::rename(&own[0], &other).unwrap();
    t.start_agent().unwrap();
    let st = status(&t);
    for a in &st.attach_points {
        assert_eq!(a.attached_program_ids.len(), 1, "exactly one program on {} {}: {a:?}", a.interface, a.hook);
        assert!(
            !ids_before.iter().flatten().any(|id| a.attached_program_ids.contains(id)),
            "{} {} kept a program of the other pins: {a:?}",
            a.interface,
            a.hook
        );
    }
    assert_eq!(programs_dirs(&t), own, "the reload pins its own programs, and only those");
    assert!(t.ping(&ns1, &c2.ip4().to_string(), 1).unwrap(), "traffic after the reload");
}

#[test]
fn agent_restart_cleans_up_containers_whose_netns_vanished() {
    let mut t = topology(2);
    let c1 = t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.stop_agent().unwrap();
    // The runtime deletes the container's netns while the agent is down:
    // the veth pair goes with it.
    cmd("ip", &["netns", "del", &t.container_ns(1)]).unwrap();
    t.start_agent().unwrap();
    let st = status(&t);
    let names: Vec<_> = st.containers.iter().map(|c| c.container.name.as_str()).collect();
    assert_eq!(names, vec!["c2"]);
    assert!(st.attach_points.iter().all(|a| a.interface != c1.veth));
    let containers = st.maps.iter().find(|m| m.name == "CONTAINERS").unwrap();
    assert_eq!(containers.entries, 1);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    assert!(netpath_tests::is_root(), "run as root");
    let mut t = Topology::new(3).unwrap();
    // A /29 leaves 5 container addresses: enough to exhaust it here.
    let subnet: ipnet::Ipv4Net = t.subnet.parse().unwrap();
    t.subnet = format!("{}/29", subnet.network());
    let subnet: ipnet::Ipv4Net = t.subnet.parse().unwrap();
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    // Fill levels: after each case the agent's own (exact); at the end also
    // the ones the GC counts (maps the datapath fills, like the counters).
    let snapshot_with = |t: &Topology, counted: bool| {
        let st = if counted { t.status_counted().unwrap() } else { status(t) };
        let maps: Vec<(String, u64)> = st
            .maps
            .iter()
            .filter(|m| counted || m.counted_ms_ago.is_none())
            .map(|m| (m.name.clone(), m.entries))
            .collect();
        (st.containers.len(), maps, t.links(&t.host).unwrap(), t.links(&t.container_ns(2)).unwrap())
    };
    let snapshot = |t: &Topology| snapshot_with(t, false);
    let before_counted = snapshot_with(&t, true);
    let before = snapshot(&t);
    let ns2 = t.container_ns(2);
    let (c1_ip, network, ns1) = (c1.ip4().to_string(), subnet.network().to_string(), t.container_ns(1));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["container", "add", "cx", "--netns", "no-such-netns-xyz"], "cannot be opened"),
        (vec!["container", "add", "c1", "--netns", &ns2], "already exists"),
        (vec!["container", "add", "cx", "--netns", &ns2, "--ip", &c1_ip], "already in use"),
        (vec!["container", "add", "cx", "--netns", &ns2, "--ip", "192.0.2.7"], "outside the container subnet"),
        (vec!["container", "add", "cx", "--netns", &ns2, "--ip", &network], "reserved"),
        (vec!["container", "add", "bad/name", "--netns", &ns2], "may only contain"),
        (vec!["container", "add", "cx", "--netns", "/proc/self/ns/uts"], "not a network namespace"),
        (vec!["container", "add", "cx", "--netns", &ns1], "already belongs to container"),
        (vec!["container", "add", "cx", "--netns", "/etc/hostname"], "not a namespace file"),
        (vec!["container", "del", "nope"], "no container named"),
    ];
    for (args, want) in &cases {
        let err = t.ctl_err(args).unwrap();
        assert!(err.contains(want), "netpathctl {args:?}: expected {want:?} in {err:?}");
        assert_eq!(snapshot(&t), before, "state changed after refused {args:?}");
    }
    // The host namespace itself is not a container.
    let host_ns = format!("/run/netns/{}", t.host);
    let err = t.ctl_err(&["container", "add", "cx", "--netns", &host_ns]).unwrap();
    assert!(err.contains("agent's own network namespace"), "{err}");
    // A netns that already has an eth0.
    t.exec(&ns2, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"]).unwrap();
    let err = t.ctl_err(&["container", "add", "cx", "--netns", &ns2]).unwrap();
    assert!(err.contains("already has an interface named eth0"), "{err}");
    t.exec(&ns2, &["ip", "link", "del", "eth0"]).unwrap();
    assert_eq!(snapshot(&t), before);
    assert_eq!(snapshot_with(&t, true), before_counted);

    // Exhaustion: 5 usable addresses, one taken by c1.
    let mut extra = vec![];
    for i in 0..4 {
        let ns = t.new_netns(&format!("x{i}")).unwrap();
        t.ctl_ok(&["container", "add", &format!("x{i}"), "--netns", &ns]).unwrap();
        extra.push(ns);
    }
    let err = t.ctl_err(&["container", "add", "c3", "--netns", &t.container_ns(3)]).unwrap();
    assert!(err.contains("exhausted"), "{err}");
    let ls: Vec<Container> = t.ctl_json(&["container", "ls"]).unwrap();
    assert_eq!(ls.len(), 5);
    assert!(!t.links(&t.container_ns(3)).unwrap().contains(&"eth0".to_string()));
}

#[test]
fn api_is_root_only_json_over_a_unix_socket() {
    let t = topology(1);
    let mode = std::fs::metadata(t.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sock = t.socket().display().to_string();
    let out = cmd("curl", &["-s", "--unix-socket", &sock, "http://localhost/v1/status"]).unwrap();
    let st: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st.instance, t.instance());
    // curl with the HTTP status on a last line of its own.
    let curl = |extra: &[&str], url: &str| -> String {
        let mut args = vec!["-s", "-w", "\n%{http_code}", "--unix-socket", &sock];
        args.extend(extra);
        args.push(url);
        String::from_utf8_lossy(&cmd("curl", &args).unwrap().stdout).into_owned()
    };
    let body = format!("{{\"name\":\"c1\",\"netns\":\"{}\"}}", t.container_ns(1));
    let text = curl(&["-X", "POST", "-d", &body], "http://localhost/v1/containers");
    assert!(text.ends_with("201"), "{text}");
    let text = curl(&["-X", "POST", "-d", "{\"nam\":1}"], "http://localhost/v1/containers");
    assert!(text.ends_with("400") && text.contains("invalid container request"), "{text}");
    assert!(curl(&[], "http://localhost/v2/status").ends_with("404"));
    assert!(curl(&["-X", "DELETE"], "http://localhost/v1/containers/c1").ends_with("200"));
}

#[test]
fn maps_are_pinned_and_readable_with_bpftool() {
    let t = topology(1);
    let c1 = t.add_container(1).unwrap();
    let st = status(&t);
    for m in &st.maps {
        let out = cmd("bpftool", &["-j", "map", "show", "pinned", &m.pin]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["name"], m.name.as_str());
        assert_eq!(v["id"], m.id);
    }
    // BTF: the dump shows field names and the container's address.
    let out =
        cmd("bpftool", &["-j", "map", "dump", "pinned", &t.pin_dir().join("maps/CONTAINERS").display().to_string()])
            .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // With -j, bpftool puts the BTF-decoded entry under "formatted".
    let entry = &v[0]["formatted"];
    let ep = &entry["value"];
    let ip: Vec<u8> = serde_json::from_value(ep["ipv4"].clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert_eq!(ip, c1.ip4().octets().to_vec());
    assert_eq!(entry["key"], c1.ifindex);
    assert_eq!(ep["ifindex"], c1.ifindex);
    // Human status lists every part.
    let text = t.ctl_ok(&["status"]).unwrap();
    for want in [
        "CONTAINERS",
        "IFACE_STATS",
        "CT4",
        "POLICY4",
        "EVENTS",
        "veth_ingress",
        "veth_egress",
        "uplink_ingress",
        "uplink_egress",
        "tcx-ingress",
        "c1",
    ] {
        assert!(text.contains(want), "status lacks {want}: {text}");
    }
}

#[test]
fn the_uplink_counts_traffic_from_the_world_with_and_without_xdp() {
    for (mode, xdp) in [("auto", false), ("on", true), ("off", false)] {
        assert!(netpath_tests::is_root());
        let mut t = Topology::new(0).unwrap();
        t.agent_args(&["--uplink-xdp", mode]);
        t.start_agent().unwrap();
        let st = status(&t);
        let has_xdp = st.attach_points.iter().any(|a| a.hook == "xdp" && a.program == "uplink_xdp");
        assert_eq!(has_xdp, xdp, "--uplink-xdp {mode} (the test uplink is a veth): {:?}", st.attach_points);
        let before = st.uplink_stats.unwrap();
        assert!(t.ping(&t.world, &HOST_UPLINK_IP.to_string(), 5).unwrap());
        let after = status(&t).uplink_stats.unwrap();
        assert!(after.rx_packets >= before.rx_packets + 5, "{mode}: uplink rx {before:?} -> {after:?}");
        // The replies leave through the uplink's egress program, which
        // counts what it passes like every other hook.
        assert!(after.tx_packets >= before.tx_packets + 5, "{mode}: uplink tx {before:?} -> {after:?}");
    }
    let _ = WORLD_IP;
}
