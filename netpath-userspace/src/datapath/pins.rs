//! Pins put back when they vanish under a running agent (bpffs wiped, the
//! instance's directory removed, bpffs unmounted): the agent holds every
//! map, program and link it pinned, so it pins the same objects again;
//! nothing was detached meanwhile, and no state is lost.

use std::{fs, os::fd::AsFd as _};

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use netpath_common::maps as names;

use super::{loader, Datapath};

/// What [`Datapath::restore_pins`] put back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinsRestored {
    pub maps: usize,
    pub programs: usize,
    pub links: usize,
}

impl Datapath {
    /// Are the instance's pins where they belong? Looks at the config map's
    /// pin alone: cheap enough for every tick.
    pub fn pins_present(&self) -> bool {
        self.pin_dir.join("maps").join(names::CONFIG).exists()
    }

    /// Pins again every map and link whose pin is missing (mounting bpffs
    /// first if it is gone); returns how many.
    pub fn restore_pins(&mut self) -> Result<PinsRestored> {
        loader::ensure_bpffs()?;
        let (maps_dir, links_dir) = (self.pin_dir.join("maps"), self.pin_dir.join("links"));
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // The stamp first: with maps pinned and no stamp, a restarted agent
        // would take the pins for an older netpath's.
        loader::check_layout_stamp(&maps_dir, false)?;
        let mut restored = PinsRestored::default();
        for (name, fd) in &self.map_fds {
            let path = maps_dir.join(name);
            if path.exists() {
                continue;
            }
            let data =
                MapData::from_fd(fd.as_fd().try_clone_to_owned()?).with_context(|| format!("reopening map {name}"))?;
            data.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            restored.maps += 1;
        }
        // The same programs against the same maps: a restart adopts them.
        restored.programs = self.pin_programs()?;
        let missing: Vec<_> = self.held_links.keys().filter(|p| !p.exists()).cloned().collect();
        for pin in missing {
            if let Some(link) = self.held_links.remove(&pin) {
                let pinned = link.pin(&pin).with_context(|| format!("pinning link {}", pin.display()))?;
                self.held_links.insert(pin, pinned.into());
                restored.links += 1;
            }
        }
        Ok(restored)
    }
}
