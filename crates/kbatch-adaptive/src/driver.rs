//! The thin async driver around the controller, learner and batcher: it drains the intake,
//! arms one timer, hands flushed batches to the producer and resolves each event's future.
//!
//! ```text
//!  intake ──pop──► controller.record ──► batcher.push ──► flush ──► Producer::send (await = back-pressure)
//!    ▲ park when empty       │ tick: level         ▲ expired(now + slack)      │ completion task per batch
//!    │                       ▼                     │                           ▼
//!    └────────────── learner.choose/observe per epoch ◄── epoch stats ◄── latencies, acks
//! ```
//!
//! Packed, the driver task sends each envelope itself; per-event, a flushed batch goes through
//! a bounded hand-off ([`HANDOFF_QUEUE`]) to a sender task that calls `Producer::send` for each
//! event, so draining the intake and handing events to the client run on both cores.
//!
//! Per-event, while the intake is saturated, single-event sends skip all of this and go
//! straight to a second client that lingers ([`crate::path`]); the driver decides the path at
//! each tick and carries out each switch: it takes no events until the sender task is idle and
//! the client left behind has every record acknowledged, then the other client takes over.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use kbatch_core::envelope::{EnvelopeWriter, envelope_header};
use kbatch_core::{Classify, ErrorClass, Record, Topic};
use kbatch_producer::{Delivered, DeliveryFuture, Producer};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::batcher::{Batcher, FlushCause, Flushed};
use crate::config::{AdaptiveConfig, Shape};
use crate::controller::Controller;
use crate::error::AdaptiveError;
use crate::fragment::{Fragment, Item, Known, packed_size, push_record};
use crate::learner::{Choice, EpochStats, Learner};
use crate::levels::{BatchSettings, LevelId};
use crate::metrics::Metrics;
use crate::open::Open;
use crate::partitioner::KeyHash;
use crate::path::{Path, PathSwitch};
use crate::persist::Persistence;
use crate::pool::VecPool;
use crate::producer::{AdaptiveCloseReport, Entry, Pending, Shared};
use crate::reply::Reply;
use crate::reply::{EventDelivered, settle_all};
use crate::topics::{PartitionCount, Topics};

/// Fails every event of an envelope of `events` events that failed as a whole, handing each
/// its own record.
fn fail_envelope(
    items: Vec<Item>,
    events: usize,
    topic: &Topic,
    partition: i32,
    class: ErrorClass,
    message: &str,
) {
    let events = u32::try_from(events).unwrap_or(u32::MAX);
    let failed = |index: u32, record: Record| AdaptiveError::Envelope {
        topic: topic.to_string(),
        partition,
        events,
        index,
        class,
        message: message.to_owned(),
        record: Box::new(record),
    };
    let mut index = 0u32;
    for item in items {
        match item.into_pending() {
            Ok(events) => {
                for p in events {
                    p.reply.send(Err(failed(index, p.record)));
                    index += 1;
                }
            }
            Err(f) => {
                let first = index;
                index += f.len() as u32;
                f.fail(|j, r| failed(first + j as u32, r));
            }
        }
    }
}

/// Settles every event of an envelope acknowledged as `d` (the `i`-th at place `i` of it;
/// consecutive events of one call under one lock, a fragment's under one) and adds each
/// one's latency to `latencies`.
fn settle_envelope(
    items: &mut Vec<Item>,
    d: &Delivered,
    now: Instant,
    latencies: &mut Vec<Duration>,
) {
    let mut index = 0u32;
    let mut items = items.drain(..).peekable();
    while let Some(item) = items.next() {
        match item {
            Item::Packed(Fragment { slots, arrived, .. }) => {
                let n = slots.len();
                latencies.extend(std::iter::repeat_n(
                    now.saturating_duration_since(arrived),
                    n,
                ));
                slots.delivered(d.partition, d.offset, d.timestamp, index);
                index += n as u32;
            }
            Item::Event(first) => {
                // The run of events up to the next fragment.
                let run = std::iter::once(first).chain(std::iter::from_fn(|| {
                    match items.next_if(|i| matches!(i, Item::Event(_))) {
                        Some(Item::Event(p)) => Some(p),
                        _ => None,
                    }
                }));
                settle_run(run, d, now, latencies, &mut index);
            }
            Item::Events(v) => settle_run(v.into_iter(), d, now, latencies, &mut index),
        }
    }
}

/// Settles events of an envelope acknowledged as `d`, in order from place `*index` of it.
fn settle_run(
    run: impl Iterator<Item = Pending>,
    d: &Delivered,
    now: Instant,
    latencies: &mut Vec<Duration>,
    index: &mut u32,
) {
    settle_all(run.map(|p| {
        latencies.push(now.saturating_duration_since(p.arrived));
        let at = EventDelivered {
            partition: d.partition,
            offset: d.offset,
            index: Some(*index),
            timestamp: d.timestamp,
        };
        *index += 1;
        (p.reply, Ok(at))
    }));
}

/// Timers fire late: tokio's round a deadline up to its next millisecond, and the wait for
/// them is in whole milliseconds too. Batches due within this are cut now, early rather than
/// late, so the budget holds (with 1 ms, a batch due in 20 ms went 0.3–0.4 ms past it).
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// How often the level is re-evaluated while events arrive.
const TICK: Duration = Duration::from_millis(10);
/// …and while idle.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Events taken from the intake per pass (a chunk may take it past), so timers are checked
/// between passes.
const PASS: usize = 4_096;
/// How often what was learned is saved.
const PERSIST_EVERY: Duration = Duration::from_secs(10);

/// Flushes handed to the client whose acknowledgements are not all back yet.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    /// Told when one comes back.
    returned: Notify,
}

impl InFlight {
    fn load(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Counts one more out; returns how many are out now.
    fn start(&self) -> usize {
        self.count.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn finish(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.returned.notify_one();
    }
}

/// How often a path switch under way looks whether the client left behind is done.
const SWITCH_POLL: Duration = Duration::from_millis(1);

/// How long a failed partition-count lookup answers for its topic before it is asked again.
const METADATA_RETRY: Duration = Duration::from_secs(1);

/// What became of an event handed to the batcher.
enum Admitted {
    /// It waits in its batch (or failed and was answered).
    Held,
    /// It filled its batch: send this.
    Full(Flushed<BatchKey, Item>),
    /// Its topic's partition count is not known yet: learn it, then admit again.
    Unknown(Pending),
}

/// Which batch an event joins.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BatchKey {
    /// Per-event: one batch for everything.
    All,
    /// Packed: one batch per topic-partition (the topic by its id in [`Topics`]).
    Partition(u32, i32),
}

/// The running epoch's acknowledgements, filled by the completion tasks.
#[derive(Debug)]
pub(crate) struct EpochAcc {
    delivered: u64,
    /// Delivery latency (hand-in to acknowledgement), microseconds.
    latency: Histogram<u64>,
}

impl EpochAcc {
    pub(crate) fn add(&mut self, delivered: u64, latencies: &[Duration]) {
        self.delivered += delivered;
        for l in latencies {
            let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX).max(1);
            let _ = self.latency.record(us.min(self.latency.high()));
        }
    }
}

impl Default for EpochAcc {
    fn default() -> Self {
        Self {
            delivered: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
        }
    }
}

pub(crate) struct Driver {
    producer: Producer,
    /// Per-event with the path switch on: the client that lingers (see [`crate::path`]).
    saturated: Option<Producer>,
    /// A path switch under way, to this path: the driver takes no events until the client
    /// left behind has every record acknowledged.
    switching: Option<Path>,
    /// Per-event events handed to the sender task (see `Shared::sender_done`).
    flushed_events: u64,
    shape: Shape,
    controller: Controller,
    learner: Learner,
    choice: Choice,
    /// The level `choice` was made for.
    epoch_level: LevelId,
    epoch: Duration,
    epoch_start: Instant,
    epoch_submitted: u64,
    epoch_batches: u64,
    epoch_batched_events: u64,
    batcher: Batcher<BatchKey, Item>,
    /// Partition count (or why it could not be had) and sticky partition per topic, looked
    /// up once per packed event.
    topics: Topics,
    key_hash: KeyHash,
    /// Packed: the partition counts learned, published for `send_many`'s callers.
    known: Option<Arc<Known>>,
    persistence: Persistence,
    last_persist: Instant,
    completions: TaskTracker,
    /// Flushes (packed: envelopes) not yet acknowledged, and how many may be.
    in_flight: Arc<InFlight>,
    max_in_flight: usize,
    /// Vectors of acknowledged envelopes, emptied by their completion tasks, on their way
    /// back to the batcher for reuse (see [`Batcher::recycle`]).
    spares: Arc<VecPool<Item>>,
    /// The completion tasks' vectors of latencies measured.
    latencies: Arc<VecPool<Duration>>,
    metrics: Metrics,
    /// Per-event: flushed batches on their way to the sender task, which hands each event to
    /// the client; `None` packed, and once closing.
    to_sender: Option<mpsc::Sender<Handoff>>,
    sender: Option<JoinHandle<()>>,
    /// Per-event: whether single-event sends skip the intake (see [`crate::path`]).
    path: PathSwitch,
    /// `counters.direct` when last read: events sent straight to the client since count as
    /// arrivals for the controller.
    direct_seen: u64,
    /// The running epoch went (partly) straight to the client: no N and T were in force, so
    /// it is not judged.
    epoch_direct: bool,
}

/// A per-event record handed to the client: its delivery future, arrival and reply.
type Waiting = (DeliveryFuture, Instant, Reply);

/// A per-event batch for the sender task, and its place in the pipeline bound if counted.
struct Handoff {
    items: Vec<Item>,
    /// Events they stand for.
    events: usize,
    in_flight: Option<Arc<InFlight>>,
}

/// Per-event batches flushed and not yet taken by the sender task: past it the driver waits,
/// so the intake fills and back-pressure reaches the callers.
const HANDOFF_QUEUE: usize = 2;

/// Emptied vectors of each kind kept for reuse, at most: what they hold is bounded by this
/// times the largest batch (N ≤ 10,000 by default: a few MB of events).
const SPARES: usize = 8;

impl Driver {
    pub(crate) fn new(
        config: &AdaptiveConfig,
        producer: Producer,
        saturated: Option<Producer>,
        persistence: Persistence,
        now: Instant,
    ) -> Self {
        let seed = config.seed.unwrap_or_else(|| rand::rng().random());
        let mut learner_config = config.learner.clone();
        // Per-event records are batched by the client itself: start without intake linger.
        learner_config.linger_from_zero |=
            config.shape == Shape::PerEvent && config.flushes_in_flight == 0;
        learner_config.events_floor_at_bootstrap |= config.flushes_in_flight > 0;
        let mut learner = Learner::new(config.levels.clone(), learner_config, seed);
        learner.restore(&persistence.learned);
        let controller = Controller::new(
            config.levels.clone(),
            config.controller.clone(),
            config.initial_level,
            now,
        );
        let level = controller.level();
        let choice = Choice {
            settings: learner.best(level),
            explored: false,
        };
        let key_hash = KeyHash::from_properties(
            config
                .producer
                .kafka
                .client
                .extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        // On exactly when the saturated client was started (per-event, the switch on).
        let path = PathSwitch::new(crate::path::PathConfig {
            enabled: saturated.is_some(),
            ..config.path
        });
        Self {
            producer,
            saturated,
            switching: None,
            flushed_events: 0,
            shape: config.shape,
            controller,
            learner,
            choice,
            epoch_level: level,
            epoch: config.epoch,
            epoch_start: now,
            epoch_submitted: 0,
            epoch_batches: 0,
            epoch_batched_events: 0,
            batcher: Batcher::new(choice.settings, config.max_batch_bytes),
            topics: Topics::default(),
            key_hash,
            known: (config.shape == Shape::Packed)
                .then(|| Arc::new(Known::new(key_hash, config.max_batch_bytes))),
            persistence,
            last_persist: now,
            completions: TaskTracker::new(),
            in_flight: Arc::default(),
            max_in_flight: config.flushes_in_flight,
            spares: Arc::new(VecPool::new(SPARES)),
            latencies: Arc::new(VecPool::new(SPARES)),
            metrics: Metrics::new(&config.profile),
            to_sender: None,
            sender: None,
            path,
            direct_seen: 0,
            epoch_direct: false,
        }
    }

    pub(crate) fn decision(&self) -> (LevelId, BatchSettings) {
        (self.controller.level(), self.choice.settings)
    }

    /// Packed: where the partition counts it learns are published.
    pub(crate) fn known(&self) -> Option<Arc<Known>> {
        self.known.clone()
    }

    pub(crate) async fn run(mut self, shared: Arc<Shared>) -> AdaptiveCloseReport {
        self.metrics
            .level(self.controller.level(), self.choice.settings);
        if self.shape == Shape::PerEvent {
            // A task of its own hands each event to the client while this one drains the
            // intake and batches: one task doing both ran the per-event path on one core.
            let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
            self.to_sender = Some(tx);
            self.sender = Some(tokio::spawn(send_batches(
                rx,
                Sender {
                    shared: Arc::clone(&shared),
                    spares: Arc::clone(&self.spares),
                    waiting: Arc::new(VecPool::new(SPARES)),
                    latencies: Arc::clone(&self.latencies),
                    completions: self.completions.clone(),
                },
            )));
        }
        let mut buf = Vec::with_capacity(PASS);
        let mut next_tick = Instant::now() + TICK;
        loop {
            while let Some(v) = self.spares.pop() {
                self.batcher.recycle(v);
            }
            if let Some(to) = self.switching {
                // No events are taken meanwhile: the intake fills and callers wait (a switch
                // takes as long as the old client's records take to be acknowledged).
                if !self.finish_switch(&shared, to) {
                    tokio::time::sleep(SWITCH_POLL).await;
                    continue;
                }
            }
            let mut taken = shared.intake.pop_events_into(&mut buf, PASS, Entry::events);
            if let Some(open) = &shared.open
                && taken < PASS
                && open.held()
            {
                taken += open.sweep(&shared, &mut buf, false);
            }
            let now = Instant::now();
            let direct = shared.counters.direct.load(Ordering::Relaxed);
            let arrived = taken as u64 + (direct - self.direct_seen);
            self.direct_seen = direct;
            if arrived > 0 {
                self.controller.record(arrived, now);
                self.epoch_submitted += arrived;
            }
            if taken > 0 {
                for entry in buf.drain(..) {
                    match entry {
                        Entry::One(p) => self.take(&shared, p).await,
                        Entry::Many(v) if self.shape == Shape::PerEvent => {
                            self.take_chunk(&shared, v).await;
                        }
                        Entry::Many(v) => {
                            for p in v {
                                self.take(&shared, p).await;
                            }
                        }
                        Entry::Packed(v) => {
                            for f in v {
                                self.take_fragment(&shared, f).await;
                            }
                        }
                    }
                }
            }
            if now >= next_tick {
                self.tick(&shared, now).await;
                next_tick = now
                    + if arrived > 0 || !self.batcher.is_empty() {
                        TICK
                    } else {
                        IDLE_TICK
                    };
            }
            if self.path.path() == Path::Direct {
                // Events still come through the intake (`send_many`, a send behind them):
                // they go to the client at once, so the sends waiting for them go on.
                for f in self.batcher.drain() {
                    self.flush(&shared, f).await;
                }
            }
            for f in self.batcher.expired(now + TIMER_SLACK) {
                self.flush(&shared, f).await;
            }
            if self.pipeline_has_room() {
                for f in self.batcher.pipeline_free() {
                    self.flush(&shared, f).await;
                }
            }
            if taken >= PASS {
                continue;
            }
            if shared.intake.is_closed() && shared.intake.is_empty() {
                // Every shard under its lock: a send that added to an open piece before it
                // saw the intake closed is taken now; any later one sees it closed.
                match &shared.open {
                    Some(open) if open.sweep(&shared, &mut buf, true) > 0 => continue,
                    _ => break,
                }
            }
            if taken == 0 {
                let mut wake = next_tick;
                let open_deadline = shared.open.as_ref().and_then(Open::deadline);
                for d in self
                    .batcher
                    .next_deadline()
                    .into_iter()
                    .chain(open_deadline)
                {
                    wake = wake.min(d.checked_sub(TIMER_SLACK).unwrap_or(d));
                }
                // Events are held because the pipeline is full: more of them change nothing
                // until a flush returns (or a deadline, or the tick that drains the intake),
                // so new events do not wake the driver — at 100,000/s that was a wake-up per
                // event, competing for the two cores with the client and the broker.
                let held = !self.batcher.is_empty() && self.max_in_flight > 0;
                tokio::select! {
                    () = shared.intake.wait_for_items_or(|| {
                        shared.open.as_ref().is_some_and(Open::held)
                    }), if !held => {}
                    () = tokio::time::sleep_until(wake.into()) => {}
                    () = self.in_flight.returned.notified(), if held => {}
                }
            }
        }
        self.finish(&shared).await
    }

    /// True when batches may go before their deadline: fewer flushes than allowed await their
    /// acknowledgements, so waiting longer would only add latency. While the pipeline is
    /// full, events gather (up to N and T) and go together when a flush comes back: the
    /// batch grows with the rate and the broker's round trip, without exploring for it.
    fn pipeline_has_room(&self) -> bool {
        self.max_in_flight > 0
            && !self.batcher.is_empty()
            && self.in_flight.load() < self.max_in_flight
    }

    /// Counts a flush handed on (to the client, or per-event to the sender task); its
    /// completion task calls `finish` on what this returns. Only batches cut before they
    /// filled count: a full batch goes whatever is out and holds nothing back, so at
    /// saturation batches of N stream to the client as fast as it takes them (counting them
    /// too cut throughput by a seventh: two flushes of N out at a time kept the client's
    /// pipeline short), while below it partial batches wait for room.
    fn start_flight(&self, shared: &Shared, cause: FlushCause) -> Option<Arc<InFlight>> {
        if matches!(cause, FlushCause::Full | FlushCause::Bytes) {
            return None;
        }
        let out = self.in_flight.start() as u64;
        shared
            .counters
            .peak_flushes_in_flight
            .fetch_max(out, Ordering::Relaxed);
        Some(Arc::clone(&self.in_flight))
    }

    /// Puts an event taken from the intake into its batch, and sends the batch if it filled.
    /// Synchronous unless a topic's partition count is not known yet: an async call per
    /// event moved each event through its future's state.
    async fn take(&mut self, shared: &Arc<Shared>, p: Pending) {
        match self.admit(shared, p) {
            Admitted::Held => {}
            Admitted::Full(f) => self.flush(shared, f).await,
            Admitted::Unknown(p) => {
                let topic = Topic::clone(&p.record.topic);
                self.learn_partitions(&topic).await;
                match self.admit(shared, p) {
                    Admitted::Full(f) => self.flush(shared, f).await,
                    Admitted::Held | Admitted::Unknown(_) => {}
                }
            }
        }
    }

    /// Per event: puts a chunk of a call into the batch as one item, and sends the batch if
    /// it filled.
    async fn take_chunk(&mut self, shared: &Arc<Shared>, v: Vec<Pending>) {
        let (events, bytes) = (v.len(), v.iter().map(|p| p.record.size_hint()).sum());
        if let Admitted::Full(f) = self.push(BatchKey::All, Item::Events(v), events, bytes) {
            self.flush(shared, f).await;
        }
    }

    /// Packed: puts a fragment into its partition's batch, and sends the batch if it filled.
    async fn take_fragment(&mut self, shared: &Arc<Shared>, f: Fragment) {
        let key = BatchKey::Partition(f.topic_id, f.partition);
        let (events, bytes) = (f.len(), f.events.encoded_len());
        if let Admitted::Full(f) = self.push(key, Item::Packed(f), events, bytes) {
            self.flush(shared, f).await;
        }
    }

    /// Puts an event into its batch; returns the batch when it filled.
    fn admit(&mut self, shared: &Shared, p: Pending) -> Admitted {
        let (key, bytes) = match self.shape {
            Shape::PerEvent => (BatchKey::All, p.record.size_hint()),
            Shape::Packed => match self.partition_of(&p.record, p.key_crc) {
                None => return Admitted::Unknown(p),
                Some(Ok((id, part))) => (BatchKey::Partition(id, part), packed_size(&p.record)),
                Some(Err((message, class))) => {
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    p.reply.send(Err(AdaptiveError::Metadata {
                        topic: p.record.topic.to_string(),
                        message,
                        class,
                        record: Box::new(p.record),
                    }));
                    return Admitted::Held;
                }
            },
        };
        self.push(key, Item::Event(p), 1, bytes)
    }

    fn push(&mut self, key: BatchKey, item: Item, events: usize, bytes: usize) -> Admitted {
        let (arrived, budget) = (item.arrived(), item.budget());
        match self
            .batcher
            .push_items(key, item, events, bytes, arrived, budget)
        {
            Some(f) => Admitted::Full(f),
            None => Admitted::Held,
        }
    }

    /// Asks the client for a topic's partition count. A failure is remembered for
    /// [`METADATA_RETRY`], so the topic's events meanwhile fail (as metadata errors) instead
    /// of each waiting for a lookup of its own.
    async fn learn_partitions(&mut self, topic: &Topic) {
        let n = match self
            .producer
            .partition_count(topic, Duration::from_secs(10))
            .await
        {
            Ok(n) => PartitionCount::Known(n),
            Err(e) => PartitionCount::Failed {
                message: e.to_string(),
                class: e.class(),
                at: Instant::now(),
            },
        };
        let id = self.topics.id(topic);
        if let (PartitionCount::Known(n), Some(known)) = (&n, &self.known) {
            known.publish(topic, id, *n);
        }
        self.topics.get(id).partitions = n;
    }

    /// The topic's id and the partition a packed event goes to: its explicit one, its key's,
    /// or the topic's current sticky partition; `None` while the topic's partition count is
    /// unknown.
    fn partition_of(
        &mut self,
        r: &Record,
        key_crc: Option<u32>,
    ) -> Option<Result<(u32, i32), (String, ErrorClass)>> {
        let id = self.topics.id(&r.topic);
        let state = self.topics.get(id);
        let n = match &state.partitions {
            PartitionCount::Unknown => return None,
            PartitionCount::Known(n) => *n,
            PartitionCount::Failed { at, .. } if at.elapsed() >= METADATA_RETRY => return None,
            PartitionCount::Failed { message, class, .. } => {
                return Some(Err((message.clone(), *class)));
            }
        };
        Some(Ok((
            id,
            match (r.partition, r.key.as_deref().zip(key_crc)) {
                (Some(p), _) if (0..n).contains(&p) => p,
                (Some(p), _) => {
                    return Some(Err((
                        format!(
                            "partition {p} does not exist: the topic has {n} (0..={})",
                            n - 1
                        ),
                        ErrorClass::Permanent,
                    )));
                }
                (None, Some((k, crc))) => self.key_hash.partition_with_crc(k, crc, n),
                (None, None) => *state
                    .sticky
                    .get_or_insert_with(|| rand::rng().random_range(0..n)),
            },
        )))
    }

    /// Completes the switch to `to` once the client left behind is done: the sender task has
    /// handed on every batch, no send is on its way straight to the saturated client, and
    /// the old client has every record acknowledged (two idempotent producers do not order
    /// records between them). Returns whether it completed.
    fn finish_switch(&mut self, shared: &Shared, to: Path) -> bool {
        if shared.intake.is_closed() {
            // Closing: the sender keeps its client (no drain to wait for, which could outlast
            // the close) and sends stay off the direct path; nothing is reordered.
            shared.direct.store(false, Ordering::SeqCst);
            shared.drained.notify_waiters();
            self.switching = None;
            return true;
        }
        if shared.sender_done.load(Ordering::SeqCst) != self.flushed_events {
            return false;
        }
        let left = match to {
            Path::Direct => Some(&self.producer),
            Path::Intake => {
                if shared.direct_sending.load(Ordering::SeqCst) > 0 {
                    return false;
                }
                self.saturated.as_ref()
            }
        };
        if left.is_some_and(|p| p.counters().pending_records > 0) {
            return false;
        }
        let direct = to == Path::Direct;
        shared.on_saturated.store(direct, Ordering::SeqCst);
        shared.direct.store(direct, Ordering::SeqCst);
        shared.drained.notify_waiters();
        self.switching = None;
        tracing::info!(path = ?to, "adaptive producer: per-event path changed");
        true
    }

    /// Re-evaluates the level, and ends the epoch when it is due.
    async fn tick(&mut self, shared: &Arc<Shared>, now: Instant) {
        let intake = &shared.intake;
        // Only at a level whose budget the saturated client's linger fits in.
        let level_budget = self.controller.table().get(self.controller.level()).budget;
        let saturated = (intake.waiting() > 0 || intake.len() * 2 >= intake.capacity())
            && level_budget >= shared.direct_linger;
        let rate = self.controller.rates(now).short;
        if let Some(path) = self.path.tick(now, saturated, rate) {
            self.epoch_direct = true;
            if path == Path::Intake {
                // New sends take the intake at once; those on their way to the saturated
                // client are waited for in `finish_switch`.
                shared.direct.store(false, Ordering::SeqCst);
                shared.drained.notify_waiters();
            }
            self.switching = Some(path);
            shared
                .counters
                .path_switches
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(?path, rate, "adaptive producer: per-event path changing");
        }
        let changed = self.controller.tick(now);
        let epoch_over = now.duration_since(self.epoch_start) >= self.epoch;
        if changed.is_some() || epoch_over {
            self.end_epoch(shared, now, changed.is_some());
            let level = self.controller.level();
            self.choice = self.learner.choose(level);
            self.epoch_level = level;
            if changed.is_some() {
                shared
                    .counters
                    .level_changes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(level = %level, settings = %self.choice.settings, "adaptive producer: level changed");
            }
            if self.choice.explored {
                self.metrics.explored();
            }
            *shared
                .decision
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = (level, self.choice.settings);
            self.metrics.level(level, self.choice.settings);
            for f in self.batcher.set_settings(self.choice.settings) {
                self.flush(shared, f).await;
            }
        }
        if now.duration_since(self.last_persist) >= PERSIST_EVERY {
            self.last_persist = now;
            self.persistence.save_in_background(self.learner.learned());
        }
    }

    /// Judges the epoch that ran with `self.choice` and starts the next. An epoch cut short by
    /// a level change is judged only when it ran at least half its length.
    fn end_epoch(&mut self, shared: &Arc<Shared>, now: Instant, cut_short: bool) {
        let elapsed = now.duration_since(self.epoch_start);
        let acc = std::mem::take(
            &mut *shared
                .epoch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if (!cut_short || elapsed >= self.epoch / 2) && !self.epoch_direct {
            let stats = EpochStats {
                submitted: self.epoch_submitted,
                delivered: acc.delivered,
                elapsed,
                p50: Duration::from_micros(acc.latency.value_at_quantile(0.5)),
                p99: Duration::from_micros(acc.latency.value_at_quantile(0.99)),
                fill: if self.epoch_batches == 0 {
                    0.0
                } else {
                    self.epoch_batched_events as f64
                        / self.epoch_batches as f64
                        / f64::from(self.choice.settings.max_events.max(1))
                },
            };
            // Judged under the level its settings were chosen for, even when it just changed.
            let judged_level = self.epoch_level;
            if let Some(j) =
                self.learner
                    .observe(judged_level, self.choice, stats, SystemTime::now())
            {
                if let Some(r) = j.regression {
                    shared.counters.regressions.fetch_add(1, Ordering::Relaxed);
                    self.metrics.regression(judged_level);
                    tracing::warn!(
                        level = %judged_level,
                        settings = %j.choice.settings,
                        expected = r.expected,
                        measured = r.measured,
                        "adaptive producer: throughput regression, more than {:.0} % below expectation",
                        100.0 * (1.0 - r.measured / r.expected.max(1e-9)),
                    );
                }
                self.persistence.observe(&j);
            }
        }
        self.epoch_start = now;
        self.epoch_direct = self.path.path() == Path::Direct;
        self.epoch_submitted = 0;
        self.epoch_batches = 0;
        self.epoch_batched_events = 0;
    }

    /// Sends a cut batch: as one envelope record (packed) or as records of their own.
    async fn flush(&mut self, shared: &Arc<Shared>, f: Flushed<BatchKey, Item>) {
        let now = Instant::now();
        let over = f
            .items
            .iter()
            .filter(|i| now.duration_since(i.arrived()) > i.budget())
            .map(|i| i.events() as u64)
            .sum::<u64>();
        if over > 0 {
            shared
                .counters
                .budget_overruns
                .fetch_add(over, Ordering::Relaxed);
        }
        shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.epoch_batches += 1;
        self.epoch_batched_events += f.events as u64;
        match f.key {
            BatchKey::All => self.send_each(shared, f.items, f.events, f.cause).await,
            BatchKey::Partition(id, partition) => {
                let state = self.topics.get(id);
                if state.sticky == Some(partition) {
                    let n = match state.partitions {
                        PartitionCount::Known(n) => n.max(1),
                        _ => 1,
                    };
                    state.sticky = Some((partition + 1) % n);
                }
                let topic = Arc::clone(&state.topic);
                self.send_envelope(shared, topic, partition, f).await;
            }
        }
    }

    /// Hands a per-event batch to the sender task, waiting while it is [`HANDOFF_QUEUE`]
    /// batches behind.
    async fn send_each(
        &mut self,
        shared: &Arc<Shared>,
        items: Vec<Item>,
        events: usize,
        cause: FlushCause,
    ) {
        let in_flight = self.start_flight(shared, cause);
        let handoff = Handoff {
            items,
            events,
            in_flight,
        };
        let refused = match &self.to_sender {
            Some(tx) => tx.send(handoff).await.err().map(|e| e.0),
            None => Some(handoff),
        };
        if refused.is_none() {
            self.flushed_events += events as u64;
        }
        // Only if the sender task ended abnormally: its events cannot be sent.
        if let Some(Handoff {
            items, in_flight, ..
        }) = refused
        {
            shared
                .counters
                .failed
                .fetch_add(events as u64, Ordering::Relaxed);
            shared.handed_on(events as u64);
            items.into_iter().for_each(Item::refuse_closed);
            if let Some(f) = in_flight {
                f.finish();
            }
        }
    }

    async fn send_envelope(
        &mut self,
        shared: &Arc<Shared>,
        topic: Topic,
        partition: i32,
        batch: Flushed<BatchKey, Item>,
    ) {
        let Flushed {
            mut items,
            events,
            bytes,
            cause,
            ..
        } = batch;
        // `bytes` is the batcher's count of what `admit` gave it: each event's size and its
        // envelope overhead, each fragment's encoded size — the writer's capacity without a
        // second pass over the events.
        let mut w = EnvelopeWriter::with_capacity(bytes + 16);
        for item in &items {
            match item {
                Item::Packed(f) => w.append(&f.events),
                events => events
                    .pending()
                    .iter()
                    .for_each(|p| push_record(&mut w, &p.record)),
            }
        }
        let envelope = Record {
            topic: Arc::clone(&topic),
            partition: Some(partition),
            key: None,
            value: Some(w.finish()),
            headers: vec![envelope_header()],
            timestamp: None,
        };
        match self.producer.send(envelope).await {
            Err(e) => {
                shared
                    .counters
                    .failed
                    .fetch_add(events as u64, Ordering::Relaxed);
                fail_envelope(items, events, &topic, partition, e.class(), &e.to_string());
            }
            Ok(fut) => {
                shared.counters.records.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(shared);
                let topic = Arc::clone(&topic);
                let in_flight = self.start_flight(&shared, cause);
                let spares = Arc::clone(&self.spares);
                let latency_pool = Arc::clone(&self.latencies);
                self.completions.spawn(async move {
                    match fut.await {
                        Ok(d) => {
                            let mut latencies = latency_pool.take(events);
                            settle_envelope(&mut items, &d, Instant::now(), &mut latencies);
                            spares.give(items);
                            shared.acknowledged(events as u64, 0, &latencies);
                            latency_pool.give(latencies);
                        }
                        Err(e) => {
                            let (class, message) = (e.class(), e.to_string());
                            fail_envelope(items, events, &topic, partition, class, &message);
                            shared.acknowledged(0, events as u64, &[]);
                        }
                    }
                    if let Some(f) = in_flight {
                        f.finish();
                    }
                });
            }
        }
    }

    /// Sends everything held, waits for every acknowledgement, saves what was learned and
    /// closes the client.
    async fn finish(mut self, shared: &Arc<Shared>) -> AdaptiveCloseReport {
        for f in self.batcher.drain() {
            self.flush(shared, f).await;
        }
        // Every batch handed to the client before the client closes.
        self.to_sender = None;
        if let Some(sender) = self.sender.take() {
            let _ = sender.await;
        }
        self.completions.close();
        let failed_before = shared.counters.failed.load(Ordering::Relaxed);
        let close = self.producer.close();
        let saturated = async {
            if let Some(p) = &self.saturated {
                p.close().await;
            }
        };
        let (_, _report, ()) = tokio::join!(self.completions.wait(), close, saturated);
        let failed_at_close = shared
            .counters
            .failed
            .load(Ordering::Relaxed)
            .saturating_sub(failed_before);
        let learned = self.learner.learned();
        let calibration_warning = self.persistence.save_now(learned.clone()).await;
        AdaptiveCloseReport {
            stats: shared.stats(),
            learned,
            failed_at_close,
            calibration_warning,
        }
    }
}

/// What the per-event sender task needs.
struct Sender {
    shared: Arc<Shared>,
    spares: Arc<VecPool<Item>>,
    /// Its completion tasks' vectors of delivery futures to await.
    waiting: Arc<VecPool<Waiting>>,
    latencies: Arc<VecPool<Duration>>,
    completions: TaskTracker,
}

impl Sender {
    /// Hands one event to the client, awaiting its room (back-pressure); its delivery future
    /// goes to `waiting`, or it fails at once.
    async fn hand(&self, p: Pending, waiting: &mut Vec<Waiting>) {
        let Pending {
            record,
            arrived,
            reply,
            ..
        } = p;
        match self.shared.sender_client().send(record).await {
            Ok(fut) => waiting.push((fut, arrived, reply)),
            Err(e) => {
                self.shared.counters.refused(&e);
                reply.send(Err(AdaptiveError::Produce(e)));
            }
        }
    }
}

/// The per-event sender task: hands each batch's events to the client in order (awaiting
/// its room: back-pressure), then spawns the batch's completion task, which answers every
/// event's future as its acknowledgement comes. Ends when the driver drops its handle.
async fn send_batches(mut rx: mpsc::Receiver<Handoff>, s: Sender) {
    while let Some(Handoff {
        mut items,
        events,
        in_flight,
    }) = rx.recv().await
    {
        let mut waiting = s.waiting.take(events);
        let handed = events as u64;
        for item in items.drain(..) {
            match item.into_pending() {
                Ok(events) => {
                    for p in events {
                        s.hand(p, &mut waiting).await;
                    }
                }
                // Fragments are batched by partition (`take_fragment`), never in the
                // per-event batch; were one here, it is refused with its records, not lost.
                Err(f) => {
                    s.shared
                        .counters
                        .failed
                        .fetch_add(f.len() as u64, Ordering::Relaxed);
                    Item::Packed(f).refuse_closed();
                }
            }
        }
        // Every event of the batch is in the client (or failed): sends straight to it may go.
        s.shared.handed_on(handed);
        s.shared.sender_done.fetch_add(handed, Ordering::SeqCst);
        s.spares.give(items);
        s.shared
            .counters
            .records
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        let shared = Arc::clone(&s.shared);
        let (pool, latency_pool) = (Arc::clone(&s.waiting), Arc::clone(&s.latencies));
        s.completions.spawn(async move {
            let mut latencies = latency_pool.take(waiting.len());
            let (mut ok, mut failed) = (0u64, 0u64);
            for (fut, arrived, reply) in waiting.drain(..) {
                let r = fut.await;
                // One clock read per acknowledgement that made us wait; the ones already
                // there share it.
                let now = Instant::now();
                match r {
                    Ok(d) => {
                        ok += 1;
                        latencies.push(now.saturating_duration_since(arrived));
                        reply.send(Ok(EventDelivered::own_record(&d)));
                    }
                    Err(e) => {
                        failed += 1;
                        reply.send(Err(AdaptiveError::Produce(e)));
                    }
                }
            }
            shared
                .counters
                .client_failed
                .fetch_add(failed, Ordering::Relaxed);
            shared.acknowledged(ok, failed, &latencies);
            pool.give(waiting);
            latency_pool.give(latencies);
            if let Some(f) = in_flight {
                f.finish();
            }
        });
    }
}
