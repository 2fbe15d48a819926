//! Real dockerd 20.10 on netpath through the remote network driver that
//! netpathd serves (`--docker-plugin`): `docker network create -d`, `docker
//! run -p` published by netpath's datapath with dockerd adding no rules,
//! refusals that name the fix, `docker rm -f` leaving nothing, and an agent
//! restart in between. Needs docker.io and busybox-static (`cargo xtask
//! setup` installs them); without them the test fails and says so.

use std::time::{Duration, Instant};

use netpath_tests::{
    docker::Dockerd,
    topology::{curl, footprint, Topology, HOST_UPLINK_IP, WORLD_IP},
};
use netpath_userspace::model::{Container, Mapping};

const HTTPD: &[&str] = &["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"];

fn topology() -> (Topology, String) {
    netpath_tests::docker::topology_with_driver().expect("a topology with the Docker driver")
}

fn gateway(t: &Topology) -> String {
    let net: ipnet::Ipv4Net = t.subnet.parse().unwrap();
    net.hosts().next().unwrap().to_string()
}

fn containers(t: &Topology) -> Vec<Container> {
    t.ctl_json(&["container", "ls"]).unwrap()
}

#[test]
fn docker_run_publishes_through_netpath_and_rm_leaves_nothing() {
    let (mut t, driver) = topology();
    let mut d = Dockerd::start(&t).unwrap();
    let before = footprint(&t).unwrap();
    let net = format!("{}-net", t.prefix);
    d.network_create(&net, &driver, &["--subnet", &t.subnet, "--gateway", &gateway(&t)]).unwrap().unwrap();

    let web = d.run(&["--name", "web", "--network", &net, "-p", "8080:80"], HTTPD).unwrap().unwrap();
    // The agent has it, with the address Docker's IPAM gave it, its port
    // owned by it.
    let ip = d
        .docker_ok(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"), &web])
        .unwrap();
    let cs = containers(&t);
    assert_eq!(cs.len(), 1, "{cs:?}");
    assert_eq!(cs[0].ip.to_string(), ip);
    assert!(cs[0].owner.as_deref().is_some_and(|o| o.starts_with("docker:")), "{cs:?}");
    let maps: Vec<Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(maps.iter().map(|m| m.spec()).collect::<Vec<_>>(), vec![format!("8080:{}:80/tcp", cs[0].name)]);

    // Reached from outside, from the host itself, and from another
    // container (hairpin); that one also reaches the world (masquerade).
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    let world = t.world.clone();
    assert_eq!(curl(&world, &url, Duration::from_secs(10)).unwrap(), "hello from docker\n");
    // The container sees the client's own address (no proxy, no SNAT).
    let seen = curl(&world, &format!("{url}cgi-bin/ip"), Duration::from_secs(5)).unwrap();
    assert_eq!(netpath_tests::busybox::remote_addr(&seen), WORLD_IP.to_string(), "the client's address is preserved");
    // Policy by Docker's name for the container, which the agent learns
    // from dockerd (the driver protocol carries no names).
    let deadline = Instant::now() + Duration::from_secs(10);
    while containers(&t)[0].runtime_name.as_deref() != Some("web") {
        assert!(Instant::now() < deadline, "the agent never learnt the name: {:?}", containers(&t));
        std::thread::sleep(Duration::from_millis(200));
    }
    t.ctl_ok(&["policy", "add", "web", "deny", "in", "198.18.0.0/24", "tcp/80"]).unwrap();
    assert!(curl(&world, &url, Duration::from_millis(1500)).is_err(), "denied by the policy of \"web\"");
    t.ctl_ok(&["policy", "rm", "web", "deny", "in", "198.18.0.0/24", "tcp/80"]).unwrap();
    assert_eq!(curl(&world, &url, Duration::from_secs(5)).unwrap(), "hello from docker\n");
    let host = t.host.clone();
    assert_eq!(curl(&host, "http://127.0.0.1:8080/", Duration::from_secs(5)).unwrap(), "hello from docker\n");
    let client = d
        .run(
            &["--network", &net],
            &["/bin/busybox", "sh", "-c", &format!("wget -qO- {url}; ping -c 1 -W 3 {WORLD_IP}")],
        )
        .unwrap()
        .unwrap();
    let status = d.docker_ok(&["wait", &client]).unwrap();
    let logs = d.docker_ok(&["logs", &client]).unwrap();
    assert_eq!(status, "0", "hairpin and masquerade from another container: {logs}");
    assert!(logs.contains("hello from docker"), "{logs}");
    // dockerd added nothing to the host's rulesets.
    t.assert_no_netfilter_rules().unwrap();

    // The agent restarts: the containers keep serving, and their removal
    // afterwards still finds them (by owner).
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    assert_eq!(curl(&world, &url, Duration::from_secs(10)).unwrap(), "hello from docker\n");
    d.rm(&client).unwrap();
    d.rm(&web).unwrap();
    d.docker_ok(&["network", "rm", &net]).unwrap();
    assert_eq!(footprint(&t).unwrap(), before, "docker rm -f leaves nothing in the agent or the host namespace");
    drop(d);
}

#[test]
fn docker_refusals_name_the_fix_and_leave_nothing() {
    let (t, driver) = topology();
    let mut d = Dockerd::start(&t).unwrap();
    let net = format!("{}-net", t.prefix);
    // A subnet the instance does not serve.
    let err = d.network_create(&net, &driver, &["--subnet", "10.99.0.0/24"]).unwrap().unwrap_err();
    assert!(err.contains(&format!("create the network with --subnet {}", t.subnet)), "{err}");
    d.network_create(&net, &driver, &["--subnet", &t.subnet, "--gateway", &gateway(&t)]).unwrap().unwrap();
    let first = d.run(&["--network", &net, "-p", "8080:80"], HTTPD).unwrap().unwrap();
    let before = footprint(&t).unwrap();
    // The same host port again: refused, and the first keeps it.
    let err = d.run(&["--network", &net, "-p", "8080:80"], HTTPD).unwrap().unwrap_err();
    assert!(err.contains("8080"), "{err}");
    // A host port left for the driver to pick.
    let err = d.run(&["--network", &net, "-p", "80"], HTTPD).unwrap().unwrap_err();
    assert!(err.contains("use -p HOSTPORT:80"), "{err}");
    assert_eq!(footprint(&t).unwrap(), before, "refused containers leave nothing");
    let world = t.world.clone();
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    assert_eq!(curl(&world, &url, Duration::from_secs(10)).unwrap(), "hello from docker\n");
    d.rm(&first).unwrap();
    assert!(containers(&t).is_empty());
    drop(d);
}
