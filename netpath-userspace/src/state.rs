//! The agent's desired state, persisted in the state directory and
//! reconciled against the kernel at start.
//!
//! `state.json` is a snapshot, rewritten atomically (temp file, fsync,
//! rename) when containers change. Mapping changes are appended to
//! `journal.jsonl` instead, one JSON line each, so that publishing a port
//! costs the same with 10 or 10000 of them; the journal is folded into the
//! snapshot at start and every [`JOURNAL_COMPACT_AT`] lines.
//!
//! Acknowledged means durable: a change is answered only once the journal
//! line that holds it is on disk. The agent appends under its lock and
//! waits for the disk after releasing it ([`Durability::wait`]), so that
//! one `fdatasync` covers every change appended meanwhile (group commit)
//! and no request queues behind another's sync.

use std::{
    collections::VecDeque,
    fs,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    model::{Container, Mapping},
    policy::{Action, ContainerPolicy, Direction, Rule},
};

/// Fold the journal into the snapshot after this many lines.
pub const JOURNAL_COMPACT_AT: usize = 4096;

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Publish {
        mappings: Vec<Mapping>,
        next_mapping_id: u32,
    },
    Unpublish {
        ids: Vec<u32>,
    },
    AddRule {
        container: String,
        rule: Rule,
    },
    /// Many rules of one container at once (a bulk load: one journal line).
    AddRules {
        container: String,
        rules: Vec<Rule>,
    },
    RemoveRule {
        container: String,
        rule: Rule,
    },
    SetDefault {
        container: String,
        direction: Direction,
        action: Action,
    },
    /// A container attached: its id taken, its address out of the queue of
    /// released ones.
    AddContainer {
        container: Container,
        next_id: u32,
    },
    /// A container removed: its policy goes with it (its mappings went
    /// before, as an `Unpublish`), its address to the back of the queue.
    RemoveContainer {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip6: Option<Ipv6Addr>,
    },
}

impl Change {
    pub fn apply(&self, state: &mut State) {
        match self {
            Change::Publish { mappings, next_mapping_id } => {
                state.mappings.extend(mappings.iter().cloned());
                state.next_mapping_id = state.next_mapping_id.max(*next_mapping_id);
            }
            Change::Unpublish { ids } => state.mappings.retain(|m| !ids.contains(&m.id)),
            Change::AddRule { container, rule } => {
                state.policies.entry(container.clone()).or_default().rules.push(rule.clone())
            }
            Change::AddRules { container, rules } => {
                state.policies.entry(container.clone()).or_default().rules.extend(rules.iter().cloned())
            }
            Change::RemoveRule { container, rule } => {
                if let Some(p) = state.policies.get_mut(container) {
                    p.rules.retain(|r| r != rule);
                }
            }
            Change::AddContainer { container, next_id } => {
                state.released4.retain(|ip| Some(*ip) != container.ip);
                state.released6.retain(|ip| Some(*ip) != container.ip6);
                state.containers.push(container.clone());
                state.next_id = state.next_id.max(*next_id);
            }
            Change::RemoveContainer { name, ip, ip6 } => {
                state.containers.retain(|c| c.name != *name);
                state.policies.remove(name);
                if let Some(ip) = ip {
                    let _ = crate::ipam::remember_released(&mut state.released4, *ip);
                }
                if let Some(ip6) = ip6 {
                    let _ = crate::ipam::remember_released(&mut state.released6, *ip6);
                }
            }
            Change::SetDefault { container, direction, action } => {
                let p = state.policies.entry(container.clone()).or_default();
                match direction {
                    Direction::In => p.default_in = *action,
                    Direction::Out => p.default_out = *action,
                }
            }
        }
    }
}

pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    /// Next container id to hand out; ids are never reused while the
    /// instance lives, so a stale id in a dump cannot name a new container.
    pub next_id: u32,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// Mapping ids, like container ids, are never reused.
    #[serde(default = "one")]
    pub next_mapping_id: u32,
    /// Per-container policy, by container name.
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, ContainerPolicy>,
    /// Direct container-to-container traffic (None: the configuration's).
    #[serde(default)]
    pub icc: Option<bool>,
    /// Container addresses given back, the earliest first: a restarted agent
    /// hands them out in the same order (see `Ipam4`).
    #[serde(default)]
    pub released4: VecDeque<Ipv4Addr>,
    /// The same for the IPv6 subnet (`Ipam6`).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub released6: VecDeque<Ipv6Addr>,
    /// Agent starts on this state (`netpath_agent_starts_total`).
    #[serde(default)]
    pub starts: u64,
}

fn one() -> u32 {
    1
}

/// The refusal to start on a damaged state file: it names the file and
/// the way out.
fn corrupt(path: &Path, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "state file {} is corrupt or truncated ({what}): netpathd will not guess what it held. Run `netpathd \
         --recover` with the same flags to rebuild the state from the kernel's pinned maps and the host's \
         interfaces (the damaged file is kept beside it), then start netpathd again",
        path.display()
    )
}

/// Reads and writes `state.json` and `journal.jsonl`.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    journal_path: PathBuf,
    /// Shared with [`Durability`], which syncs it outside the agent's lock.
    journal: Option<Arc<fs::File>>,
    journal_lines: usize,
    /// Changes appended since the store was opened (the journal's and the
    /// snapshots' together): the ticket [`Durability::wait`] takes.
    written: u64,
    durability: Arc<Durability>,
}

/// How far the store's changes are on disk, and the one sync that brings
/// the rest there. Shared with the agent, which waits on it outside its
/// lock.
#[derive(Debug, Default)]
pub struct Durability {
    /// Every change up to this ticket is on disk.
    synced: AtomicU64,
    /// The ticket of the last change written and the journal it went to
    /// (None: none since the last snapshot, which was synced whole).
    pending: Mutex<(u64, Option<Arc<fs::File>>)>,
    /// One sync at a time; the ones waiting meanwhile are covered by the
    /// next.
    leader: tokio::sync::Mutex<()>,
    /// Syncs of the journal made for waiters (`netpath_state_syncs_total`).
    syncs: AtomicU64,
    /// Changes they covered.
    synced_changes: AtomicU64,
}

impl Durability {
    /// Returns once every change up to `ticket` is on disk. The first
    /// waiter syncs for all: whatever was appended before its sync starts
    /// is covered by it, so a burst of changes costs a few syncs, not one
    /// each.
    pub async fn wait(&self, ticket: u64) -> Result<()> {
        if self.synced.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let _leader = self.leader.lock().await;
        if self.synced.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let (upto, journal) = self.pending.lock().map_err(|_| anyhow::anyhow!("journal lock poisoned"))?.clone();
        if let Some(journal) = journal {
            tokio::task::spawn_blocking(move || journal.sync_data())
                .await
                .context("journal sync task")?
                .context("syncing the state journal")?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        let before = self.synced.fetch_max(upto, Ordering::AcqRel);
        self.synced_changes.fetch_add(upto.saturating_sub(before), Ordering::Relaxed);
        Ok(())
    }

    /// Journal syncs made for waiters, and the changes they covered: more
    /// changes than syncs is group commit at work.
    pub fn syncs(&self) -> (u64, u64) {
        (self.syncs.load(Ordering::Relaxed), self.synced_changes.load(Ordering::Relaxed))
    }

    fn mark_synced(&self, ticket: u64) {
        self.synced.fetch_max(ticket, Ordering::AcqRel);
    }

    fn set_pending(&self, ticket: u64, journal: Option<Arc<fs::File>>) {
        if let Ok(mut p) = self.pending.lock() {
            *p = (ticket, journal);
        }
    }
}

impl StateStore {
    pub fn new(dir: &Path) -> Result<StateStore> {
        fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateStore {
            path: dir.join("state.json"),
            journal_path: dir.join("journal.jsonl"),
            journal: None,
            journal_lines: 0,
            written: 0,
            durability: Arc::default(),
        })
    }

    /// What the agent waits on (see [`Durability`]).
    pub fn durability(&self) -> Arc<Durability> {
        Arc::clone(&self.durability)
    }

    /// The ticket of the last change written: once
    /// [`Durability::wait`] returns for it, every change so far is on disk.
    pub fn ticket(&self) -> u64 {
        self.written
    }

    /// Appends a change; the caller has applied it to its `state` already,
    /// which is snapshotted instead when the journal is long. The line is
    /// written, not yet synced: the caller answers after
    /// [`Durability::wait`] for [`StateStore::ticket`].
    pub fn record(&mut self, change: &Change, state: &State) -> Result<()> {
        if self.journal_lines >= JOURNAL_COMPACT_AT {
            return self.save(state);
        }
        if self.journal.is_none() {
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.journal_path)
                .with_context(|| format!("opening {}", self.journal_path.display()))?;
            self.journal = Some(Arc::new(f));
        }
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let f = self.journal.as_ref().ok_or_else(|| anyhow::anyhow!("journal not open"))?;
        (&**f).write_all(&line).with_context(|| format!("appending to {}", self.journal_path.display()))?;
        self.journal_lines += 1;
        self.written += 1;
        self.durability.set_pending(self.written, Some(Arc::clone(f)));
        Ok(())
    }

    /// Syncs every change written so far, in place (for callers that
    /// answer nobody: tools and tests).
    pub fn sync(&mut self) -> Result<()> {
        if let Some(f) = &self.journal {
            f.sync_data().with_context(|| format!("syncing {}", self.journal_path.display()))?;
        }
        self.durability.mark_synced(self.written);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot with the journal replayed onto it.
    pub fn load(&mut self) -> Result<State> {
        let mut state = self.load_snapshot()?;
        match fs::read_to_string(&self.journal_path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    // A torn last line (crash mid-append) is dropped.
                    match serde_json::from_str::<Change>(line) {
                        Ok(change) => change.apply(&mut state),
                        Err(e) if n + 1 == text.lines().count() => {
                            tracing::warn!("ignoring torn last journal line: {e}");
                        }
                        Err(e) => return Err(corrupt(&self.journal_path, &format!("line {}: {e}", n + 1))),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.journal_path.display())),
        }
        Ok(state)
    }

    fn load_snapshot(&self) -> Result<State> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes).map_err(|e| corrupt(&self.path, &e.to_string()))?;
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
                Ok(State { version: STATE_VERSION, next_id: 1, next_mapping_id: 1, ..Default::default() })
            }
            Err(e) => Err(e).with_context(|| format!("reading state file {}", self.path.display())),
        }
    }

    /// Write to a temporary file, fsync, rename: a crash leaves the old or
    /// the new state, never half of one. Then the journal starts over.
    pub fn save(&mut self, state: &State) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(state)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path).with_context(|| format!("replacing {}", self.path.display()))?;
        // The rename itself is durable once the directory is.
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        }
        self.journal = None;
        self.journal_lines = 0;
        // The snapshot holds every change so far, synced.
        self.written += 1;
        self.durability.set_pending(self.written, None);
        self.durability.mark_synced(self.written);
        match fs::remove_file(&self.journal_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.journal_path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_change(n: u32) -> Change {
        Change::Unpublish { ids: vec![n] }
    }

    /// Changes written while a sync runs are covered by the next one; a
    /// waiter whose change is on disk already does not sync again; a
    /// snapshot makes everything before it durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_sync_covers_every_change_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        let state = store.load().unwrap();
        let durability = store.durability();
        assert_eq!(store.ticket(), 0);
        durability.wait(0).await.unwrap();
        assert_eq!(durability.syncs(), (0, 0), "nothing written, nothing synced");

        for n in 0..10 {
            store.record(&a_change(n), &state).unwrap();
        }
        let ticket = store.ticket();
        assert_eq!(ticket, 10);
        // Ten waiters at once, one per change: one sync covers all of them.
        let waiters: Vec<_> = (1..=ticket)
            .map(|t| {
                let d = Arc::clone(&durability);
                tokio::spawn(async move { d.wait(t).await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(durability.syncs(), (1, 10));
        durability.wait(ticket).await.unwrap();
        assert_eq!(durability.syncs(), (1, 10), "already on disk: no second sync");

        store.record(&a_change(11), &state).unwrap();
        store.save(&state).unwrap();
        durability.wait(store.ticket()).await.unwrap();
        assert_eq!(durability.syncs().0, 1, "the snapshot was synced whole: no journal sync after it");
        // What was written is what a restart reads.
        assert_eq!(fs::read_to_string(dir.path().join("journal.jsonl")).ok(), None);
    }

    #[test]
    fn roundtrip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        let empty = store.load().unwrap();
        assert_eq!(empty.next_id, 1);
        assert!(empty.containers.is_empty());
        let state = State {
            version: STATE_VERSION,
            next_id: 7,
            containers: vec![Container {
                name: "c1".into(),
                netns: "/run/netns/c1".into(),
                ip: Some("10.0.0.2".parse().unwrap()),
                ip6: Some("fd00:77::2".parse().unwrap()),
                mac: "02:4e:0a:00:00:02".into(),
                veth: "npv1234".into(),
                ifindex: 9,
                id: 6,
                ifname: "eth0".into(),
                owner: Some("cni:net:abc:eth0".into()),
                handoff_ifname: None,
                runtime_name: Some("web".into()),
                stats_slot: 2,
            }],
            mappings: vec![],
            next_mapping_id: 3,
            released4: ["10.0.0.5".parse().unwrap(), "10.0.0.3".parse().unwrap()].into(),
            released6: ["fd00:77::9".parse().unwrap()].into(),
            ..Default::default()
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
    }

    /// Containers are journaled like mappings, so that attaching one costs
    /// the same with 10 or 2000 of them: a restart replays them, address
    /// queue and policies included.
    #[test]
    fn attached_and_removed_containers_are_replayed_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        let mut state = store.load().unwrap();
        state.released4 = ["10.0.0.9".parse().unwrap(), "10.0.0.4".parse().unwrap()].into();
        state.released6 = ["fd00:77::9".parse().unwrap(), "fd00:77::4".parse().unwrap()].into();
        store.save(&state).unwrap();
        let container = |name: &str, ip: &str, id: u32| Container {
            name: name.into(),
            netns: format!("/run/netns/{name}"),
            ip: Some(ip.parse().unwrap()),
            ip6: Some(format!("fd00:77::{}", ip.rsplit('.').next().unwrap()).parse().unwrap()),
            mac: "02:4e:0a:00:00:02".into(),
            veth: format!("npv{id}"),
            ifindex: 10 + id,
            id,
            ifname: "eth0".into(),
            owner: None,
            handoff_ifname: None,
            runtime_name: None,
            stats_slot: 1 + id,
        };
        let changes = [
            Change::AddContainer { container: container("a", "10.0.0.9", 1), next_id: 2 },
            Change::AddContainer { container: container("b", "10.0.0.2", 2), next_id: 3 },
            Change::SetDefault { container: "a".into(), direction: Direction::In, action: Action::Deny },
            Change::RemoveContainer {
                name: "a".into(),
                ip: Some("10.0.0.9".parse().unwrap()),
                ip6: Some("fd00:77::9".parse().unwrap()),
            },
        ];
        for change in &changes {
            change.apply(&mut state);
            store.record(change, &state).unwrap();
        }
        let loaded = StateStore::new(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(loaded.next_id, 3);
        assert!(loaded.policies.is_empty(), "a's policy outlived it");
        // 10.0.0.9 was handed out, then given back: now the last in line.
        let queue: Vec<String> = loaded.released4.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(queue, ["10.0.0.4", "10.0.0.9"]);
        let queue6: Vec<String> = loaded.released6.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(queue6, ["fd00:77::4", "fd00:77::9"]);
    }

    #[test]
    fn a_state_file_without_released_addresses_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        fs::write(store.path(), br#"{"version":1,"next_id":3,"containers":[]}"#).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.released4.is_empty() && loaded.released6.is_empty());
        // An old journal line without ip6 still replays.
        let line = r#"{"remove_container":{"name":"x","ip":"10.0.0.7"}}"#;
        let change: Change = serde_json::from_str(line).unwrap();
        assert_eq!(
            change,
            Change::RemoveContainer { name: "x".into(), ip: Some("10.0.0.7".parse().unwrap()), ip6: None }
        );
    }

    #[test]
    fn old_mappings_load_and_ipv6_ones_round_trip() {
        // A state file of a build before IPv6 ports: an IPv4 host address,
        // none, and null; no container_ip6.
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        let old = br#"{"version":1,"next_id":2,"containers":[],"next_mapping_id":4,"mappings":[
            {"id":1,"host_ip":"127.0.0.1","host_port":8080,"proto":"udp","container":"c1","container_ip":"10.0.0.2","container_port":80},
            {"id":2,"host_port":8081,"proto":"tcp","container":"c1","container_ip":"10.0.0.2","container_port":81},
            {"id":3,"host_ip":null,"host_port":8082,"proto":"tcp","container":"c1","container_ip":"10.0.0.2","container_port":82}]}"#;
        fs::write(store.path(), old).unwrap();
        let loaded = store.load().unwrap();
        let ips: Vec<Option<std::net::IpAddr>> = loaded.mappings.iter().map(|m| m.host_ip).collect();
        assert_eq!(ips, vec![Some(Ipv4Addr::LOCALHOST.into()), None, None]);
        let mut first = mapping(1, 8080);
        first.host_ip = Some(Ipv4Addr::LOCALHOST.into());
        first.proto = crate::portspec::Protocol::Udp;
        assert_eq!(loaded.mappings[0], first);
        // They answer on IPv4 only, as they did.
        assert!(loaded.mappings.iter().all(|m| m.on_ipv4() && !m.on_ipv6() && m.container_ip6.is_none()));
        // An old journal line replays too.
        let line = r#"{"publish":{"mappings":[{"id":5,"host_ip":"198.18.0.1","host_port":53,"proto":"udp","container":"c1","container_ip":"10.0.0.2","container_port":53}],"next_mapping_id":6}}"#;
        let change: Change = serde_json::from_str(line).unwrap();
        let Change::Publish { mappings, .. } = &change else { panic!("{change:?}") };
        assert_eq!(mappings[0].host_ip, Some(Ipv4Addr::new(198, 18, 0, 1).into()));

        // IPv6 ones are saved with their address and the container's, and
        // load back the same; an IPv4 one is written as before.
        let mut state = loaded;
        let mut any6 = mapping(10, 9000);
        any6.host_ip = Some(Ipv6Addr::UNSPECIFIED.into());
        any6.container_ip6 = Some("fd00:77::2".parse().unwrap());
        let mut both = mapping(11, 9001);
        both.container_ip6 = Some("fd00:77::2".parse().unwrap());
        let change = Change::Publish { mappings: vec![any6.clone(), both.clone()], next_mapping_id: 12 };
        let line = serde_json::to_string(&change).unwrap();
        assert!(line.contains(r#""host_ip":"::""#), "{line}");
        assert!(line.contains(r#""container_ip6":"fd00:77::2""#), "{line}");
        change.apply(&mut state);
        store.record(&change, &state).unwrap();
        let reloaded = StateStore::new(dir.path()).unwrap().load().unwrap();
        assert_eq!(reloaded, state);
        assert_eq!(reloaded.mappings[3..], [any6, both]);
        let v4 = serde_json::to_string(&mapping(1, 80)).unwrap();
        assert!(!v4.contains("container_ip6"), "{v4}");
    }

    fn mapping(id: u32, port: u16) -> Mapping {
        Mapping {
            id,
            host_ip: None,
            host_port: port,
            proto: crate::portspec::Protocol::Tcp,
            container: "c1".into(),
            container_ip: Some("10.0.0.2".parse().unwrap()),
            container_ip6: None,
            container_port: 80,
        }
    }

    #[test]
    fn journal_replays_onto_the_snapshot_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        let mut state = store.load().unwrap();
        store.save(&state).unwrap();
        for i in 0..10u32 {
            let change = Change::Publish { mappings: vec![mapping(i + 1, 8000 + i as u16)], next_mapping_id: i + 2 };
            change.apply(&mut state);
            store.record(&change, &state).unwrap();
        }
        let change = Change::Unpublish { ids: vec![3, 4] };
        change.apply(&mut state);
        store.record(&change, &state).unwrap();
        let mut fresh = StateStore::new(dir.path()).unwrap();
        let loaded = fresh.load().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.mappings.len(), 8);
        assert_eq!(loaded.next_mapping_id, 11);
        // A snapshot folds the journal in.
        fresh.save(&loaded).unwrap();
        assert!(!dir.path().join("journal.jsonl").exists());
        assert_eq!(StateStore::new(dir.path()).unwrap().load().unwrap(), state);
    }

    #[test]
    fn torn_last_journal_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        let mut state = store.load().unwrap();
        let change = Change::Publish { mappings: vec![mapping(1, 80)], next_mapping_id: 2 };
        change.apply(&mut state);
        store.record(&change, &state).unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(dir.path().join("journal.jsonl")).unwrap();
        f.write_all(b"{\"publish\": {\"mapp").unwrap();
        assert_eq!(StateStore::new(dir.path()).unwrap().load().unwrap(), state);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path()).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("state.json"), "{err}");
    }
}
