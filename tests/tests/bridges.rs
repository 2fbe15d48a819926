//! More containers than one bridge takes: a Linux bridge has at most 1023
//! ports, so the instance opens overflow bridges (`np0-1`, ...) on the same
//! subnet. Tested with `--bridge-ports 2`, so that seven containers span
//! four bridges: every path works across bridges as within one, with and
//! without the fast path, over IPv4 and IPv6; emptied overflow bridges go;
//! a restart adopts them and repairs their routes.

use netpath_tests::Ipv4Of as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpath_tests::{
    cni::{ask, serve},
    topology::{Topology, HOST_UPLINK_IP, WORLD_IP},
};
use netpath_userspace::model::{Container, ContainerStatus, Status};

fn topology(containers: usize, extra: &[&str]) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    let mut args = vec!["--bridge-ports", "2"];
    args.extend_from_slice(extra);
    t.agent_args(&args);
    t.start_agent().expect("start netpathd");
    t
}

/// (bridge, containers) as `status` lists them.
fn bridges(t: &Topology) -> Vec<(String, usize)> {
    let status: Status = t.ctl_json(&["status"]).unwrap();
    status.bridges.into_iter().map(|b| (b.name, b.containers)).collect()
}

fn expect_bridges(t: &Topology, want: &[(&str, usize)]) {
    let want: Vec<(String, usize)> = want.iter().map(|(n, c)| (n.to_string(), *c)).collect();
    assert_eq!(bridges(t), want);
}

/// The bridge the host side of `c`'s veth is a port of.
fn master_of(t: &Topology, c: &Container) -> String {
    let out = t.exec(&t.host, &["ip", "-o", "link", "show", &c.veth]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "master").unwrap_or_else(|| panic!("{} has no master: {text}", c.veth));
    words[at + 1].to_string()
}

fn link_exists(t: &Topology, name: &str) -> bool {
    t.try_exec(&t.host, &["ip", "link", "show", name]).unwrap()
}

fn ip6(c: &Container) -> Ipv6Addr {
    c.ip6.unwrap_or_else(|| panic!("{} has no IPv6 address", c.name))
}

/// The host's route to `ip`, as `ip route get` names its device.
fn route_dev(t: &Topology, ip: impl Into<IpAddr>) -> String {
    let ip = ip.into();
    let out = t.exec(&t.host, &["ip", "-o", "route", "get", &ip.to_string()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "dev").unwrap_or_else(|| panic!("no dev in {text}"));
    words[at + 1].to_string()
}

/// A TCP connection from container namespace `from` to `server` (a
/// container) at `ip:port`; returns the client address the server saw.
fn seen_client(t: &Topology, from: &str, server_ns: &str, ip: impl Into<IpAddr>, port: u16) -> String {
    seen_client_via(t, from, server_ns, port, ip, port)
}

/// The same through a published port: the server listens on `server_port`.
fn seen_client_via(
    t: &Topology,
    from: &str,
    server_ns: &str,
    server_port: u16,
    ip: impl Into<IpAddr>,
    port: u16,
) -> String {
    let ip = ip.into();
    let server = serve(t, server_ns, server_port, 1, "hi").unwrap();
    let answer = ask(t, from, ip, port).unwrap_or_else(|e| panic!("{from} -> {ip}:{port}: {e:#}"));
    server.join().unwrap();
    answer.strip_prefix("hi ").unwrap_or_else(|| panic!("answer {answer:?}")).to_string()
}

fn paths_across_bridges(fast_path: bool) {
    let extra: &[&str] = if fast_path { &[] } else { &["--no-fast-path"] };
    let t = topology(8, extra);
    let cs: Vec<Container> = (1..=7).map(|i| t.add_container(i).unwrap()).collect();
    let c = |i: usize| &cs[i - 1];
    let ns = |i: usize| t.container_ns(i);
    expect_bridges(&t, &[("np0", 2), ("np0-1", 2), ("np0-2", 2), ("np0-3", 1)]);
    for (i, bridge) in [(1, "np0"), (3, "np0-1"), (5, "np0-2"), (7, "np0-3")] {
        assert_eq!(master_of(&t, c(i)), bridge, "c{i}");
        let shown: ContainerStatus = t.ctl_json(&["container", "show", &format!("c{i}")]).unwrap();
        assert_eq!(shown.bridge.as_deref(), Some(bridge), "container show c{i}");
    }
    // Containers of overflow bridges are routed there, the first bridge's by the subnet.
    assert_eq!(route_dev(&t, c(3).ip4()), "np0-1");
    assert_eq!(route_dev(&t, c(7).ip4()), "np0-3");
    assert_eq!(route_dev(&t, c(1).ip4()), "np0");

    // Container to container: across bridges both ways, within an overflow
    // bridge, first bridge to the last; each sees the other's own address.
    for (a, b) in [(1, 3), (3, 1), (3, 4), (7, 2), (5, 6)] {
        let seen = seen_client(&t, &ns(a), &ns(b), c(b).ip4(), 7000 + a as u16);
        assert_eq!(seen, c(a).ip4().to_string(), "c{a} -> c{b}");
    }
    assert!(t.ping(&ns(1), &c(7).ip4().to_string(), 2).unwrap(), "c1 pings c7");
    assert!(t.ping(&ns(7), &c(1).ip4().to_string(), 2).unwrap(), "c7 pings c1");
    // The host reaches every bridge's containers, and they the gateway.
    assert!(t.ping(&t.host, &c(5).ip4().to_string(), 2).unwrap(), "host pings c5");
    let gateway = t.ctl_json::<Status>(&["status"]).unwrap().gateway.unwrap();
    assert!(t.ping(&ns(7), &gateway.to_string(), 2).unwrap(), "c7 pings the gateway");

    // The same over IPv6: overflow containers are routed there by a /128,
    // and the first bridge answers neighbour solicitations for them.
    assert_eq!(route_dev(&t, ip6(c(3))), "np0-1");
    assert_eq!(route_dev(&t, ip6(c(7))), "np0-3");
    assert_eq!(route_dev(&t, ip6(c(1))), "np0");
    for (a, b) in [(1, 3), (3, 1), (3, 4), (7, 2), (5, 6)] {
        let seen = seen_client(&t, &ns(a), &ns(b), ip6(c(b)), 7500 + a as u16);
        assert_eq!(seen, ip6(c(a)).to_string(), "c{a} -> c{b} over IPv6");
    }
    assert!(t.ping(&ns(1), &ip6(c(7)).to_string(), 2).unwrap(), "c1 pings c7 over IPv6");
    assert!(t.ping(&t.host, &ip6(c(5)).to_string(), 2).unwrap(), "host pings c5 over IPv6");
    let gateway6 = t.ctl_json::<Status>(&["status"]).unwrap().gateway6.expect("an IPv6 gateway");
    assert!(t.ping(&ns(7), &gateway6.to_string(), 2).unwrap(), "c7 pings the IPv6 gateway");

    // A published port on an overflow bridge, from outside and from a
    // container on another bridge (hairpin through the host address).
    t.ctl_ok(&["map", "8080:c6:80"]).unwrap();
    assert_eq!(seen_client_via(&t, &t.world, &ns(6), 80, HOST_UPLINK_IP, 8080), WORLD_IP.to_string());
    assert_eq!(seen_client_via(&t, &ns(1), &ns(6), 80, HOST_UPLINK_IP, 8080), c(1).ip4().to_string());
    // Masquerade out of the uplink from an overflow bridge.
    assert_eq!(seen_client(&t, &ns(5), &t.world, WORLD_IP, 7100), HOST_UPLINK_IP.to_string());

    // icc off holds across bridges as within one.
    t.ctl_ok(&["icc", "off"]).unwrap();
    let server = serve(&t, &ns(3), 7200, 1, "hi").unwrap();
    assert!(ask(&t, &ns(1), c(3).ip4(), 7200).is_err(), "icc off: c1 still reaches c3 across bridges");
    t.ctl_ok(&["icc", "on"]).unwrap();
    assert!(ask(&t, &ns(1), c(3).ip4(), 7200).unwrap().starts_with("hi"));
    server.join().unwrap();

    // Emptied, an overflow bridge goes, routes and all; the next container
    // takes the first bridge with room, and once all are full the lowest
    // free number opens.
    t.ctl_ok(&["container", "del", "c3"]).unwrap();
    assert!(link_exists(&t, "np0-1"), "np0-1 still holds c4");
    assert_ne!(route_dev(&t, c(3).ip4()), "np0-1", "c3's route stayed");
    assert_ne!(route_dev(&t, ip6(c(3))), "np0-1", "c3's IPv6 route stayed");
    assert!(!proxied(&t, "np0", ip6(c(3))), "np0 still answers for c3's IPv6 address");
    assert!(proxied(&t, "np0", ip6(c(4))), "np0 does not answer for c4's IPv6 address");
    t.ctl_ok(&["container", "del", "c4"]).unwrap();
    assert!(!link_exists(&t, "np0-1"), "empty np0-1 was kept");
    expect_bridges(&t, &[("np0", 2), ("np0-2", 2), ("np0-3", 1)]);
    let c8 = t.add_container(8).unwrap();
    assert_eq!(master_of(&t, &c8), "np0-3");
    let c3 = t.add_container(3).unwrap();
    assert_eq!(master_of(&t, &c3), "np0-1");
    expect_bridges(&t, &[("np0", 2), ("np0-1", 1), ("np0-2", 2), ("np0-3", 2)]);
    assert_eq!(seen_client(&t, &ns(3), &ns(8), c8.ip4(), 7302), c3.ip4().to_string());
    assert_eq!(seen_client(&t, &ns(8), &ns(1), c(1).ip4(), 7300), c8.ip4().to_string());
    assert_eq!(seen_client(&t, &ns(7), &ns(8), c8.ip4(), 7301), c(7).ip4().to_string());
    assert_eq!(seen_client(&t, &ns(3), &ns(8), ip6(&c8), 7303), ip6(&c3).to_string());
    assert_eq!(seen_client(&t, &ns(1), &ns(3), ip6(&c3), 7304), ip6(c(1)).to_string());
}

/// Does the host answer neighbour solicitations for `ip` on `bridge`?
fn proxied(t: &Topology, bridge: &str, ip: Ipv6Addr) -> bool {
    let out = t.exec(&t.host, &["ip", "-6", "neigh", "show", "proxy", "dev", bridge]).unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().any(|w| w.parse::<Ipv6Addr>() == Ok(ip))
}

#[test]
fn containers_on_overflow_bridges_reach_and_are_reached_like_any_other() {
    paths_across_bridges(true);
}

#[test]
fn containers_on_overflow_bridges_work_through_the_stack_too() {
    paths_across_bridges(false);
}

#[test]
fn a_restart_adopts_overflow_bridges_and_repairs_their_routes() {
    let mut t = topology(5, &[]);
    let cs: Vec<Container> = (1..=5).map(|i| t.add_container(i).unwrap()).collect();
    expect_bridges(&t, &[("np0", 2), ("np0-1", 2), ("np0-2", 1)]);
    t.stop_agent().unwrap();
    // Behind the agent's back: c4's route goes, a stale one appears on np0-1.
    let stale = Ipv4Addr::from(u32::from(cs[0].ip4()) + 200);
    t.exec(&t.host, &["ip", "route", "del", &format!("{}/32", cs[3].ip4())]).unwrap();
    t.exec(&t.host, &["ip", "route", "add", &format!("{stale}/32"), "dev", "np0-1"]).unwrap();
    // And over IPv6: c4's route and proxy entry go, stale ones appear.
    let stale6 = Ipv6Addr::from(u128::from(ip6(&cs[0])) + 200);
    t.exec(&t.host, &["ip", "-6", "route", "del", &format!("{}/128", ip6(&cs[3]))]).unwrap();
    t.exec(&t.host, &["ip", "-6", "neigh", "del", "proxy", &ip6(&cs[3]).to_string(), "dev", "np0"]).unwrap();
    t.exec(&t.host, &["ip", "-6", "route", "add", &format!("{stale6}/128"), "dev", "np0-1"]).unwrap();
    t.exec(&t.host, &["ip", "-6", "neigh", "add", "proxy", &stale6.to_string(), "dev", "np0"]).unwrap();
    t.start_agent().unwrap();
    expect_bridges(&t, &[("np0", 2), ("np0-1", 2), ("np0-2", 1)]);
    assert_eq!(route_dev(&t, cs[3].ip4()), "np0-1", "c4's route was not restored");
    assert_ne!(route_dev(&t, stale), "np0-1", "the stale route stayed");
    assert_eq!(route_dev(&t, ip6(&cs[3])), "np0-1", "c4's IPv6 route was not restored");
    assert!(proxied(&t, "np0", ip6(&cs[3])), "c4's proxy entry was not restored");
    assert_ne!(route_dev(&t, stale6), "np0-1", "the stale IPv6 route stayed");
    assert!(!proxied(&t, "np0", stale6), "the stale proxy entry stayed");
    let seen = seen_client(&t, &t.container_ns(1), &t.container_ns(4), ip6(&cs[3]), 7402);
    assert_eq!(seen, ip6(&cs[0]).to_string());
    let seen = seen_client(&t, &t.container_ns(1), &t.container_ns(4), cs[3].ip4(), 7400);
    assert_eq!(seen, cs[0].ip4().to_string());
    let seen = seen_client(&t, &t.container_ns(5), &t.container_ns(2), cs[1].ip4(), 7401);
    assert_eq!(seen, cs[4].ip4().to_string());
}

#[test]
fn bad_bridge_settings_are_refused_before_anything_is_created() {
    assert!(netpath_tests::is_root(), "run as root (cargo xtask test)");
    for (args, why) in [
        (&["--bridge-ports", "0"][..], "bridge_ports 0 is out of range"),
        (&["--bridge-ports", "1024"][..], "bridge_ports 1024 is out of range"),
        (&["--bridge", "br-of-fifteen"][..], "at most 12 characters"),
    ] {
        let mut t = Topology::new(0).unwrap();
        t.agent_args(args);
        let e = t.start_agent().unwrap_err().to_string();
        assert!(e.contains(why), "{args:?}: {e}");
        assert!(!link_exists(&t, "np0"), "{args:?}: a bridge was created");
    }
}
