//! Pinning a thread to one CPU for the latency measurement: with the
//! client and the server on the same CPU, a round trip is the path's own
//! work plus two context switches, without the cross-CPU wake-ups whose
//! cost on a virtual machine is large and bimodal (idle vCPU exits).

use anyhow::{Context as _, Result};

/// The CPU both ends of the latency connection run on: the last one.
pub fn latency_cpu() -> usize {
    std::thread::available_parallelism().map(|n| n.get() - 1).unwrap_or(0)
}

/// Keeps the calling thread on one CPU until dropped, then restores its
/// previous affinity.
pub struct Pinned {
    saved: libc::cpu_set_t,
}

impl Pinned {
    pub fn to(cpu: usize) -> Result<Pinned> {
        // SAFETY: cpu_set_t is plain data; the calls get its exact size and
        // act on the calling thread (pid 0).
        unsafe {
            let mut saved: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
            }
            Ok(Pinned { saved })
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: as above, with the mask saved earlier.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.saved) };
    }
}

/// Puts thread `tid` on `cpu` alone, or (None) back on every CPU.
pub fn set_thread_cpu(tid: libc::pid_t, cpu: Option<usize>) -> Result<()> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // SAFETY: cpu_set_t is plain data; the call gets its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(c) => libc::CPU_SET(c, &mut set),
            None => (0..cpus).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setting the CPUs of thread {tid}"));
        }
    }
    Ok(())
}
