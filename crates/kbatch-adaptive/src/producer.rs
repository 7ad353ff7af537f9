//! The adaptive producer's handle: hand events in, get a future per event.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbatch_core::Record;
use kbatch_producer::{ProduceError, Producer};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{AdaptiveConfig, Shape};
use crate::driver::{self, Driver};
use crate::error::{AdaptiveError, TrySendError, TrySendManyError};
use crate::fragment::{Fragment, Item, Known, Packer};
use crate::intake::{Intake, PushError};
use crate::learner::Learned;
use crate::levels::{BatchSettings, LevelId};
use crate::open::Open;
use crate::persist::Persistence;
use crate::reply::{EventFuture, ManyFuture, Reply};

/// An event waiting in the intake or a batch.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) record: Record,
    pub(crate) arrived: Instant,
    /// The most this event may wait in a batch.
    pub(crate) budget: Duration,
    /// CRC-32 of its key, taken once at hand-in: the intake's order hint and, packed, the
    /// key's partition under librdkafka's default partitioner.
    pub(crate) key_crc: Option<u32>,
    pub(crate) reply: Reply,
}

/// What the intake holds: one event, a chunk of a `send_many` call — one hand-over for
/// many events, all of one intake shard (so each key's order holds as if they went one by
/// one) — or, packed, a chunk's keyed events already encoded per partition.
#[derive(Debug)]
pub(crate) enum Entry {
    One(Pending),
    Many(Vec<Pending>),
    Packed(Vec<Fragment>),
}

impl Entry {
    /// Events it stands for.
    pub(crate) fn events(&self) -> usize {
        match self {
            Entry::One(_) => 1,
            Entry::Many(v) => v.len(),
            Entry::Packed(v) => v.iter().map(Fragment::len).sum(),
        }
    }

    /// Settles every event as refused because the producer closed, each with its record.
    fn refuse_closed(self) {
        match self {
            Entry::One(p) => Item::Event(p).refuse_closed(),
            Entry::Many(v) => Item::Events(v).refuse_closed(),
            Entry::Packed(v) => v.into_iter().for_each(|f| Item::Packed(f).refuse_closed()),
        }
    }
}

/// Counters and the current decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdaptiveStats {
    /// Events handed in.
    pub submitted: u64,
    /// Events acknowledged.
    pub delivered: u64,
    /// Events failed.
    pub failed: u64,
    /// Batches cut.
    pub batches: u64,
    /// Kafka records sent (envelopes when packed, events otherwise).
    pub records: u64,
    /// Events that waited in a batch longer than their budget (the driver was late).
    pub budget_overruns: u64,
    /// Epochs whose throughput fell more than the allowed drop below expectation.
    pub regressions: u64,
    /// Level changes.
    pub level_changes: u64,
    /// Most microbatches (packed: envelopes) cut before they were full that awaited their
    /// acknowledgements at once (see
    /// [`AdaptiveConfig::flushes_in_flight`](crate::AdaptiveConfig::flushes_in_flight); full
    /// batches are not counted).
    pub peak_flushes_in_flight: u64,
    /// Per-event events sent straight to the client while the intake was the slowest stage
    /// (see [`crate::path`]).
    pub direct: u64,
    /// Times the per-event path changed (intake ↔ straight to the client).
    pub path_switches: u64,
    /// Packed: events `send_many` and `send` encoded where they were handed in (keyed events
    /// of a topic whose partition count was known), not one by one in the driver.
    pub packed_at_hand_in: u64,
    /// The current level.
    pub level: Option<LevelId>,
    /// The settings in force.
    pub settings: Option<BatchSettings>,
}

/// What closing did.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveCloseReport {
    /// Counters at the end.
    pub stats: AdaptiveStats,
    /// What was learned (and saved, when calibration is on).
    pub learned: Vec<Learned>,
    /// Events that failed during close (not delivered in time).
    pub failed_at_close: u64,
    /// Why saving the calibration failed, if it did.
    pub calibration_warning: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) budget_overruns: AtomicU64,
    pub(crate) regressions: AtomicU64,
    pub(crate) level_changes: AtomicU64,
    pub(crate) peak_flushes_in_flight: AtomicU64,
    /// Per-event events sent straight to the client (see [`crate::path`]), counted in
    /// `submitted` and, unless refused at once, in `records` by `stats`.
    pub(crate) direct: AtomicU64,
    /// Of `direct`, those the client refused at once (no record sent).
    pub(crate) direct_refused: AtomicU64,
    pub(crate) path_switches: AtomicU64,
    pub(crate) packed_at_hand_in: AtomicU64,
    /// Of `failed`, those the client counted too (its delivery reports, its refusals): per
    /// event, failures are read from the client, which also sees the events sent straight.
    pub(crate) client_failed: AtomicU64,
}

impl Counters {
    /// A per-event event the client did not take, with `e`: failed, and — when the client
    /// itself refused it, so its own counts have it too — in `client_failed` as well.
    pub(crate) fn refused(&self, e: &ProduceError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if matches!(e, ProduceError::Enqueue { .. }) {
            self.client_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// State shared by the handles, the driver and the completion tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) intake: Intake<Entry>,
    pub(crate) counters: Counters,
    /// The level and settings in force, for `level()` and `settings()`.
    pub(crate) decision: Mutex<(LevelId, BatchSettings)>,
    /// Delivery latencies of the running epoch, by the completion tasks (once per batch).
    pub(crate) epoch: Mutex<driver::EpochAcc>,
    pub(crate) budget_cap: Duration,
    /// The saturated client's linger: events with a shorter budget never go to it.
    pub(crate) direct_linger: Duration,
    pub(crate) shape: Shape,
    /// Packed: the partition counts the driver learned, for `send_many` to encode keyed
    /// events where it hands them in (see [`crate::fragment`]).
    pub(crate) known: Option<Arc<Known>>,
    /// Packed: single sends' open pieces (see [`crate::open`]).
    pub(crate) open: Option<Open>,
    /// The client (linger 0: the intake lingers).
    pub(crate) producer: Producer,
    /// Per-event, the path switch on: the client that lingers, which single-event sends go
    /// straight to while the intake is saturated (see [`crate::path`]).
    pub(crate) saturated: Option<Producer>,
    /// Set by the driver while the sender task hands batches to `saturated` (from a switch
    /// to the direct path until the switch back).
    pub(crate) on_saturated: AtomicBool,
    /// Set by the driver while single-event sends skip the intake.
    pub(crate) direct: AtomicBool,
    /// Single-event sends between reading `direct` and `saturated` taking the record: the
    /// driver switches back only when none is (see `DirectSend`).
    pub(crate) direct_sending: AtomicUsize,
    /// Events the sender task has handed to a client (or failed): with the events the
    /// driver flushed, it tells when the sender is idle.
    pub(crate) sender_done: AtomicU64,
    /// Events counted (while there is a saturated client) before they go into the intake …
    pub(crate) entered: AtomicU64,
    /// … and after the client took them (or they failed or were refused). A send may go
    /// straight to the client only when the two are equal: every event handed in before it
    /// (its own earlier ones included) is then in the client, so no key's order is broken.
    pub(crate) handed: AtomicU64,
    /// Told when `handed` catches up with `entered` while sends go straight to the client.
    pub(crate) drained: Notify,
}

impl Shared {
    /// Counts `n` events about to go into the intake (see `handed`).
    pub(crate) fn enter(&self, n: u64) {
        if self.saturated.is_some() {
            self.entered.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// `n` events handed in earlier are now in the client, failed, or were refused.
    pub(crate) fn handed_on(&self, n: u64) {
        if self.saturated.is_some() && n > 0 {
            let now = self.handed.fetch_add(n, Ordering::SeqCst) + n;
            if self.direct.load(Ordering::SeqCst) && now == self.entered.load(Ordering::SeqCst) {
                self.drained.notify_waiters();
            }
        }
    }

    /// Where a single-event send straight to the saturated client stands; read while its
    /// `DirectSend` is held, so the driver cannot switch back between this and the send.
    fn way_straight(&self) -> Way {
        if !self.direct.load(Ordering::SeqCst) || self.intake.is_closed() {
            Way::Intake
        } else if self.all_handed() {
            Way::Clear
        } else {
            Way::Behind
        }
    }

    /// Every event handed in so far is in the client. `handed` is read first: it never
    /// exceeds `entered`, so equal means nothing counted in `entered` before this read —
    /// the caller's own earlier events among them — is still on its way.
    fn all_handed(&self) -> bool {
        let handed = self.handed.load(Ordering::SeqCst);
        handed == self.entered.load(Ordering::SeqCst)
    }

    /// The most an event sent with `budget` (none: the level's) may wait in a batch.
    fn budget_of(&self, budget: Option<Duration>) -> Duration {
        budget.map_or(self.budget_cap, |b| b.min(self.budget_cap))
    }

    /// The client the sender task hands batches to now.
    pub(crate) fn sender_client(&self) -> &Producer {
        match &self.saturated {
            Some(p) if self.on_saturated.load(Ordering::SeqCst) => p,
            _ => &self.producer,
        }
    }

    /// Counters and the decision in force.
    pub(crate) fn stats(&self) -> AdaptiveStats {
        let c = &self.counters;
        // Per event, every event is one of the clients' records: their counts include the
        // events sent straight to the saturated client.
        let (delivered, failed) = match self.shape {
            Shape::PerEvent => {
                let (mut delivered, mut failed) = (0, 0);
                for k in std::iter::once(&self.producer)
                    .chain(&self.saturated)
                    .map(Producer::counters)
                {
                    delivered += k.delivered;
                    failed += k.failed_retriable + k.failed_permanent + k.failed_fatal;
                }
                (
                    delivered,
                    c.failed
                        .load(Ordering::Relaxed)
                        .saturating_sub(c.client_failed.load(Ordering::Relaxed))
                        + failed,
                )
            }
            Shape::Packed => (
                c.delivered.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
            ),
        };
        let (level, settings) = *self
            .decision
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = self.open.as_ref().map_or(0, Open::added);
        AdaptiveStats {
            submitted: c.submitted.load(Ordering::Relaxed)
                + c.direct.load(Ordering::Relaxed)
                + open,
            delivered,
            failed,
            direct: c.direct.load(Ordering::Relaxed),
            path_switches: c.path_switches.load(Ordering::Relaxed),
            packed_at_hand_in: c.packed_at_hand_in.load(Ordering::Relaxed) + open,
            batches: c.batches.load(Ordering::Relaxed),
            records: (c.records.load(Ordering::Relaxed) + c.direct.load(Ordering::Relaxed))
                .saturating_sub(c.direct_refused.load(Ordering::Relaxed)),
            budget_overruns: c.budget_overruns.load(Ordering::Relaxed),
            regressions: c.regressions.load(Ordering::Relaxed),
            level_changes: c.level_changes.load(Ordering::Relaxed),
            peak_flushes_in_flight: c.peak_flushes_in_flight.load(Ordering::Relaxed),
            level: Some(level),
            settings: Some(settings),
        }
    }

    /// Counts acknowledgements of one batch and adds their latencies to the epoch (one lock
    /// per batch, not per event).
    pub(crate) fn acknowledged(&self, delivered: u64, failed: u64, latencies: &[Duration]) {
        self.counters
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
        self.counters.failed.fetch_add(failed, Ordering::Relaxed);
        let mut e = self
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        e.add(delivered, latencies);
    }
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // The last handle is gone: let the driver send what it holds and stop.
        self.0.intake.close();
    }
}

/// A producer that batches events adaptively. See the [crate docs](crate).
///
/// Cheap to clone. Dropping the last handle closes it like [`AdaptiveProducer::close`], in
/// the background.
#[derive(Clone)]
pub struct AdaptiveProducer {
    shared: Arc<Shared>,
    driver: Arc<tokio::sync::Mutex<Option<JoinHandle<AdaptiveCloseReport>>>>,
    _last: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for AdaptiveProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveProducer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Longest a send waits for the intake to drain before it goes straight to the client;
/// past it, it goes through the intake instead.
const DRAIN_WAIT: Duration = Duration::from_millis(10);

/// Events sent with no budget of their own may wait as long as the level allows.
const NO_BUDGET: Duration = Duration::from_secs(24 * 3_600);

impl AdaptiveProducer {
    /// Validates `config`, starts the client, loads what was learned (a missing, locked or
    /// corrupt calibration file is a warning, never a failure) and spawns the driver on the
    /// current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(config: AdaptiveConfig) -> Result<Self, AdaptiveError> {
        config.validate()?;
        let mut producer_config = config.producer.clone();
        // The intake lingers; the client sends each flush at once.
        producer_config.kafka.linger = Duration::ZERO;
        let producer = Producer::new(producer_config)?;
        let persistence = Persistence::open(&config.calibration, &config.profile);
        let now = Instant::now();
        let client = producer.clone();
        let saturated = if config.shape == Shape::PerEvent && config.path.enabled {
            let mut c = config.producer.clone();
            c.kafka.linger = config.path.linger;
            // Its own metrics: the two clients' counters are not one client's.
            c.kafka.client.client_id = format!("{}-saturated", c.kafka.client.client_id);
            Some(Producer::new(c)?)
        } else {
            None
        };
        let driver = Driver::new(&config, producer, saturated.clone(), persistence, now);
        let (level, settings) = driver.decision();
        let shards = intake_shards();
        let shared = Arc::new(Shared {
            intake: Intake::new(config.intake_capacity, shards),
            counters: Counters::default(),
            decision: Mutex::new((level, settings)),
            epoch: Mutex::new(driver::EpochAcc::default()),
            budget_cap: config.budget.unwrap_or(NO_BUDGET),
            direct_linger: config.path.linger,
            shape: config.shape,
            known: driver.known(),
            open: (config.shape == Shape::Packed).then(|| Open::new(shards)),
            producer: client,
            saturated,
            on_saturated: AtomicBool::new(false),
            direct: AtomicBool::new(false),
            direct_sending: AtomicUsize::new(0),
            sender_done: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            drained: Notify::new(),
        });
        let handle = tokio::spawn(driver.run(Arc::clone(&shared)));
        Ok(Self {
            _last: Arc::new(CloseOnDrop(Arc::clone(&shared))),
            shared,
            driver: Arc::new(tokio::sync::Mutex::new(Some(handle))),
        })
    }

    fn pending(&self, record: Record, budget: Option<Duration>) -> (Pending, EventFuture) {
        let (reply, f) = Reply::one();
        (self.detached(record, budget, reply, Instant::now()), f)
    }

    fn detached(
        &self,
        record: Record,
        budget: Option<Duration>,
        reply: Reply,
        arrived: Instant,
    ) -> Pending {
        Pending {
            key_crc: record.key.as_deref().map(crc32fast::hash),
            record,
            arrived,
            budget: self.shared.budget_of(budget),
            reply,
        }
    }

    /// Puts `e` (standing for `n` events) into the intake's shard for `hint`, waiting while it
    /// is full — packed, after the shard's open pieces (see [`crate::open`]); hands it back
    /// once closed.
    async fn push_entry(&self, hint: Option<u64>, e: Entry, n: usize) -> Result<(), Entry> {
        match (&self.shared.open, hint) {
            (Some(open), Some(h)) => open.push(&self.shared, h, e, n).await,
            _ => self.shared.intake.push_many(hint, e, n).await,
        }
    }

    /// As [`push_entry`](Self::push_entry), without waiting.
    #[allow(
        clippy::result_large_err,
        reason = "the entry comes back by value, as the intake's own try_push hands it"
    )]
    fn try_push_entry(
        &self,
        hint: Option<u64>,
        e: Entry,
        n: usize,
    ) -> Result<(), PushError<Entry>> {
        match (&self.shared.open, hint) {
            (Some(open), Some(h)) => open.try_push(&self.shared, h, e, n),
            _ => self.shared.intake.try_push_many(hint, e, n),
        }
    }

    /// Puts `p` into the intake's shard for `hint`, waiting while it is full; hands the
    /// record back once closed.
    async fn hand_in(&self, hint: Option<u64>, p: Pending) -> Result<(), AdaptiveError> {
        let entering = Entering::new(&self.shared, 1);
        let pushed = self.push_entry(hint, Entry::One(p), 1).await;
        if pushed.is_ok() {
            entering.taken();
        }
        match pushed {
            Ok(()) => {
                self.shared
                    .counters
                    .submitted
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(AdaptiveError::Closed {
                record: Some(Box::new(one_record(e))),
            }),
        }
    }

    /// Hands `record` in without a future, waiting while the intake is full: for
    /// fire-and-forget callers that need no per-event answer (it saves the future's
    /// allocation and its hand-over). A later failure is counted in
    /// [`stats().failed`](Self::stats) (and, unless packed into an open piece as
    /// [`send`](Self::send) describes, logged at debug level), nothing more.
    ///
    /// # Cancellation
    /// As [`send`](Self::send).
    pub async fn send_detached(&self, record: Record) -> Result<(), AdaptiveError> {
        let record = match &self.shared.open {
            // Packed: into an open piece as `send` (its future dropped: the piece's outcome
            // is shared, so that saves nothing here), else the intake's way.
            Some(open) => {
                match open
                    .send(&self.shared, record, self.shared.budget_of(None))
                    .await
                {
                    Ok(sent) => return sent.map(drop),
                    Err(record) => record,
                }
            }
            None => match self.straight(record, None).await {
                Ok(sent) => return sent.map(drop),
                Err(record) => record,
            },
        };
        let p = self.detached(record, None, Reply::detached(), Instant::now());
        self.hand_in(order_hint(&p), p).await
    }

    /// Hands `records` in, in order, waiting while the intake is full, and returns one future
    /// for all of them: it resolves when every event is settled, with one outcome per event
    /// in the order given. For callers that produce in batches (a consumed batch, an HTTP
    /// request, a file): it saves the future per event (an allocation and a cross-thread
    /// wake-up each), and the events go to the batcher in a few chunks (one per intake shard
    /// their keys fall in) instead of one by one — packed, keyed events of a topic whose
    /// partition count the producer has learned go already encoded, one envelope piece per
    /// shard and partition. Events keep their order per key as with
    /// [`send`](Self::send). Events refused because the producer closed meanwhile settle as
    /// `Closed`, each handing its record back.
    ///
    /// # Cancellation
    /// Dropping this future while it waits for room drops the records not yet handed in;
    /// those handed in are sent.
    pub async fn send_many(&self, records: Vec<Record>) -> ManyFuture {
        self.send_many_with(records, SendOptions::default()).await
    }

    /// As [`send_many`](Self::send_many), with `options`: a latency budget for every event,
    /// and a sequence — then the records go in as one chunk and keep the order given,
    /// whatever their keys (see [`SendOptions::sequence`]).
    ///
    /// # Cancellation
    /// As [`send_many`](Self::send_many).
    pub async fn send_many_with(&self, records: Vec<Record>, options: SendOptions) -> ManyFuture {
        let (chunks, f) = self.chunks(records, options, true);
        let (mut taken, mut packed) = (0u64, 0u64);
        for (hint, chunk) in chunks {
            let n = chunk.events();
            let is_packed = matches!(chunk, Entry::Packed(_));
            let entering = Entering::new(&self.shared, n as u64);
            // Once closed, the intake refuses every later chunk at once, without waiting.
            match self.push_entry(Some(hint), chunk, n).await {
                Ok(()) => {
                    entering.taken();
                    taken += n as u64;
                    packed += if is_packed { n as u64 } else { 0 };
                }
                Err(e) => e.refuse_closed(),
            }
        }
        if packed > 0 {
            self.shared
                .counters
                .packed_at_hand_in
                .fetch_add(packed, Ordering::Relaxed);
        }
        self.shared
            .counters
            .submitted
            .fetch_add(taken, Ordering::Relaxed);
        f
    }

    /// Hands `records` in as one sequence (`options.sequence`, or a new one), all or none,
    /// without waiting: a full or closed intake hands every record back. The non-waiting form
    /// of [`send_many_with`](Self::send_many_with), for callers such as an HTTP handler that
    /// must answer "full" at once rather than queue.
    pub fn try_send_many_with(
        &self,
        records: Vec<Record>,
        options: SendOptions,
    ) -> Result<ManyFuture, TrySendManyError> {
        let sequence = options.sequence.unwrap_or_else(new_sequence);
        let (mut chunks, f) = self.chunks(records, options.in_sequence(sequence), false);
        let Some((hint, chunk)) = chunks.pop() else {
            return Ok(f);
        };
        let n = chunk.events();
        let entering = Entering::new(&self.shared, n as u64);
        match self.try_push_entry(Some(hint), chunk, n) {
            Ok(()) => {
                entering.taken();
                self.shared
                    .counters
                    .submitted
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(f)
            }
            Err(PushError::Full(e)) => Err(TrySendManyError::Full(records_of(e))),
            Err(PushError::Closed(e)) => Err(TrySendManyError::Closed(records_of(e))),
        }
    }

    /// The events of `records` in the chunks they go to the intake in, each with its order
    /// hint: one group for a sequence; otherwise one per intake shard their keys (or explicit
    /// partitions) fall in, events without either in this thread's shard. Each group keeps
    /// the order given, so each key's does. With `split`, a group larger than a shard's share
    /// of the intake goes as several chunks of at most that share, one after another into the
    /// same shard — so the intake holds no more than its capacity, and a large call waits for
    /// room piece by piece instead of for an empty shard. Packed and not a sequence, keyed
    /// events of topics the driver knows go encoded in fragments (see [`crate::fragment`]).
    fn chunks(
        &self,
        records: Vec<Record>,
        options: SendOptions,
        split: bool,
    ) -> (Vec<(u64, Entry)>, ManyFuture) {
        let (call, f) = Reply::call(records.len());
        // One clock read for the call: the events arrive together.
        let arrived = Instant::now();
        let budget = self.shared.budget_of(options.budget);
        let intake = &self.shared.intake;
        let (groups, home) = match options.sequence {
            Some(_) => (1, 0),
            None => (intake.shards(), intake.home_shard()),
        };
        let hint = |g: usize| options.sequence.unwrap_or(g as u64);
        let piece = if split {
            intake.shard_capacity().max(1)
        } else {
            usize::MAX
        };
        let mut packer = match (&self.shared.known, options.sequence) {
            (Some(known), None) => {
                // A fragment of at most N events: the batcher cuts at N, and a batch holds at
                // most one item past it.
                let n = self.decision().1.max_events as usize;
                Some(Packer::new(
                    known,
                    &call,
                    arrived,
                    budget,
                    groups,
                    piece.min(n),
                ))
            }
            _ => None,
        };
        // Each record's place first, so every chunk and fragment is allocated once at its size.
        let mut remaining = vec![0usize; groups];
        let placed: Vec<(Option<u32>, Place)> = records
            .iter()
            .map(|r| {
                let crc = r.key.as_deref().map(crc32fast::hash);
                let g = match options.sequence {
                    Some(_) => 0,
                    None => hint_of(r, crc).map_or(home, |h| (h % groups as u64) as usize),
                };
                if let Some(slot) = packer.as_mut().and_then(|p| p.place(r, crc, g)) {
                    return (crc, Place::Packed(slot));
                }
                remaining[g] += 1;
                (crc, Place::Event(g))
            })
            .collect();
        let mut open: Vec<Vec<Pending>> = remaining
            .iter()
            .map(|&n| Vec::with_capacity(n.min(piece)))
            .collect();
        let mut chunks = Vec::new();
        let mut emit =
            |g: usize, frags: Vec<Fragment>| chunks.push((hint(g), Entry::Packed(frags)));
        let mut many = Vec::new();
        for (i, (record, (crc, place))) in records.into_iter().zip(placed).enumerate() {
            let g = match place {
                Place::Event(g) => g,
                Place::Packed(slot) => {
                    if let Some(p) = packer.as_mut() {
                        p.add(slot, record, i as u32, &mut emit);
                    }
                    continue;
                }
            };
            open[g].push(Pending {
                key_crc: crc,
                record,
                arrived,
                budget,
                reply: call.reply(i as u32),
            });
            remaining[g] -= 1;
            if open[g].len() == piece && remaining[g] > 0 {
                let next = Vec::with_capacity(remaining[g].min(piece));
                many.push((hint(g), Entry::Many(std::mem::replace(&mut open[g], next))));
            }
        }
        if let Some(p) = packer {
            p.finish(&mut emit);
        }
        chunks.extend(many);
        chunks.extend(
            open.into_iter()
                .enumerate()
                .filter(|(_, c)| !c.is_empty())
                .map(|(g, c)| (hint(g), Entry::Many(c))),
        );
        (chunks, f)
    }

    /// Hands `record` in, waiting while the intake is full, and returns its future. Fails at
    /// once, handing the record back, when the producer is closed.
    ///
    /// Packed, a keyed event without an explicit partition, of a topic whose partition count
    /// the producer has learned, is encoded here into an envelope piece it shares with the
    /// other sends of its intake shard and partition; the piece goes to the batcher as one
    /// item (when the driver next takes it, or once it holds the level's N events) and its
    /// events' futures share one outcome. Each key's order holds as for any other send.
    ///
    /// # Cancellation
    /// Dropping this future while it waits for room drops the record; it was not handed in.
    pub async fn send(&self, record: Record) -> Result<EventFuture, AdaptiveError> {
        self.send_with(record, SendOptions::default()).await
    }

    /// As [`send`](Self::send), and the event waits in a batch at most `budget` (or the
    /// producer's budget, if shorter), whatever the level.
    ///
    /// # Cancellation
    /// As [`send`](Self::send).
    pub async fn send_with_budget(
        &self,
        record: Record,
        budget: Duration,
    ) -> Result<EventFuture, AdaptiveError> {
        self.send_with(record, SendOptions::default().with_budget(budget))
            .await
    }

    /// As [`send`](Self::send), with `options`: a latency budget, and a sequence whose events
    /// keep the order they were handed in, whatever their keys — the waiting form of
    /// [`try_send_with`](Self::try_send_with), for callers that hand in one event at a time
    /// and would rather wait for room than be refused (a stream of records).
    ///
    /// # Cancellation
    /// As [`send`](Self::send).
    pub async fn send_with(
        &self,
        record: Record,
        options: SendOptions,
    ) -> Result<EventFuture, AdaptiveError> {
        // Packed, at the producer's budget and in no sequence: into an open piece (a packed
        // producer sends nothing straight to the client).
        let record = match (&self.shared.open, options) {
            (
                Some(open),
                SendOptions {
                    budget: None,
                    sequence: None,
                },
            ) => {
                match open
                    .send(&self.shared, record, self.shared.budget_of(None))
                    .await
                {
                    Ok(sent) => return sent,
                    Err(record) => record,
                }
            }
            _ => match self.straight(record, options.budget).await {
                Ok(sent) => return sent,
                Err(record) => record,
            },
        };
        let (p, f) = self.pending(record, options.budget);
        let hint = options.sequence.or_else(|| order_hint(&p));
        self.hand_in(hint, p).await.map(|()| f)
    }

    /// Hands `record` in without waiting: a full intake hands it back as `Full`.
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value: no allocation on the back-pressure path"
    )]
    pub fn try_send(&self, record: Record) -> Result<EventFuture, TrySendError> {
        self.try_send_with(record, SendOptions::default())
    }

    /// As [`try_send`](Self::try_send), and the event waits in a batch at most `budget` (or
    /// the producer's budget, if shorter), whatever the level — the non-waiting form of
    /// [`send_with_budget`](Self::send_with_budget), for callers such as an HTTP handler that
    /// must answer "full" at once rather than queue.
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value: no allocation on the back-pressure path"
    )]
    pub fn try_send_with_budget(
        &self,
        record: Record,
        budget: Duration,
    ) -> Result<EventFuture, TrySendError> {
        self.try_send_with(record, SendOptions::default().with_budget(budget))
    }

    /// As [`try_send`](Self::try_send), with `options`: a latency budget, and a sequence
    /// whose events keep the order they were handed in, whatever their keys (by default
    /// only events of one key, or of one explicit partition, do).
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value: no allocation on the back-pressure path"
    )]
    pub fn try_send_with(
        &self,
        record: Record,
        options: SendOptions,
    ) -> Result<EventFuture, TrySendError> {
        let record = match self.straight_now(record, options.budget) {
            Straight::Sent(sent) => {
                return sent.map_err(|e| match e {
                    AdaptiveError::Closed { record: Some(r) } => TrySendError::Closed(*r),
                    _ => {
                        unreachable!("sent_direct fails at once only when closed, with the record")
                    }
                });
            }
            Straight::Full(record) => return Err(TrySendError::Full(record)),
            Straight::Intake(record) | Straight::Behind(record) => record,
        };
        let (p, f) = self.pending(record, options.budget);
        let hint = options.sequence.or_else(|| order_hint(&p));
        let entering = Entering::new(&self.shared, 1);
        match self.try_push_entry(hint, Entry::One(p), 1) {
            Ok(()) => {
                entering.taken();
                self.shared
                    .counters
                    .submitted
                    .fetch_add(1, Ordering::Relaxed);
                Ok(f)
            }
            Err(PushError::Full(e)) => Err(TrySendError::Full(one_record(e))),
            Err(PushError::Closed(e)) => Err(TrySendError::Closed(one_record(e))),
        }
    }

    /// Sends `record` straight to the client while the intake is the slowest stage (see
    /// [`crate::path`]): at once when it can ([`straight_now`](Self::straight_now)), else
    /// once every event handed in before it is in the client and the client has room —
    /// waiting up to [`DRAIN_WAIT`] for the intake to drain. Hands the record back when the
    /// intake is the way: then, or after that wait, it goes in behind the events there.
    async fn straight(
        &self,
        record: Record,
        budget: Option<Duration>,
    ) -> Result<Result<EventFuture, AdaptiveError>, Record> {
        // The common case finishes in the synchronous attempt: no waiter registered (a lock
        // per send) and no wait for the client's room. The rest waits below.
        let record = match self.straight_now(record, budget) {
            Straight::Sent(sent) => return Ok(sent),
            Straight::Intake(record) => return Err(record),
            Straight::Behind(record) | Straight::Full(record) => record,
        };
        let s = &self.shared;
        let _sending = DirectSend::new(s);
        let mut give_up = None;
        loop {
            // Checked first without a waiter: a client found full (at saturation, nearly every
            // send) has usually nothing left in the intake, and registering with `drained`
            // takes its lock twice per send on the one thread that sends.
            match s.way_straight() {
                Way::Intake => return Err(record),
                Way::Clear => break,
                Way::Behind => {}
            }
            // Then registered and checked again, so a drain in between is not missed.
            let drained = s.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match s.way_straight() {
                Way::Intake => return Err(record),
                Way::Clear => break,
                Way::Behind => {}
            }
            // Others keep handing events in (`send_many`, `try_send`): the two counts may not
            // meet for a while, and the intake is always a correct way.
            let until = *give_up.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_WAIT);
            if tokio::time::timeout_at(until, drained).await.is_err() {
                return Err(record);
            }
        }
        let Some(client) = &s.saturated else {
            return Err(record);
        };
        let sent = client.send(record).await;
        Ok(self.sent_direct(sent))
    }

    /// One attempt, without waiting, to send `record` straight to the saturated client: see
    /// [`Straight`] for what comes of it.
    fn straight_now(&self, record: Record, budget: Option<Duration>) -> Straight {
        let s = &self.shared;
        let Some(client) = &s.saturated else {
            return Straight::Intake(record);
        };
        if !s.direct.load(Ordering::SeqCst) || !self.budget_allows_direct(budget) {
            return Straight::Intake(record);
        }
        let _sending = DirectSend::new(s);
        match s.way_straight() {
            Way::Intake => return Straight::Intake(record),
            Way::Behind => return Straight::Behind(record),
            Way::Clear => {}
        }
        let sent = match client.try_send(record) {
            Ok(f) => Ok(f),
            Err(kbatch_producer::TrySendError::Full(r)) => return Straight::Full(r),
            Err(kbatch_producer::TrySendError::Failed(e)) => Err(e),
            // No other refusal exists; one added later fails the event with its record.
            Err(e) => Err(ProduceError::Closed {
                record: e.into_record().map(Box::new),
            }),
        };
        Straight::Sent(self.sent_direct(sent))
    }

    /// Whether an event with this budget may wait out the saturated client's linger: one
    /// with less goes through the intake, which never holds it past its budget.
    fn budget_allows_direct(&self, budget: Option<Duration>) -> bool {
        let s = &self.shared;
        s.budget_of(budget) >= s.direct_linger
    }

    /// Counts a send straight to the client and turns its outcome into the event's, as the
    /// intake would: only a closed producer fails the send itself; any other refusal (an
    /// invalid record, the client's) resolves the event's future with it.
    fn sent_direct(
        &self,
        sent: Result<kbatch_producer::DeliveryFuture, ProduceError>,
    ) -> Result<EventFuture, AdaptiveError> {
        let c = &self.shared.counters;
        // One count per event on this path: `stats` adds it to `submitted` and `records`.
        c.direct.fetch_add(1, Ordering::Relaxed);
        if sent.is_err() {
            c.direct_refused.fetch_add(1, Ordering::Relaxed);
        }
        let e = match sent {
            Ok(f) => return Ok(EventFuture::direct(f)),
            Err(e) => e,
        };
        c.refused(&e);
        match e {
            ProduceError::Closed {
                record: Some(record),
            } => Err(AdaptiveError::Closed {
                record: Some(record),
            }),
            e => {
                let (reply, f) = Reply::one();
                reply.send(Err(AdaptiveError::Produce(e)));
                Ok(f)
            }
        }
    }

    /// The current pressure level.
    pub fn level(&self) -> LevelId {
        self.decision().0
    }

    /// The batch settings in force.
    pub fn settings(&self) -> BatchSettings {
        self.decision().1
    }

    fn decision(&self) -> (LevelId, BatchSettings) {
        *self
            .shared
            .decision
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counters and the current decision.
    pub fn stats(&self) -> AdaptiveStats {
        self.shared.stats()
    }

    /// Stops taking events, sends everything held, waits for every acknowledgement (within
    /// the producer's `close_timeout`), saves what was learned and closes the client. Later
    /// sends fail with `Closed`; later closes return a report with the counters only.
    pub async fn close(&self) -> AdaptiveCloseReport {
        self.shared.intake.close();
        let handle = self.driver.lock().await.take();
        match handle {
            Some(h) => match h.await {
                Ok(report) => report,
                Err(e) => AdaptiveCloseReport {
                    stats: self.stats(),
                    learned: Vec::new(),
                    failed_at_close: 0,
                    calibration_warning: Some(format!("the driver task ended abnormally: {e}")),
                },
            },
            None => AdaptiveCloseReport {
                stats: self.stats(),
                learned: Vec::new(),
                failed_at_close: 0,
                calibration_warning: None,
            },
        }
    }
}

/// How [`AdaptiveProducer::send_with`] and its relatives hand events in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// The most the event may wait in a batch (the producer's budget, if shorter, wins).
    pub budget: Option<Duration>,
    /// Events handed in with the same sequence keep their order among themselves, across
    /// keys and partitions (an HTTP request's records, a stream's). Events of one key keep
    /// their order anyway; so do events of one sequence, but not events of one key handed in
    /// under different sequences at the same time.
    pub sequence: Option<u64>,
}

impl SendOptions {
    /// Sets the budget.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Sets the sequence (any id shared by the events that must keep their order).
    #[must_use]
    pub fn in_sequence(mut self, sequence: u64) -> Self {
        self.sequence = Some(sequence);
        self
    }
}

/// Where `chunks` puts a record: with the events of an intake shard, or in a fragment.
enum Place {
    Event(usize),
    Packed(usize),
}

/// Events that must keep their order share a hint: the same explicit partition, else the
/// same key. Others may go to any intake shard.
fn order_hint(p: &Pending) -> Option<u64> {
    hint_of(&p.record, p.key_crc)
}

fn hint_of(record: &Record, key_crc: Option<u32>) -> Option<u64> {
    match (record.partition, key_crc) {
        (Some(part), _) => Some(u64::from(crc32fast::hash(record.topic.as_bytes())) ^ part as u64),
        (None, crc) => crc.map(u64::from),
    }
}

/// A sequence id no caller chose: high bit set, apart from small ids callers count up from.
fn new_sequence() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 63);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The record of an entry of one event (a single-event send's), refused by the intake.
fn one_record(e: Entry) -> Record {
    match e {
        Entry::One(p) => p.record,
        Entry::Many(_) | Entry::Packed(_) => unreachable!("a single-event send hands in one event"),
    }
}

/// The records of a refused sequence, in order (their replies dropped unanswered: the
/// caller gets the records back instead). A sequence is never packed where it is handed in
/// (see `chunks`), so it is one or many events.
fn records_of(e: Entry) -> Vec<Record> {
    match e {
        Entry::One(p) => vec![p.record],
        Entry::Many(v) => v.into_iter().map(|p| p.record).collect(),
        Entry::Packed(v) => v.into_iter().flat_map(Fragment::into_records).collect(),
    }
}

/// A single-event send on its way straight to the saturated client: counted from before it
/// reads `direct` (again) until the client has its record, so the driver, which clears
/// `direct` and then waits for the count to reach 0, never switches the sender back to the
/// other client while such a record may still be enqueued behind its back. Both sides use
/// sequentially consistent operations: either the send sees `direct` cleared, or the driver
/// sees it counted.
struct DirectSend<'a>(&'a Shared);

impl<'a> DirectSend<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.direct_sending.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for DirectSend<'_> {
    fn drop(&mut self) {
        self.0.direct_sending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// See [`Shared::way_straight`].
enum Way {
    /// Not (or no longer) on the direct path, or closed: the intake takes the event.
    Intake,
    /// Events handed in earlier are not all in the client yet.
    Behind,
    /// Every event handed in earlier is in the client: this one may go straight.
    Clear,
}

/// What one attempt to send an event straight to the saturated client came to.
enum Straight {
    /// The client took it (or refused it for good): the event's outcome.
    Sent(Result<EventFuture, AdaptiveError>),
    /// Not on the direct path, or its budget is shorter than the client's linger: the
    /// intake takes it.
    Intake(Record),
    /// On the direct path, behind events handed in earlier that are not in the client yet.
    Behind(Record),
    /// On the direct path, and the client has no room now.
    Full(Record),
}

/// Counts events as entering the intake (see `Shared::handed`) until they are taken; if
/// they are not — refused, or the send dropped while it waited — counts them as handed on,
/// so sends straight to the client do not wait for them.
struct Entering<'a> {
    shared: &'a Shared,
    n: u64,
}

impl<'a> Entering<'a> {
    fn new(shared: &'a Shared, n: u64) -> Self {
        shared.enter(n);
        Self { shared, n }
    }

    /// The intake took them: the sender task counts them when the client has them.
    fn taken(mut self) {
        self.n = 0;
    }
}

impl Drop for Entering<'_> {
    fn drop(&mut self) {
        self.shared.handed_on(self.n);
    }
}

fn intake_shards() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 16) * 2)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kbatch_core::{Offset, Topic};
    use kbatch_producer::{ClientConfig, KafkaProducerConfig, ProducerConfig};

    use crate::partitioner::KeyHash;
    use crate::reply::EventDelivered;

    use super::*;

    /// A producer whose client never connects: `chunks` only reads the intake's shape.
    fn unconnected(intake: usize) -> AdaptiveProducer {
        unconnected_shaped(intake, Shape::PerEvent)
    }

    fn unconnected_shaped(intake: usize, shape: Shape) -> AdaptiveProducer {
        let kafka = KafkaProducerConfig::new(ClientConfig::new("127.0.0.1:1"));
        AdaptiveProducer::start(
            AdaptiveConfig::new(ProducerConfig::default().with_kafka(kafka))
                .without_calibration()
                .with_intake_capacity(intake)
                .with_shape(shape),
        )
        .unwrap()
    }

    /// A packed call's keyed events of a published topic go in fragments: one per intake
    /// shard and partition (at most a piece each), each key's events in call order, each
    /// settling its own events' slots; the rest go one by one.
    #[tokio::test]
    async fn a_packed_call_encodes_keyed_events_per_shard_and_partition() {
        let p = unconnected_shaped(400, Shape::Packed);
        let share = p.shared.intake.shard_capacity();
        let known = p.shared.known.clone().unwrap();
        let topic: Topic = "t".into();
        known.publish(&topic, 0, 4);
        let records: Vec<Record> = (0..1_000u64)
            .map(|i| match i % 10 {
                // Keyless, and an explicit partition: one by one.
                8 => Record::new(Topic::clone(&topic), i.to_string()),
                9 => Record::new(Topic::clone(&topic), i.to_string())
                    .with_key("k1")
                    .with_partition(3),
                k => Record::new(Topic::clone(&topic), i.to_string())
                    .with_key(format!("k{k}"))
                    .with_header("h", i.to_string()),
            })
            .collect();
        let (chunks, f) = p.chunks(records.clone(), SendOptions::default(), true);
        assert_eq!(chunks.iter().map(|(_, c)| c.events()).sum::<usize>(), 1_000);
        let mut seen = vec![false; 1_000];
        let mut last_of_key: std::collections::HashMap<Bytes, u64> = Default::default();
        let mut offset = 0;
        for (hint, c) in chunks {
            assert!(c.events() <= share, "an entry of {} events", c.events());
            match c {
                Entry::Many(v) => {
                    for e in v {
                        let i = value(&e);
                        assert!(i % 10 >= 8, "event {i} went alone");
                        seen[i as usize] = true;
                        e.reply.send(Ok(EventDelivered {
                            partition: -1,
                            offset: Offset(-1),
                            index: None,
                            timestamp: None,
                        }));
                    }
                }
                Entry::Packed(frags) => {
                    for fr in frags {
                        assert!(fr.len() <= share);
                        let records = fr.events.clone().finish();
                        let events = kbatch_core::envelope::decode(&records).unwrap();
                        for e in &events {
                            let key = e.key.clone().unwrap();
                            let i: u64 = std::str::from_utf8(e.value.as_deref().unwrap())
                                .unwrap()
                                .parse()
                                .unwrap();
                            assert_eq!(
                                fr.partition,
                                KeyHash::Crc32.partition(&key, 4),
                                "event {i}"
                            );
                            let shards = p.shared.intake.shards() as u64;
                            assert_eq!(hint, u64::from(crc32fast::hash(&key)) % shards);
                            assert_eq!(
                                e.headers[0].value.as_deref(),
                                Some(i.to_string().as_bytes())
                            );
                            if let Some(prev) = last_of_key.insert(key, i) {
                                assert!(prev < i, "{prev} after {i}");
                            }
                            seen[i as usize] = true;
                        }
                        fr.slots.delivered(fr.partition, Offset(offset), None, 0);
                        offset += 1;
                    }
                }
                Entry::One(_) => panic!("a call hands in chunks"),
            }
        }
        assert!(seen.iter().all(|s| *s));
        let results = f.await;
        assert_eq!(results.delivered(), 1_000);
        // Each packed event settled with its key's partition, at its place in its fragment.
        let mut place: std::collections::HashMap<i64, u32> = Default::default();
        for (i, r) in results.iter().enumerate() {
            let d = r.unwrap();
            if i % 10 >= 8 {
                assert_eq!(d.partition, -1);
                continue;
            }
            let key = records[i].key.as_deref().unwrap();
            assert_eq!(d.partition, KeyHash::Crc32.partition(key, 4));
            let next = place.entry(d.offset.0).or_default();
            assert_eq!(d.index, Some(*next), "event {i}");
            *next += 1;
        }
        p.close().await;
    }

    /// A fragment that fails hands every event its own record back, as it was handed in.
    #[tokio::test]
    async fn a_failed_fragment_hands_each_event_its_record() {
        let p = unconnected_shaped(400, Shape::Packed);
        let topic: Topic = "t".into();
        p.shared.known.clone().unwrap().publish(&topic, 0, 2);
        let records: Vec<Record> = (0..50u64)
            .map(|i| {
                Record::new(Topic::clone(&topic), i.to_string())
                    .with_key(format!("k{}", i % 5))
                    .with_timestamp(kbatch_core::Timestamp(i as i64))
            })
            .collect();
        let (chunks, f) = p.chunks(records.clone(), SendOptions::default(), true);
        for (_, c) in chunks {
            match c {
                Entry::Packed(frags) => frags
                    .into_iter()
                    .for_each(|fr| Item::Packed(fr).refuse_closed()),
                other => panic!("keyed events of a known topic went alone: {other:?}"),
            }
        }
        let back: Vec<Record> = f
            .await
            .into_iter()
            .map(|r| r.unwrap_err().into_record().unwrap())
            .collect();
        assert_eq!(back, records);
        p.close().await;
    }

    /// The events of a chunk of events one by one.
    fn pendings(e: &Entry) -> &[Pending] {
        match e {
            Entry::Many(v) => v,
            other => panic!("not a chunk of events: {other:?}"),
        }
    }

    fn value(p: &Pending) -> u64 {
        std::str::from_utf8(p.record.value.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_call_larger_than_a_shard_goes_in_pieces_of_a_share_each_in_order() {
        let p = unconnected(64);
        let share = p.shared.intake.shard_capacity();
        let records: Vec<Record> = (0..1_000u64)
            .map(|i| Record::new("t", i.to_string()).with_key(format!("k{}", i % 3)))
            .collect();
        let (chunks, _f) = p.chunks(records.clone(), SendOptions::default(), true);
        assert!(
            chunks
                .iter()
                .all(|(_, c)| !pendings(c).is_empty() && c.events() <= share)
        );
        assert_eq!(chunks.iter().map(|(_, c)| c.events()).sum::<usize>(), 1_000);
        // Per shard, the pieces in the order they are pushed hold the events in call order.
        let mut last: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        for (hint, c) in &chunks {
            for e in pendings(c) {
                let v = value(e);
                if let Some(prev) = last.insert(*hint, v) {
                    assert!(prev < v, "shard {hint}: {prev} before {v}");
                }
            }
        }
        // One sequence without splitting (try_send_many_with: all or none) is one chunk.
        let (chunks, _f) = p.chunks(records, SendOptions::default().in_sequence(7), false);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].0, 7);
        assert!(pendings(&chunks[0].1).iter().map(value).eq(0..1_000));
        p.close().await;
    }
}
