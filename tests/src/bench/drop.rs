//! The drop section: what a flood that netpath never accepts costs, per
//! core, dropped by netpath's uplink guard with XDP (`uplink_xdp = "on"`),
//! by the same guard at tc ingress (`"off"`), by nftables at its netdev
//! ingress hook on the host's uplink, and not dropped early at all (the
//! host's stack discards the datagrams: no socket listens).
//!
//! Two floods of small UDP frames from the world namespace: to a guarded
//! port nothing publishes (`5500/udp`, guarded range 5000-5999/udp), and
//! from a denied source (198.18.0.200, denied 198.18.0.192/26) to an
//! unguarded port. Two senders ([`Sender`]), each one thread pinned to one
//! vCPU, onto the world's end of the uplink pair: skbs (prebuilt Ethernet
//! frames written with `sendmmsg` on an AF_PACKET socket, protocol 0: it
//! receives nothing), which the host's end receives as skbs; and XDP
//! frames (an XDP program redirecting BPF_PROG_TEST_RUN's live frames into
//! the veth), which the host's end receives as a NIC's driver hands them
//! over: no skb until something passes them on. On a veth, the receiving
//! side's work (XDP, or the skb, tc and the stack) runs on the sending CPU,
//! in softirq right after each batch: so the packets per second of one
//! window are what one core sustains sender included, and that CPU's busy
//! time per dropped packet is the cost per packet. Windows are bounded in
//! time (`--seconds`) and count ([`MAX_PACKETS`]), interleaved across the
//! beds round by round.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netpath_tests::{
    frames::{self, ETH_P_IPV4},
    prog_run::run_live_frames,
    raw::PacketSocket,
    topology::{Topology, HOST_UPLINK, HOST_UPLINK_IP, WORLD_IP},
};
use serde::Serialize;

use super::{
    baseline_prog::XdpRedirect,
    cpu::{latency_cpu, Pinned},
    options::{Options, Section},
    plain::ScratchFile,
    report::{ratio, section_targets, values},
    results::{Results, Series, Target},
};

/// The denied client and its prefix.
const DENIED_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const DENIED_PREFIX: &str = "198.18.0.192/26";
/// The guarded range, the flooded guarded port, and the unguarded port the
/// denied source floods.
const GUARDED: &str = "5000-5999/udp";
const GUARDED_PORT: u16 = 5500;
const OPEN_PORT: u16 = 9999;
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// At most this many frames per window, whatever its length.
pub const MAX_PACKETS: u64 = 50_000_000;
/// UDP payload bytes (a 60-byte frame, the Ethernet minimum).
const PAYLOAD: usize = 18;
/// Live frames of the XDP sender's first BPF_PROG_TEST_RUN call in a
/// window; later calls send what takes about [`LIVE_RUN_SECONDS`] at the
/// rate measured (the window's time is checked between calls).
const LIVE_FRAMES_PER_RUN: u32 = 65_536;
const LIVE_RUN_SECONDS: f64 = 1.0;

/// How the flood reaches the host's end of the uplink pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sender {
    /// Skbs from an AF_PACKET socket: the host's end receives skbs, which
    /// its XDP program gets copied into an XDP buffer first.
    Skbs,
    /// XDP frames redirected into the veth: the host's end receives what a
    /// NIC's driver hands over, no skb yet (its NAPI is on: XDP attached,
    /// or GRO switched on for the window).
    XdpFrames,
}

impl Sender {
    pub const ALL: [Sender; 2] = [Sender::XdpFrames, Sender::Skbs];

    /// The netpath bed whose drops count for this sender's target: what
    /// `uplink_xdp = "auto"` runs on an uplink that receives such packets.
    /// XDP frames are what a NIC with native XDP hands over, where `auto`
    /// attaches XDP; an uplink that hands over skbs (a veth) would copy
    /// each into an XDP buffer before XDP ran, so `auto` leaves XDP off
    /// there and the guard runs at tc ingress.
    pub fn deployed(self) -> DropVariant {
        match self {
            Sender::XdpFrames => DropVariant::NetpathXdp,
            Sender::Skbs => DropVariant::NetpathTc,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sender::Skbs => "skbs",
            Sender::XdpFrames => "xdp-frames",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropVariant {
    /// netpath, `uplink_xdp = "on"`.
    NetpathXdp,
    /// netpath, `uplink_xdp = "off"`: the guard runs in uplink_ingress (tcx).
    NetpathTc,
    /// nftables, netdev family, ingress hook of the host's uplink.
    NftablesIngress,
    /// Nothing drops early: the host's UDP layer discards (no socket).
    NoFilter,
}

impl DropVariant {
    pub const ALL: [DropVariant; 4] =
        [DropVariant::NetpathXdp, DropVariant::NetpathTc, DropVariant::NftablesIngress, DropVariant::NoFilter];

    pub fn name(self) -> &'static str {
        match self {
            DropVariant::NetpathXdp => "netpath-xdp",
            DropVariant::NetpathTc => "netpath-tc",
            DropVariant::NftablesIngress => "nftables-ingress",
            DropVariant::NoFilter => "no-filter",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flood {
    /// To a guarded port nothing publishes.
    GuardedPort,
    /// From a denied source.
    DeniedSource,
}

impl Flood {
    pub const ALL: [Flood; 2] = [Flood::GuardedPort, Flood::DeniedSource];

    pub fn name(self) -> &'static str {
        match self {
            Flood::GuardedPort => "guarded-port",
            Flood::DeniedSource => "denied-source",
        }
    }

    fn source(self) -> Ipv4Addr {
        match self {
            Flood::GuardedPort => WORLD_IP,
            Flood::DeniedSource => DENIED_CLIENT,
        }
    }

    fn port(self) -> u16 {
        match self {
            Flood::GuardedPort => GUARDED_PORT,
            Flood::DeniedSource => OPEN_PORT,
        }
    }

    /// The reason netpath counts the drop under.
    fn reason(self) -> &'static str {
        match self {
            Flood::GuardedPort => "not-published",
            Flood::DeniedSource => "denied-source",
        }
    }
}

/// The nftables ruleset: the same two checks as netpath's guard, at the
/// earliest hook nftables has (netdev ingress), with named counters.
fn nft_ruleset() -> String {
    format!(
        "table netdev npguard
delete table netdev npguard
table netdev npguard {{
  set denied {{ type ipv4_addr; flags interval; elements = {{ {DENIED_PREFIX} }} }}
  set published {{ type inet_service; elements = {{ 5353 }} }}
  counter guarded {{ }}
  counter denied {{ }}
  chain ingress {{
    type filter hook ingress device \"{HOST_UPLINK}\" priority -500; policy accept;
    ip saddr @denied counter name \"denied\" drop
    ip daddr {HOST_UPLINK_IP} udp dport 5000-5999 udp dport != @published counter name \"guarded\" drop
  }}
}}
"
    )
}

/// One bed: its own namespaces (host, world), and what drops there.
struct DropBed {
    variant: DropVariant,
    topo: Topology,
    /// The host uplink's MAC, the frames' destination.
    host_mac: [u8; 6],
    world_mac: [u8; 6],
}

fn read_mac(topo: &Topology, ns: &str, ifname: &str) -> Result<[u8; 6]> {
    let text = topo.in_ns(ns, || Ok(std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?));
    let text = match text {
        Ok(t) => t,
        // /sys shows the namespace that mounted it: ask ip instead.
        Err(_) => {
            String::from_utf8_lossy(&topo.exec(ns, &["cat", &format!("/sys/class/net/{ifname}/address")])?.stdout)
                .into_owned()
        }
    };
    let bytes: Vec<u8> =
        text.trim().split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().context("parsing a MAC")?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{ifname}: not a MAC: {text:?}"))
}

impl DropBed {
    fn new(variant: DropVariant) -> Result<DropBed> {
        let mut topo = Topology::new(0)?;
        match variant {
            DropVariant::NetpathXdp | DropVariant::NetpathTc => {
                let xdp = if variant == DropVariant::NetpathXdp { "on" } else { "off" };
                topo.agent_args(&[
                    "--uplink-xdp",
                    xdp,
                    "--masquerade-ports",
                    "10000-20000",
                    "--guarded-ports",
                    GUARDED,
                    "--denied-sources",
                    DENIED_PREFIX,
                ]);
                topo.start_agent()?;
            }
            DropVariant::NftablesIngress => {
                let file = ScratchFile::write(&topo, "guard.nft", &nft_ruleset())?;
                let path = file.0.display().to_string();
                topo.exec(&topo.host, &["nft", "-f", &path])?;
            }
            DropVariant::NoFilter => {}
        }
        let host_mac = read_mac(&topo, &topo.host, HOST_UPLINK)?;
        let world_mac = read_mac(&topo, &topo.world, "eth0")?;
        Ok(DropBed { variant, topo, host_mac, world_mac })
    }

    /// The packets of `flood` dropped (or, without a filter, discarded by
    /// the stack) so far.
    fn dropped(&self, flood: Flood) -> Result<u64> {
        match self.variant {
            DropVariant::NetpathXdp | DropVariant::NetpathTc => self.topo.uplink_drops(flood.reason()),
            DropVariant::NftablesIngress => {
                let name = match flood {
                    Flood::GuardedPort => "guarded",
                    Flood::DeniedSource => "denied",
                };
                let out = self.topo.exec(&self.topo.host, &["nft", "list", "counter", "netdev", "npguard", name])?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let packets = text.split_whitespace().skip_while(|w| *w != "packets").nth(1);
                packets.and_then(|p| p.parse().ok()).with_context(|| format!("nft counter {name}: {text}"))
            }
            DropVariant::NoFilter => self.topo.in_ns(&self.topo.host, || {
                // The thread's own namespace (/proc/self would be the process's).
                let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
                let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
                let (Some(names), Some(vals)) = (udp.first(), udp.get(1)) else { bail!("no Udp lines in snmp") };
                let i = names.split_whitespace().position(|n| n == "NoPorts").context("no NoPorts")?;
                Ok(vals.split_whitespace().nth(i).context("short Udp line")?.parse()?)
            }),
        }
    }

    fn frame(&self, flood: Flood) -> Vec<u8> {
        let (src, dst) = (flood.source().octets(), HOST_UPLINK_IP.octets());
        let udp = frames::udp(src, dst, 40000, flood.port(), &[0x5a; PAYLOAD]);
        frames::eth(self.host_mac, self.world_mac, ETH_P_IPV4, &frames::ipv4(src, dst, frames::IPPROTO_UDP, &[], &udp))
    }

    /// One window of `flood` sent by `sender`: sends for `len` (at most
    /// MAX_PACKETS frames) from a thread pinned to `cpu`, and returns what
    /// it measured.
    fn window(&self, flood: Flood, sender: Sender, len: Duration, cpu: usize) -> Result<Window> {
        let frame = self.frame(flood);
        // XDP frames need the host end's NAPI, which XDP turns on and GRO
        // does without XDP; only for the window, so that the skb windows
        // measure the veth as it is set up.
        let napi = match sender {
            Sender::XdpFrames if self.variant != DropVariant::NetpathXdp => Some(GroOn::switch(&self.topo)?),
            _ => None,
        };
        let before = self.dropped(flood)?;
        let stat0 = CpuStat::read(cpu)?;
        let started = Instant::now();
        let sent = self.topo.in_ns(&self.topo.world, || {
            let _pin = Pinned::to(cpu)?;
            match sender {
                Sender::Skbs => flood_frames(&frame, len, MAX_PACKETS),
                Sender::XdpFrames => flood_xdp_frames(&frame, len, MAX_PACKETS),
            }
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let stat1 = CpuStat::read(cpu)?;
        // The last batches' softirq work is done when send returns; the
        // counters are read after.
        let dropped = self.dropped(flood)?.saturating_sub(before);
        drop(napi);
        let busy_ns = (stat1.busy - stat0.busy) as f64 * stat1.ns_per_tick;
        let softirq_ns = (stat1.softirq - stat0.softirq) as f64 * stat1.ns_per_tick;
        let per = |ns: f64| if dropped > 0 { ns / dropped as f64 } else { f64::NAN };
        Ok(Window {
            sent,
            dropped,
            drops_per_sec: dropped as f64 / elapsed,
            cpu_ns_per_drop: per(busy_ns),
            softirq_ns_per_drop: per(softirq_ns),
        })
    }
}

/// GRO switched on on the host's end of the uplink pair (so that its NAPI
/// receives XDP frames without an XDP program) until dropped.
struct GroOn<'a>(&'a Topology);

impl<'a> GroOn<'a> {
    fn switch(topo: &'a Topology) -> Result<GroOn<'a>> {
        topo.in_ns(&topo.host, || set_gro(HOST_UPLINK, true))?;
        Ok(GroOn(topo))
    }
}

impl Drop for GroOn<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.in_ns(&self.0.host, || set_gro(HOST_UPLINK, false)) {
            eprintln!("   switching GRO off on {HOST_UPLINK} again: {e:#}");
        }
    }
}

/// Switches GRO on or off on `ifname` of the calling thread's namespace
/// (`ETHTOOL_SGRO`; on a veth, GRO without XDP turns its NAPI on).
fn set_gro(ifname: &str, on: bool) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _rest: [u8; 16],
    }
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("{ifname}: not an interface name");
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_SGRO, data: on as u32 };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, _rest: [0; 16] };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: a plain socket(2) call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a socket for ethtool");
    }
    // SAFETY: fd was just returned to us and nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: req is an ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("ETHTOOL_SGRO {on} on {ifname}"));
    }
    Ok(())
}

/// The busy and softirq ticks of one CPU (`/proc/stat`).
struct CpuStat {
    busy: u64,
    softirq: u64,
    ns_per_tick: f64,
}

impl CpuStat {
    fn read(cpu: usize) -> Result<CpuStat> {
        let text = std::fs::read_to_string("/proc/stat")?;
        let tag = format!("cpu{cpu} ");
        let line = text.lines().find(|l| l.starts_with(&tag)).with_context(|| format!("no {tag}in /proc/stat"))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            bail!("short /proc/stat line {line:?}");
        }
        // user nice system idle iowait irq softirq steal
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(CpuStat { busy, softirq: v[6], ns_per_tick: 1e9 / hz })
    }
}

/// Sends `frame` from an AF_PACKET socket on the world's `eth0` (the
/// calling thread's namespace) until `len` has passed or `max` frames went;
/// returns how many the kernel took.
fn flood_frames(frame: &[u8], len: Duration, max: u64) -> Result<u64> {
    let socket = PacketSocket::open_send_only("eth0").context("the flood socket on the world's eth0")?;
    let mut iov = libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() };
    // SAFETY: zeroed mmsghdr is valid (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let deadline = Instant::now() + len;
    let mut sent = 0u64;
    while sent < max && Instant::now() < deadline {
        // SAFETY: msgs point at one valid iovec of the frame, alive here.
        let n = unsafe { libc::sendmmsg(socket.fd().as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            return Err(e).context("sendmmsg");
        }
        sent += n as u64;
    }
    Ok(sent)
}

/// Sends `frame` as XDP frames into the world's `eth0` (the calling
/// thread's namespace) until `len` has passed or `max` frames went; returns
/// how many were sent.
fn flood_xdp_frames(frame: &[u8], len: Duration, max: u64) -> Result<u64> {
    let ifindex = nix::net::if_::if_nametoindex("eth0").context("the world's eth0")?;
    let prog = XdpRedirect::load(ifindex)?;
    let started = Instant::now();
    let deadline = started + len;
    let mut sent = 0u64;
    // Each call sets up and tears down its page pool, which waits for the
    // kernel (an RCU grace period) with the CPU idle: calls long enough to
    // make that negligible, from the rate of the first, shorter one.
    let mut per_run = LIVE_FRAMES_PER_RUN as u64;
    while sent < max && Instant::now() < deadline {
        let n = per_run.min(max - sent).min(u32::MAX as u64) as u32;
        let run_started = Instant::now();
        run_live_frames(prog.fd(), frame, n).context("BPF_PROG_TEST_RUN of live frames")?;
        sent += n as u64;
        let rate = n as f64 / run_started.elapsed().as_secs_f64().max(1e-6);
        let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
        per_run = ((rate * left.min(LIVE_RUN_SECONDS)) as u64).max(LIVE_FRAMES_PER_RUN as u64);
    }
    Ok(sent)
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub sent: u64,
    pub dropped: u64,
    pub drops_per_sec: f64,
    pub cpu_ns_per_drop: f64,
    pub softirq_ns_per_drop: f64,
}

/// One variant under one flood, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct DropPoint {
    pub variant: DropVariant,
    pub flood: Flood,
    pub sender: Sender,
    pub drops_per_sec: Series,
    pub cpu_ns_per_drop: Series,
    pub softirq_ns_per_drop: Series,
    /// Frames sent and dropped per round (dropped < sent: some got past).
    pub sent: Vec<u64>,
    pub dropped: Vec<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DropFigures {
    pub cpu: usize,
    pub frame_bytes: usize,
    pub seconds_per_window: f64,
    pub points: Vec<DropPoint>,
    /// The guard's own cost under BPF_PROG_TEST_RUN.
    pub prog_run: Vec<ProgRunFigure>,
}

/// Nanoseconds per frame of a program under BPF_PROG_TEST_RUN (the
/// kernel's repeat loop: the guard rewrites nothing), one value per round.
#[derive(Clone, Debug, Serialize)]
pub struct ProgRunFigure {
    pub case: &'static str,
    pub program: &'static str,
    pub verdict: &'static str,
    pub ns: Series,
}

/// Repetitions per BPF_PROG_TEST_RUN figure.
const PROG_RUN_REPEAT: u32 = 200_000;

/// The guard's cases under BPF_PROG_TEST_RUN, configured as the beds are,
/// on a thread of its own (the harness unshares its network namespace).
fn prog_run_figures(rounds: usize) -> Result<Vec<ProgRunFigure>> {
    use netpath_common::{
        config::{CFG_F_DENIED_SOURCES, CFG_F_GUARDED_PORTS},
        uplink_guard::GuardedPorts,
        HookId,
    };
    use netpath_tests::{fixtures, prog_run::run};
    let host = HOST_UPLINK_IP.octets();
    let frame = |src: Ipv4Addr, port: u16| {
        let udp = frames::udp(src.octets(), host, 40000, port, &[0x5a; PAYLOAD]);
        frames::eth(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            ETH_P_IPV4,
            &frames::ipv4(src.octets(), host, 17, &[], &udp),
        )
    };
    let cases: [(&'static str, Vec<u8>, bool, u32); 4] = [
        ("guarded port, nothing published (drop)", frame(WORLD_IP, GUARDED_PORT), true, 1),
        ("denied source (drop)", frame(DENIED_CLIENT, OPEN_PORT), true, 1),
        ("unguarded port, guard configured (pass)", frame(WORLD_IP, OPEN_PORT), true, 2),
        ("unguarded port, no guard configured (pass)", frame(WORLD_IP, OPEN_PORT), false, 2),
    ];
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Vec<ProgRunFigure>> {
                let mut values: Vec<Vec<f64>> = vec![vec![]; cases.len() * 2];
                for _ in 0..rounds {
                    let mut h = fixtures::unconfigured_harness();
                    h.dp.sync_host_addrs4(&[(host, 2)])?;
                    let mut ports = GuardedPorts::default();
                    ports.add(17, 5000, 5999);
                    h.dp.write_guarded_ports(&ports)?;
                    h.dp.sync_denied_sources4(&[(26, [198, 18, 0, 192])])?;
                    for (i, (_, f, guard, want)) in cases.iter().enumerate() {
                        let flags = if *guard { CFG_F_GUARDED_PORTS | CFG_F_DENIED_SOURCES } else { 0 };
                        h.dp.write_config(&fixtures::config(flags))?;
                        for (j, hook) in [HookId::UplinkXdp, HookId::UplinkIngress].into_iter().enumerate() {
                            let fd = h.dp.program_fd(hook.program())?;
                            let r = run(fd, f, PROG_RUN_REPEAT)?;
                            // XDP: 1 drop, 2 pass; tc: 2 shot, 0 ok.
                            let ok = match hook {
                                HookId::UplinkXdp => r.verdict == *want,
                                _ => r.verdict == if *want == 1 { 2 } else { 0 },
                            };
                            if !ok {
                                bail!("{} on {}: verdict {}", hook.program(), cases[i].0, r.verdict);
                            }
                            values[i * 2 + j].push(r.duration_ns as f64);
                        }
                    }
                }
                let mut out = vec![];
                for (i, (case, _, _, want)) in cases.iter().enumerate() {
                    for (j, hook) in [HookId::UplinkXdp, HookId::UplinkIngress].into_iter().enumerate() {
                        out.push(ProgRunFigure {
                            case,
                            program: hook.program(),
                            verdict: if *want == 1 { "drop" } else { "pass" },
                            ns: Series::new(values[i * 2 + j].clone()),
                        });
                    }
                }
                Ok(out)
            })
            .join()
            .unwrap_or_else(|_| bail!("the BPF_PROG_TEST_RUN thread panicked"))
    })
}

impl DropFigures {
    pub fn point(&self, v: DropVariant, f: Flood, sender: Sender) -> Option<&DropPoint> {
        self.points.iter().find(|p| p.variant == v && p.flood == f && p.sender == sender)
    }

    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Drop.name();
        let mut out = vec![];
        for sender in Sender::ALL {
            for flood in Flood::ALL {
                let netpath = sender.deployed();
                let what = match sender {
                    Sender::XdpFrames => format!(
                        "drop ({}, {}): netpath's XDP drops at least as many packets per second per core as \
                         nftables' netdev ingress hook",
                        flood.name(),
                        sender.name()
                    ),
                    Sender::Skbs => format!(
                        "drop ({}, {}): netpath as `uplink_xdp = \"auto\"` runs it on an uplink that hands it skbs \
                         (the guard at tc ingress) drops at least as many packets per second per core as nftables' \
                         netdev ingress hook",
                        flood.name(),
                        sender.name()
                    ),
                };
                let points =
                    (self.point(netpath, flood, sender), self.point(DropVariant::NftablesIngress, flood, sender));
                out.push(match points {
                    (Some(x), Some(n)) => {
                        let (a, b) = (x.drops_per_sec.median, n.drops_per_sec.median);
                        let mut value = format!(
                            "{:.0} vs {:.0} drops/s ({:.2}x); {:.0} vs {:.0} ns of CPU per drop",
                            a,
                            b,
                            a / b,
                            x.cpu_ns_per_drop.median,
                            n.cpu_ns_per_drop.median
                        );
                        // What XDP forced on would do there, beside it.
                        if let (Sender::Skbs, Some(forced)) =
                            (sender, self.point(DropVariant::NetpathXdp, flood, sender))
                        {
                            let f = forced.drops_per_sec.median;
                            value.push_str(&format!(" (XDP forced on: {f:.0} drops/s, {:.2}x)", f / b));
                        }
                        Target::new(section, &what, value, a >= b)
                    }
                    _ => Target::not_measured(section, &what),
                });
            }
        }
        out
    }
}

/// Builds the beds, runs the interleaved windows, and drops the beds.
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<DropFigures> {
    eprintln!("== drop: floods from the world, dropped per core");
    let mut beds = vec![];
    for v in DropVariant::ALL {
        match DropBed::new(v) {
            Ok(b) => beds.push(b),
            Err(e) => {
                eprintln!("   {}: FAILED to set up: {e:#}", v.name());
                failures.push(format!("drop: {}: {e:#}", v.name()));
            }
        }
    }
    let cpu = latency_cpu();
    let len = opts.load_time();
    let mut windows: Vec<(DropVariant, Flood, Sender, Window)> = vec![];
    for round in 0..opts.rounds {
        for sender in Sender::ALL {
            for flood in Flood::ALL {
                for bed in &beds {
                    super::check_interrupted()?;
                    match bed.window(flood, sender, len, cpu) {
                        Ok(w) => {
                            eprintln!(
                                "   round {} {:<10} {:<13} {:<16} {:>10.0} drops/s, {:>6.0} ns CPU/drop ({} sent, {} \
                                 dropped)",
                                round + 1,
                                sender.name(),
                                flood.name(),
                                bed.variant.name(),
                                w.drops_per_sec,
                                w.cpu_ns_per_drop,
                                w.sent,
                                w.dropped
                            );
                            windows.push((bed.variant, flood, sender, w));
                        }
                        Err(e) => {
                            let what = format!("{} {} {}", sender.name(), flood.name(), bed.variant.name());
                            eprintln!("   {what}: FAILED: {e:#}");
                            failures.push(format!("drop: {what}: {e:#}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    drop(beds);
    let mut points = vec![];
    for sender in Sender::ALL {
        for flood in Flood::ALL {
            for v in DropVariant::ALL {
                let ws: Vec<&Window> = windows
                    .iter()
                    .filter(|(wv, wf, ws, _)| *wv == v && *wf == flood && *ws == sender)
                    .map(|w| &w.3)
                    .collect();
                if ws.is_empty() {
                    continue;
                }
                points.push(DropPoint {
                    variant: v,
                    flood,
                    sender,
                    drops_per_sec: Series::of(&ws, |w| w.drops_per_sec),
                    cpu_ns_per_drop: Series::of(&ws, |w| w.cpu_ns_per_drop),
                    softirq_ns_per_drop: Series::of(&ws, |w| w.softirq_ns_per_drop),
                    sent: ws.iter().map(|w| w.sent).collect(),
                    dropped: ws.iter().map(|w| w.dropped).collect(),
                });
            }
        }
    }
    eprintln!("== drop: BPF_PROG_TEST_RUN of the guard");
    let prog_run = prog_run_figures(opts.rounds).unwrap_or_else(|e| {
        eprintln!("   FAILED: {e:#}");
        failures.push(format!("drop: BPF_PROG_TEST_RUN: {e:#}"));
        vec![]
    });
    Ok(DropFigures { cpu, frame_bytes: 14 + 20 + 8 + PAYLOAD, seconds_per_window: opts.seconds, points, prog_run })
}

pub fn section(s: &mut String, r: &Results, d: &DropFigures) {
    let _ = writeln!(s, "## Drop: a flood the uplink never accepts, per core\n");
    section_targets(s, r, Section::Drop);
    let _ = writeln!(
        s,
        "{}-byte UDP frames sent from the world namespace by one thread pinned to vCPU {} onto the world's end \
         of the uplink veth pair, {:.1} s windows (at most {MAX_PACKETS} frames), interleaved across the beds, \
         {} round(s), medians. Two senders: `xdp-frames`, an XDP program redirecting BPF_PROG_TEST_RUN's live \
         frames into the veth (batches of 64; calls of about {LIVE_RUN_SECONDS} s, since each call's page pool \
         teardown leaves the CPU idle for some milliseconds, which counts against every bed's drops/s alike), \
         so that the host's end receives XDP frames in its NAPI poll as a host gets them from a NIC's driver: \
         XDP judges them before any skb exists, while tc and nftables get the skb built for them (the beds without XDP have GRO switched on \
         on the host's end for these windows, which is what turns its NAPI on); and `skbs`, `sendmmsg` of \
         {BATCH} frames on an AF_PACKET socket, which the host's end receives as skbs: veth copies each into \
         an XDP buffer before its XDP program runs, so XDP's advantage cannot show (on such uplinks \
         `uplink_xdp = \"auto\"` leaves XDP off and `netpath-tc` is the figure). On a veth the receiving side \
         runs on the sending CPU, so drops/s is what one core sustains, sender included, and \"CPU/drop\" is \
         that vCPU's busy time (/proc/stat) per dropped frame (softirq: the part accounted as softirq). \
         Floods: `guarded-port`, from 198.18.0.2 to the host's 198.18.0.1:{GUARDED_PORT}/udp (guarded \
         `{GUARDED}`, nothing published there); `denied-source`, from 198.18.0.200 (denied `{DENIED_PREFIX}`) \
         to the unguarded port {OPEN_PORT}/udp. Variants: `netpath-xdp` (`uplink_xdp = \"on\"`, the guard in \
         `uplink_xdp`, native XDP on the veth), `netpath-tc` (`\"off\"`, the guard in `uplink_ingress`, tcx), \
         `nftables-ingress` (the same two checks in a netdev-family ingress chain on the host's uplink, an \
         interval set for the sources and a set of published ports excepted, named counters), `no-filter` \
         (nothing drops early: the host's UDP layer discards them, counted as `NoPorts`). Every drop is \
         counted; netpath sends at most 1000 drop events a second per CPU to the monitor (without that \
         budget one ring-buffer event per dropped packet, and the agent reading them, cost about 5x the \
         drop: 140k-200k drops/s). Shared machine: load from elsewhere lands on all beds alike \
         (interleaved), but the spread between rounds is wide; compare the ratios, not the absolute rates.\n",
        d.frame_bytes, d.cpu, d.seconds_per_window, r.method.rounds
    );
    let _ = writeln!(
        s,
        "| sender | flood | variant | drops/s | vs nftables | rounds | CPU ns/drop | vs nftables | softirq ns/drop | sent / dropped per round |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---|---:|---:|---:|---|");
    for p in &d.points {
        let nft = d.point(DropVariant::NftablesIngress, p.flood, p.sender);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {:.0} | {} | {:.0} | {} |",
            p.sender.name(),
            p.flood.name(),
            p.variant.name(),
            p.drops_per_sec.median,
            ratio(p.drops_per_sec.median, nft.map(|n| n.drops_per_sec.median)),
            values(&p.drops_per_sec, 0),
            p.cpu_ns_per_drop.median,
            ratio(p.cpu_ns_per_drop.median, nft.map(|n| n.cpu_ns_per_drop.median)),
            p.softirq_ns_per_drop.median,
            p.sent.iter().zip(&p.dropped).map(|(a, b)| format!("{a}/{b}")).collect::<Vec<_>>().join(", "),
        );
    }
    s.push('\n');
    if d.prog_run.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### The guard under BPF_PROG_TEST_RUN
"
    );
    let _ = writeln!(
        s,
        "The same frames run through `uplink_xdp` and `uplink_ingress` (no XDP attached, so the tc program \
         judges) by the kernel's test runner, {PROG_RUN_REPEAT} repetitions per figure (the guard rewrites \
         nothing, so the repeat loop is valid), runner overhead included; median over {} round(s), each \
         loading the object afresh. Drops past the first 1000 a second are counted without a monitor event, \
         as under a flood. Maps as the beds have them: one host address, `5000-5999/udp` guarded, \
         `{DENIED_PREFIX}` denied, no mapping.\n",
        r.method.rounds
    );
    let _ = writeln!(s, "| case | program | verdict | ns/frame | rounds |");
    let _ = writeln!(s, "|---|---|---|---:|---|");
    for f in &d.prog_run {
        let _ =
            writeln!(s, "| {} | `{}` | {} | {:.0} | {} |", f.case, f.program, f.verdict, f.ns.median, values(&f.ns, 0));
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(variant: DropVariant, sender: Sender, drops_per_sec: f64) -> DropPoint {
        DropPoint {
            variant,
            flood: Flood::DeniedSource,
            sender,
            drops_per_sec: Series::new(vec![drops_per_sec]),
            cpu_ns_per_drop: Series::new(vec![1e9 / drops_per_sec]),
            softirq_ns_per_drop: Series::new(vec![0.0]),
            sent: vec![],
            dropped: vec![],
        }
    }

    #[test]
    fn each_sender_is_judged_on_what_auto_runs_for_it_with_forced_xdp_beside_skbs() {
        let figures = DropFigures {
            cpu: 1,
            frame_bytes: 60,
            seconds_per_window: 1.0,
            points: vec![
                point(DropVariant::NetpathXdp, Sender::XdpFrames, 300.0),
                point(DropVariant::NetpathTc, Sender::XdpFrames, 50.0),
                point(DropVariant::NftablesIngress, Sender::XdpFrames, 100.0),
                point(DropVariant::NetpathXdp, Sender::Skbs, 95.0),
                point(DropVariant::NetpathTc, Sender::Skbs, 105.0),
                point(DropVariant::NftablesIngress, Sender::Skbs, 100.0),
            ],
            prog_run: vec![],
        };
        let targets = figures.targets();
        let of =
            |sender: &str| targets.iter().find(|t| t.what.contains(&format!("(denied-source, {sender})"))).unwrap();
        let frames = of("xdp-frames");
        assert!(frames.met == Some(true) && frames.measured.starts_with("300 vs 100"), "{}", frames.measured);
        // Skbs: tc's 105, not XDP's 95, with XDP's beside it.
        let skbs = of("skbs");
        assert!(skbs.met == Some(true) && skbs.measured.starts_with("105 vs 100"), "{}", skbs.measured);
        assert!(skbs.measured.contains("XDP forced on: 95 drops/s, 0.95x"), "{}", skbs.measured);
        // Below nftables is not met.
        let mut slower = figures;
        slower.points[4] = point(DropVariant::NetpathTc, Sender::Skbs, 99.0);
        assert!(slower.targets().iter().any(|t| t.what.contains("(denied-source, skbs)") && t.met == Some(false)));
    }

    /// The XDP sender's frames reach the host's end of the uplink only
    /// while its NAPI is on (GRO, for a bed without XDP): then the frames
    /// sent end up where the bed counts them (the host's UDP `NoPorts`;
    /// nearly all: on a loaded machine the veth's ring may fill and refuse
    /// a few), and without it none does (the veth refuses them).
    #[test]
    fn xdp_frames_arrive_while_the_host_end_has_napi() {
        let bed = DropBed::new(DropVariant::NoFilter).unwrap();
        let flood = Flood::GuardedPort;
        let w = bed.window(flood, Sender::XdpFrames, Duration::from_millis(200), 0).unwrap();
        assert!(w.sent > 0, "nothing sent");
        assert!(
            w.dropped <= w.sent && w.dropped * 10 >= w.sent * 9,
            "{} of {} frames sent reached the host's UDP layer",
            w.dropped,
            w.sent
        );
        let before = bed.dropped(flood).unwrap();
        let frame = bed.frame(flood);
        let sent =
            bed.topo.in_ns(&bed.topo.world, || flood_xdp_frames(&frame, Duration::from_millis(100), 10_000)).unwrap();
        assert!(sent > 0);
        assert_eq!(bed.dropped(flood).unwrap(), before, "GRO off again: the veth takes no XDP frame");
    }
}
