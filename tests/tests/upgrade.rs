//! Upgrade in place: an agent of an earlier netpath runs the host, with
//! connections held through a published port and through the masquerade
//! and new ones opened all along; this build's agent replaces it (stopped,
//! then started: what `systemctl restart netpathd` does once the binaries
//! are replaced), adopts its pins and its state, and loses nothing. Then
//! back again, as a rollback would, and up once more: this build then
//! adopts the programs it left pinned, and takes the tail-call slots back
//! from the rolled-back agent. Pins of another layout version are refused
//! by name either way (`agent_safety.rs`).

use std::time::Duration;

use anyhow::Context as _;
use netpath_tests::{chaos::Traffic, topology::Topology, upgrade::build_at};
use netpath_userspace::model::{Container, Mapping, PolicyView, Status};

/// The version replaced: the last commit of the previous round of work,
/// which is what runs on hosts today. Its pinned layout is this build's
/// (`LAYOUT_VERSION` 7); the agent, the state store (now group commit)
/// and the status path changed since.
const UPGRADE_FROM: &str = "02096008da7c20af01972c8297cc3e130f39f184";

const HELD: usize = 200;

fn agent_state(t: &Topology) -> (Vec<Container>, Vec<Mapping>, Vec<PolicyView>) {
    let policies = ["c1", "c2"].iter().map(|c| t.ctl_json(&["policy", "ls", c]).unwrap()).collect();
    (t.ctl_json(&["container", "ls"]).unwrap(), t.ctl_json(&["maps"]).unwrap(), policies)
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

#[test]
fn the_previous_agent_is_replaced_under_traffic_and_back_without_losing_a_flow() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let previous = build_at(UPGRADE_FROM).unwrap().join("netpathd");
    let mut t = Topology::new(2).expect("build topology");
    t.set_agent_binary(Some(previous.clone()));
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8081:c1:81"]).unwrap();
    t.ctl_ok(&["policy", "add", "c2", "deny", "in", "203.0.113.0/24"]).unwrap();

    let mut traffic = Traffic::start(&t, HELD, true, 240).unwrap();
    let before = agent_state(&t);

    // Up: this build's agent over the previous one's pins and state.
    t.stop_agent().unwrap();
    t.set_agent_binary(None);
    t.start_agent().unwrap();
    traffic.verify().context("across the upgrade").unwrap();
    assert_eq!(agent_state(&t), before, "the upgraded agent's state differs");
    // It takes changes.
    t.ctl_ok(&["map", "8082:c1:80"]).unwrap();
    let after_upgrade = agent_state(&t);
    let programs_after_upgrade = attached(&t);

    // Down again: the previous agent adopts what this one left.
    t.stop_agent().unwrap();
    t.set_agent_binary(Some(previous));
    t.start_agent().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (p, m) = traffic.probes().unwrap();
    traffic.verify().context("across the rollback").unwrap();
    assert_eq!(agent_state(&t), after_upgrade, "the rolled-back agent's state differs");
    assert!(p.attempts > 50 && m.attempts > 50, "{p:?} {m:?}");
    assert_eq!((p.failures, m.failures), (0, 0), "new connections failed across the upgrade: {p:?} {m:?}");
    assert!(p.longest_gap < Duration::from_secs(1) && m.longest_gap < Duration::from_secs(1), "{p:?} {m:?}");
    assert_ne!(attached(&t), programs_after_upgrade, "the rolled-back agent runs its own programs");

    // Up once more: this build's programs, pinned at the upgrade and still
    // loaded, are adopted (the maps are the same), and go back into the
    // tail-call slots the rolled-back agent had filled with its own.
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
