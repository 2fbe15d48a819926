//! Upgrades across a layout change: pins stamped with the layout version
//! before this build's ([`MIGRATES_FROM`]) are migrated, not refused, so
//! the flows in conntrack (whose layout did not change) go on.
//!
//! The maps whose layout changed are moved aside (a rename within bpffs)
//! before the object is loaded, so that the loader creates them anew with
//! the object's definitions and BTF (`bpftool map dump` keeps its field
//! names); once loaded, what they held is copied into the new ones, the
//! old ones are removed, and the stamp moves on last. Each step can be
//! interrupted: a start that finds the stamp still at the older version
//! and the old maps aside copies again. The programs attached meanwhile
//! (the older build's) keep their own maps until theirs are swapped.
//!
//! From version 7 to 8: the interface counters became an array indexed by
//! slot (`IFACE_STATS`, was a per-CPU hash keyed by ifindex), and each
//! container's entry names its slot (`ContainerEntry::stats_slot`, a field
//! appended). Each container gets a slot, its counters are copied there;
//! the uplink's start again from zero (the loader does not know which
//! interface the uplink is).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use netpath_common::{maps as names, stats::IFACE_SLOT_FIRST_CONTAINER, ContainerEntry, TrafficStats};

use super::{
    loader::{LAYOUT_MAP, LAYOUT_VERSION},
    Datapath,
};

/// The layout version this build migrates from.
pub const MIGRATES_FROM: u32 = 7;

/// The maps whose layout changed since [`MIGRATES_FROM`].
const RESHAPED: [&str; 2] = [names::CONTAINERS, names::IFACE_STATS];

/// `ContainerEntry` as version 7 had it: this build's without the
/// `stats_slot` appended.
const CONTAINER_ENTRY_V7: usize = 40;
const _: () = assert!(size_of::<ContainerEntry>() == CONTAINER_ENTRY_V7 + size_of::<u32>());
const _: () = assert!(std::mem::offset_of!(ContainerEntry, stats_slot) == CONTAINER_ENTRY_V7);

/// Where the old maps wait while the new ones are loaded.
fn aside_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("migrating")
}

/// The layout version the pins under `maps_dir` are stamped with, if any.
pub(super) fn stamped_version(maps_dir: &Path) -> Result<Option<u32>> {
    let path = maps_dir.join(LAYOUT_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let stamp: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
    Ok(Some(stamp.get(&0, 0).with_context(|| format!("reading {}", path.display()))?))
}

/// Before the object is loaded: true if the pins under `pin_dir` are of
/// [`MIGRATES_FROM`], with the reshaped maps' old pins moved aside (unless
/// an interrupted start moved them already).
pub(super) fn set_aside(pin_dir: &Path) -> Result<bool> {
    let maps_dir = pin_dir.join("maps");
    if stamped_version(&maps_dir)? != Some(MIGRATES_FROM) {
        return Ok(false);
    }
    let aside = aside_dir(pin_dir);
    fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    for name in RESHAPED {
        let (from, to) = (maps_dir.join(name), aside.join(name));
        if from.exists() && !to.exists() {
            fs::rename(&from, &to).with_context(|| format!("moving {} aside to {}", from.display(), to.display()))?;
        }
    }
    tracing::info!(from = MIGRATES_FROM, to = LAYOUT_VERSION, "migrating the pinned maps' layout");
    Ok(true)
}

impl Datapath {
    /// After the object is loaded with new reshaped maps: copies what the
    /// old ones held, removes them, and stamps this build's layout version.
    pub(super) fn finish_migration(&mut self) -> Result<()> {
        let aside = aside_dir(&self.pin_dir);
        let containers = aside.join(names::CONTAINERS);
        if containers.exists() {
            let counters = aside.join(names::IFACE_STATS);
            self.migrate_containers(&containers, counters.exists().then_some(counters.as_path()))?;
        }
        fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
        let stamp = self.pin_dir.join("maps").join(LAYOUT_MAP);
        let data = MapData::from_pin(&stamp).with_context(|| format!("opening {}", stamp.display()))?;
        let mut stamp_map: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
        stamp_map.set(0, LAYOUT_VERSION, 0).with_context(|| format!("writing {}", stamp.display()))?;
        tracing::info!(from = MIGRATES_FROM, to = LAYOUT_VERSION, "migrated the pinned maps' layout");
        Ok(())
    }

    /// Each container of the old `CONTAINERS` (pinned at `old`) into the
    /// new map with a counters slot of its own, its counters (old
    /// `IFACE_STATS` at `old_counters`, by ifindex) copied to that slot.
    fn migrate_containers(&mut self, old: &Path, old_counters: Option<&Path>) -> Result<()> {
        let data = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
        let old_map: BpfHashMap<MapData, u32, [u8; CONTAINER_ENTRY_V7]> = BpfHashMap::try_from(Map::HashMap(data))
            .with_context(|| format!("{} is not version {MIGRATES_FROM}'s CONTAINERS", old.display()))?;
        let counters: Option<PerCpuHashMap<MapData, u32, TrafficStats>> = match old_counters {
            Some(path) => {
                let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
                Some(
                    PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
                        .with_context(|| format!("{} is not version {MIGRATES_FROM}'s IFACE_STATS", path.display()))?,
                )
            }
            None => None,
        };
        let mut entries: Vec<(u32, [u8; CONTAINER_ENTRY_V7])> =
            old_map.iter().collect::<Result<_, _>>().context("reading the old CONTAINERS")?;
        // Slots in ifindex order: a start interrupted and run again gives
        // the same ones.
        entries.sort_by_key(|(ifindex, _)| *ifindex);
        for ((ifindex, bytes), slot) in entries.into_iter().zip(IFACE_SLOT_FIRST_CONTAINER..) {
            let mut entry = ContainerEntry::default();
            // SAFETY: ContainerEntry is repr(C) plain data whose first
            // CONTAINER_ENTRY_V7 bytes are version 7's entry (asserted
            // above); every byte pattern is a valid value.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    (&mut entry as *mut ContainerEntry).cast::<u8>(),
                    CONTAINER_ENTRY_V7,
                )
            };
            entry.stats_slot = slot;
            self.set_container(ifindex, &entry)?;
            if let Some(values) = counters.as_ref().and_then(|c| c.get(&ifindex, 0).ok()) {
                let mut new: PerCpuArray<&mut MapData, TrafficStats> =
                    PerCpuArray::try_from(self.ebpf.map_mut(names::IFACE_STATS).context("map IFACE_STATS missing")?)?;
                new.set(slot, values, 0).with_context(|| format!("copying the counters of ifindex {ifindex}"))?;
            }
        }
        Ok(())
    }
}
