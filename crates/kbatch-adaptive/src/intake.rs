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
//! bounded, so submitting threads rarely touch the same cache line. A full intake is back-pressure: `push` waits on a notification and
//! `try_push` hands the event back; nobody spins. The driver parks when every shard is empty
//! and is woken by the next push (one atomic load per push while it runs).

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
    shards: Box<[ArrayQueue<E>]>,
    /// Submitters waiting for room.
    space: Notify,
    waiting: AtomicUsize,
    /// The driver, when parked.
    items: Notify,
    parked: AtomicBool,
    closed: AtomicBool,
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
            shards: (0..shards).map(|_| ArrayQueue::new(per)).collect(),
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
            items: Notify::new(),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// Events it can hold.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(ArrayQueue::capacity).sum()
    }

    /// Events held now (a snapshot).
    pub fn len(&self) -> usize {
        self.shards.iter().map(ArrayQueue::len).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(ArrayQueue::is_empty)
    }

    /// Hands `e` in without waiting. Events with the same `order` hint come out in the order
    /// they went in; events without one may overtake each other.
    pub fn try_push(&self, order: Option<u64>, e: E) -> Result<(), PushError<E>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(e));
        }
        let n = self.shards.len();
        if let Some(h) = order {
            return match self.shards[(h % n as u64) as usize].push(e) {
                Ok(()) => {
                    self.wake_driver();
                    Ok(())
                }
                Err(e) => Err(PushError::Full(e)),
            };
        }
        let home = THREAD_INDEX.with(|i| *i) % n;
        let mut e = e;
        for k in 0..n {
            match self.shards[(home + k) % n].push(e) {
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
        let mut e = match self.try_push(order, e) {
            Ok(()) => return Ok(()),
            Err(PushError::Closed(e)) => return Err(e),
            Err(PushError::Full(e)) => e,
        };
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let retry = self.try_push(order, e);
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

    fn wake_driver(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.items.notify_one();
        }
    }

    /// Moves up to `max` events into `out`, oldest of each shard first; returns how many.
    /// Wakes submitters waiting for room.
    pub fn pop_into(&self, out: &mut Vec<E>, max: usize) -> usize {
        let mut taken = 0;
        // Round-robin over the shards so one busy thread cannot starve the others.
        'outer: while taken < max {
            let before = taken;
            for s in self.shards.iter() {
                if taken >= max {
                    break 'outer;
                }
                if let Some(e) = s.pop() {
                    out.push(e);
                    taken += 1;
                }
            }
            if taken == before {
                break;
            }
        }
        if taken > 0 && self.waiting.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
        taken
    }

    /// Waits until an event may have been pushed or the intake is closed. Returns at once when
    /// something is already there.
    pub async fn wait_for_items(&self) {
        self.parked.store(true, Ordering::SeqCst);
        if !self.is_empty() || self.closed.load(Ordering::SeqCst) {
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
