//! What the agent changed in its namespace that outlives the agent, with the
//! value it had before: `netpathd uninstall` puts it back. Today these are
//! the namespace-wide sysctls (forwarding, the uplink's `accept_ra`);
//! per-interface ones go with the interfaces netpath deletes, and the
//! reserved ports are handed back by [`crate::host_ports::HostPorts`].
//!
//! Kept in `host.json` in the state directory, written (fsync, rename)
//! before the change it records, so that a crash between the two leaves a
//! record of a value that was never changed, never a change without one.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// File name of the record in the state directory.
pub const HOST_RECORD_FILE: &str = "host.json";

/// A sysctl by its path under `/proc/sys` (`net/ipv4/ip_forward`): an
/// interface name in it may hold dots, which the dotted form would split.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SysctlPath(String);

impl SysctlPath {
    /// A namespace-wide sysctl in dotted form (`net.ipv4.ip_forward`).
    pub fn global(key: &str) -> SysctlPath {
        SysctlPath(key.replace('.', "/"))
    }

    /// A per-interface one: `section` dotted (`net.ipv6.conf`), the
    /// interface's name as it is.
    pub fn iface(section: &str, ifname: &str, key: &str) -> SysctlPath {
        SysctlPath(format!("{}/{ifname}/{key}", section.replace('.', "/")))
    }

    fn proc_path(&self) -> PathBuf {
        Path::new("/proc/sys").join(&self.0)
    }

    /// The value in the calling thread's network namespace.
    pub fn read(&self) -> Result<String> {
        Ok(fs::read_to_string(self.proc_path()).with_context(|| format!("reading sysctl {self}"))?.trim().to_string())
    }

    pub fn write(&self, value: &str) -> Result<()> {
        fs::write(self.proc_path(), format!("{value}\n")).with_context(|| format!("setting sysctl {self}={value}"))
    }
}

impl std::fmt::Display for SysctlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.replace('/', "."))
    }
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostRecord {
    /// Each sysctl netpath changed, with its value before the first change.
    sysctls: BTreeMap<SysctlPath, String>,
}

/// The record on disk and in memory.
#[derive(Debug)]
pub struct HostChanges {
    path: PathBuf,
    record: HostRecord,
}

impl HostChanges {
    /// Reads `host.json` in `state_dir` (none yet: nothing recorded).
    pub fn load(state_dir: &Path) -> Result<HostChanges> {
        let path = state_dir.join(HOST_RECORD_FILE);
        let record = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {} (what netpath changed on the host)", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HostRecord::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(HostChanges { path, record })
    }

    /// Sets `sysctl` to `value`, first recording the value it had if this is
    /// netpath's first change to it (a sysctl already at `value` is left
    /// alone and not recorded: there is nothing to put back).
    pub fn set_sysctl(&mut self, sysctl: &SysctlPath, value: &str) -> Result<()> {
        let was = sysctl.read()?;
        if was == value {
            return Ok(());
        }
        if !self.record.sysctls.contains_key(sysctl) {
            self.record.sysctls.insert(sysctl.clone(), was);
            self.save()?;
        }
        sysctl.write(value)
    }

    /// The recorded sysctls and the values they had before netpath.
    pub fn sysctls(&self) -> impl Iterator<Item = (&SysctlPath, &str)> {
        self.record.sysctls.iter().map(|(k, v)| (k, v.as_str()))
    }

    /// Puts every recorded sysctl back; returns what was restored. One that
    /// no longer exists (its interface went) is skipped.
    pub fn restore(&mut self) -> Result<Vec<(SysctlPath, String)>> {
        let mut restored = vec![];
        for (sysctl, value) in std::mem::take(&mut self.record.sysctls) {
            if !sysctl.proc_path().exists() {
                continue;
            }
            sysctl.write(&value)?;
            restored.push((sysctl, value));
        }
        self.save()?;
        Ok(restored)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&self.record)?)?;
        f.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).with_context(|| format!("replacing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths_keep_dots_in_interface_names() {
        assert_eq!(SysctlPath::global("net.ipv4.ip_forward").0, "net/ipv4/ip_forward");
        let p = SysctlPath::iface("net.ipv6.conf", "eth0.100", "accept_ra");
        assert_eq!(p.0, "net/ipv6/conf/eth0.100/accept_ra");
        assert_eq!(p.proc_path(), Path::new("/proc/sys/net/ipv6/conf/eth0.100/accept_ra"));
    }

    #[test]
    fn a_missing_record_is_empty_and_a_corrupt_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HostChanges::load(dir.path()).unwrap().sysctls().count(), 0);
        fs::write(dir.path().join(HOST_RECORD_FILE), b"{not json").unwrap();
        let err = format!("{:#}", HostChanges::load(dir.path()).unwrap_err());
        assert!(err.contains(HOST_RECORD_FILE), "{err}");
    }

    #[test]
    fn the_record_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut changes = HostChanges::load(dir.path()).unwrap();
        changes.record.sysctls.insert(SysctlPath::global("net.ipv4.ip_forward"), "0".into());
        changes.save().unwrap();
        let again = HostChanges::load(dir.path()).unwrap();
        assert_eq!(again.record, changes.record);
    }
}
