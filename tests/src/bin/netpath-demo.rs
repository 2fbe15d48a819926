//! `cargo xtask demo`: netpath's main job on a self-contained sandbox. A
//! host namespace runs netpathd; two containers join its bridge; a web
//! server in c1 is published as `netpathctl map 8080:c1:80` and reached from
//! the outside world, from c2, and from the host itself; a spoofing
//! container is stopped; the state is shown with netpathctl and bpftool.
//! Everything is removed at the end, also on failure (the topology's Drop).
//!
//! `--runtime docker` (`cargo xtask demo --runtime docker`) does the same
//! job with a real dockerd 20.10 on the same sandbox: the agent serves the
//! Docker network driver, `docker network create -d` makes the netpath
//! network, and a busybox httpd container runs with `-p 8080:80`, reached
//! from the world and from the host, with the host's rulesets empty.
//!
//! `--runtime podman` does it with podman 4 (CNI backend, runc) and the
//! netpath CNI plugin: a hand-written conflist names the agent's socket.
//!
//! Ctrl-C (or SIGTERM, SIGHUP) is caught: the demo stops at the next step
//! and cleans up as on failure; the daemons it starts are in process groups
//! of their own, so that the terminal's signal does not stop them before
//! the cleanup needs them.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netpath_tests::{
    docker::Dockerd,
    podman::Podman,
    topology::{curl, Topology, HOST_UPLINK_IP, WORLD_IP},
};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set when Ctrl-C (SIGINT), SIGTERM or SIGHUP arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches the termination signals with a handler that only sets
/// [`INTERRUPTED`] (async-signal-safe; handlers, unlike a blocked mask or
/// SIG_IGN, do not pass on to the programs the demo starts): the demo
/// notices at its next step and unwinds through the cleanup.
fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(interrupted), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("catching {sig}"))?;
    }
    netpath_tests::daemons_in_own_process_group();
    Ok(())
}

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

/// Announces the next step; refuses it once the demo was interrupted.
fn step(text: &str) -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: stopped before \"{text}\"; cleaning up");
    }
    println!("\n\x1b[1m==> {text}\x1b[0m");
    Ok(())
}

fn show(t: &Topology, args: &[&str]) -> Result<()> {
    println!("$ netpathctl {}", args.join(" "));
    print!("{}", t.ctl_ok(args)?);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => None,
        ["--runtime", "docker"] => Some("docker"),
        ["--runtime", "podman"] => Some("podman"),
        _ => bail!("usage: netpath-demo [--runtime docker|podman]"),
    };
    if !netpath_tests::is_root() {
        bail!("the demo creates network namespaces and loads BPF programs: run it as root");
    }
    std::env::set_var("NETPATH_TEST_PREFIX", format!("npdemo{:x}", std::process::id()));
    catch_interrupts()?;
    match runtime {
        Some("docker") => docker_demo(),
        Some(_) => podman_demo(),
        None => namespaces_demo(),
    }
}

/// Two hand-made container namespaces attached with netpathctl.
fn namespaces_demo() -> Result<()> {
    step("Sandbox: host, world and two container network namespaces")?;
    let mut t = Topology::new(2)?;
    println!(
        "host netns {}, world netns {}, containers {} and {}",
        t.host,
        t.world,
        t.container_ns(1),
        t.container_ns(2)
    );

    step("Start netpathd in the host namespace (bridge np0, XDP on the uplink)")?;
    t.start_agent()?;
    println!("agent socket {}", t.socket().display());

    step("Attach the containers")?;
    show(&t, &["container", "add", "c1", "--netns", &t.container_ns(1)])?;
    show(&t, &["container", "add", "c2", "--netns", &t.container_ns(2)])?;
    show(&t, &["container", "ls"])?;
    let cs: Vec<netpath_userspace::model::Container> = t.ctl_json(&["container", "ls"])?;
    let (c1, c2) = (&cs[0], &cs[1]);

    step("c1 -> c2, c1 -> gateway, c1 -> host address: through the BPF programs on the veths")?;
    for dst in [
        c2.ip4().to_string(),
        t.ctl_json::<netpath_userspace::model::Status>(&["status"])?
            .gateway
            .context("the demo instance carries IPv4")?
            .to_string(),
        HOST_UPLINK_IP.to_string(),
    ] {
        let ok = t.ping(&t.container_ns(1), &dst, 3)?;
        println!("ping {dst}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            bail!("ping {dst} from c1 failed");
        }
    }

    step("c1 tries to send from an address it was not given: dropped by anti-spoofing")?;
    t.exec(&t.container_ns(1), &["ip", "addr", "add", "10.254.254.254/32", "dev", "eth0"])?;
    let spoofed = t.try_exec(
        &t.container_ns(1),
        &["ping", "-q", "-c", "2", "-W", "1", "-I", "10.254.254.254", &c2.ip4().to_string()],
    )?;
    println!("spoofed ping answered: {spoofed}");
    show(&t, &["container", "show", "c1"])?;

    step("Publish c1's web server: netpathctl map 8080:c1:80")?;
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

    step("Masquerade: c2 reaches a server in the outside world, which sees the host address")?;
    let outside = t.in_ns(&world.clone(), || Ok(TcpListener::bind(("0.0.0.0", 8000))?))?;
    let seen = std::thread::spawn(move || outside.accept().map(|(_, peer)| peer));
    let _ = t.in_ns(&t.container_ns(2), || {
        Ok(TcpStream::connect_timeout(&SocketAddr::from((WORLD_IP, 8000)), Duration::from_secs(3))?)
    })?;
    let peer = seen.join().map_err(|_| anyhow::anyhow!("server thread"))??;
    println!("world server saw a connection from {peer} (c2 is {})", c2.ip4());

    step("Policy: c1 refuses the outside world on port 80, and the monitor shows the drop")?;
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

    step("The whole state")?;
    show(&t, &["status"])?;
    let pin = t.pin_dir().join("maps/CONTAINERS");
    println!("$ bpftool map dump pinned {}", pin.display());
    let out = Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&pin).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    t.assert_no_netfilter_rules()?;
    println!("\niptables-save and nft list ruleset in the host namespace: empty");

    step("Clean up")?;
    t.stop_agent()?;
    drop(t);
    println!("namespaces, pins and agent removed");
    let _ = c1;
    Ok(())
}

/// Runs a command in the sandbox host's namespace and shows it with its output.
fn show_in(t: &Topology, ns: &str, args: &[&str]) -> Result<String> {
    println!("$ {}", args.join(" "));
    let out = t.exec(ns, args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    Ok(text)
}

/// The same job with a real dockerd on netpath's Docker network driver.
fn docker_demo() -> Result<()> {
    step("Sandbox: host and world network namespaces")?;
    let mut t = Topology::new(0)?;
    println!("host netns {}, world netns {}", t.host, t.world);

    let driver = format!("{}-np", t.prefix);
    step(&format!("Start netpathd in the host namespace, serving the Docker network driver {driver:?}"))?;
    t.agent_args(&["--docker-plugin", &driver]);
    t.start_agent()?;
    println!("agent socket {}", t.socket().display());
    println!("driver socket {}", netpath_userspace::docker::socket_path(&driver).display());

    step("Start containerd and dockerd in the host namespace (--iptables=false --ip6tables=false --bridge=none)")?;
    // Dropped before the topology (declared after it): the agent still
    // answers the driver calls of its cleanup.
    let mut d = Dockerd::start(&t)?;
    println!(
        "dockerd socket {}; image {} imported from a busybox rootfs",
        d.socket().display(),
        netpath_tests::docker::IMAGE
    );

    step("docker network create -d netpath: the instance's subnet, the bridge as gateway")?;
    let net = format!("{}-net", t.prefix);
    let status: netpath_userspace::model::Status = t.ctl_json(&["status"])?;
    let gateway = status.gateway.context("the demo instance carries IPv4")?.to_string();
    println!("$ docker network create -d {driver} --subnet {} --gateway {gateway} {net}", t.subnet);
    if let Err(e) = d.network_create(&net, &driver, &["--subnet", &t.subnet, "--gateway", &gateway])? {
        bail!("docker network create failed: {e}");
    }
    println!("{}", d.docker_ok(&["network", "ls", "--filter", &format!("driver={driver}")])?);

    step("docker run -d --network NET -p 8080:80 busybox httpd")?;
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"];
    let web = match d.run(&["--network", &net, "--name", &format!("{}-web", t.prefix), "-p", "8080:80"], &httpd)? {
        Ok(id) => id,
        Err(e) => bail!("docker run failed: {e}\nagent log: {}", t.agent_log().display()),
    };
    println!("{}", d.docker_ok(&["ps", "--format", "table {{.ID}}\t{{.Image}}\t{{.Status}}\t{{.Networks}}"])?);
    println!(
        "docker port {}: {:?}   (empty: Docker publishes nothing for a remote driver)",
        &web[..12],
        d.docker_ok(&["port", &web])?
    );

    show_runtime_container(&t, "dockerd", "socket-level translation")?;

    step("Clean up: docker rm -f, docker network rm, then the daemons, namespaces and pins")?;
    d.rm(&web)?;
    d.network_rm(&net)?;
    show(&t, &["container", "ls"])?;
    show(&t, &["maps"])?;
    drop(d);
    t.stop_agent()?;
    drop(t);
    println!("containers, network, dockerd, containerd, agent, namespaces and pins removed");
    Ok(())
}

/// The same job with podman (CNI backend) and the netpath CNI plugin.
fn podman_demo() -> Result<()> {
    step("Sandbox: host and world network namespaces")?;
    let mut t = Topology::new(0)?;
    println!("host netns {}, world netns {}", t.host, t.world);

    step("Start netpathd in the host namespace")?;
    t.start_agent()?;
    println!("agent socket {}", t.socket().display());

    step("podman (CNI backend, runc) with its own storage, and a conflist of type netpath naming the agent's socket")?;
    // Dropped before the topology (declared after it): the agent still
    // answers the plugin's DELs of its cleanup.
    let mut pod = Podman::new(&t)?;
    let conflist = pod.dir().join("cni-conf").join(format!("{}.conflist", pod.network));
    println!("$ cat {}", conflist.display());
    println!("{}", std::fs::read_to_string(&conflist).unwrap_or_default().trim_end());

    step("podman run -d --network NET -p 8080:80 busybox httpd")?;
    let web = match pod.run_httpd(&["-p", "8080:80"])? {
        Ok(id) => id,
        Err(e) => bail!("podman run failed: {e}\nagent log: {}", t.agent_log().display()),
    };
    println!("{}", pod.podman_ok(&["ps", "--format", "{{.ID}}  {{.Status}}  {{.Ports}}  {{.Networks}}"])?);

    show_runtime_container(&t, "podman", "socket-level translation, ahead of conmon's port reservation")?;

    step("Clean up: podman rm -f (CNI DEL), then the namespaces and pins")?;
    pod.rm(&[&web])?;
    show(&t, &["container", "ls"])?;
    show(&t, &["maps"])?;
    drop(pod);
    t.stop_agent()?;
    drop(t);
    println!("container, podman storage, agent, namespaces and pins removed");
    Ok(())
}

/// What the agent made of a runtime's container published on 8080, the
/// port reached from the world and from the host, and the host's empty
/// rulesets (the runtime demos' common steps).
fn show_runtime_container(t: &Topology, runtime: &str, host_path: &str) -> Result<()> {
    step("What netpathd made of it")?;
    show(t, &["status"])?;
    show(t, &["container", "ls"])?;
    show(t, &["maps"])?;

    step("The published port, through netpath's datapath")?;
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    let from_world = curl(&t.world, &url, Duration::from_secs(15))?;
    println!("world -> {url}         : {}", from_world.trim_end());
    let from_host = curl(&t.host, "http://127.0.0.1:8080/", Duration::from_secs(10))?;
    println!("host  -> http://127.0.0.1:8080/ : {}   ({host_path})", from_host.trim_end());
    show(t, &["conntrack"])?;

    step(&format!("The host's rulesets: {runtime} and netpath added nothing"))?;
    show_in(t, &t.host, &["iptables-save"])?;
    show_in(t, &t.host, &["nft", "list", "ruleset"])?;
    t.assert_no_netfilter_rules()?;
    println!("iptables-save and nft list ruleset in the host namespace: empty");
    Ok(())
}
