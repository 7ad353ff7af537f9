//! The slot table and the two budgets (see the [module docs](super)).

use std::sync::PoisonError;
use std::task::Waker;

use kbatch_client::{Delivered, DeliveryError};
use kbatch_core::{Classify, ErrorClass, Offset, Timestamp};

use super::sync::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, AtomicWaker, FreeList,
    Mutex, MutexGuard, Notify, Ordering,
};
use crate::error::ProduceError;
use crate::metrics::ProducerCounters;

/// A record holds the slot: reserved, with librdkafka, or its report being written.
const PENDING: u32 = 1;
/// The result is written and published: the future may read it.
const DONE: u32 = 2;
/// The future is gone (resolved or dropped) and will not touch the slot again.
const DETACHED: u32 = 4;
/// The result is a failure, held in `Slot::failure`.
const FAILED: u32 = 8;
/// A waker was registered: only then does the reporter touch the `AtomicWaker`.
const WAITING: u32 = 16;
/// A failure is being written. Two reporters can race for a slot — librdkafka and
/// `fail_undelivered` at close — and only the first may write it.
const CLAIMED: u32 = 32;
/// The reporter will not touch the slot again: set with DONE, or after the wake-up when a
/// waker was registered. The slot is free once RELEASED and DETACHED are both set.
const RELEASED: u32 = 64;
const NO_TIMESTAMP: i64 = i64::MIN;

/// Both budgets live in one word so reserving and releasing is one atomic operation each:
/// records in the top 24 bits, bytes in the low 40. The config limits (10,000,000 records,
/// 256 GiB) stay far below either field.
const BYTE_BITS: u32 = 40;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;

fn budget(records: u64, bytes: usize) -> u64 {
    (records << BYTE_BITS) | (bytes as u64 & BYTE_MASK)
}

fn unpack(used: u64) -> (usize, usize) {
    ((used >> BYTE_BITS) as usize, (used & BYTE_MASK) as usize)
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
    free: FreeList,
    /// Slots finished after close, kept out of the free list (see the module docs).
    retired: AtomicUsize,
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
            free: FreeList::new(),
            retired: AtomicUsize::new(0),
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
        if !self.reserve_budget(size, self.used.load(Ordering::Relaxed)) {
            return Reserve::Full;
        }
        Reserve::Slot(self.take_slot(size))
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
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            // Read the budget with a read-modify-write, after announcing the waiter: it sees
            // every release before it, and a release after it sees the announcement (all
            // changes of `used` are read-modify-writes, so they synchronize).
            let now = self.used.fetch_add(0, Ordering::AcqRel);
            if self.reserve_budget(size, now) {
                return Some(self.take_slot(size));
            }
            notified.await;
        }
    }

    /// Adds one record and `size` bytes to `used` if they fit, starting from `cur`. Never
    /// over-reserves: a failed attempt changes nothing, so it cannot hide room from a
    /// concurrent release (which would then skip a wake-up) nor wake anyone itself.
    fn reserve_budget(&self, size: usize, mut cur: u64) -> bool {
        loop {
            let (records, bytes) = unpack(cur);
            if records >= self.max_records || (bytes != 0 && bytes + size > self.max_bytes) {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + budget(1, size),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn take_slot(&self, size: usize) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => self.slots.push(Slot::default()) as u32,
        };
        let s = &self.slots[i as usize];
        s.size.store(size, Ordering::Relaxed);
        s.state.store(PENDING, Ordering::Release);
        i
    }

    /// A record went to librdkafka; returns how many have so far.
    pub(crate) fn enqueued(&self) -> u64 {
        self.counters.sent.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// librdkafka refused the record of slot `i` (no future was made): give everything back.
    pub(crate) fn cancel(&self, i: u32) {
        let s = &self.slots[i as usize];
        let size = s.size.load(Ordering::Relaxed);
        // `fail_undelivered` may have resolved the slot already (close during the send).
        if s.state
            .fetch_or(DONE | RELEASED | DETACHED, Ordering::AcqRel)
            & DONE
            == 0
        {
            self.release(size);
        }
        self.free_slot(i);
    }

    /// A delivery report for slot `i` (poll thread). A report for a slot that is already
    /// done (resolved by `fail_undelivered`) is ignored and not counted.
    pub(crate) fn complete(&self, i: u32, result: Result<Delivered, DeliveryError>) {
        let s = &self.slots[i as usize];
        match result {
            Ok(d) => {
                // Written before publishing. Should `fail_undelivered` win the slot instead,
                // its FAILED flag means these are never read.
                s.partition.store(d.partition, Ordering::Relaxed);
                s.offset.store(d.offset.0, Ordering::Relaxed);
                s.timestamp
                    .store(d.timestamp.map_or(NO_TIMESTAMP, |t| t.0), Ordering::Relaxed);
                self.publish(i, 0, &self.counters.delivered);
            }
            Err(e) => {
                if !claim(s) {
                    return;
                }
                let class = e.class();
                *lock(&s.failure) = Some(ProduceError::Delivery(e));
                self.publish(i, FAILED, self.failure_counter(class));
            }
        }
    }

    /// Resolves every slot still waiting for librdkafka with `Closed`; returns how many.
    /// Only after [`Slots::close`]: a report librdkafka sends for such a slot later is then
    /// ignored (see `complete`).
    pub(crate) fn fail_undelivered(&self) -> usize {
        debug_assert!(self.is_closed(), "fail_undelivered before close");
        let mut n = 0;
        for (i, s) in self.slots.iter() {
            if !claim(s) {
                continue;
            }
            *lock(&s.failure) = Some(ProduceError::Closed { record: None });
            if self.publish(i as u32, FAILED, self.failure_counter(ErrorClass::Fatal)) {
                n += 1;
            } else {
                // librdkafka's success report came first.
                lock(&s.failure).take();
            }
        }
        n
    }

    /// Publishes the result written into slot `i` (sets DONE plus `flag`), counts it in
    /// `counter`, releases its budget and wakes its future. Returns false, changing nothing,
    /// when the slot was done already.
    fn publish(&self, i: u32, flag: u32, counter: &AtomicU64) -> bool {
        let s = &self.slots[i as usize];
        // Read before DONE is set: until then the slot cannot be freed, let alone reused.
        let size = s.size.load(Ordering::Relaxed);
        // Counted before DONE is published (the CAS below releases it): whoever sees the
        // future resolved sees it counted too. Taken back when another report won the slot.
        counter.fetch_add(1, Ordering::Relaxed);
        let mut cur = s.state.load(Ordering::Relaxed);
        let prev = loop {
            if cur & DONE != 0 {
                counter.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            // Without a registered waker, setting DONE is the reporter's last touch.
            let released = if cur & WAITING == 0 { RELEASED } else { 0 };
            match s.state.compare_exchange_weak(
                cur,
                cur | DONE | flag | released,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(prev) => break prev,
                Err(now) => cur = now,
            }
        };
        self.release(size);
        if prev & WAITING != 0 {
            // The future cannot free the slot (and a sender reuse it) before RELEASED, so
            // the waker woken is this future's.
            s.waker.wake();
            if s.state.fetch_or(RELEASED, Ordering::AcqRel) & DETACHED != 0 {
                self.free_slot(i);
            }
        } else if prev & DETACHED != 0 {
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
            // Announce the waker; DONE set before this is seen here, after it by `publish`.
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
        if prev & RELEASED != 0 {
            self.free_slot(i);
        }
    }

    /// Slot `i` is finished on both sides: recycle it, or retire it after close.
    fn free_slot(&self, i: u32) {
        let s = &self.slots[i as usize];
        let st = s.state.load(Ordering::Relaxed);
        if st & WAITING != 0 {
            drop(s.waker.take());
        }
        if st & FAILED != 0 {
            lock(&s.failure).take();
        }
        if self.is_closed() {
            self.retired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.state.store(0, Ordering::Release);
        self.free.push(i);
    }

    /// Returns one record and `size` bytes to the budgets. Waiters are woken only while at
    /// least a sixteenth of both budgets is free, not on every delivery near the bound.
    fn release(&self, size: usize) {
        let before = self.used.fetch_sub(budget(1, size), Ordering::AcqRel);
        let (records, bytes) = unpack(before);
        let (records, bytes) = (records - 1, bytes - size);
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
        self.failure_counter(class).fetch_add(1, Ordering::Relaxed);
    }

    fn failure_counter(&self, class: ErrorClass) -> &AtomicU64 {
        match class {
            ErrorClass::Retriable => &self.counters.failed_retriable,
            ErrorClass::Permanent => &self.counters.failed_permanent,
            _ => &self.counters.failed_fatal,
        }
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
        unpack(self.used.load(Ordering::Relaxed)).0
    }

    /// Delivery futures outstanding (undelivered, or delivered and not yet awaited or dropped).
    pub(crate) fn outstanding_futures(&self) -> usize {
        self.slots.count() - self.free.len() - self.retired.load(Ordering::Relaxed)
    }

    /// Payload bytes reserved and not yet delivered.
    pub(crate) fn pending_bytes(&self) -> usize {
        unpack(self.used.load(Ordering::Relaxed)).1
    }

    /// Records the producer holds: reserved or with librdkafka, not yet reported on.
    pub(crate) fn pending_records(&self) -> usize {
        self.undelivered()
    }
}

/// Takes the right to write slot `s`'s failure: only while a record holds it (PENDING)
/// undone and unclaimed. A compare-and-swap, not a `fetch_or`: a stale look at a slot that
/// was meanwhile delivered and recycled must fail, not mark a free slot.
fn claim(s: &Slot) -> bool {
    let mut cur = s.state.load(Ordering::Relaxed);
    loop {
        if cur & PENDING == 0 || cur & (CLAIMED | DONE) != 0 {
            return false;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur | CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
