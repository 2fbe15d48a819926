//! `cargo xtask demo`: netpath's main job on a self-contained sandbox. A
//! host namespace runs netpathd; two containers join its bridge; a web
//! server in c1 is published as `netpathctl map 8080:c1:80` and reached from
//! the outside world, from c2, and from the host itself; a spoofing
//! container is stopped; the state is shown with netpathctl and bpftool.
//! Everything is removed at the end, also on failure (the topology's Drop).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, WORLD_IP};

/// A tiny HTTP server in `ns` that tells each client the address it sees.
fn web_server(t: &Topology, ns: &str, conns: usize) -> Result<std::thread::JoinHandle<()>> {
    let listener = t.in_ns(ns, || Ok(TcpListener::bind(("0.0.0.0", 80))?))?;
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    Ok(std::thread::spawn(move || {
        let mut served = 0;
        while served < conns && std::time::Instant::now() < deadline {
            let Ok((mut s, peer)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let body = format!("hello from c1, you are {}\n", peer.ip());
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            served += 1;
        }
    }))
}

fn http_get(t: &Topology, ns: &str, ip: Ipv4Addr, port: u16) -> Result<String> {
    let mut s =
        t.in_ns(ns, || Ok(TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(3))?))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text).context("reading the answer")?;
    Ok(text.lines().last().unwrap_or_default().to_string())
}

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
    println!(
        "host netns {}, world netns {}, containers {} and {}",
        t.host,
        t.world,
        t.container_ns(1),
        t.container_ns(2)
    );

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
    for dst in [
        c2.ip.to_string(),
        t.ctl_json::<netpath_userspace::model::Status>(&["status"])?.gateway.to_string(),
        HOST_UPLINK_IP.to_string(),
    ] {
        let ok = t.ping(&t.container_ns(1), &dst, 3)?;
        println!("ping {dst}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            bail!("ping {dst} from c1 failed");
        }
    }

    step("c1 tries to send from an address it was not given: dropped by anti-spoofing");
    t.exec(&t.container_ns(1), &["ip", "addr", "add", "10.254.254.254/32", "dev", "eth0"])?;
    let spoofed = t.try_exec(
        &t.container_ns(1),
        &["ping", "-q", "-c", "2", "-W", "1", "-I", "10.254.254.254", &c2.ip.to_string()],
    )?;
    println!("spoofed ping answered: {spoofed}");
    show(&t, &["container", "show", "c1"])?;

    step("Publish c1's web server: netpathctl map 8080:c1:80");
    show(&t, &["map", "8080:c1:80"])?;
    show(&t, &["maps"])?;
    let server = web_server(&t, &t.container_ns(1), 3)?;
    let world = t.world.clone();
    let from_world = http_get(&t, &world, HOST_UPLINK_IP, 8080)?;
    println!("world  -> {HOST_UPLINK_IP}:8080 : {from_world}   (the container sees the real client address)");
    let from_c2 = http_get(&t, &t.container_ns(2), HOST_UPLINK_IP, 8080)?;
    println!("c2     -> {HOST_UPLINK_IP}:8080 : {from_c2}   (hairpin through the host address)");
    let host = t.host.clone();
    let from_host = http_get(&t, &host, Ipv4Addr::LOCALHOST, 8080)?;
    println!("host   -> 127.0.0.1:8080     : {from_host}   (socket-level translation)");
    let _ = server.join();
    show(&t, &["conntrack"])?;

    step("Masquerade: c2 reaches a server in the outside world, which sees the host address");
    let outside = t.in_ns(&world.clone(), || Ok(TcpListener::bind(("0.0.0.0", 8000))?))?;
    let seen = std::thread::spawn(move || outside.accept().map(|(_, peer)| peer));
    let _ = t.in_ns(&t.container_ns(2), || {
        Ok(TcpStream::connect_timeout(&SocketAddr::from((WORLD_IP, 8000)), Duration::from_secs(3))?)
    })?;
    let peer = seen.join().map_err(|_| anyhow::anyhow!("server thread"))??;
    println!("world server saw a connection from {peer} (c2 is {})", c2.ip);

    step("Policy: c1 refuses the outside world on port 80, and the monitor shows the drop");
    show(&t, &["policy", "add", "c1", "deny", "in", &format!("{WORLD_IP}/32"), "tcp/80"])?;
    let mut monitor = Command::new(netpath_tests::topology::bin_dir().join("netpathctl"))
        .arg("--socket")
        .arg(t.socket())
        .args(["monitor", "c1"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let server = web_server(&t, &t.container_ns(1), 1)?;
    let denied = http_get(&t, &world, HOST_UPLINK_IP, 8080).is_err();
    println!("world -> {HOST_UPLINK_IP}:8080 refused by policy: {denied}");
    let from_c2 = http_get(&t, &t.container_ns(2), HOST_UPLINK_IP, 8080)?;
    println!("c2    -> {HOST_UPLINK_IP}:8080 : {from_c2}");
    let _ = server.join();
    std::thread::sleep(Duration::from_millis(300));
    let _ = monitor.kill();
    let out = monitor.wait_with_output()?;
    println!("$ netpathctl monitor c1\n{}", String::from_utf8_lossy(&out.stdout).trim_end());
    show(&t, &["stats"])?;

    step("The whole state");
    show(&t, &["status"])?;
    let pin = t.pin_dir().join("maps/CONTAINERS");
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
