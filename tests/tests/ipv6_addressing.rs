//! IPv6 addressing, the agent's side: with `subnet6` (a unique local /64 of
//! the instance's own by default) a container gets its address, default
//! route and EUI-64 link-local, the bridge the gateway, and the datapath's
//! maps the container's IPv6 address and the subnet; with `subnet6 none`
//! IPv6 stays off in containers. Traffic is
//! not tested here: the datapath's IPv6 paths are tested on their own.

use std::net::Ipv6Addr;

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use ipnet::Ipv6Net;
use netpath_common::{family::link_local_of, ContainerEntry, DatapathConfig, HostAddr, In6Addr};
use netpath_tests::topology::{cmd, Topology, HOST_UPLINK};
use netpath_userspace::{
    agent::parse_mac,
    model::{CheckReport, Container},
};

/// A topology with its agent; with `ipv6`, an IPv6 subnet of its own
/// (namespaces keep them apart; distinct ones make mix-ups visible),
/// without, `--subnet6 none`.
fn topology(containers: usize, ipv6: bool) -> (Topology, Option<Ipv6Net>) {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(containers).expect("build topology");
    let third = t.subnet.split('.').nth(2).unwrap_or("0").to_string();
    let subnet6: Option<Ipv6Net> = ipv6.then(|| format!("fd00:77:{third}::/64").parse().unwrap());
    let arg = subnet6.map_or("none".to_string(), |net| net.to_string());
    t.agent_args(&["--subnet6", &arg]);
    t.start_agent().expect("start netpathd");
    (t, subnet6)
}

fn sysctl(t: &Topology, ns: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let out = t.exec(ns, &["cat", &path]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ip -6 -j addr show dev DEV` in `ns`: (address, prefix length) pairs.
fn ipv6_addrs(t: &Topology, ns: &str, dev: &str) -> Vec<(Ipv6Addr, u8)> {
    let out = t.exec(ns, &["ip", "-6", "-j", "addr", "show", "dev", dev]).unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut addrs = vec![];
    for link in links.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                addrs.push((local.parse().unwrap(), len as u8));
            }
        }
    }
    addrs
}

fn container_entry(t: &Topology, c: &Container) -> ContainerEntry {
    let data = MapData::from_pin(t.pin_dir().join("maps").join("CONTAINERS")).unwrap();
    let map: BpfHashMap<MapData, u32, ContainerEntry> = BpfHashMap::try_from(Map::HashMap(data)).unwrap();
    map.get(&c.ifindex, 0).unwrap()
}

fn datapath_config(t: &Topology) -> DatapathConfig {
    let data = MapData::from_pin(t.pin_dir().join("maps").join("CONFIG")).unwrap();
    let map: Array<MapData, DatapathConfig> = Array::try_from(Map::Array(data)).unwrap();
    map.get(&0, 0).unwrap()
}

/// `GET /v1/containers/NAME/check` over the agent's socket.
fn check(t: &Topology, name: &str) -> CheckReport {
    let socket = t.socket().display().to_string();
    let url = format!("http://localhost/v1/containers/{name}/check");
    let out = cmd("curl", &["-sS", "--fail", "--unix-socket", &socket, &url]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn with_subnet6_a_container_gets_its_address_route_and_link_local() {
    let (mut t, net) = topology(2, true);
    let net = net.unwrap();
    let gateway6 = Ipv6Addr::from(u128::from(net.network()) + 1);
    let first = Ipv6Addr::from(u128::from(net.network()) + 2);

    let c1 = t.add_container(1).unwrap();
    assert_eq!(c1.ip6, Some(first), "the first address after the gateway");
    let ns = t.container_ns(1);
    // The container's side: IPv6 on, no DAD, no RAs, EUI-64 link-local.
    for (key, want) in [
        ("net.ipv6.conf.eth0.disable_ipv6", "0"),
        ("net.ipv6.conf.eth0.accept_dad", "0"),
        ("net.ipv6.conf.eth0.accept_ra", "0"),
        ("net.ipv6.conf.eth0.addr_gen_mode", "0"),
    ] {
        assert_eq!(sysctl(&t, &ns, key), want, "{key}");
    }
    let link_local = Ipv6Addr::from(link_local_of(parse_mac(&c1.mac).unwrap()));
    let addrs = ipv6_addrs(&t, &ns, "eth0");
    assert!(addrs.contains(&(first, 64)), "{addrs:?}");
    assert!(addrs.contains(&(link_local, 64)), "the link-local anti-spoofing allows: {addrs:?}");
    let routes = t.exec(&ns, &["ip", "-6", "route", "show", "default"]).unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(routes.contains(&format!("via {gateway6} dev eth0")), "{routes}");
    // The agent's check (what a runtime's CHECK asks) finds both default
    // routes, and names the IPv6 one once it is gone.
    assert_eq!(check(&t, "c1").problems, Vec::<String>::new());
    t.exec(&ns, &["ip", "-6", "route", "del", "default"]).unwrap();
    let problems = check(&t, "c1").problems;
    assert!(problems.iter().any(|p| p.contains(&format!("no IPv6 default route via {gateway6}"))), "{problems:?}");
    t.exec(&ns, &["ip", "-6", "route", "add", "default", "via", &gateway6.to_string(), "dev", "eth0"]).unwrap();
    assert_eq!(check(&t, "c1").problems, Vec::<String>::new());

    // The host's side: the gateway on the bridge, forwarding on, the
    // container's veth without IPv6.
    let bridge = ipv6_addrs(&t, &t.host, "np0");
    assert!(bridge.contains(&(gateway6, 64)), "{bridge:?}");
    assert_eq!(sysctl(&t, &t.host, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl(&t, &t.host, &format!("net.ipv6.conf.{}.disable_ipv6", c1.veth)), "1");

    // The datapath's maps.
    let entry = container_entry(&t, &c1);
    assert!(entry.has_ipv6() && entry.has_ipv4(), "flags {:#x}", entry.flags);
    assert_eq!(Ipv6Addr::from(entry.ipv6), first);
    let cfg = datapath_config(&t);
    assert_eq!(
        (Ipv6Addr::from(cfg.subnet6), cfg.subnet6_prefix, Ipv6Addr::from(cfg.gateway6)),
        (net.network(), 64, gateway6)
    );
    let data = MapData::from_pin(t.pin_dir().join("maps").join("HOST_ADDRS6")).unwrap();
    let host_addrs6: BpfHashMap<MapData, [u8; 16], HostAddr> = BpfHashMap::try_from(Map::HashMap(data)).unwrap();
    assert!(host_addrs6.get(&gateway6.octets(), 0).is_ok(), "the gateway is a host address");

    // An explicit address; one in use or outside the subnet is refused.
    let wanted = Ipv6Addr::from(u128::from(net.network()) + 0x99);
    let c2: Container =
        t.ctl_json(&["container", "add", "c2", "--netns", &t.container_ns(2), "--ip6", &wanted.to_string()]).unwrap();
    assert_eq!(c2.ip6, Some(wanted));
    assert!(ipv6_addrs(&t, &t.container_ns(2), "eth0").contains(&(wanted, 64)));
    let extra = t.new_netns("c3").unwrap();
    let e = t.ctl_err(&["container", "add", "c3", "--netns", &extra, "--ip6", &first.to_string()]).unwrap();
    assert!(e.contains("already in use by container \"c1\""), "{e}");
    let e = t.ctl_err(&["container", "add", "c3", "--netns", &extra, "--ip6", "fd00:1::5"]).unwrap();
    assert!(e.contains("outside the container subnet"), "{e}");
    let e = t.ctl_err(&["container", "add", "c3", "--netns", &extra, "--ip6", &gateway6.to_string()]).unwrap();
    assert!(e.contains("reserved"), "{e}");

    // IPv6 policy rules go into POLICY6 (and out again); a rule mixing the
    // families is refused.
    let map_entries = |t: &Topology, name: &str| {
        let st: netpath_userspace::model::Status = t.ctl_json(&["status"]).unwrap();
        st.maps.iter().find(|m| m.name == name).map(|m| m.entries)
    };
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", "fd00:99::/64", "tcp/22"]).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "allow", "in", "::/0", "icmp/128"]).unwrap();
    assert_eq!(map_entries(&t, "POLICY6"), Some(2));
    assert_eq!(map_entries(&t, "POLICY4"), Some(0));
    let e = t.ctl_err(&["policy", "add", "c1", "allow", "in", "10.0.0.0/8", "icmpv6"]).unwrap();
    assert!(e.contains("mixed address families"), "{e}");
    t.ctl_ok(&["policy", "rm", "c1", "deny", "in", "fd00:99::/64", "tcp/22"]).unwrap();
    // `icmp` on an IPv6 prefix is kept under ICMPv6's one name: listed so,
    // clashing with the same rule spelt `icmpv6`.
    let listed: netpath_userspace::model::PolicyView = t.ctl_json(&["policy", "ls", "c1"]).unwrap();
    let protos: Vec<_> = listed.policy.rules.iter().map(|r| r.proto).collect();
    assert_eq!(protos, [Some(netpath_userspace::policy::RuleProto::Icmpv6)]);
    let e = t.ctl_err(&["policy", "add", "c1", "deny", "in", "::/0", "icmpv6/128"]).unwrap();
    assert!(e.contains("conflict"), "{e}");
    assert_eq!(map_entries(&t, "POLICY6"), Some(1));
    assert!(map_entries(&t, "CT6").is_some(), "status lists CT6");
    let _: Vec<netpath_userspace::model::Flow> = t.ctl_json(&["conntrack"]).unwrap();

    // Listings carry it; a restarted agent keeps it and hands out the next.
    let listed: Vec<Container> = t.ctl_json(&["container", "ls"]).unwrap();
    assert_eq!(listed.iter().find(|c| c.name == "c1").and_then(|c| c.ip6), Some(first));
    let table = t.ctl_ok(&["container", "ls"]).unwrap();
    assert!(table.contains("IP6") && table.contains(&first.to_string()), "{table}");
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    assert_eq!(Ipv6Addr::from(container_entry(&t, &c1).ipv6), first, "rewritten at the restart");
    assert_eq!(map_entries(&t, "POLICY6"), Some(1), "the IPv6 rule is reconciled, not dropped");
    let c3: Container = t.ctl_json(&["container", "add", "c3", "--netns", &extra]).unwrap();
    assert_eq!(c3.ip6, Some(Ipv6Addr::from(u128::from(net.network()) + 3)));

    // Removal gives the address back (to the end of the queue).
    t.ctl_ok(&["container", "del", "c1"]).unwrap();
    let state = std::fs::read_to_string(t.run_dir().join("state").join("journal.jsonl")).unwrap_or_default()
        + &std::fs::read_to_string(t.run_dir().join("state").join("state.json")).unwrap_or_default();
    assert!(state.contains(&first.to_string()), "the release is recorded: {state}");
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn by_default_containers_get_ipv6_from_a_ula_64_of_the_instance() {
    assert!(netpath_tests::is_root(), "topology tests run as root");
    let mut t = Topology::new(1).expect("build topology");
    let ra = format!("net.ipv6.conf.{HOST_UPLINK}.accept_ra");
    let ra = ra.as_str();
    let host = t.host.clone();
    assert_eq!(sysctl(&t, &host, ra), "1", "the uplink listens to RAs before the agent starts");
    t.start_agent().expect("start netpathd");
    let status = t.ctl_ok(&["status"]).unwrap();
    let subnet: Ipv6Net = status
        .lines()
        .find_map(|l| l.strip_prefix("ipv6")?.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("status names the IPv6 subnet: {status}"));
    assert_eq!((subnet.prefix_len(), subnet.network().segments()[0] >> 8), (64, 0xfd), "a ULA /64: {subnet}");
    let c1 = t.add_container(1).unwrap();
    let ip6 = c1.ip6.expect("an IPv6 address by default");
    assert!(subnet.contains(&ip6), "{ip6} in {subnet}");
    assert!(ipv6_addrs(&t, &t.container_ns(1), "eth0").contains(&(ip6, 64)));
    // The agent's namespace forwards IPv6, and its uplink keeps listening
    // to router advertisements (2: even while forwarding).
    assert_eq!(sysctl(&t, &host, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl(&t, &host, ra), "2");
    // The same subnet after a restart: addresses in state stay valid.
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    assert!(t.ctl_ok(&["status"]).unwrap().contains(&subnet.to_string()));
}

#[test]
fn with_subnet6_none_ipv6_stays_off() {
    let (mut t, _) = topology(1, false);
    let c1 = t.add_container(1).unwrap();
    assert_eq!(c1.ip6, None);
    let ns = t.container_ns(1);
    assert_eq!(sysctl(&t, &ns, "net.ipv6.conf.eth0.disable_ipv6"), "1");
    assert!(ipv6_addrs(&t, &ns, "eth0").is_empty());
    let entry = container_entry(&t, &c1);
    assert!(!entry.has_ipv6() && entry.ipv6 == In6Addr::UNSPECIFIED, "flags {:#x}", entry.flags);
    let cfg = datapath_config(&t);
    assert_eq!((cfg.subnet6_prefix, cfg.subnet6, cfg.gateway6), (0, In6Addr::UNSPECIFIED, In6Addr::UNSPECIFIED));
    let extra = t.new_netns("c2").unwrap();
    let e = t.ctl_err(&["container", "add", "c2", "--netns", &extra, "--ip6", "fd00::5"]).unwrap();
    assert!(e.contains("no IPv6 subnet"), "{e}");
    let json = t.ctl_ok(&["container", "ls", "-o", "json"]).unwrap();
    assert!(!json.contains("ip6"), "no ip6 key without an address: {json}");
}

#[test]
fn a_bad_subnet6_is_refused_at_start() {
    assert!(netpath_tests::is_root(), "topology tests run as root");
    let mut t = Topology::new(0).expect("build topology");
    t.agent_args(&["--subnet6", "fe80::/64"]);
    let e = format!("{:#}", t.start_agent().unwrap_err());
    assert!(e.contains("neither a unique local"), "{e}");
}
