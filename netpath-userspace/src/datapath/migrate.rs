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
//! appended). Each container gets a slot, its counters are copied there,
//! the uplink's to the uplink's slot, and those of any other interface
//! (veths without a container) are summed into the unattributed slot.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuHashMap, PerCpuValues};
use netpath_common::{
    maps as names,
    stats::{IFACE_SLOT_FIRST_CONTAINER, IFACE_SLOT_UNATTRIBUTED, IFACE_SLOT_UPLINK},
    ContainerEntry, TrafficStats,
};

use super::{
    loader::{read_layout_stamp, LAYOUT_MAP, LAYOUT_VERSION},
    Datapath,
};

/// The layout version this build migrates from.
pub const MIGRATES_FROM: u32 = 7;

/// The maps whose layout changed since [`MIGRATES_FROM`].
const RESHAPED: [&str; 2] = [names::CONTAINERS, names::IFACE_STATS];

/// The size of `ContainerEntry` as version 7 had it: this build's without
/// the `stats_slot` appended.
const CONTAINER_ENTRY_V7: usize = 40;
const _: () = assert!(size_of::<ContainerEntry>() == CONTAINER_ENTRY_V7 + size_of::<u32>());
const _: () = assert!(std::mem::offset_of!(ContainerEntry, stats_slot) == CONTAINER_ENTRY_V7);

/// A version 7 `CONTAINERS` value as this build's entry, without a
/// counters slot (0: none given yet).
fn container_entry_v7(bytes: &[u8; CONTAINER_ENTRY_V7]) -> ContainerEntry {
    let mut entry = ContainerEntry::default();
    // SAFETY: ContainerEntry is repr(C) plain data whose first
    // CONTAINER_ENTRY_V7 bytes are version 7's entry (asserted above);
    // every byte pattern is a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut entry as *mut ContainerEntry).cast::<u8>(),
            CONTAINER_ENTRY_V7,
        )
    };
    entry.stats_slot = 0;
    entry
}

/// The containers of a version-7 `CONTAINERS` pinned at `path`, by
/// ifindex, as this layout's entries (counters slots not given yet).
pub fn read_containers_v7(path: &Path) -> Result<Vec<(u32, ContainerEntry)>> {
    let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let map: BpfHashMap<MapData, u32, [u8; CONTAINER_ENTRY_V7]> = BpfHashMap::try_from(Map::HashMap(data))
        .with_context(|| format!("{} is not version {MIGRATES_FROM}'s CONTAINERS", path.display()))?;
    map.iter()
        .map(|item| item.map(|(ifindex, bytes)| (ifindex, container_entry_v7(&bytes))))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// Where the old maps wait while the new ones are loaded.
pub fn aside_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("migrating")
}

/// Before the object is loaded: true if the pins under `pin_dir` are of
/// [`MIGRATES_FROM`], with the reshaped maps' old pins moved aside (unless
/// an interrupted start moved them already).
pub(super) fn set_aside(pin_dir: &Path) -> Result<bool> {
    let maps_dir = pin_dir.join("maps");
    let stamp = maps_dir.join(LAYOUT_MAP);
    if !stamp.exists() || read_layout_stamp(&stamp)? != MIGRATES_FROM {
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
    /// old ones held (the counters of `uplink_ifindex` to the uplink's
    /// slot), removes them, and stamps this build's layout version.
    pub(super) fn finish_migration(&mut self, uplink_ifindex: Option<u32>) -> Result<()> {
        let aside = aside_dir(&self.pin_dir);
        let containers = aside.join(names::CONTAINERS);
        if containers.exists() {
            let slots = self.migrate_containers(&containers)?;
            let counters = aside.join(names::IFACE_STATS);
            if counters.exists() {
                self.migrate_counters(&counters, &slots, uplink_ifindex)?;
            }
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
    /// new map with a counters slot of its own: the slot of each ifindex.
    fn migrate_containers(&mut self, old: &Path) -> Result<Vec<(u32, u32)>> {
        let mut entries = read_containers_v7(old)?;
        // Slots in ifindex order: a start interrupted and run again gives
        // the same ones.
        entries.sort_by_key(|(ifindex, _)| *ifindex);
        let mut slots = Vec::with_capacity(entries.len());
        for ((ifindex, entry), slot) in entries.into_iter().zip(IFACE_SLOT_FIRST_CONTAINER..) {
            self.set_container(ifindex, &ContainerEntry { stats_slot: slot, ..entry })?;
            slots.push((ifindex, slot));
        }
        Ok(slots)
    }

    /// The old `IFACE_STATS` (pinned at `old`, per CPU by ifindex) into the
    /// slots: each container's (`slots`, by ifindex), the uplink's, and
    /// every other interface's summed into the unattributed slot.
    fn migrate_counters(&mut self, old: &Path, slots: &[(u32, u32)], uplink_ifindex: Option<u32>) -> Result<()> {
        let data = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
        let old_map: PerCpuHashMap<MapData, u32, TrafficStats> = PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
            .with_context(|| format!("{} is not version {MIGRATES_FROM}'s IFACE_STATS", old.display()))?;
        let mut unattributed: Option<Vec<TrafficStats>> = None;
        let mut new = self.stats_map()?;
        for item in old_map.iter() {
            let (ifindex, values) = item.context("reading the old IFACE_STATS")?;
            let slot = match slots.iter().find(|(i, _)| *i == ifindex) {
                Some((_, slot)) => *slot,
                None if Some(ifindex) == uplink_ifindex => IFACE_SLOT_UPLINK,
                None => {
                    let sum = unattributed.get_or_insert_with(|| vec![TrafficStats::default(); values.len()]);
                    sum.iter_mut().zip(values.iter()).for_each(|(s, v)| s.merge(v));
                    continue;
                }
            };
            new.set(slot, values, 0).with_context(|| format!("copying the counters of ifindex {ifindex}"))?;
        }
        if let Some(sum) = unattributed {
            let values = PerCpuValues::try_from(sum)?;
            new.set(IFACE_SLOT_UNATTRIBUTED, values, 0)
                .context("copying the counters of interfaces without a container")?;
        }
        Ok(())
    }
}
