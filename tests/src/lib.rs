//! Test harnesses for netpath, reusable by every feature's tests:
//!
//! - [`frames`]: builders for Ethernet/IPv4/UDP/TCP/ICMP/ARP frames with
//!   correct checksums, and independent checksum verification;
//! - [`fuzz`]: the packet fuzzer (random and bent frames through every tc
//!   and XDP program, properties checked on each);
//! - [`cni`]: the CNI plugin driven as a runtime drives it;
//! - [`busybox`]: a container root filesystem without a registry;
//! - [`chaos`]: held connections, probes and the results file of the
//!   crash-safety tests;
//! - [`docker`]: dockerd 20.10 in a sandbox host with netpath as its
//!   network driver, its own storage and sockets, cleaned up on drop;
//! - [`fixtures`]: what every packet test shares (verdicts, addresses,
//!   settings, container entries, frame assertions);
//! - [`podman`]: podman 4 (CNI backend) in a sandbox host, on netpath,
//!   with its own storage and configuration, cleaned up on drop;
//! - [`prog_run`]: runs a loaded BPF program on a frame with
//!   `BPF_PROG_TEST_RUN` and returns its verdict and output bytes;
//! - [`raw`]: packet and raw IP sockets, for what a hostile container sends
//!   and what a victim sees;
//! - [`upgrade`]: netpath built as it was at an earlier commit of this
//!   repository, for upgrade tests;
//! - [`topology`]: a sandbox host, an outside world and containers in
//!   network namespaces with a unique per-run prefix, removed on drop (also
//!   when a test panics), with a running `netpathd`, and the footprint a
//!   removed container must not leave behind.

pub mod busybox;
pub mod chaos;
pub mod cni;
pub mod docker;
pub mod fixtures;
pub mod frames;
pub mod fuzz;
pub mod machine;
pub mod podman;
pub mod prog_run;
pub mod raw;
pub mod topology;
pub mod upgrade;

static DAEMONS_IN_OWN_PROCESS_GROUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For a program that catches Ctrl-C itself and then cleans up (the demo):
/// the daemons the harnesses start from now on (netpathd, containerd,
/// dockerd) go into process groups of their own, so that the terminal's
/// SIGINT reaches only that program and its cleanup still finds them
/// running (dockerd to remove the containers, the agent to answer the
/// driver). Tests leave it off: a test process killed by Ctrl-C has no
/// cleanup to wait for, and its daemons should get the signal too.
pub fn daemons_in_own_process_group() {
    DAEMONS_IN_OWN_PROCESS_GROUP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Applies [`daemons_in_own_process_group`] to a daemon's command.
pub(crate) fn daemon_command(command: &mut std::process::Command) -> &mut std::process::Command {
    if DAEMONS_IN_OWN_PROCESS_GROUP.load(std::sync::atomic::Ordering::SeqCst) {
        std::os::unix::process::CommandExt::process_group(command, 0);
    }
    command
}

/// True when the process may load BPF programs and create namespaces.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The IPv4 address of a container of a test instance that carries IPv4
/// (every instance but an IPv6-only one).
pub trait Ipv4Of {
    fn ip4(&self) -> std::net::Ipv4Addr;
}

impl Ipv4Of for netpath_userspace::model::Container {
    fn ip4(&self) -> std::net::Ipv4Addr {
        self.ip.unwrap_or_else(|| panic!("container {} has no IPv4 address", self.name))
    }
}
