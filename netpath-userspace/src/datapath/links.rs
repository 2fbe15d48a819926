//! Attaching programs through pinned links. A restarted agent swaps its
//! freshly loaded programs into the pinned links atomically (so nothing is
//! attached twice and traffic never sees a gap).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    sys::SyscallError,
};
use netpath_common::{
    hooks::{Attach, Target},
    Hook, Side,
};

use super::Datapath;

/// Pin name of the cgroup attachment target.
pub const CGROUP_TARGET: &str = "cgroup";

fn tc_attach_type(side: Side) -> TcAttachType {
    match side {
        Side::Ingress => TcAttachType::Ingress,
        Side::Egress => TcAttachType::Egress,
    }
}

fn not_found(err: &LinkError) -> bool {
    matches!(err, LinkError::SyscallError(SyscallError { io_error, .. }) if io_error.kind() == io::ErrorKind::NotFound)
}

impl Datapath {
    /// Where the link of `hook` on `target` (an interface name; ignored for
    /// cgroup hooks) is pinned.
    pub fn link_pin(&self, target: &str, hook: &Hook) -> PathBuf {
        let target = if hook.target == Target::Cgroup { CGROUP_TARGET } else { target };
        self.pin_dir.join("links").join(format!("{}_{}", hook.pin_prefix, target.replace('.', "%")))
    }

    /// Attaches the program of `hook` to `target` (an interface name, or a
    /// cgroup directory for the socket hooks) through a pinned link.
    /// If a pinned link is already there (restart), the new program replaces
    /// the old one inside that link atomically; if that link is dead (its
    /// interface was recreated), it is replaced by a fresh one.
    pub fn attach(&mut self, target: &str, hook: &Hook) -> Result<()> {
        let pin = self.link_pin(target, hook);
        if let Attach::SockAddr(_) = hook.attach {
            return self.attach_sock(target, hook, &pin);
        }
        match PinnedLink::from_pin(&pin) {
            Ok(old) => match self.replace_in_link(hook, FdLink::from(old)) {
                Ok(link) => {
                    self.held_links.insert(pin, link);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("pinned link {} is stale ({e:#}); attaching a new one", pin.display());
                    fs::remove_file(&pin).with_context(|| format!("removing stale pin {}", pin.display()))?;
                }
            },
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
        }
        let link = self.attach_new(target, hook)?;
        let pinned = link.pin(&pin).with_context(|| format!("pinning link {}", pin.display()))?;
        self.held_links.insert(pin, pinned.into());
        Ok(())
    }

    /// cgroup links cannot have their program swapped through aya, so a
    /// restart attaches the new program first and then drops the old link.
    /// Running both for a moment is harmless: the translations are
    /// idempotent (a rewritten address is no longer a published one).
    fn attach_sock(&mut self, cgroup: &str, hook: &Hook, pin: &Path) -> Result<()> {
        let what = || format!("attaching {} to cgroup {cgroup}", hook.program);
        let dir = fs::File::open(cgroup).with_context(|| format!("opening cgroup {cgroup}"))?;
        let prog: &mut CgroupSockAddr = self.program_mut(hook.program)?.try_into()?;
        let id = prog.attach(&dir, CgroupAttachMode::default()).with_context(what)?;
        let link: FdLink = prog.take_link(id)?.try_into().with_context(what)?;
        match fs::remove_file(pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing old pin {}", pin.display())),
        }
        let pinned = link.pin(pin).with_context(|| format!("pinning link {}", pin.display()))?;
        // The old link, if this agent held it, goes now (its pin went above).
        self.held_links.insert(pin.to_path_buf(), pinned.into());
        Ok(())
    }

    /// Puts the program of `hook` into `link`; returns the link's handle,
    /// taken out of the program (which would detach it on drop).
    fn replace_in_link(&mut self, hook: &Hook, link: FdLink) -> Result<FdLink> {
        Ok(match hook.attach {
            Attach::Tcx(_) => {
                let prog: &mut SchedClassifier = self.program_mut(hook.program)?.try_into()?;
                let id = prog.attach_to_link(link.try_into()?)?;
                prog.take_link(id)?.try_into()?
            }
            Attach::Xdp => {
                let prog: &mut Xdp = self.program_mut(hook.program)?.try_into()?;
                let id = prog.attach_to_link(link.try_into()?)?;
                prog.take_link(id)?.try_into()?
            }
            Attach::SockAddr(_) => bail!("{}: cgroup links are replaced, not swapped", hook.program),
        })
    }

    fn attach_new(&mut self, ifname: &str, hook: &Hook) -> Result<FdLink> {
        let what = || format!("attaching {} to {ifname} ({})", hook.program, hook.pin_prefix);
        let link: FdLink = match hook.attach {
            Attach::Tcx(side) => {
                let prog: &mut SchedClassifier = self.program_mut(hook.program)?.try_into()?;
                let id = prog
                    .attach_with_options(ifname, tc_attach_type(side), TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .with_context(what)?;
                prog.take_link(id)?.try_into().with_context(what)?
            }
            Attach::Xdp => {
                let prog: &mut Xdp = self.program_mut(hook.program)?.try_into()?;
                let id = prog.attach(ifname, XdpMode::default()).with_context(what)?;
                prog.take_link(id)?.try_into().with_context(what)?
            }
            Attach::SockAddr(_) => bail!("{}: cgroup hooks attach to a cgroup, not {ifname}", hook.program),
        };
        Ok(link)
    }

    /// Removes the pinned link and the agent's handle on it, which
    /// detaches the program. A missing pin is fine.
    pub fn detach(&mut self, target: &str, hook: &Hook) -> Result<()> {
        let pin = self.link_pin(target, hook);
        self.held_links.remove(&pin);
        remove_pin(&pin)
    }

    /// Removes a link pin by file name (reconciliation of pins nobody owns).
    pub fn remove_link_pin(&mut self, file_name: &str) -> Result<()> {
        let pin = self.pin_dir.join("links").join(file_name);
        self.held_links.remove(&pin);
        remove_pin(&pin)
    }

    /// File names of the link pins that exist.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        let dir = self.pin_dir.join("links");
        let mut out = vec![];
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
}

/// Ids of the programs the kernel runs on `hook` of `target`: for tcx
/// every program on that side of the interface (netpath's or not), for
/// XDP and cgroup hooks the one in netpath's pinned link `pin`
/// ([`Datapath::link_pin`]). Reads only the kernel: callable without the
/// agent's lock.
pub fn attached_program_ids(target: &str, hook: &Hook, pin: &Path) -> Result<Vec<u32>> {
    match hook.attach {
        Attach::Tcx(side) => {
            let (_, progs) = SchedClassifier::query_tcx(target, tc_attach_type(side))
                .with_context(|| format!("querying tcx programs on {target}"))?;
            Ok(progs.iter().map(|p| p.id()).collect())
        }
        Attach::Xdp | Attach::SockAddr(_) => {
            let link = FdLink::from(PinnedLink::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?);
            Ok(vec![link.info()?.program_id()])
        }
    }
}

fn remove_pin(pin: &Path) -> Result<()> {
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing pinned link {}", pin.display())),
    }
}
