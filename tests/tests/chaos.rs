//! Crash safety under load: what the agent's failures must not lose.
//! `cargo xtask chaos` runs these and writes their figures to
//! `bench/chaos/RESULTS.md`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use netpath_tests::{
    chaos::{record, EchoServer, FlowsProcess, Traffic},
    topology::{Topology, HOST_UPLINK_IP, WORLD_IP, WORLD_IP6},
};
use netpath_userspace::model::{Container, Mapping, PolicyView};

fn topology(containers: usize) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    Topology::new(containers).expect("build topology")
}

/// What the agent holds: containers, mappings, policies.
fn agent_state(t: &Topology) -> (Vec<Container>, Vec<Mapping>, Vec<PolicyView>) {
    let policies = ["c1", "c2"].iter().map(|c| t.ctl_json(&["policy", "ls", c]).unwrap()).collect();
    (t.ctl_json(&["container", "ls"]).unwrap(), t.ctl_json(&["maps"]).unwrap(), policies)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

const HELD: usize = 1000;

#[test]
fn kill_9_under_load_loses_no_connection_and_new_ones_keep_working() {
    let mut t = topology(2);
    t.exec(&t.world, &["sysctl", "-qw", "net.core.somaxconn=4096"]).unwrap();
    t.exec(&t.container_ns(1), &["sysctl", "-qw", "net.core.somaxconn=4096"]).unwrap();
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8081:c1:81"]).unwrap();
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", "203.0.113.0/24"]).unwrap();

    // 1000 connections through the published port, 1000 masqueraded, and
    // new connections all along, both ways.
    let mut traffic = Traffic::start(&t, HELD, true, 180).unwrap();

    let before = agent_state(&t);
    t.kill_agent().unwrap();
    let killed = Instant::now();
    // The datapath runs on without its agent.
    std::thread::sleep(Duration::from_secs(1));
    t.start_agent().unwrap();
    let restart = killed.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (p, m) = traffic.probes().unwrap();
    traffic.verify().unwrap();
    assert_eq!(agent_state(&t), before, "the restarted agent's state differs");
    assert!(p.attempts > 50 && m.attempts > 50, "{p:?} {m:?}");
    assert_eq!((p.failures, m.failures), (0, 0), "new connections failed: {p:?} {m:?}");
    // A probe every 10 ms plus its round trip: no gap of a second.
    assert!(p.longest_gap < Duration::from_secs(1) && m.longest_gap < Duration::from_secs(1), "{p:?} {m:?}");
    record(
        "kill -9 under load",
        &[
            ("connections held through the published port", format!("{HELD}, 0 lost")),
            ("masqueraded connections held", format!("{HELD}, 0 lost")),
            ("agent down (kill to API answering again)", ms(restart)),
            (
                "new published connections: attempts / failed / longest gap",
                format!("{} / {} / {}", p.attempts, p.failures, ms(p.longest_gap)),
            ),
            (
                "new masqueraded connections: attempts / failed / longest gap",
                format!("{} / {} / {}", m.attempts, m.failures, ms(m.longest_gap)),
            ),
            ("state after restart", "equal (containers, mappings, policies)".into()),
        ],
    );
}

#[test]
fn every_acknowledged_change_survives_kill_9_at_random_points() {
    let mut t = topology(1);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let mut acknowledged: Vec<u16> = vec![];
    let mut next_port = 10000u16;
    let mut latencies = vec![];
    // Pseudo-random kill points, reproducible.
    let mut seed = 0x9e37_79b9u32;
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(vec![]));
        let (stopped, acks, socket) = (Arc::clone(&stop), Arc::clone(&acked), t.socket());
        let first = next_port;
        let burst = std::thread::spawn(move || {
            let mut port = first;
            let mut took = vec![];
            while !stopped.load(Ordering::Relaxed) && port < first + 2000 {
                let started = Instant::now();
                let out = std::process::Command::new(netpath_tests::topology::bin_dir().join("netpathctl"))
                    .args(["--socket", socket.to_str().unwrap(), "map", &format!("{port}:c1:80")])
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    took.push(started.elapsed());
                    acks.lock().unwrap().push(port);
                }
                port += 1;
            }
            took
        });
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        std::thread::sleep(Duration::from_millis(200 + u64::from(seed >> 16) % 800));
        t.kill_agent().unwrap();
        stop.store(true, Ordering::Relaxed);
        latencies.extend(burst.join().unwrap());
        acknowledged.extend(acked.lock().unwrap().iter());
        next_port += 2000;
        t.start_agent().unwrap();
        let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
        let have: std::collections::HashSet<u16> = maps.iter().map(|m| m.host_port).collect();
        let lost: Vec<u16> = acknowledged.iter().copied().filter(|p| !have.contains(p)).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged mappings lost after kill -9: {lost:?}");
    }
    assert!(acknowledged.len() >= 20, "too few changes to tell: {}", acknowledged.len());
    record(
        "acknowledged means durable",
        &[
            ("kill -9 rounds at random points of a burst of `map` calls", "5".into()),
            ("changes acknowledged, all present after each restart", acknowledged.len().to_string()),
        ],
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What a durable acknowledgement costs: every change is on disk
/// (fdatasync of the journal) before the API answers. The figures (release
/// builds under `cargo xtask chaos`) go to the results file; the target is
/// under 1 ms per port at 10000.
#[test]
fn publishing_at_10000_ports_acknowledges_each_change_on_disk() {
    use netpath_userspace::{client::Client, model::MappingRequest};
    let mut t = topology(1);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let specs: Vec<String> = (20000..30000).map(|p| format!("{p}:c1:80")).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = Client::new(&t.socket());
    rt.block_on(async {
        let _: Vec<Mapping> = client.post("/mappings", &MappingRequest { spec: None, specs }).await.unwrap();
        let mut took = vec![];
        for port in 40000..40300u16 {
            let started = Instant::now();
            let _: Vec<Mapping> =
                client.post("/mappings", &MappingRequest::one(format!("{port}:c1:80"))).await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        // The fsync alone, on the state directory's file system.
        let probe = t.state_dir().join("fsync-probe");
        let mut f = std::fs::File::create(&probe).unwrap();
        let mut syncs = vec![];
        for _ in 0..300 {
            use std::io::Write as _;
            f.write_all(b"{\"probe\":1}\n").unwrap();
            let started = Instant::now();
            f.sync_data().unwrap();
            syncs.push(started.elapsed());
        }
        std::fs::remove_file(&probe).unwrap();
        syncs.sort();
        let (p50, p99) = (percentile(&took, 0.5), percentile(&took, 0.99));
        record(
            "acknowledged means durable: cost",
            &[
                (
                    "fdatasync of the journal, p50 / p99",
                    format!("{} / {}", ms(percentile(&syncs, 0.5)), ms(percentile(&syncs, 0.99))),
                ),
                (
                    "`POST /v1/mappings` of one port at 10000 published, p50 / p99 (300 calls, each synced)",
                    format!("{} / {}", ms(p50), ms(p99)),
                ),
            ],
        );
        // Each answer came after its journal line: the last one is there.
        let journal = std::fs::read_to_string(t.state_dir().join("journal.jsonl")).unwrap_or_default();
        let state = std::fs::read_to_string(t.state_dir().join("state.json")).unwrap_or_default();
        assert!(journal.contains("40299") || state.contains("40299"), "the last acknowledged change is not on disk");
    });
}

/// The instance's pins: maps, links, and the programs (in their
/// directory, named by the object and the maps they were loaded against).
fn pins(t: &Topology) -> Vec<String> {
    let mut out = vec![];
    for sub in ["maps", "links"] {
        if let Ok(dir) = std::fs::read_dir(t.pin_dir().join(sub)) {
            out.extend(dir.flatten().map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())));
        }
    }
    for digest in std::fs::read_dir(t.pin_dir().join("progs")).into_iter().flatten().flatten() {
        let programs = std::fs::read_dir(digest.path()).into_iter().flatten().flatten();
        let digest = digest.file_name().to_string_lossy().into_owned();
        out.extend(programs.map(|p| format!("progs/{digest}/{}", p.file_name().to_string_lossy())));
    }
    out.sort();
    out
}

fn pinned_map_id(t: &Topology, map: &str) -> String {
    let path = t.pin_dir().join("maps").join(map);
    // Not through `ip netns exec`, which mounts a /sys without bpffs.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].to_string()
}

#[test]
fn a_wiped_pin_directory_is_put_back_within_seconds_without_an_outage() {
    const N: usize = 200;
    let mut t = topology(2);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8081:c1:81"]).unwrap();
    let mut traffic = Traffic::start(&t, N, false, 120).unwrap();
    let pins_before = pins(&t);
    let ct_before = pinned_map_id(&t, "CT4");

    std::fs::remove_dir_all(t.pin_dir()).unwrap();
    let wiped = Instant::now();
    let deadline = wiped + Duration::from_secs(10);
    while pins(&t) != pins_before {
        assert!(Instant::now() < deadline, "pins not restored: {:?} of {:?}", pins(&t), pins_before);
        std::thread::sleep(Duration::from_millis(20));
    }
    let restored_after = wiped.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (p, m) = traffic.probes().unwrap();
    assert_eq!((p.failures, m.failures), (0, 0), "traffic stopped while the pins were gone: {p:?} {m:?}");
    assert_eq!(pinned_map_id(&t, "CT4"), ct_before, "the conntrack table was replaced, not pinned again");
    assert!(t.metrics().unwrap().contains("\nnetpath_pins_restored_total 1\n"));
    // The pins are the live objects: an agent restarted on them keeps the
    // held connections (their conntrack entries) and the attachments, and
    // adopts the programs (the same maps: the same directory, nothing
    // loaded again).
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    traffic.verify().unwrap();
    assert_eq!(pins(&t), pins_before, "the restart on the restored pins changed them");
    record(
        "bpffs wiped under a running agent",
        &[
            ("pins put back after", ms(restored_after)),
            (
                "new published connections: attempts / failed / longest gap",
                format!("{} / {} / {}", p.attempts, p.failures, ms(p.longest_gap)),
            ),
            (
                "new masqueraded connections: attempts / failed / longest gap",
                format!("{} / {} / {}", m.attempts, m.failures, ms(m.longest_gap)),
            ),
            ("held connections after a restart on the restored pins", format!("{N}, 0 lost")),
        ],
    );
}

/// bpffs unmounted under the agent: tested in a mount namespace of the
/// agent's own, where the unmount leaves /sys/fs/bpf a plain directory (the
/// machine's bpffs and its other users are not touched).
#[test]
fn an_unmounted_bpffs_is_mounted_again_and_the_pins_put_back_without_an_outage() {
    const N: usize = 100;
    let mut t = topology(2);
    t.set_agent_own_mounts(true);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8081:c1:81"]).unwrap();
    let mut traffic = Traffic::start(&t, N, false, 120).unwrap();

    let pid = t.agent_pid().unwrap().to_string();
    let in_agent_mounts = |script: &str| {
        std::process::Command::new("nsenter").args(["-t", &pid, "-m", "--", "sh", "-c", script]).output().unwrap()
    };
    let config_pin = t.pin_dir().join("maps").join("CONFIG");
    let pinned = format!("[ \"$(stat -f -c %T /sys/fs/bpf)\" = bpf_fs ] && [ -e {} ]", config_pin.display());
    assert!(in_agent_mounts(&pinned).status.success(), "the agent's pins are not where expected");
    let out = in_agent_mounts("umount /sys/fs/bpf && [ \"$(stat -f -c %T /sys/fs/bpf)\" != bpf_fs ]");
    assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
    let restored_after = wait_for("bpffs mounted again with the pins", || in_agent_mounts(&pinned).status.success());
    std::thread::sleep(Duration::from_millis(500));
    let (p, m) = traffic.probes().unwrap();
    assert_eq!((p.failures, m.failures), (0, 0), "traffic stopped while bpffs was unmounted: {p:?} {m:?}");
    traffic.verify().unwrap();
    assert!(t.metrics().unwrap().contains("\nnetpath_pins_restored_total 1\n"));
    // Every pin is back, links included: the agent's own view of them.
    let links = in_agent_mounts(&format!("ls {}", t.pin_dir().join("links").display()));
    assert!(String::from_utf8_lossy(&links.stdout).lines().count() >= 4, "{links:?}");
    record(
        "bpffs unmounted under a running agent",
        &[
            ("bpffs mounted again and the pins put back after", ms(restored_after)),
            (
                "new published connections: attempts / failed / longest gap",
                format!("{} / {} / {}", p.attempts, p.failures, ms(p.longest_gap)),
            ),
            (
                "new masqueraded connections: attempts / failed / longest gap",
                format!("{} / {} / {}", m.attempts, m.failures, ms(m.longest_gap)),
            ),
            ("held connections", format!("{N}, 0 lost")),
        ],
    );
}

/// POLICY4 at capacity, filled behind the agent's back so that the
/// kernel, not the agent's count, refuses: a bulk add that fits in part is
/// refused whole (nothing of it stays in the trie), a single rule is
/// refused by name, and the agent takes rules again once there is room.
#[test]
fn a_full_policy_trie_refuses_rules_whole_and_leaves_nothing_half_written() {
    use aya::maps::{
        lpm_trie::{Key, LpmTrie},
        MapData,
    };
    use netpath_common::{PolicyEntry, PolicyKey4};
    use netpath_userspace::policy::{lpm_key4, Direction};
    let mut t = topology(2);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", "203.0.113.0/24"]).unwrap();
    let before = agent_state(&t);

    let policy_memory = |t: &Topology| -> u64 {
        let text = t.metrics().unwrap();
        let line = text.lines().find(|l| l.starts_with("netpath_map_memory_bytes{map=\"POLICY4\"}"));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).expect("POLICY4's memory in /metrics")
    };
    let memory_before = policy_memory(&t);

    // Entries of a container id nobody has, until the kernel says full.
    let data = MapData::from_pin(t.pin_dir().join("maps").join("POLICY4")).unwrap();
    let mut trie: LpmTrie<MapData, PolicyKey4, PolicyEntry> = LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).unwrap();
    let foreign = |i: u32| {
        let (len, key) = lpm_key4(0x00ff_fff0, Direction::In, &ipnet::Ipv4Net::new(i.into(), 32).unwrap());
        Key::new(len, key)
    };
    let mut filled = 0u32;
    while trie.insert(&foreign(filled), PolicyEntry::default(), 0).is_ok() {
        filled += 1;
        assert!(filled <= 1 << 20, "POLICY4 never filled");
    }
    let free_one = |trie: &mut LpmTrie<MapData, PolicyKey4, PolicyEntry>, filled: &mut u32| {
        *filled -= 1;
        trie.remove(&foreign(*filled)).unwrap();
    };
    free_one(&mut trie, &mut filled);
    // A trie is allocated as it fills: the figure shown follows it.
    let memory_full = policy_memory(&t);
    assert!(memory_full > memory_before + u64::from(filled) * 16, "{memory_before} -> {memory_full}");

    // Three new prefixes over two containers, room for one.
    let file = t.run_dir().join("rules");
    std::fs::write(&file, "c1 allow in 198.51.100.0/24\nc2 allow out 192.0.2.0/24 tcp/443\nc2 deny in 198.18.0.0/15\n")
        .unwrap();
    let out = t.ctl(&["policy", "add", "-f", file.to_str().unwrap()]).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("the policy table is full") && said.contains("nothing changed"),
        "{said}"
    );
    assert_eq!(agent_state(&t), before, "the agent's state changed");
    // The one free slot is still free: nothing of the refused rules stayed.
    trie.insert(&foreign(filled), PolicyEntry::default(), 0).expect("the refused rules left an entry behind");
    filled += 1;
    assert!(trie.insert(&foreign(filled), PolicyEntry::default(), 0).is_err());

    // One rule, no room at all.
    let err = t.ctl_err(&["policy", "add", "c2", "allow", "in", "198.51.100.7/32"]).unwrap();
    assert!(err.contains("the policy table is full"), "{err}");
    assert_eq!(agent_state(&t), before, "the agent's state changed");

    // Room again: the same rules go in.
    for i in 0..filled {
        trie.remove(&foreign(i)).unwrap();
    }
    t.ctl_ok(&["policy", "add", "-f", file.to_str().unwrap()]).unwrap();
    let policies: Vec<PolicyView> = ["c1", "c2"].iter().map(|c| t.ctl_json(&["policy", "ls", c]).unwrap()).collect();
    assert_eq!(policies.iter().map(|p| p.policy.rules.len()).sum::<usize>(), 4);
    record(
        "POLICY4 at capacity",
        &[
            ("prefixes the trie took before the kernel refused", filled.to_string()),
            (
                "its memory, nearly empty / full (`netpath_map_memory_bytes`)",
                format!("{memory_before} / {memory_full} B"),
            ),
        ],
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn interfaces_deleted_behind_the_agent_are_repaired_or_their_container_removed_and_counted() {
    let mut t = topology(2);
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:81"]).unwrap();
    t.ctl_ok(&["map", "9090:c2:81"]).unwrap();
    let _echo = EchoServer::start(&t, &t.container_ns(1), 81).unwrap();
    let reach = |t: &Topology| {
        t.in_ns(&t.world, || {
            Ok(std::net::TcpStream::connect_timeout(
                &SocketAddr::from((HOST_UPLINK_IP, 8080)),
                Duration::from_millis(500),
            )?)
        })
        .is_ok()
    };
    assert!(reach(&t));
    let c2_ip = c2.ip.unwrap().to_string();

    // The bridge: rebuilt, its ports back, published ports and container
    // to container traffic working again.
    t.exec(&t.host, &["ip", "link", "del", "np0"]).unwrap();
    let bridge_back = wait_for("the bridge rebuilt", || {
        t.links(&t.host).unwrap().iter().any(|l| l == "np0")
            && t.try_exec(&t.host, &["sh", "-c", &format!("ip -o link show {} | grep -q 'master np0'", c1.veth)])
                .unwrap()
            && t.try_exec(&t.host, &["sh", "-c", &format!("ip -o link show {} | grep -q 'master np0'", c2.veth)])
                .unwrap()
    });
    wait_for("the published port answering again", || reach(&t));
    assert!(t.ping(&t.container_ns(1), &c2_ip, 2).unwrap(), "c1 reaches c2 after the rebuild");

    // A container's veth: the container goes, with its ports.
    t.exec(&t.host, &["ip", "link", "del", &c2.veth]).unwrap();
    let veth_gone = wait_for("the container without a veth removed", || {
        t.ctl_json::<Vec<Container>>(&["container", "ls"]).unwrap().iter().all(|c| c.name != "c2")
    });
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.iter().map(|m| m.spec()).collect::<Vec<_>>(), ["8080:c1:81/tcp"]);
    assert!(reach(&t), "c1 unaffected");
    let m = t.metrics().unwrap();
    assert!(m.contains("netpath_interfaces_lost_total{kind=\"bridge\"} 1\n"), "{m}");
    assert!(m.contains("netpath_interfaces_lost_total{kind=\"veth\"} 1\n"), "{m}");
    let log = std::fs::read_to_string(t.agent_log()).unwrap();
    assert!(log.contains("a bridge of the instance was deleted") && log.contains("veth is gone"), "{log}");
    record(
        "interfaces deleted behind the agent",
        &[
            ("bridge deleted: rebuilt, every veth its port again, after", ms(bridge_back)),
            ("a container's veth deleted: the container and its ports removed, after", ms(veth_gone)),
        ],
    );
}

/// The agent hears of interface and address changes from netlink as they
/// happen: a veth deleted behind it, or the uplink's new address, is acted
/// on within a fraction of a second, every time (a periodic check every two
/// seconds gets three of these in time one time in 4^6).
#[test]
fn interface_and_address_changes_are_acted_on_as_they_happen() {
    const WITHIN: Duration = Duration::from_millis(500);
    let mut t = topology(3);
    t.start_agent().unwrap();
    let containers: Vec<Container> = (1..=3).map(|i| t.add_container(i).unwrap()).collect();
    let mut took = vec![];
    for c in &containers {
        t.exec(&t.host, &["ip", "link", "del", &c.veth]).unwrap();
        let started = Instant::now();
        while t.ctl_json::<Vec<Container>>(&["container", "ls"]).unwrap().iter().any(|x| x.name == c.name) {
            assert!(started.elapsed() < WITHIN, "{}: still attached {WITHIN:?} after its veth went", c.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        took.push(started.elapsed());
    }
    let uplink = netpath_tests::topology::HOST_UPLINK;
    let mut old = HOST_UPLINK_IP;
    for last in [7u8, 8, 9] {
        let new = std::net::Ipv4Addr::new(198, 18, 0, last);
        t.exec(&t.host, &["ip", "addr", "del", &format!("{old}/24"), "dev", uplink]).unwrap();
        t.exec(&t.host, &["ip", "addr", "add", &format!("{new}/24"), "dev", uplink]).unwrap();
        let started = Instant::now();
        while t.ctl_json::<netpath_userspace::model::Status>(&["status"]).unwrap().masquerade != Some(new) {
            assert!(started.elapsed() < WITHIN, "masquerading to {old}, not {new}, {WITHIN:?} after the change");
            std::thread::sleep(Duration::from_millis(20));
        }
        took.push(started.elapsed());
        old = new;
    }
    let m = t.metrics().unwrap();
    assert!(m.contains("netpath_interfaces_lost_total{kind=\"veth\"} 3\n"), "{m}");
    record(
        "interface and address changes heard from netlink",
        &[("three veths deleted, then three uplink addresses: each acted on after", {
            took.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
        })],
    );
}

#[test]
fn a_corrupt_state_file_is_refused_by_name_and_rebuilt_from_the_kernel_by_recover() {
    let mut t = topology(3);
    t.add_ipv6_uplink().unwrap();
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    // A container that talked and left: its addresses wait at the back of
    // the released queue, which the pins do not hold.
    let gone = t.add_container(3).unwrap();
    assert!(t.ping(&t.container_ns(3), &WORLD_IP.to_string(), 1).unwrap());
    assert!(t.ping(&t.container_ns(3), &WORLD_IP6.to_string(), 1).unwrap());
    t.ctl_ok(&["container", "del", "c3"]).unwrap();
    let ns2 = format!("/run/netns/{}", t.container_ns(2));
    // With what a runtime gives (podman's names, through CNI): the
    // runtime's name survives the recovery too.
    let client = netpath_userspace::client::Client::new(&t.socket());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let web = netpath_userspace::model::ContainerRequest {
        runtime_name: Some("shop_web_1".into()),
        owner: Some("podman:shop:eth0".into()),
        ..serde_json::from_value(serde_json::json!({"name": "web", "netns": ns2})).unwrap()
    };
    let _: Container = rt.block_on(client.post("/containers", &web)).unwrap();
    t.ctl_ok(&["map", "7070:shop_web_1:70"]).unwrap();
    for spec in ["8080:c1:80", "[::]:8443:c1:443", "0.0.0.0:5353:web:53/udp", "9000-9002:web:9000-9002"] {
        t.ctl_ok(&["map", spec]).unwrap();
    }
    for rule in [
        ["c1", "deny", "in", "10.0.0.0/8", "tcp/22"],
        ["c1", "allow", "in", "10.1.0.0/16", "tcp/22"],
        ["web", "deny", "out", "2001:db8::/32", "udp/53-54"],
        ["web", "allow", "out", "198.18.0.0/24", "icmp"],
        // Kept as icmpv6, as --recover rebuilds it.
        ["web", "allow", "in", "2001:db8:18::/64", "icmp/128"],
    ] {
        let mut args = vec!["policy", "add"];
        args.extend(rule);
        t.ctl_ok(&args).unwrap();
    }
    t.ctl_ok(&["policy", "default", "web", "in", "deny"]).unwrap();
    let _server = FlowsProcess::serve(&t.container_ns(1), 80, 10, 120).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut held = FlowsProcess::connect(&t.world, HOST_UPLINK_IP, 8080, 10, 120).unwrap();
    assert_eq!(held.read_line().unwrap(), "established 10");
    let sorted = |(cs, mut ms, ps): (Vec<Container>, Vec<Mapping>, Vec<PolicyView>)| {
        ms.sort_by_key(|m| m.id);
        let ps: Vec<_> = ps
            .into_iter()
            .map(|mut p| {
                p.policy.rules.sort_by_key(|r| format!("{r:?}"));
                p
            })
            .collect();
        (cs, ms, ps)
    };
    let state_of = |t: &Topology| {
        let policies = ["c1", "web"].iter().map(|c| t.ctl_json(&["policy", "ls", c]).unwrap()).collect();
        sorted((t.ctl_json(&["container", "ls"]).unwrap(), t.ctl_json(&["maps"]).unwrap(), policies))
    };
    let before = state_of(&t);

    // A crash, and the state file cut in half.
    t.kill_agent().unwrap();
    let file = t.state_dir().join("state.json");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = t.start_agent().unwrap_err().to_string();
    assert!(err.contains(&format!("state file {} is corrupt or truncated", file.display())), "{err}");
    assert!(err.contains("netpathd --recover"), "{err}");

    let out = t.netpathd(&["--recover"]).unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("recovered 2 containers, 7 mappings, 5 policy rules"), "{said}");
    assert!(std::fs::read_dir(t.state_dir())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("state.json.corrupt-")));
    t.start_agent().unwrap();
    assert_eq!(state_of(&t), before, "the recovered state differs");
    assert_eq!(held.verify().unwrap(), "verified 10", "connections lost across the recovery");
    // Changes go on from the recovered ids.
    t.ctl_ok(&["map", "8081:c1:81"]).unwrap();
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.iter().map(|m| m.id).max(), Some(8));
    // The container that left before the crash: its addresses are not
    // handed out again first (they were, to the next container, before
    // --recover rebuilt the queue from the kernel's neighbours and flows).
    let next = t.add_container(3).unwrap();
    assert!(next.ip.is_some() && next.ip != gone.ip, "{:?} again, which {:?} had just left", next.ip, gone.name);
    assert!(next.ip6.is_some() && next.ip6 != gone.ip6, "{:?} again", next.ip6);
}

/// The API socket under many clients, slow ones and oversized bodies: the
/// others are served. The latency of `map` meanwhile goes to the results
/// file (target: p99 under 5 ms on release builds beside the paced crowd).
#[test]
fn the_api_serves_its_clients_beside_slow_ones_oversized_bodies_and_a_crowd() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SLOW: usize = 300;
    const CROWD: usize = 100;
    let mut t = topology(1);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let socket = t.socket();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (paced, flat_out, refused) = rt.block_on(async {
        // Clients that start a request and never finish it.
        let mut slow = vec![];
        for i in 0..SLOW {
            let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let head = if i % 2 == 0 {
                "POST /v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"spec\":".to_string()
            } else {
                "GET /v1/sta".to_string()
            };
            s.write_all(head.as_bytes()).await.unwrap();
            slow.push(s);
        }
        // Oversized bodies: refused with 413, the connection then closed.
        let mut refused = 0;
        for _ in 0..10 {
            let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let body = vec![b' '; 9 << 20];
            let head = format!("POST /v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = s.write_all(&body).await;
            let mut answer = vec![0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer)).await.unwrap().unwrap_or(0);
            if String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413") {
                refused += 1;
            }
        }
        // A crowd reading status and publishing, and one client timing
        // `map`: first paced (each client every 200 ms, 1000 requests a
        // second in all, more than a busy host's runtimes send), then
        // flat out (each client's next request as soon as its last is
        // answered: the timed call waits behind up to 100 others, so its
        // p99 is the agent's whole queue).
        let paced = crowd_beside_a_timed_map(&socket, CROWD, Some(Duration::from_millis(200)), 20000, 40000).await;
        let flat_out = crowd_beside_a_timed_map(&socket, CROWD, None, 30000, 50000).await;
        drop(slow);
        (paced, flat_out, refused)
    });
    assert_eq!(refused, 10, "oversized bodies are refused with 413");
    for (served, _) in [&paced, &flat_out] {
        assert_eq!(*served, CROWD * 10 * 2, "every request of the crowd was served");
    }
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.len(), 2 * (CROWD * 10 + 200));
    assert!(t.agent_alive());
    record(
        "API under load and abuse",
        &[
            ("slow clients holding a half-sent request", SLOW.to_string()),
            ("9 MB bodies refused with 413", format!("{refused} of 10")),
            ("concurrent clients (status + map, 10 rounds each), all served", CROWD.to_string()),
            ("`map` latency beside them paced (each every 200 ms), p50 / p99 / max (200 calls)", latencies(&paced.1)),
            ("`map` latency beside them flat out (each request on the last's answer)", latencies(&flat_out.1)),
        ],
    );
}

/// `clients` clients each reading status and publishing a port, 10 rounds,
/// every `pace` or back to back, beside one client timing 200 `map`s (one
/// every 10 ms when paced). Returns the crowd's served requests and the
/// timed calls' latencies, sorted.
async fn crowd_beside_a_timed_map(
    socket: &std::path::Path,
    clients: usize,
    pace: Option<Duration>,
    crowd_ports: u16,
    timed_ports: u16,
) -> (usize, Vec<Duration>) {
    use netpath_userspace::{client::Client, model::MappingRequest};
    let crowd: Vec<_> = (0..clients)
        .map(|i| {
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                let client = Client::new(&socket);
                // Spread over the period, as independent clients are.
                if let Some(pace) = pace {
                    tokio::time::sleep(pace * i as u32 / clients as u32).await;
                }
                let mut served = 0;
                for round in 0..10u16 {
                    let started = tokio::time::Instant::now();
                    let _: netpath_userspace::model::Status = client.get("/status").await.unwrap();
                    let spec = format!("{}:c1:80", crowd_ports + i as u16 * 10 + round);
                    let _: Vec<Mapping> = client.post("/mappings", &MappingRequest::one(spec)).await.unwrap();
                    served += 2;
                    if let Some(pace) = pace {
                        tokio::time::sleep_until(started + pace).await;
                    }
                }
                served
            })
        })
        .collect();
    let client = Client::new(socket);
    let mut took = vec![];
    for port in timed_ports..timed_ports + 200 {
        let started = Instant::now();
        let _: Vec<Mapping> = client.post("/mappings", &MappingRequest::one(format!("{port}:c1:80"))).await.unwrap();
        took.push(started.elapsed());
        if pace.is_some() {
            tokio::time::sleep(Duration::from_millis(10).saturating_sub(started.elapsed())).await;
        }
    }
    let mut served = 0;
    for c in crowd {
        served += c.await.unwrap();
    }
    took.sort();
    (served, took)
}

/// p50 / p99 / max of sorted latencies.
fn latencies(sorted: &[Duration]) -> String {
    format!("{} / {} / {}", ms(percentile(sorted, 0.5)), ms(percentile(sorted, 0.99)), ms(sorted[sorted.len() - 1]))
}
