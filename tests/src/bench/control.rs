//! The control section: what API calls cost with a full conntrack table.
//!
//! One netpath bed (default settings: CT4 holds 262144 entries) with
//! [`OWNING_MAPPINGS`] published ports. The same calls are timed twice,
//! with an empty table and after [`FLOWS`] established flows owned by
//! those mappings (two CT4 entries each, written through the pin as the
//! datapath would) have filled it past the GC's pressure level, so that
//! the GC walks the whole table every tick while the calls run:
//!
//! - `map` (publishing one more port) and `unmap` of a port without
//!   flows, back to back, for [`WINDOW`] (at least [`CALLS`] times):
//!   median, p99 and maximum;
//! - `unmap` of a mapping that owns FLOWS / OWNING_MAPPINGS flows (full
//!   table only): cutting its flows must not walk the table;
//! - `status` (fill levels of every map).
//!
//! The figures are ratios of the full table to the empty one, in the same
//! run, beside absolute targets.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use netpath_common::{
    conntrack::{CtState, CT_F_REPLY, IPPROTO_TCP},
    CtEntry4, CtKey4, CtScope,
};
use netpath_tests::topology::HOST_UPLINK_IP;
use netpath_userspace::model::{Mapping, MappingRequest, Status};
use serde::Serialize;

use super::{
    bed::{Bed, CONTAINER_PORT},
    load::percentile,
    netpath::NetpathBed,
    options::{Options, Section},
    report::section_targets,
    results::{Results, Target},
};

/// Established flows written into CT4 (two entries each).
pub const FLOWS: usize = 100_000;
/// Published ports that own them, FLOWS / OWNING_MAPPINGS flows each.
pub const OWNING_MAPPINGS: usize = 100;
/// `map` + `unmap` pairs timed per table state.
pub const CALLS: usize = 500;
/// Mappings with flows removed at the full table.
const OWNER_UNMAPS: usize = 20;
/// The timed `map`/`unmap` pairs go on, back to back, for at least this
/// long (and at least [`CALLS`] of them, at most [`MAX_CALLS`]), so that
/// GC rounds run while they do.
const WINDOW: Duration = Duration::from_secs(3);
const MAX_CALLS: usize = 50_000;
const WARM_UP_CALLS: usize = 200;
/// `status` calls timed per table state.
const STATUS_CALLS: usize = 20;
/// First host port of the owning mappings, and of the ports mapped and
/// unmapped by the timed calls.
const OWNING_BASE: u16 = 40000;
const TIMED_BASE: u16 = 41000;

/// Latency of one kind of call, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(took: Vec<Duration>) -> Latency {
        let mut ms: Vec<f64> = took.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return Latency { samples: 0, p50_ms: f64::NAN, p99_ms: f64::NAN, max_ms: f64::NAN };
        }
        ms.sort_by(f64::total_cmp);
        Latency {
            samples: ms.len(),
            p50_ms: percentile(&ms, 0.5),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// The calls at one table state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableState {
    /// CT4 entries when the calls started (the GC's count).
    pub ct_entries: u64,
    pub map: Latency,
    pub unmap: Latency,
    pub status: Latency,
    /// Unmapping a mapping that owns flows (none at the empty table).
    pub unmap_owner: Option<Latency>,
    /// GC rounds that ran while the calls did, and the last one's length.
    pub gc_rounds_during: u64,
    pub gc_round_ms: f64,
    /// The table was under pressure (the GC walks it every tick).
    pub gc_pressure: bool,
    /// Seconds the `map`/`unmap` pairs took, pauses included.
    pub window_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlFigures {
    pub flows: usize,
    pub owning_mappings: usize,
    pub empty: TableState,
    pub full: TableState,
    /// Milliseconds to write the flows through the pin (informational).
    pub fill_ms: f64,
}

impl ControlFigures {
    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Control.name();
        let entries = self.full.ct_entries;
        let mut out = vec![Target::new(
            section,
            "control: p99 of `map` under 1 ms while the GC walks a full conntrack table (GC rounds ran meanwhile)",
            format!(
                "p99 {:.3} ms (p50 {:.3}, max {:.3}) at {entries} entries, {} GC rounds of {:.0} ms meanwhile; \
                 empty table p99 {:.3} ms",
                self.full.map.p99_ms,
                self.full.map.p50_ms,
                self.full.map.max_ms,
                self.full.gc_rounds_during,
                self.full.gc_round_ms,
                self.empty.map.p99_ms
            ),
            self.full.map.p99_ms < 1.0 && self.full.gc_rounds_during > 0,
        )];
        if let Some(owner) = &self.full.unmap_owner {
            let per_flow = FLOWS / OWNING_MAPPINGS;
            out.push(Target::new(
                section,
                "control: unmapping a port costs its own flows, not the table (median under 2x the empty table's)",
                format!(
                    "{:.3} ms for a mapping with {per_flow} flows at {entries} entries vs {:.3} ms at an empty table \
                     ({:.2}x)",
                    owner.p50_ms,
                    self.empty.unmap.p50_ms,
                    owner.p50_ms / self.empty.unmap.p50_ms
                ),
                owner.p50_ms < 2.0 * self.empty.unmap.p50_ms.max(0.05),
            ));
        }
        out.push(Target::new(
            section,
            "control: `status` reads fill levels without walking (median under 2x the empty table's)",
            format!(
                "{:.3} ms at {entries} entries vs {:.3} ms empty ({:.2}x)",
                self.full.status.p50_ms,
                self.empty.status.p50_ms,
                self.full.status.p50_ms / self.empty.status.p50_ms
            ),
            self.full.status.p50_ms < 2.0 * self.empty.status.p50_ms.max(0.05),
        ));
        out
    }
}

pub fn run(opts: &Options) -> Result<ControlFigures> {
    eprintln!("== control: API calls with an empty and a full conntrack table");
    let bed = NetpathBed::new()?;
    let specs: Vec<String> = (0..OWNING_MAPPINGS).map(|i| spec(OWNING_BASE + i as u16)).collect();
    let owners: Vec<Mapping> =
        bed.post("/mappings", &MappingRequest { spec: None, specs }).context("publishing the owning mappings")?;
    let calls = if opts.quick { CALLS / 5 } else { CALLS };
    let mut figures = ControlFigures { flows: FLOWS, owning_mappings: OWNING_MAPPINGS, ..Default::default() };
    figures.empty = measure(&bed, calls, &[])?;
    super::check_interrupted()?;
    let started = Instant::now();
    fill(&bed, &owners)?;
    figures.fill_ms = started.elapsed().as_secs_f64() * 1e3;
    wait_for_gc_count(&bed, (2 * FLOWS) as u64)?;
    figures.full = measure(&bed, calls, &owners[..OWNER_UNMAPS])?;
    eprintln!(
        "   map p99 {:.3} ms empty, {:.3} ms full ({} GC rounds of {:.0} ms meanwhile)",
        figures.empty.map.p99_ms, figures.full.map.p99_ms, figures.full.gc_rounds_during, figures.full.gc_round_ms
    );
    Ok(figures)
}

fn spec(port: u16) -> String {
    format!("{port}:c1:{CONTAINER_PORT}")
}

fn status(bed: &NetpathBed) -> Result<Status> {
    bed.get("/status")
}

/// Times the calls; `owners`: mappings with flows to remove, one each.
fn measure(bed: &NetpathBed, calls: usize, owners: &[Mapping]) -> Result<TableState> {
    let before = status(bed)?;
    let mut state = TableState { ct_entries: ct_entries(&before), ..Default::default() };
    // Warm-up, untimed: the agent's and the client's first calls pay for
    // page faults and allocations.
    for i in 0..WARM_UP_CALLS {
        let one = MappingRequest::one(spec(TIMED_BASE + (i % 1000) as u16));
        let _: Vec<Mapping> = bed.post("/mappings", &one)?;
        let _: Vec<Mapping> = bed.post("/mappings/unmap", &one)?;
    }
    let (mut map, mut unmap) = (vec![], vec![]);
    let started = Instant::now();
    for i in 0..MAX_CALLS {
        if i >= calls && started.elapsed() >= WINDOW {
            break;
        }
        let one = MappingRequest::one(spec(TIMED_BASE + (i % 1000) as u16));
        let t = Instant::now();
        let _: Vec<Mapping> = bed.post("/mappings", &one)?;
        map.push(t.elapsed());
        let t = Instant::now();
        let _: Vec<Mapping> = bed.post("/mappings/unmap", &one)?;
        unmap.push(t.elapsed());
        if i % 50 == 0 {
            super::check_interrupted()?;
        }
    }
    let window = started.elapsed();
    let mut took = vec![];
    for _ in 0..STATUS_CALLS {
        let t = Instant::now();
        let _ = status(bed)?;
        took.push(t.elapsed());
    }
    if !owners.is_empty() {
        let mut owner_took = vec![];
        for m in owners {
            let t = Instant::now();
            let _: Vec<Mapping> = bed.post("/mappings/unmap", &MappingRequest::one(m.spec()))?;
            owner_took.push(t.elapsed());
        }
        state.unmap_owner = Some(Latency::of(owner_took));
    }
    let after = status(bed)?;
    state.map = Latency::of(map);
    state.unmap = Latency::of(unmap);
    state.status = Latency::of(took);
    state.gc_rounds_during = after.conntrack.gc_runs.saturating_sub(before.conntrack.gc_runs);
    state.gc_round_ms = after.conntrack.gc_last_us as f64 / 1e3;
    state.gc_pressure = after.conntrack.pressure;
    state.window_s = window.as_secs_f64();
    Ok(state)
}

fn ct_entries(st: &Status) -> u64 {
    st.maps.iter().find(|m| m.name == "CT4").map_or(0, |m| m.entries)
}

/// Writes FLOWS established flows through the CT4 pin, spread over the
/// owning mappings (as the datapath writes a published flow's pair:
/// translation scope, each half naming its peer and its mapping).
fn fill(bed: &NetpathBed, owners: &[Mapping]) -> Result<()> {
    let path = bed.topology().pin_dir().join("maps").join("CT4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut ct: BpfHashMap<MapData, CtKey4, CtEntry4> = BpfHashMap::try_from(Map::LruHashMap(data))?;
    let expires_ns = netpath_userspace::datapath::monotonic_ns() + 3600 * 1_000_000_000;
    for i in 0..FLOWS {
        let owner = &owners[i % owners.len()];
        // 10.200.0.0 and up, 50000 source ports each: every key distinct.
        let client = Ipv4Addr::from(0x0ac8_0000u32 + (i / 50_000) as u32);
        let sport = (10_000 + i % 50_000) as u16;
        let key =
            CtKey4::new(client.octets(), HOST_UPLINK_IP.octets(), sport.to_be(), owner.host_port.to_be(), IPPROTO_TCP)
                .in_scope(CtScope::Nat);
        let reply = key.reversed().in_scope(CtScope::Nat);
        let half = |peer: CtKey4, flags: u8| CtEntry4 {
            peer,
            flags,
            state: CtState::Established as u8,
            mapping_id: owner.id,
            expires_ns,
            ..Default::default()
        };
        ct.insert(key, half(reply, 0), 0).with_context(|| format!("writing flow {i} into CT4"))?;
        ct.insert(reply, half(key, CT_F_REPLY), 0).with_context(|| format!("writing flow {i}'s reply into CT4"))?;
        if i % 10_000 == 0 {
            super::check_interrupted()?;
        }
    }
    Ok(())
}

/// Until a GC round has counted at least `entries` (the figures are taken
/// with the GC working on the full table).
fn wait_for_gc_count(bed: &NetpathBed, entries: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(bed)?;
        if ct_entries(&st) >= entries {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the GC never counted {entries} CT4 entries (last count {})", ct_entries(&st));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The control section of `RESULTS.md`.
pub fn section(s: &mut String, r: &Results, c: &ControlFigures) {
    let _ = writeln!(s, "## Control plane: API calls with a full conntrack table\n");
    section_targets(s, r, Section::Control);
    let _ = writeln!(
        s,
        "netpathd with its default settings (CT4: 262144 entries) and {} published ports. The same calls \
         with an empty table, then after {} established flows owned by those ports ({} CT4 entries, written \
         through the pin) filled it past the GC's pressure level (half full), so that the GC walks the \
         whole table at every tick while the calls run (pressure seen: {}). API round trips from an \
         in-process client over the socket; `map` and `unmap` of a port without flows back to back for \
         {:.1} s ({} times each at the full table). Writing the flows took {:.0} ms.\n",
        c.owning_mappings,
        c.flows,
        2 * c.flows,
        c.full.gc_pressure,
        c.full.window_s,
        c.full.map.samples,
        c.fill_ms
    );
    let _ = writeln!(
        s,
        "| call | table | CT4 entries | samples | p50 ms | p99 ms | max ms | GC rounds meanwhile | last GC round ms |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, state) in [("empty", &c.empty), ("full", &c.full)] {
        let mut rows = vec![("`map`", &state.map), ("`unmap` (no flows)", &state.unmap), ("`status`", &state.status)];
        if let Some(owner) = &state.unmap_owner {
            rows.push(("`unmap` (its flows)", owner));
        }
        for (call, l) in rows {
            let _ = writeln!(
                s,
                "| {call} | {name} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {:.0} |",
                state.ct_entries, l.samples, l.p50_ms, l.p99_ms, l.max_ms, state.gc_rounds_during, state.gc_round_ms
            );
        }
    }
    s.push('\n');
}
