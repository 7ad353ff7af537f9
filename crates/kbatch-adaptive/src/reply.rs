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
use std::task::{Context, Poll, Waker};

use kbatch_core::{Offset, Timestamp};
use kbatch_producer::{Delivered, DeliveryFuture};
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

impl EventDelivered {
    /// An event that is a Kafka record of its own (per-event), written where `d` says.
    pub(crate) fn own_record(d: &Delivered) -> Self {
        Self {
            partition: d.partition,
            offset: d.offset,
            index: None,
            timestamp: d.timestamp,
        }
    }
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
        (Self(Some(Kind::One(tx))), EventFuture(Settles::Reply(rx)))
    }

    /// No reply: failures are logged at debug level.
    pub(crate) fn detached() -> Self {
        Self(Some(Kind::Detached))
    }

    /// `n` replies sharing one future, in order.
    #[cfg(test)]
    pub(crate) fn many(n: usize) -> (Vec<Self>, ManyFuture) {
        let (call, f) = Self::call(n);
        ((0..n).map(|i| call.reply(i as u32)).collect(), f)
    }

    /// The `n` slots of one call and the future they share; each event's reply is made from
    /// the call as it is needed (one [`Reply`] an event, or [`Slots`] for many).
    pub(crate) fn call(n: usize) -> (Call, ManyFuture) {
        let (tx, rx) = oneshot::channel();
        let many = Arc::new(Many {
            state: Mutex::new(ManyState {
                results: ManyResults::open(n),
                remaining: n,
                done: Some(tx),
            }),
        });
        if n == 0 {
            many.lock().finish();
        }
        (Call(Arc::clone(&many)), ManyFuture { rx, many })
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

/// The slots of one `send_many` call.
#[derive(Debug)]
pub(crate) struct Call(Arc<Many>);

impl Call {
    /// The reply of event `i`.
    pub(crate) fn reply(&self, i: u32) -> Reply {
        Reply(Some(Kind::Many(Arc::clone(&self.0), i)))
    }

    /// An empty set of this call's slots, to [`push`](Slots::push) events into.
    pub(crate) fn slots(&self, capacity: usize) -> Slots {
        Slots::Call {
            many: Arc::clone(&self.0),
            at: Vec::with_capacity(capacity),
        }
    }
}

/// Events settled together: a piece of an envelope encoded where it was handed in (see
/// [`crate::fragment`] and [`crate::open`]). Either some events of one `send_many` call —
/// one lock and one record entry for all of them — or single `send`s, each with its own
/// reply. Dropped unsettled, they settle as `Closed`.
#[derive(Debug)]
pub(crate) enum Slots {
    /// Events of one call, by their places in it, in the order they were encoded.
    Call { many: Arc<Many>, at: Vec<u32> },
    /// Single sends, each with a future on the piece's shared outcome, in the order they
    /// were encoded.
    Each { piece: Arc<Piece>, n: u32 },
}

impl Slots {
    /// An empty set of single sends, to [`add_one`](Self::add_one) to.
    pub(crate) fn each() -> Self {
        Slots::Each {
            piece: Arc::new(Piece::default()),
            n: 0,
        }
    }

    /// Adds event `i` of the call (for the slots of a call).
    pub(crate) fn push(&mut self, i: u32) {
        if let Slots::Call { at, .. } = self {
            at.push(i);
        }
    }

    /// Adds a single send and returns its future (for single sends' slots; `None` for a
    /// call's).
    pub(crate) fn add_one(&mut self) -> Option<EventFuture> {
        match self {
            Slots::Each { piece, n } => {
                let f = EventFuture(Settles::Piece(Arc::clone(piece), *n));
                *n += 1;
                Some(f)
            }
            Slots::Call { .. } => None,
        }
    }

    /// Events held.
    pub(crate) fn len(&self) -> usize {
        match self {
            Slots::Call { at, .. } => at.len(),
            Slots::Each { n, .. } => *n as usize,
        }
    }

    /// Settles every event as written in one acknowledged envelope, at places `first..` of it.
    pub(crate) fn delivered(
        mut self,
        partition: i32,
        offset: Offset,
        timestamp: Option<Timestamp>,
        first: u32,
    ) {
        let w = Written {
            partition,
            offset,
            timestamp,
        };
        match &mut self {
            Slots::Call { many, at } => {
                let at = std::mem::take(at);
                many.lock().settle_written(&at, w, first);
            }
            Slots::Each { piece, n } => {
                if std::mem::take(n) > 0 {
                    piece.settle(Outcome::Written(w, first));
                }
            }
        }
    }

    /// Settles the `j`-th event with `error(j)`, for every `j`, in order.
    pub(crate) fn fail(mut self, error: impl FnMut(usize) -> AdaptiveError) {
        self.fail_left(error);
    }

    /// Settles the events not settled yet with `error(j)` each (a call's under one lock).
    fn fail_left(&mut self, mut error: impl FnMut(usize) -> AdaptiveError) {
        match self {
            Slots::Call { many, at } => {
                let at = std::mem::take(at);
                if !at.is_empty() {
                    let mut s = many.lock();
                    for (j, i) in at.into_iter().enumerate() {
                        s.settle(i, Err(error(j)));
                    }
                }
            }
            Slots::Each { piece, n } => {
                let n = std::mem::take(n) as usize;
                if n > 0 {
                    piece.settle(Outcome::Failed((0..n).map(|j| Some(error(j))).collect()));
                }
            }
        }
    }
}

/// The one outcome of a piece of single sends: one allocation and one lock for all of them,
/// where a oneshot each was an allocation, a free and a cross-thread hand-over per event.
#[derive(Debug, Default)]
pub(crate) struct Piece {
    state: Mutex<PieceState>,
}

#[derive(Debug, Default)]
struct PieceState {
    outcome: Outcome,
    /// Futures polled before the outcome: event and waker.
    wakers: Vec<(u32, Waker)>,
}

#[derive(Debug, Default)]
enum Outcome {
    #[default]
    Open,
    /// In one acknowledged envelope, the piece's first event at this place of it.
    Written(Written, u32),
    /// Each event's error, taken by its future.
    Failed(Vec<Option<AdaptiveError>>),
}

impl Piece {
    fn lock(&self) -> std::sync::MutexGuard<'_, PieceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles the piece (once) and wakes its futures.
    fn settle(&self, outcome: Outcome) {
        let wakers = {
            let mut s = self.lock();
            if !matches!(s.outcome, Outcome::Open) {
                return;
            }
            s.outcome = outcome;
            std::mem::take(&mut s.wakers)
        };
        for (_, w) in wakers {
            w.wake();
        }
    }

    /// Event `j`'s outcome once settled; else remembers `cx`'s waker.
    fn poll(&self, j: u32, cx: &mut Context<'_>) -> Poll<EventResult> {
        let mut s = self.lock();
        match &mut s.outcome {
            Outcome::Written(w, first) => Poll::Ready(Ok(delivered(*w, *first + j))),
            Outcome::Failed(errors) => Poll::Ready(Err(errors
                .get_mut(j as usize)
                .and_then(Option::take)
                .unwrap_or(AdaptiveError::Closed { record: None }))),
            Outcome::Open => {
                match s.wakers.iter_mut().rev().find(|(i, _)| *i == j) {
                    Some((_, w)) => w.clone_from(cx.waker()),
                    None => s.wakers.push((j, cx.waker().clone())),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.fail_left(|_| AdaptiveError::Closed { record: None });
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
pub(crate) struct Many {
    state: Mutex<ManyState>,
}

#[derive(Debug)]
struct ManyState {
    results: ManyResults,
    remaining: usize,
    done: Option<oneshot::Sender<ManyResults>>,
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
    /// Settles event `i` (once: a second outcome is ignored); the last one finishes the call.
    fn settle(&mut self, i: u32, r: EventResult) {
        if self.results.settle(i, r) {
            self.remaining -= 1;
            if self.remaining == 0 {
                self.finish();
            }
        }
    }

    /// Settles the events at `at` (once each) as written in `w`, the `j`-th at place
    /// `first + j` of its envelope.
    fn settle_written(&mut self, at: &[u32], w: Written, first: u32) {
        let settled = self.results.settle_written(at, w, first);
        self.remaining -= settled;
        if settled > 0 && self.remaining == 0 {
            self.finish();
        }
    }

    /// Hands every outcome to the caller's future (an unsettled event, if any, as `Closed`).
    fn finish(&mut self) {
        let mut results = std::mem::take(&mut self.results);
        results.close_open();
        if let Some(tx) = self.done.take() {
            let _ = tx.send(results);
        }
    }
}

/// An event not settled yet.
const OPEN: u32 = u32::MAX;
/// A failed event: its error is in `ManyResults::errors`.
const FAILED: u32 = u32::MAX - 1;
/// No index: the event is a Kafka record of its own.
const NO_INDEX: u32 = u32::MAX;

/// Where one event of a call landed: the acknowledged Kafka record (an entry of
/// `ManyResults::records`, or a marker) and its index in that record's envelope. Eight bytes
/// an event: settling a call touches a fifth of the memory a full outcome per event did (the
/// slots are cold by the time the broker answers, so every cache line is a miss).
#[derive(Clone, Copy, Debug)]
struct Landed {
    record: u32,
    index: u32,
}

/// An acknowledged Kafka record some of a call's events are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    partition: i32,
    offset: Offset,
    timestamp: Option<Timestamp>,
}

/// The outcomes of one [`send_many`](crate::AdaptiveProducer::send_many) call, in the order
/// the events were handed in. Compact: an event's outcome is made when asked for
/// ([`get`](Self::get), [`iter`](Self::iter), or by value through `into_iter`), so a caller
/// that only counts ([`delivered`](Self::delivered), [`failed`](Self::failed)) pays nothing
/// per event.
#[derive(Debug, Default)]
pub struct ManyResults {
    events: Vec<Landed>,
    records: Vec<Written>,
    /// Failed events and why, in the order they failed.
    errors: Vec<(u32, AdaptiveError)>,
}

impl ManyResults {
    fn open(n: usize) -> Self {
        Self {
            events: vec![
                Landed {
                    record: OPEN,
                    index: NO_INDEX,
                };
                n
            ],
            records: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Records `r` for event `i`; false when `i` was settled already (or is out of range).
    fn settle(&mut self, i: u32, r: EventResult) -> bool {
        let Some(slot) = self.events.get(i as usize) else {
            return false;
        };
        if slot.record != OPEN {
            return false;
        }
        let landed = match r {
            Ok(d) => {
                let w = Written {
                    partition: d.partition,
                    offset: d.offset,
                    timestamp: d.timestamp,
                };
                // An envelope's events settle one after another: one entry for all of them.
                if self.records.last() != Some(&w) {
                    self.records.push(w);
                }
                Landed {
                    record: (self.records.len() - 1) as u32,
                    index: d.index.unwrap_or(NO_INDEX),
                }
            }
            Err(e) => {
                self.errors.push((i, e));
                Landed {
                    record: FAILED,
                    index: NO_INDEX,
                }
            }
        };
        self.events[i as usize] = landed;
        true
    }

    /// Records the events at `at` as written in `w`, the `j`-th at place `first + j` of its
    /// envelope; returns how many were open (an event settled already, or out of range, is
    /// left as it is).
    fn settle_written(&mut self, at: &[u32], w: Written, first: u32) -> usize {
        if self.records.last() != Some(&w) {
            self.records.push(w);
        }
        let record = (self.records.len() - 1) as u32;
        let mut settled = 0;
        for (j, &i) in at.iter().enumerate() {
            if let Some(slot) = self.events.get_mut(i as usize)
                && slot.record == OPEN
            {
                *slot = Landed {
                    record,
                    index: first + j as u32,
                };
                settled += 1;
            }
        }
        settled
    }

    /// Settles every open event as `Closed`, and orders the errors by event.
    fn close_open(&mut self) {
        for (i, e) in self.events.iter_mut().enumerate() {
            if e.record == OPEN {
                e.record = FAILED;
                self.errors
                    .push((i as u32, AdaptiveError::Closed { record: None }));
            }
        }
        self.errors.sort_by_key(|(i, _)| *i);
    }

    /// Every outcome by value, `None` for an event not settled.
    fn into_partial(mut self) -> Vec<Option<EventResult>> {
        // `into_iter` pairs errors with events in event order.
        self.errors.sort_by_key(|(i, _)| *i);
        let open: Vec<bool> = self.events.iter().map(|e| e.record == OPEN).collect();
        self.into_iter()
            .zip(open)
            .map(|(r, open)| (!open).then_some(r))
            .collect()
    }

    /// Events in the call.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True for a call of no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events acknowledged.
    pub fn delivered(&self) -> usize {
        self.events.len() - self.errors.len()
    }

    /// Events failed.
    pub fn failed(&self) -> usize {
        self.errors.len()
    }

    /// Event `i`'s outcome.
    pub fn get(&self, i: usize) -> Option<Result<EventDelivered, &AdaptiveError>> {
        let e = self.events.get(i)?;
        Some(self.outcome(i as u32, *e))
    }

    /// Every event's outcome, in hand-in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<EventDelivered, &AdaptiveError>> + '_ {
        self.events
            .iter()
            .enumerate()
            .map(|(i, e)| self.outcome(i as u32, *e))
    }

    /// The failed events (their positions in the call) and why.
    pub fn errors(&self) -> impl Iterator<Item = (usize, &AdaptiveError)> + '_ {
        self.errors.iter().map(|(i, e)| (*i as usize, e))
    }

    fn outcome(&self, i: u32, e: Landed) -> Result<EventDelivered, &AdaptiveError> {
        match self.records.get(e.record as usize) {
            Some(w) => Ok(delivered(*w, e.index)),
            None => Err(self
                .errors
                .binary_search_by_key(&i, |(j, _)| *j)
                .map(|k| &self.errors[k].1)
                .unwrap_or(&CLOSED)),
        }
    }
}

/// The answer for an event with no outcome at all (not reached: every event settles).
static CLOSED: AdaptiveError = AdaptiveError::Closed { record: None };

fn delivered(w: Written, index: u32) -> EventDelivered {
    EventDelivered {
        partition: w.partition,
        offset: w.offset,
        index: (index != NO_INDEX).then_some(index),
        timestamp: w.timestamp,
    }
}

impl IntoIterator for ManyResults {
    type Item = EventResult;
    type IntoIter = ManyResultsIter;

    /// Every event's outcome by value (errors hand their records back), in hand-in order.
    fn into_iter(self) -> ManyResultsIter {
        ManyResultsIter {
            events: self.events.into_iter().enumerate(),
            records: self.records,
            errors: self.errors.into_iter().peekable(),
        }
    }
}

/// [`ManyResults`] by value.
#[derive(Debug)]
pub struct ManyResultsIter {
    events: std::iter::Enumerate<std::vec::IntoIter<Landed>>,
    records: Vec<Written>,
    errors: std::iter::Peekable<std::vec::IntoIter<(u32, AdaptiveError)>>,
}

impl Iterator for ManyResultsIter {
    type Item = EventResult;

    fn next(&mut self) -> Option<EventResult> {
        let (i, e) = self.events.next()?;
        Some(match self.records.get(e.record as usize) {
            Some(w) => Ok(delivered(*w, e.index)),
            None => match self.errors.next_if(|(j, _)| *j as usize == i) {
                Some((_, err)) => Err(err),
                None => Err(AdaptiveError::Closed { record: None }),
            },
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

impl ExactSizeIterator for ManyResultsIter {}

/// Resolves when the event is acknowledged, or with the error that failed it (handing the
/// event back). Dropping it does not cancel the send.
#[derive(Debug)]
pub struct EventFuture(Settles);

#[derive(Debug)]
enum Settles {
    /// Through the intake: the sender's completion task answers.
    Reply(oneshot::Receiver<EventResult>),
    /// Sent straight to the client (see [`crate::path`]): its own delivery future.
    Direct(DeliveryFuture),
    /// Packed where it was handed in with other single sends (see [`crate::open`]): its
    /// place in their piece.
    Piece(Arc<Piece>, u32),
}

impl EventFuture {
    /// The future of an event sent straight to the client.
    pub(crate) fn direct(f: DeliveryFuture) -> Self {
        Self(Settles::Direct(f))
    }
}

impl Future for EventFuture {
    type Output = EventResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Settles::Reply(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(AdaptiveError::Closed { record: None }))),
            Settles::Direct(f) => Pin::new(f).poll(cx).map(|r| match r {
                Ok(d) => Ok(EventDelivered::own_record(&d)),
                Err(e) => Err(AdaptiveError::Produce(e)),
            }),
            Settles::Piece(piece, j) => piece.poll(*j, cx),
        }
    }
}

/// Resolves when every event of a [`send_many`](crate::AdaptiveProducer::send_many) call is
/// settled: one outcome per event, in the order they were handed in. Dropping it does not
/// cancel the sends.
#[derive(Debug)]
pub struct ManyFuture {
    rx: oneshot::Receiver<ManyResults>,
    many: Arc<Many>,
}

impl ManyFuture {
    /// The outcomes settled so far, in hand-in order (`None`: not settled yet), giving up on
    /// the rest — for a caller whose deadline passed that must still report what was
    /// acknowledged. The events not settled are still sent; their outcomes go nowhere.
    pub fn into_settled(mut self) -> Vec<Option<EventResult>> {
        let mut state = self.many.lock();
        if state.done.is_none() {
            // Finished: every outcome was handed to the channel, under this lock.
            drop(state);
            return self
                .rx
                .try_recv()
                .map(|r| r.into_iter().map(Some).collect())
                .unwrap_or_default();
        }
        state.done = None;
        // Later outcomes find no slot and are ignored.
        let results = std::mem::take(&mut state.results);
        drop(state);
        results.into_partial()
    }
}

impl Future for ManyFuture {
    type Output = ManyResults;

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

    /// A piece of single sends: a future polled before the piece settles is woken by it; each
    /// event gets its own place in the envelope, or its own error; a piece dropped unsettled
    /// answers `Closed`.
    #[tokio::test]
    async fn a_piece_of_single_sends_answers_each_at_its_place() {
        let mut slots = Slots::each();
        let mut futs: Vec<EventFuture> = (0..3).map(|_| slots.add_one().unwrap()).collect();
        assert_eq!(slots.len(), 3);
        let waiting = tokio::spawn(futs.remove(1));
        tokio::task::yield_now().await;
        slots.delivered(2, Offset(40), None, 5);
        let d = waiting.await.unwrap().unwrap();
        assert_eq!((d.partition, d.offset, d.index), (2, Offset(40), Some(6)));
        assert_eq!(futs.remove(0).await.unwrap().index, Some(5));
        assert_eq!(futs.remove(0).await.unwrap().index, Some(7));

        let mut slots = Slots::each();
        let futs: Vec<EventFuture> = (0..2).map(|_| slots.add_one().unwrap()).collect();
        slots.fail(|j| AdaptiveError::Closed {
            record: Some(Box::new(kbatch_core::Record::new("t", j.to_string()))),
        });
        for (j, f) in futs.into_iter().enumerate() {
            let r = f.await.unwrap_err().into_record().unwrap();
            assert_eq!(r.value.as_deref(), Some(j.to_string().as_bytes()));
        }

        let mut slots = Slots::each();
        let f = slots.add_one().unwrap();
        drop(slots);
        assert!(matches!(
            f.await,
            Err(AdaptiveError::Closed { record: None })
        ));
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
        let got: Vec<EventResult> = fut.await.into_iter().collect();
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
        let got: Vec<EventResult> = fut_many.await.into_iter().collect();
        assert_eq!(got[0].as_ref().unwrap().offset, Offset(0));
        assert_eq!(got[1].as_ref().unwrap().offset, Offset(1));
        assert!(got[2].is_err());
    }

    #[tokio::test]
    async fn many_results_answer_by_reference_and_by_value_alike() {
        let (replies, fut) = Reply::many(6);
        let at = |offset: i64, index: Option<u32>| EventDelivered {
            partition: 3,
            offset: Offset(offset),
            index,
            timestamp: Some(Timestamp(1_700)),
        };
        let mut r: Vec<_> = replies.into_iter().map(Some).collect();
        // Failures out of order, two envelopes and a record of its own.
        r[4].take()
            .unwrap()
            .send(Err(AdaptiveError::Closed { record: None }));
        settle_all([
            (r[0].take().unwrap(), Ok(at(40, Some(0)))),
            (r[1].take().unwrap(), Ok(at(40, Some(1)))),
            (r[3].take().unwrap(), Ok(at(41, Some(0)))),
        ]);
        r[5].take().unwrap().send(Ok(at(42, None)));
        r[2].take()
            .unwrap()
            .send(Err(AdaptiveError::Closed { record: None }));
        let got = fut.await;
        assert_eq!((got.len(), got.delivered(), got.failed()), (6, 4, 2));
        assert_eq!(got.errors().map(|(i, _)| i).collect::<Vec<_>>(), [2, 4]);
        let expected = [
            Some(at(40, Some(0))),
            Some(at(40, Some(1))),
            None,
            Some(at(41, Some(0))),
            None,
            Some(at(42, None)),
        ];
        let by_ref: Vec<_> = got.iter().map(Result::ok).collect();
        assert_eq!(by_ref, expected);
        assert_eq!(got.get(3).unwrap().unwrap(), at(41, Some(0)));
        assert!(got.get(4).unwrap().is_err());
        assert!(got.get(6).is_none());
        let by_value: Vec<_> = got.into_iter().map(Result::ok).collect();
        assert_eq!(by_value, expected);
    }

    #[tokio::test]
    async fn into_settled_reports_what_settled_and_ignores_the_rest() {
        let (replies, fut) = Reply::many(4);
        let mut r: Vec<_> = replies.into_iter().map(Some).collect();
        r[3].take()
            .unwrap()
            .send(Err(AdaptiveError::Closed { record: None }));
        r[1].take().unwrap().send(delivered(11));
        let got = fut.into_settled();
        assert_eq!(got.len(), 4);
        assert!(got[0].is_none() && got[2].is_none());
        assert_eq!(
            got[1].as_ref().unwrap().as_ref().unwrap().offset,
            Offset(11)
        );
        assert!(matches!(got[3], Some(Err(AdaptiveError::Closed { .. }))));
        // Outcomes after giving up go nowhere (and do not panic).
        r[0].take().unwrap().send(delivered(10));
        drop(r);
        // A call already finished answers whole.
        let (replies, fut) = Reply::many(2);
        for (i, reply) in replies.into_iter().enumerate() {
            reply.send(delivered(i as i64));
        }
        let got = fut.into_settled();
        assert_eq!(got.iter().filter(|o| matches!(o, Some(Ok(_)))).count(), 2);
    }

    #[tokio::test]
    async fn many_of_nothing_resolves_empty() {
        let (replies, fut) = Reply::many(0);
        assert!(replies.is_empty());
        assert!(fut.await.is_empty());
    }
}
