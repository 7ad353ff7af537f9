//! Cuts microbatches: at `max_events` events, `max_bytes` bytes, or when an event has waited
//! as long as it may, whichever comes first.
//!
//! ```text
//!  push(key, item, bytes, budget, now) ──► open batch per key ──► Some(full batch)
//!  expired(now) ──► batches whose deadline has come          next_deadline() ──► timer
//! ```
//!
//! An event may wait `min(linger, its budget)`; a batch's deadline is the earliest of its
//! events'. Flushing at the deadline is what makes the budget a hard bound: no event waits in
//! a batch longer than its budget. A pure state machine: the caller passes the time in and
//! arms a timer for [`Batcher::next_deadline`].

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use rustc_hash::FxHasher;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::levels::BatchSettings;

/// Events room is made for when a batch opens (fewer when N is smaller).
const FIRST_CAPACITY: usize = 16_384;
/// Emptied batch vectors kept for reuse, at most.
const MAX_SPARE: usize = 8;

/// A batch that was cut.
#[derive(Debug)]
pub struct Flushed<K, E> {
    /// Which batch (a topic-partition when packing).
    pub key: K,
    /// Its items, in arrival order.
    pub items: Vec<E>,
    /// Events they stand for (see [`Batcher::push_items`]).
    pub events: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Why it was cut.
    pub cause: FlushCause,
}

/// Why a batch was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushCause {
    /// It held `max_events`.
    Full,
    /// It held `max_bytes`.
    Bytes,
    /// An event's wait reached its limit.
    Deadline,
    /// Asked for (close, flush, a settings change).
    Forced,
    /// The pipeline to the broker had room: nothing gained by waiting longer.
    PipelineFree,
}

#[derive(Debug)]
struct Open<E> {
    items: Vec<E>,
    events: usize,
    bytes: usize,
    deadline: Instant,
    /// Arrival of the first event: a shorter linger applies from here.
    first: Instant,
}

impl<E> Open<E> {
    /// Adds an event that may wait until `limit`; returns why the batch must be cut now, if
    /// it must.
    fn add(
        &mut self,
        item: E,
        events: usize,
        bytes: usize,
        limit: Instant,
        max_events: usize,
        max_bytes: usize,
    ) -> Option<FlushCause> {
        self.items.push(item);
        self.events += events;
        self.bytes += bytes;
        self.deadline = self.deadline.min(limit);
        if self.events >= max_events {
            Some(FlushCause::Full)
        } else if self.bytes >= max_bytes {
            Some(FlushCause::Bytes)
        } else {
            None
        }
    }
}

/// The batcher. `K` names a batch (topic-partition, or `()` for one batch), `E` is an event.
#[derive(Debug)]
pub struct Batcher<K, E> {
    settings: BatchSettings,
    max_bytes: usize,
    /// Looked up once per event: a fast hash, not SipHash (keys are ours, not an attacker's).
    open: HashMap<K, Open<E>, BuildHasherDefault<FxHasher>>,
    /// Emptied vectors of sent batches, already sized and with their pages touched: a fresh
    /// vector of thousands of events is a fresh mapping, and faulting its pages in was half
    /// of what `push` cost at saturation.
    spare: Vec<Vec<E>>,
}

impl<K: Hash + Eq + Clone, E> Batcher<K, E> {
    /// A batcher cutting at `settings`, and at `max_bytes` bytes.
    pub fn new(settings: BatchSettings, max_bytes: usize) -> Self {
        Self {
            settings,
            max_bytes: max_bytes.max(1),
            open: HashMap::default(),
            spare: Vec::new(),
        }
    }

    /// Takes back a sent batch's vector (emptied here) for a later batch; at most a few are
    /// kept.
    pub fn recycle(&mut self, mut items: Vec<E>) {
        items.clear();
        if self.spare.len() < MAX_SPARE && items.capacity() > 0 {
            self.spare.push(items);
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// Events held, all batches.
    pub fn len(&self) -> usize {
        self.open.values().map(|o| o.events).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds an event that arrived at `arrived` and may wait at most `budget` (measured from its
    /// arrival). Returns the batch when this event filled it.
    pub fn push(
        &mut self,
        key: K,
        item: E,
        bytes: usize,
        arrived: Instant,
        budget: Duration,
    ) -> Option<Flushed<K, E>> {
        self.push_items(key, item, 1, bytes, arrived, budget)
    }

    /// As [`push`](Self::push), for an item that stands for `events` events (a piece of many
    /// events encoded together, which counts toward `max_events` as that many): the batch is
    /// cut once it holds at least `max_events`, so it may hold up to one item's events more.
    pub fn push_items(
        &mut self,
        key: K,
        item: E,
        events: usize,
        bytes: usize,
        arrived: Instant,
        budget: Duration,
    ) -> Option<Flushed<K, E>> {
        let limit = arrived + self.settings.linger.min(budget);
        let (max_events, max_bytes) = (self.settings.max_events as usize, self.max_bytes);
        // The common case, one lookup: an open batch with room for this event's bytes (two
        // lookups an event, one to check the cap and one to push, were 4 % of a packed
        // producer's profile at saturation).
        if let Some(o) = self.open.get_mut(&key)
            && (o.items.is_empty() || o.bytes + bytes <= max_bytes)
        {
            return o
                .add(item, events, bytes, limit, max_events, max_bytes)
                .and_then(|c| self.take(&key, c));
        }
        // A batch that cannot take this event's bytes goes first, so no batch exceeds the cap
        // (an event larger than the cap travels alone).
        let mut over = None;
        if let Some(o) = self.open.get(&key)
            && !o.items.is_empty()
            && o.bytes + bytes > max_bytes
        {
            over = self.take(&key, FlushCause::Bytes);
        }
        let first_capacity = max_events.min(FIRST_CAPACITY);
        let spare = &mut self.spare;
        let o = self.open.entry(key.clone()).or_insert_with(|| Open {
            // Sized for the batch up front: growing a batch of thousands of events by
            // doubling copied them again and again (a third of the driver's time).
            items: match spare.pop() {
                Some(mut v) => {
                    v.reserve(first_capacity);
                    v
                }
                None => Vec::with_capacity(first_capacity),
            },
            events: 0,
            bytes: 0,
            deadline: limit,
            first: arrived,
        });
        let cause = o.add(item, events, bytes, limit, max_events, max_bytes);
        match (over, cause) {
            // The event that filled the byte cap after a cut: it may not wait either; the
            // caller gets the first batch now and this one on its next `expired` check.
            (Some(first), Some(_)) => {
                if let Some(o) = self.open.get_mut(&key) {
                    o.deadline = arrived;
                }
                Some(first)
            }
            (Some(first), None) => Some(first),
            (None, Some(cause)) => self.take(&key, cause),
            (None, None) => None,
        }
    }

    /// Cuts every batch whose deadline is at or before `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Flushed<K, E>> {
        let due: Vec<K> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| self.take(&k, FlushCause::Deadline))
            .collect()
    }

    /// The earliest deadline of any batch.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|o| o.deadline).min()
    }

    /// Cuts every batch.
    pub fn drain(&mut self) -> Vec<Flushed<K, E>> {
        self.cut_all(FlushCause::Forced)
    }

    /// Cuts every batch because the pipeline has room for them.
    pub fn pipeline_free(&mut self) -> Vec<Flushed<K, E>> {
        self.cut_all(FlushCause::PipelineFree)
    }

    fn cut_all(&mut self, cause: FlushCause) -> Vec<Flushed<K, E>> {
        let keys: Vec<K> = self.open.keys().cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.take(&k, cause))
            .collect()
    }

    /// Changes the settings: open batches get the new, possibly shorter, linger from their
    /// first event (never a longer one), and those now full are cut.
    pub fn set_settings(&mut self, settings: BatchSettings) -> Vec<Flushed<K, E>> {
        self.settings = settings;
        let mut full = Vec::new();
        for o in self.open.values_mut() {
            o.deadline = o.deadline.min(o.first + settings.linger);
        }
        let keys: Vec<K> = self
            .open
            .iter()
            .filter(|(_, o)| o.events >= settings.max_events as usize)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            full.extend(self.take(&k, FlushCause::Full));
        }
        full
    }

    fn take(&mut self, key: &K, cause: FlushCause) -> Option<Flushed<K, E>> {
        let (key, o) = self.open.remove_entry(key)?;
        Some(Flushed {
            key,
            items: o.items,
            events: o.events,
            bytes: o.bytes,
            cause,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn settings(n: u32, ms: u64) -> BatchSettings {
        BatchSettings {
            max_events: n,
            linger: Duration::from_millis(ms),
        }
    }

    #[test]
    fn cuts_at_n_events_at_the_byte_cap_and_at_the_linger() {
        let t0 = Instant::now();
        let mut b = Batcher::new(settings(3, 10), 1_000);
        let big = Duration::from_secs(1);
        assert!(b.push(0, 'a', 10, t0, big).is_none());
        assert!(b.push(0, 'b', 10, t0, big).is_none());
        let f = b.push(0, 'c', 10, t0, big).expect("full at 3");
        assert_eq!((f.items, f.cause), (vec!['a', 'b', 'c'], FlushCause::Full));

        assert!(b.push(1, 'd', 600, t0, big).is_none());
        let f = b.push(1, 'e', 600, t0, big).expect("over the byte cap");
        assert_eq!((f.items, f.cause), (vec!['d'], FlushCause::Bytes));

        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(b.expired(t0 + Duration::from_millis(9)).is_empty());
        let f = b.expired(t0 + Duration::from_millis(10));
        assert_eq!(f.len(), 1);
        assert_eq!(
            (&f[0].items, f[0].cause),
            (&vec!['e'], FlushCause::Deadline)
        );
        assert!(b.is_empty());
    }

    #[test]
    fn an_item_of_many_events_counts_as_that_many() {
        let t0 = Instant::now();
        let big = Duration::from_secs(1);
        let mut b = Batcher::new(settings(5, 10), 1_000);
        assert!(b.push_items(0, 'a', 3, 30, t0, big).is_none());
        assert!(b.push(0, 'b', 10, t0, big).is_none());
        assert_eq!(b.len(), 4);
        let f = b.push_items(0, 'c', 3, 30, t0, big).expect("full past 5");
        assert_eq!(
            (f.items, f.events, f.bytes, f.cause),
            (vec!['a', 'b', 'c'], 7, 70, FlushCause::Full)
        );
        // A smaller N cuts a batch whose items add up to it.
        assert!(b.push_items(1, 'd', 3, 30, t0, big).is_none());
        let f = b.set_settings(settings(3, 10));
        assert_eq!((f.len(), f[0].events), (1, 3));
    }

    #[test]
    fn a_recycled_vector_carries_the_next_batch() {
        let t0 = Instant::now();
        let big = Duration::from_secs(1);
        let mut b = Batcher::new(settings(2, 10), 1_000);
        b.push(0, 'a', 1, t0, big);
        let f = b.push(0, 'b', 1, t0, big).expect("full at 2");
        let storage = f.items.as_ptr();
        b.recycle(f.items);
        b.push(7, 'c', 1, t0, big);
        let f = b.push(7, 'd', 1, t0, big).expect("full at 2");
        assert_eq!(f.items, vec!['c', 'd'], "emptied before reuse");
        assert_eq!(f.items.as_ptr(), storage, "the recycled vector was reused");
    }

    #[test]
    fn a_short_budget_pulls_the_batch_deadline_in() {
        let t0 = Instant::now();
        let mut b = Batcher::new(settings(100, 50), 1 << 20);
        b.push((), 1, 1, t0, Duration::from_secs(1));
        b.push(
            (),
            2,
            1,
            t0 + Duration::from_millis(5),
            Duration::from_millis(2),
        );
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(7)));
    }

    #[test]
    fn a_shorter_linger_applies_to_open_batches_and_a_smaller_n_cuts_them() {
        let t0 = Instant::now();
        let mut b = Batcher::new(settings(100, 50), 1 << 20);
        for i in 0..10 {
            b.push(0, i, 1, t0, Duration::from_secs(1));
        }
        b.push(1, 0, 1, t0, Duration::from_secs(1));
        let cut = b.set_settings(settings(5, 4));
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].items.len(), 10);
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(4)));
    }

    /// An arrival pattern: gaps between events, their budgets, their sizes and batch keys.
    /// An event in the property test: its index, arrival and budget.
    type Ev = (usize, Instant, Duration);

    fn arrivals() -> impl Strategy<Value = Vec<(u64, u64, usize, u8)>> {
        prop::collection::vec((0u64..20_000, 0u64..100_000, 1usize..2_000, 0u8..4), 1..300)
    }

    proptest! {
        /// Over random arrivals, budgets, sizes, settings and settings changes, driven the way
        /// the driver does it (cut what expired, then push; wake at the next deadline), no
        /// event waits longer than its budget nor the linger in force when it arrived, and
        /// every event comes out exactly once, in order per key.
        #[test]
        fn no_event_waits_longer_than_its_budget(
            events in arrivals(),
            n in 1u32..50,
            linger_us in 0u64..50_000,
            change_at in 0usize..300,
            n2 in 1u32..50,
            linger2_us in 0u64..50_000,
            max_bytes in 1usize..20_000,
        ) {
            let t0 = Instant::now();
            let mut b: Batcher<u8, Ev> =
                Batcher::new(settings(n, 0), max_bytes);
            b.set_settings(BatchSettings { max_events: n, linger: Duration::from_micros(linger_us) });
            let mut out: Vec<(Instant, Flushed<u8, Ev>)> = Vec::new();
            let mut now = t0;
            for (i, &(gap, budget, bytes, key)) in events.iter().enumerate() {
                let arrive = now + Duration::from_micros(gap);
                // Wake at every deadline before the next arrival, as the driver's timer does.
                while let Some(d) = b.next_deadline() {
                    if d > arrive { break; }
                    now = now.max(d);
                    for f in b.expired(now) { out.push((now, f)); }
                }
                now = arrive;
                if i == change_at {
                    for f in b.set_settings(BatchSettings {
                        max_events: n2,
                        linger: Duration::from_micros(linger2_us),
                    }) {
                        out.push((now, f));
                    }
                }
                for f in b.expired(now) { out.push((now, f)); }
                let budget = Duration::from_micros(budget);
                if let Some(f) = b.push(key, (i, arrive, budget), bytes, arrive, budget) {
                    out.push((now, f));
                }
            }
            while let Some(d) = b.next_deadline() {
                now = now.max(d);
                for f in b.expired(now) { out.push((now, f)); }
            }
            prop_assert!(b.is_empty());
            let mut seen = vec![false; events.len()];
            let mut last_per_key = [None::<usize>; 4];
            for (at, f) in &out {
                prop_assert!(f.items.len() <= n.max(n2) as usize);
                for &(i, arrived, budget) in &f.items {
                    let waited = at.duration_since(arrived);
                    prop_assert!(waited <= budget, "event {} waited {:?} > budget {:?}", i, waited, budget);
                    let linger = Duration::from_micros(linger_us.max(linger2_us));
                    prop_assert!(waited <= linger, "event {} waited {:?} > linger {:?}", i, waited, linger);
                    prop_assert!(!seen[i], "event {} twice", i);
                    seen[i] = true;
                    let k = events[i].3 as usize;
                    prop_assert!(last_per_key[k].is_none_or(|l| l < i), "key {} out of order", k);
                    last_per_key[k] = Some(i);
                }
            }
            prop_assert!(seen.iter().all(|s| *s));
        }
    }
}
