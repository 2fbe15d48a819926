//! Tracked flows as the agent handles them: listing, cutting, and collecting
//! expired pairs.

use std::{borrow::BorrowMut, collections::HashMap, os::fd::AsFd as _};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, Map, MapData};
use netpath_common::{conntrack::CT_F_REPLY, CtEntry, CtKey4};

use netpath_common::maps as names;

use super::{
    batch,
    maps::{ignore_missing, live_ids, FillCounter, LiveOwners},
    Datapath,
};

/// CLOCK_MONOTONIC in nanoseconds: the clock `CtEntry::expires_ns` uses.
pub fn monotonic_ns() -> u64 {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Datapath {
    /// The entry of one tuple, if tracked.
    pub fn ct_get4(&self, key: &CtKey4) -> Result<Option<CtEntry>> {
        self.get_one(netpath_common::maps::CT4, key)
    }

    /// Every tracked entry, read in batches.
    pub fn ct_entries(&mut self) -> Result<Vec<(CtKey4, CtEntry)>> {
        let map = self.ct_map()?;
        batch::entries(map.map().fd().as_fd()).context("reading CT4")
    }

    /// Removes tracked flows (both directions) whose entry matches `pred`;
    /// returns how many flows went.
    pub fn ct_remove_where(&mut self, mut pred: impl FnMut(&CtKey4, &CtEntry) -> bool) -> Result<usize> {
        let entries = self.ct_entries()?;
        let mut map = self.ct_map()?;
        let mut flows = 0;
        for (key, entry) in entries.iter().filter(|(k, e)| pred(k, e)) {
            let gone = ignore_missing(map.remove(key)).is_ok();
            let _ = ignore_missing(map.remove(&entry.peer));
            if gone && entry.flags & CT_F_REPLY == 0 {
                flows += 1;
            }
        }
        Ok(flows)
    }

    /// Deletes the flows whose entries have all expired at `now`, the
    /// orphans and the stale ones; see [`CtCollector::collect`].
    pub fn ct_collect_expired(&mut self, now: u64) -> Result<usize> {
        let live = self.live_owners()?;
        Ok(collect(&mut self.ct_map()?, now, &live)?.0)
    }

    /// A collector with handles of its own (the same kernel maps), so that
    /// garbage collection runs beside the agent, never holding it.
    pub fn ct_collector(&mut self) -> Result<CtCollector> {
        let dup = |dp: &Datapath, name: &str| -> Result<MapData> {
            let map = dp.ebpf.map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing"))?;
            let data: &MapData = match map {
                Map::LruHashMap(d) | Map::Array(d) => d,
                _ => anyhow::bail!("map {name} is not of the expected type"),
            };
            let fd = data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating {name}'s fd"))?;
            MapData::from_fd(fd).with_context(|| format!("opening {name} for the collector"))
        };
        let ct = dup(self, names::CT4)?;
        Ok(CtCollector {
            map: BpfHashMap::try_from(Map::LruHashMap(ct))?,
            owners: [dup(self, names::MAPPING_IDS)?, dup(self, names::CONTAINER_IDS)?],
            fills: self.fill_counter()?,
        })
    }

    /// Removes one half of a flow and leaves its peer, as the LRU does when
    /// it evicts an entry (tests of the orphan handling use it).
    pub fn ct_remove_half4(&mut self, key: &CtKey4) -> Result<()> {
        Ok(ignore_missing(self.ct_map()?.remove(key))?)
    }
}

/// CT4 through a handle of its own: the agent's garbage collector, which
/// runs on a blocking thread beside the API (whose calls never wait for
/// it). Deletions re-read each entry first, so racing the datapath (a
/// revived tuple) or the agent (a flow cut meanwhile) is harmless.
pub struct CtCollector {
    map: BpfHashMap<MapData, CtKey4, CtEntry>,
    /// MAPPING_IDS and CONTAINER_IDS.
    owners: [MapData; 2],
    /// Records the fill levels `status` shows, counted in the same round.
    fills: FillCounter,
}

impl CtCollector {
    /// Deletes the flows whose entries have all expired at `now`, the
    /// orphans (halves whose peer the LRU evicted: a lone reply half would
    /// block its tuple, a lone original half would translate packets whose
    /// replies can never come back) and the stale flows (of owners removed
    /// since: see netpath_common::owner); then records the maps' fill
    /// levels for `status`. Returns how many flows went.
    pub fn collect(&mut self, now: u64) -> Result<usize> {
        let [mappings, containers] = &self.owners;
        let live = LiveOwners {
            mappings: live_ids(mappings.fd().as_fd()).context("reading MAPPING_IDS")?,
            containers: live_ids(containers.fd().as_fd()).context("reading CONTAINER_IDS")?,
        };
        let (flows, left) = collect(&mut self.map, now, &live)?;
        self.fills.record(left)?;
        Ok(flows)
    }
}

type CtMap<T> = BpfHashMap<T, CtKey4, CtEntry>;

/// One GC round over CT4; returns the flows that went and the entries left.
fn collect<T: BorrowMut<MapData>>(map: &mut CtMap<T>, now: u64, live: &LiveOwners) -> Result<(usize, u64)> {
    let entries: HashMap<CtKey4, CtEntry> =
        batch::entries(map.map().fd().as_fd()).context("reading CT4")?.into_iter().collect();
    let expired = |e: &CtEntry| e.expires_ns < now;
    let stale: Vec<CtKey4> = entries.iter().filter(|(_, e)| !live.owns(e)).map(|(k, _)| *k).collect();
    let dead: Vec<CtKey4> = entries
        .iter()
        .filter(|(_, e)| live.owns(e) && expired(e) && entries.get(&e.peer).is_none_or(expired))
        .map(|(k, _)| *k)
        .collect();
    let orphans: Vec<CtKey4> = entries
        .iter()
        .filter(|(_, e)| live.owns(e) && !expired(e) && !entries.contains_key(&e.peer))
        .map(|(k, _)| *k)
        .collect();
    let mut flows = 0;
    let mut removed = 0;
    if !stale.is_empty() {
        let (f, r) = remove_stale(map, &stale, live)?;
        (flows, removed) = (flows + f, removed + r);
    }
    if !dead.is_empty() {
        let (f, r) = remove_expired(map, &dead, now)?;
        (flows, removed) = (flows + f, removed + r);
    }
    if !orphans.is_empty() {
        let f = remove_orphans(map, &orphans)?;
        (flows, removed) = (flows + f, removed + f as u64);
    }
    Ok((flows, (entries.len() as u64).saturating_sub(removed)))
}

/// Deletes the entries of these keys that are still stale, each re-read
/// just before it goes (the datapath may have tracked a new flow on the
/// tuple meanwhile, with a live owner), and their peers if stale too.
/// Returns how many flows and how many entries went.
fn remove_stale<T: BorrowMut<MapData>>(map: &mut CtMap<T>, keys: &[CtKey4], live: &LiveOwners) -> Result<(usize, u64)> {
    let (mut flows, mut removed) = (0, 0);
    for key in keys {
        let Ok(entry) = map.get(key, 0) else { continue };
        if live.owns(&entry) {
            continue;
        }
        if ignore_missing(map.remove(key)).is_ok() {
            removed += 1;
            if entry.flags & CT_F_REPLY == 0 {
                flows += 1;
            }
        }
        if let Ok(peer) = map.get(&entry.peer, 0) {
            if !live.owns(&peer) && ignore_missing(map.remove(&entry.peer)).is_ok() {
                removed += 1;
            }
        }
    }
    Ok((flows, removed))
}

/// Deletes these halves if their peer is still missing, each checked just
/// before it goes (the datapath inserts a pair's halves one after the
/// other).
fn remove_orphans<T: BorrowMut<MapData>>(map: &mut CtMap<T>, keys: &[CtKey4]) -> Result<usize> {
    let mut flows = 0;
    for key in keys {
        let Ok(entry) = map.get(key, 0) else { continue };
        if map.get(&entry.peer, 0).is_ok() {
            continue;
        }
        if ignore_missing(map.remove(key)).is_ok() {
            flows += 1;
        }
    }
    Ok(flows)
}

/// Deletes the entries of these keys that are still expired at `now`, each
/// re-read just before it goes: the datapath may have revived one (a reused
/// tuple) since the table was read. Returns how many flows and entries went.
fn remove_expired<T: BorrowMut<MapData>>(map: &mut CtMap<T>, keys: &[CtKey4], now: u64) -> Result<(usize, u64)> {
    let (mut flows, mut removed) = (0, 0);
    for key in keys {
        let Ok(entry) = map.get(key, 0) else { continue };
        if entry.expires_ns >= now {
            continue;
        }
        if let Ok(peer) = map.get(&entry.peer, 0) {
            if peer.expires_ns >= now {
                continue;
            }
            if ignore_missing(map.remove(&entry.peer)).is_ok() {
                removed += 1;
            }
        }
        if ignore_missing(map.remove(key)).is_ok() {
            removed += 1;
            if entry.flags & CT_F_REPLY == 0 {
                flows += 1;
            }
        }
    }
    Ok((flows, removed))
}
