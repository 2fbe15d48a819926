//! The CNI plugin driven directly, as a runtime drives it (env + stdin, no
//! runtime), against a sandbox host with netpathd: ADD results, DEL
//! idempotence, CHECK, GC, STATUS, failing ADDs, concurrency.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netpath_tests::{
    cni::{ask, serve, Plugin},
    topology::{footprint, Topology, HOST_UPLINK_IP, WORLD_IP},
};
use netpath_userspace::{
    cni::{container_name, error},
    model::Container,
};
use serde_json::{json, Value};

fn topology(containers: usize) -> Topology {
    assert!(netpath_tests::is_root(), "CNI tests create namespaces and load BPF: run them as root (cargo xtask test)");
    let mut t = Topology::new(containers).expect("build topology");
    t.start_agent().expect("start netpathd");
    t
}

/// A container ID as runtimes make them (64 hex digits), distinct per `n`.
fn cid(n: u32) -> String {
    format!("{n:08x}{}", "c0ffee42".repeat(7))
}

fn ports(list: &[(u16, u16)]) -> Value {
    json!({ "portMappings": list.iter().map(|(h, c)| json!({"hostPort": h, "containerPort": c, "protocol": "tcp"})).collect::<Vec<_>>() })
}

fn containers(t: &Topology) -> Vec<Container> {
    t.ctl_json(&["container", "ls"]).unwrap()
}

fn subnet(t: &Topology) -> ipnet::Ipv4Net {
    t.subnet.parse().unwrap()
}

/// Checks the shape the spec requires of an ADD result and returns the address.
fn assert_spec_valid(result: &Value, version: &str, t: &Topology, netns: &str) -> Ipv4Addr {
    assert_eq!(result["cniVersion"], version, "{result}");
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let eth0 = &ifaces[0];
    assert_eq!(eth0["name"], "eth0");
    assert_eq!(eth0["sandbox"], format!("/run/netns/{netns}"));
    let mac = eth0["mac"].as_str().expect("mac");
    assert_eq!(mac.split(':').filter(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()).count(), 6, "{mac}");
    let ip = &result["ips"][0];
    let address: ipnet::Ipv4Net = ip["address"].as_str().expect("address").parse().expect("CIDR");
    assert_eq!(address.prefix_len(), subnet(t).prefix_len());
    assert!(subnet(t).contains(&address.addr()));
    let gateway: Ipv4Addr = ip["gateway"].as_str().expect("gateway").parse().unwrap();
    assert_eq!(gateway, subnet(t).hosts().next().unwrap());
    assert_eq!(ip["interface"], 0, "the index of eth0 in interfaces");
    assert_eq!(ip.get("version").is_some(), version == "0.4.0", "0.4.0 results carry the IP version: {ip}");
    assert_eq!(result["routes"][0], json!({"dst": "0.0.0.0/0", "gw": gateway.to_string()}));
    assert!(result["dns"].is_object());
    address.addr()
}

#[test]
fn add_gives_a_spec_valid_result_and_a_working_published_port_del_leaves_nothing() {
    let t = topology(2);
    let version_out = Plugin::new(&t, "np", "1.0.0").call("VERSION", "", "", "", &json!({})).unwrap().result();
    assert_eq!(version_out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    let before = footprint(&t).unwrap();
    for (i, version) in ["1.1.0", "0.4.0"].iter().enumerate() {
        let plugin = Plugin::new(&t, "np", version);
        let ns = t.container_ns(i + 1);
        let id = cid(i as u32);
        let dns = json!({"nameservers": ["198.18.0.53"], "search": ["example"]});
        let result = plugin
            .call(
                "ADD",
                &id,
                &ns,
                "IgnoreUnknown=1;K8S_POD_NAME=web",
                &json!({"runtimeConfig": ports(&[(8080, 80)]), "dns": dns}),
            )
            .unwrap()
            .result();
        let ip = assert_spec_valid(&result, version, &t, &ns);
        assert_eq!(result["dns"], dns);
        // The kernel agrees with the result.
        let addr = t.exec(&ns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{ip}/")), "{addr:?}");
        let mac = t.exec(&ns, &["cat", "/sys/class/net/eth0/address"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&mac.stdout).trim(), result["interfaces"][0]["mac"]);
        // The published port works from outside, the client's address preserved.
        let server = serve(&t, &ns, 80, 1, "web").unwrap();
        assert_eq!(ask(&t, &t.world, HOST_UPLINK_IP, 8080).unwrap(), format!("web {WORLD_IP}"));
        server.join().unwrap();
        let c = containers(&t).into_iter().find(|c| c.name == container_name(&id, "eth0")).expect("agent knows it");
        assert_eq!(c.owner.as_deref(), Some(format!("cni:np:{id}:eth0").as_str()));
        // CHECK agrees with the result it gave.
        plugin.call("CHECK", &id, &ns, "", &json!({ "prevResult": result })).unwrap().result();

        // DEL as runtimes send it: the cached result as prevResult.
        assert!(plugin.call("DEL", &id, &ns, "IgnoreUnknown=1", &json!({ "prevResult": result })).unwrap().ok);
        assert!(!t.links(&ns).unwrap().contains(&"eth0".to_string()));
        assert_eq!(footprint(&t).unwrap(), before, "DEL leaves nothing (flows of the exchange included)");
        // Twice, and for a container the agent never knew: still success.
        assert!(plugin.del(&id, &ns).unwrap().ok);
        assert!(plugin.del(&cid(99), &ns).unwrap().ok);
        assert!(plugin.del(&cid(98), "").unwrap().ok, "DEL without CNI_NETNS");
    }
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn del_succeeds_and_cleans_up_after_an_agent_restart_and_after_the_netns_is_gone() {
    let mut t = topology(2);
    let plugin = Plugin::new(&t, "np", "1.0.0");
    let before = footprint(&t).unwrap();
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let r1 = plugin.add(&cid(1), &ns1, ports(&[(8081, 80)])).unwrap().result();
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    assert!(plugin.del(&cid(1), &ns1).unwrap().ok);
    assert_eq!(footprint(&t).unwrap(), before, "DEL after an agent restart");

    let r2 = plugin.add(&cid(2), &ns2, ports(&[(8082, 80)])).unwrap().result();
    let server = serve(&t, &ns2, 80, 1, "two").unwrap();
    assert!(ask(&t, &t.world, HOST_UPLINK_IP, 8082).unwrap().starts_with("two"));
    server.join().unwrap();
    netpath_tests::topology::cmd("ip", &["netns", "del", &ns2]).unwrap();
    assert!(plugin.del(&cid(2), &ns2).unwrap().ok, "DEL with the netns gone");
    assert_eq!(footprint(&t).unwrap(), before, "the bridge plugin leaks here; netpath must not");
    assert!(plugin.del(&cid(2), &ns2).unwrap().ok);

    // The addresses and ports are free again: both can be asked for anew.
    let ns3 = t.container_ns(1);
    let ip1 = r1["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let ip2 = r2["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let again = plugin
        .call(
            "ADD",
            &cid(3),
            &ns3,
            &format!("IgnoreUnknown=1;IP={ip2}"),
            &json!({"runtimeConfig": ports(&[(8082, 80)])}),
        )
        .unwrap()
        .result();
    assert_eq!(again["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap(), ip2);
    assert_ne!(ip1, ip2);
    assert!(plugin.del(&cid(3), &ns3).unwrap().ok);
    assert_eq!(footprint(&t).unwrap(), before);
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn check_reports_drift_as_a_cni_error() {
    let t = topology(1);
    let plugin = Plugin::new(&t, "np", "1.1.0");
    let ns = t.container_ns(1);
    let result = plugin.add(&cid(1), &ns, ports(&[(8083, 80)])).unwrap().result();
    let prev = json!({ "prevResult": result });
    plugin.call("CHECK", &cid(1), &ns, "", &prev).unwrap().result();

    // A previous result that is not what the agent set up.
    let mut wrong = result.clone();
    wrong["ips"][0]["address"] = json!("10.255.255.254/24");
    let out = plugin.call("CHECK", &cid(1), &ns, "", &json!({ "prevResult": wrong })).unwrap();
    assert_eq!(out.code(), error::CHECK_FAILED as u64, "{}", out.out);

    // The address removed inside the container.
    t.exec(&ns, &["ip", "addr", "flush", "dev", "eth0"]).unwrap();
    let out = plugin.call("CHECK", &cid(1), &ns, "", &prev).unwrap();
    assert_eq!(out.code(), error::CHECK_FAILED as u64);
    assert!(out.msg().contains("lacks address"), "{}", out.out);
    assert!(
        out.out["details"].as_str().unwrap().contains("default route"),
        "the route went with the address: {}",
        out.out
    );

    // The interface down on the host side.
    let veth = containers(&t)[0].veth.clone();
    t.exec(&t.host, &["ip", "link", "set", &veth, "down"]).unwrap();
    let out = plugin.call("CHECK", &cid(1), &ns, "", &prev).unwrap();
    assert!(out.out["details"].as_str().unwrap().contains("is down"), "{}", out.out);

    // An attachment the agent does not know.
    let out = plugin.call("CHECK", &cid(2), &ns, "", &prev).unwrap();
    assert_eq!(out.code(), error::UNKNOWN_CONTAINER as u64);
    assert!(plugin.del(&cid(1), &ns).unwrap().ok);
}

#[test]
fn gc_removes_attachments_not_in_the_valid_list_of_its_own_network_only() {
    let t = topology(4);
    let plugin = Plugin::new(&t, "np", "1.1.0");
    let other = Plugin::new(&t, "other", "1.1.0");
    let before = footprint(&t).unwrap();
    for i in 1..=3 {
        plugin.add(&cid(i), &t.container_ns(i as usize), ports(&[(9000 + i as u16, 80)])).unwrap().result();
    }
    other.add(&cid(4), &t.container_ns(4), json!({})).unwrap().result();
    let valid = json!({ "cni.dev/valid-attachments": [
        {"containerID": cid(1), "ifname": "eth0"},
        {"containerID": cid(3), "ifname": "eth0"},
    ]});
    plugin.call("GC", "", "", "", &valid).unwrap().result();
    let mut names: Vec<String> = containers(&t).into_iter().map(|c| c.name).collect();
    names.sort();
    let mut expected =
        vec![container_name(&cid(1), "eth0"), container_name(&cid(3), "eth0"), container_name(&cid(4), "eth0")];
    expected.sort();
    assert_eq!(names, expected, "GC of network np keeps its valid ones and the other network's");
    assert!(!t.links(&t.container_ns(2)).unwrap().contains(&"eth0".to_string()));
    let mappings: Vec<netpath_userspace::model::Mapping> = t.ctl_json(&["maps"]).unwrap();
    assert_eq!(mappings.iter().map(|m| m.host_port).collect::<Vec<_>>(), vec![9001, 9003]);
    // The GC route does not shadow a container named "gc".
    t.ctl_ok(&["container", "add", "gc", "--netns", &t.container_ns(2)]).unwrap();
    t.ctl_ok(&["container", "show", "gc"]).unwrap();
    t.ctl_ok(&["container", "del", "gc"]).unwrap();
    // An empty valid list collects the rest of the network.
    plugin.call("GC", "", "", "", &json!({})).unwrap().result();
    other.call("GC", "", "", "", &json!({})).unwrap().result();
    assert_eq!(footprint(&t).unwrap(), before);
}

#[test]
fn add_and_del_ride_out_an_agent_restart() {
    let mut t = topology(2);
    let plugin = Plugin::new(&t, "np", "1.1.0");
    // A crash (the socket is left behind, refusing) and a stop (no socket):
    // the runtime's ADD or DEL meanwhile waits for the agent that comes back.
    for (i, crash) in [true, false].into_iter().enumerate() {
        if crash {
            t.kill_agent().unwrap();
            assert!(t.socket().exists(), "a killed agent leaves its socket");
        } else {
            t.stop_agent().unwrap();
        }
        let (id, ns) = (cid(10 + i as u32), t.container_ns(i + 1));
        let add = {
            let (plugin, id, ns) = (Plugin { conf: plugin.conf.clone() }, id.clone(), ns.clone());
            std::thread::spawn(move || (plugin.add(&id, &ns, ports(&[(9090 + i as u16, 80)])).unwrap(), Instant::now()))
        };
        std::thread::sleep(Duration::from_millis(1500));
        let agent_back = Instant::now();
        t.start_agent().unwrap();
        let (out, finished) = add.join().unwrap();
        assert!(finished > agent_back, "ADD finished before the agent was started again: {}", out.out);
        let result = out.result();
        assert_spec_valid(&result, "1.1.0", &t, &ns);
        assert!(containers(&t).iter().any(|c| c.name == container_name(&id, "eth0")), "attached once the agent was up");

        t.kill_agent().unwrap();
        let del = {
            let (plugin, id, ns) = (Plugin { conf: plugin.conf.clone() }, id.clone(), ns.clone());
            std::thread::spawn(move || (plugin.del(&id, &ns).unwrap(), Instant::now()))
        };
        std::thread::sleep(Duration::from_millis(500));
        let agent_back = Instant::now();
        t.start_agent().unwrap();
        let (out, finished) = del.join().unwrap();
        assert!(out.ok && finished > agent_back, "DEL waited for the agent: {}", out.out);
        assert!(containers(&t).is_empty(), "removed once the agent was up");
    }
}

#[test]
fn status_says_whether_the_agent_is_up_and_add_asks_to_try_again() {
    let mut t = topology(1);
    let plugin = Plugin::new(&t, "np", "1.1.0");
    plugin.call("STATUS", "", "", "", &json!({})).unwrap().result();
    t.stop_agent().unwrap();
    // STATUS answers at once: it is how a runtime asks whether the agent is up.
    let asked = Instant::now();
    let out = plugin.call("STATUS", "", "", "", &json!({})).unwrap();
    assert!(asked.elapsed() < Duration::from_secs(2), "STATUS waited {:?}", asked.elapsed());
    assert_eq!(out.code(), error::NOT_AVAILABLE as u64);
    assert!(out.msg().contains(&t.socket().display().to_string()), "names the socket: {}", out.out);
    // ADD and DEL wait for the agent (agentWaitSeconds), then ask to try again.
    let impatient = Plugin { conf: plugin.conf_with(&json!({"agentWaitSeconds": 1})) };
    let asked = Instant::now();
    let out = impatient.add(&cid(1), &t.container_ns(1), json!({})).unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(700), "ADD gave up after {:?}", asked.elapsed());
    assert_eq!(out.code(), error::TRY_AGAIN_LATER as u64);
    assert!(out.msg().contains("netpathd is not running"), "{}", out.out);
    assert!(out.out["details"].as_str().unwrap_or_default().contains("after waiting"), "{}", out.out);
    assert_eq!(impatient.del(&cid(1), &t.container_ns(1)).unwrap().code(), error::TRY_AGAIN_LATER as u64);
    t.start_agent().unwrap();
    plugin.call("STATUS", "", "", "", &json!({})).unwrap().result();
    // Bad configurations get the spec's codes.
    let old = Plugin::new(&t, "np", "0.3.1").call("ADD", &cid(1), &t.container_ns(1), "", &json!({})).unwrap();
    assert_eq!(old.code(), error::INCOMPATIBLE_VERSION as u64);
    assert_eq!(old.out["cniVersion"], "1.1.0");
    let no_netns = plugin.add(&cid(1), "", json!({})).unwrap();
    assert_eq!(no_netns.code(), error::INVALID_ENVIRONMENT as u64);
    assert!(containers(&t).is_empty());
}

#[test]
fn a_failing_add_leaves_nothing_behind() {
    let t = topology(3);
    let plugin = Plugin::new(&t, "np", "1.0.0");
    let (ns1, ns2) = (t.container_ns(1), t.container_ns(2));
    let first = plugin.add(&cid(1), &ns1, ports(&[(8090, 80)])).unwrap().result();
    let ip1 = first["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let mac1 = first["interfaces"][0]["mac"].as_str().unwrap().to_string();
    let with_one = footprint(&t).unwrap();
    let host_links = t.links(&t.host).unwrap();

    let cases: Vec<(&str, String, Value, u32)> = vec![
        ("address in use", format!("IP={ip1}"), json!({}), error::ADDRESS_IN_USE),
        ("port published by another container", String::new(), ports(&[(8091, 81), (8090, 80)]), error::PORT_IN_USE),
        ("port twice in one request", String::new(), ports(&[(8092, 80), (8092, 81)]), error::PORT_IN_USE),
        ("MAC in use", format!("MAC={mac1}"), json!({}), error::MAC_IN_USE),
        ("multicast MAC", "MAC=01:00:5e:00:00:01".into(), json!({}), error::INVALID_CONFIG),
        ("address outside the subnet", "IP=192.0.2.9".into(), json!({}), error::INVALID_CONFIG),
    ];
    for (what, args, runtime_config, code) in cases {
        let out = plugin
            .call("ADD", &cid(2), &ns2, &format!("IgnoreUnknown=1;{args}"), &json!({ "runtimeConfig": runtime_config }))
            .unwrap();
        assert_eq!(out.code(), code as u64, "{what}: {}", out.out);
        assert_eq!(footprint(&t).unwrap(), with_one, "{what}: nothing left");
        assert!(!t.links(&ns2).unwrap().contains(&"eth0".to_string()), "{what}");
        // The runtime follows a failed ADD with a DEL: fine too.
        assert!(plugin.del(&cid(2), &ns2).unwrap().ok);
    }
    // The same attachment twice, and a netns that is gone.
    assert_eq!(plugin.add(&cid(1), &ns1, json!({})).unwrap().code(), error::ALREADY_ATTACHED as u64);
    let gone = plugin.add(&cid(3), &format!("{}-nonexistent", t.prefix), json!({})).unwrap();
    assert_eq!(gone.code(), error::INVALID_ENVIRONMENT as u64);
    assert!(gone.msg().contains("does not exist"), "{}", gone.out);
    assert_eq!(footprint(&t).unwrap(), with_one);
    assert_eq!(t.links(&t.host).unwrap(), host_links);
    // A successful ADD afterwards is unaffected.
    let ok = plugin.add(&cid(2), &ns2, ports(&[(8091, 80)])).unwrap().result();
    assert_ne!(ok["ips"][0]["address"], first["ips"][0]["address"]);
    assert!(plugin.del(&cid(1), &ns1).unwrap().ok && plugin.del(&cid(2), &ns2).unwrap().ok);
}

#[test]
fn twenty_concurrent_adds_get_distinct_addresses_and_working_ports() {
    const N: usize = 20;
    let t = topology(N);
    let plugin = Plugin::new(&t, "np", "1.0.0");
    let before = footprint(&t).unwrap();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=N)
            .map(|i| {
                let (plugin, ns) = (&plugin, t.container_ns(i));
                s.spawn(move || plugin.add(&cid(i as u32), &ns, ports(&[(10000 + i as u16, 80)])).unwrap().result())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results.iter().map(|r| r["ips"][0]["address"].as_str().unwrap().to_string()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), N, "distinct addresses: {ips:?}");
    for i in 1..=N {
        let server = serve(&t, &t.container_ns(i), 80, 1, &format!("c{i}")).unwrap();
        assert_eq!(ask(&t, &t.world, HOST_UPLINK_IP, 10000 + i as u16).unwrap(), format!("c{i} {WORLD_IP}"));
        server.join().unwrap();
    }
    std::thread::scope(|s| {
        for i in 1..=N {
            let (plugin, ns) = (&plugin, t.container_ns(i));
            s.spawn(move || assert!(plugin.del(&cid(i as u32), &ns).unwrap().ok));
        }
    });
    assert_eq!(footprint(&t).unwrap(), before);
    t.assert_no_netfilter_rules().unwrap();
}
