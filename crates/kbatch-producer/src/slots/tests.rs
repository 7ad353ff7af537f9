//! The slot state machine, exercised in every order the two sides can take and under
//! concurrent stress: a slot returns to the free list exactly once per use, results reach the
//! right future, and the budgets come back to zero.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use kbatch_client::{Delivered, DeliveryError, ErrorCode};
use kbatch_core::{Offset, Record};

use super::{DeliveryFuture, Reserve, Slots};

fn ok(p: i32, o: i64) -> Result<Delivered, DeliveryError> {
    Ok(Delivered::new(p, Offset(o), None))
}

fn fail(code: ErrorCode) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::new(
        code,
        Box::new(Record::new("t", "v").with_key("k")),
    ))
}

fn reserve(s: &Slots, size: usize) -> u32 {
    match s.try_reserve(size) {
        Reserve::Slot(i) => {
            s.enqueued();
            i
        }
        Reserve::Full => panic!("unexpectedly full"),
        Reserve::Closed => panic!("unexpectedly closed"),
    }
}

fn poll_now(f: &mut DeliveryFuture) -> Poll<Result<Delivered, crate::ProduceError>> {
    std::pin::Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

use std::future::Future as _;

#[test]
fn records_budget_counts_undelivered_records_and_slots_free_in_either_order() {
    let s = Arc::new(Slots::new(2, 1 << 20));
    let a = reserve(&s, 10);
    let b = reserve(&s, 10);
    assert!(matches!(s.try_reserve(10), Reserve::Full));

    // Delivery releases the budget even before the future is awaited.
    s.complete(a, ok(3, 42));
    assert_eq!(s.pending_records(), 1);
    let c = reserve(&s, 10);
    assert_ne!(c, a, "a's slot still holds its unawaited result");
    let mut fa = DeliveryFuture::new(Arc::clone(&s), a);
    let r = poll_now(&mut fa);
    assert!(matches!(
        r,
        Poll::Ready(Ok(Delivered {
            partition: 3,
            offset: Offset(42),
            ..
        }))
    ));
    assert_eq!(s.outstanding_futures(), 2, "a's slot freed once awaited");

    // Future dropped first, then delivery: the slot is freed by the delivery.
    drop(DeliveryFuture::new(Arc::clone(&s), b));
    assert_eq!(s.outstanding_futures(), 2, "b is still with librdkafka");
    s.complete(b, ok(0, 1));
    assert_eq!(s.outstanding_futures(), 1);
    s.complete(c, ok(0, 2));
    drop(DeliveryFuture::new(Arc::clone(&s), c));
    assert_eq!(
        (
            s.pending_records(),
            s.pending_bytes(),
            s.outstanding_futures()
        ),
        (0, 0, 0)
    );
}

#[test]
fn a_caller_may_hold_far_more_futures_than_the_record_budget() {
    let s = Arc::new(Slots::new(4, 1 << 20));
    let mut futures = Vec::new();
    for n in 0..1000 {
        let i = reserve(&s, 1);
        futures.push(DeliveryFuture::new(Arc::clone(&s), i));
        s.complete(i, ok(0, n));
    }
    assert_eq!(s.pending_records(), 0);
    assert_eq!(s.outstanding_futures(), 1000);
    for (n, mut f) in futures.into_iter().enumerate() {
        assert!(matches!(poll_now(&mut f), Poll::Ready(Ok(d)) if d.offset == Offset(n as i64)));
    }
    assert_eq!(s.outstanding_futures(), 0);
    let again = reserve(&s, 1);
    assert!(again < 1000, "slots are reused, the table does not grow");
}

#[test]
fn pending_future_is_woken_and_failure_hands_the_record_back() {
    let s = Arc::new(Slots::new(1, 1 << 20));
    let i = reserve(&s, 5);
    let mut f = DeliveryFuture::new(Arc::clone(&s), i);
    assert!(poll_now(&mut f).is_pending());
    s.complete(i, fail(ErrorCode::MessageSizeTooLarge));
    match poll_now(&mut f) {
        Poll::Ready(Err(e)) => {
            assert_eq!(e.code(), Some(ErrorCode::MessageSizeTooLarge));
            assert_eq!(e.record().unwrap().key_for_display(), "\"k\"");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.counters().failed_permanent, 1);
    drop(f);
    assert_eq!(s.outstanding_futures(), 0);
}

#[test]
fn bytes_budget_admits_an_oversized_record_only_alone() {
    let s = Slots::new(10, 100);
    let big = reserve(&s, 250);
    assert!(
        matches!(s.try_reserve(1), Reserve::Full),
        "budget exhausted by the big record"
    );
    s.complete(big, ok(0, 0));
    let a = reserve(&s, 60);
    assert!(matches!(s.try_reserve(60), Reserve::Full));
    let _b = reserve(&s, 40);
    s.complete(a, ok(0, 1));
    assert_eq!(s.pending_bytes(), 40);
}

#[test]
fn close_fails_undelivered_and_ignores_late_reports() {
    let s = Arc::new(Slots::new(4, 1 << 20));
    let a = reserve(&s, 1);
    let b = reserve(&s, 1);
    s.complete(a, ok(0, 7));
    s.close();
    assert!(matches!(s.try_reserve(1), Reserve::Closed));
    assert_eq!(s.fail_undelivered(), 1);
    s.complete(b, ok(0, 8)); // late: ignored, not double counted
    let mut fb = DeliveryFuture::new(Arc::clone(&s), b);
    assert!(matches!(
        poll_now(&mut fb),
        Poll::Ready(Err(crate::ProduceError::Closed { .. }))
    ));
    let mut fa = DeliveryFuture::new(Arc::clone(&s), a);
    assert!(
        matches!(poll_now(&mut fa), Poll::Ready(Ok(_))),
        "delivered before close stays delivered"
    );
    assert_eq!(s.undelivered(), 0);
    assert_eq!(s.counters().failed_fatal, 1);
    // Both futures are gone and their slots retired; librdkafka reporting b once more (as it
    // does for what is left when the client is destroyed) must not give its budget back twice.
    s.complete(b, ok(0, 8));
    s.complete(b, fail(ErrorCode::PurgeQueue));
    let c = s.counters();
    assert_eq!((c.delivered, c.failed_fatal, c.failed_retriable), (1, 1, 0));
    assert_eq!(
        (s.undelivered(), s.pending_bytes(), s.outstanding_futures()),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_waits_for_room_and_wakes_on_release() {
    let s = Arc::new(Slots::new(1, 1 << 20));
    let a = reserve(&s, 1);
    let waiter = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.reserve(1).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    s.complete(a, ok(0, 0));
    let got = waiter.await.unwrap();
    assert!(got.is_some(), "delivery alone makes room");
    // Close wakes waiters with None.
    let waiter = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.reserve(1).await })
    };
    tokio::task::yield_now().await;
    s.close();
    assert_eq!(waiter.await.unwrap(), None);
}

/// Two threads complete and one thread awaits, over many rounds with a small table so slots
/// are reused constantly: every result reaches its own future, nothing leaks.
#[test]
fn concurrent_completion_and_detach_stress() {
    const ROUNDS: u64 = 200_000;
    let s = Arc::new(Slots::new(64, 1 << 30));
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, u64)>(1024);
    let (tx2, rx2) = std::sync::mpsc::sync_channel::<(u32, u64)>(1024);
    let completers: Vec<_> = [rx, rx2]
        .into_iter()
        .map(|rx| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for (slot, seq) in rx {
                    s.complete(slot, ok(0, seq as i64));
                }
            })
        })
        .collect();
    let mut futures = std::collections::VecDeque::new();
    for seq in 0..ROUNDS {
        let slot = loop {
            match s.try_reserve(1) {
                Reserve::Slot(i) => break i,
                _ => {
                    // Resolve the oldest to make room, checking it got its own result.
                    let (want, mut f): (u64, DeliveryFuture) = futures.pop_front().unwrap();
                    loop {
                        if let Poll::Ready(r) = poll_now(&mut f) {
                            assert_eq!(r.unwrap().offset, Offset(want as i64));
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
            }
        };
        s.enqueued();
        let f = DeliveryFuture::new(Arc::clone(&s), slot);
        if seq % 7 == 0 {
            drop(f); // abandoned futures must not leak their slot
        } else {
            futures.push_back((seq, f));
        }
        if seq % 2 == 0 { &tx } else { &tx2 }
            .send((slot, seq))
            .unwrap();
    }
    drop((tx, tx2));
    for c in completers {
        c.join().unwrap();
    }
    for (want, mut f) in futures {
        match poll_now(&mut f) {
            Poll::Ready(r) => assert_eq!(r.unwrap().offset, Offset(want as i64)),
            Poll::Pending => panic!("all completions ran"),
        }
    }
    assert_eq!(s.pending_records(), 0);
    assert_eq!(s.pending_bytes(), 0);
    assert_eq!(s.outstanding_futures(), 0);
    assert_eq!(s.counters().delivered, ROUNDS);
}
