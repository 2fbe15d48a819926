//! The agent fails closed: it restricts only what it owns, refuses to share
//! an instance with another agent or to adopt pins of another layout, and
//! leaves no translation behind for a container that went or an address the
//! host no longer has.

use netpath_tests::Ipv4Of as _;
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use netpath_common::{CtEntry4, CtKey4};
use netpath_tests::topology::{bin_dir, cmd, Topology, HOST_UPLINK, HOST_UPLINK_IP, WORLD_IP};
use netpath_userspace::{
    config::instance_lock,
    model::{Container, Flow, Status},
};

fn topology(containers: usize) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    Topology::new(containers).expect("build topology")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn flows(t: &Topology) -> Vec<Flow> {
    t.ctl_json(&["conntrack"]).unwrap()
}

/// One datagram from the container to the world and the world's answer:
/// the source the world saw (None: nothing arrived within the server's
/// read timeout) and whether the answer came back.
fn udp_exchange(client: &UdpSocket, server: &UdpSocket, payload: &[u8]) -> (Option<SocketAddr>, bool) {
    client.send_to(payload, (WORLD_IP, 5353)).unwrap();
    let mut buf = [0u8; 64];
    let Ok((n, from)) = server.recv_from(&mut buf) else { return (None, false) };
    assert_eq!(&buf[..n], payload);
    server.send_to(b"re", from).unwrap();
    let back = client.recv_from(&mut buf).map(|(_, back)| back).ok();
    (Some(from), back == Some(SocketAddr::from((WORLD_IP, 5353))))
}

/// [`udp_exchange`] that must arrive and come back.
fn udp_round_trip(client: &UdpSocket, server: &UdpSocket, payload: &[u8]) -> SocketAddr {
    let (from, answered) = udp_exchange(client, server, payload);
    let from = from.expect("the world receives the datagram");
    assert!(answered, "the answer to {from} reaches the container");
    from
}

fn udp_pair(t: &Topology, ns: &str) -> (UdpSocket, UdpSocket) {
    let server = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 5353))?)).unwrap();
    server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let client = t.in_ns(ns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    (client, server)
}

#[test]
fn the_api_socket_restricts_only_a_directory_the_agent_creates() {
    let mut t = topology(0);
    // A directory someone else made (here: the test) keeps its mode.
    let shared = t.run_dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    t.set_socket(shared.join("api.sock"));
    t.start_agent().unwrap();
    assert_eq!(mode(&shared), 0o755, "the agent changed the mode of a directory it does not own");
    assert_eq!(mode(&t.socket()), 0o600, "the socket is root only");
    t.stop_agent().unwrap();
    // One it creates is root only.
    let own = t.run_dir().join("own");
    t.set_socket(own.join("api.sock"));
    t.start_agent().unwrap();
    assert_eq!(mode(&own), 0o700);
    assert_eq!(mode(&t.socket()), 0o600);
    assert_eq!(mode(&shared), 0o755);
}

#[test]
fn a_second_agent_for_the_same_instance_or_pins_is_refused() {
    let mut t = topology(1);
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    let ns1 = t.container_ns(1);
    assert!(t.ping(&ns1, &WORLD_IP.to_string(), 1).unwrap());
    let lock = instance_lock(t.instance());

    // Same instance, its own state directory and socket.
    let socket2 = t.run_dir().join("second.sock");
    let (status, text) = second_agent(&t, t.instance(), &[]);
    assert!(!status.success(), "{text}");
    assert!(text.contains(&format!("instance {}", t.instance())), "the error names the instance: {text}");
    assert!(text.contains(&lock.display().to_string()), "and the holder's lock: {text}");
    assert!(!socket2.exists());
    assert!(lock.exists(), "the running agent still holds {}", lock.display());
    // Another instance pointed at this one's pins.
    let pin_dir = t.pin_dir().display().to_string();
    let (status, text) = second_agent(&t, &format!("{}x", t.instance()), &["--pin-dir", &pin_dir]);
    assert!(!status.success(), "{text}");
    assert!(text.contains(&format!("pin directory {pin_dir}")), "the error names the pin directory: {text}");

    // The first agent's container is untouched: listed, programmed, passing.
    let ls: Vec<Container> = t.ctl_json(&["container", "ls"]).unwrap();
    assert_eq!(ls, vec![c1.clone()]);
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!(st.maps.iter().find(|m| m.name == "CONTAINERS").unwrap().entries, 1);
    assert!(st.attach_points.iter().any(|a| a.interface == c1.veth && a.attached_program_ids.len() == 1));
    assert!(t.ping(&ns1, &WORLD_IP.to_string(), 3).unwrap(), "the container still reaches the world");
    assert!(t.ping(&ns1, &st.gateway.unwrap().to_string(), 1).unwrap());

    // The lock goes with its holder.
    t.stop_agent().unwrap();
    assert!(!lock.exists(), "{} is left behind", lock.display());
    assert!(!t.run_dir().join("state").join("lock").exists());
}

/// Runs a second netpathd in the topology's host (instance `instance`, its
/// own state directory and socket, `extra` flags) until it exits; returns
/// its status and output. Stopped by PID if it keeps running.
fn second_agent(t: &Topology, instance: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let state2 = t.run_dir().join("state2");
    let socket2 = t.run_dir().join("second.sock");
    let mut second = Command::new(bin_dir().join("netpathd"))
        .args(["--netns", &t.host, "--instance", instance, "--uplink", HOST_UPLINK, "--subnet", &t.subnet])
        .arg("--state-dir")
        .arg(&state2)
        .arg("--socket")
        .arg(&socket2)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        // Stop it (by PID) before failing.
        let pid = nix::unistd::Pid::from_raw(second.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        std::thread::sleep(Duration::from_secs(2));
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let status = status.unwrap_or_else(|| panic!("a second agent ({instance}) kept running: {text}"));
    (status, text)
}

/// Creates a pinned map with bpftool.
fn bpftool_map(pin: &Path, kind: &str, key: usize, value: usize, entries: u32, name: &str) {
    let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
    let pin = pin.display().to_string();
    cmd(
        "bpftool",
        &["map", "create", &pin, "type", kind, "key", &key, "value", &value, "entries", &entries, "name", name],
    )
    .unwrap();
}

#[test]
fn pinned_maps_of_another_layout_are_refused() {
    let mut t = topology(0);
    let maps = t.pin_dir().join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let ct4 = maps.join("CT4");
    let (key, value) = (std::mem::size_of::<CtKey4>(), std::mem::size_of::<CtEntry4>());
    let entries = netpath_common::maps::MAX_CT_ENTRIES as u32;

    // Right sizes, wrong type.
    bpftool_map(&ct4, "hash", key, value, entries, "CT4");
    let err = format!("{:#}", t.start_agent().unwrap_err());
    assert!(err.contains("pinned map CT4"), "{err}");
    assert!(
        err.contains(&format!("is Hash, key {key} B, value {value} B, {entries} entries")),
        "what was found: {err}"
    );
    assert!(err.contains(&format!("expects LruHash, key {key} B, value {value} B, {entries} entries")), "{err}");

    // Right type and sizes, another capacity: named as the configuration
    // it is (conntrack.max_entries), since a pinned table cannot be resized.
    std::fs::remove_file(&ct4).unwrap();
    bpftool_map(&ct4, "lru_hash", key, value, 1024, "CT4");
    let err = format!("{:#}", t.start_agent().unwrap_err());
    assert!(
        err.contains(&format!("conntrack.max_entries is {entries}, but the pinned conntrack table"))
            && err.contains("holds 1024"),
        "{err}"
    );
    // Another map of another capacity: the generic refusal.
    std::fs::remove_file(&ct4).unwrap();
    let frags = maps.join("FRAGS4");
    let (fkey, fvalue) =
        (std::mem::size_of::<netpath_common::FragKey4>(), std::mem::size_of::<netpath_common::FragEntry4>());
    bpftool_map(&frags, "lru_hash", fkey, fvalue, 1024, "FRAGS4");
    let err = format!("{:#}", t.start_agent().unwrap_err());
    assert!(err.contains("pinned map FRAGS4") && err.contains("1024 entries"), "{err}");
    std::fs::remove_file(&frags).unwrap();
    bpftool_map(&ct4, "lru_hash", key, value, entries, "CT4");

    // Without the stray map the agent starts and stamps the layout.
    std::fs::remove_file(&ct4).unwrap();
    t.start_agent().unwrap();
    t.stop_agent().unwrap();
    let stamp = maps.join("LAYOUT");
    assert!(stamp.exists());

    // A stamp of another layout version.
    let pin = stamp.display().to_string();
    cmd("bpftool", &["map", "update", "pinned", &pin, "key", "0", "0", "0", "0", "value", "99", "0", "0", "0"])
        .unwrap();
    let err = format!("{:#}", t.start_agent().unwrap_err());
    assert!(err.contains("pinned map LAYOUT") && err.contains("layout version 99"), "{err}");
    let expected = netpath_userspace::datapath::LAYOUT_VERSION;
    assert!(err.contains(&format!("expects version {expected}")), "{err}");
    assert!(err.contains("left by a newer netpath (a downgrade across a layout change)"), "{err}");
    assert!(err.contains("Run a netpath of layout version 99 or later"), "{err}");
    // Named as the downgrade it is even where a newer layout reshaped a map
    // (the stamp is read before the maps' shapes).
    let containers = maps.join("CONTAINERS");
    let saved = t.pin_dir().join("saved_CONTAINERS");
    std::fs::rename(&containers, &saved).unwrap();
    bpftool_map(&containers, "hash", 4, std::mem::size_of::<netpath_common::ContainerEntry>() + 8, 65536, "CONTAINERS");
    let err = format!("{:#}", t.start_agent().unwrap_err());
    // (The error quotes the agent's whole log, the refusal above included.)
    assert!(!err.contains("pinned map CONTAINERS"), "named the reshaped map, not the downgrade: {err}");
    std::fs::remove_file(&containers).unwrap();
    std::fs::rename(&saved, &containers).unwrap();
    // An older stamp: an upgrade this build cannot migrate.
    cmd("bpftool", &["map", "update", "pinned", &pin, "key", "0", "0", "0", "0", "value", "1", "0", "0", "0"]).unwrap();
    let err = format!("{:#}", t.start_agent().unwrap_err());
    assert!(err.contains("layout version 1") && err.contains("left by an older netpath"), "{err}");

    // Pins without a stamp: nothing says what they hold.
    std::fs::remove_file(&stamp).unwrap();
    let err = format!("{:#}", t.start_agent().unwrap_err());
    assert!(err.contains("has no layout stamp (LAYOUT)"), "{err}");
}

#[test]
fn container_del_forgets_its_flows_and_its_address_waits() {
    let mut t = topology(3);
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    let (client, server) = udp_pair(&t, &t.container_ns(1));
    let from = udp_round_trip(&client, &server, b"q1");
    assert_eq!(from.ip(), IpAddr::V4(HOST_UPLINK_IP));
    let names_c1 = |f: &Flow| {
        [f.original.src, f.original.dst, f.reply.src, f.reply.dst].contains(&std::net::IpAddr::V4(c1.ip4()))
            || f.container.as_deref() == Some("c1")
    };
    let before = flows(&t);
    assert!(
        before.iter().any(|f| f.scope == "nat" && f.original.src == c1.ip4() && f.reply.dst == HOST_UPLINK_IP),
        "the masqueraded flow is tracked: {before:?}"
    );

    t.ctl_ok(&["container", "del", "c1"]).unwrap();
    let after = flows(&t);
    assert!(!after.iter().any(names_c1), "flows of c1 left behind: {after:?}");

    // The next container does not get c1's address, also after a restart.
    let c2 = t.add_container(2).unwrap();
    assert_ne!(c2.ip, c1.ip);
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    let c3 = t.add_container(3).unwrap();
    assert!(
        c3.ip4() != c1.ip4() && c3.ip4() != c2.ip4(),
        "c3 got {} (c1 had {}, c2 has {})",
        c3.ip4(),
        c1.ip4(),
        c2.ip4()
    );
    // Explicitly asked for, the address is free.
    let ns = t.new_netns("again").unwrap();
    let again: Container =
        t.ctl_json(&["container", "add", "again", "--netns", &ns, "--ip", &c1.ip4().to_string()]).unwrap();
    assert_eq!(again.ip, c1.ip);
}

/// Moves the host's uplink address from `old` to `new` (inside the sandbox
/// host namespace only).
fn change_uplink_address(t: &Topology, old: Ipv4Addr, new: Ipv4Addr) {
    t.exec(&t.host, &["ip", "addr", "del", &format!("{old}/24"), "dev", HOST_UPLINK]).unwrap();
    t.exec(&t.host, &["ip", "addr", "add", &format!("{new}/24"), "dev", HOST_UPLINK]).unwrap();
}

/// `netpath_masquerade_address_changes_total` of IPv4 and IPv6, from the
/// agent's `/metrics`.
fn masquerade_address_changes(t: &Topology) -> (u64, u64) {
    let metrics = t.metrics().unwrap();
    let count = |family: &str| {
        let name = format!("netpath_masquerade_address_changes_total{{family=\"{family}\"}} ");
        let line = metrics.lines().find_map(|l| l.strip_prefix(name.as_str()));
        line.unwrap_or_else(|| panic!("no {name}in {metrics}")).trim().parse::<u64>().unwrap()
    };
    (count("ipv4"), count("ipv6"))
}

/// Tracked flows whose tuples name `addr`.
fn flows_naming(t: &Topology, addr: Ipv4Addr) -> Vec<Flow> {
    flows(t)
        .into_iter()
        .filter(|f| [f.original.src, f.original.dst, f.reply.src, f.reply.dst].contains(&std::net::IpAddr::V4(addr)))
        .collect()
}

#[test]
fn masquerade_follows_a_new_uplink_address() {
    let mut t = topology(1);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let (client, server) = udp_pair(&t, &t.container_ns(1));
    let from = udp_round_trip(&client, &server, b"before");
    assert_eq!(from.ip(), IpAddr::V4(HOST_UPLINK_IP));

    let new = Ipv4Addr::new(198, 18, 0, 3);
    let dropped_before = t.uplink_drops("nat-unavailable").unwrap();
    assert_eq!(masquerade_address_changes(&t), (0, 0), "nothing changed yet");
    change_uplink_address(&t, HOST_UPLINK_IP, new);
    // The same exchange goes on: within a few seconds its datagrams leave
    // from the new address. Until the agent has seen the change (a netlink
    // event, about a millisecond after it) one may still leave translated to
    // the old address, or, while the agent has seen the old address go but
    // not yet the new one come, be dropped and counted (`nat-unavailable`):
    // never sent with the container's own source or to no address.
    client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    server.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut seen, mut lost) = (vec![], 0);
    loop {
        let (from, answered) = udp_exchange(&client, &server, b"after");
        match from.map(|from| from.ip()) {
            Some(ip) if ip == IpAddr::V4(new) => {
                assert!(answered, "the answer to the new address reaches the container");
                break;
            }
            Some(ip) => {
                assert_eq!(ip, IpAddr::V4(HOST_UPLINK_IP), "the world saw neither the old nor the new address");
                seen.push(ip);
            }
            None => lost += 1,
        }
        assert!(Instant::now() < deadline, "the world still sees the old address: {seen:?}, {lost} lost");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(t.uplink_drops("nat-unavailable").unwrap() - dropped_before, lost, "every datagram lost is counted");
    let st: Status = t.ctl_json(&["status"]).unwrap();
    assert_eq!(st.masquerade, Some(new));
    // Counted: once (the agent saw the new address replace the old) or
    // twice (it saw the old one go first).
    let (ipv4, ipv6) = masquerade_address_changes(&t);
    assert!((1..=2).contains(&ipv4) && ipv6 == 0, "masquerade address changes counted: {ipv4} IPv4, {ipv6} IPv6");
    let left = flows_naming(&t, HOST_UPLINK_IP);
    assert!(left.is_empty(), "flows translated to the old address remain: {left:?}");

    // The address changes while no agent runs: the next one forgets the
    // flows of the old address as it starts.
    t.stop_agent().unwrap();
    let newer = Ipv4Addr::new(198, 18, 0, 4);
    change_uplink_address(&t, new, newer);
    t.start_agent().unwrap();
    let from = udp_round_trip(&client, &server, b"restarted");
    assert_eq!(from.ip(), IpAddr::V4(newer), "the world sees the address the uplink has now");
    let left = flows_naming(&t, new);
    assert!(left.is_empty(), "flows translated to the old address remain: {left:?}");
}

#[test]
fn a_restarted_agent_never_masquerades_to_nothing() {
    let mut t = topology(1);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let ns1 = t.container_ns(1);
    let server = t.in_ns(&t.world, || Ok(UdpSocket::bind(("0.0.0.0", 5353))?)).unwrap();
    server.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // A receive buffer for seconds of datagrams: the loss counted must be
    // the datapath's, not a receiver thread starved on a busy machine.
    let bytes: libc::c_int = 16 << 20;
    // SAFETY: a valid socket and an option value of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&server),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE");
    // New flows all the time (a fresh socket, so a fresh source port, for
    // each datagram) while the agent restarts; bounded in count and time.
    // Every one of them holds a masquerade port toward the same destination
    // for the UDP timeout: the count stays well below the range's 31744, or
    // the port search (32 tries) starts to fail (`nat-exhausted`) and the
    // test measures the range instead of the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        let ns = netpath_userspace::netns::Netns::open(&ns1).unwrap();
        std::thread::spawn(move || {
            ns.run(|| {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut sent = 0u32;
                while !stop.load(Ordering::SeqCst) && sent < 20_000 && Instant::now() < deadline {
                    let s = UdpSocket::bind(("0.0.0.0", 0))?;
                    s.send_to(&sent.to_be_bytes(), (WORLD_IP, 5353))?;
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(sent)
            })
        })
    };
    let receiver = std::thread::spawn(move || {
        let mut sources = std::collections::HashMap::<IpAddr, u32>::new();
        let mut buf = [0u8; 16];
        let mut quiet = 0;
        // Until the sender has stopped and nothing came for a while.
        while quiet < 5 {
            match server.recv_from(&mut buf) {
                Ok((_, from)) => {
                    *sources.entry(from.ip()).or_default() += 1;
                    quiet = 0;
                }
                Err(_) => quiet += 1,
            }
        }
        sources
    });
    std::thread::sleep(Duration::from_millis(300));
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().unwrap().unwrap();
    let sources = receiver.join().unwrap();
    let zero: Vec<Flow> = flows(&t).into_iter().filter(|f| f.scope == "nat" && f.reply.dst.is_unspecified()).collect();
    assert!(zero.is_empty(), "flows translated to 0.0.0.0 during the restart: {} of them", zero.len());
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec![&IpAddr::V4(HOST_UPLINK_IP)], "sources seen: {sources:?}");
    let received: u32 = sources.values().sum();
    let stats = t.ctl_ok(&["stats"]).unwrap();
    assert_eq!(received, sent, "datagrams lost during the restart; counters:\n{stats}");
}

#[test]
fn the_conntrack_table_is_sized_by_configuration() {
    let mut t = topology(0);
    let cfg = t.run_dir().join("netpathd.toml");
    let start_with = |t: &mut Topology, entries: u32| {
        std::fs::write(&cfg, format!("[conntrack]\nmax_entries = {entries}\n")).unwrap();
        t.agent_args(&["--config", &cfg.display().to_string()]);
        t.start_agent()
    };
    // Out of range: refused before anything is set up.
    let err = format!("{:#}", start_with(&mut t, 10).unwrap_err());
    assert!(err.contains("conntrack.max_entries 10 is outside 1024-16777216"), "{err}");
    start_with(&mut t, 4096).unwrap();
    let st: Status = t.ctl_json(&["status"]).unwrap();
    let ct = st.maps.iter().find(|m| m.name == "CT4").unwrap();
    assert_eq!(ct.max_entries, 4096);
    assert!(ct.memory_bytes > 0, "the table's kernel memory is shown");
    assert!(st.agent_memory_bytes > 0, "and the agent's own");
    assert!(t.ctl_ok(&["status"]).unwrap().contains("memory    agent"));
    t.stop_agent().unwrap();
    // The pinned table keeps its size: another one is named as the
    // configuration change it is.
    let err = format!("{:#}", start_with(&mut t, 8192).unwrap_err());
    assert!(
        err.contains("conntrack.max_entries is 8192, but the pinned conntrack table")
            && err.contains("holds 4096")
            && err.contains("cannot be resized"),
        "{err}"
    );
    start_with(&mut t, 4096).unwrap();
}

/// The conntrack GC runs on a thread of its own below the API's priority:
/// a round over a full table takes a third of a second of CPU, and an API
/// call waits for none of it (neither a lock nor a CPU).
#[test]
fn the_conntrack_gc_runs_below_the_apis_cpu_priority() {
    let mut t = topology(0);
    t.start_agent().unwrap();
    let pid = t.agent_pid().unwrap();
    // (thread name, nice) of every thread of the agent.
    let threads: Vec<(String, i64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap().trim().to_string();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the command's closing parenthesis: state is the
            // 3rd field of the line, nice the 19th.
            let rest: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
            (comm, rest[16].parse().unwrap())
        })
        .collect();
    let gc: Vec<_> = threads.iter().filter(|(name, _)| name == "netpath-gc").collect();
    assert_eq!(gc.len(), 1, "one GC thread: {threads:?}");
    assert_eq!(gc[0].1, 10, "the GC thread's nice value: {threads:?}");
    assert!(threads.iter().filter(|(name, _)| name != "netpath-gc").all(|(_, nice)| *nice == 0), "{threads:?}");
    // ...and it runs: the first round (at start) is counted.
    let started = Instant::now();
    while t.ctl_json::<Status>(&["status"]).unwrap().conntrack.gc_runs == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no GC round within 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
