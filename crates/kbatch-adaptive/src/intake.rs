//! The bounded intake: many tasks hand events to the one batcher task.
//!
//! ```text
//!  send() ─┐                     ┌─ shard 0 (ArrayQueue) ─┐
//!  send() ─┼─ shard by thread ──►├─ shard 1              ├──► driver: pop_into(buf) ──► batcher
//!  send() ─┘  full: wait / Full  └─ shard S-1            ┘    empty: park until pushed
//! ```
//!
//! Events that must stay in order (the same key, the same explicit partition) carry an order
//! hint and always go to the shard it names: each shard is FIFO, so their order holds. Events
//! without one go to their thread's shard, or any shard with room. Shards are lock-free and
//! bounded, so submitting threads rarely touch the same cache line. A full intake is
//! back-pressure: `push` waits on a notification and `try_push` hands the event back; nobody
//! spins. The driver parks when every shard is empty and is woken by the next push (one atomic
//! load per push while it runs).
//!
//! An item may stand for many events (a chunk of a `send_many` call: one hand-over instead of
//! one per event). The bound is in events, not items: each shard counts the events its chunks
//! stand for and refuses an item that would take it past its share of the capacity — except
//! into an empty shard, so an item larger than a shard's share still goes in, alone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

/// Why an event was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<E> {
    /// Every shard is full.
    Full(E),
    /// The intake was closed.
    Closed(E),
}

/// The intake. See the [module docs](self).
#[derive(Debug)]
pub struct Intake<E> {
    shards: Box<[Shard<E>]>,
    /// Submitters waiting for room.
    space: Notify,
    waiting: AtomicUsize,
    /// The driver, when parked.
    items: Notify,
    parked: AtomicBool,
    closed: AtomicBool,
}

/// One FIFO shard and the events its items stand for.
#[derive(Debug)]
struct Shard<E> {
    queue: ArrayQueue<E>,
    /// Events beyond one per item that its items stand for: the events held are
    /// `queue.len() + extra`. Only chunks write it, so submitters of single events only read
    /// it — a counter every push wrote was one more cache line fought over by the submitters
    /// and the driver (the bare hand-over took twice as long).
    extra: AtomicUsize,
    /// Most events held (the queue holds as many items), unless one item alone is larger.
    capacity: usize,
}

impl<E> Shard<E> {
    /// Takes `e`, standing for `events` (at least one), when there is room. Racing
    /// submitters may take the shard past its capacity by one event each, no more.
    fn push(&self, e: E, events: usize) -> Result<(), E> {
        let more = events.saturating_sub(1);
        if more == 0 {
            // One event: the queue's own bound, plus the chunks' events when there are any.
            let extra = self.extra.load(Ordering::Acquire);
            if extra > 0 && extra + self.queue.len() >= self.capacity {
                return Err(e);
            }
            return self.queue.push(e);
        }
        let before = self.extra.fetch_add(more, Ordering::AcqRel);
        let held = before + self.queue.len();
        if held > 0 && held + events > self.capacity {
            self.extra.fetch_sub(more, Ordering::AcqRel);
            return Err(e);
        }
        self.queue.push(e).inspect_err(|_| {
            self.extra.fetch_sub(more, Ordering::AcqRel);
        })
    }

    /// Events held (a snapshot).
    fn held(&self) -> usize {
        self.queue.len() + self.extra.load(Ordering::Acquire)
    }

    /// Moves the oldest item into `out`; the events it stands for (`None`: empty).
    fn pop_into(&self, out: &mut Vec<E>, events: &impl Fn(&E) -> usize) -> Option<usize> {
        let e = self.queue.pop()?;
        let n = events(&e);
        if n > 1 {
            self.extra.fetch_sub(n - 1, Ordering::AcqRel);
        }
        out.push(e);
        Some(n)
    }
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

impl<E> Intake<E> {
    /// An intake holding at most `capacity` events (at least one per shard) in `shards` shards.
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.clamp(1, capacity.max(1));
        let per = capacity.max(1).div_ceil(shards);
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    queue: ArrayQueue::new(per),
                    extra: AtomicUsize::new(0),
                    capacity: per,
                })
                .collect(),
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
            items: Notify::new(),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// Events it can hold.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.capacity).sum()
    }

    /// Events held now (a snapshot).
    pub fn len(&self) -> usize {
        self.shards.iter().map(Shard::held).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.queue.is_empty())
    }

    /// Events one shard holds (its share of the capacity).
    pub fn shard_capacity(&self) -> usize {
        self.shards.first().map_or(0, |s| s.capacity)
    }

    /// Shards: an order hint `h` names shard `h % shards()`.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard events without an order hint go to first from this thread.
    pub fn home_shard(&self) -> usize {
        THREAD_INDEX.with(|i| *i) % self.shards.len()
    }

    /// Hands `e` in without waiting. Events with the same `order` hint come out in the order
    /// they went in; events without one may overtake each other.
    pub fn try_push(&self, order: Option<u64>, e: E) -> Result<(), PushError<E>> {
        self.try_push_many(order, e, 1)
    }

    /// As [`try_push`](Self::try_push), for an item standing for `events` events (counted
    /// against the capacity as that many).
    pub fn try_push_many(
        &self,
        order: Option<u64>,
        e: E,
        events: usize,
    ) -> Result<(), PushError<E>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(e));
        }
        let n = self.shards.len();
        if let Some(h) = order {
            return match self.shards[(h % n as u64) as usize].push(e, events) {
                Ok(()) => {
                    self.wake_driver();
                    Ok(())
                }
                Err(e) => Err(PushError::Full(e)),
            };
        }
        let home = self.home_shard();
        let mut e = e;
        for k in 0..n {
            match self.shards[(home + k) % n].push(e, events) {
                Ok(()) => {
                    self.wake_driver();
                    return Ok(());
                }
                Err(back) => e = back,
            }
        }
        Err(PushError::Full(e))
    }

    /// Hands `e` in, waiting while the intake is full. Fails (handing `e` back) once closed.
    ///
    /// # Cancellation
    /// Dropping the future while it waits drops `e`; it was not handed in.
    pub async fn push(&self, order: Option<u64>, e: E) -> Result<(), E> {
        self.push_many(order, e, 1).await
    }

    /// As [`push`](Self::push), for an item standing for `events` events.
    ///
    /// # Cancellation
    /// As [`push`](Self::push).
    pub async fn push_many(&self, order: Option<u64>, e: E, events: usize) -> Result<(), E> {
        let mut e = match self.try_push_many(order, e, events) {
            Ok(()) => return Ok(()),
            Err(PushError::Closed(e)) => return Err(e),
            Err(PushError::Full(e)) => e,
        };
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let retry = self.try_push_many(order, e, events);
            match retry {
                Ok(()) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Ok(());
                }
                Err(PushError::Closed(back)) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(back);
                }
                Err(PushError::Full(back)) => e = back,
            }
            notified.await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// True when shard `shard` holds nothing (a snapshot): an empty shard takes any item.
    pub fn shard_is_empty(&self, shard: usize) -> bool {
        self.shards[shard].queue.is_empty()
    }

    /// The shard an order hint names.
    pub fn shard_of(&self, order: u64) -> usize {
        (order % self.shards.len() as u64) as usize
    }

    /// Waits until items may have been taken out (room may have been made), or the intake
    /// is closed, while `full()` says the caller still cannot go on: for a submitter that
    /// found it full while it could not wait inside a push.
    ///
    /// Registers before it checks, so a pop between the check and the wait still wakes it;
    /// `full()` must turn false by itself for any room made before it registered.
    pub async fn wait_for_room(&self, full: impl Fn() -> bool) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if full() && !self.closed.load(Ordering::SeqCst) {
            notified.await;
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the driver if it is parked (for items held outside the queues: see
    /// [`wait_for_items_or`](Self::wait_for_items_or)).
    pub fn wake_driver(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.items.notify_one();
        }
    }

    /// Moves up to `max` items into `out`, oldest of each shard first; returns how many.
    /// Wakes submitters waiting for room. For items that each stand for one event.
    pub fn pop_into(&self, out: &mut Vec<E>, max: usize) -> usize {
        self.pop_events_into(out, max, |_| 1)
    }

    /// Moves items into `out`, oldest of each shard first, until they stand for `max` events
    /// or more (`events` tells what an item stands for, as it was pushed); returns how many
    /// events. Wakes submitters waiting for room.
    pub fn pop_events_into(
        &self,
        out: &mut Vec<E>,
        max: usize,
        events: impl Fn(&E) -> usize,
    ) -> usize {
        let mut taken = 0;
        // Round-robin over the shards so one busy thread cannot starve the others.
        'outer: while taken < max {
            let before = taken;
            for s in self.shards.iter() {
                if taken >= max {
                    break 'outer;
                }
                if let Some(n) = s.pop_into(out, &events) {
                    taken += n;
                }
            }
            if taken == before {
                break;
            }
        }
        self.freed(taken);
        taken
    }

    /// Moves every item of shard `shard` into `out`, oldest first; returns how many events
    /// they stand for. Wakes submitters waiting for room.
    pub fn pop_shard_into(
        &self,
        shard: usize,
        out: &mut Vec<E>,
        events: impl Fn(&E) -> usize,
    ) -> usize {
        let s = &self.shards[shard];
        let mut taken = 0;
        while let Some(n) = s.pop_into(out, &events) {
            taken += n;
        }
        self.freed(taken);
        taken
    }

    /// Wakes submitters waiting for room once `taken` events left.
    fn freed(&self, taken: usize) {
        if taken > 0 && self.waiting.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// Waits until an event may have been pushed or the intake is closed. Returns at once when
    /// something is already there.
    pub async fn wait_for_items(&self) {
        self.wait_for_items_or(|| false).await;
    }

    /// As [`wait_for_items`](Self::wait_for_items), and returns at once when `held()` says
    /// items are held elsewhere. Whoever puts items there and then calls
    /// [`wake_driver`](Self::wake_driver) wakes this wait: `held()` is read after the driver
    /// marks itself parked (both sequentially consistent), so either it sees the items or
    /// their owner sees it parked.
    pub async fn wait_for_items_or(&self, held: impl Fn() -> bool) {
        self.parked.store(true, Ordering::SeqCst);
        if !self.is_empty() || held() || self.closed.load(Ordering::SeqCst) {
            self.parked.store(false, Ordering::SeqCst);
            return;
        }
        self.items.notified().await;
    }

    /// Refuses further events and wakes everyone: waiting submitters get their event back,
    /// the driver drains what is held.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.space.notify_waiters();
        self.parked.store(false, Ordering::SeqCst);
        self.items.notify_one();
    }

    /// Submitters waiting for room now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_hands_back_when_full_or_closed() {
        let q = Intake::new(4, 2);
        for i in 0..4 {
            q.try_push(None, i).unwrap();
        }
        assert_eq!(q.try_push(None, 9), Err(PushError::Full(9)));
        assert_eq!(q.try_push(Some(1), 9), Err(PushError::Full(9)));
        let mut out = Vec::new();
        assert_eq!(q.pop_into(&mut out, 10), 4);
        out.sort_unstable();
        assert_eq!(out, [0, 1, 2, 3]);
        q.close();
        assert_eq!(q.try_push(None, 5), Err(PushError::Closed(5)));
    }

    #[test]
    fn an_item_counts_as_the_events_it_stands_for() {
        // Two shards of 4 events each; items are (name, events).
        let q = Intake::new(8, 2);
        q.try_push_many(Some(0), ("a", 3), 3).unwrap();
        assert_eq!(
            q.try_push_many(Some(0), ("b", 2), 2),
            Err(PushError::Full(("b", 2))),
            "3 + 2 events exceed the shard's 4"
        );
        q.try_push(Some(0), ("c", 1)).unwrap();
        assert_eq!(
            q.try_push(Some(0), ("d", 1)),
            Err(PushError::Full(("d", 1)))
        );
        assert_eq!(q.len(), 4);
        // An item larger than a shard's share goes into an empty shard, alone.
        q.try_push_many(Some(1), ("big", 10), 10).unwrap();
        assert_eq!(
            q.try_push(Some(1), ("e", 1)),
            Err(PushError::Full(("e", 1)))
        );
        assert_eq!(q.len(), 14);
        // Popping stops once the items taken stand for `max` events, and frees their room.
        let mut out = Vec::new();
        assert_eq!(
            q.pop_events_into(&mut out, 4, |e| e.1),
            13,
            "a (3) and big (10)"
        );
        assert_eq!(out, [("a", 3), ("big", 10)]);
        assert_eq!(q.len(), 1);
        q.try_push_many(Some(0), ("b", 2), 2).unwrap();
        q.try_push_many(Some(1), ("f", 4), 4).unwrap();
        out.clear();
        assert_eq!(q.pop_events_into(&mut out, 100, |e| e.1), 7);
        assert_eq!(
            out,
            [("c", 1), ("f", 4), ("b", 2)],
            "each shard in its order"
        );
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_intake_makes_senders_wait_without_spinning_and_loses_nothing() {
        let q = Arc::new(Intake::new(64, 2));
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    for i in 0..10_000u64 {
                        q.push(Some(t), t * 1_000_000 + i).await.unwrap();
                    }
                })
            })
            .collect();
        // Let the senders fill it and block; they must be parked, not spinning: the process
        // burns (almost) no CPU while nobody drains.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(q.len(), q.capacity());
        let cpu0 = cpu_time();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let burnt = cpu_time().saturating_sub(cpu0);
        assert!(
            burnt < Duration::from_millis(100),
            "burnt {burnt:?} while full"
        );
        let drainer = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = Vec::new();
                while got.len() < 40_000 {
                    if q.pop_into(&mut buf, 100) == 0 {
                        tokio::time::timeout(Duration::from_secs(10), q.wait_for_items())
                            .await
                            .expect("woken by a push");
                    }
                    got.append(&mut buf);
                }
                got
            })
        };
        for s in senders {
            s.await.unwrap();
        }
        let got = drainer.await.unwrap();
        // Every event once, and each sender's events in its order.
        for t in 0..4u64 {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1_000_000 == t).collect();
            assert_eq!(
                mine,
                (0..10_000).map(|i| t * 1_000_000 + i).collect::<Vec<_>>()
            );
        }
    }

    #[tokio::test]
    async fn close_releases_a_waiting_sender_with_its_event() {
        let q = Arc::new(Intake::new(1, 1));
        q.try_push(None, 1).unwrap();
        let waiting = {
            let q = Arc::clone(&q);
            tokio::spawn(async move { q.push(None, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, Err(2));
    }

    /// CPU time of this process (user + system), from /proc.
    fn cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }
}
