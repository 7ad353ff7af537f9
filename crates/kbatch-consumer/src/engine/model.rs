//! Model-based test of the engine: random sequences of events — fetches, completions in any
//! order (including ones from before a revocation), failures, panics, revocations (lost or
//! not), re-assignments from the committed offsets, user pauses, ticks of a simulated clock —
//! against a small reference model, checking after every step:
//!
//! - a commit (periodic, at revocation, final) never passes a record that is not done, and its
//!   metadata marks only done records completed;
//! - KEY: one job per key at a time, records of a key dispatched in offset order; PARTITION:
//!   likewise per partition;
//! - at most `max_concurrency` jobs run; the records held never exceed the budget by more than
//!   the one fetch that filled it;
//! - every fetched record is done, still held (buffered, running, waiting), or dropped by a
//!   revocation — the engine's count of held records equals the model's exactly;
//! - completions from before a revocation change nothing after it (they would break the first
//!   property on the new assignment).
//!
//! The `packed` variants make some records envelopes (of 0 to 40 events, more than the
//! budget) and some malformed envelopes. A unit — a record, or one event of an envelope — is
//! dispatched, ordered (by the event's own key), retried and dead-lettered on its own; an
//! envelope's offset is done when all its events are, so the first property also says no
//! commit passes an envelope with an event not done. A malformed envelope goes straight to its
//! dead-letter write. The held count includes the units still waiting to be unpacked.
//!
//! A unit is *done* in the model when a job holding it, dispatched in the current
//! assignment of its partition, finished `Ok` (its handler, or its dead-letter write). Every
//! configuration has a dead-letter target, so a record never becomes done silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kbatch_core::envelope::{self, Event};
use kbatch_core::{CommitReason, CommittedOffset, ConsumedRecord, Header, Offset, TopicPartition};
use proptest::prelude::*;

use super::{Action, Engine, JobId, Outcome, Settings, Work};
use crate::codec;
use crate::config::{MetadataPolicy, ProcessingOrder, ShutdownMode};
use crate::handler::HandlerError;

const PARTITIONS: i32 = 3;
const FETCH_MAX: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    Fetch { partition: i32, n: usize },
    Finish { pick: usize, outcome: u8 },
    Tick { ms: u64 },
    Revoke { partition: i32, lost: bool },
    Assign { partition: i32 },
    UserPause(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, 1..=FETCH_MAX).prop_map(|(partition, n)| Op::Fetch { partition, n }),
        8 => (any::<usize>(), 0u8..10).prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        4 => (0u64..400).prop_map(|ms| Op::Tick { ms }),
        1 => (0..PARTITIONS, any::<bool>()).prop_map(|(partition, lost)| Op::Revoke { partition, lost }),
        2 => (0..PARTITIONS).prop_map(|partition| Op::Assign { partition }),
        1 => any::<bool>().prop_map(Op::UserPause),
    ]
}

/// The source side of a partition.
#[derive(Default)]
struct SimPart {
    /// Assignment generation; 0 = never assigned.
    generation: u64,
    assigned: bool,
    paused: bool,
    /// Next offset the source would return.
    position: i64,
    /// The sink's committed offset and metadata.
    committed: Option<(i64, String)>,
    /// Fetched in the current generation and not skipped: offset → done, per unit (one for a
    /// record or a malformed envelope, one per event of an envelope, none for an empty one).
    fetched: BTreeMap<i64, Vec<bool>>,
    /// Offsets the engine was told at assignment were completed (skipped when fetched).
    completed_at_assign: BTreeSet<i64>,
    /// Offsets below which the current generation started.
    floor: i64,
}

/// A job the engine dispatched and has not finished for good.
struct SimJob {
    records: Vec<(TopicPartition, i64, u32, u64)>, // (tp, offset, event index, generation)
    lanes: Vec<String>,
    running: bool,
    dead_letter: bool,
}

struct Sim {
    engine: Engine,
    order: ProcessingOrder,
    /// Some records are envelopes.
    packed: bool,
    max_concurrency: usize,
    max_records: usize,
    now: Instant,
    parts: Vec<SimPart>,
    jobs: HashMap<JobId, SimJob>,
    /// Highest (offset, event index) dispatched per lane and generation.
    lane_last: HashMap<(String, u64), (i64, u32)>,
    revoking: Option<(i32, u64)>,
    stopped: bool,
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("t", p)
}

/// Offsets divisible by 7 are transaction markers or compacted away: never fetched.
fn next_real(o: i64) -> i64 {
    if o % 7 == 0 { o + 1 } else { o }
}

fn key_of(p: i32, o: i64) -> Option<String> {
    (o % 5 != 4).then(|| format!("p{p}k{}", o % 3))
}

/// What the record at an offset is, in the packed variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    /// An envelope of this many events.
    Envelope(u32),
    /// The envelope header on a value that does not decode.
    Malformed,
}

/// Events share the plain records' keys, so a key's order spans both.
fn event_key(p: i32, o: i64, i: u32) -> Option<String> {
    let x = o + i64::from(i);
    (x % 4 != 3).then(|| format!("p{p}k{}", x % 3))
}

fn event_value(o: i64, i: u32) -> Bytes {
    Bytes::from(format!("{o}.{i}"))
}

impl Sim {
    fn new(
        order: ProcessingOrder,
        packed: bool,
        max_concurrency: usize,
        max_records: usize,
    ) -> Self {
        let now = Instant::now();
        let s = Settings {
            ordering: order,
            max_concurrency,
            max_records,
            max_bytes: 1 << 30,
            batch_size: 1,
            commit_interval: Duration::from_millis(100),
            metadata_limit: 4096,
            metadata_policy: MetadataPolicy::FailFast,
            revoke_timeout: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(2),
            max_attempts: Some(3),
            dead_letter: true,
            unpack_envelopes: true,
            retry: super::jobs::fixed(Duration::from_millis(50)),
        };
        Self {
            engine: Engine::new(s, now),
            order,
            packed,
            max_concurrency,
            max_records,
            now,
            parts: (0..PARTITIONS).map(|_| SimPart::default()).collect(),
            jobs: HashMap::new(),
            lane_last: HashMap::new(),
            revoking: None,
            stopped: false,
        }
    }

    fn kind(&self, o: i64) -> Kind {
        if !self.packed {
            Kind::Plain
        } else if o % 13 == 10 {
            Kind::Malformed
        } else if o % 4 == 2 {
            Kind::Envelope(match (o / 4) % 5 {
                0 => 0,
                1 => 1,
                2 => 3,
                3 => 5,
                _ => 40,
            })
        } else {
            Kind::Plain
        }
    }

    fn units(&self, o: i64) -> usize {
        match self.kind(o) {
            Kind::Plain | Kind::Malformed => 1,
            Kind::Envelope(n) => n as usize,
        }
    }

    fn record(&self, partition: i32, o: i64) -> ConsumedRecord {
        let mut r = ConsumedRecord {
            topic: "t".into(),
            partition,
            offset: Offset(o),
            key: key_of(partition, o).map(Bytes::from),
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
            timestamp: None,
            envelope: None,
        };
        match self.kind(o) {
            Kind::Plain => {}
            Kind::Malformed => {
                r.value = Some(Bytes::from_static(b"KBEV\x01\x00\x00\x00\x00\x02\x07"));
                r.headers.push(envelope::envelope_header());
            }
            Kind::Envelope(n) => {
                let events: Vec<Event> = (0..n)
                    .map(|i| Event {
                        key: event_key(partition, o, i).map(Bytes::from),
                        value: Some(event_value(o, i)),
                        headers: vec![Header {
                            key: "i".into(),
                            value: Some(Bytes::from(i.to_string())),
                        }],
                        timestamp: None,
                    })
                    .collect();
                r.key = None;
                r.value = Some(envelope::encode(&events));
                r.headers.push(envelope::envelope_header());
            }
        }
        r
    }

    fn lane(&self, p: i32, o: i64, index: u32) -> Option<String> {
        let key = match self.kind(o) {
            Kind::Plain => key_of(p, o),
            Kind::Envelope(_) => event_key(p, o, index),
            // Written away, never processed: no lane.
            Kind::Malformed => return None,
        };
        match (self.order, key) {
            (ProcessingOrder::Unordered, _) => None,
            (ProcessingOrder::Key, Some(k)) => Some(k),
            (ProcessingOrder::Key, None) | (ProcessingOrder::Partition, _) => {
                Some(format!("partition-{p}"))
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Assign { partition } => {
                let part = &mut self.parts[partition as usize];
                if part.assigned || self.revoking.is_some() {
                    return;
                }
                part.generation += 1;
                part.assigned = true;
                part.paused = false;
                part.fetched.clear();
                let (offset, metadata) = part
                    .committed
                    .clone()
                    .map_or((None, String::new()), |(o, m)| (Some(o), m));
                part.position = offset.unwrap_or(0);
                part.floor = part.position;
                part.completed_at_assign = match offset {
                    Some(o) => {
                        let map =
                            codec::decode(o, &metadata).expect("metadata the engine wrote decodes");
                        (map.base..map.end)
                            .filter(|x| map.is_completed(*x))
                            .collect()
                    }
                    None => BTreeSet::new(),
                };
                self.engine
                    .assigned(vec![CommittedOffset {
                        tp: tp(partition),
                        offset: offset.map(Offset),
                        metadata,
                    }])
                    .expect("assignment");
            }
            Op::Fetch { partition, n } => {
                let part = &mut self.parts[partition as usize];
                // The poll thread is blocked in the revocation callback meanwhile.
                if !part.assigned || part.paused || self.revoking.is_some() || self.stopped {
                    return;
                }
                let mut offsets = Vec::new();
                for _ in 0..n {
                    let o = next_real(part.position);
                    part.position = o + 1;
                    offsets.push(o);
                }
                let mut records = Vec::new();
                for o in offsets {
                    let units = self.units(o);
                    let part = &mut self.parts[partition as usize];
                    if !part.completed_at_assign.contains(&o) {
                        part.fetched.insert(o, vec![false; units]);
                    }
                    records.push(self.record(partition, o));
                }
                self.engine.fetched(records);
            }
            Op::Finish { pick, outcome } => {
                let running: Vec<JobId> = {
                    let mut v: Vec<JobId> = self
                        .jobs
                        .iter()
                        .filter(|(_, j)| j.running)
                        .map(|(id, _)| *id)
                        .collect();
                    v.sort_unstable();
                    v
                };
                if running.is_empty() {
                    return;
                }
                let id = running[pick % running.len()];
                let outcome = match outcome {
                    0 => Outcome::Failed(HandlerError::retriable("busy")),
                    1 => Outcome::Failed(HandlerError::permanent("bad")),
                    2 => Outcome::Failed(HandlerError::panicked("boom".into())),
                    _ => Outcome::Ok,
                };
                self.finish(id, outcome);
            }
            Op::Tick { ms } => {
                self.now += Duration::from_millis(ms);
                self.engine.tick(self.now);
            }
            Op::Revoke { partition, lost } => {
                let part = &self.parts[partition as usize];
                if !part.assigned || self.revoking.is_some() || self.stopped {
                    return;
                }
                self.revoking = Some((partition, part.generation));
                // Waiting jobs of the partition are dropped by the engine now.
                let dropped: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| !j.running && j.records.iter().all(|r| r.0 == tp(partition)))
                    .map(|(id, _)| *id)
                    .collect();
                for id in dropped {
                    self.jobs.remove(&id);
                }
                self.engine.revoked(vec![tp(partition)], lost, self.now);
            }
            Op::UserPause(p) => self.engine.set_user_paused(p),
        }
    }

    fn finish(&mut self, id: JobId, outcome: Outcome) {
        let ok = matches!(outcome, Outcome::Ok);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.running = false;
            if ok {
                let job = self.jobs.remove(&id).expect("present");
                for (t, o, i, generation) in &job.records {
                    let part = &mut self.parts[t.partition as usize];
                    if part.generation == *generation
                        && part.assigned
                        && let Some(done) =
                            part.fetched.get_mut(o).and_then(|u| u.get_mut(*i as usize))
                    {
                        *done = true;
                    }
                }
            } else {
                // A failed job of a revoked generation, or of a partition being revoked, is
                // forgotten: the next owner processes its records.
                let revoking = self.revoking.map(|r| r.0);
                let stale = job.records.iter().all(|(t, _, _, generation)| {
                    let part = &self.parts[t.partition as usize];
                    part.generation != *generation
                        || !part.assigned
                        || revoking == Some(t.partition)
                });
                if stale {
                    self.jobs.remove(&id);
                }
            }
        }
        self.engine.finished(id, outcome, self.now);
    }

    /// Performs the engine's actions, checking each.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(a) = self.engine.next_action() {
            match a {
                Action::Dispatch { id, records, work } => self.dispatched(id, &records, &work)?,
                Action::Pause(tps) => {
                    for t in tps {
                        self.parts[t.partition as usize].paused = true;
                    }
                }
                Action::Resume(tps) => {
                    for t in tps {
                        self.parts[t.partition as usize].paused = false;
                    }
                }
                Action::Commit(req) => {
                    prop_assert_eq!(req.reason, CommitReason::Periodic);
                    for c in &req.offsets {
                        let p = c.tp.partition;
                        prop_assert!(
                            self.parts[p as usize].assigned,
                            "commit of unassigned {}",
                            c.tp
                        );
                        prop_assert!(
                            self.revoking.is_none_or(|r| r.0 != p),
                            "periodic commit of revoking {}",
                            c.tp
                        );
                        self.check_commit(p, c.offset.0, c.metadata.as_deref().unwrap_or(""))?;
                        self.parts[p as usize].committed =
                            Some((c.offset.0, c.metadata.clone().unwrap_or_default()));
                    }
                }
                Action::FinishRevocation(req) => {
                    let (p, _) = self.revoking.take().expect("a revocation was pending");
                    for c in &req.offsets {
                        prop_assert_eq!(c.tp.partition, p);
                        self.check_commit(p, c.offset.0, c.metadata.as_deref().unwrap_or(""))?;
                        self.parts[p as usize].committed =
                            Some((c.offset.0, c.metadata.clone().unwrap_or_default()));
                    }
                    let part = &mut self.parts[p as usize];
                    part.assigned = false;
                    part.fetched.clear();
                }
                Action::Stop(req) => {
                    for c in &req.offsets {
                        let p = c.tp.partition;
                        self.check_commit(p, c.offset.0, c.metadata.as_deref().unwrap_or(""))?;
                        self.parts[p as usize].committed =
                            Some((c.offset.0, c.metadata.clone().unwrap_or_default()));
                    }
                    self.stopped = true;
                }
            }
        }
        self.check_counts()
    }

    fn dispatched(
        &mut self,
        id: JobId,
        records: &[ConsumedRecord],
        work: &Work,
    ) -> Result<(), TestCaseError> {
        let running = self.jobs.values().filter(|j| j.running).count();
        prop_assert!(
            running < self.max_concurrency,
            "dispatch beyond max_concurrency {}",
            self.max_concurrency
        );
        if let Some(job) = self.jobs.get_mut(&id) {
            // A retry (or its dead-letter write): the same records again.
            let again: Vec<(i64, u32)> = records.iter().map(unit_of).collect();
            let before: Vec<(i64, u32)> = job.records.iter().map(|r| (r.1, r.2)).collect();
            prop_assert_eq!(again, before, "job {} came back with other records", id);
            for (t, o, _, generation) in &job.records {
                let part = &self.parts[t.partition as usize];
                prop_assert!(
                    part.assigned
                        && part.generation == *generation
                        && self.revoking.is_none_or(|r| r.0 != t.partition),
                    "retry of {}@{} after its partition was revoked",
                    t,
                    o
                );
            }
            job.running = true;
            job.dead_letter = matches!(work, Work::DeadLetter { .. });
            return Ok(());
        }
        let malformed = records
            .iter()
            .any(|r| self.kind(r.offset.0) == Kind::Malformed);
        prop_assert_eq!(
            matches!(work, Work::DeadLetter { .. }),
            malformed,
            "a new job runs the handler first; a malformed envelope goes to its dead-letter write"
        );
        let mut lanes = Vec::new();
        let mut recs = Vec::new();
        for r in records {
            let p = r.partition;
            let (o, i) = unit_of(r);
            let part = &self.parts[p as usize];
            prop_assert!(
                part.assigned,
                "dispatch of a record of unassigned partition {}",
                p
            );
            prop_assert_eq!(
                part.fetched
                    .get(&o)
                    .and_then(|u| u.get(i as usize))
                    .copied(),
                Some(false),
                "dispatch of a unit not fetched, or done: {}@{}.{}",
                p,
                o,
                i
            );
            match self.kind(o) {
                Kind::Envelope(n) => {
                    prop_assert_eq!(r.envelope.map(|e| e.count), Some(n));
                    prop_assert_eq!(&r.key, &event_key(p, o, i).map(Bytes::from));
                    prop_assert_eq!(&r.value, &Some(event_value(o, i)));
                }
                Kind::Plain | Kind::Malformed => prop_assert_eq!(r.envelope, None),
            }
            if let Some(lane) = self.lane(p, o, i) {
                let held = self.jobs.values().any(|j| j.lanes.contains(&lane));
                prop_assert!(!held, "lane {} already has a job", lane);
                let last = self
                    .lane_last
                    .insert((lane.clone(), part.generation), (o, i));
                prop_assert!(
                    last.is_none_or(|l| l < (o, i)),
                    "lane {} out of order: {:?} then {:?}",
                    lane,
                    last,
                    (o, i)
                );
                lanes.push(lane);
            }
            recs.push((tp(p), o, i, part.generation));
        }
        self.jobs.insert(
            id,
            SimJob {
                records: recs,
                lanes,
                running: true,
                dead_letter: malformed,
            },
        );
        Ok(())
    }

    /// Nothing below `offset` in the current generation is undone; metadata names done ones.
    fn check_commit(&self, p: i32, offset: i64, metadata: &str) -> Result<(), TestCaseError> {
        let part = &self.parts[p as usize];
        for (o, units) in part.fetched.range(..offset) {
            prop_assert!(
                units.iter().all(|d| *d),
                "commit {} of partition {} passes undone record {} (units done: {:?})",
                offset,
                p,
                o,
                units
            );
        }
        let map = codec::decode(offset, metadata)
            .map_err(|e| TestCaseError::fail(format!("metadata: {e}")))?;
        for o in map.base..map.end {
            if map.is_completed(o) {
                let ok = match part.fetched.get(&o) {
                    Some(units) => units.iter().all(|d| *d),
                    // Never fetched in this assignment: done in an earlier one, or a gap.
                    None => part.completed_at_assign.contains(&o) || o % 7 == 0,
                };
                prop_assert!(
                    ok,
                    "metadata of partition {} marks {} completed, which is not done",
                    p,
                    o
                );
            }
        }
        Ok(())
    }

    /// The engine holds exactly the records the model says are held.
    fn check_counts(&self) -> Result<(), TestCaseError> {
        let (held, _) = self.engine.held();
        prop_assert!(self.engine.running() <= self.max_concurrency);
        // Full, the engine pauses every partition: only the fetch that filled it may exceed it.
        let bound = self.max_records + FETCH_MAX;
        prop_assert!(
            held <= bound,
            "held {} over the budget {} + one fetch",
            held,
            self.max_records
        );
        // In a job (running or waiting), or fetched and not yet in a job (buffered, or still
        // in an envelope waiting to be unpacked).
        let in_jobs: BTreeSet<(i32, i64, u32, u64)> = self
            .jobs
            .values()
            .flat_map(|j| {
                j.records
                    .iter()
                    .map(|(t, o, i, g)| (t.partition, *o, *i, *g))
            })
            .collect();
        let mut expect = 0;
        for (p, part) in self.parts.iter().enumerate() {
            let revoking = self.revoking.is_some_and(|r| r.0 == p as i32);
            if !part.assigned || self.stopped {
                continue;
            }
            for (o, units) in &part.fetched {
                for (i, done) in units.iter().enumerate() {
                    let in_job = in_jobs.contains(&(p as i32, *o, i as u32, part.generation));
                    if !done && !in_job && !revoking {
                        expect += 1; // buffered
                    }
                }
            }
        }
        let job_records: usize = self.jobs.values().map(|j| j.records.len()).sum();
        if !self.stopped {
            prop_assert_eq!(
                held + self.engine.backlog_units(),
                expect + job_records,
                "held units (held {}, backlogged {})",
                held,
                self.engine.backlog_units()
            );
        }
        Ok(())
    }
}

/// A dispatched record's unit: its offset, and its index in its envelope (0 for a record).
fn unit_of(r: &ConsumedRecord) -> (i64, u32) {
    (r.offset.0, r.envelope.map_or(0, |e| e.index))
}

fn run(
    order: ProcessingOrder,
    packed: bool,
    max_concurrency: usize,
    max_records: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(order, packed, max_concurrency, max_records);
    for p in 0..PARTITIONS {
        sim.apply(&Op::Assign { partition: p });
    }
    sim.drain()?;
    for op in ops {
        sim.apply(op);
        sim.drain()?;
    }
    // Drain: every job ends well, time passes until the engine stops. A pending revocation
    // ends first (the poll thread would be blocked in it).
    let mut shut = false;
    for _ in 0..10_000 {
        sim.drain()?;
        if sim.stopped {
            break;
        }
        if !shut && sim.revoking.is_none() {
            sim.engine.shutdown(ShutdownMode::Drain, sim.now);
            shut = true;
            continue;
        }
        let running: Vec<JobId> = sim
            .jobs
            .iter()
            .filter(|(_, j)| j.running)
            .map(|(id, _)| *id)
            .collect();
        if let Some(id) = running.into_iter().min() {
            sim.finish(id, Outcome::Ok);
        } else {
            sim.now += Duration::from_millis(100);
            sim.engine.tick(sim.now);
        }
    }
    prop_assert!(
        sim.stopped,
        "the engine stopped after a drain; held {:?}, running {}, model jobs {:?}, revoking {:?}, due {:?}, engine jobs {:?}",
        sim.engine.held(),
        sim.engine.running(),
        sim.jobs
            .iter()
            .map(|(id, j)| (*id, j.running, j.records.clone()))
            .collect::<Vec<_>>(),
        sim.revoking,
        sim.engine.due,
        sim.engine
            .jobs
            .iter()
            .map(|(id, e)| (
                *id,
                format!("{:?}", e.state),
                e.job
                    .works
                    .iter()
                    .map(|w| (w.record.partition, w.record.offset.0, w.epoch))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn key_order(c in 1usize..5, m in 3usize..30, ops in prop::collection::vec(op(), 0..200)) {
        run(ProcessingOrder::Key, false, c, m, &ops)?;
    }

    #[test]
    fn partition_order(c in 1usize..5, m in 3usize..30, ops in prop::collection::vec(op(), 0..200)) {
        run(ProcessingOrder::Partition, false, c, m, &ops)?;
    }

    #[test]
    fn unordered(c in 1usize..5, m in 3usize..30, ops in prop::collection::vec(op(), 0..200)) {
        run(ProcessingOrder::Unordered, false, c, m, &ops)?;
    }

    #[test]
    fn key_order_packed(c in 1usize..5, m in 3usize..30, ops in prop::collection::vec(op(), 0..200)) {
        run(ProcessingOrder::Key, true, c, m, &ops)?;
    }

    #[test]
    fn partition_order_packed(c in 1usize..5, m in 3usize..30, ops in prop::collection::vec(op(), 0..200)) {
        run(ProcessingOrder::Partition, true, c, m, &ops)?;
    }

    #[test]
    fn unordered_packed(c in 1usize..5, m in 3usize..30, ops in prop::collection::vec(op(), 0..200)) {
        run(ProcessingOrder::Unordered, true, c, m, &ops)?;
    }
}
