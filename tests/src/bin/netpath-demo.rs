//! `cargo xtask demo`: netpath's main job on a self-contained sandbox. A
//! host namespace runs netpathd; two containers join its bridge; traffic
//! flows through the BPF programs; a spoofing container is stopped; the
//! state is shown with netpathctl and bpftool. Everything is removed at the
//! end, also on failure (the topology's Drop).

use std::process::Command;

use anyhow::{bail, Result};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP};

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn show(t: &Topology, args: &[&str]) -> Result<()> {
    println!("$ netpathctl {}", args.join(" "));
    print!("{}", t.ctl_ok(args)?);
    Ok(())
}

fn main() -> Result<()> {
    if !netpath_tests::is_root() {
        bail!("the demo creates network namespaces and loads BPF programs: run it as root");
    }
    std::env::set_var("NETPATH_TEST_PREFIX", format!("npdemo{:x}", std::process::id()));
    step("Sandbox: host, world and two container network namespaces");
    let mut t = Topology::new(2)?;
    println!("host netns {}, world netns {}, containers {} and {}", t.host, t.world, t.container_ns(1), t.container_ns(2));

    step("Start netpathd in the host namespace (bridge np0, XDP on the uplink)");
    t.start_agent()?;
    println!("agent socket {}", t.socket().display());

    step("Attach the containers");
    show(&t, &["container", "add", "c1", "--netns", &t.container_ns(1)])?;
    show(&t, &["container", "add", "c2", "--netns", &t.container_ns(2)])?;
    show(&t, &["container", "ls"])?;
    let cs: Vec<netpath_userspace::model::Container> = t.ctl_json(&["container", "ls"])?;
    let (c1, c2) = (&cs[0], &cs[1]);

    step("c1 -> c2, c1 -> gateway, c1 -> host address: through the BPF programs on the veths");
    for dst in [c2.ip.to_string(), t.ctl_json::<netpath_userspace::model::Status>(&["status"])?.gateway.to_string(), HOST_UPLINK_IP.to_string()] {
        let ok = t.ping(&t.container_ns(1), &dst, 3)?;
        println!("ping {dst}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            bail!("ping {dst} from c1 failed");
        }
    }

    step("c1 tries to send from an address it was not given: dropped by anti-spoofing");
    t.exec(&t.container_ns(1), &["ip", "addr", "add", "10.254.254.254/32", "dev", "eth0"])?;
    let spoofed = t.try_exec(&t.container_ns(1), &["ping", "-q", "-c", "2", "-W", "1", "-I", "10.254.254.254", &c2.ip.to_string()])?;
    println!("spoofed ping answered: {spoofed}");
    show(&t, &["container", "show", "c1"])?;

    step("The whole state");
    show(&t, &["status"])?;
    let pin = t.pin_dir().join("maps/ENDPOINTS");
    println!("$ bpftool map dump pinned {}", pin.display());
    let out = Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&pin).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    t.assert_no_netfilter_rules()?;
    println!("\niptables-save and nft list ruleset in the host namespace: empty");

    step("Clean up");
    t.stop_agent()?;
    drop(t);
    println!("namespaces, pins and agent removed");
    let _ = c1;
    Ok(())
}
