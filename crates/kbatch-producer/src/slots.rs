//! The completion path: a table of reusable slots, one per outstanding delivery future.
//!
//! ```text
//!  send ──reserve record + bytes──pop free index──► slot[i] = PENDING ──token i──► librdkafka
//!  poll thread: delivery(i) ──► write result, set DONE, release budget, wake (if registered)
//!  DeliveryFuture(i): DONE? read result, set DETACHED ──► whoever sets the second of
//!                     DONE / DETACHED pushes i back on the free list
//! ```
//!
//! A delivery costs a few atomic stores and no allocation: no oneshot channel, no boxed
//! future, no per-record `Arc`. Futures awaited in order find most results already there, so
//! one wake-up resolves a whole run of them.
//!
//! The budgets (records and payload bytes held by the producer) are released at delivery,
//! when librdkafka lets go of the record, not when the caller awaits the future: a caller may
//! fire a million records and await them afterwards. The table therefore grows to the most
//! futures ever outstanding at once (append-only, lock-free indexing, slots reused through
//! the free list); its memory follows the futures the caller chose to hold.

use std::sync::Mutex;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::task::Waker;

use crossbeam_queue::SegQueue;
use futures::task::AtomicWaker;
use kbatch_client::{Delivered, DeliveryError};
use kbatch_core::{Classify, ErrorClass, Offset, Timestamp};
use tokio::sync::Notify;

use crate::error::ProduceError;
use crate::metrics::ProducerCounters;

const PENDING: u32 = 1;
const DONE: u32 = 2;
const DETACHED: u32 = 4;
const FAILED: u32 = 8;
/// A waker was registered: only then does completion touch the `AtomicWaker`.
const WAITING: u32 = 16;
const NO_TIMESTAMP: i64 = i64::MIN;

/// Both budgets live in one word so reserving and releasing is one atomic operation each:
/// records in the top 24 bits, bytes in the low 40. The config limits (10,000,000 records,
/// 256 GiB) leave headroom for transient over-reservation by concurrent senders.
const BYTE_BITS: u32 = 40;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;

fn budget(records: u64, bytes: usize) -> u64 {
    (records << BYTE_BITS) | (bytes as u64 & BYTE_MASK)
}

#[derive(Default)]
struct Slot {
    state: AtomicU32,
    partition: AtomicI32,
    offset: AtomicI64,
    timestamp: AtomicI64,
    /// Bytes reserved from the byte budget, returned at delivery.
    size: AtomicUsize,
    waker: AtomicWaker,
    /// Written only on failure: the common path never takes this lock.
    failure: Mutex<Option<ProduceError>>,
}

/// Counters kept on the hot path; published as metrics by [`crate::metrics`].
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed_retriable: AtomicU64,
    pub(crate) failed_permanent: AtomicU64,
    pub(crate) failed_fatal: AtomicU64,
}

/// The slot table and the two budgets.
pub(crate) struct Slots {
    slots: boxcar::Vec<Slot>,
    /// Indices of reusable slots. Holds at most the table's length: a free list, not a queue
    /// of work.
    free: SegQueue<u32>,
    /// Records and bytes reserved or with librdkafka, not yet reported on (see [`budget`]).
    used: AtomicU64,
    max_bytes: usize,
    max_records: usize,
    waiters: AtomicUsize,
    space: Notify,
    closed: AtomicBool,
    pub(crate) counters: Counters,
}

/// Outcome of trying to reserve room for one record.
pub(crate) enum Reserve {
    Slot(u32),
    Full,
    Closed,
}

impl Slots {
    pub(crate) fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            slots: boxcar::Vec::new(),
            free: SegQueue::new(),
            used: AtomicU64::new(0),
            max_bytes,
            max_records,
            waiters: AtomicUsize::new(0),
            space: Notify::new(),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    /// Reserves a slot and `size` bytes, without waiting. A record larger than the whole
    /// byte budget is admitted alone, when nothing else is pending, so it cannot wait forever.
    pub(crate) fn try_reserve(&self, size: usize) -> Reserve {
        if self.closed.load(Ordering::Acquire) {
            return Reserve::Closed;
        }
        let before = self.used.fetch_add(budget(1, size), Ordering::AcqRel);
        let (records, bytes) = (
            (before >> BYTE_BITS) as usize,
            (before & BYTE_MASK) as usize,
        );
        if records >= self.max_records || (bytes != 0 && bytes + size > self.max_bytes) {
            self.release(size);
            return Reserve::Full;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => self.slots.push(Slot::default()) as u32,
        };
        let s = &self.slots[i as usize];
        s.size.store(size, Ordering::Relaxed);
        s.state.store(PENDING, Ordering::Release);
        Reserve::Slot(i)
    }

    /// Reserves a slot and `size` bytes, waiting for room; `None` once closed. Cancel-safe.
    pub(crate) async fn reserve(&self, size: usize) -> Option<u32> {
        loop {
            match self.try_reserve(size) {
                Reserve::Full => {}
                Reserve::Slot(i) => return Some(i),
                Reserve::Closed => return None,
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let _guard = WaiterGuard(&self.waiters);
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_reserve(size) {
                Reserve::Full => notified.await,
                Reserve::Slot(i) => return Some(i),
                Reserve::Closed => return None,
            }
        }
    }

    /// A record went to librdkafka; returns how many have so far.
    pub(crate) fn enqueued(&self) -> u64 {
        self.counters.sent.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// librdkafka refused the record of slot `i`: give everything back.
    pub(crate) fn cancel(&self, i: u32) {
        self.release(self.slots[i as usize].size.load(Ordering::Relaxed));
        self.free_slot(i);
    }

    /// A delivery report for slot `i` (poll thread).
    pub(crate) fn complete(&self, i: u32, result: Result<Delivered, DeliveryError>) {
        let s = &self.slots[i as usize];
        let flag = match result {
            Ok(d) => {
                s.partition.store(d.partition, Ordering::Relaxed);
                s.offset.store(d.offset.0, Ordering::Relaxed);
                s.timestamp
                    .store(d.timestamp.map_or(NO_TIMESTAMP, |t| t.0), Ordering::Relaxed);
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                DONE
            }
            Err(e) => {
                self.count_failure(e.class());
                *lock(&s.failure) = Some(ProduceError::Delivery(e));
                DONE | FAILED
            }
        };
        self.finish(i, flag);
    }

    /// Resolves every slot still waiting for librdkafka with `Closed`. Only for after the
    /// client stopped reporting: a late report for such a slot is then ignored by `finish`.
    pub(crate) fn fail_undelivered(&self) -> usize {
        let mut n = 0;
        for (i, s) in self.slots.iter() {
            let st = s.state.load(Ordering::Acquire);
            if st & PENDING != 0 && st & DONE == 0 {
                *lock(&s.failure) = Some(ProduceError::Closed { record: None });
                self.count_failure(ErrorClass::Fatal);
                if self.finish(i as u32, DONE | FAILED) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Sets DONE (plus `flag`), releases the bytes and wakes the future. Returns false when
    /// the slot was already done (a report after `fail_undelivered`).
    fn finish(&self, i: u32, flag: u32) -> bool {
        let s = &self.slots[i as usize];
        let prev = s.state.fetch_or(flag, Ordering::AcqRel);
        if prev & DONE != 0 {
            return false;
        }
        self.release(s.size.load(Ordering::Relaxed));
        if prev & WAITING != 0 {
            s.waker.wake();
        }
        if prev & DETACHED != 0 {
            self.free_slot(i);
        }
        true
    }

    /// The result of slot `i`, if delivered; registers `waker` otherwise.
    pub(crate) fn poll_result(
        &self,
        i: u32,
        waker: &Waker,
    ) -> Option<Result<Delivered, ProduceError>> {
        let s = &self.slots[i as usize];
        if s.state.load(Ordering::Acquire) & DONE == 0 {
            s.waker.register(waker);
            // Announce the waker; DONE set before this is seen here, after it by `finish`.
            if s.state.fetch_or(WAITING, Ordering::AcqRel) & DONE == 0 {
                return None;
            }
        }
        Some(self.take_result(i))
    }

    /// The result of slot `i` if it is already delivered.
    pub(crate) fn try_result(&self, i: u32) -> Option<Result<Delivered, ProduceError>> {
        (self.slots[i as usize].state.load(Ordering::Acquire) & DONE != 0)
            .then(|| self.take_result(i))
    }

    fn take_result(&self, i: u32) -> Result<Delivered, ProduceError> {
        let s = &self.slots[i as usize];
        if s.state.load(Ordering::Acquire) & FAILED != 0 {
            return Err(lock(&s.failure)
                .take()
                .unwrap_or(ProduceError::Closed { record: None }));
        }
        let ts = s.timestamp.load(Ordering::Relaxed);
        Ok(Delivered::new(
            s.partition.load(Ordering::Relaxed),
            Offset(s.offset.load(Ordering::Relaxed)),
            (ts != NO_TIMESTAMP).then_some(Timestamp(ts)),
        ))
    }

    /// The future of slot `i` is gone (resolved or dropped).
    pub(crate) fn detach(&self, i: u32) {
        let prev = self.slots[i as usize]
            .state
            .fetch_or(DETACHED, Ordering::AcqRel);
        if prev & DONE != 0 {
            self.free_slot(i);
        }
    }

    fn free_slot(&self, i: u32) {
        let s = &self.slots[i as usize];
        let st = s.state.load(Ordering::Relaxed);
        if st & WAITING != 0 {
            drop(s.waker.take());
        }
        if st & FAILED != 0 {
            lock(&s.failure).take();
        }
        s.state.store(0, Ordering::Release);
        self.free.push(i);
    }

    /// Returns one record and `size` bytes to the budgets. Waiters are woken once a sixteenth
    /// of the budget is free again, not on every delivery: a full producer would otherwise wake
    /// its sender once per record.
    fn release(&self, size: usize) {
        let before = self.used.fetch_sub(budget(1, size), Ordering::AcqRel);
        let (records, bytes) = (
            (before >> BYTE_BITS) as usize - 1,
            (before & BYTE_MASK) as usize - size,
        );
        if records <= self.max_records - self.max_records / 16
            && bytes <= self.max_bytes - self.max_bytes / 16
        {
            self.notify_space();
        }
    }

    fn notify_space(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// A snapshot of the counters and gauges.
    pub(crate) fn counters(&self) -> ProducerCounters {
        let c = &self.counters;
        ProducerCounters {
            sent: c.sent.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed_retriable: c.failed_retriable.load(Ordering::Relaxed),
            failed_permanent: c.failed_permanent.load(Ordering::Relaxed),
            failed_fatal: c.failed_fatal.load(Ordering::Relaxed),
            pending_records: self.pending_records() as u64,
            pending_bytes: self.pending_bytes() as u64,
            outstanding_futures: self.outstanding_futures() as u64,
        }
    }

    /// Counts one failed record in its class.
    pub(crate) fn count_failure(&self, class: ErrorClass) {
        let c = match class {
            ErrorClass::Retriable => &self.counters.failed_retriable,
            ErrorClass::Permanent => &self.counters.failed_permanent,
            _ => &self.counters.failed_fatal,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops admitting records; wakes everyone waiting for room so they see `Closed`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.space.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Records reserved or with librdkafka, not yet reported on.
    pub(crate) fn undelivered(&self) -> usize {
        (self.used.load(Ordering::Relaxed) >> BYTE_BITS) as usize
    }

    /// Delivery futures outstanding (undelivered, or delivered and not yet awaited or dropped).
    pub(crate) fn outstanding_futures(&self) -> usize {
        self.slots.count() - self.free.len()
    }

    /// Payload bytes reserved and not yet delivered.
    pub(crate) fn pending_bytes(&self) -> usize {
        (self.used.load(Ordering::Relaxed) & BYTE_MASK) as usize
    }

    /// Records the producer holds: reserved or with librdkafka, not yet reported on.
    pub(crate) fn pending_records(&self) -> usize {
        self.undelivered()
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
