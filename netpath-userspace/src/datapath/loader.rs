//! Loading the embedded object: maps pinned (or adopted from a previous
//! run), programs loaded as the hook table declares them.

use std::{
    fs,
    mem::size_of,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::MapInfo,
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use netpath_common::{
    hooks::Attach, maps as names, ContainerEntry, CtEntry, CtKey4, DatapathConfig, HostAddr4, MappingEntry4,
    MappingKey4, PolicyEntry, PolicyKey4, SockRevNatEntry4, SockRevNatKey4, TrafficStats, HOOKS,
};

use super::Datapath;

/// The BPF object, built by build.rs and embedded in the binary.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// Expected key and value sizes of every pinned map: a pin left by an
/// incompatible build is refused instead of being reused with the wrong
/// layout.
const MAP_LAYOUTS: [(&str, usize, usize); 9] = [
    (names::CONTAINERS, size_of::<u32>(), size_of::<ContainerEntry>()),
    (names::IFACE_STATS, size_of::<u32>(), size_of::<TrafficStats>()),
    (names::MAPPINGS4, size_of::<MappingKey4>(), size_of::<MappingEntry4>()),
    (names::HOST_ADDRS4, size_of::<[u8; 4]>(), size_of::<HostAddr4>()),
    (names::CT4, size_of::<CtKey4>(), size_of::<CtEntry>()),
    (names::SOCK_REVNAT4, size_of::<SockRevNatKey4>(), size_of::<SockRevNatEntry4>()),
    (names::CONFIG, size_of::<u32>(), size_of::<DatapathConfig>()),
    // An LPM trie key is the prefix length (u32) and the data.
    (names::POLICY4, size_of::<u32>() + size_of::<PolicyKey4>(), size_of::<PolicyEntry>()),
    (names::EVENTS, 0, 0),
];

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (a fresh machine).
pub fn ensure_bpffs() -> Result<()> {
    let target = Path::new("/sys/fs/bpf");
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo")?
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/sys/fs/bpf") && l.contains(" - bpf "));
    if !mounted {
        fs::create_dir_all(target).context("creating /sys/fs/bpf")?;
        nix::mount::mount(Some("bpf"), target, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(())
}

impl Datapath {
    /// Loads the embedded object with every map pinned under `pin_dir`
    /// (reusing pins that exist) and loads the programs into the kernel.
    pub fn load(pin_dir: &Path) -> Result<Datapath> {
        Self::load_object(BPF_OBJECT, Some(pin_dir))
    }

    /// Loads `object`; with `pin_dir` None nothing is pinned (packet tests).
    pub fn load_object(object: &[u8], pin_dir: Option<&Path>) -> Result<Datapath> {
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                ensure_bpffs()?;
                for sub in ["maps", "links"] {
                    fs::create_dir_all(dir.join(sub))
                        .with_context(|| format!("creating {}", dir.join(sub).display()))?;
                }
                names::PINNED_MAPS.iter().map(|m| (*m, dir.join("maps").join(m))).collect()
            }
            None => vec![],
        };
        for (name, path) in &map_paths {
            check_pinned_layout(name, path)?;
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the BPF object")?;
        for hook in &HOOKS {
            let what = || format!("loading program {}", hook.program);
            let prog = program_mut(&mut ebpf, hook.program)?;
            match hook.attach {
                Attach::Tcx(_) => <&mut SchedClassifier>::try_from(prog)?.load().with_context(what)?,
                Attach::Xdp => <&mut Xdp>::try_from(prog)?.load().with_context(what)?,
                Attach::SockAddr(_) => <&mut CgroupSockAddr>::try_from(prog)?.load().with_context(what)?,
            }
        }
        Ok(Datapath { ebpf, pin_dir: pin_dir.map(Path::to_path_buf).unwrap_or_default(), taken: vec![] })
    }

    /// Names of every program in the loaded object (declared or not).
    pub fn program_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.ebpf.programs().map(|(name, _)| name.to_string()).collect();
        names.sort();
        names
    }

    /// The fd of a loaded program (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self, name: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = self.ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing"))?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }
}

/// Refuses a pinned map whose key or value size differs from this build's.
fn check_pinned_layout(name: &str, path: &Path) -> Result<()> {
    let info = match MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(_) if !path.exists() => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
    };
    let (_, key, value) =
        MAP_LAYOUTS.into_iter().find(|(n, _, _)| *n == name).ok_or_else(|| anyhow!("unknown map {name}"))?;
    if info.key_size() as usize != key || info.value_size() as usize != value {
        bail!(
            "pinned map {} has key/value sizes {}/{} but this netpath expects {key}/{value}: it was left by an \
             incompatible build. Remove it (its state is lost) or run the matching netpath.",
            path.display(),
            info.key_size(),
            info.value_size()
        );
    }
    Ok(())
}

pub(super) fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_layout() {
        for name in names::PINNED_MAPS {
            assert!(MAP_LAYOUTS.iter().any(|(n, _, _)| n == name), "{name} has no expected layout");
        }
        assert_eq!(MAP_LAYOUTS.len(), names::PINNED_MAPS.len());
    }
}
