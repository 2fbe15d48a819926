//! Running netpath as an operator does: checking a config before it is
//! used, removing an instance without a trace, reloading the config file,
//! scraping metrics and reading structured logs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use netpath_tests::topology::{bin_dir, Topology, HOST_UPLINK};
use netpath_userspace::{config::instance_lock, model::Status};

fn topology(containers: usize) -> Topology {
    assert!(
        netpath_tests::is_root(),
        "topology tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    Topology::new(containers).expect("build topology")
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_config_validates_the_shipped_files_and_names_what_is_wrong_without_touching_the_host() {
    let dir = std::env::temp_dir().join(format!("{}-check-config", netpath_tests::topology::run_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_dir = dir.join("state");
    let check = |config: &Path| {
        Command::new(bin_dir().join("netpathd"))
            .args(["--config", config.to_str().unwrap(), "--state-dir", state_dir.to_str().unwrap(), "--check-config"])
            .output()
            .unwrap()
    };
    // The example config the README installs, with the unit's own flags.
    let unit = std::fs::read_to_string(repo_file("dist/netpathd.service")).unwrap();
    let pre = unit.lines().find_map(|l| l.strip_prefix("ExecStartPre=")).expect("the unit checks its config first");
    assert!(pre.ends_with("--check-config"), "{pre}");
    assert!(unit.lines().any(|l| l.starts_with("ExecStart=/usr/local/bin/netpathd --config ")), "{unit}");
    assert!(unit.lines().any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    let out = check(&repo_file("dist/netpathd.toml"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"), "{}", text(&out));

    let bad = dir.join("bad.toml");
    for (config, named) in [
        ("subnet = \"10.0.0.0/33\"\n", "subnet"),
        ("subnet = \"10.0.0.1/24\"\n", "host bits"),
        ("bridges = \"np0\"\n", "bridges"),
        ("[conntrack]\nudp = 0\n", "conntrack.udp"),
        ("masquerade_ports = \"40000-30000\"\n", "masquerade_ports"),
    ] {
        std::fs::write(&bad, config).unwrap();
        let out = check(&bad);
        assert!(!out.status.success(), "{config:?} passed: {}", text(&out));
        let msg = text(&out);
        assert!(msg.contains(named) && msg.contains("bad.toml"), "{config:?}: {msg}");
    }
    assert!(!state_dir.exists(), "--check-config created the state directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sysctls of the host namespace the agent changes.
fn host_sysctls(t: &Topology) -> Vec<String> {
    [
        "/proc/sys/net/ipv4/ip_forward".to_string(),
        "/proc/sys/net/ipv6/conf/all/forwarding".to_string(),
        format!("/proc/sys/net/ipv6/conf/{HOST_UPLINK}/accept_ra"),
        "/proc/sys/net/ipv4/ip_local_reserved_ports".to_string(),
    ]
    .iter()
    .map(|p| format!("{p}={}", t.in_ns(&t.host, || Ok(std::fs::read_to_string(p)?)).unwrap().trim()))
    .collect()
}

fn bpf_object_exists(kind: &str, id: u32) -> bool {
    Command::new("bpftool").args([kind, "show", "id", &id.to_string()]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn uninstall_removes_every_trace_of_the_instance_and_is_refused_while_the_agent_runs() {
    let mut t = topology(2);
    t.add_ipv6_uplink().unwrap();
    let links_before = t.links(&t.host).unwrap();
    let sysctls_before = host_sysctls(&t);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    // In the host's ephemeral range: reserved from it while published.
    t.ctl_ok(&["map", "40000:c1:80"]).unwrap();
    t.ctl_ok(&["map", "8080:c2:80/udp"]).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", "10.0.0.0/8"]).unwrap();
    assert_ne!(host_sysctls(&t), sysctls_before, "the agent changed no sysctl: the test checks nothing");
    let status: Status = t.ctl_json(&["status"]).unwrap();
    let programs: Vec<u32> = status.programs.iter().map(|p| p.id).collect();
    let maps: Vec<u32> = status.maps.iter().map(|m| m.id).collect();
    assert!(!programs.is_empty() && !maps.is_empty());

    // While the agent runs: refused, nothing changes.
    let out = t.netpathd(&["uninstall"]).unwrap();
    assert!(!out.status.success(), "uninstall under a running agent: {}", text(&out));
    assert!(text(&out).contains("in use by another netpathd"), "{}", text(&out));
    assert_eq!(t.ctl_json::<Status>(&["status"]).unwrap().containers.len(), 2);
    assert!(t.pin_dir().exists());

    t.stop_agent().unwrap();
    let out = t.netpathd(&["uninstall"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("uninstalled") && said.contains("deleted bridge np0"), "{said}");

    assert!(!t.pin_dir().exists(), "pins left: {}", t.pin_dir().display());
    assert_eq!(t.links(&t.host).unwrap(), links_before, "interfaces left in the host namespace");
    for i in 1..=2 {
        assert_eq!(t.links(&t.container_ns(i)).unwrap(), ["lo"], "container {i} keeps an interface");
    }
    assert_eq!(host_sysctls(&t), sysctls_before, "sysctls not restored: {said}");
    // Programs and maps are freed once nothing holds them: no attachment,
    // on any interface or cgroup, is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || -> Vec<String> {
        programs
            .iter()
            .filter(|id| bpf_object_exists("prog", **id))
            .map(|id| format!("prog {id}"))
            .chain(maps.iter().filter(|id| bpf_object_exists("map", **id)).map(|id| format!("map {id}")))
            .collect()
    };
    while !alive().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(alive(), Vec::<String>::new(), "BPF objects still held");
    assert!(!t.state_dir().exists(), "state left: {:?}", std::fs::read_dir(t.state_dir()).map(|d| d.count()));
    assert!(!t.socket().exists());
    assert!(!instance_lock(t.instance()).exists());

    // A second uninstall finds nothing and says so without failing; a new
    // agent starts from scratch.
    let out = t.netpathd(&["uninstall"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    t.start_agent().unwrap();
    assert!(t.ctl_json::<Status>(&["status"]).unwrap().containers.is_empty());
}

fn status(t: &Topology) -> Status {
    t.ctl_json(&["status"]).unwrap()
}

#[test]
fn a_reload_applies_what_can_change_at_run_time_and_refuses_the_rest_by_name() {
    let mut t = topology(2);
    let config = t.run_dir().join("netpathd.toml");
    std::fs::write(&config, "icc = true\n[conntrack]\nudp = 60\n").unwrap();
    t.agent_args(&["--config", config.to_str().unwrap()]);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    let c2 = t.add_container(2).unwrap();
    let c2_ip = c2.ip.unwrap().to_string();
    assert!(t.ping(&t.container_ns(1), &c2_ip, 1).unwrap(), "icc on: c1 reaches c2");
    assert!(!status(&t).routed);

    // SIGHUP: icc off, routed on, a shorter UDP timeout.
    std::fs::write(&config, "icc = false\nrouted = true\n[conntrack]\nudp = 7\n").unwrap();
    t.signal_agent(nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&t).icc && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status(&t);
    assert!(
        !st.icc && st.routed,
        "SIGHUP did not apply icc/routed: {}",
        std::fs::read_to_string(t.agent_log()).unwrap()
    );
    assert!(!t.ping(&t.container_ns(1), &c2_ip, 1).unwrap(), "icc off after the reload: c1 still reaches c2");
    // New UDP flows take the new timeout in the datapath.
    t.in_ns(&t.container_ns(1), || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        s.send_to(b"x", (netpath_tests::topology::WORLD_IP, 5353))?;
        Ok(())
    })
    .unwrap();
    let flows: Vec<netpath_userspace::model::Flow> = t.ctl_json(&["conntrack"]).unwrap();
    let udp: Vec<_> = flows.iter().filter(|f| f.proto == "udp").collect();
    assert!(!udp.is_empty() && udp.iter().all(|f| f.expires_in <= 7), "{udp:?}");
    let log = std::fs::read_to_string(t.agent_log()).unwrap();
    assert!(log.contains("configuration reloaded") && log.contains("conntrack.udp: 60 -> 7"), "{log}");

    // Settings that need a restart: refused by name, nothing changes.
    std::fs::write(&config, "icc = true\nmtu = 1400\nbridge_ports = 10\n").unwrap();
    let err = t.ctl_err(&["reload"]).unwrap();
    assert!(
        err.contains("bridge_ports, mtu cannot change while netpathd runs") && err.contains("nothing changed"),
        "{err}"
    );
    assert!(!status(&t).icc, "a refused reload changed icc");
    t.signal_agent(nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(t.agent_log()).unwrap().contains("SIGHUP: reload refused") {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(t.agent_log()).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A file that does not parse: named, nothing changes.
    std::fs::write(&config, "icc = maybe\n").unwrap();
    let err = t.ctl_err(&["reload"]).unwrap();
    assert!(err.contains("netpathd.toml"), "{err}");
    // Back to icc on through the API; the answer says what changed.
    std::fs::write(&config, "icc = true\nrouted = true\n[conntrack]\nudp = 7\n").unwrap();
    assert_eq!(t.ctl_ok(&["reload"]).unwrap().trim(), "icc: false -> true");
    assert!(t.ping(&t.container_ns(1), &c2_ip, 1).unwrap(), "icc on again: c1 reaches c2");
    assert!(t.agent_alive());
}

/// The value of the sample `series` (name and labels as written) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[test]
fn metrics_show_traffic_drops_flows_conntrack_maps_and_the_api_on_the_socket_and_a_tcp_address() {
    use netpath_tests::topology::{HOST_UPLINK_IP, WORLD_IP};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    let mut t = topology(2);
    let config = t.run_dir().join("netpathd.toml");
    std::fs::write(&config, "[conntrack]\ngc_interval = 1\n").unwrap();
    t.agent_args(&["--config", config.to_str().unwrap(), "--metrics-address", "127.0.0.1:9477"]);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.add_container(2).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["policy", "add", "c2", "deny", "out", "198.18.0.0/24"]).unwrap();
    // A published flow held open, a masqueraded one, and packets dropped by policy.
    let listener = t.in_ns(&t.container_ns(1), || Ok(TcpListener::bind(("0.0.0.0", 80))?)).unwrap();
    let _client = t.in_ns(&t.world, || Ok(TcpStream::connect((HOST_UPLINK_IP, 8080))?)).unwrap();
    let _server = listener.accept().unwrap();
    let masq = t.in_ns(&t.container_ns(1), || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    masq.send_to(b"x", (WORLD_IP, 5353)).unwrap();
    assert!(!t.ping(&t.container_ns(2), &WORLD_IP.to_string(), 2).unwrap());

    // Flows per mapping come from the GC's walk (every second here).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mapping = "netpath_mapping_flows{mapping=\"8080:c1:80/tcp\",id=\"1\",container=\"c1\"}";
    let mut scrape = t.metrics().unwrap();
    while sample(&scrape, mapping) != Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        scrape = t.metrics().unwrap();
    }
    let has = |series: &str, pred: &dyn Fn(f64) -> bool| {
        let v = sample(&scrape, series);
        assert!(v.is_some_and(pred), "{series} = {v:?} in:\n{scrape}");
    };
    has(mapping, &|v| v == 1.0);
    has("netpath_container_packets_total{container=\"c1\",direction=\"rx\"}", &|v| v >= 2.0);
    has("netpath_container_bytes_total{container=\"c1\",direction=\"tx\"}", &|v| v > 0.0);
    has("netpath_container_drops_total{container=\"c2\",reason=\"policy\"}", &|v| v >= 2.0);
    has("netpath_container_packets_total{container=\"uplink\",direction=\"rx\"}", &|v| v >= 1.0);
    has("netpath_masquerade_flows", &|v| v >= 1.0);
    has("netpath_masquerade_busiest_destination_ports", &|v| v >= 1.0);
    has("netpath_masquerade_destinations{ports_in_use=\"1\"}", &|v| v >= 1.0);
    has("netpath_masquerade_destinations{ports_in_use=\"over-10000\"}", &|v| v == 0.0);
    has("netpath_masquerade_ports", &|v| v == 31744.0);
    has("netpath_conntrack_entries", &|v| v >= 4.0);
    has("netpath_conntrack_inserts_total", &|v| v >= 4.0);
    has("netpath_conntrack_gc_runs_total", &|v| v >= 1.0);
    has("netpath_conntrack_gc_last_duration_seconds", &|v| v > 0.0);
    has("netpath_map_entries{map=\"MAPPINGS4\"}", &|v| v == 1.0);
    has("netpath_map_max_entries{map=\"CT4\"}", &|v| v == 262144.0);
    has("netpath_containers", &|v| v == 2.0);
    has("netpath_mappings", &|v| v == 1.0);
    has("netpath_agent_starts_total", &|v| v == 1.0);
    has("netpath_api_requests_total{method=\"POST\",route=\"/v1/mappings\",code=\"201\"}", &|v| v == 1.0);
    has("netpath_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/containers\"}", &|v| v == 2.0);
    // Conventions: every family is netpath's, counters end in _total.
    for line in scrape.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(name.starts_with("netpath_"), "{line}");
        if kind == "counter" {
            assert!(scrape.contains(&format!("\n{name}_total")), "{line}");
        }
    }
    assert!(scrape.ends_with("# EOF\n"));

    // The TCP address serves /metrics and nothing else of the API.
    let over_tcp = t.exec(&t.host, &["curl", "-sf", "http://127.0.0.1:9477/metrics"]).unwrap();
    assert!(String::from_utf8_lossy(&over_tcp.stdout).contains("netpath_mapping_flows{"));
    assert!(!t.try_exec(&t.host, &["curl", "-sf", "http://127.0.0.1:9477/v1/status"]).unwrap());
    // Clients that never finish their request are cut off (the address may
    // face a network), and more of them than the agent serves at once do
    // not keep a scrape out for long.
    let slow: Vec<TcpStream> = t
        .in_ns(&t.host, || {
            let mut v = vec![];
            for _ in 0..300 {
                let mut s = TcpStream::connect(("127.0.0.1", 9477))?;
                std::io::Write::write_all(&mut s, b"GET /metr")?;
                v.push(s);
            }
            Ok(v)
        })
        .unwrap();
    let started = Instant::now();
    let mut first = slow[0].try_clone().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 256];
    let _ = std::io::Read::read(&mut first, &mut buf);
    let cut = started.elapsed();
    assert!(cut < Duration::from_secs(15), "a slow client held its connection {cut:?}");
    let scrape_tcp = t.exec(&t.host, &["curl", "-sf", "-m", "20", "http://127.0.0.1:9477/metrics"]).unwrap();
    assert!(String::from_utf8_lossy(&scrape_tcp.stdout).contains("netpath_mapping_flows{"));
    drop(slow);

    // A veth whose container's entry is gone (removed behind the agent's
    // back) fails closed; its drops are counted apart and shown.
    let c2: netpath_userspace::model::Container = t.ctl_json(&["container", "show", "c2"]).unwrap();
    let key: Vec<String> = c2.ifindex.to_le_bytes().iter().map(|b| b.to_string()).collect();
    let pin = t.pin_dir().join("maps").join("CONTAINERS");
    let deleted = std::process::Command::new("bpftool")
        .args(["map", "delete", "pinned", pin.to_str().unwrap(), "key"])
        .args(&key)
        .status()
        .unwrap();
    assert!(deleted.success());
    assert!(!t.ping(&t.container_ns(2), &HOST_UPLINK_IP.to_string(), 1).unwrap());
    let scrape = t.metrics().unwrap();
    let unattributed = "netpath_unattributed_drops_total{reason=\"unknown-container\"}";
    assert!(sample(&scrape, unattributed).is_some_and(|v| v >= 1.0), "{scrape}");
    let shown = t.ctl_ok(&["status"]).unwrap();
    assert!(shown.contains("dropped on veths without a container: unknown-container"), "{shown}");

    // A restart counts.
    t.stop_agent().unwrap();
    t.start_agent().unwrap();
    assert_eq!(sample(&t.metrics().unwrap(), "netpath_agent_starts_total"), Some(2.0));
}

#[test]
fn json_logs_give_one_object_per_line_and_name_the_request_behind_each_change() {
    let mut t = topology(1);
    t.agent_args(&["--log-format", "json"]);
    t.start_agent().unwrap();
    t.add_container(1).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", "10.0.0.0/8"]).unwrap();
    t.ctl_ok(&["conntrack", "flush"]).unwrap();
    t.ctl_ok(&["unmap", "8080"]).unwrap();
    t.ctl_ok(&["container", "del", "c1"]).unwrap();
    t.stop_agent().unwrap();
    let log = std::fs::read_to_string(t.agent_log()).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        lines.iter().find(|l| l["message"] == message).unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    for (message, method, path) in [
        ("container added", "POST", "/v1/containers"),
        ("published", "POST", "/v1/mappings"),
        ("policy rule added", "POST", "/v1/policies"),
        ("conntrack flushed: flows cut", "DELETE", "/v1/conntrack"),
        ("unpublished", "POST", "/v1/mappings/unmap"),
        ("container removed", "DELETE", "/v1/containers/c1"),
    ] {
        let line = find(message);
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!((&line["span"]["method"], &line["span"]["path"]), (&method.into(), &path.into()), "{line}");
        assert!(line["span"]["id"].as_u64().is_some(), "{line}");
    }
    assert_eq!(find("published")["mapping"], "8080:c1:80/tcp");
    assert_eq!(find("container removed")["container"], "c1");
}

#[test]
fn under_systemd_the_agent_says_it_is_ready_only_once_its_api_answers_and_says_when_it_stops() {
    // The shipped unit waits for that word before it counts the agent as
    // started (and starts the runtimes ordered after it).
    let unit = std::fs::read_to_string(repo_file("dist/netpathd.service")).unwrap();
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    assert!(unit.lines().any(|l| l == "NotifyAccess=main"), "{unit}");

    let mut t = topology(1);
    // systemd's end of the protocol: a datagram socket named by NOTIFY_SOCKET.
    let dir = std::env::temp_dir().join(format!("{}-notify", netpath_tests::topology::run_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    t.set_agent_env("NOTIFY_SOCKET", path.to_str().unwrap());
    // As a unit ordered after netpathd would: the moment READY=1 arrives,
    // one API call, without waiting or retrying.
    let ctl = bin_dir().join("netpathctl");
    let socket = t.socket();
    let watcher = std::thread::spawn(move || {
        let mut messages = vec![];
        let mut buf = [0u8; 4096];
        loop {
            let n = notify.recv(&mut buf).expect("a message from netpathd on NOTIFY_SOCKET");
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == "READY=1") {
                let status = Command::new(&ctl).arg("--socket").arg(&socket).arg("status").output().unwrap();
                messages.push(message);
                return (messages, status, notify);
            }
            messages.push(message);
        }
    });
    t.start_agent().unwrap();
    let (messages, status, notify) = watcher.join().unwrap();
    assert!(status.status.success(), "the API did not answer when the agent said READY=1: {}", text(&status));
    assert_eq!(messages.len(), 1, "READY=1 is the first message: {messages:?}");

    t.stop_agent().unwrap();
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.lines().any(|l| l == "STOPPING=1"), "{message:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
