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
//! Pins live under `<pin_dir>/maps/<MAP>` and
//! `<pin_dir>/links/<pin prefix>_<target>` (bpffs refuses names with a '.',
//! so a '.' in an interface name is written as '%').

mod batch;
mod conntrack;
mod links;
mod loader;
mod maps;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc},
};

use aya::Ebpf;

pub use conntrack::{monotonic_ns, CtCollector, GcReport, GC_TICK};
pub use links::CGROUP_TARGET;
pub use loader::{ensure_bpffs, BPF_OBJECT, LAYOUT_VERSION};
pub use maps::{FamilyMaps, FillCounter, LiveOwners, MapSummary, ProgramSummary};

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
}

impl Datapath {
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}
