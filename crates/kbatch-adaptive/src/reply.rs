//! Where an event's outcome goes: its own future, a share of a [`ManyFuture`], or nowhere.
//!
//! ```text
//!  send(record)       ──► Reply::One(oneshot)      ──► EventFuture
//!  send_many(records) ──► Reply::Many(slot i of N) ──► ManyFuture (one oneshot when all N settled)
//!  send_detached      ──► Reply::Detached (failures counted and logged)
//! ```
//!
//! A batch hand-in settles its events in a shared slot table and wakes its caller once, when
//! the last one settles: no allocation and no cross-thread hand-over per event.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use kbatch_core::{Offset, Timestamp};
use tokio::sync::oneshot;

use crate::error::AdaptiveError;

/// Where an event was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventDelivered {
    /// Partition of the Kafka record holding it.
    pub partition: i32,
    /// Offset of that record.
    pub offset: Offset,
    /// Its place in the envelope when packed; `None` when it is a record of its own.
    pub index: Option<u32>,
    /// The timestamp of that Kafka record as stored (packed: the envelope's; each event
    /// also carries its own inside it).
    pub timestamp: Option<Timestamp>,
}

/// One event's outcome.
pub type EventResult = Result<EventDelivered, AdaptiveError>;

/// Where an event's outcome goes. An event dropped unsettled (the driver gone) settles as
/// `Closed`, so a [`ManyFuture`] always completes.
#[derive(Debug)]
pub(crate) struct Reply(Option<Kind>);

#[derive(Debug)]
enum Kind {
    One(oneshot::Sender<EventResult>),
    Many(Arc<Many>, u32),
    Detached,
}

impl Reply {
    /// A reply to its own future.
    pub(crate) fn one() -> (Self, EventFuture) {
        let (tx, rx) = oneshot::channel();
        (Self(Some(Kind::One(tx))), EventFuture { rx })
    }

    /// No reply: failures are logged at debug level.
    pub(crate) fn detached() -> Self {
        Self(Some(Kind::Detached))
    }

    /// `n` replies sharing one future, in order.
    pub(crate) fn many(n: usize) -> (Vec<Self>, ManyFuture) {
        let (tx, rx) = oneshot::channel();
        let many = Arc::new(Many {
            state: Mutex::new(ManyState {
                slots: (0..n).map(|_| Slot::Open).collect(),
                remaining: n,
                done: Some(tx),
            }),
        });
        if n == 0 {
            many.lock().finish();
        }
        let replies = (0..n)
            .map(|i| Self(Some(Kind::Many(Arc::clone(&many), i as u32))))
            .collect();
        (replies, ManyFuture { rx })
    }

    /// Settles the event.
    pub(crate) fn send(mut self, r: EventResult) {
        match (self.0.take(), r) {
            (Some(Kind::One(tx)), r) => {
                let _ = tx.send(r);
            }
            (Some(Kind::Many(m, i)), r) => m.settle(i, r),
            (Some(Kind::Detached), Err(e)) => tracing::debug!("detached event failed: {e}"),
            (Some(Kind::Detached) | None, _) => {}
        }
    }
}

/// Settles many events at once: consecutive events of one `send_many` call under one lock
/// (an envelope's events mostly come from a few calls; a lock per event contended with the
/// other completion tasks), written straight into the call's slots.
pub(crate) fn settle_all(replies: impl IntoIterator<Item = (Reply, EventResult)>) {
    let mut it = replies.into_iter().peekable();
    while let Some((mut reply, r)) = it.next() {
        match reply.0.take() {
            Some(Kind::Many(m, i)) => {
                let mut s = m.lock();
                s.settle(i, r);
                // The rest of this call's run, under the same lock.
                while let Some((next, _)) = it.peek()
                    && matches!(&next.0, Some(Kind::Many(other, _)) if Arc::ptr_eq(other, &m))
                {
                    if let Some((mut reply, r)) = it.next()
                        && let Some(Kind::Many(_, i)) = reply.0.take()
                    {
                        s.settle(i, r);
                    }
                }
            }
            other => {
                reply.0 = other;
                reply.send(r);
            }
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        // A oneshot tells its receiver by itself; a shared slot must be settled.
        if let Some(Kind::Many(m, i)) = self.0.take() {
            m.settle(i, Err(AdaptiveError::Closed { record: None }));
        }
    }
}

#[derive(Debug)]
struct Many {
    state: Mutex<ManyState>,
}

/// One event's outcome while its call waits for the others: a third of an `EventResult`'s
/// size (the error, rare, is boxed), so settling thousands moves less.
#[derive(Debug)]
enum Slot {
    Open,
    Delivered(EventDelivered),
    Failed(Box<AdaptiveError>),
}

#[derive(Debug)]
struct ManyState {
    slots: Vec<Slot>,
    remaining: usize,
    done: Option<oneshot::Sender<Vec<EventResult>>>,
}

impl Many {
    fn lock(&self) -> std::sync::MutexGuard<'_, ManyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn settle(&self, i: u32, r: EventResult) {
        self.lock().settle(i, r);
    }
}

impl ManyState {
    /// Settles slot `i` (once: a second outcome is ignored); the last one finishes the call.
    fn settle(&mut self, i: u32, r: EventResult) {
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return;
        };
        if !matches!(slot, Slot::Open) {
            return;
        }
        *slot = match r {
            Ok(d) => Slot::Delivered(d),
            Err(e) => Slot::Failed(Box::new(e)),
        };
        self.remaining -= 1;
        if self.remaining == 0 {
            self.finish();
        }
    }

    /// Hands every outcome to the caller's future (an unsettled slot, if any, as `Closed`).
    fn finish(&mut self) {
        let results = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|s| match s {
                Slot::Delivered(d) => Ok(d),
                Slot::Failed(e) => Err(*e),
                Slot::Open => Err(AdaptiveError::Closed { record: None }),
            })
            .collect();
        if let Some(tx) = self.done.take() {
            let _ = tx.send(results);
        }
    }
}

/// Resolves when the event is acknowledged, or with the error that failed it (handing the
/// event back). Dropping it does not cancel the send.
#[derive(Debug)]
pub struct EventFuture {
    rx: oneshot::Receiver<EventResult>,
}

impl Future for EventFuture {
    type Output = EventResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AdaptiveError::Closed { record: None })))
    }
}

/// Resolves when every event of a [`send_many`](crate::AdaptiveProducer::send_many) call is
/// settled: one outcome per event, in the order they were handed in. Dropping it does not
/// cancel the sends.
#[derive(Debug)]
pub struct ManyFuture {
    rx: oneshot::Receiver<Vec<EventResult>>,
}

impl Future for ManyFuture {
    type Output = Vec<EventResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every slot settles (a dropped one as Closed), so the sender never goes unanswered;
        // an empty answer is the one left if it somehow did.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(Result::unwrap_or_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(offset: i64) -> EventResult {
        Ok(EventDelivered {
            partition: 0,
            offset: Offset(offset),
            index: None,
            timestamp: None,
        })
    }

    #[tokio::test]
    async fn many_resolves_once_every_event_settled_in_hand_in_order() {
        let (replies, fut) = Reply::many(3);
        let mut replies: Vec<_> = replies.into_iter().map(Some).collect();
        // Settled out of order, one dropped unsettled.
        replies[2].take().unwrap().send(delivered(12));
        drop(replies[1].take());
        let mut fut = std::pin::pin!(fut);
        assert!(
            futures::poll!(fut.as_mut()).is_pending(),
            "one is still out"
        );
        replies[0].take().unwrap().send(delivered(10));
        let got = fut.await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().offset, Offset(10));
        assert!(matches!(got[1], Err(AdaptiveError::Closed { .. })));
        assert_eq!(got[2].as_ref().unwrap().offset, Offset(12));
    }

    #[tokio::test]
    async fn settle_all_answers_every_kind_of_reply_once() {
        let (many, fut_many) = Reply::many(3);
        let (one, fut_one) = Reply::one();
        let mut many = many.into_iter();
        let (a, b, c) = (
            many.next().unwrap(),
            many.next().unwrap(),
            many.next().unwrap(),
        );
        // Runs of one call interleaved with others, and a detached event.
        settle_all([
            (b, delivered(1)),
            (a, delivered(0)),
            (one, delivered(7)),
            (Reply::detached(), delivered(9)),
            (c, Err(AdaptiveError::Closed { record: None })),
        ]);
        assert_eq!(fut_one.await.unwrap().offset, Offset(7));
        let got = fut_many.await;
        assert_eq!(got[0].as_ref().unwrap().offset, Offset(0));
        assert_eq!(got[1].as_ref().unwrap().offset, Offset(1));
        assert!(got[2].is_err());
    }

    #[tokio::test]
    async fn many_of_nothing_resolves_empty() {
        let (replies, fut) = Reply::many(0);
        assert!(replies.is_empty());
        assert!(fut.await.is_empty());
    }
}
