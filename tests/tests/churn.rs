//! Conntrack under churn: idle established connections through a published
//! port survive a storm of short connections and unanswered handshakes,
//! and the pressure is counted.
//!
//! The idle connections are real sockets (world -> published port ->
//! container). The storm cannot be real sockets at the rate on this
//! machine, so it runs the agent's own attached programs on crafted frames
//! with BPF_PROG_TEST_RUN, as each packet would pass them (the programs use
//! the pinned maps, and the timeouts are real time): a connection's SYN, its
//! ACK, FIN and last ACK enter at the uplink's ingress and, translated, the
//! container's veth egress; its SYN-ACK and FIN leave the container at the
//! veth's ingress. No frame is delivered anywhere.
//!
//! Scale: the 20k new connections a second against the default
//! table of 262144 entries is run as 5000 a second against 65536 entries,
//! for 60 s: the same share of the table per second.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use netpath_common::conntrack::{TCP_ACK, TCP_FIN, TCP_SYN};
use netpath_tests::{
    frames::{self, ETH_P_IPV4, IPPROTO_TCP},
    prog_run::{program_fd_by_id, run_on},
    topology::{Topology, HOST_UPLINK, HOST_UPLINK_IP},
};
use netpath_userspace::model::Status;

const TABLE: u32 = 65536;
const IDLE_CONNECTIONS: usize = 1000;
/// New connections per second: 20k scaled from 262144 entries to [`TABLE`].
const STORM_RATE: u64 = 5000;
const STORM: Duration = Duration::from_secs(60);
/// One storm connection in this many is a handshake nobody completes (a
/// SYN the container answers, then silence): it lives under the SYN
/// timeout.
const UNCOMPLETED_EVERY: u64 = 4;
const PUBLISHED: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const TC_ACT_OK: u32 = 0;

#[test]
fn idle_connections_survive_a_storm_of_new_ones() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces and load BPF: run them as root");
    let mut t = Topology::new(1).unwrap();
    let cfg = t.run_dir().join("netpathd.toml");
    std::fs::write(&cfg, format!("[conntrack]\nmax_entries = {TABLE}\n")).unwrap();
    t.agent_args(&["--config", &cfg.display().to_string()]);
    t.start_agent().unwrap();
    let c1 = t.add_container(1).unwrap();
    t.ctl_ok(&["map", &format!("{PUBLISHED}:c1:{CONTAINER_PORT}")]).unwrap();

    let (server, idle) = idle_connections(&t).unwrap();
    exchange(&server, &idle, 0).expect("the idle connections work before the storm");
    let before: Status = t.ctl_json(&["status"]).unwrap();

    let storm = Storm::prepare(&before, &c1).unwrap();
    let report = t.in_ns(&t.host.clone(), || storm.run(&t)).unwrap();
    eprintln!("storm: {report:?}");

    // A GC round on the quiet table: its eviction count is then exact.
    let runs = status(&t).conntrack.gc_runs;
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&t).conntrack.gc_runs < runs + 2 {
        assert!(Instant::now() < deadline, "no GC round after the storm");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ct = status(&t).conntrack;
    eprintln!("conntrack after the storm: {ct:?}");
    let text = t.ctl_ok(&["status"]).unwrap();
    eprintln!(
        "{}",
        text.lines().filter(|l| l.starts_with("conntrack") || l.starts_with("ct gc")).collect::<Vec<_>>().join("\n")
    );

    let survivors = exchange(&server, &idle, 1);
    // The storm was what it claims: the table came under pressure.
    assert!(
        report.connections >= STORM_RATE * STORM.as_secs() * 8 / 10,
        "the storm ran {} connections, short of {} a second for {:?}",
        report.connections,
        STORM_RATE,
        STORM
    );
    // Two entries per connection: a published flow's carry its verdict too.
    assert!(ct.inserts - before.conntrack.inserts >= 2 * report.connections, "{ct:?}");
    survivors.expect("every idle connection still carries data both ways after the storm");
    assert_eq!(report.not_passed, 0, "every storm packet passed: {report:?}");
    assert_eq!(ct.evictions, 0, "no entry was evicted: {ct:?}");
    assert_eq!(ct.insert_failures, 0, "{ct:?}");
    assert!(ct.gc_early_flows_removed > 0, "pressure removed finished flows early: {ct:?}");
    assert!(text.contains("0 evicted"), "status shows the evictions: {text}");
    // The datapath's counters are a pinned map bpftool reads by field name.
    assert_eq!(bpftool_ct_inserts(&t).unwrap(), ct.inserts, "CT_STATS as bpftool shows it");
    drop(server);
}

/// The sum over CPUs of `inserts` in the pinned CT_STATS, as `bpftool map
/// dump` shows it (with field names, from the map's BTF).
fn bpftool_ct_inserts(t: &Topology) -> Result<u64> {
    let pin = t.pin_dir().join("maps").join("CT_STATS");
    let out = netpath_tests::topology::cmd("bpftool", &["-j", "map", "dump", "pinned", &pin.display().to_string()])?;
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let values = dump[0]["formatted"]["values"].as_array().with_context(|| format!("no formatted values: {dump}"))?;
    values.iter().map(|v| v["value"]["inserts"].as_u64().with_context(|| format!("no inserts field: {v}"))).sum()
}

fn status(t: &Topology) -> Status {
    t.ctl_json(&["status"]).unwrap()
}

/// The container's side of the idle connections.
struct Server {
    streams: Vec<TcpStream>,
}

/// `IDLE_CONNECTIONS` connections from the world to the published port,
/// accepted in the container: (the container's ends, the world's ends).
fn idle_connections(t: &Topology) -> Result<(Server, Vec<TcpStream>)> {
    let listener = t.in_ns(&t.container_ns(1), || Ok(TcpListener::bind(("0.0.0.0", CONTAINER_PORT))?))?;
    let (tx, rx) = mpsc::channel();
    let acceptor = std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut streams = vec![];
        while streams.len() < IDLE_CONNECTIONS {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    streams.push(s);
                }
                Err(_) if Instant::now() < deadline && rx.try_recv().is_err() => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => bail!("accepted {} connections: {e}", streams.len()),
            }
        }
        Ok(streams)
    });
    let clients = t.in_ns(&t.world, || {
        (0..IDLE_CONNECTIONS)
            .map(|i| {
                TcpStream::connect_timeout(&SocketAddr::from((HOST_UPLINK_IP, PUBLISHED)), Duration::from_secs(3))
                    .with_context(|| format!("idle connection {i}"))
            })
            .collect::<Result<Vec<_>>>()
    });
    let clients = match clients {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(());
            let _ = acceptor.join();
            return Err(e);
        }
    };
    let mut streams = acceptor.join().map_err(|_| anyhow::anyhow!("acceptor panicked"))??;
    // Pair the container's ends with the world's by the client's port.
    streams.sort_by_key(|s| s.peer_addr().map(|a| a.port()).unwrap_or(0));
    let mut clients = clients;
    clients.sort_by_key(|s| s.local_addr().map(|a| a.port()).unwrap_or(0));
    for (s, c) in streams.iter().zip(&clients) {
        ensure!(s.peer_addr()?.port() == c.local_addr()?.port(), "connections do not pair up");
    }
    Ok((Server { streams }, clients))
}

/// Sends a message each way on every connection; fails naming how many
/// did not carry it. A dead flow shows as a reset (its translation gone:
/// the host answers) or as silence (its verdict gone: the datapath drops),
/// so reads give up quickly once one has timed out.
fn exchange(server: &Server, clients: &[TcpStream], round: u32) -> Result<()> {
    let msg = |side: &str, i: usize| format!("{side} {round} {i:04}\n").into_bytes();
    let mut failed = vec![];
    for (i, c) in clients.iter().enumerate() {
        if (&*c).write_all(&msg("ping", i)).is_err() {
            failed.push(i);
        }
    }
    let mut wait = Duration::from_secs(3);
    let read = |s: &TcpStream, want: &[u8], wait: &mut Duration| -> bool {
        let mut buf = vec![0u8; want.len()];
        let _ = s.set_read_timeout(Some(*wait));
        let ok = (&*s).read_exact(&mut buf).is_ok() && buf == want;
        if !ok {
            *wait = Duration::from_millis(20);
        }
        ok
    };
    for (i, s) in server.streams.iter().enumerate() {
        if failed.contains(&i) {
            continue;
        }
        if !read(s, &msg("ping", i), &mut wait) || (&*s).write_all(&msg("pong", i)).is_err() {
            failed.push(i);
        }
    }
    let mut wait = Duration::from_secs(3);
    for (i, c) in clients.iter().enumerate() {
        if !failed.contains(&i) && !read(c, &msg("pong", i), &mut wait) {
            failed.push(i);
        }
    }
    if !failed.is_empty() {
        failed.sort();
        bail!(
            "{} of {} connections failed (first: {:?})",
            failed.len(),
            clients.len(),
            &failed[..failed.len().min(10)]
        );
    }
    Ok(())
}

/// The agent's attached programs, opened by id, and where they run.
struct Storm {
    uplink_ingress: OwnedFd,
    veth_ingress: OwnedFd,
    veth_egress: OwnedFd,
    veth_ifindex: u32,
    container_ip: [u8; 4],
    container_mac: [u8; 6],
}

#[derive(Debug, Default)]
struct StormReport {
    connections: u64,
    uncompleted: u64,
    runs: u64,
    /// Runs whose verdict was not TC_ACT_OK.
    not_passed: u64,
    max_entries_seen: u64,
    took: Duration,
}

impl Storm {
    fn prepare(st: &Status, c1: &netpath_userspace::model::Container) -> Result<Storm> {
        let program = |interface: &str, name: &str| -> Result<OwnedFd> {
            let point = st
                .attach_points
                .iter()
                .find(|a| a.interface == interface && a.program == name)
                .with_context(|| format!("{name} is not attached to {interface}"))?;
            let id = *point.attached_program_ids.first().with_context(|| format!("{name}: no program id"))?;
            Ok(program_fd_by_id(id)?)
        };
        Ok(Storm {
            uplink_ingress: program(HOST_UPLINK, "uplink_ingress")?,
            veth_ingress: program(&c1.veth, "veth_ingress")?,
            veth_egress: program(&c1.veth, "veth_egress")?,
            veth_ifindex: c1.ifindex,
            container_ip: c1.ip4().octets(),
            container_mac: netpath_userspace::agent::parse_mac(&c1.mac).context("container MAC")?,
        })
    }

    /// Runs the storm, paced in real time. Call it in the host namespace
    /// (the frames arrive on its devices).
    fn run(&self, t: &Topology) -> Result<StormReport> {
        let name = std::ffi::CString::new(HOST_UPLINK)?;
        // SAFETY: a NUL-terminated name.
        let uplink = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(uplink != 0, "no {HOST_UPLINK} in this namespace");
        let mut report = StormReport::default();
        let started = Instant::now();
        let mut next_status = started + Duration::from_secs(5);
        while started.elapsed() < STORM {
            let due = started.elapsed().as_micros() as u64 * STORM_RATE / 1_000_000;
            while report.connections < due {
                let i = report.connections;
                let uncompleted = i % UNCOMPLETED_EVERY == 0;
                self.connection(uplink, i, uncompleted, &mut report)?;
                report.connections += 1;
                report.uncompleted += uncompleted as u64;
            }
            if Instant::now() >= next_status {
                // The API answers during the storm; the table's fill is seen.
                let st: Status = t.ctl_json(&["status"])?;
                report.max_entries_seen = report.max_entries_seen.max(ct_entries(&st));
                eprintln!(
                    "{:>5.1} s: {} connections, CT4 {} entries, {:?}",
                    started.elapsed().as_secs_f64(),
                    report.connections,
                    ct_entries(&st),
                    st.conntrack
                );
                next_status += Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        report.took = started.elapsed();
        Ok(report)
    }

    /// One connection from a client address of its own: the handshake, and
    /// unless `uncompleted`, FINs both ways and the last ACK.
    fn connection(&self, uplink: u32, i: u64, uncompleted: bool, report: &mut StormReport) -> Result<()> {
        // 100.64.0.0/10, one address per connection (2^22 of them).
        let client = ([100, 64 | ((i >> 16) & 0x3f) as u8, (i >> 8) as u8, i as u8], 40000u16);
        let published = (HOST_UPLINK_IP.octets(), PUBLISHED);
        let container = (self.container_ip, CONTAINER_PORT);
        let world_mac = [0x02, 0x77, 0, 0, 0, 1];
        let gateway_mac = [0x02, 0x88, 0, 0, 0, 1];
        let inbound = |flags: u8, report: &mut StormReport| -> Result<()> {
            let frame = tcp_frame(gateway_mac, world_mac, client, published, flags);
            let translated = self.pass(&self.uplink_ingress, &frame, uplink, report)?;
            self.pass(&self.veth_egress, &translated, self.veth_ifindex, report)?;
            Ok(())
        };
        let outbound = |flags: u8, report: &mut StormReport| -> Result<()> {
            let frame = tcp_frame(gateway_mac, self.container_mac, container, client, flags);
            self.pass(&self.veth_ingress, &frame, self.veth_ifindex, report)?;
            Ok(())
        };
        inbound(TCP_SYN, report)?;
        outbound(TCP_SYN | TCP_ACK, report)?;
        if uncompleted {
            return Ok(());
        }
        inbound(TCP_ACK, report)?;
        inbound(TCP_FIN | TCP_ACK, report)?;
        outbound(TCP_FIN | TCP_ACK, report)?;
        inbound(TCP_ACK, report)
    }

    /// Runs one program on `frame` arriving on `ifindex`; returns the frame
    /// as the program left it.
    fn pass(&self, prog: &OwnedFd, frame: &[u8], ifindex: u32, report: &mut StormReport) -> Result<Vec<u8>> {
        let out = run_on(prog.as_raw_fd(), frame, ifindex).context("BPF_PROG_TEST_RUN")?;
        report.runs += 1;
        if out.verdict != TC_ACT_OK {
            report.not_passed += 1;
        }
        Ok(out.data)
    }
}

fn ct_entries(st: &Status) -> u64 {
    st.maps.iter().find(|m| m.name == "CT4").map_or(0, |m| m.entries)
}

fn tcp_frame(dmac: [u8; 6], smac: [u8; 6], src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    let seg = frames::tcp(src.0, dst.0, src.1, dst.1, flags, b"");
    frames::eth(dmac, smac, ETH_P_IPV4, &frames::ipv4(src.0, dst.0, IPPROTO_TCP, &[], &seg))
}
