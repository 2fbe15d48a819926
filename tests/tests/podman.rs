//! Real podman 4.3 (CNI backend) on netpath, in a sandbox host: `-p`
//! published by netpath's datapath, `--ip`/`--mac-address`, conflicts, and
//! `podman rm -f` leaving nothing. Needs podman, runc and busybox-static
//! (`cargo xtask setup` installs them); without them the test fails and
//! says so, it does not skip.

use netpath_tests::Ipv4Of as _;
use std::time::Duration;

use netpath_tests::{
    podman::Podman,
    topology::{curl, footprint, Topology, HOST_UPLINK_IP, WORLD_IP},
};
use netpath_userspace::{cni::container_name, model::Container};

fn topology() -> Topology {
    assert!(
        netpath_tests::is_root(),
        "podman tests create namespaces and load BPF: run them as root (cargo xtask test)"
    );
    let mut t = Topology::new(0).expect("build topology");
    t.start_agent().expect("start netpathd");
    t
}

/// An HTTP server in `ns` answering one request with the client's address.
fn serve_client_address(t: &Topology, ns: &str, port: u16) -> std::thread::JoinHandle<()> {
    use std::io::{Read as _, Write as _};
    let listener = t.in_ns(ns, || Ok(std::net::TcpListener::bind(("0.0.0.0", port))?)).unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, peer)) = listener.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let body = format!("{}\n", peer.ip());
        let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    })
}

fn containers(t: &Topology) -> Vec<Container> {
    t.ctl_json(&["container", "ls"]).unwrap()
}

#[test]
fn podman_containers_publish_ports_through_netpath_and_leave_nothing() {
    let t = topology();
    let before = footprint(&t).unwrap();
    let mut pod = Podman::new(&t).unwrap();
    // podman lists the hand-written conflist as a network.
    assert!(pod.podman_ok(&["network", "ls", "--format", "{{.Name}}"]).unwrap().lines().any(|l| l == pod.network));

    let web = pod.run_httpd(&["--name", "web", "-p", "8080:80"]).unwrap().expect("podman run -p 8080:80");
    let ls = containers(&t);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].name, container_name(&web, "eth0"));
    assert_eq!(ls[0].runtime_name.as_deref(), Some("web"), "podman's name (K8S_POD_NAME)");
    assert_eq!(ls[0].owner.as_deref(), Some(format!("cni:{}:{web}:eth0", pod.network).as_str()));
    let sandbox = ls[0].netns.clone();
    assert!(sandbox.starts_with("/run/netns/"), "{sandbox}");

    // From the outside world, through netpath's translation on the uplink.
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    assert_eq!(curl(&t.world, &url, Duration::from_secs(10)).unwrap(), "hello from podman\n");
    // The container sees the client's own address (no proxy, no SNAT).
    let seen = curl(&t.world, &format!("{url}cgi-bin/ip"), Duration::from_secs(5)).unwrap();
    assert_eq!(netpath_tests::busybox::remote_addr(&seen), WORLD_IP.to_string(), "the client's address is preserved");
    // Policy by podman's name for the container.
    t.ctl_ok(&["policy", "add", "web", "deny", "in", "198.18.0.0/24", "tcp/80"]).unwrap();
    assert!(curl(&t.world, &url, Duration::from_millis(1500)).is_err(), "denied by the policy of \"web\"");
    t.ctl_ok(&["policy", "rm", "web", "deny", "in", "198.18.0.0/24", "tcp/80"]).unwrap();
    assert_eq!(curl(&t.world, &url, Duration::from_secs(5)).unwrap(), "hello from podman\n");
    // From the host itself: conmon holds 0.0.0.0:8080 (podman's port
    // reservation), yet the socket-level translation sends the connect to
    // the container before it can reach conmon's socket.
    let ss = t.exec(&t.host, &["ss", "-ltnp", "sport", "= :8080"]).unwrap();
    assert!(String::from_utf8_lossy(&ss.stdout).contains("conmon"), "conmon reserves the port: {ss:?}");
    assert_eq!(curl(&t.host, "http://127.0.0.1:8080/", Duration::from_secs(5)).unwrap(), "hello from podman\n");
    assert_eq!(curl(&t.host, &url, Duration::from_secs(5)).unwrap(), "hello from podman\n");

    // --ip and --mac-address arrive as CNI_ARGS IP=/MAC=.
    let ip = t.subnet.replace(".0/24", ".77");
    let fixed = pod
        .run_httpd(&["--ip", &ip, "--mac-address", "02:aa:bb:cc:dd:ee", "-p", "8081:80"])
        .unwrap()
        .expect("podman run --ip");
    let c = containers(&t).into_iter().find(|c| c.name == container_name(&fixed, "eth0")).expect("second container");
    assert_eq!(c.ip4().to_string(), ip);
    assert_eq!(c.mac, "02:aa:bb:cc:dd:ee");
    assert_eq!(
        curl(&t.world, &format!("http://{HOST_UPLINK_IP}:8081/"), Duration::from_secs(10)).unwrap(),
        "hello from podman\n"
    );

    // From another container, through the host address (hairpin).
    let hairpin = pod.podman_ok(&["exec", &fixed, "wget", "-q", "-O", "-", &url]).unwrap();
    assert_eq!(hairpin, "hello from podman");
    // Out to the world through the masquerade: the world sees the uplink's address.
    let server = serve_client_address(&t, &t.world, 8099);
    let seen = pod.podman_ok(&["exec", &web, "wget", "-q", "-O", "-", &format!("http://{WORLD_IP}:8099/")]).unwrap();
    server.join().unwrap();
    assert_eq!(seen, HOST_UPLINK_IP.to_string(), "masqueraded to the uplink's address");

    // A port published by another container: podman reports the plugin's
    // error, and nothing of the failed container stays in the agent.
    let with_two = footprint(&t).unwrap();
    let clash = pod.run_httpd(&["-p", "8080:80"]).unwrap().expect_err("port 8080 is taken");
    assert!(clash.contains("already published"), "{clash}");
    assert_eq!(footprint(&t).unwrap(), with_two);
    t.assert_no_netfilter_rules().unwrap();

    pod.rm(&[&web, &fixed]).unwrap();
    assert_eq!(footprint(&t).unwrap(), before, "podman rm -f leaves nothing in the agent or the host namespace");
    assert!(!std::path::Path::new(&sandbox).exists(), "podman removed the container's netns");
    assert!(
        pod.cached_results().iter().all(|f| !f.contains(&web) && !f.contains(&fixed)),
        "{:?}",
        pod.cached_results()
    );
    t.assert_no_netfilter_rules().unwrap();
}

#[test]
fn podman_stop_start_agent_restart_and_an_address_in_use() {
    let mut t = topology();
    let before = footprint(&t).unwrap();
    let mut pod = Podman::new(&t).unwrap();
    let web = pod.run_httpd(&["-p", "8080:80"]).unwrap().expect("podman run -p 8080:80");
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    let hello = "hello from podman\n";
    assert_eq!(curl(&t.world, &url, Duration::from_secs(10)).unwrap(), hello);

    // The datapath keeps serving while the agent is away, and the
    // restarted agent still knows the attachment.
    t.stop_agent().unwrap();
    assert_eq!(curl(&t.world, &url, Duration::from_secs(5)).unwrap(), hello);
    t.start_agent().unwrap();
    assert_eq!(containers(&t).iter().map(|c| c.name.clone()).collect::<Vec<_>>(), vec![container_name(&web, "eth0")]);
    assert_eq!(curl(&t.world, &url, Duration::from_secs(5)).unwrap(), hello);

    // A container started while the agent is down (killed, as in a crash or
    // an upgrade's restart): podman's ADD waits for the agent, and the
    // container comes up attached and published once it is back.
    let late = pod.create_httpd(&["-p", "8081:80"]).unwrap();
    t.kill_agent().unwrap();
    let started = std::thread::scope(|s| {
        let start = s.spawn(|| pod.podman(&["start", &late]).unwrap());
        std::thread::sleep(Duration::from_millis(1500));
        t.start_agent().unwrap();
        start.join().unwrap()
    });
    assert!(started.status.success(), "podman start during the restart: {}", String::from_utf8_lossy(&started.stderr));
    let late_url = format!("http://{HOST_UPLINK_IP}:8081/");
    assert_eq!(curl(&t.world, &late_url, Duration::from_secs(10)).unwrap(), hello);
    pod.rm(&[&late]).unwrap();
    assert_eq!(containers(&t).iter().map(|c| c.name.clone()).collect::<Vec<_>>(), vec![container_name(&web, "eth0")]);

    // --ip of an address in use: podman shows the plugin's error; nothing stays.
    let ip = containers(&t)[0].ip4().to_string();
    let with_one = footprint(&t).unwrap().attachments();
    let clash = pod.run_httpd(&["--ip", &ip]).unwrap().expect_err("the address is taken");
    assert!(clash.contains("already in use"), "{clash}");
    assert_eq!(footprint(&t).unwrap().attachments(), with_one);

    // stop is a DEL (the attachment goes), start an ADD of the same
    // container ID (the same agent name again).
    pod.podman_ok(&["stop", "-t", "0", &web]).unwrap();
    assert_eq!(footprint(&t).unwrap(), before, "a stopped container holds nothing");
    pod.podman_ok(&["start", &web]).unwrap();
    assert_eq!(containers(&t).iter().map(|c| c.name.clone()).collect::<Vec<_>>(), vec![container_name(&web, "eth0")]);
    assert_eq!(curl(&t.world, &url, Duration::from_secs(10)).unwrap(), hello);

    pod.rm(&[&web]).unwrap();
    assert_eq!(footprint(&t).unwrap(), before);
    t.assert_no_netfilter_rules().unwrap();
}
