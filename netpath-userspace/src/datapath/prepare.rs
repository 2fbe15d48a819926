//! `netpathd prepare`: an upgrade's verification done before the restart.
//!
//! A start that finds no programs of its own build pinned against the
//! pinned maps loads the object's, and the kernel verifies them: seconds
//! (`veth_ingress` alone takes some 900k verifier steps), during which the
//! API does not answer and a runtime's CNI plugin waits. `prepare` runs the
//! new build's loader beside the running agent of the old one: its programs
//! are loaded against the maps pinned now and pinned under `progs/<digest>`,
//! where the restart finds and adopts them. Nothing else changes: no map is
//! written or created, nothing is attached, the tail-call arrays keep the
//! running programs (the restart puts its own there), so the running agent
//! and its traffic go on as before.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use netpath_common::maps as names;

use super::{
    loader::{
        adoptable_programs, check_layout_stamp, check_pinned_maps, declared_maps, load_programs, object_loader,
        pin_programs, program_mut, programs_dir, read_layout_stamp, remove_dir_if_present, BPF_OBJECT, LAYOUT_MAP,
        LAYOUT_VERSION,
    },
    migrate::MIGRATES_FROM,
};

/// What [`prepare`] did.
#[derive(Debug)]
pub enum Prepared {
    /// This build's programs were pinned against these maps already (by a
    /// run of it, or an earlier `prepare`).
    Already { dir: PathBuf },
    /// Loaded, verified and pinned now, in `seconds`.
    Loaded { dir: PathBuf, seconds: f64 },
}

/// Loads and verifies the embedded object's programs against the maps
/// pinned under `pin_dir` and pins them where this build's start adopts
/// them. `ct_entries`: the configured conntrack capacity (the pinned table
/// must have it, as at a start). Refused where the start will not adopt:
/// no instance pinned, pins of another layout (the start migrates them,
/// which creates new maps), a map this build adds.
pub fn prepare(pin_dir: &Path, ct_entries: u32) -> Result<Prepared> {
    let maps_dir = pin_dir.join("maps");
    let stamp = maps_dir.join(LAYOUT_MAP);
    if !stamp.exists() {
        bail!(
            "no netpath instance is pinned under {}: there is nothing to prepare against (a first start loads and \
             verifies its programs)",
            pin_dir.display()
        );
    }
    let version = read_layout_stamp(&stamp)?;
    if version == MIGRATES_FROM {
        bail!(
            "the maps pinned under {} have layout version {version}, which this netpath migrates to {LAYOUT_VERSION} \
             when it starts (creating new maps): its programs cannot be loaded against them beforehand. Restart \
             the agent with this build; that start migrates the maps and verifies the programs.",
            maps_dir.display()
        );
    }
    check_layout_stamp(&maps_dir, false)?;
    let map_paths: Vec<(&str, PathBuf)> = names::PINNED_MAPS.iter().map(|m| (*m, maps_dir.join(m))).collect();
    if let Some((name, path)) = map_paths.iter().find(|(_, path)| !path.exists()) {
        bail!(
            "pinned map {name} is missing ({}): this netpath adds it, and the start that creates it loads and \
             verifies the programs",
            path.display()
        );
    }
    let declared = declared_maps(BPF_OBJECT)?;
    check_pinned_maps(&declared, &map_paths, Some(ct_entries))?;
    let dir = programs_dir(pin_dir)?;
    if adoptable_programs(pin_dir)?.is_some() {
        return Ok(Prepared::Already { dir });
    }
    let mut ebpf = object_loader(&map_paths, Some(ct_entries)).load(BPF_OBJECT).context("loading the BPF object")?;
    let since = std::time::Instant::now();
    load_programs(&mut ebpf)?;
    let seconds = since.elapsed().as_secs_f64();
    // An earlier prepare stopped midway leaves some pins: these replace
    // them (the same object against the same maps).
    remove_dir_if_present(&dir)?;
    pin_programs(&dir, |name, path| Ok(program_mut(&mut ebpf, name)?.pin(path)?))?;
    Ok(Prepared::Loaded { dir, seconds })
}
