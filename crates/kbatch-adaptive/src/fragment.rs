//! Pieces of envelopes encoded where a packed `send_many` call hands its events in (single
//! `send`s share open pieces of the same kind: see [`crate::open`]).
//!
//! ```text
//!  send_many(records) ──► keyed events of a topic the driver knows ──► Fragment per (shard, partition)
//!                     └─► the rest (keyless, explicit partition, topic not known yet) ──► Pending each
//!  driver: batcher item = Item::Event(Pending) | Item::Packed(Fragment) ──► one envelope per partition
//!          (per event: Item::Event | Item::Events(a call's chunk) ──► the sender task, in order)
//! ```
//!
//! A packed producer's driver task did all of a call's per-event work on one core: take each
//! event from the intake, find its partition, put it in its batch, encode it, and settle it
//! when its envelope came back. A call's caller knows as much as the driver about a keyed
//! event once the driver has published its topic's partition count (the partition is the
//! key's hash, the same function the driver uses): so it encodes the events of each partition
//! into a [`Fragment`] itself, and the driver handles a fragment as one item — one batcher
//! push, one copy into the envelope, one settlement under one lock.
//!
//! Order: a fragment holds the events of one intake shard and one partition in call order,
//! and goes through that shard like the events it replaces, so each key's order holds as if
//! they went one by one (a key takes one way per call; across calls, its shard's order).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use kbatch_core::envelope::{self, EnvelopeWriter};
use kbatch_core::{Record, Topic};
use rustc_hash::FxHasher;

use crate::error::AdaptiveError;
use crate::partitioner::KeyHash;
use crate::producer::Pending;
use crate::reply::{Call, Slots};

/// Events of one call, one intake shard and one partition, encoded as a piece of an envelope.
#[derive(Debug)]
pub(crate) struct Fragment {
    pub(crate) topic: Topic,
    /// The topic's id in the driver's [`Topics`](crate::topics::Topics).
    pub(crate) topic_id: u32,
    pub(crate) partition: i32,
    /// The events, in call order.
    pub(crate) events: EnvelopeWriter,
    /// Their places in the call, in the same order.
    pub(crate) slots: Slots,
    pub(crate) arrived: Instant,
    /// The most its events may wait in a batch.
    pub(crate) budget: Duration,
}

impl Fragment {
    /// Events it holds.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Settles the `j`-th event with `error(j, its record)`, for every `j`.
    pub(crate) fn fail(self, mut error: impl FnMut(usize, Record) -> AdaptiveError) {
        let (records, slots) = self.take();
        let mut records = records.into_iter();
        slots.fail(|j| match records.next() {
            Some(r) => error(j, r),
            None => AdaptiveError::Closed { record: None },
        });
    }

    /// The records, in order; their slots settle as `Closed` (for a caller that gets the
    /// records back instead).
    pub(crate) fn into_records(self) -> Vec<Record> {
        self.take().0
    }

    /// The records decoded back from the fragment (topic and key as handed in, no explicit
    /// partition, as every event packed here was), and the slots.
    fn take(self) -> (Vec<Record>, Slots) {
        let topic = self.topic;
        let records = match envelope::decode(&self.events.finish()) {
            Ok(events) => events
                .into_iter()
                .map(|e| Record {
                    topic: Topic::clone(&topic),
                    partition: None,
                    key: e.key,
                    value: e.value,
                    headers: e.headers,
                    timestamp: e.timestamp,
                })
                .collect(),
            // Not reached (these are bytes the writer just encoded); were it, the slots
            // settle as `Closed` without their records.
            Err(e) => {
                tracing::error!("a fragment did not decode: {e}");
                Vec::new()
            }
        };
        (records, self.slots)
    }
}

/// What a batch holds: events handed in one by one, and — per event — the chunks of
/// `send_many` calls, packed — their fragments, each batched as one item.
#[derive(Debug)]
pub(crate) enum Item {
    Event(Pending),
    /// Per event, a chunk of one call (one intake shard's, one arrival and budget): the sender
    /// task hands its events to the client in order, so pushing each into the batch on its own
    /// only moved it once more.
    Events(Vec<Pending>),
    Packed(Fragment),
}

impl Item {
    /// Events it stands for.
    pub(crate) fn events(&self) -> usize {
        match self {
            Item::Event(_) => 1,
            Item::Events(v) => v.len(),
            Item::Packed(f) => f.len(),
        }
    }

    pub(crate) fn arrived(&self) -> Instant {
        match self {
            Item::Event(p) => p.arrived,
            // A chunk's events arrived together (one clock read per call).
            Item::Events(v) => v.first().map_or_else(Instant::now, |p| p.arrived),
            Item::Packed(f) => f.arrived,
        }
    }

    pub(crate) fn budget(&self) -> Duration {
        match self {
            Item::Event(p) => p.budget,
            Item::Events(v) => v.first().map_or(Duration::MAX, |p| p.budget),
            Item::Packed(f) => f.budget,
        }
    }

    /// Its events one by one (one, or a chunk's), or the fragment it is.
    pub(crate) fn into_pending(self) -> Result<PendingIter, Fragment> {
        match self {
            Item::Event(p) => Ok(Some(p).into_iter().chain(Vec::new())),
            Item::Events(v) => Ok(None.into_iter().chain(v)),
            Item::Packed(f) => Err(f),
        }
    }

    /// Its events one by one, borrowed; none for a fragment.
    pub(crate) fn pending(&self) -> &[Pending] {
        match self {
            Item::Event(p) => std::slice::from_ref(p),
            Item::Events(v) => v,
            Item::Packed(_) => &[],
        }
    }

    /// Settles its events as not sent because the producer closed, each with its record.
    pub(crate) fn refuse_closed(self) {
        let closed = |r: Record| AdaptiveError::Closed {
            record: Some(Box::new(r)),
        };
        match self.into_pending() {
            Ok(events) => events.for_each(|p| p.reply.send(Err(closed(p.record)))),
            Err(f) => f.fail(|_, r| closed(r)),
        }
    }
}

/// An item's events by value: one (`Some`) or a chunk's (the vector); no allocation for one.
pub(crate) type PendingIter =
    std::iter::Chain<std::option::IntoIter<Pending>, std::vec::IntoIter<Pending>>;

/// Appends `r`'s event to an envelope.
pub(crate) fn push_record(w: &mut EnvelopeWriter, r: &Record) {
    w.push(
        r.key.as_deref(),
        r.value.as_deref(),
        &r.headers,
        r.timestamp,
    );
}

/// About the bytes `r` takes in an envelope (at most [`ENVELOPE_OVERHEAD`] past its payload).
pub(crate) fn packed_size(r: &Record) -> usize {
    r.size_hint() + ENVELOPE_OVERHEAD
}

/// Partition counts the packed driver has learned, published for the callers that encode
/// fragments.
#[derive(Debug)]
pub(crate) struct Known {
    pub(crate) key_hash: KeyHash,
    /// The largest envelope (bytes); a fragment stays under it.
    pub(crate) max_bytes: usize,
    /// Topic → its id in the driver's topics and its partition count.
    topics: RwLock<HashMap<Topic, (u32, i32), BuildHasherDefault<FxHasher>>>,
}

impl Known {
    pub(crate) fn new(key_hash: KeyHash, max_bytes: usize) -> Self {
        Self {
            key_hash,
            max_bytes,
            topics: RwLock::default(),
        }
    }

    /// The driver learned `topic`'s partition count: from now on its keyed events are
    /// packed where they are handed in.
    pub(crate) fn publish(&self, topic: &Topic, id: u32, partitions: i32) {
        self.topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(Topic::clone(topic), (id, partitions));
    }

    /// `topic`'s id and partition count, once published.
    pub(crate) fn get(&self, topic: &Topic) -> Option<(u32, i32)> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .copied()
    }
}

/// Per-event bytes an envelope adds beyond key, value and headers, at most (lengths, flags,
/// time): what a fragment's buffer is sized with.
pub(crate) const ENVELOPE_OVERHEAD: usize = 24;

/// Builds one call's fragments: [`place`](Self::place) every record first (so each fragment
/// is allocated once at its size), then [`add`](Self::add) them in call order.
pub(crate) struct Packer<'a> {
    known: &'a Known,
    /// The call, its arrival and its events' budget.
    call: &'a Call,
    arrived: Instant,
    budget: Duration,
    /// Intake shards the call's events are spread over.
    groups: usize,
    /// Most events in a fragment, and in one intake entry of fragments.
    piece: usize,
    /// The call's topics.
    topics: Vec<CallTopic>,
    /// The topic looked up last (a call's records mostly share one).
    last: usize,
    slots: Vec<Slot>,
    /// Per shard: fragments filled and not handed on yet, and their events.
    done: Vec<(Vec<Fragment>, usize)>,
}

/// A topic of the call.
struct CallTopic {
    topic: Topic,
    /// Its id and partition count, once published.
    known: Option<(u32, i32)>,
    /// Its slots by shard and partition: 0 for none yet, else a slot's index + 1.
    table: Vec<u32>,
}

/// The events of one (topic, shard, partition) of the call.
struct Slot {
    group: usize,
    topic: Topic,
    topic_id: u32,
    partition: i32,
    /// Events placed and not added yet, and (about) their bytes.
    events_left: usize,
    bytes_left: usize,
    open: Option<Fragment>,
}

impl<'a> Packer<'a> {
    pub(crate) fn new(
        known: &'a Known,
        call: &'a Call,
        arrived: Instant,
        budget: Duration,
        groups: usize,
        piece: usize,
    ) -> Self {
        Self {
            known,
            call,
            arrived,
            budget,
            groups,
            piece: piece.max(1),
            topics: Vec::new(),
            last: 0,
            slots: Vec::new(),
            done: (0..groups).map(|_| (Vec::new(), 0)).collect(),
        }
    }

    /// The slot of `r`, going to intake shard `group`, when it is packed here: keyed, no
    /// explicit partition, and its topic's partition count published.
    pub(crate) fn place(
        &mut self,
        r: &Record,
        key_crc: Option<u32>,
        group: usize,
    ) -> Option<usize> {
        let (Some(key), Some(crc), None) = (r.key.as_deref(), key_crc, r.partition) else {
            return None;
        };
        let t = self.topic(&r.topic);
        let (id, partitions) = self.topics[t].known?;
        let partition = self.known.key_hash.partition_with_crc(key, crc, partitions);
        let at = group * partitions as usize + partition as usize;
        let slot = match self.topics[t].table[at] {
            0 => {
                self.slots.push(Slot {
                    group,
                    topic: Topic::clone(&self.topics[t].topic),
                    topic_id: id,
                    partition,
                    events_left: 0,
                    bytes_left: 0,
                    open: None,
                });
                self.topics[t].table[at] = self.slots.len() as u32;
                self.slots.len() - 1
            }
            s => s as usize - 1,
        };
        let s = &mut self.slots[slot];
        s.events_left += 1;
        s.bytes_left += packed_size(r);
        Some(slot)
    }

    /// The index of `topic` among the call's topics, looked up in the published ones when new.
    fn topic(&mut self, topic: &Topic) -> usize {
        if let Some(t) = self.topics.get(self.last)
            && std::sync::Arc::ptr_eq(&t.topic, topic)
        {
            return self.last;
        }
        let t = match self.topics.iter().position(|t| t.topic == *topic) {
            Some(t) => t,
            None => {
                let known = self.known.get(topic);
                self.topics.push(CallTopic {
                    topic: Topic::clone(topic),
                    known,
                    table: known.map_or(Vec::new(), |(_, n)| {
                        vec![0; self.groups * n.max(0) as usize]
                    }),
                });
                self.topics.len() - 1
            }
        };
        self.last = t;
        t
    }

    /// Encodes `r`, event `i` of the call, into its slot's fragment; `emit` gets every entry
    /// of fragments (a shard, and at most `piece` events) as it is complete.
    pub(crate) fn add(
        &mut self,
        slot: usize,
        r: Record,
        i: u32,
        emit: &mut impl FnMut(usize, Vec<Fragment>),
    ) {
        let (max_bytes, piece) = (self.known.max_bytes, self.piece);
        let (call, arrived, budget) = (self.call, self.arrived, self.budget);
        let s = &mut self.slots[slot];
        let size = packed_size(&r);
        // A fragment stays under the envelope's byte cap (one event larger than it travels
        // alone, as it would in the driver's batch).
        if let Some(f) = &s.open
            && !f.events.is_empty()
            && f.events.encoded_len() + size > max_bytes
            && let Some(full) = s.open.take()
        {
            Self::done(&mut self.done, s.group, full, piece, emit);
        }
        let f = s.open.get_or_insert_with(|| Fragment {
            topic: Topic::clone(&s.topic),
            topic_id: s.topic_id,
            partition: s.partition,
            events: EnvelopeWriter::with_capacity(s.bytes_left.min(max_bytes) + 16),
            slots: call.slots(s.events_left.min(piece)),
            arrived,
            budget,
        });
        push_record(&mut f.events, &r);
        f.slots.push(i);
        s.events_left -= 1;
        s.bytes_left = s.bytes_left.saturating_sub(size);
        if (f.len() >= piece || s.events_left == 0)
            && let Some(full) = s.open.take()
        {
            Self::done(&mut self.done, s.group, full, piece, emit);
        }
    }

    /// Hands every fragment not handed on yet to `emit`.
    pub(crate) fn finish(mut self, emit: &mut impl FnMut(usize, Vec<Fragment>)) {
        for s in &mut self.slots {
            if let Some(f) = s.open.take() {
                self.done[s.group].0.push(f);
            }
        }
        for (g, (frags, _)) in self.done.into_iter().enumerate() {
            if !frags.is_empty() {
                emit(g, frags);
            }
        }
    }

    /// Queues a filled fragment for its shard, handing the shard's queue on first if the
    /// two together would be more than a piece.
    fn done(
        done: &mut [(Vec<Fragment>, usize)],
        group: usize,
        f: Fragment,
        piece: usize,
        emit: &mut impl FnMut(usize, Vec<Fragment>),
    ) {
        let (frags, events) = &mut done[group];
        if *events > 0 && *events + f.len() > piece {
            emit(group, std::mem::take(frags));
            *events = 0;
        }
        *events += f.len();
        frags.push(f);
    }
}
