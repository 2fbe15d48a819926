//! The hook table (`netpath_common::HOOKS`) against reality: every program
//! in the object is declared and every declared program is in the object;
//! a running agent attaches and pins every declared hook, and its status
//! reports each one with the program the kernel runs there.

use std::collections::BTreeSet;

use netpath_common::{hooks::Target, DELIVER_CALLS, HOOKS, TAIL_CALLS};
use netpath_tests::{prog_run::PacketHarness, topology::Topology};
use netpath_userspace::model::Status;

#[test]
fn every_program_in_the_object_is_declared_and_every_hook_is_in_the_object() {
    assert!(netpath_tests::is_root(), "loads the BPF object: run as root (cargo xtask test)");
    let h = PacketHarness::new().expect("load the BPF object");
    let in_object: BTreeSet<String> = h.dp.program_names().into_iter().collect();
    let declared: BTreeSet<String> = HOOKS
        .iter()
        .map(|hook| hook.program.to_string())
        .chain(TAIL_CALLS.iter().chain(&DELIVER_CALLS).map(|tail| tail.program.to_string()))
        .collect();
    assert_eq!(in_object, declared, "programs in the object vs the hook and tail-call tables");
}

#[test]
fn every_declared_hook_is_attached_and_pinned() {
    assert!(netpath_tests::is_root(), "creates namespaces and loads BPF: run as root (cargo xtask test)");
    let mut t = Topology::new(1).expect("build topology");
    // XDP on, so that the uplink carries every one of its hooks.
    t.agent_args(&["--uplink-xdp", "on"]);
    t.start_agent().expect("start netpathd");
    let c = t.add_container(1).expect("add a container");
    let st: Status = t.ctl_json(&["status"]).unwrap();
    for hook in &HOOKS {
        let points: Vec<_> = st.attach_points.iter().filter(|a| a.program == hook.program).collect();
        assert_eq!(points.len(), 1, "{} is attached once: {:?}", hook.program, st.attach_points);
        let a = points[0];
        match hook.target {
            Target::ContainerVeth => assert_eq!(a.interface, c.veth),
            Target::Uplink | Target::Cgroup => {}
        }
        assert_eq!(a.hook, hook.pin_prefix);
        assert!(std::path::Path::new(&a.link_pin).exists(), "{} is pinned at {}", hook.program, a.link_pin);
        let loaded = st.programs.iter().find(|p| p.name == hook.program).expect("program listed");
        assert!(
            a.attached_program_ids.contains(&loaded.id),
            "the kernel runs {} (id {}) on {}: {:?}",
            hook.program,
            loaded.id,
            a.interface,
            a.attached_program_ids
        );
    }
    // Nothing pinned that the table does not account for.
    let pins = std::fs::read_dir(t.pin_dir().join("links")).unwrap().count();
    assert_eq!(pins, HOOKS.len(), "one link pin per hook");
}
