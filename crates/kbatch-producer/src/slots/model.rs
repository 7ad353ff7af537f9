//! Loom model of the slot table: the real `table.rs` and `future.rs`, compiled again against
//! loom's primitives, run under every interleaving loom explores (see the module docs of
//! [`super`] for why loom).
//!
//! The threads of each model are the real ones: a sender reserving and enqueueing, the poll
//! thread reporting deliveries (`complete`), the future's owner awaiting or dropping it, and
//! `close` with `fail_undelivered`. librdkafka's queue between sender and poll thread is a
//! loom channel (librdkafka's is a mutex-guarded queue: the same happens-before). Properties:
//! - every future gets its own record's result, exactly once, even while its slot is reused
//!   by the next record (different sizes, so a mixed-up slot shows in the budget);
//! - every report is counted once, also when `close` races it and when librdkafka reports
//!   again after close (a late report is ignored);
//! - the record and byte budgets come back to zero and every slot comes back;
//! - no lost wake-up: a waiting sender or future that is never woken leaves every loom
//!   thread blocked, which loom reports as a deadlock; a sender that spins without waiting
//!   exceeds loom's branch limit.
//!
//! Third-party primitives are replaced by loom-visible ones with the same contract where
//! loom must see them synchronize or block: crossbeam's `SegQueue` (the free list) by a loom
//! mutex around a `Vec`, tokio's `Notify` by a loom mutex and a generation count with
//! `notify_waiters` semantics (tokio's takes a std lock while cloning a waker, which loom
//! may preempt). `boxcar` and futures' `AtomicWaker` are the real ones: they never block, and
//! every slot index reaches another thread through a loom operation. Set `LOOM_MAX_PREEMPTIONS`
//! to explore deeper than each model's own bound (slow).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use kbatch_client::{Delivered, DeliveryError, ErrorCode};
use kbatch_core::{Offset, Record};
use loom::future::block_on;
use loom::sync::mpsc::channel;
use loom::thread;

use crate::error::ProduceError;

mod sync {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    pub(crate) use futures::task::AtomicWaker;
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use loom::sync::{Mutex, MutexGuard};

    /// The free list: a queue whose push and pop synchronize, as crossbeam's does.
    pub(crate) struct FreeList(Mutex<Vec<u32>>);

    impl FreeList {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(Vec::new()))
        }

        pub(crate) fn push(&self, i: u32) {
            self.0.lock().unwrap().push(i);
        }

        pub(crate) fn pop(&self) -> Option<u32> {
            self.0.lock().unwrap().pop()
        }

        pub(crate) fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    /// tokio's `Notify`, as the table uses it: `notify_waiters` wakes every `Notified`
    /// created before the call (tokio registers a `Notified` for `notify_waiters` when it is
    /// created; `enable` matters only for `notify_one`, which the table does not use).
    pub(crate) struct Notify(Mutex<NotifyState>);

    struct NotifyState {
        generation: u64,
        wakers: Vec<Waker>,
    }

    impl Notify {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(NotifyState {
                generation: 0,
                wakers: Vec::new(),
            }))
        }

        pub(crate) fn notified(&self) -> Notified<'_> {
            Notified {
                notify: self,
                generation: self.0.lock().unwrap().generation,
            }
        }

        pub(crate) fn notify_waiters(&self) {
            let wakers = {
                let mut st = self.0.lock().unwrap();
                st.generation += 1;
                std::mem::take(&mut st.wakers)
            };
            for w in wakers {
                w.wake();
            }
        }
    }

    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        generation: u64,
    }

    impl Notified<'_> {
        pub(crate) fn enable(self: Pin<&mut Self>) -> bool {
            false
        }
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut st = self.notify.0.lock().unwrap();
            if st.generation != self.generation {
                return Poll::Ready(());
            }
            st.wakers.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[path = "table.rs"]
#[allow(
    dead_code,
    reason = "the model drives only the operations whose interleavings it checks"
)]
#[allow(
    clippy::duplicate_mod,
    reason = "compiling the real table again, against loom, is the point of the model"
)]
mod table;

#[path = "future.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the model's copy of DeliveryFuture; nothing leaves this module"
)]
#[allow(
    clippy::duplicate_mod,
    reason = "compiling the real future again, against loom, is the point of the model"
)]
mod future;

use future::DeliveryFuture;
use table::{Reserve, Slots};

/// Runs `f` under loom, exploring every interleaving with at most `preemptions` preemptions
/// (`LOOM_MAX_PREEMPTIONS` overrides it). Each bug this model has caught needed at most two;
/// the bounds keep every model within seconds.
fn check(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

fn delivered(seq: i64) -> Result<Delivered, DeliveryError> {
    Ok(Delivered::new(0, Offset(seq), None))
}

fn failed(seq: i64) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::new(
        ErrorCode::MessageSizeTooLarge,
        Box::new(Record::new("t", seq.to_string())),
    ))
}

/// Reserves and enqueues a record of `size` bytes; the producer's `try_send` path.
fn send(s: &Slots, size: usize) -> u32 {
    match s.try_reserve(size) {
        Reserve::Slot(i) => {
            s.enqueued();
            i
        }
        Reserve::Full => panic!("full"),
        Reserve::Closed => panic!("closed"),
    }
}

fn offset(r: Result<Delivered, ProduceError>) -> i64 {
    r.expect("delivered").offset.0
}

fn assert_all_returned(s: &Slots) {
    assert_eq!(
        (
            s.pending_records(),
            s.pending_bytes(),
            s.outstanding_futures()
        ),
        (0, 0, 0),
        "budgets and slots all returned"
    );
}

/// Sender, poll thread and an awaiting future: the second record may take the first one's
/// slot the moment its future lets go, while the poll thread is still finishing the first
/// report. Each future must get its own record's offset, and the byte budget (10 + 20 bytes)
/// must come back exactly.
#[test]
fn each_future_gets_its_own_result_while_slots_are_reused() {
    // Three threads and a channel: 2 preemptions take 15 s, 3 take two minutes.
    check(2, || {
        let s = Arc::new(Slots::new(2, 1 << 20));
        let (to_client, client) = channel::<(u32, i64)>();
        let poller = {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for _ in 0..2 {
                    let (i, seq) = client.recv().unwrap();
                    s.complete(i, delivered(seq));
                }
            })
        };
        let a = send(&s, 10);
        to_client.send((a, 1)).unwrap();
        let fa = DeliveryFuture::new(Arc::clone(&s), a);
        let awaiter = thread::spawn(move || offset(block_on(fa)));

        let b = send(&s, 20);
        to_client.send((b, 2)).unwrap();
        assert_eq!(offset(block_on(DeliveryFuture::new(Arc::clone(&s), b))), 2);
        assert_eq!(awaiter.join().unwrap(), 1);
        poller.join().unwrap();
        assert_all_returned(&s);
        assert_eq!(s.counters().delivered, 2);
    });
}

/// Whoever sees a future resolved sees its report counted: the counters are read by users
/// (and tests) right after awaiting, while the poll thread may still be inside `complete`.
#[test]
fn a_resolved_future_is_already_counted() {
    check(2, || {
        let s = Arc::new(Slots::new(2, 1 << 20));
        let (a, b) = (send(&s, 10), send(&s, 10));
        let poller = {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                s.complete(a, delivered(1));
                s.complete(b, failed(2));
            })
        };
        assert_eq!(offset(block_on(DeliveryFuture::new(Arc::clone(&s), a))), 1);
        assert_eq!(s.counters().delivered, 1, "resolved, so counted");
        assert!(block_on(DeliveryFuture::new(Arc::clone(&s), b)).is_err());
        let c = s.counters();
        assert_eq!(
            c.failed_retriable + c.failed_permanent + c.failed_fatal,
            1,
            "resolved, so counted"
        );
        poller.join().unwrap();
    });
}

/// A future polled once (its waker registered) and then dropped, racing the report: the slot
/// is freed exactly once, by whichever side finishes last, and taken again by the next send.
#[test]
fn a_future_dropped_while_waiting_frees_its_slot_once() {
    check(3, || {
        let s = Arc::new(Slots::new(1, 1 << 20));
        let a = send(&s, 10);
        let poller = {
            let s = Arc::clone(&s);
            thread::spawn(move || s.complete(a, delivered(1)))
        };
        let mut fa = DeliveryFuture::new(Arc::clone(&s), a);
        let early = Pin::new(&mut fa).poll(&mut Context::from_waker(Waker::noop()));
        drop(fa);
        poller.join().unwrap();
        if let Poll::Ready(r) = early {
            assert_eq!(offset(r), 1);
        }
        assert_all_returned(&s);
        let b = send(&s, 10);
        assert_eq!(b, a, "the one slot was returned");
        s.complete(b, delivered(2));
        assert_eq!(offset(block_on(DeliveryFuture::new(Arc::clone(&s), b))), 2);
        assert_all_returned(&s);
    });
}

/// A sender waiting for room (the record budget is 1) is woken by the delivery that frees
/// it — never lost, and never spinning meanwhile.
#[test]
fn a_waiting_sender_is_woken_by_the_delivery_that_makes_room() {
    check(3, || {
        let s = Arc::new(Slots::new(1, 1 << 20));
        let a = send(&s, 10);
        drop(DeliveryFuture::new(Arc::clone(&s), a));
        let poller = {
            let s = Arc::clone(&s);
            thread::spawn(move || s.complete(a, delivered(1)))
        };
        let b = block_on(s.reserve(10)).expect("not closed");
        s.enqueued();
        poller.join().unwrap();
        s.complete(b, delivered(2));
        assert_eq!(offset(block_on(DeliveryFuture::new(Arc::clone(&s), b))), 2);
        assert_all_returned(&s);
        assert_eq!(s.counters().delivered, 2);
    });
}

/// Two senders wait for one place; each delivery lets exactly one through, and the second
/// is woken by the first one's delivery.
#[test]
fn waiting_senders_each_get_room_in_turn() {
    check(3, || {
        let s = Arc::new(Slots::new(1, 1 << 20));
        let a = send(&s, 10);
        drop(DeliveryFuture::new(Arc::clone(&s), a));
        let waiter = |seq: i64| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let i = block_on(s.reserve(10)).expect("not closed");
                s.enqueued();
                // The record goes out at once; deliver it, freeing room for the other.
                s.complete(i, delivered(seq));
                offset(block_on(DeliveryFuture::new(Arc::clone(&s), i)))
            })
        };
        let (w1, w2) = (waiter(2), waiter(3));
        s.complete(a, delivered(1));
        assert_eq!((w1.join().unwrap(), w2.join().unwrap()), (2, 3));
        assert_all_returned(&s);
    });
}

/// `close` wakes a sender waiting for room, which then gets `None`; the record that held the
/// room is failed by `fail_undelivered`.
#[test]
fn close_wakes_a_waiting_sender() {
    check(3, || {
        let s = Arc::new(Slots::new(1, 1 << 20));
        let a = send(&s, 10);
        let waiter = {
            let s = Arc::clone(&s);
            thread::spawn(move || block_on(s.reserve(10)))
        };
        s.close();
        assert_eq!(waiter.join().unwrap(), None);
        assert_eq!(s.fail_undelivered(), 1);
        let r = block_on(DeliveryFuture::new(Arc::clone(&s), a));
        assert!(matches!(r, Err(ProduceError::Closed { .. })), "{r:?}");
        assert_all_returned(&s);
    });
}

/// `close` + `fail_undelivered` race the client's report of the same record. When close wins,
/// the client's report is a late one (as librdkafka sends for what is left when the client is
/// destroyed), possibly after the future resolved and its slot was retired. The future
/// resolves once, the record is counted once — as what the future saw — and a late report
/// changes nothing.
fn close_races_the_report(report: fn(i64) -> Result<Delivered, DeliveryError>) {
    check(3, move || {
        let s = Arc::new(Slots::new(4, 1 << 20));
        let a = send(&s, 10);
        let fa = DeliveryFuture::new(Arc::clone(&s), a);
        let awaiter = thread::spawn(move || block_on(fa));
        let poller = {
            let s = Arc::clone(&s);
            thread::spawn(move || s.complete(a, report(1)))
        };
        s.close();
        let failed_at_close = s.fail_undelivered();
        let r = awaiter.join().unwrap();
        poller.join().unwrap();

        let c = s.counters();
        let counted = c.delivered + c.failed_retriable + c.failed_permanent + c.failed_fatal;
        assert_eq!(counted, 1, "{c:?}");
        match r {
            Ok(d) => assert_eq!((d.offset.0, c.delivered), (1, 1)),
            Err(ProduceError::Closed { .. }) => {
                assert_eq!((failed_at_close, c.failed_fatal), (1, 1));
            }
            Err(ProduceError::Delivery(e)) => {
                assert_eq!(
                    (e.code, c.failed_permanent),
                    (ErrorCode::MessageSizeTooLarge, 1)
                );
            }
            Err(e) => panic!("{e}"),
        }
        assert_all_returned(&s);
    });
}

#[test]
fn close_racing_a_success_report_counts_it_once() {
    close_races_the_report(delivered);
}

#[test]
fn close_racing_a_failure_report_counts_it_once() {
    close_races_the_report(failed);
}
