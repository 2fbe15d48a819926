//! Real dockerd 20.10 on netpath's remote network driver through a
//! container's life: `docker stop`/`start`, `restart`, `kill` then `start`,
//! `docker network connect`/`disconnect` of a running container, a dockerd
//! restart with and without `--live-restore`, and `docker start` while the
//! agent is down (it completes once the agent is back). After each step the
//! published port answers from the world namespace (or, where it must not,
//! does not), and the agent holds exactly what the running containers need:
//! a stopped or disconnected container leaves the footprint (interfaces,
//! link pins, map entries, mappings, flows), the driver's endpoint memory
//! and `netpathctl container ls`/`maps` as before it started. `docker rm -f`
//! and `docker network rm` at the end leave everything as before the
//! network. Needs docker.io and busybox-static (`cargo xtask setup`).

use netpath_tests::Ipv4Of as _;
use std::time::{Duration, Instant};

use netpath_tests::{
    docker::Dockerd,
    topology::{curl, footprint, Footprint, Topology, HOST_UPLINK_IP},
};
use netpath_userspace::model::{Container, Mapping};

/// busybox httpd as PID 1 ignores SIGTERM: `--stop-timeout 1` keeps every
/// stop (also dockerd's own on shutdown) at one second.
const HTTPD: &[&str] = &["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"];
const HELLO: &str = "hello from docker\n";

fn topology() -> (Topology, String) {
    netpath_tests::docker::topology_with_driver().expect("a topology with the Docker driver")
}

/// The netpath network on the instance's subnet.
fn network(t: &Topology, d: &mut Dockerd, driver: &str) -> String {
    let net = format!("{}-net", t.prefix);
    let subnet: ipnet::Ipv4Net = t.subnet.parse().unwrap();
    let gateway = subnet.hosts().next().unwrap().to_string();
    d.network_create(&net, driver, &["--subnet", &t.subnet, "--gateway", &gateway]).unwrap().unwrap();
    net
}

fn containers(t: &Topology) -> Vec<Container> {
    t.ctl_json(&["container", "ls"]).unwrap()
}

fn mappings(t: &Topology) -> Vec<String> {
    t.ctl_json::<Vec<Mapping>>(&["maps"]).unwrap().iter().map(|m| m.spec()).collect()
}

/// Endpoints the driver remembers (created, not deleted yet).
fn pending_endpoints(t: &Topology) -> usize {
    match std::fs::read(t.run_dir().join("state/docker-endpoints.json")) {
        Ok(data) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&data).unwrap().len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("reading the driver's endpoints: {e}"),
    }
}

fn url(port: u16) -> String {
    format!("http://{HOST_UPLINK_IP}:{port}/")
}

/// One attempt from `ns`: does `url` answer at all?
fn answers(ns: &str, url: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "2", url])
        .output()
        .unwrap()
        .status
        .success()
}

/// The IP Docker gave `id` on `net` ("" when not attached).
fn docker_ip(d: &Dockerd, id: &str, net: &str) -> String {
    d.inspect(id, &format!("{{{{with index .NetworkSettings.Networks \"{net}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"))
        .unwrap()
}

fn running(d: &Dockerd, id: &str) -> bool {
    d.inspect(id, "{{.State.Running}}").unwrap() == "true"
}

/// Polls `f` until it holds, at most `timeout` (dockerd releases the
/// network of an exited container asynchronously).
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The footprint comes back to `expected` (and the driver forgets every
/// endpoint): what a stopped, killed or disconnected container must leave.
fn assert_left_nothing(t: &Topology, d: &Dockerd, expected: &Footprint, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = footprint(t).unwrap();
        if now == *expected && pending_endpoints(t) == 0 {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{when}: the agent still holds the container\nnow:      {now:?}\nexpected: {expected:?}\n\
                 pending endpoints: {}\nagent log:\n{}\ndockerd log:\n{}",
                pending_endpoints(t),
                std::fs::read_to_string(t.agent_log()).unwrap_or_default(),
                d.log("dockerd")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `id` is attached exactly once on `net`, with Docker's address and
/// `host_port` published by netpath, and answers from the world
/// namespace. Returns the agent's name of the attachment.
fn assert_serving(t: &Topology, d: &Dockerd, id: &str, net: &str, host_port: u16, when: &str) -> String {
    let body = curl(&t.world, &url(host_port), Duration::from_secs(15)).unwrap_or_else(|e| {
        panic!(
            "{when}: {e}\nagent log:\n{}\ndockerd log:\n{}",
            std::fs::read_to_string(t.agent_log()).unwrap_or_default(),
            d.log("dockerd")
        )
    });
    assert_eq!(body, HELLO, "{when}");
    let cs = containers(t);
    assert_eq!(cs.len(), 1, "{when}: one attachment: {cs:?}");
    assert_eq!(cs[0].ip4().to_string(), docker_ip(d, id, net), "{when}: the address Docker's IPAM gave");
    assert!(cs[0].owner.as_deref().is_some_and(|o| o.starts_with("docker:")), "{when}: {cs:?}");
    assert_eq!(mappings(t), vec![format!("{host_port}:{}:80/tcp", cs[0].name)], "{when}");
    assert_eq!(pending_endpoints(t), 1, "{when}: the driver remembers the one endpoint");
    cs[0].name.clone()
}

#[test]
fn stop_start_restart_and_kill_keep_the_port_and_leave_nothing_while_down() {
    let (t, driver) = topology();
    let mut d = Dockerd::start(&t).unwrap();
    let before = footprint(&t).unwrap();
    let net = network(&t, &mut d, &driver);
    let web = d.run(&["--network", &net, "--stop-timeout", "1", "-p", "8080:80"], HTTPD).unwrap().unwrap();
    let mut names = vec![assert_serving(&t, &d, &web, &net, 8080, "after docker run")];

    // docker stop: RevokeExternalConnectivity, Leave, DeleteEndpoint.
    d.docker_ok(&["stop", &web]).unwrap();
    assert!(!running(&d, &web));
    assert_left_nothing(&t, &d, &before, "after docker stop");
    assert!(!answers(&t.world, &url(8080)), "a stopped container's port answers");
    // docker start: a new endpoint (CreateEndpoint, Join, ProgramExternalConnectivity).
    d.docker_ok(&["start", &web]).unwrap();
    names.push(assert_serving(&t, &d, &web, &net, 8080, "after docker start"));

    // docker restart: both halves in one command.
    d.docker_ok(&["restart", &web]).unwrap();
    names.push(assert_serving(&t, &d, &web, &net, 8080, "after docker restart"));

    // docker kill: the container exits on its own from dockerd's point of
    // view; the network goes with the exit event.
    d.docker_ok(&["kill", &web]).unwrap();
    wait_until("the killed container is not running", Duration::from_secs(15), || !running(&d, &web));
    assert_left_nothing(&t, &d, &before, "after docker kill");
    d.docker_ok(&["start", &web]).unwrap();
    names.push(assert_serving(&t, &d, &web, &net, 8080, "after docker kill and start"));
    eprintln!("attachments of the container's four starts: {names:?}");
    t.assert_no_netfilter_rules().unwrap();

    d.rm(&web).unwrap();
    d.network_rm(&net).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker rm -f and network rm");
    assert!(containers(&t).is_empty() && mappings(&t).is_empty());
    drop(d);
}

#[test]
fn network_connect_and_disconnect_of_a_running_container() {
    let (t, driver) = topology();
    // Once the container leaves netpath, Docker hands its `-p` to the
    // bridge network it keeps, whose driver publishes through docker-proxy
    // (even with --iptables=false): off, so that a port answering after the
    // disconnect can only be netpath's leftover.
    let mut d = Dockerd::start_with(&t, &["--userland-proxy=false"]).unwrap();
    let net = network(&t, &mut d, &driver);
    // Another network to start on (the default bridge is off). An internal bridge network
    // (no gateway, and dockerd runs with --iptables=false: no rules) lives
    // in the sandbox host namespace; its bridge and the container's veth
    // on it are part of the baseline.
    let other = format!("{}-other", t.prefix);
    d.network_create(&other, "bridge", &["--internal", "--subnet", "192.168.251.0/24"]).unwrap().unwrap();

    // Started elsewhere, then connected: netpath attaches it; the ports of
    // its `-p` are Docker's to hand over (the internal network publishes
    // none), and netpath publishes them.
    let web = d.run(&["--network", &other, "--stop-timeout", "1", "-p", "8081:80"], HTTPD).unwrap().unwrap();
    let before = footprint(&t).unwrap();
    assert!(before.containers.is_empty() && before.mappings.is_empty(), "not on netpath yet: {before:?}");
    assert!(!answers(&t.world, &url(8081)));
    d.docker_ok(&["network", "connect", &net, &web]).unwrap();
    let ip = docker_ip(&d, &web, &net);
    let cs = containers(&t);
    assert_eq!(cs.len(), 1, "{cs:?}");
    assert_eq!(cs[0].ip4().to_string(), ip);
    // Reachable on its netpath address from the host, and on the port.
    assert_eq!(curl(&t.host, &format!("http://{ip}/"), Duration::from_secs(10)).unwrap(), HELLO);
    assert_serving(&t, &d, &web, &net, 8081, "after docker network connect");
    // Disconnected: everything goes, the container keeps running.
    d.docker_ok(&["network", "disconnect", &net, &web]).unwrap();
    assert!(running(&d, &web), "disconnect stops nothing");
    assert_left_nothing(&t, &d, &before, "after docker network disconnect");
    assert!(!answers(&t.host, &format!("http://{ip}/")), "the disconnected address answers");
    assert!(!answers(&t.world, &url(8081)), "the disconnected container's port answers");

    // Started on netpath, disconnected, connected again.
    let web2 = d.run(&["--network", &net, "--stop-timeout", "1", "-p", "8082:80"], HTTPD).unwrap().unwrap();
    assert_serving(&t, &d, &web2, &net, 8082, "after docker run on netpath");
    d.docker_ok(&["network", "disconnect", &net, &web2]).unwrap();
    assert!(running(&d, &web2));
    assert_left_nothing(&t, &d, &before, "after disconnecting the container started on netpath");
    assert!(!answers(&t.world, &url(8082)));
    d.docker_ok(&["network", "connect", &net, &web2]).unwrap();
    assert_serving(&t, &d, &web2, &net, 8082, "after connecting it again");
    t.assert_no_netfilter_rules().unwrap();

    d.rm(&web2).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker rm -f");
    d.rm(&web).unwrap();
    d.network_rm(&net).unwrap();
    d.network_rm(&other).unwrap();
    assert!(containers(&t).is_empty() && mappings(&t).is_empty());
    drop(d);
}

#[test]
fn dockerd_restart_stops_the_container_and_start_publishes_again() {
    let (t, driver) = topology();
    let mut d = Dockerd::start(&t).unwrap();
    let before = footprint(&t).unwrap();
    let net = network(&t, &mut d, &driver);
    let web = d.run(&["--network", &net, "--stop-timeout", "1", "-p", "8080:80"], HTTPD).unwrap().unwrap();
    assert_serving(&t, &d, &web, &net, 8080, "before the dockerd restart");

    // Without --live-restore dockerd stops its containers on the way down,
    // releasing their endpoints.
    d.restart().unwrap();
    assert!(!running(&d, &web), "without --live-restore the container stopped with dockerd");
    assert_left_nothing(&t, &d, &before, "after the dockerd restart");
    // The network is still there (restored from dockerd's store, whether
    // or not CreateNetwork comes again), and takes endpoints.
    assert_eq!(d.inspect(&net, "{{.Driver}}").unwrap(), driver);
    d.docker_ok(&["start", &web]).unwrap();
    assert_serving(&t, &d, &web, &net, 8080, "after docker start on the restarted dockerd");
    // A new container on the restored network too.
    let second = d.run(&["--network", &net, "--stop-timeout", "1", "-p", "8083:80"], HTTPD).unwrap().unwrap();
    assert_eq!(curl(&t.world, &url(8083), Duration::from_secs(15)).unwrap(), HELLO);
    t.assert_no_netfilter_rules().unwrap();

    d.rm(&second).unwrap();
    d.rm(&web).unwrap();
    d.network_rm(&net).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker rm -f and network rm");
    drop(d);
}

#[test]
fn dockerd_restart_with_live_restore_keeps_the_container_serving() {
    let (t, driver) = topology();
    let mut d = Dockerd::start_with(&t, &["--live-restore"]).unwrap();
    let before = footprint(&t).unwrap();
    let net = network(&t, &mut d, &driver);
    let web = d.run(&["--network", &net, "--stop-timeout", "1", "-p", "8080:80"], HTTPD).unwrap().unwrap();
    let name = assert_serving(&t, &d, &web, &net, 8080, "before the dockerd restart");

    d.restart().unwrap();
    assert!(running(&d, &web), "with --live-restore the container outlives dockerd");
    assert_eq!(
        assert_serving(&t, &d, &web, &net, 8080, "after the dockerd restart with --live-restore"),
        name,
        "the same attachment"
    );
    // The restored endpoint still goes through the driver on stop/start.
    d.docker_ok(&["stop", &web]).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker stop of the restored container");
    d.docker_ok(&["start", &web]).unwrap();
    assert_serving(&t, &d, &web, &net, 8080, "after docker start of the restored container");
    t.assert_no_netfilter_rules().unwrap();

    d.rm(&web).unwrap();
    d.network_rm(&net).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker rm -f and network rm");
    drop(d);
}

#[test]
fn a_container_started_while_the_agent_is_down_comes_up_once_it_is_back() {
    let (mut t, driver) = topology();
    let mut d = Dockerd::start(&t).unwrap();
    let before = footprint(&t).unwrap();
    let net = network(&t, &mut d, &driver);
    let web = d.run(&["--network", &net, "--stop-timeout", "1", "-p", "8080:80"], HTTPD).unwrap().unwrap();
    assert_serving(&t, &d, &web, &net, 8080, "after docker run");
    d.docker_ok(&["stop", &web]).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker stop");

    // The agent killed (a crash, or an upgrade's restart): its plugin
    // socket is left behind, refusing. dockerd retries its calls to a
    // network driver that does not answer, so `docker start` meanwhile
    // completes once the agent is back.
    t.kill_agent().unwrap();
    let (started, finished, agent_back) = std::thread::scope(|s| {
        let start = s.spawn(|| (d.docker(&["start", &web]).unwrap(), Instant::now()));
        std::thread::sleep(Duration::from_millis(1500));
        let agent_back = Instant::now();
        t.start_agent().unwrap();
        let (started, finished) = start.join().unwrap();
        (started, finished, agent_back)
    });
    assert!(
        started.status.success(),
        "docker start while the agent was down: {}\ndockerd log:\n{}",
        String::from_utf8_lossy(&started.stderr),
        d.log("dockerd")
    );
    assert!(finished > agent_back, "docker start finished before the agent was started again");
    assert_serving(&t, &d, &web, &net, 8080, "after docker start during the agent's restart");

    d.rm(&web).unwrap();
    d.network_rm(&net).unwrap();
    assert_left_nothing(&t, &d, &before, "after docker rm -f and network rm");
    drop(d);
}
