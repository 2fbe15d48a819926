//! The agent's desired state, persisted as JSON in the state directory and
//! reconciled against the kernel at start.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::model::{Container, Mapping};

pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    /// Next endpoint id to hand out; ids are never reused while the
    /// instance lives, so a stale id in a dump cannot name a new container.
    pub next_id: u32,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// Mapping ids, like endpoint ids, are never reused.
    #[serde(default = "one")]
    pub next_mapping_id: u32,
}

fn one() -> u32 {
    1
}

/// Reads and atomically rewrites `state.json`.
#[derive(Clone, Debug)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> Result<StateStore> {
        fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateStore { path: dir.join("state.json") })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<State> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing state file {}", self.path.display()))?;
                if state.version != STATE_VERSION {
                    anyhow::bail!(
                        "state file {} has version {}, this agent understands {STATE_VERSION}",
                        self.path.display(),
                        state.version
                    );
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(State { version: STATE_VERSION, next_id: 1, containers: vec![], mappings: vec![], next_mapping_id: 1 })
            }
            Err(e) => Err(e).with_context(|| format!("reading state file {}", self.path.display())),
        }
    }

    /// Write to a temporary file, fsync, rename: a crash leaves the old or
    /// the new state, never half of one.
    pub fn save(&self, state: &State) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(state)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path).with_context(|| format!("replacing {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path()).unwrap();
        let empty = store.load().unwrap();
        assert_eq!(empty.next_id, 1);
        assert!(empty.containers.is_empty());
        let state = State {
            version: STATE_VERSION,
            next_id: 7,
            containers: vec![Container {
                name: "c1".into(),
                netns: "/run/netns/c1".into(),
                ip: "10.0.0.2".parse().unwrap(),
                mac: "02:4e:0a:00:00:02".into(),
                veth: "npv1234".into(),
                ifindex: 9,
                id: 6,
            }],
            mappings: vec![],
            next_mapping_id: 3,
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path()).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("state.json"), "{err}");
    }
}
