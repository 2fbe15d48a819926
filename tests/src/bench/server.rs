//! The server in the container: a listener on port 80 with several
//! blocking accept threads. Each connection opens with a 32-byte hello
//! whose first byte picks the mode:
//!
//! - `c` (short connections): answer 64 bytes and close;
//! - `t` (throughput): read until EOF, then answer the byte count (u64 LE);
//! - `l` (latency): echo 64-byte messages until EOF, pinned to the
//!   client's CPU;
//! - `p` (peer): answer the client's address as the server sees it (IPv4
//!   octets, then the port big-endian), to check what a NAT did.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use netpath_tests::topology::Topology;

pub const HELLO_LEN: usize = 32;
pub const ANSWER_LEN: usize = 64;
pub const ECHO_LEN: usize = 64;
pub const MODE_SHORT: u8 = b'c';
pub const MODE_THROUGHPUT: u8 = b't';
pub const MODE_LATENCY: u8 = b'l';
pub const MODE_PEER: u8 = b'p';
pub const PEER_LEN: usize = 6;
/// A connection that stalls this long is dropped (the server never hangs).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKLOG: libc::c_int = 4096;

pub struct Server {
    listener: Arc<TcpListener>,
    threads: Vec<JoinHandle<()>>,
    /// The accept threads' kernel ids, to move them between CPUs.
    tids: Arc<Mutex<Vec<libc::pid_t>>>,
}

impl Server {
    /// Binds `0.0.0.0:port` inside `ns` (a container, or the world for the
    /// masquerade) and starts `threads` accept loops.
    pub fn start(topo: &Topology, ns: &str, port: u16, threads: usize) -> Result<Server> {
        let listener = topo.in_ns(ns, || {
            TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port} in {ns}"))
        })?;
        Self::serve_on(listener, threads)
    }

    /// [`Server::start`] on `[::]:port`, IPv6 only (beside an IPv4 server
    /// on the same port).
    pub fn start6(topo: &Topology, ns: &str, port: u16, threads: usize) -> Result<Server> {
        let listener = topo.in_ns(ns, || {
            let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            sock.set_only_v6(true)?;
            sock.set_reuse_address(true)?;
            sock.bind(&std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())
                .with_context(|| format!("binding [::]:{port} in {ns}"))?;
            sock.listen(BACKLOG)?;
            Ok(TcpListener::from(sock))
        })?;
        Self::serve_on(listener, threads)
    }

    fn serve_on(listener: TcpListener, threads: usize) -> Result<Server> {
        // std listens with a backlog of 128; a burst of connects wants more.
        // SAFETY: listen on a socket we own; a second listen() only resizes the backlog.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(std::io::Error::last_os_error()).context("listen");
        }
        let listener = Arc::new(listener);
        let tids = Arc::new(Mutex::new(vec![]));
        let threads = (0..threads)
            .map(|_| {
                let l = Arc::clone(&listener);
                let tids = Arc::clone(&tids);
                std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    tids.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
                    accept_loop(&l)
                })
            })
            .collect();
        Ok(Server { listener, threads, tids })
    }

    /// Runs every accept thread on `cpu` alone, or (None) on every CPU
    /// again. Waits (bounded) for the threads to have registered.
    pub fn pin(&self, cpu: Option<usize>) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let tids = self.tids.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if tids.len() == self.threads.len() {
                return tids.into_iter().try_for_each(|tid| super::cpu::set_thread_cpu(tid, cpu));
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "the accept threads did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wakes the accept loops (shutdown() on a listening socket makes a
    /// blocked accept() fail) and joins them.
    fn shutdown(&mut self) {
        // SAFETY: shutdown on a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = serve(stream);
            }
            // EINVAL after shutdown(): the server is stopping.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) if super::interrupted() => return,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut hello = [0u8; HELLO_LEN];
    s.read_exact(&mut hello)?;
    match hello[0] {
        MODE_SHORT => s.write_all(&[b'a'; ANSWER_LEN]),
        MODE_THROUGHPUT => sink(&mut s),
        MODE_LATENCY => echo(&mut s),
        MODE_PEER => peer(&mut s),
        _ => Ok(()),
    }
}

fn sink(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    s.write_all(&total.to_le_bytes())
}

fn peer(s: &mut TcpStream) -> std::io::Result<()> {
    let std::net::SocketAddr::V4(peer) = s.peer_addr()? else { return Ok(()) };
    let mut answer = [0u8; PEER_LEN];
    answer[..4].copy_from_slice(&peer.ip().octets());
    answer[4..].copy_from_slice(&peer.port().to_be_bytes());
    s.write_all(&answer)
}

fn echo(s: &mut TcpStream) -> std::io::Result<()> {
    // On the client's CPU (see cpu.rs); back to any CPU when done.
    let _pin = super::cpu::Pinned::to(super::cpu::latency_cpu()).map_err(std::io::Error::other)?;
    let mut msg = [0u8; ECHO_LEN];
    loop {
        if let Err(e) = s.read_exact(&mut msg) {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e) };
        }
        s.write_all(&msg)?;
    }
}
