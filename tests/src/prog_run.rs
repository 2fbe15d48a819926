//! `BPF_PROG_TEST_RUN`: run a program on a crafted frame, no interfaces.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result};
use netpath_userspace::datapath::{Datapath, BPF_OBJECT};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What a program did with a frame.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The program's return value (TC_ACT_*, XDP_*).
    pub verdict: u32,
    /// The frame after the program, with every rewrite.
    pub data: Vec<u8>,
    /// Mean run time per repetition, in ns, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs `prog_fd` on `frame` `repeat` times (at least once).
pub fn run(prog_fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<RunResult> {
    run_with(prog_fd, frame, repeat, None)
}

/// BPF_PROG_TEST_RUN's flag for XDP programs whose frames are real: an
/// XDP_TX or XDP_REDIRECT verdict sends them.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Runs the XDP program `prog_fd` on `repeat` fresh copies of `frame` in the
/// kernel's live-frames mode, in batches of 64 like a driver's NAPI poll:
/// what it redirects (to an interface of the calling thread's network
/// namespace) is sent for real, and the receiving side's softirq work runs
/// on the calling CPU as each batch is flushed.
pub fn run_live_frames(prog_fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<()> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: repeat.max(1),
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    // SAFETY: attr points at a valid frame of the size given; live mode
    // writes no output buffer.
    unsafe { test_run(&mut attr) }
}

/// The BPF_PROG_TEST_RUN call itself.
///
/// # Safety
/// `attr`'s pointers must be valid for the sizes it gives (written to for
/// the outputs).
unsafe fn test_run(attr: &mut TestRunAttr) -> io::Result<()> {
    // SAFETY: attr is a valid `test` member of bpf_attr (see above).
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr as *mut TestRunAttr, std::mem::size_of::<TestRunAttr>())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it for tc programs: all
/// zero but the fields the kernel lets a caller set.
#[repr(C)]
struct SkBuffCtx {
    before_ingress_ifindex: [u32; 9],
    /// The skb's input interface (`skb_iif`), where a route lookup from
    /// the program starts.
    ingress_ifindex: u32,
    /// The device the frame arrives on, in the caller's network namespace.
    ifindex: u32,
    after_ifindex: [u32; 37],
}

/// Runs a tc program once on `frame` as if it arrived on `ifindex` of the
/// calling thread's network namespace (the program reads that device's
/// ifindex, as it does when attached there).
pub fn run_on(prog_fd: RawFd, frame: &[u8], ifindex: u32) -> io::Result<RunResult> {
    let ctx = SkBuffCtx { before_ingress_ifindex: [0; 9], ingress_ifindex: 0, ifindex, after_ifindex: [0; 37] };
    run_with(prog_fd, frame, 1, Some(&ctx))
}

/// [`run_on`] with `ifindex` as the skb's input interface too, as a frame
/// received there has it: the program's route lookups (`bpf_fib_lookup`
/// from the interface it arrived on) are made in full, where [`run`] and
/// [`run_on`] leave them failing at once for want of an input interface.
pub fn run_received_on(prog_fd: RawFd, frame: &[u8], ifindex: u32) -> io::Result<RunResult> {
    let ctx = SkBuffCtx { before_ingress_ifindex: [0; 9], ingress_ifindex: ifindex, ifindex, after_ifindex: [0; 37] };
    run_with(prog_fd, frame, 1, Some(&ctx))
}

fn run_with(prog_fd: RawFd, frame: &[u8], repeat: u32, ctx: Option<&SkBuffCtx>) -> io::Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ctx_size_in: ctx.map_or(0, |_| std::mem::size_of::<SkBuffCtx>() as u32),
        ctx_in: ctx.map_or(0, |c| c as *const SkBuffCtx as u64),
        ..Default::default()
    };
    // SAFETY: attr points at valid buffers of the sizes given.
    unsafe { test_run(&mut attr)? };
    out.truncate(attr.data_size_out as usize);
    Ok(RunResult { verdict: attr.retval, data: out, duration_ns: attr.duration })
}

/// A file descriptor of the loaded program `id` (an agent's program, as
/// `status` lists it), for running it on frames with its real maps.
pub fn program_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    #[repr(C)]
    struct GetFdAttr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = GetFdAttr { prog_id: id, next_id: 0, open_flags: 0 };
    // SAFETY: attr is a valid bpf_attr prefix for this command.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, &attr as *const GetFdAttr, std::mem::size_of::<GetFdAttr>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The netpath object loaded without pins, for packet tests. Test runs see
/// the frame arrive on the loopback device of the calling thread's netns,
/// ifindex 1, so map entries for "the interface" go under [`TEST_IFINDEX`].
pub struct PacketHarness {
    pub dp: Datapath,
}

pub const TEST_IFINDEX: u32 = 1;

impl PacketHarness {
    /// Moves the calling thread into a fresh network namespace (nothing a
    /// test does touches the machine's own) and loads the object.
    pub fn new() -> Result<PacketHarness> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        let dp = Datapath::load_object(BPF_OBJECT)?;
        Ok(PacketHarness { dp })
    }

    pub fn run(&self, program: &str, frame: &[u8]) -> Result<RunResult> {
        let fd = self.dp.program_fd(program)?;
        run(fd, frame, 1).with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))
    }
}
