//! Network namespaces: resolving names, and running code inside one.
//!
//! setns(2) changes the calling *thread*, so work inside another namespace
//! runs on a short-lived thread of its own and never on a tokio worker.

use std::{
    fs::File,
    io::Write as _,
    os::fd::{AsFd, AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    fcntl::OFlag,
    sched::{setns, CloneFlags},
    sys::stat::Mode,
};

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// `ctr1` means `/run/netns/ctr1` (as `ip netns` names them); anything with
/// a `/` is a path, such as `/proc/PID/ns/net`.
pub fn resolve_path(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    }
}

impl Netns {
    pub fn open(spec: &str) -> Result<Netns> {
        if spec.is_empty() {
            bail!("netns is empty: give a name under /run/netns or a path such as /proc/PID/ns/net");
        }
        let path = resolve_path(spec);
        let file =
            File::open(&path).with_context(|| format!("netns {spec:?} ({}) cannot be opened", path.display()))?;
        let fs = nix::sys::statfs::fstatfs(&file).with_context(|| format!("statfs {}", path.display()))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            bail!("netns {spec:?} ({}) is not a namespace file", path.display());
        }
        // A namespace file can be of any type: make sure it is a network one.
        let ns_type = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if ns_type != libc::CLONE_NEWNET {
            bail!("netns {spec:?} ({}) is not a network namespace", path.display());
        }
        Ok(Netns { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Inode number: two handles with the same one name the same namespace.
    pub fn inode(&self) -> Result<u64> {
        Ok(nix::sys::stat::fstat(self.file.as_raw_fd())?.st_ino)
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering netns {}", self.path.display()))?;
                    f()
                })
                .join()
                .unwrap_or_else(|_| bail!("thread inside netns {} panicked", self.path.display()))
        })
    }

    /// Starts `f` on a thread of its own inside this namespace and returns
    /// at once, for work that can go on beside the caller's; the handle's
    /// join gives its result.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let file = self.file.try_clone().with_context(|| format!("netns {}", self.path.display()))?;
        let path = self.path.clone();
        Ok(std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering netns {}", path.display()))?;
            f()
        }))
    }

    /// Moves the calling thread into this namespace for good (used by
    /// `netpathd --netns` before it starts any other thread).
    pub fn enter(&self) -> Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", self.path.display()))
    }
}

// _IO(0xb7, 0x3) from linux/nsfs.h
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Reads a sysctl under /proc/sys of the calling thread's network namespace.
pub fn read_sysctl(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    Ok(std::fs::read_to_string(&path).with_context(|| format!("reading sysctl {key}"))?.trim().to_string())
}

/// Writes a sysctl under /proc/sys of the calling thread's network namespace.
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, format!("{value}\n")).with_context(|| format!("setting sysctl {key}={value}"))
}

/// Sets a per-interface sysctl once, `section` being e.g. `net.ipv4.conf`
/// (see [`SysctlSection`] for many).
pub fn write_iface_sysctl(section: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    SysctlSection::open(section)?.write(ifname, key, value)
}

/// A per-interface sysctl section (`net.ipv6.conf`, ...) of one network
/// namespace, its directory held open: interfaces' settings are written
/// relative to it. Every lookup of `/proc/sys/net` walks a dentry for each
/// network namespace that ever looked there (they share one parent and one
/// name, and are told apart by comparing each one): with thousands of
/// containers that walk is most of a sysctl write's cost, and a lookup
/// below an open section directory makes none.
///
/// Opened from a thread in the namespace it is for; what it writes lands
/// in that namespace whichever thread writes (lookups below a /proc/sys
/// directory stay in the namespace the directory belongs to).
#[derive(Debug)]
pub struct SysctlSection {
    section: String,
    dir: File,
}

impl SysctlSection {
    /// Opens `section` (`net.ipv6.conf`) of the calling thread's namespace.
    pub fn open(section: &str) -> Result<SysctlSection> {
        let path = format!("/proc/sys/{}", section.replace('.', "/"));
        let dir = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(SysctlSection { section: section.to_string(), dir })
    }

    /// Sets `key` of interface `ifname` (its name goes into the path as it
    /// is: it may hold dots).
    pub fn write(&self, ifname: &str, key: &str, value: &str) -> Result<()> {
        self.write_all(ifname, &[(key, value)])
    }

    /// Sets several keys of interface `ifname`, in order.
    pub fn write_all(&self, ifname: &str, settings: &[(&str, &str)]) -> Result<()> {
        for (key, value) in settings {
            let what = || format!("setting sysctl {}.{ifname}.{key}={value}", self.section);
            anyhow::ensure!(!ifname.contains('/') && !key.contains('/'), "{}: not a sysctl name", what());
            let fd = nix::fcntl::openat(
                Some(self.dir.as_raw_fd()),
                format!("{ifname}/{key}").as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(what)?;
            // SAFETY: `fd` was just opened and is owned by nothing else.
            let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            file.write_all(format!("{value}\n").as_bytes()).with_context(what)?;
        }
        Ok(())
    }
}
