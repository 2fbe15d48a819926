//! Tracked flows as the agent handles them: listing, cutting, and collecting
//! expired pairs.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::{BTreeMap, HashMap},
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, Map, MapData, PerCpuArray};
use netpath_common::{
    conntrack::{CtState, CLOSED, CT_F_REPLY, CT_F_SNAT, IPPROTO_TCP, NS_PER_SEC},
    maps as names, CtEntry, CtEntry4, CtEntry6, CtKey, CtKey4, CtKey6, CtStats, In6Addr, SockRevNatEntry4,
    SockRevNatEntry6, SockRevNatKey4, SockRevNatKey6,
};

use super::{
    batch,
    maps::{ignore_missing, live_ids, FamilyMaps, FillCounter, LiveOwners},
    Datapath,
};

/// CLOCK_MONOTONIC in nanoseconds: the clock `CtEntry4::expires_ns` uses.
pub fn monotonic_ns() -> u64 {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Datapath {
    /// The entry of one tuple, if tracked.
    pub fn ct_get4(&self, key: &CtKey4) -> Result<Option<CtEntry4>> {
        self.get_one(names::CT4, key)
    }

    /// The entry of one IPv6 tuple, if tracked.
    pub fn ct_get6(&self, key: &CtKey6) -> Result<Option<CtEntry6>> {
        self.get_one(names::CT6, key)
    }

    /// Every tracked entry, read in batches.
    pub fn ct_entries(&mut self) -> Result<Vec<(CtKey4, CtEntry4)>> {
        self.ct_entries_of()
    }

    /// Every tracked IPv6 entry (CT6), read in batches.
    pub fn ct_entries6(&mut self) -> Result<Vec<(CtKey6, CtEntry6)>> {
        self.ct_entries_of()
    }

    /// Every entry of family `A`'s conntrack table.
    pub fn ct_entries_of<A: FamilyMaps>(&mut self) -> Result<Vec<(CtKey<A>, CtEntry<A>)>>
    where
        CtKey<A>: aya::Pod,
        CtEntry<A>: aya::Pod,
    {
        let map = self.ct_map_of::<A>()?;
        batch::entries(map.map().fd().as_fd()).with_context(|| format!("reading {}", A::CT))
    }

    /// Removes tracked flows (both directions) whose entry matches `pred`;
    /// returns how many flows went.
    pub fn ct_remove_where(&mut self, pred: impl FnMut(&CtKey4, &CtEntry4) -> bool) -> Result<usize> {
        self.ct_remove_where_of(pred)
    }

    /// [`Datapath::ct_remove_where`] on CT6.
    pub fn ct_remove_where6(&mut self, pred: impl FnMut(&CtKey6, &CtEntry6) -> bool) -> Result<usize> {
        self.ct_remove_where_of(pred)
    }

    /// Flushes both families' tables; returns how many flows went.
    pub fn ct_flush(&mut self) -> Result<usize> {
        Ok(self.ct_remove_where(|_, _| true)? + self.ct_remove_where6(|_, _| true)?)
    }

    fn ct_remove_where_of<A: FamilyMaps>(
        &mut self,
        mut pred: impl FnMut(&CtKey<A>, &CtEntry<A>) -> bool,
    ) -> Result<usize>
    where
        CtKey<A>: aya::Pod,
        CtEntry<A>: aya::Pod,
    {
        let entries = self.ct_entries_of::<A>()?;
        let removed = Arc::clone(&self.ct_removed);
        let mut map = self.ct_map_of::<A>()?;
        let mut flows = 0;
        for (key, entry) in entries.iter().filter(|(k, e)| pred(k, e)) {
            let gone = remove_counted(&mut map, key, &removed)?;
            let peer_gone = remove_counted(&mut map, &entry.peer, &removed)?;
            if removed_a_flow(entry, gone, peer_gone) {
                flows += 1;
            }
        }
        Ok(flows)
    }

    /// Deletes the flows whose entries have all expired at `now`, and the
    /// orphans, as one GC round without pressure; returns how many flows
    /// went.
    pub fn ct_collect_expired(&mut self, now: u64) -> Result<usize> {
        let removed = Arc::clone(&self.ct_removed);
        let doom = Doom { now, pressure: false, handshake_ns: 0 };
        let live = self.live_owners()?;
        let flows4 = collect(&mut self.ct_map_of::<[u8; 4]>()?, &doom, &live, &removed)?.flows;
        Ok(flows4 + collect(&mut self.ct_map_of::<In6Addr>()?, &doom, &live, &removed)?.flows)
    }

    /// The datapath's conntrack counters, summed over CPUs.
    pub fn ct_stats(&self) -> Result<CtStats> {
        let map = self.ebpf.map(names::CT_STATS).ok_or_else(|| anyhow::anyhow!("map {} missing", names::CT_STATS))?;
        sum_ct_stats(&PerCpuArray::try_from(map)?)
    }

    /// A collector with handles of its own on CT4, CT_STATS and the owner
    /// tables (the same kernel maps), so that garbage collection runs beside the agent,
    /// never holding it. `handshake_timeout` is `conntrack.tcp_new`.
    pub fn ct_collector(&mut self, handshake_timeout: Duration) -> Result<CtCollector> {
        let own = |map: &Map, name: &str| -> Result<MapData> {
            let data = match map {
                Map::LruHashMap(d) | Map::PerCpuArray(d) | Map::Array(d) => d,
                _ => anyhow::bail!("map {name} has an unexpected type"),
            };
            let fd = data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating {name}'s fd"))?;
            MapData::from_fd(fd).with_context(|| format!("opening {name} for the collector"))
        };
        let map_of = |name: &str| self.ebpf.map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing"));
        let ct = own(map_of(names::CT4)?, names::CT4)?;
        let max_entries = ct.info().context("reading CT4's capacity")?.max_entries();
        let ct6 = own(map_of(names::CT6)?, names::CT6)?;
        let max_entries6 = ct6.info().context("reading CT6's capacity")?.max_entries();
        let stats = own(map_of(names::CT_STATS)?, names::CT_STATS)?;
        Ok(CtCollector {
            map: BpfHashMap::try_from(Map::LruHashMap(ct))?,
            map6: BpfHashMap::try_from(Map::LruHashMap(ct6))?,
            max_entries6,
            stats: PerCpuArray::try_from(Map::PerCpuArray(stats))?,
            removed: Arc::clone(&self.ct_removed),
            handshake_ns: handshake_timeout.as_nanos() as u64,
            baseline: None,
            last_round: None,
            report: GcReport { max_entries, ..Default::default() },
            owners: [
                own(map_of(names::MAPPING_IDS)?, names::MAPPING_IDS)?,
                own(map_of(names::CONTAINER_IDS)?, names::CONTAINER_IDS)?,
            ],
            sock_revnat: BpfHashMap::try_from(Map::LruHashMap(own(
                map_of(names::SOCK_REVNAT4)?,
                names::SOCK_REVNAT4,
            )?))?,
            sock_revnat6: BpfHashMap::try_from(Map::LruHashMap(own(
                map_of(names::SOCK_REVNAT6)?,
                names::SOCK_REVNAT6,
            )?))?,
            fills: self.fill_counter()?,
        })
    }

    /// Removes one half of a flow and leaves its peer, as the LRU does when
    /// it evicts an entry (tests of the orphan handling use it).
    pub fn ct_remove_half4(&mut self, key: &CtKey4) -> Result<()> {
        let removed = Arc::clone(&self.ct_removed);
        remove_counted(&mut self.ct_map()?, key, &removed)?;
        Ok(())
    }
}

/// The table is under pressure once it is half full (entries * divisor at
/// least the capacity): the GC runs at every tick and removes finished flows and idle
/// handshakes before their timeouts, so that churn leaves free entries and
/// the LRU never has to evict (it would evict the least recently used
/// entries: idle established flows).
const PRESSURE_DIVISOR: u64 = 2;
/// How often the agent looks at the datapath's insert counter (one per-CPU
/// array read) to decide whether a GC round is due before `gc_interval`:
/// a storm of 20k connections a second (80k entries) fills the default
/// table's free half in 1.6 s, far sooner than `gc_interval`.
pub const GC_TICK: Duration = Duration::from_millis(250);
/// A round brought forward (pressure, a storm of inserts) waits until this
/// many times the last round's length has passed since that round started.
const GC_DUTY_DIVISOR: u32 = 4;
/// Under pressure, a handshake (TCP, both halves new) this long without a
/// packet goes: a SYN is retransmitted after 1 s, and that SYN starts the
/// flow over.
const IDLE_HANDSHAKE_NS: u64 = NS_PER_SEC;

/// What the collector did, cumulative since the agent started, and what
/// its last walk saw. `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Rounds (walks of the whole table).
    pub runs: u64,
    /// How long the last round took (walk and deletions).
    pub last_duration: Duration,
    /// Flows removed (expired, orphaned, or early under pressure).
    pub flows_removed: u64,
    /// Entries removed (both halves of a flow count).
    pub entries_removed: u64,
    /// Flows removed before their timeout because the table was under
    /// pressure (finished connections, idle handshakes).
    pub early_flows_removed: u64,
    /// Entries the last walk found.
    pub live_entries: u64,
    /// Capacity of the table.
    pub max_entries: u32,
    /// Was the table under pressure at the last walk?
    pub pressure: bool,
    /// Entries the LRU evicted since the agent started (see
    /// [`CtCollector::collect`]).
    pub evictions: u64,
    /// Live flows per mapping id at the last walk (their original
    /// direction's entries).
    pub flows_by_mapping: BTreeMap<u32, u64>,
    /// Live masqueraded flows at the last walk.
    pub masquerade_flows: u64,
    /// The most masqueraded flows toward one destination (address, port
    /// and protocol) at the last walk: the masquerade's ports run out per
    /// destination, so this against the range's size is its pressure.
    pub masquerade_busiest_destination: u64,
    /// Destinations by the masquerade ports in use toward them at the last
    /// walk, bucketed as [`DESTINATION_PORT_BUCKETS`] says.
    pub masquerade_destinations: [u64; DESTINATION_PORT_BUCKETS.len()],
}

/// The buckets of [`GcReport::masquerade_destinations`]: a name and the
/// most ports in use it holds (each destination in the first that fits).
pub const DESTINATION_PORT_BUCKETS: [(&str, u64); 6] =
    [("1", 1), ("2-10", 10), ("11-100", 100), ("101-1000", 1000), ("1001-10000", 10000), ("over-10000", u64::MAX)];

/// The bucket of a destination with `ports` masquerade ports in use.
fn destination_bucket(ports: u64) -> usize {
    DESTINATION_PORT_BUCKETS.iter().position(|(_, most)| ports <= *most).unwrap_or(DESTINATION_PORT_BUCKETS.len() - 1)
}

/// Counts the live flows of a table for the report: per mapping, and the
/// masqueraded ones per destination (both by their original direction's
/// entry, which alone has no `CT_F_REPLY`).
fn tally_flows<A: Copy + Eq + std::hash::Hash>(
    entries: &HashMap<CtKey<A>, CtEntry<A>>,
    now: u64,
    report: &mut GcReport,
) {
    let mut destinations: HashMap<(A, u16, u8), u64> = HashMap::new();
    for (key, e) in entries.iter().filter(|(_, e)| e.flags & CT_F_REPLY == 0 && e.expires_ns >= now) {
        if e.mapping_id != 0 {
            *report.flows_by_mapping.entry(e.mapping_id).or_default() += 1;
        } else if e.flags & CT_F_SNAT != 0 {
            report.masquerade_flows += 1;
            *destinations.entry((key.daddr, key.dport, key.proto)).or_default() += 1;
        }
    }
    for ports in destinations.into_values() {
        report.masquerade_busiest_destination = report.masquerade_busiest_destination.max(ports);
        report.masquerade_destinations[destination_bucket(ports)] += 1;
    }
}

impl GcReport {
    /// Is a round due, `since` the last one started, with `inserted`
    /// entries inserted meanwhile? Every `interval` (`gc_interval`); at
    /// every tick under pressure; and as soon as the inserts since the last
    /// walk took half the room that was left below the pressure level, so
    /// that a storm is met within a tick or two, whatever the interval.
    /// Rounds brought forward take at most 1/[`GC_DUTY_DIVISOR`] of a CPU:
    /// a walk of a big table under pressure would otherwise run back to
    /// back, taking a whole core from the datapath and the API. Except when
    /// the inserts since the last walk took half the table's free entries:
    /// resting then would let the LRU evict idle established flows (a slow
    /// walk on a loaded host, and a storm filling the table meanwhile).
    pub fn round_due(&self, since: Duration, inserted: u64, interval: Duration) -> bool {
        if self.runs == 0 || since >= interval {
            return true;
        }
        let free = (self.max_entries as u64).saturating_sub(self.live_entries);
        if inserted >= free / 2 {
            return true;
        }
        let room = (self.max_entries as u64 / PRESSURE_DIVISOR).saturating_sub(self.live_entries);
        let rested = since >= self.last_duration * GC_DUTY_DIVISOR;
        rested && (self.pressure || inserted >= room / 2)
    }
}

/// Counter values at the collector's first walk, from which evictions are
/// counted.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    inserts: u64,
    datapath_removals: u64,
    agent_removals: u64,
    live: u64,
}

impl Baseline {
    /// Entries that left the table between `self` and `now` by neither a
    /// datapath nor an agent removal: evicted by the LRU (0 when the noise
    /// of a walk under load makes the figure negative).
    fn evictions_until(&self, now: &Baseline) -> u64 {
        let inserted = now.inserts.saturating_sub(self.inserts) as i64;
        let removed = now.datapath_removals.saturating_sub(self.datapath_removals) as i64
            + now.agent_removals.saturating_sub(self.agent_removals) as i64;
        let growth = now.live as i64 - self.live as i64;
        (inserted - removed - growth).max(0) as u64
    }
}

/// CT4 through a handle of its own: the agent's garbage collector, which
/// runs on a blocking thread beside the API (whose calls never wait for
/// it). Deletions re-read each entry first, so racing the datapath (a
/// revived tuple) or the agent (a flow cut meanwhile) is harmless.
pub struct CtCollector {
    map: BpfHashMap<MapData, CtKey4, CtEntry4>,
    /// CT6, collected in the same rounds.
    map6: BpfHashMap<MapData, CtKey6, CtEntry6>,
    max_entries6: u32,
    stats: PerCpuArray<MapData, CtStats>,
    /// Entries every agent path removed (shared with the [`Datapath`]).
    removed: Arc<AtomicU64>,
    handshake_ns: u64,
    baseline: Option<Baseline>,
    /// When the last round started, and the datapath's inserts then.
    last_round: Option<(Instant, u64)>,
    report: GcReport,
    /// MAPPING_IDS and CONTAINER_IDS.
    owners: [MapData; 2],
    /// SOCK_REVNAT4 and SOCK_REVNAT6: reverse translations of removed
    /// mappings go too.
    sock_revnat: BpfHashMap<MapData, SockRevNatKey4, SockRevNatEntry4>,
    sock_revnat6: BpfHashMap<MapData, SockRevNatKey6, SockRevNatEntry6>,
    /// Records the fill levels `status` shows, counted in the same round.
    fills: FillCounter,
}

impl CtCollector {
    /// `conntrack.tcp_new`, as a reload changes it.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_ns = timeout.as_nanos() as u64;
    }

    /// Is a round due (see [`GcReport::round_due`])? Reads only the
    /// datapath's counters, not the table.
    pub fn round_due(&self, interval: Duration) -> Result<bool> {
        let Some((started, inserts)) = self.last_round else { return Ok(true) };
        let inserted = sum_ct_stats(&self.stats)?.inserts.saturating_sub(inserts);
        Ok(self.report.round_due(started.elapsed(), inserted, interval))
    }

    /// One round: deletes the flows whose entries have all expired at
    /// `now`, the orphans (halves whose peer the LRU evicted: a lone reply
    /// half would block its tuple, a lone original half would translate
    /// packets whose replies can never come back), and under pressure the
    /// finished flows and idle handshakes; returns the report.
    ///
    /// Evictions: every entry that entered the table was inserted by the
    /// datapath (counted per CPU in CT_STATS) and leaves it by a datapath
    /// removal (counted there too), an agent removal (counted by the
    /// agent), or an LRU eviction (counted by nobody). So between the first
    /// walk and this one, evictions = inserts - removals - growth of the
    /// live count. The counters are read just before and just after the
    /// walk and averaged, since the walk is not instantaneous: under load
    /// the figure is off by at most half the inserts a walk lasts, and
    /// exact once the table is quiet. Entries written by other means
    /// (`bpftool map update`) are not counted.
    pub fn collect(&mut self, now: u64) -> Result<GcReport> {
        let started = Instant::now();
        let before = self.counters()?;
        let entries: HashMap<CtKey4, CtEntry4> =
            batch::entries(self.map.map().fd().as_fd()).context("reading CT4")?.into_iter().collect();
        let entries6: HashMap<CtKey6, CtEntry6> =
            batch::entries(self.map6.map().fd().as_fd()).context("reading CT6")?.into_iter().collect();
        let after = self.counters()?;
        self.last_round = Some((started, before.0.inserts));
        // Both tables count their inserts and removals in CT_STATS.
        let live = (entries.len() + entries6.len()) as u64;
        let mid = |f: fn(&(CtStats, u64)) -> u64| (f(&before) + f(&after)) / 2;
        let (inserts, datapath_removals, agent_removals) = (mid(|c| c.0.inserts), mid(|c| c.0.removals), mid(|c| c.1));
        let now_counts = Baseline { inserts, datapath_removals, agent_removals, live };
        let base = *self.baseline.get_or_insert(now_counts);
        let report = &mut self.report;
        report.evictions = base.evictions_until(&now_counts);
        report.live_entries = entries.len() as u64;
        report.flows_by_mapping.clear();
        (report.masquerade_flows, report.masquerade_busiest_destination) = (0, 0);
        report.masquerade_destinations = Default::default();
        tally_flows(&entries, now, report);
        tally_flows(&entries6, now, report);
        // Either table half full puts the round under pressure.
        report.pressure = entries.len() as u64 * PRESSURE_DIVISOR >= report.max_entries as u64
            || entries6.len() as u64 * PRESSURE_DIVISOR >= self.max_entries6 as u64;
        let doom = Doom { now, pressure: report.pressure, handshake_ns: self.handshake_ns };
        let [mappings, containers] = &self.owners;
        let owners = LiveOwners {
            mappings: live_ids(mappings.fd().as_fd()).context("reading MAPPING_IDS")?,
            containers: live_ids(containers.fd().as_fd()).context("reading CONTAINER_IDS")?,
        };
        let removed_before = self.removed.load(Ordering::Relaxed);
        let round = collect_from(&mut self.map, &entries, &doom, &owners, &self.removed)?;
        let removed4 = self.removed.load(Ordering::Relaxed).saturating_sub(removed_before);
        let round6 = collect_from(&mut self.map6, &entries6, &doom, &owners, &self.removed)?;
        let entries_removed = self.removed.load(Ordering::Relaxed).saturating_sub(removed_before);
        let mapping_ids = &self.owners[0];
        sweep_sock_revnat(&mut self.sock_revnat, |e| e.mapping_id, mapping_ids, names::SOCK_REVNAT4)?;
        sweep_sock_revnat(&mut self.sock_revnat6, |e| e.mapping_id, mapping_ids, names::SOCK_REVNAT6)?;
        // The fill levels `status` shows, counted in the same round.
        let live6 = (entries6.len() as u64).saturating_sub(entries_removed - removed4);
        self.fills
            .record(&[(names::CT4, (entries.len() as u64).saturating_sub(removed4)), (names::CT6, live6)], started)?;
        let round = Round { flows: round.flows + round6.flows, early: round.early + round6.early };
        let report = &mut self.report;
        report.runs += 1;
        report.flows_removed += round.flows as u64;
        report.early_flows_removed += round.early as u64;
        report.entries_removed += entries_removed;
        report.last_duration = started.elapsed();
        Ok(report.clone())
    }

    /// The datapath's counters and the agent's removals, read together.
    fn counters(&self) -> Result<(CtStats, u64)> {
        Ok((sum_ct_stats(&self.stats)?, self.removed.load(Ordering::Relaxed)))
    }
}

fn sum_ct_stats<T: Borrow<MapData>>(map: &PerCpuArray<T, CtStats>) -> Result<CtStats> {
    let mut total = CtStats::default();
    for cpu in map.get(&0, 0).context("reading CT_STATS")?.iter() {
        total.merge(cpu);
    }
    Ok(total)
}

type CtMap<T, A> = BpfHashMap<T, CtKey<A>, CtEntry<A>>;

/// Which pairs a round removes.
struct Doom {
    now: u64,
    pressure: bool,
    /// `tcp_new`, in ns: when a new half last saw a packet.
    handshake_ns: u64,
}

impl Doom {
    fn expired<A>(&self, e: &CtEntry<A>) -> bool {
        e.expires_ns < self.now
    }

    /// Every half of the flow expired (or gone).
    fn dead<A>(&self, e: &CtEntry<A>, peer: Option<&CtEntry<A>>) -> bool {
        self.expired(e) && peer.is_none_or(|p| self.expired(p))
    }

    /// Under pressure: a flow whose connection is over (both halves closed
    /// or reset), or a TCP handshake without a packet for
    /// [`IDLE_HANDSHAKE_NS`].
    fn early<A>(&self, key: &CtKey<A>, e: &CtEntry<A>, peer: Option<&CtEntry<A>>) -> bool {
        let Some(p) = peer else { return false };
        if !self.pressure || key.proto != IPPROTO_TCP {
            return false;
        }
        let finished = |h: &CtEntry<A>| h.state == CLOSED || h.state == CtState::Reset as u8;
        // A new half last saw a packet `tcp_new` before it expires.
        let idle_handshake = |h: &CtEntry<A>| {
            h.state == CtState::New as u8 && h.expires_ns + IDLE_HANDSHAKE_NS <= self.now + self.handshake_ns
        };
        (finished(e) && finished(p)) || (idle_handshake(e) && idle_handshake(p))
    }
}

/// What a round removed.
#[derive(Default)]
struct Round {
    flows: usize,
    /// Of which early, under pressure.
    early: usize,
}

fn collect<T: BorrowMut<MapData>, A: FamilyMaps>(
    map: &mut CtMap<T, A>,
    doom: &Doom,
    live: &LiveOwners,
    removed: &AtomicU64,
) -> Result<Round>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let entries: HashMap<CtKey<A>, CtEntry<A>> =
        batch::entries(map.map().fd().as_fd()).with_context(|| format!("reading {}", A::CT))?.into_iter().collect();
    collect_from(map, &entries, doom, live, removed)
}

fn collect_from<T: BorrowMut<MapData>, A: FamilyMaps>(
    map: &mut CtMap<T, A>,
    entries: &HashMap<CtKey<A>, CtEntry<A>>,
    doom: &Doom,
    live: &LiveOwners,
    removed: &AtomicU64,
) -> Result<Round>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    // Flows of removed owners (see netpath_common::owner) go whatever
    // their state; the rest by their timeouts, pressure and peers.
    let stale: Vec<CtKey<A>> = entries.iter().filter(|(_, e)| !live.owns(e)).map(|(k, _)| *k).collect();
    let doomed: Vec<CtKey<A>> = entries
        .iter()
        .filter(|(k, e)| {
            let peer = entries.get(&e.peer);
            live.owns(e) && (doom.dead(e, peer) || doom.early(k, e, peer))
        })
        .map(|(k, _)| *k)
        .collect();
    let orphans: Vec<CtKey<A>> = entries
        .iter()
        .filter(|(_, e)| live.owns(e) && !doom.expired(e) && !entries.contains_key(&e.peer))
        .map(|(k, _)| *k)
        .collect();
    let mut round = remove_doomed(map, &doomed, doom, removed)?;
    round.flows += remove_stale(map, &stale, live, removed)?;
    round.flows += remove_orphans(map, &orphans, removed)?;
    Ok(round)
}

/// Deletes the socket reverse translations (`SOCK_REVNAT4`/`6`, `name`)
/// of removed mappings: they no longer apply (the datapath checks the
/// mapping's owner slot), and removing a mapping does not walk them.
/// Returns how many went.
///
/// The live mappings (`mapping_ids`: MAPPING_IDS) are read after the
/// entries, not with the round's other owners: a mapping published after
/// those were read has sockets translated to it by now, whose entries
/// would otherwise look stale.
fn sweep_sock_revnat<T: BorrowMut<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<T, K, V>,
    mapping_id: fn(&V) -> u32,
    mapping_ids: &MapData,
    name: &str,
) -> Result<usize> {
    let entries: Vec<(K, V)> = batch::entries(map.map().fd().as_fd()).with_context(|| format!("reading {name}"))?;
    let live = live_ids(mapping_ids.fd().as_fd()).context("reading MAPPING_IDS")?;
    let stale = |e: &V| mapping_id(e) != 0 && !live.contains(&mapping_id(e));
    let mut removed = 0;
    for (key, _) in entries.iter().filter(|(_, e)| stale(e)) {
        // Re-read: the socket may have connected again, to a live mapping.
        if map.get(key, 0).is_ok_and(|e| stale(&e)) && ignore_missing(map.remove(key)).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Did removing `entry` (`gone`) and its peer (`peer_gone`) remove a flow?
/// A flow is counted by its original half, whichever half a walk meets
/// first: the one removed here, or the peer removed with it.
fn removed_a_flow<A>(entry: &CtEntry<A>, gone: bool, peer_gone: bool) -> bool {
    if entry.flags & CT_F_REPLY == 0 {
        gone
    } else {
        peer_gone
    }
}

/// Deletes the entries of these keys that are still stale, each re-read
/// just before it goes (the datapath may have tracked a new flow on the
/// tuple meanwhile, with a live owner), and their peers if stale too.
/// Returns how many flows went.
fn remove_stale<T: BorrowMut<MapData>, A: FamilyMaps>(
    map: &mut CtMap<T, A>,
    keys: &[CtKey<A>],
    live: &LiveOwners,
    removed: &AtomicU64,
) -> Result<usize>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let mut flows = 0;
    for key in keys {
        let Ok(entry) = map.get(key, 0) else { continue };
        if live.owns(&entry) {
            continue;
        }
        let gone = remove_counted(map, key, removed)?;
        let peer_gone =
            map.get(&entry.peer, 0).is_ok_and(|peer| !live.owns(&peer)) && remove_counted(map, &entry.peer, removed)?;
        if removed_a_flow(&entry, gone, peer_gone) {
            flows += 1;
        }
    }
    Ok(flows)
}

/// Deletes these halves if their peer is still missing, each checked just
/// before it goes (the datapath inserts a pair's halves one after the
/// other).
fn remove_orphans<T: BorrowMut<MapData>, A: FamilyMaps>(
    map: &mut CtMap<T, A>,
    keys: &[CtKey<A>],
    removed: &AtomicU64,
) -> Result<usize>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let mut flows = 0;
    for key in keys {
        let Ok(entry) = map.get(key, 0) else { continue };
        if map.get(&entry.peer, 0).is_ok() {
            continue;
        }
        if remove_counted(map, key, removed)? {
            flows += 1;
        }
    }
    Ok(flows)
}

/// Deletes the pairs of these keys that are still doomed, each re-read just
/// before it goes: the datapath may have revived one (a reused tuple, a
/// retransmission) since the table was read.
fn remove_doomed<T: BorrowMut<MapData>, A: FamilyMaps>(
    map: &mut CtMap<T, A>,
    keys: &[CtKey<A>],
    doom: &Doom,
    removed: &AtomicU64,
) -> Result<Round>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let mut round = Round::default();
    for key in keys {
        // The pair's other half, already gone with its peer, is skipped here.
        let Ok(entry) = map.get(key, 0) else { continue };
        let peer = map.get(&entry.peer, 0).ok();
        let dead = doom.dead(&entry, peer.as_ref());
        if !dead && !doom.early(key, &entry, peer.as_ref()) {
            continue;
        }
        if peer.is_some() {
            remove_counted(map, &entry.peer, removed)?;
        }
        if remove_counted(map, key, removed)? {
            round.flows += 1;
            if !dead {
                round.early += 1;
            }
        }
    }
    Ok(round)
}

/// Deletes one entry; true if it was there. Every removal the agent makes
/// goes through here, counted in `removed` (evictions are told from
/// removals by that count).
fn remove_counted<T: BorrowMut<MapData>, A: FamilyMaps>(
    map: &mut CtMap<T, A>,
    key: &CtKey<A>,
    removed: &AtomicU64,
) -> Result<bool>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    match map.remove(key) {
        Ok(()) => {
            removed.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
        Err(e) => match ignore_missing(Err(e)) {
            Ok(()) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting from {}", A::CT)),
        },
    }
}

#[cfg(test)]
mod tests {
    use netpath_common::conntrack::{CtState, IPPROTO_UDP};

    use super::*;

    #[test]
    fn each_destination_falls_in_the_first_bucket_that_holds_its_ports() {
        let bucket = |ports| DESTINATION_PORT_BUCKETS[destination_bucket(ports)].0;
        assert_eq!(
            [1, 2, 10, 11, 100, 101, 1000, 1001, 10000].map(bucket),
            ["1", "2-10", "2-10", "11-100", "11-100", "101-1000", "101-1000", "1001-10000", "1001-10000"]
        );
        assert_eq!(bucket(10001), "over-10000");
        assert_eq!(bucket(65535), "over-10000");
    }

    const NOW: u64 = 1_000 * NS_PER_SEC;
    const TCP_NEW: u64 = 5 * NS_PER_SEC;

    fn half(state: CtState, expires_ns: u64) -> CtEntry4 {
        CtEntry4 { state: state as u8, expires_ns, ..Default::default() }
    }

    fn key(proto: u8) -> CtKey4 {
        CtKey4::new([198, 51, 100, 1], [198, 18, 0, 1], 40000, 8080, proto)
    }

    #[test]
    fn a_pair_counts_as_one_flow_whichever_half_is_met_first() {
        let orig = half(CtState::Established, NOW);
        let reply = CtEntry4 { flags: CT_F_REPLY, ..orig };
        // The original half first: it goes, its peer with it.
        assert!(removed_a_flow(&orig, true, true));
        assert!(!removed_a_flow(&reply, false, false), "then the reply half: already gone");
        // The reply half first: its peer, the original half, goes with it.
        assert!(removed_a_flow(&reply, true, true));
        assert!(!removed_a_flow(&orig, false, false));
        // A lone reply half (an orphan) is no flow.
        assert!(!removed_a_flow(&reply, true, false));
    }

    #[test]
    fn a_flow_is_dead_when_every_half_expired() {
        let doom = Doom { now: NOW, pressure: false, handshake_ns: TCP_NEW };
        let (gone, live) = (half(CtState::Established, NOW - 1), half(CtState::Established, NOW + 1));
        assert!(doom.dead(&gone, Some(&gone)));
        assert!(doom.dead(&gone, None), "an expired half whose peer is gone");
        assert!(!doom.dead(&gone, Some(&live)), "the live half keeps the flow");
        assert!(!doom.dead(&live, Some(&gone)));
    }

    #[test]
    fn pressure_takes_finished_flows_and_idle_handshakes_only() {
        let calm = Doom { now: NOW, pressure: false, handshake_ns: TCP_NEW };
        let doom = Doom { pressure: true, ..calm };
        let tcp = key(IPPROTO_TCP);
        let later = NOW + 10 * NS_PER_SEC;
        let closed = half(CtState::Closed, later);
        let reset = half(CtState::Reset, later);
        for (a, b) in [(&closed, &closed), (&closed, &reset), (&reset, &reset)] {
            assert!(doom.early(&tcp, a, Some(b)));
            assert!(!calm.early(&tcp, a, Some(b)), "only under pressure");
        }
        // A half-closed connection may still carry data; an established one
        // is what pressure protects.
        let closing = half(CtState::Closing, later);
        let established = half(CtState::Established, later);
        assert!(!doom.early(&tcp, &closed, Some(&closing)));
        assert!(!doom.early(&tcp, &closed, Some(&established)));
        assert!(!doom.early(&tcp, &established, Some(&established)));
        // A handshake whose last packet is a second old or more goes; a
        // younger one, or one with an established half, stays.
        let idle = half(CtState::New, NOW + TCP_NEW - IDLE_HANDSHAKE_NS);
        let young = half(CtState::New, NOW + TCP_NEW - IDLE_HANDSHAKE_NS + 1);
        assert!(doom.early(&tcp, &idle, Some(&idle)));
        assert!(!doom.early(&tcp, &idle, Some(&young)));
        assert!(!doom.early(&tcp, &idle, Some(&established)));
        // Only TCP; and a lone half is the orphan rule's.
        assert!(!doom.early(&key(IPPROTO_UDP), &idle, Some(&idle)));
        assert!(!doom.early(&tcp, &closed, None));
    }

    #[test]
    fn evictions_are_inserts_not_removed_and_not_in_the_table() {
        let base = Baseline { inserts: 100, datapath_removals: 2, agent_removals: 10, live: 88 };
        let at = |inserts, datapath_removals, agent_removals, live| {
            base.evictions_until(&Baseline { inserts, datapath_removals, agent_removals, live })
        };
        assert_eq!(at(100, 2, 10, 88), 0);
        // 50 inserted, 5 removed by the datapath, 20 by the agent, the table
        // grew by 15: 10 were evicted.
        assert_eq!(at(150, 7, 30, 103), 10);
        // Entries the walk saw that the counters had not yet: no negative count.
        assert_eq!(at(100, 2, 10, 95), 0);
    }

    #[test]
    fn a_round_is_due_by_the_interval_by_pressure_or_by_inserts() {
        let interval = Duration::from_secs(5);
        let tick = GC_TICK;
        let report = GcReport { runs: 1, live_entries: 100, max_entries: 1000, ..Default::default() };
        assert!(GcReport { runs: 0, ..report.clone() }.round_due(tick, 0, interval), "the first round");
        assert!(!report.round_due(tick, 0, interval));
        assert!(report.round_due(interval, 0, interval));
        assert!(GcReport { pressure: true, ..report.clone() }.round_due(tick, 0, interval));
        // 400 entries of room below the pressure level (500): a storm that
        // took half of it since the last walk brings the next round forward.
        assert!(!report.round_due(tick, 199, interval));
        assert!(report.round_due(tick, 200, interval));
        // At or above the pressure level, any insert does.
        let full = GcReport { live_entries: 600, ..report };
        assert!(full.round_due(tick, 0, interval));
        // A long walk rests a multiple of its length first (a quarter of a
        // CPU at most), but never past the interval.
        let slow = GcReport { last_duration: Duration::from_millis(400), pressure: true, ..full };
        assert!(!slow.round_due(tick, 0, interval));
        assert!(!slow.round_due(Duration::from_millis(1599), 0, interval));
        assert!(slow.round_due(Duration::from_millis(1600), 0, interval));
        assert!(GcReport { runs: 0, ..slow.clone() }.round_due(tick, 0, interval));
        assert!(slow.round_due(interval, 0, Duration::from_secs(1)));
        // ...unless a storm took half the free entries (400 of 1000 - 600)
        // since: the LRU would evict next.
        assert!(!slow.round_due(tick, 199, interval));
        assert!(slow.round_due(tick, 200, interval));
    }
}
