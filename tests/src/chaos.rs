//! What the crash-safety tests (`tests/tests/chaos.rs`, `cargo xtask
//! chaos`) share: held connections, probes that open new ones all along,
//! and the results file their figures go to.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::topology::{bin_dir, Topology};

/// `netpath-flows` in a namespace: holds many connections open.
pub struct FlowsProcess(Child);

impl FlowsProcess {
    pub fn spawn(ns: &str, args: &[String]) -> Result<FlowsProcess> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin_dir().join("netpath-flows"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning netpath-flows")?;
        Ok(FlowsProcess(child))
    }

    /// `serve PORT COUNT SECONDS`.
    pub fn serve(ns: &str, port: u16, count: usize, secs: u64) -> Result<FlowsProcess> {
        Self::spawn(ns, &["serve".into(), port.to_string(), count.to_string(), secs.to_string()])
    }

    /// `connect ADDR PORT COUNT SECONDS`.
    pub fn connect(ns: &str, addr: std::net::Ipv4Addr, port: u16, count: usize, secs: u64) -> Result<FlowsProcess> {
        Self::spawn(ns, &["connect".into(), addr.to_string(), port.to_string(), count.to_string(), secs.to_string()])
    }

    pub fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        BufReader::new(self.0.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// Tells a `connect` process to echo on every connection again; it
    /// answers "verified N" (see [`FlowsProcess::read_line`]).
    pub fn go(&mut self) -> Result<()> {
        writeln!(self.0.stdin.as_mut().context("stdin")?, "go")?;
        Ok(())
    }

    /// [`FlowsProcess::go`], then its answer.
    pub fn verify(&mut self) -> Result<String> {
        self.go()?;
        self.read_line()
    }
}

impl Drop for FlowsProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An echo server on `port` in `ns`, one thread per connection, until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(t: &Topology, ns: &str, port: u16) -> Result<EchoServer> {
        let listener = t.in_ns(ns, || Ok(TcpListener::bind(("0.0.0.0", port))?))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut b = [0u8; 64];
                            while let Ok(n) = s.read(&mut b) {
                                if n == 0 || s.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(EchoServer { stop, thread: Some(thread) })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a new connection to `dst` from `ns` every few milliseconds (an
/// echo on each) until stopped, and remembers when each one succeeded.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(Instant, bool)>>>,
}

/// What a prober saw.
#[derive(Debug)]
pub struct ProbeReport {
    pub attempts: usize,
    pub failures: usize,
    /// The longest time between two successful connections.
    pub longest_gap: Duration,
}

impl Prober {
    pub fn start(ns: &str, dst: SocketAddr) -> Result<Prober> {
        let netns = netpath_userspace::netns::Netns::open(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = vec![];
            // This thread lives in the namespace: setns applies per thread.
            if netns.enter().is_err() {
                return seen;
            }
            while !stopped.load(Ordering::Relaxed) {
                let ok = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect_timeout(&dst, Duration::from_millis(500))?;
                    s.set_read_timeout(Some(Duration::from_millis(500)))?;
                    s.write_all(b"p")?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b)?;
                    Ok(())
                })()
                .is_ok();
                seen.push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        Ok(Prober { stop, thread: Some(thread) })
    }

    pub fn finish(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        let successes: Vec<Instant> = seen.iter().filter(|(_, ok)| *ok).map(|(at, _)| *at).collect();
        let longest_gap = successes.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(Duration::MAX);
        ProbeReport { attempts: seen.len(), failures: seen.iter().filter(|(_, ok)| !ok).count(), longest_gap }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Appends a section of figures to the results file `cargo xtask chaos`
/// names in `NETPATH_CHAOS_RESULTS` (nothing when it is unset: a plain test run).
pub fn record(section: &str, figures: &[(&str, String)]) {
    let Some(path) = std::env::var_os("NETPATH_CHAOS_RESULTS") else { return };
    let mut text = format!("\n## {section}\n\n| figure | value |\n|---|---|\n");
    for (name, value) in figures {
        text.push_str(&format!("| {name} | {value} |\n"));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Traffic that an agent's trouble must not hurt, on a topology with
/// containers c1 and c2, `8080:c1:80` and `8081:c1:81` published and c2
/// masqueraded: `held` connections from the world through 8080 (and as
/// many from c2 to the world's port 7001 when `masqueraded`), each echoing
/// when verified, and a new connection every 10 ms both ways (the world to
/// 8081, c2 to the world's 7002).
pub struct Traffic {
    pub published: FlowsProcess,
    pub masqueraded: Option<FlowsProcess>,
    held: usize,
    probes: Option<(Prober, Prober)>,
    _servers: Vec<FlowsProcess>,
    _echo: [EchoServer; 2],
}

impl Traffic {
    /// Starts it and waits until every held connection is established;
    /// the processes give up after `secs`.
    pub fn start(t: &Topology, held: usize, masqueraded: bool, secs: u64) -> Result<Traffic> {
        use crate::topology::{HOST_UPLINK_IP, WORLD_IP};
        let mut servers = vec![FlowsProcess::serve(&t.container_ns(1), 80, held, secs)?];
        if masqueraded {
            servers.push(FlowsProcess::serve(&t.world, 7001, held, secs)?);
        }
        std::thread::sleep(Duration::from_millis(300));
        let established = |mut p: FlowsProcess| -> Result<FlowsProcess> {
            let said = p.read_line()?;
            anyhow::ensure!(said == format!("established {held}"), "held connections: {said:?}");
            Ok(p)
        };
        let published = established(FlowsProcess::connect(&t.world, HOST_UPLINK_IP, 8080, held, secs)?)?;
        let masqueraded = match masqueraded {
            true => Some(established(FlowsProcess::connect(&t.container_ns(2), WORLD_IP, 7001, held, secs)?)?),
            false => None,
        };
        let echo = [EchoServer::start(t, &t.container_ns(1), 81)?, EchoServer::start(t, &t.world, 7002)?];
        let probes = (
            Prober::start(&t.world, SocketAddr::from((HOST_UPLINK_IP, 8081)))?,
            Prober::start(&t.container_ns(2), SocketAddr::from((WORLD_IP, 7002)))?,
        );
        std::thread::sleep(Duration::from_millis(300));
        Ok(Traffic { published, masqueraded, held, probes: Some(probes), _servers: servers, _echo: echo })
    }

    /// Every held connection echoes again (an error names the ones that
    /// did not).
    pub fn verify(&mut self) -> Result<()> {
        let want = format!("verified {}", self.held);
        self.published.go()?;
        if let Some(m) = &mut self.masqueraded {
            m.go()?;
        }
        let said = self.published.read_line()?;
        anyhow::ensure!(said == want, "connections through the published port lost: {said:?}");
        if let Some(m) = &mut self.masqueraded {
            let said = m.read_line()?;
            anyhow::ensure!(said == want, "masqueraded connections lost: {said:?}");
        }
        Ok(())
    }

    /// Stops the new connections: what they saw, published then
    /// masqueraded (the first call only; None after).
    pub fn probes(&mut self) -> Option<(ProbeReport, ProbeReport)> {
        self.probes.take().map(|(p, m)| (p.finish(), m.finish()))
    }
}
