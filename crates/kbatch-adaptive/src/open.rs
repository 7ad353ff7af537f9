//! Single `send`s of a packed producer, encoded where they are handed in.
//!
//! ```text
//!  send(keyed event of a known topic) ──► shard of its key: lock, encode into the open piece of
//!                                          its partition, unlock ──► EventFuture
//!     shard's open pieces reach the level's N ──► sealed: into the intake queue of that shard
//!  any other push with an order hint into a shard holding open pieces ──► seals them first
//!  driver, each pass: lock each shard holding some ──► pop its queue, take its open pieces
//! ```
//!
//! A packed `send` used to pay the intake, the driver's partition lookup, a move into the
//! batch and an encode per event, all on the driver's one task (1.3–1.8 M events/s against a
//! BULK baseline of 4–7 M). Like a `send_many` call (see [`crate::fragment`]), the caller now
//! computes the partition and encodes the event into a piece of an envelope itself; single
//! sends from many tasks share one open piece per (intake shard, partition), so the driver
//! takes many events as one item.
//!
//! Order. A key's events go to its key's shard whichever way they take, and each shard keeps
//! this invariant: every event in its open pieces was handed in after every event in its
//! queue, among events one of which happened before the other. A push with an order hint
//! into a shard holding open pieces seals them into the queue first, under the shard's lock;
//! the driver takes open pieces only under that lock, right after popping the shard's queue.
//! A push that saw no open pieces and lands behind some added meanwhile raced with them:
//! those events have no order between them.
//!
//! Budget. A piece's deadline is its first event's arrival plus the level's linger (or the
//! budget, if shorter), as the batcher would set it; the driver sweeps open pieces on every
//! pass and, when it would park, wakes for the earliest deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use kbatch_core::envelope::EnvelopeWriter;
use kbatch_core::{Record, Topic};

use crate::error::AdaptiveError;
use crate::fragment::{Fragment, Known, packed_size, push_record};
use crate::intake::PushError;
use crate::producer::{Entry, Shared};
use crate::reply::{EventFuture, Slots};

/// The open pieces of every intake shard. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Open {
    shards: Box<[CachePadded<OpenShard>]>,
}

#[derive(Debug)]
struct OpenShard {
    state: Mutex<State>,
    /// Whether its open pieces hold events; written under the lock, read without it (by the
    /// driver, and by pushes that must seal open pieces first).
    held: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Open pieces, at most one per (topic, partition) that is not full, in the order opened.
    pieces: Vec<Fragment>,
    events: usize,
    /// When the driver must have taken the oldest piece.
    deadline: Option<Instant>,
    /// Most events held before they are sealed into the queue: the level's N when the first
    /// was added, at most the shard's share of the intake.
    seal_at: usize,
    /// Topics seen here: id and partition count, as the driver published them.
    topics: Vec<(Topic, u32, i32)>,
    /// Events ever added here: counted under the lock already held, where a shared counter
    /// was one more atomic per send (read by `stats`).
    added: u64,
}

/// What one attempt to encode an event into an open piece came to. The attempt borrows the
/// record (the piece keeps only its encoded bytes), so every outcome but `Packed` leaves it
/// with [`Open::send`], which hands it on: no variant carries it back.
enum Added {
    /// Encoded into an open piece: its future.
    Packed(EventFuture),
    /// Refused: the producer is closed.
    Closed,
    /// Not for an open piece (no key, an explicit partition, a topic the driver has not
    /// learned yet): the intake takes it as it is.
    Elsewhere,
    /// The pieces of this intake shard are full and the intake has no room for them: wait
    /// for room there ([`Open::send`] does).
    Full(usize),
}

impl Open {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| {
                    CachePadded::new(OpenShard {
                        state: Mutex::new(State::default()),
                        held: AtomicBool::new(false),
                    })
                })
                .collect(),
        }
    }

    /// Events ever added to open pieces.
    pub(crate) fn added(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().added).sum()
    }

    /// True when some shard holds open pieces (a snapshot).
    pub(crate) fn held(&self) -> bool {
        self.shards.iter().any(|s| s.held.load(Ordering::SeqCst))
    }

    /// The earliest deadline of the open pieces.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.shards
            .iter()
            .filter(|s| s.held.load(Ordering::SeqCst))
            .filter_map(|s| s.lock().deadline)
            .min()
    }

    /// Hands `record` in as part of an open piece, waiting while the shard's pieces are full
    /// and the intake has no room for them: its future, `Closed` with the record, or the
    /// record back when it is not for an open piece (see [`Added::Elsewhere`]). Most sends
    /// finish at the first, synchronous attempt.
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value, to go the intake's way"
    )]
    pub(crate) async fn send(
        &self,
        shared: &Shared,
        record: Record,
        budget: Duration,
    ) -> Result<Result<EventFuture, AdaptiveError>, Record> {
        loop {
            match self.add_now(shared, &record, budget) {
                Added::Packed(f) => return Ok(Ok(f)),
                Added::Closed => {
                    return Ok(Err(AdaptiveError::Closed {
                        record: Some(Box::new(record)),
                    }));
                }
                Added::Elsewhere => return Err(record),
                Added::Full(g) => self.wait_for_room(shared, g).await,
            }
        }
    }

    /// Encodes `record` into the open piece of its shard and partition, when it is keyed,
    /// has no explicit partition and its topic's partition count is published; `Full` when
    /// the shard's pieces are full and the intake has no room for them. Synchronous.
    fn add_now(&self, shared: &Shared, record: &Record, budget: Duration) -> Added {
        let (Some(known), Some(key), None) = (
            shared.known.as_deref(),
            record.key.as_deref(),
            record.partition,
        ) else {
            return Added::Elsewhere;
        };
        let crc = crc32fast::hash(key);
        let g = shared.intake.shard_of(u64::from(crc));
        self.try_add(shared, known, g, crc, record, budget)
    }

    /// One attempt of [`send`](Self::send) under shard `g`'s lock.
    fn try_add(
        &self,
        shared: &Shared,
        known: &Known,
        g: usize,
        crc: u32,
        record: &Record,
        budget: Duration,
    ) -> Added {
        let shard = &self.shards[g];
        let mut st = shard.lock();
        if shared.intake.is_closed() {
            return Added::Closed;
        }
        if st.events >= st.seal_at {
            match Self::seal(shared, shard, &mut st, u64::from(crc)) {
                Ok(()) => {}
                Err(Sealed::Full) => return Added::Full(g),
                Err(Sealed::Closed) => return Added::Closed,
            }
        }
        let (Some((id, partitions)), Some(key)) =
            (st.topic(known, &record.topic), record.key.as_deref())
        else {
            return Added::Elsewhere;
        };
        let partition = known.key_hash.partition_with_crc(key, crc, partitions);
        let size = packed_size(record);
        let first = st.events == 0;
        let max_bytes = known.max_bytes;
        let at = st.pieces.iter().rposition(|f| {
            f.topic_id == id
                && f.partition == partition
                && (f.events.is_empty() || f.events.encoded_len() + size <= max_bytes)
        });
        let piece = match at {
            Some(i) => &mut st.pieces[i],
            None => {
                // A clock read and the settings per piece, not per event: later events of
                // the piece arrived later, so its deadline holds for them too.
                let now = Instant::now();
                let (_, settings) = *shared
                    .decision
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if first {
                    st.seal_at = (settings.max_events as usize)
                        .min(shared.intake.shard_capacity())
                        .max(1);
                }
                let deadline = now + settings.linger.min(budget);
                st.deadline = Some(st.deadline.map_or(deadline, |d| d.min(deadline)));
                st.pieces.push(Fragment {
                    topic: Topic::clone(&record.topic),
                    topic_id: id,
                    partition,
                    events: EnvelopeWriter::with_capacity((size * 64).min(max_bytes) + 16),
                    slots: Slots::each(),
                    arrived: now,
                    budget,
                });
                let last = st.pieces.len() - 1;
                &mut st.pieces[last]
            }
        };
        push_record(&mut piece.events, record);
        let Some(f) = piece.slots.add_one() else {
            unreachable!("an open piece holds single sends' slots")
        };
        // An earlier event's budget may have been longer; its arrival is earlier anyway.
        piece.budget = piece.budget.min(budget);
        st.events += 1;
        st.added += 1;
        if first {
            // Only whether a shard holds any is read without the lock.
            shard.held.store(true, Ordering::SeqCst);
        }
        drop(st);
        if first {
            shared.intake.wake_driver();
        }
        Added::Packed(f)
    }

    /// Pushes `entry` (an item with an order hint) into its shard, sealing the shard's open
    /// pieces into the queue ahead of it first, waiting while the intake is full. Hands the
    /// entry back once closed.
    pub(crate) async fn push(
        &self,
        shared: &Shared,
        hint: u64,
        entry: Entry,
        events: usize,
    ) -> Result<(), Entry> {
        let g = shared.intake.shard_of(hint);
        let shard = &self.shards[g];
        let mut entry = entry;
        loop {
            if !shard.held.load(Ordering::SeqCst) {
                return shared.intake.push_many(Some(hint), entry, events).await;
            }
            match self.try_push(shared, hint, entry, events) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(e)) => return Err(e),
                Err(PushError::Full(e)) => {
                    entry = e;
                    self.wait_for_room(shared, g).await;
                }
            }
        }
    }

    /// As [`push`](Self::push), without waiting: a full intake hands the entry back.
    #[allow(
        clippy::result_large_err,
        reason = "the entry comes back by value, as the intake's own try_push hands it"
    )]
    pub(crate) fn try_push(
        &self,
        shared: &Shared,
        hint: u64,
        entry: Entry,
        events: usize,
    ) -> Result<(), PushError<Entry>> {
        let shard = &self.shards[shared.intake.shard_of(hint)];
        if !shard.held.load(Ordering::SeqCst) {
            return shared.intake.try_push_many(Some(hint), entry, events);
        }
        let mut st = shard.lock();
        match Self::seal(shared, shard, &mut st, hint) {
            Ok(()) => shared.intake.try_push_many(Some(hint), entry, events),
            Err(Sealed::Full) => Err(PushError::Full(entry)),
            Err(Sealed::Closed) => Err(PushError::Closed(entry)),
        }
    }

    /// Waits while shard `g`'s open pieces could not be sealed for want of room: it still
    /// holds some and its queue is not empty (an empty queue takes any item). Any pop of that
    /// queue after this registered wakes it, and the driver pops every queue it sees items in.
    async fn wait_for_room(&self, shared: &Shared, g: usize) {
        let shard = &self.shards[g];
        shared
            .intake
            .wait_for_room(|| shard.held.load(Ordering::SeqCst) && !shared.intake.shard_is_empty(g))
            .await;
    }

    /// Moves the shard's open pieces into its queue as one item (under its lock).
    fn seal(shared: &Shared, shard: &OpenShard, st: &mut State, hint: u64) -> Result<(), Sealed> {
        if st.events == 0 {
            return Ok(());
        }
        let pieces = std::mem::take(&mut st.pieces);
        match shared
            .intake
            .try_push_many(Some(hint), Entry::Packed(pieces), st.events)
        {
            Ok(()) => {
                st.events = 0;
                st.deadline = None;
                shard.held.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(PushError::Full(e) | PushError::Closed(e)) => {
                let closed = shared.intake.is_closed();
                if let Entry::Packed(pieces) = e {
                    st.pieces = pieces;
                }
                Err(if closed { Sealed::Closed } else { Sealed::Full })
            }
        }
    }

    /// The driver's pass: for each shard holding open pieces (every shard, with `all`), under
    /// its lock, moves its queue's items and then its open pieces (as one item) into `out`;
    /// returns the events they stand for.
    pub(crate) fn sweep(&self, shared: &Shared, out: &mut Vec<Entry>, all: bool) -> usize {
        let mut taken = 0;
        for (g, shard) in self.shards.iter().enumerate() {
            if !all && !shard.held.load(Ordering::SeqCst) {
                continue;
            }
            let mut st = shard.lock();
            if st.events == 0 {
                continue;
            }
            taken += shared.intake.pop_shard_into(g, out, Entry::events);
            taken += st.events;
            out.push(Entry::Packed(std::mem::take(&mut st.pieces)));
            st.events = 0;
            st.deadline = None;
            shard.held.store(false, Ordering::SeqCst);
        }
        taken
    }
}

/// Why open pieces could not be sealed into the queue.
enum Sealed {
    Full,
    Closed,
}

impl OpenShard {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// `topic`'s id and partition count, once the driver has published them.
    fn topic(&mut self, known: &Known, topic: &Topic) -> Option<(u32, i32)> {
        if let Some((_, id, n)) = self
            .topics
            .iter()
            .find(|(t, _, _)| std::sync::Arc::ptr_eq(t, topic) || t == topic)
        {
            return Some((*id, *n));
        }
        let (id, n) = known.get(topic)?;
        self.topics.push((Topic::clone(topic), id, n));
        Some((id, n))
    }
}
