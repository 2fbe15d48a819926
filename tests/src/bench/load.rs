//! Load generators: clients in the world namespace (published ports,
//! policy) or in a container (masquerade). Every loop is bounded in count
//! and in time. Sockets are created on threads inside the clients'
//! namespace (threads spawned there inherit it).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use netpath_tests::topology::Topology;
use serde::Serialize;

use super::server::{
    Server, ANSWER_LEN, ECHO_LEN, HELLO_LEN, MODE_LATENCY, MODE_PEER, MODE_SHORT, MODE_THROUGHPUT, PEER_LEN,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on connections per client thread and measurement.
const MAX_CONNS_PER_THREAD: u64 = 2_000_000;
/// Upper bound on a latency measurement.
const MAX_LATENCY_TIME: Duration = Duration::from_secs(20);
const WRITE_CHUNK: usize = 256 * 1024;

/// Clients close with SO_LINGER 0 (RST, no TIME_WAIT), so ports come back
/// at once; tcp_tw_reuse is set as well in the clients' namespace `ns` in
/// case a socket ends otherwise.
pub fn prepare_clients(topo: &Topology, ns: &str) -> Result<()> {
    topo.exec(ns, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    Ok(())
}

fn hello(mode: u8) -> [u8; HELLO_LEN] {
    let mut h = [b'.'; HELLO_LEN];
    h[0] = mode;
    h
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Close with a RST: no TIME_WAIT on the client.
fn set_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One short connection: connect, 32-byte request, 64-byte answer, close.
fn short_request(target: SocketAddr) -> std::io::Result<()> {
    let mut s = connect(target)?;
    s.set_nodelay(true)?;
    s.write_all(&hello(MODE_SHORT))?;
    let mut answer = [0u8; ANSWER_LEN];
    s.read_exact(&mut answer)?;
    set_linger_zero(&s)
}

/// Retries one short request from namespace `ns` for a few seconds (the
/// agent may still be syncing host addresses right after start).
pub fn wait_reachable(topo: &Topology, ns: &str, target: impl Into<SocketAddr>) -> Result<()> {
    let target = target.into();
    topo.in_ns(ns, || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match short_request(target) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("{target} is not reachable from {ns}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// The client's address as the server at `target` sees it, asked from
/// namespace `ns` (what a NAT on the way made of it).
pub fn seen_as(topo: &Topology, ns: &str, target: SocketAddrV4) -> Result<SocketAddrV4> {
    topo.in_ns(ns, || {
        let mut s = connect(target.into()).with_context(|| format!("connecting to {target}"))?;
        s.write_all(&hello(MODE_PEER))?;
        let mut answer = [0u8; PEER_LEN];
        s.read_exact(&mut answer).context("reading the peer address")?;
        let ip = std::net::Ipv4Addr::new(answer[0], answer[1], answer[2], answer[3]);
        Ok(SocketAddrV4::new(ip, u16::from_be_bytes([answer[4], answer[5]])))
    })
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ConnRate {
    pub per_sec: f64,
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// Short connections per second with `threads` clients in namespace `ns`
/// for `duration`.
pub fn conn_rate(
    topo: &Topology,
    ns: &str,
    target: impl Into<SocketAddr>,
    threads: usize,
    duration: Duration,
) -> Result<ConnRate> {
    conn_rate_on(topo, ns, target, threads, duration, None)
}

/// The connection rate with the clients, `server`'s threads and so all the
/// softirq work (veth delivery runs on the sending CPU) on one vCPU: the
/// rate is then the inverse of the path's CPU cost per connection. The
/// server is unpinned afterwards whatever the outcome.
pub fn conn_rate_one_cpu(
    topo: &Topology,
    ns: &str,
    target: impl Into<SocketAddr>,
    server: &Server,
    threads: usize,
    duration: Duration,
) -> Result<ConnRate> {
    let cpu = super::cpu::latency_cpu();
    server.pin(Some(cpu))?;
    let rate = conn_rate_on(topo, ns, target, threads, duration, Some(cpu));
    server.pin(None)?;
    rate
}

/// A one-vCPU rate as the progress lines show it.
pub fn describe_one_cpu(rate: &ConnRate) -> String {
    format!("{:>8.0} conn/s, {:.1} us per connection ({} errors)", rate.per_sec, 1e6 / rate.per_sec, rate.errors)
}

/// [`conn_rate`] with every client thread on CPU `cpu` (None: anywhere).
pub fn conn_rate_on(
    topo: &Topology,
    ns: &str,
    target: impl Into<SocketAddr>,
    threads: usize,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<ConnRate> {
    let target = target.into();
    topo.in_ns(ns, || {
        let start = Instant::now();
        let deadline = start + duration;
        let per_thread: Vec<(u64, u64, Instant)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(move || {
                        let _pin = cpu.map(super::cpu::Pinned::to).transpose();
                        client_loop(target, deadline)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a client thread panicked")))
                .collect::<Result<_>>()
        })?;
        let end = per_thread.iter().map(|t| t.2).max().unwrap_or(start);
        let seconds = end.duration_since(start).as_secs_f64();
        let connections: u64 = per_thread.iter().map(|t| t.0).sum();
        let errors: u64 = per_thread.iter().map(|t| t.1).sum();
        super::check_interrupted()?;
        if connections == 0 {
            bail!("no connection to {target} succeeded ({errors} errors)");
        }
        Ok(ConnRate { per_sec: connections as f64 / seconds, connections, errors, seconds })
    })
}

/// `count` short connections one after the other from namespace `ns` (at
/// most 30 s); returns how many succeeded.
pub fn short_requests(topo: &Topology, ns: &str, target: impl Into<SocketAddr>, count: u64) -> Result<u64> {
    let target = target.into();
    topo.in_ns(ns, || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ok = 0;
        for _ in 0..count {
            if Instant::now() > deadline || super::interrupted() {
                break;
            }
            ok += short_request(target).is_ok() as u64;
        }
        Ok(ok)
    })
}

/// Returns (completed, failed, time of the last completion).
fn client_loop(target: SocketAddr, deadline: Instant) -> (u64, u64, Instant) {
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut last = Instant::now();
    while ok + failed < MAX_CONNS_PER_THREAD && !super::interrupted() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match short_request(target) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        last = Instant::now();
    }
    (ok, failed, last)
}

/// Single-stream throughput in Gbit/s from namespace `ns`: 256 KiB writes
/// for `duration`, then the server's count of bytes received, over the
/// time until it arrived.
pub fn throughput(topo: &Topology, ns: &str, target: impl Into<SocketAddr>, duration: Duration) -> Result<f64> {
    let target = target.into();
    topo.in_ns(ns, || {
        let mut s = connect(target).with_context(|| format!("connecting to {target}"))?;
        s.write_all(&hello(MODE_THROUGHPUT))?;
        let chunk = vec![0x5au8; WRITE_CHUNK];
        let start = Instant::now();
        let mut sent: u64 = 0;
        while start.elapsed() < duration && !super::interrupted() {
            s.write_all(&chunk).context("writing the stream")?;
            sent += chunk.len() as u64;
        }
        s.shutdown(Shutdown::Write)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count).context("reading the server's byte count")?;
        let seconds = start.elapsed().as_secs_f64();
        let received = u64::from_le_bytes(count);
        ensure!(received == sent, "the server received {received} of {sent} bytes");
        Ok(received as f64 * 8.0 / seconds / 1e9)
    })
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub round_trips: usize,
}

/// Request/response latency on one persistent connection (TCP_NODELAY,
/// 64-byte messages), after 200 warm-up round trips; client and server
/// threads pinned to the same CPU. The client is in the world.
pub fn latency(topo: &Topology, target: impl Into<SocketAddr>, round_trips: usize) -> Result<Latency> {
    latency_from(topo, &topo.world, target, round_trips)
}

/// [`latency`] with the client in namespace `ns`.
pub fn latency_from(topo: &Topology, ns: &str, target: impl Into<SocketAddr>, round_trips: usize) -> Result<Latency> {
    let target = target.into();
    topo.in_ns(ns, || {
        let _pin = super::cpu::Pinned::to(super::cpu::latency_cpu())?;
        let mut s = connect(target).with_context(|| format!("connecting to {target}"))?;
        s.set_nodelay(true)?;
        s.write_all(&hello(MODE_LATENCY))?;
        let mut msg = [0x42u8; ECHO_LEN];
        let start = Instant::now();
        let mut rtts = Vec::with_capacity(round_trips);
        for i in 0..round_trips + 200 {
            if start.elapsed() > MAX_LATENCY_TIME || super::interrupted() {
                break;
            }
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut msg).context("reading the echo")?;
            if i >= 200 {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        ensure!(!rtts.is_empty(), "no round trip completed");
        rtts.sort_by(f64::total_cmp);
        Ok(Latency { p50_us: percentile(&rtts, 0.50), p99_us: percentile(&rtts, 0.99), round_trips: rtts.len() })
    })
}

/// Nearest-rank percentile of sorted values.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
