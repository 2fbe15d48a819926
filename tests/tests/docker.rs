//! Real dockerd 20.10 on netpath through the remote network driver that
//! netpathd serves (`--docker-plugin`): `docker network create -d`, `docker
//! run -p` published by netpath's datapath with dockerd adding no rules,
//! refusals that name the fix, `docker rm -f` leaving nothing, and an agent
//! restart in between. Needs docker.io and busybox-static (`cargo xtask
//! setup` installs them); without them the test fails and says so.

use netpath_tests::Ipv4Of as _;
use std::time::{Duration, Instant};

use netpath_tests::{
    docker::Dockerd,
    topology::{curl, footprint, Topology, HOST_UPLINK_IP, HOST_UPLINK_IP6, WORLD_IP, WORLD_IP6},
};
use netpath_userspace::model::{Container, Mapping, Status};

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
    assert_eq!(cs[0].ip4().to_string(), ip);
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
fn docker_ipv6_networks_take_the_instances_subnet6_and_publish_on_both_families() {
    let (t, driver) = topology();
    let mut d = Dockerd::start(&t).unwrap();
    let before = footprint(&t).unwrap();
    let status: Status = t.ctl_json(&["status"]).unwrap();
    let (subnet6, gateway6) = (status.subnet6.expect("an IPv6 subnet"), status.gateway6.expect("an IPv6 gateway"));
    let net = format!("{}-net6", t.prefix);
    let v4 = ["--subnet", &t.subnet, "--gateway", &gateway(&t)];
    // An IPv6 pool the instance does not serve is refused, naming its own.
    let err = d.network_create(&net, &driver, &[&v4[..], &["--ipv6", "--subnet", "fd00:99::/64"]].concat()).unwrap();
    let err = err.unwrap_err();
    assert!(err.contains(&format!("--ipv6 --subnet {subnet6}")), "{err}");
    let gw6 = gateway6.to_string();
    d.network_create(&net, &driver, &[&v4[..], &["--ipv6", "--subnet", &subnet6, "--gateway", &gw6]].concat())
        .unwrap()
        .unwrap();

    let web = d.run(&["--network", &net, "-p", "8080:80"], HTTPD).unwrap().unwrap();
    // The agent has the IPv6 address Docker's IPAM gave it.
    let field = |name: &str| format!("{{{{(index .NetworkSettings.Networks \"{net}\").{name}}}}}");
    let ip6 = d.docker_ok(&["inspect", "-f", &field("GlobalIPv6Address"), &web]).unwrap();
    let cs = containers(&t);
    assert_eq!(cs[0].ip6.map(|a| a.to_string()), Some(ip6.clone()), "{cs:?}");
    // Published on both families (no host address, as Docker's -p); the
    // container sees the real client on each.
    let world = t.world.clone();
    for host in [HOST_UPLINK_IP.to_string(), format!("[{HOST_UPLINK_IP6}]")] {
        let url = format!("http://{host}:8080/");
        assert_eq!(curl(&world, &url, Duration::from_secs(10)).unwrap(), "hello from docker\n", "{url}");
    }
    let seen = curl(&world, &format!("http://[{HOST_UPLINK_IP6}]:8080/cgi-bin/ip"), Duration::from_secs(5)).unwrap();
    assert_eq!(netpath_tests::busybox::remote_addr(&seen), WORLD_IP6.to_string(), "the IPv6 client's address");
    // Another container reaches it over IPv6, directly and through the
    // host's IPv6 address (hairpin), and the world (masqueraded).
    let script = format!(
        "wget -qO- http://[{ip6}]:80/ && wget -qO- http://[{HOST_UPLINK_IP6}]:8080/ && ping -6 -c 1 -W 3 {WORLD_IP6}"
    );
    let client = d.run(&["--network", &net], &["/bin/busybox", "sh", "-c", &script]).unwrap().unwrap();
    let status = d.docker_ok(&["wait", &client]).unwrap();
    let logs = d.docker_ok(&["logs", &client]).unwrap();
    assert_eq!(status, "0", "IPv6 from another container: {logs}");
    assert_eq!(logs.matches("hello from docker").count(), 2, "{logs}");
    t.assert_no_netfilter_rules().unwrap();
    d.rm(&client).unwrap();
    d.rm(&web).unwrap();
    d.docker_ok(&["network", "rm", &net]).unwrap();
    assert_eq!(footprint(&t).unwrap(), before, "docker rm -f leaves nothing");
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
