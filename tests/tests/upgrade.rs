//! Upgrade in place: an agent of an earlier netpath runs the host, with
//! connections held through a published port and through the masquerade
//! and new ones opened all along; this build's agent replaces it (stopped,
//! then started: what `systemctl restart netpathd` does once the binaries
//! are replaced), migrates its pins from layout version 7 to 8 (the
//! interface counters by slot), adopts its state, and loses nothing, the
//! containers' and the uplink's counters included. Then a rollback is tried: the earlier
//! agent refuses the migrated pins by name and touches nothing, traffic
//! going on meanwhile; and up once more: this build adopts the programs it
//! left pinned. Pins of layouts without a migration are refused by name
//! (`agent_safety.rs`). And `netpathd prepare`: an upgrade's verification
//! done beside the running agent, so that the restart adopts.

use std::time::Duration;

use anyhow::Context as _;
use netpath_common::stats::IFACE_SLOT_FIRST_CONTAINER;
use netpath_tests::{chaos::Traffic, topology::Topology, upgrade::build_at};
use netpath_userspace::model::{Container, ContainerStatus, Mapping, PolicyView, StatsView, Status};

/// The version replaced: the last commit of the previous round of work,
/// which is what runs on hosts today. Its pinned layout is version 7, the
/// one this build migrates from; the agent, the state store (now group
/// commit) and the status path changed since.
const UPGRADE_FROM: &str = "02096008da7c20af01972c8297cc3e130f39f184";

const HELD: usize = 200;

/// The tests here one at a time: each measures gaps in traffic while agents
/// start, which another's build or verification beside it would stretch.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent's containers, mappings and rules; the containers' counter
/// slots apart (the earlier agent had none: see [`counter_slots`]).
fn agent_state(t: &Topology) -> (Vec<Container>, Vec<Mapping>, Vec<PolicyView>) {
    let policies = ["c1", "c2"].iter().map(|c| t.ctl_json(&["policy", "ls", c]).unwrap()).collect();
    let mut containers: Vec<Container> = t.ctl_json(&["container", "ls"]).unwrap();
    containers.iter_mut().for_each(|c| c.stats_slot = 0);
    (containers, t.ctl_json(&["maps"]).unwrap(), policies)
}

/// The containers' counter slots, sorted, each once.
fn counter_slots(t: &Topology) -> Vec<u32> {
    let containers: Vec<Container> = t.ctl_json(&["container", "ls"]).unwrap();
    let mut slots: Vec<u32> = containers.iter().map(|c| c.stats_slot).collect();
    slots.sort();
    slots.dedup();
    slots
}

/// What c1 received, as its counters say.
fn c1_received(t: &Topology) -> u64 {
    let c1: ContainerStatus = t.ctl_json(&["container", "show", "c1"]).unwrap();
    c1.stats.tx_packets
}

/// What the uplink received, as its counters say.
fn uplink_received(t: &Topology) -> u64 {
    let stats: StatsView = t.ctl_json(&["stats"]).unwrap();
    stats.uplink.expect("the uplink's counters").rx_packets
}

/// The program ids attached at every attach point, sorted.
fn attached(t: &Topology) -> Vec<Vec<u32>> {
    let status: Status = t.ctl_json(&["status"]).unwrap();
    let mut ids: Vec<Vec<u32>> = status.attach_points.into_iter().map(|a| a.attached_program_ids).collect();
    ids.sort();
    ids
}

/// `bpftool -j` on `args`, parsed.
fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("bpftool").arg("-j").args(args).output().unwrap();
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The ids of the programs in the pinned program array `map`, and of the
/// programs this build pinned under `progs/` (one directory).
fn tail_call_ids(t: &Topology, map: &str) -> (Vec<u64>, Vec<u64>) {
    let entries = bpftool(&["map", "dump", "pinned", &t.pin_dir().join("maps").join(map).display().to_string()]);
    let in_slots: Vec<u64> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
                .collect();
            u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64
        })
        .collect();
    let dirs: Vec<_> = std::fs::read_dir(t.pin_dir().join("progs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let ours = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| bpftool(&["prog", "show", "pinned", &e.unwrap().path().display().to_string()])["id"].as_u64().unwrap())
        .collect();
    (in_slots, ours)
}

/// A host run by the previous agent (its binary returned): two containers,
/// two ports published to c1, a rule on c2.
fn host_of_the_previous_agent() -> (Topology, std::path::PathBuf) {
    let previous = build_at(UPGRADE_FROM).unwrap().join("netpathd");
    let mut t = Topology::new(2).expect("build topology");
    t.set_agent_binary(Some(previous.clone()));
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8081:c1:81"]).unwrap();
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", "203.0.113.0/24"]).unwrap();
    (t, previous)
}

#[test]
fn the_previous_agent_is_replaced_under_traffic_and_back_without_losing_a_flow() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let _serial = one_at_a_time();
    let (mut t, previous) = host_of_the_previous_agent();

    let mut traffic = Traffic::start(&t, HELD, true, 240).unwrap();
    let before = agent_state(&t);

    // Preparing this build beforehand is refused: the start migrates the
    // maps, so its programs cannot be loaded against these.
    let out = t.netpathd(&["prepare"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("which this netpath migrates to 8 when it starts"), "{err}");

    // Up: this build's agent over the previous one's pins and state.
    let (received, uplink_before) = (c1_received(&t), uplink_received(&t));
    assert!(received > 0 && uplink_before > 0);
    t.stop_agent().unwrap();
    // As a first start of this build killed mid-migration would leave it:
    // one old map already moved aside.
    let aside = t.pin_dir().join("migrating");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::rename(t.pin_dir().join("maps").join("CONTAINERS"), aside.join("CONTAINERS")).unwrap();
    t.set_agent_binary(None);
    t.start_agent().unwrap();
    traffic.verify().context("across the upgrade").unwrap();
    assert_eq!(agent_state(&t), before, "the upgraded agent's state differs");
    // Migrated: every container has a counter slot of its own, and its
    // counters came along (they are not zero again), the uplink's too.
    let slots = counter_slots(&t);
    assert!(slots.len() == 2 && slots.iter().all(|s| *s >= IFACE_SLOT_FIRST_CONTAINER), "{slots:?}");
    assert!(c1_received(&t) >= received, "c1's counters restarted: {} < {received}", c1_received(&t));
    let uplink_after = uplink_received(&t);
    assert!(uplink_after >= uplink_before, "the uplink's counters restarted: {uplink_after} < {uplink_before}");
    assert!(!t.pin_dir().join("migrating").exists(), "the old maps are gone");
    let stamp = bpftool(&["map", "dump", "pinned", &t.pin_dir().join("maps").join("LAYOUT").display().to_string()]);
    assert_eq!(stamp[0]["value"][0], "0x08", "{stamp}");
    // It takes changes.
    t.ctl_ok(&["map", "8082:c1:80"]).unwrap();
    let after_upgrade = agent_state(&t);
    let programs_after_upgrade = attached(&t);

    // A rollback: the previous agent refuses the migrated pins by name,
    // before it touches anything; this build's programs go on
    // carrying the traffic meanwhile.
    t.stop_agent().unwrap();
    t.set_agent_binary(Some(previous));
    let err = format!("{:#}", t.start_agent().unwrap_err());
    // (It checks each map's shape before the stamp: the first reshaped map
    // is what it names.)
    assert!(err.contains("pinned map CONTAINERS") && err.contains("but this netpath expects"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    let (p, m) = traffic.probes().unwrap();
    traffic.verify().context("across the refused rollback").unwrap();
    assert!(p.attempts > 50 && m.attempts > 50, "{p:?} {m:?}");
    assert_eq!((p.failures, m.failures), (0, 0), "new connections failed across the upgrade: {p:?} {m:?}");
    assert!(p.longest_gap < Duration::from_secs(1) && m.longest_gap < Duration::from_secs(1), "{p:?} {m:?}");

    // Up once more: this build's programs, pinned at the upgrade and still
    // loaded, are adopted (the maps are the same), and the tail-call slots
    // hold them.
    t.stop_agent().unwrap();
    t.set_agent_binary(None);
    t.start_agent().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    traffic.verify().context("up again").unwrap();
    assert_eq!(attached(&t), programs_after_upgrade, "this build's pinned programs are adopted");
    for map in ["TAIL_CALLS", "DELIVER_CALLS"] {
        let (in_slots, ours) = tail_call_ids(&t, map);
        assert!(!in_slots.is_empty() && in_slots.iter().all(|id| ours.contains(id)), "{map}: {in_slots:?} {ours:?}");
    }
    assert_eq!(agent_state(&t), after_upgrade, "the state after going up again differs");
}

/// The pinned program directories under `progs/`, by name.
fn program_dirs(t: &Topology) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(t.pin_dir().join("progs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn prepare_verifies_the_next_build_beside_the_running_agent_and_the_restart_adopts_it() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let _serial = one_at_a_time();
    let mut t = Topology::new(2).expect("build topology");
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    let mut traffic = Traffic::start(&t, 50, true, 120).unwrap();
    // As if the running agent were of an earlier build: its programs are
    // pinned under another digest than this build's.
    let ours = program_dirs(&t).pop().unwrap();
    let progs = t.pin_dir().join("progs");
    std::fs::rename(progs.join(&ours), progs.join("earlier-build")).unwrap();
    let running = attached(&t);
    let tail_call_slots =
        || bpftool(&["map", "dump", "pinned", &t.pin_dir().join("maps/TAIL_CALLS").display().to_string()]);
    let tail_calls = tail_call_slots();

    let out = t.netpathd(&["prepare"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("prepared: programs loaded and verified in"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut both = vec![ours.clone(), "earlier-build".to_string()];
    both.sort();
    assert_eq!(program_dirs(&t), both);
    let count = |dir: &str| std::fs::read_dir(progs.join(dir)).unwrap().count();
    assert_eq!(count(&ours), count("earlier-build"), "every program pinned");
    // The running agent's programs, attached and in the tail-call slots,
    // are untouched, and its traffic goes on.
    assert_eq!(attached(&t), running);
    assert_eq!(tail_call_slots(), tail_calls);
    traffic.verify().context("beside prepare").unwrap();
    let again = t.netpathd(&["prepare"]).unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("already prepared"), "{again:?}");

    // The restart adopts the prepared programs: nothing verified, the
    // earlier build's pins removed.
    t.stop_agent().unwrap();
    let log_before = std::fs::read_to_string(t.agent_log()).unwrap().len();
    let started = std::time::Instant::now();
    t.start_agent().unwrap();
    let took = started.elapsed();
    let log = std::fs::read_to_string(t.agent_log()).unwrap()[log_before..].to_string();
    assert!(log.contains("adopted the programs") && !log.contains("loaded and verified"), "{log}");
    assert!(took < Duration::from_secs(5), "the restart took {took:?}");
    eprintln!("{}; the restart after it took {took:?}", said.trim());
    assert_eq!(program_dirs(&t), vec![ours]);
    let (in_slots, prepared) = tail_call_ids(&t, "TAIL_CALLS");
    assert!(in_slots.iter().all(|id| prepared.contains(id)), "{in_slots:?} {prepared:?}");
    assert_ne!(attached(&t), running, "the prepared programs are attached");
    std::thread::sleep(Duration::from_millis(300));
    traffic.verify().context("across the restart").unwrap();

    // Without an instance there is nothing to prepare against.
    t.stop_agent().unwrap();
    drop(traffic);
    assert!(t.netpathd(&["uninstall"]).unwrap().status.success());
    let out = t.netpathd(&["prepare"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no netpath instance is pinned under"), "{err}");
}

#[test]
fn recover_rebuilds_the_state_from_the_previous_layouts_pins() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let _serial = one_at_a_time();
    let (mut t, _) = host_of_the_previous_agent();
    let mut traffic = Traffic::start(&t, 20, true, 120).unwrap();
    let before = agent_state(&t);

    // The earlier agent crashes and its state file is cut in half; this
    // build is installed meanwhile. Its --recover reads the layout-7 pins,
    // wherever a migration left them.
    t.kill_agent().unwrap();
    let file = t.state_dir().join("state.json");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    // And as a start of this build killed mid-migration would leave them:
    // the old containers map moved aside.
    let aside = t.pin_dir().join("migrating");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::rename(t.pin_dir().join("maps").join("CONTAINERS"), aside.join("CONTAINERS")).unwrap();
    t.set_agent_binary(None);
    let out = t.netpathd(&["--recover"]).unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("recovered 2 containers, 2 mappings, 1 policy rules"), "{said}");
    // Its start migrates the pins and takes the recovered state.
    t.start_agent().unwrap();
    assert_eq!(agent_state(&t), before, "the recovered state differs");
    let slots = counter_slots(&t);
    assert!(slots.len() == 2 && slots.iter().all(|s| *s >= IFACE_SLOT_FIRST_CONTAINER), "{slots:?}");
    std::thread::sleep(Duration::from_millis(300));
    traffic.verify().context("across the crash, the recovery and the upgrade").unwrap();
}
