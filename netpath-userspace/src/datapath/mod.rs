//! The datapath layer: the BPF object and everything netpath keeps in the
//! kernel. It knows nothing of the API: the agent turns what it returns into
//! views.
//!
//! - [`loader`]: loading the embedded object, every map pinned (and a pin of
//!   an incompatible layout refused), every program of the hook table loaded;
//! - [`links`]: attaching through pinned links, swapping programs into them
//!   on restart, detaching;
//! - [`maps`]: typed access to each map;
//! - [`conntrack`]: reading, cutting and collecting tracked flows.
//!
//! Pins live under `<pin_dir>/maps/<MAP>`, `<pin_dir>/progs/<digest>/<program>`
//! (the digest names the object and the maps they were loaded against) and
//! `<pin_dir>/links/<pin prefix>_<target>` (bpffs refuses names with a '.',
//! so a '.' in an interface name is written as '%').

mod batch;
mod conntrack;
mod links;
mod loader;
mod maps;
mod migrate;
mod pins;
mod prepare;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc},
};

use aya::Ebpf;

pub use conntrack::{monotonic_ns, CtCollector, GcReport, DESTINATION_PORT_BUCKETS, GC_TICK};
pub use links::{attached_program_ids, CGROUP_TARGET};
pub use loader::{ensure_bpffs, read_layout_stamp, BPF_OBJECT, LAYOUT_MAP, LAYOUT_VERSION};
pub use maps::{FamilyMaps, FillCounter, LiveOwners, MapSummary, ProgramSummary};
pub use migrate::{aside_dir, read_containers_v7, MIGRATES_FROM};
pub use pins::PinsRestored;
pub use prepare::{prepare, Prepared};

/// The loaded object and where its pins are.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Summaries of maps taken out of the object (the event ring buffer).
    taken: Vec<MapSummary>,
    /// CT4 entries the agent removed (every path, the GC's included): the
    /// collector tells LRU evictions from removals by it.
    ct_removed: Arc<AtomicU64>,
    /// Keys of the maps only the agent writes (their fill levels).
    written: maps::Written,
    /// Fill levels of the maps the datapath fills, as last counted.
    fills: maps::SharedFills,
    /// The agent's own handle on every link it attached, beside the link's
    /// pin: a link stays attached while either holds it, so pins removed
    /// behind the agent's back (bpffs wiped) detach nothing, and
    /// [`Datapath::restore_pins`] pins the same links again.
    held_links: std::collections::HashMap<PathBuf, aya::programs::links::FdLink>,
    /// A handle on every pinned map, taken at load (the event ring buffer
    /// leaves the object), to pin the same maps again.
    map_fds: Vec<(&'static str, std::os::fd::OwnedFd)>,
    /// Each map's summary as first read (its size and memory are fixed).
    summary_cache: std::sync::Mutex<std::collections::HashMap<String, MapSummary>>,
    /// The programs' summaries as first read.
    program_cache: std::sync::OnceLock<Vec<ProgramSummary>>,
    /// Programs adopted from their pins (a previous run of this build
    /// loaded them against the same maps), by name; empty when this run
    /// loaded the object's.
    adopted: std::collections::HashMap<String, aya::programs::Program>,
}

impl Datapath {
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}
