//! The load and its clock: events on a fixed schedule (open loop) or as fast as the contender
//! takes them (closed loop), and the collector that times every acknowledgement.
//!
//! ```text
//!  ready:       16 events through the contender, awaited, not counted (client start-up)
//!  open loop:   send n is due at t0 + n·k/rate ─► sender: wait for that time, a window
//!  closed loop: send n is due when the sender     permit, the contender's send()  ─┐
//!               gets to it                                                         │ (due, future)
//!  collector task: awaits every future; latency = ack time − due time  ◄───────────┘
//!    (rates: each stamped as it settles, a message per send; saturation: in send order,
//!    sends handed over a chunk at a time, see closed_loop and collect_in_order)
//! ```
//!
//! Coordinated omission: in the open loop the latency of an event counts from when it was
//! DUE, not from when the sender got it out, so a sender held back by the contender (a full
//! intake, a full window) adds that lateness to every event behind it.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
// tokio's clock (std's outside tests), so the tests can run it paused.
use tokio::time::Instant;

/// Where one send's events landed: one Kafka record, and any others (a `send_many` call's
/// events land in several; empty otherwise, without allocating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Ack {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) more: Vec<(i32, i64)>,
}

/// A contender as the load sees it.
pub(super) trait Target {
    /// Resolves when the send's events are acknowledged (or failed, in words).
    /// `Unpin`, so the in-order collector holds it as it is (every client's future is).
    type Fut: Future<Output = Result<Ack, String>> + Send + Unpin + 'static;
    /// Events one send carries: 1, or the BULK baseline's events per envelope.
    fn events_per_send(&self) -> u32;
    /// Hands send `n` (its events are `n·k .. (n+1)·k` of the data) to the contender, waiting
    /// while it is full.
    fn send(&self, n: u64) -> impl Future<Output = anyhow::Result<Self::Fut>>;
}

/// How events are offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Load {
    /// Open loop: event i due at t0 + i / rate (events/s).
    Rate(f64),
    /// Closed loop: as fast as the contender accepts, within the window.
    Saturation,
}

impl Load {
    /// Its name in the table and the JSON: `100/s`, `saturation`.
    pub(super) fn label(self) -> String {
        match self {
            Load::Rate(r) => format!("{}/s", thousands(r)),
            Load::Saturation => "saturation".into(),
        }
    }

    /// The offered rate; `None` for saturation.
    pub(super) fn offered_rate(self) -> Option<f64> {
        match self {
            Load::Rate(r) => Some(r),
            Load::Saturation => None,
        }
    }
}

/// How long a run lasts and what bounds it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub(super) load: Load,
    /// Offered first under the same load and not counted (connections, metadata, the adaptive
    /// controller finding its level).
    pub(super) settle: Duration,
    /// The counted part lasts at least this long…
    pub(super) measure: Duration,
    /// …and holds at least this many events.
    pub(super) min_events: u64,
    /// Most events sent and not yet acknowledged, whoever the contender is.
    pub(super) window: usize,
}

impl Plan {
    /// Sends of the settle phase and of the counted phase at a fixed `rate`, `per` events each.
    pub(super) fn rate_sends(&self, rate: f64, per: u32) -> (u64, u64) {
        let per = f64::from(per);
        let settle = (rate * self.settle.as_secs_f64() / per).ceil() as u64;
        let counted = (rate * self.measure.as_secs_f64())
            .max(self.min_events as f64)
            .div_euclid(per)
            .max(1.0) as u64;
        (settle, counted)
    }
}

/// What one run measured. Only events of the counted phase are in it.
#[derive(Debug)]
pub(super) struct Measured {
    /// Events sent in the counted phase.
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) failed: u64,
    pub(super) first_error: Option<String>,
    /// From the first counted event's due time to the last counted acknowledgement.
    pub(super) seconds: f64,
    /// Acknowledgements (any event's) while the counted schedule ran, from the first counted
    /// event's due time to the last one's; and that span.
    pub(super) acked_during_schedule: u64,
    pub(super) schedule_seconds: f64,
    /// Latency of each acknowledged event, microseconds.
    pub(super) latency_us: Histogram<u64>,
    /// Kafka records the counted events took: per partition, highest − lowest offset + 1
    /// (each run has a topic of its own and only the counted phase writes after the settle).
    pub(super) records: u64,
    pub(super) partitions_seen: usize,
    /// How far behind its schedule the sender fell at most (open loop), ms.
    pub(super) sender_lag_max_ms: f64,
    /// At saturation, the CPU time the sending thread used per counted event, ns: the one
    /// thread every contender's sends run on, so what a send costs its caller.
    pub(super) sender_cpu_ns_per_event: Option<f64>,
}

impl Measured {
    /// `n` over the counted seconds (first due send to last acknowledgement); NaN when
    /// nothing was counted, so a spread over rounds leaves it out.
    pub(super) fn per_s(&self, n: u64) -> f64 {
        if self.seconds > 0.0 {
            n as f64 / self.seconds
        } else {
            f64::NAN
        }
    }
}

struct Pending<F> {
    due: Instant,
    counted: bool,
    fut: F,
}

/// Runs `plan` against `t` and times every event.
pub(super) async fn drive<T: Target>(t: &T, plan: &Plan) -> anyhow::Result<Measured> {
    let per = t.events_per_send();
    anyhow::ensure!(
        plan.window >= per as usize,
        "the window ({}) must hold one send's {per} events",
        plan.window
    );
    ready(t).await?;
    let permits = Arc::new(Semaphore::new(plan.window));
    // Never full: a pending send holds `per` of the window's permits (and a message at least
    // one send).
    let capacity = plan.window / per as usize + 1;
    let ((sent, lag, sender_cpu), c) = match plan.load {
        Load::Rate(rate) => {
            let (tx, rx) = mpsc::channel(capacity);
            let collector = tokio::spawn(collect(rx, Arc::clone(&permits), per));
            let sender = open_loop(t, plan, rate, &permits, tx).await;
            let c = collector.await?;
            let (sent, lag) = sender?;
            ((sent, lag, None), c)
        }
        Load::Saturation => {
            let (tx, rx) = mpsc::channel(capacity);
            let collector = tokio::spawn(collect_in_order(rx, Arc::clone(&permits), per));
            let sender = closed_loop(t, plan, &permits, tx).await;
            let c = collector.await?;
            let (sent, cpu) = sender?;
            ((sent, Duration::ZERO, cpu), c)
        }
    };
    let (acked_during_schedule, schedule_seconds) = c.acked_during_schedule();
    let seconds = match (c.first_due, c.last_ack) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Measured {
        sent,
        acked: c.acked,
        failed: c.failed,
        first_error: c.first_error,
        seconds,
        acked_during_schedule,
        schedule_seconds,
        latency_us: c.latency_us,
        records: c
            .offsets
            .values()
            .map(|(lo, hi)| (hi - lo + 1) as u64)
            .sum(),
        partitions_seen: c.offsets.len(),
        sender_lag_max_ms: lag.as_secs_f64() * 1e3,
        sender_cpu_ns_per_event: sender_cpu
            .filter(|_| sent > 0)
            .map(|cpu| cpu.as_nanos() as f64 / sent as f64),
    })
}

/// Sends before the schedule starts, awaited and never counted: a new client's connection,
/// metadata and idempotent producer id take a few hundred ms, which is start-up, not latency
/// under load. The schedule's own event numbers start again at 0 after it.
pub(super) const READY_SENDS: u64 = 16;

async fn ready<T: Target>(t: &T) -> anyhow::Result<()> {
    let sends = READY_SENDS.div_ceil(u64::from(t.events_per_send()));
    let mut waiting = Vec::new();
    for n in 0..sends {
        waiting.push(t.send(n).await?);
    }
    for f in waiting {
        f.await
            .map_err(|e| anyhow::anyhow!("a start-up send failed: {e}"))?;
    }
    Ok(())
}

/// Send n is due at t0 + n·per/rate; the sender sleeps until then (tokio's timer: up to 1 ms
/// late, and that counts) unless it is already behind.
async fn open_loop<T: Target>(
    t: &T,
    plan: &Plan,
    rate: f64,
    permits: &Semaphore,
    tx: mpsc::Sender<Pending<T::Fut>>,
) -> anyhow::Result<(u64, Duration)> {
    let per = t.events_per_send();
    let (settle, counted) = plan.rate_sends(rate, per);
    let period = f64::from(per) / rate;
    let t0 = Instant::now();
    let mut lag = Duration::ZERO;
    for n in 0..settle + counted {
        let due = t0 + Duration::from_secs_f64(n as f64 * period);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        permits.acquire_many(per).await?.forget();
        let fut = t.send(n).await?;
        lag = lag.max(Instant::now().saturating_duration_since(due));
        let counted = n >= settle;
        tx.send(Pending { due, counted, fut })
            .await
            .map_err(|_| anyhow::anyhow!("the collector stopped early"))?;
    }
    Ok((counted * u64::from(per), lag))
}

/// Events whose sends the closed loop hands to the collector in one message (a send of more
/// events goes alone).
const CHUNK_EVENTS: u32 = 1_024;
/// Longest a send waits in the closed loop's chunk before the collector is told of it.
const CHUNK_AGE: Duration = Duration::from_millis(1);

/// Sends as fast as the contender takes them; each send is due when the sender has a window
/// permit for it (so its latency is the time it spends in the contender, `send` included).
/// Sends reach the collector in chunks of [`CHUNK_EVENTS`] events, their permits taken a
/// chunk at a time: a channel message, a semaphore operation and a collector wake-up per
/// event cost as much as a per-event client's own work on this 2-core machine, and only the
/// contenders with a future per event paid them (BULK and `send_many` pay once per 1,000
/// events). A chunk goes early when it is [`CHUNK_AGE`] old or the window is out of
/// permits (its sends hold permits only the collector gives back).
async fn closed_loop<T: Target>(
    t: &T,
    plan: &Plan,
    permits: &Semaphore,
    tx: mpsc::Sender<Vec<Pending<T::Fut>>>,
) -> anyhow::Result<(u64, Option<Duration>)> {
    let per = t.events_per_send();
    let sends_per_chunk = (CHUNK_EVENTS / per).max(1);
    // The thread's CPU time when counting began: this loop runs on one thread (the bench's
    // `block_on`), and so does each send's synchronous part, the client's produce call in it.
    let mut cpu_from: Option<Duration> = None;
    let counting_from = Instant::now() + plan.settle;
    let mut first_counted: Option<Instant> = None;
    let mut counted_events = 0u64;
    let mut chunk: Vec<Pending<T::Fut>> = Vec::with_capacity(sends_per_chunk as usize);
    // Permits taken and not yet used by a send.
    let mut held = 0u32;
    for n in 0.. {
        if held < per {
            let want = sends_per_chunk * per;
            if let Ok(p) = permits.try_acquire_many(want) {
                p.forget();
                held += want;
            } else {
                // The window is short: what the collector has not seen yet holds permits
                // only it gives back. Then a send's worth at a time, as room comes.
                hand_over(&tx, &mut chunk).await?;
                permits.acquire_many(per).await?.forget();
                held += per;
            }
        }
        held -= per;
        let due = Instant::now();
        let counted = due >= counting_from;
        if counted {
            let first = *first_counted.get_or_insert_with(|| {
                cpu_from = thread_cpu();
                due
            });
            if due - first >= plan.measure && counted_events >= plan.min_events {
                break;
            }
            counted_events += u64::from(per);
        }
        let fut = t.send(n).await?;
        chunk.push(Pending { due, counted, fut });
        // The chunk's age is its first send's.
        let started = chunk.first().map_or(due, |p| p.due);
        if chunk.len() >= sends_per_chunk as usize || due - started >= CHUNK_AGE {
            hand_over(&tx, &mut chunk).await?;
        }
    }
    let cpu = match (cpu_from, thread_cpu()) {
        (Some(from), Some(to)) => Some(to.saturating_sub(from)),
        _ => None,
    };
    // Permits taken and not used are never waited on again.
    hand_over(&tx, &mut chunk).await?;
    Ok((counted_events, cpu))
}

/// CPU time (user and system) of the calling thread so far, from `/proc/thread-self/stat`
/// in clock ticks of 10 ms (Linux's `USER_HZ` of 100): over a counted phase of seconds that
/// is within a fraction of a percent. `None` where the file is missing or unreadable.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    parse_thread_cpu(&stat)
}

/// `utime` + `stime` (fields 14 and 15) of a `/proc/…/stat` line; the command name before
/// them is in parentheses and may hold spaces, so fields are counted after its last `)`.
fn parse_thread_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Sends the chunk's sends, if any, to the collector; leaves the chunk empty.
async fn hand_over<F>(
    tx: &mpsc::Sender<Vec<Pending<F>>>,
    chunk: &mut Vec<Pending<F>>,
) -> anyhow::Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let sends = std::mem::replace(chunk, Vec::with_capacity(chunk.capacity()));
    tx.send(sends)
        .await
        .map_err(|_| anyhow::anyhow!("the collector stopped early"))
}

struct Collected {
    latency_us: Histogram<u64>,
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    first_due: Option<Instant>,
    last_due: Option<Instant>,
    last_ack: Option<Instant>,
    /// Lowest and highest offset per partition, counted events only.
    offsets: BTreeMap<i32, (i64, i64)>,
    /// Events acknowledged in each millisecond since `origin`, settle events included: how
    /// many acknowledgements land while the counted schedule runs.
    acks_per_ms: Vec<u64>,
    origin: Option<Instant>,
}

impl Collected {
    /// Acknowledgements (of any event) from the first counted event's due time to the last
    /// one's, and that span in seconds.
    fn acked_during_schedule(&self) -> (u64, f64) {
        let (Some(o), Some(a), Some(b)) = (self.origin, self.first_due, self.last_due) else {
            return (0, 0.0);
        };
        let ms = |t: Instant| t.saturating_duration_since(o).as_millis() as usize;
        let (from, to) = (ms(a), ms(b));
        let n = self
            .acks_per_ms
            .iter()
            .skip(from)
            .take(to.saturating_sub(from) + 1)
            .sum();
        (n, b.saturating_duration_since(a).as_secs_f64())
    }

    fn new() -> Self {
        Self {
            // 1 µs to 1 h at 3 significant digits; larger values are clamped, never dropped.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant, valid bounds")),
            acked: 0,
            failed: 0,
            first_error: None,
            first_due: None,
            last_due: None,
            last_ack: None,
            offsets: BTreeMap::new(),
            acks_per_ms: Vec::new(),
            origin: None,
        }
    }

    /// Notes a send as it reaches the collector.
    fn sent(&mut self, due: Instant, counted: bool) {
        self.origin.get_or_insert(due);
        if counted {
            self.first_due.get_or_insert(due);
            self.last_due = Some(due);
        }
    }

    /// Notes a send's outcome, stamped `now`.
    fn settled(
        &mut self,
        due: Instant,
        counted: bool,
        now: Instant,
        per: u32,
        r: Result<Ack, String>,
    ) {
        if r.is_ok() {
            self.ack_at(now, per);
        }
        if counted {
            self.tally(due, now, per, r);
        }
    }

    fn ack_at(&mut self, now: Instant, per: u32) {
        let Some(o) = self.origin else { return };
        let i = now.saturating_duration_since(o).as_millis() as usize;
        if self.acks_per_ms.len() <= i {
            self.acks_per_ms.resize(i + 1, 0);
        }
        self.acks_per_ms[i] += u64::from(per);
    }

    fn tally(&mut self, due: Instant, now: Instant, per: u32, r: Result<Ack, String>) {
        match r {
            Ok(a) => {
                let us = now.saturating_duration_since(due).as_micros();
                self.latency_us
                    .saturating_record_n(u64::try_from(us).unwrap_or(u64::MAX).max(1), per.into());
                self.acked += u64::from(per);
                self.last_ack = Some(self.last_ack.map_or(now, |l| l.max(now)));
                for (partition, offset) in std::iter::once((a.partition, a.offset)).chain(a.more) {
                    let e = self.offsets.entry(partition).or_insert((offset, offset));
                    e.0 = e.0.min(offset);
                    e.1 = e.1.max(offset);
                }
            }
            Err(e) => {
                self.failed += u64::from(per);
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Awaits every pending send as it completes and stamps it then; gives its window permits
/// back. Exact stamps, at the price of a registered wake-up per send: for the rate points.
async fn collect<F>(
    mut rx: mpsc::Receiver<Pending<F>>,
    permits: Arc<Semaphore>,
    per: u32,
) -> Collected
where
    F: Future<Output = Result<Ack, String>> + Send + 'static,
{
    let mut c = Collected::new();
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some(p) => {
                    c.sent(p.due, p.counted);
                    let (due, counted) = (p.due, p.counted);
                    waiting.push(p.fut.map(move |r| (due, counted, r)));
                }
                None => open = false,
            },
            Some((due, counted, r)) = waiting.next(), if !waiting.is_empty() => {
                permits.add_permits(per as usize);
                c.settled(due, counted, Instant::now(), per, r);
            },
            else => break,
        }
    }
    c
}

/// The collector of the saturation runs: takes the sends a chunk at a time (see
/// [`closed_loop`]), awaits them in the order they were made, and with the oldest stamps every
/// later one already settled. An exact stamp costs a registered wake-up per send (a
/// `FuturesUnordered` task woken by each acknowledgement):
/// at a million per-event futures a second that collector took a core of this 2-core machine
/// and was what held the sender back — the contenders with a future per event measured at a
/// third to a quarter of their speed, the ones with a future per 1,000 events did not. In
/// order, a send settled behind an older one is stamped when that one settles (later, never
/// earlier): at saturation latency is informational (the window sets it), throughput is
/// what is judged, and every contender is collected alike.
async fn collect_in_order<F>(
    mut rx: mpsc::Receiver<Vec<Pending<F>>>,
    permits: Arc<Semaphore>,
    per: u32,
) -> Collected
where
    F: Future<Output = Result<Ack, String>> + Send + Unpin + 'static,
{
    let mut c = Collected::new();
    let mut waiting: VecDeque<Pending<F>> = VecDeque::new();
    let mut open = true;
    loop {
        let head = waiting.front_mut().map(|p| &mut p.fut);
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some(sends) => {
                    for p in sends {
                        c.sent(p.due, p.counted);
                        waiting.push_back(p);
                    }
                }
                None => open = false,
            },
            r = async { head.expect("guarded: not empty").await }, if head.is_some() => {
                let now = Instant::now();
                let p = waiting.pop_front().expect("the head just settled");
                c.settled(p.due, p.counted, now, per, r);
                let mut settled = 1;
                // Those behind it that settled meanwhile, stamped alike.
                while let Some(next) = waiting.front_mut() {
                    let Some(r) = (&mut next.fut).now_or_never() else { break };
                    let p = waiting.pop_front().expect("front exists");
                    c.settled(p.due, p.counted, now, per, r);
                    settled += 1;
                }
                // Once per wake-up: each call takes the semaphore's lock.
                permits.add_permits(settled * per as usize);
            },
            else => break,
        }
    }
    c
}

/// `1234567.0` as `1,234,567` (whole numbers; others as given).
pub(super) fn thousands(v: f64) -> String {
    if v.fract() != 0.0 || !v.is_finite() || v.abs() >= 1e15 {
        return format!("{v}");
    }
    let digits = format!("{}", v.abs() as u64);
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completes each send after a fixed delay, from a task of its own (as a client settles
    /// a future whether or not it is polled yet); records where it would land.
    struct Delayed {
        delay: Duration,
        per: u32,
    }

    impl Target for Delayed {
        type Fut = std::pin::Pin<Box<dyn Future<Output = Result<Ack, String>> + Send>>;
        fn events_per_send(&self) -> u32 {
            self.per
        }
        async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
            let d = self.delay;
            let (settle, settled) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = settle.send(Ack {
                    partition: (n % 2) as i32,
                    offset: (n / 2) as i64,
                    more: Vec::new(),
                });
            });
            Ok(Box::pin(settled.map(|r| r.map_err(|e| e.to_string()))))
        }
    }

    fn plan(load: Load) -> Plan {
        Plan {
            load,
            settle: Duration::from_millis(100),
            measure: Duration::from_millis(300),
            min_events: 10,
            window: 1_000,
        }
    }

    #[test]
    fn rate_points_last_long_enough_or_hold_enough_events() {
        let mut p = plan(Load::Rate(100.0));
        p.measure = Duration::from_secs(5);
        p.settle = Duration::from_secs(1);
        p.min_events = 2_000;
        assert_eq!(p.rate_sends(100.0, 1), (100, 2_000), "2,000 events: 20 s");
        assert_eq!(p.rate_sends(10_000.0, 1), (10_000, 50_000), "5 s");
        assert_eq!(p.rate_sends(10_000.0, 1_000), (10, 50));
    }

    #[tokio::test(start_paused = true)]
    async fn every_counted_event_is_timed_and_settle_events_are_not() {
        let t = Delayed {
            delay: Duration::from_millis(7),
            per: 1,
        };
        let m = drive(&t, &plan(Load::Rate(100.0))).await.unwrap();
        // 10 settle events, then max(30, 10) counted.
        assert_eq!((m.sent, m.acked, m.failed), (30, 30, 0));
        assert_eq!(m.records, 30, "one offset per send");
        // Counted events are due from 100 to 390 ms; the acks landing then are those of
        // events due from 93 to 383 ms: 29, i.e. exactly the offered 100/s.
        assert!(
            (0.289..0.291).contains(&m.schedule_seconds),
            "{}",
            m.schedule_seconds
        );
        assert_eq!(m.acked_during_schedule, 29);
        assert_eq!(m.partitions_seen, 2);
        // On the paused clock every send leaves on time: latency is the 7 ms delay.
        let ms = |q| m.latency_us.value_at_quantile(q) as f64 / 1e3;
        assert!((7.0..7.1).contains(&ms(0.5)) && (7.0..7.1).contains(&ms(1.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_held_back_counts_the_lateness_from_the_schedule() {
        // Each send takes 10 ms while the schedule wants one every 1 ms: event i is sent
        // ~9·i ms late, and its latency must say so (coordinated omission).
        struct Slow;
        impl Target for Slow {
            type Fut = std::future::Ready<Result<Ack, String>>;
            fn events_per_send(&self) -> u32 {
                1
            }
            async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(std::future::ready(Ok(Ack {
                    partition: 0,
                    offset: n as i64,
                    more: Vec::new(),
                })))
            }
        }
        let mut p = plan(Load::Rate(1_000.0));
        p.settle = Duration::ZERO;
        p.measure = Duration::from_millis(100);
        let m = drive(&Slow, &p).await.unwrap();
        assert_eq!(m.acked, 100);
        let max_ms = m.latency_us.max() as f64 / 1e3;
        assert!(max_ms >= 99.0 * 9.0, "last event ~900 ms behind: {max_ms}");
        assert!(m.sender_lag_max_ms >= 99.0 * 9.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_bounds_a_closed_loop_and_bulk_sends_count_their_events() {
        let t = Delayed {
            delay: Duration::from_millis(10),
            per: 100,
        };
        let m = drive(&t, &plan(Load::Saturation)).await.unwrap();
        // 10 sends of 100 fill the window of 1,000; each wave takes 10 ms: 300 ms counted.
        assert_eq!(m.acked, m.sent);
        assert_eq!(m.acked % 100, 0);
        assert!((25_000..=35_000).contains(&m.acked), "{}", m.acked);
        assert_eq!(m.records, m.acked / 100);
        // The sending thread's CPU is read at saturation (Linux): a figure, never a negative
        // or infinite one (a paused clock runs no faster for the thread's CPU).
        let ns = m
            .sender_cpu_ns_per_event
            .expect("read from /proc/thread-self/stat");
        assert!(ns.is_finite() && ns >= 0.0, "{ns}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_shorter_than_a_chunk_hands_its_sends_over_before_waiting_for_room() {
        // 100 events of room, chunks of 1,024: the sender runs out of permits with its chunk
        // unsent, and only the collector, once it sees those sends, gives permits back.
        let t = Delayed {
            delay: Duration::from_millis(10),
            per: 1,
        };
        let mut p = plan(Load::Saturation);
        p.window = 100;
        // On the paused clock a stuck sender and collector let time jump to this at once.
        let m = tokio::time::timeout(Duration::from_secs(60), drive(&t, &p))
            .await
            .expect("the sender waited for permits its unsent chunk held")
            .unwrap();
        assert_eq!(m.acked, m.sent);
        // A window of 100 every 10 ms for 300 ms counted: about 3,000 events.
        assert!((2_500..=3_500).contains(&m.acked), "{}", m.acked);
    }

    #[tokio::test(start_paused = true)]
    async fn in_order_a_send_settled_behind_an_older_one_is_stamped_with_it_never_before() {
        // Settling at 30, 10 and 50 ms: the second waits for the first (stamped 30, not
        // 10), the third has its own. Every send is stamped once and gives its permits back.
        let (tx, rx) = mpsc::channel(8);
        let permits = Arc::new(Semaphore::new(0));
        let collector = tokio::spawn(collect_in_order(rx, Arc::clone(&permits), 2));
        let due = Instant::now();
        for (i, ms) in [30u64, 10, 50].into_iter().enumerate() {
            // Settled by a task of its own, as a client settles a future nobody polls yet.
            let (settle, settled) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = settle.send(Ack {
                    partition: 0,
                    offset: i as i64,
                    more: Vec::new(),
                });
            });
            let fut = settled.map(|r| r.map_err(|e| e.to_string()));
            tx.send(vec![Pending {
                due,
                counted: true,
                fut,
            }])
            .await
            .unwrap();
        }
        drop(tx);
        let c = collector.await.unwrap();
        assert_eq!((c.acked, c.failed), (6, 0), "3 sends of 2 events");
        assert_eq!(permits.available_permits(), 6);
        let ms: Vec<u64> = c
            .latency_us
            .iter_recorded()
            .map(|v| v.value_iterated_to() / 1_000)
            .collect();
        assert_eq!(ms, [30, 50], "{ms:?}");
        assert_eq!(
            c.latency_us.count_at(30_000),
            4,
            "two sends stamped at 30 ms"
        );
        assert_eq!(c.offsets[&0], (0, 2));
    }

    #[test]
    fn a_threads_cpu_is_its_user_and_system_ticks_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (tokio rt) x) S 1 4242 4242 0 -1 4194560 9 0 0 0 257 43 0 0 20 0 3";
        assert_eq!(parse_thread_cpu(stat), Some(Duration::from_millis(3_000)));
        assert_eq!(parse_thread_cpu("4242 (kbatch) S 1"), None);
        assert_eq!(parse_thread_cpu("no parenthesis"), None);
        // This thread's own, read for real, moves forward with work done on it (a tick of
        // 10 ms; however slow the machine, 10 s of spinning holds at least one).
        let before = thread_cpu().expect("/proc/thread-self/stat is readable");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after == before && spin.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = thread_cpu().expect("/proc/thread-self/stat is readable");
        }
        assert!(after > before, "{before:?} -> {after:?} after 10 s of work");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(100.0), "100");
        assert_eq!(thousands(100_000.0), "100,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(2.5), "2.5");
    }
}
