//! The crash test over packed envelopes: the input topic holds envelopes of 500, 50 and 200
//! events of mixed keys (`kbatch produce --packed`); `kbatch consume --parallel --exec`
//! unpacks them, one handler process per event, and is SIGKILLed with its process group in
//! the middle of envelopes, then restarted.
//!
//! The 500- and 200-event envelopes share 16 keys, so a key's events follow each other
//! closely (running two at once would show as disorder); the 50-event ones between them have
//! a key per event, run beside the others and finish while the large envelope before them is
//! still under way, so commits carry done envelopes in their metadata and a restart must skip
//! exactly those.
//!
//! Counted independently — the topic read back and decoded by another client, the ledger the
//! handler processes append to, the group's commits read between runs — it checks:
//! - every event of every envelope is processed at least once (none lost);
//! - within each run, each key's events of a partition are processed in (offset, index) order;
//! - no event of an envelope whose offset the group had committed as done before a kill is
//!   processed again after it (an unfinished envelope is redone whole: the commit is per
//!   envelope);
//! - each kill hit at least one envelope in its middle (some events processed, its offset not
//!   committed), so the redo path is exercised, not just the offset commit.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use kbatch_client::Isolation;
use kbatch_core::envelope;
use kbatch_testkit::unique_name;
use rand::{Rng as _, SeedableRng as _};

use super::{
    Ledger, Timeline, committed_done, first_record_after, kill_group, produce_generated, start,
};

const PARTITIONS: i32 = 4;
/// (events, events per envelope, keys) per `kbatch produce` run, in order.
const BATCHES: [(u64, u32, u64); 3] = [(4_000, 500, 16), (4_000, 50, 4_000), (4_000, 200, 16)];
const KILLS: usize = 2;

/// An event: partition, envelope offset, index in the envelope.
type EventId = (i32, i64, u32);

/// One complete ledger line: the event and the key the handler saw.
fn event_lines(ledger: &Ledger) -> Vec<(EventId, String)> {
    let text = std::fs::read_to_string(&ledger.0).unwrap_or_default();
    text.split_inclusive('\n')
        // A line cut short by the kill has no newline yet: it was not complete.
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut f = l.trim_end().split(' ');
            let (p, o, k, i) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((
                (p.parse().ok()?, o.parse().ok()?, i.parse().ok()?),
                k.to_owned(),
            ))
        })
        .collect()
}

/// A topic holding the [`BATCHES`], each produced by `kbatch produce --generate --packed`.
fn packed_topic() -> String {
    let topic = unique_name("crash-packed");
    for (events, per, keys) in BATCHES {
        let per = per.to_string();
        produce_generated(
            &topic,
            PARTITIONS as u32,
            events,
            keys,
            &["--packed", &per, "--compression", "lz4"],
        );
    }
    topic
}

/// Every event in the topic, and its key, read back and decoded by another client.
fn events_in(topic: &str) -> BTreeMap<EventId, String> {
    let envelopes: u64 = BATCHES
        .iter()
        .map(|(n, per, _)| n.div_ceil(u64::from(*per)))
        .sum();
    let all = kbatch_testkit::consume_all(
        topic,
        Isolation::ReadCommitted,
        Some(envelopes as usize),
        Duration::from_secs(10),
    );
    let mut events = BTreeMap::new();
    for (p, records) in all {
        for r in records {
            assert!(envelope::is_envelope(&r.headers), "{r:?}");
            let decoded = envelope::decode(r.value.as_ref().unwrap()).unwrap();
            for (i, e) in (0u32..).zip(decoded) {
                let key = String::from_utf8(e.key.unwrap().to_vec()).unwrap();
                events.insert((p, r.offset.0, i), key);
            }
        }
    }
    events
}

/// Envelopes the group's commit marks done above its committed offset (in the metadata).
fn done_above_commit(done: &HashSet<(i32, i64)>, expected: &BTreeMap<EventId, String>) -> usize {
    let envelopes: BTreeSet<(i32, i64)> = expected.keys().map(|(p, o, _)| (*p, *o)).collect();
    (0..PARTITIONS)
        .map(|p| {
            let mut offsets = envelopes.iter().filter(|e| e.0 == p);
            let first_undone = offsets.find(|e| !done.contains(e));
            first_undone.map_or(0, |u| {
                offsets.filter(|e| *e > u && done.contains(e)).count()
            })
        })
        .sum()
}

#[test]
fn sigkill_mid_envelope_loses_no_event_and_never_redoes_a_committed_envelope() {
    let seed: u64 = std::env::var("KBATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("packed crash test seed {seed} (KBATCH_CRASH_SEED)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let topic = packed_topic();
    let expected = events_in(&topic);
    let n = expected.len();
    assert_eq!(n as u64, BATCHES.iter().map(|b| b.0).sum::<u64>());
    let group = unique_name("crash-packed-g");
    let dir = std::env::temp_dir().join(unique_name("kbatch-crash-packed"));
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = Ledger(dir.join("ledger"));
    let log = dir.join("consumer.log");
    let id = unique_name("worker");
    let member = ["--group-protocol", "classic", "--instance-id", id.as_str()];

    let mut timeline = Timeline::default();
    // Where each run's lines begin in the ledger (complete lines).
    let mut run_starts: Vec<usize> = vec![0];
    let mut done_at_kill: Vec<HashSet<(i32, i64)>> = Vec::new();
    let mut skips_exercised = false;
    let mut child = start(&topic, &group, &ledger.0, &member, &log);
    first_record_after(&ledger, 0, &mut timeline, Duration::from_secs(120));
    for kill in 1..=KILLS {
        let from = timeline.0.last().map_or(0, |s| s.1);
        let busy_for = rng.random_range(n / 12..n / 6);
        let t = Instant::now();
        while timeline.sample(&ledger) < from + busy_for {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the consumer stalled"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Until a kill has found an envelope done above the commit, this one waits (a little
        // longer, the consumer still busy) for the group's commit to show one: where the kill
        // lands is random, and twice in a row it can miss the short windows in which a
        // finished 50-event envelope sits above an unfinished 500-event one (seen once in
        // CI, seed 10400991165560005677). The kill still comes under load; only its moment
        // is chosen where the skip path can be tested.
        while !skips_exercised
            && timeline.sample(&ledger) < from + busy_for + n / 4
            && done_above_commit(&committed_done(&group, &topic, PARTITIONS), &expected) == 0
        {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the consumer stalled"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(&mut child);
        let done = committed_done(&group, &topic, PARTITIONS);
        let lines = event_lines(&ledger);
        let handled: BTreeSet<EventId> = lines.iter().map(|l| l.0).collect();
        assert!(
            handled.len() < n,
            "the run finished before kill {kill}: pick a larger topic"
        );
        let ahead = done_above_commit(&done, &expected);
        let mid: BTreeSet<(i32, i64)> = handled
            .iter()
            .map(|(p, o, _)| (*p, *o))
            .filter(|po| !done.contains(po))
            .collect();
        assert!(
            !mid.is_empty(),
            "kill {kill} hit no envelope in its middle: every envelope begun was committed"
        );
        eprintln!(
            "kill {kill}: {} events handled, {} envelopes begun and not committed, {ahead} done above the commit",
            handled.len(),
            mid.len()
        );
        skips_exercised |= ahead > 0;
        done_at_kill.push(done);
        child = start(&topic, &group, &ledger.0, &member, &log);
        run_starts.push(lines.len());
        let back = first_record_after(
            &ledger,
            ledger.count(),
            &mut timeline,
            Duration::from_secs(180),
        );
        eprintln!("restart {kill}: first event {back:?} after the restart");
    }
    // The last run finishes the topic. An event lost for good shows as a ledger that stops
    // growing with events missing: a minute without a new line is several times the longest
    // pause of a healthy run (a rebalance, a commit).
    let t = Instant::now();
    let mut last_growth = (ledger.count(), Instant::now());
    loop {
        let handled: BTreeSet<EventId> = event_lines(&ledger).iter().map(|l| l.0).collect();
        let missing: Vec<&EventId> = expected.keys().filter(|e| !handled.contains(e)).collect();
        if missing.is_empty() {
            break;
        }
        if ledger.count() != last_growth.0 {
            last_growth = (ledger.count(), Instant::now());
        }
        assert!(
            last_growth.1.elapsed() < Duration::from_secs(60)
                && t.elapsed() < Duration::from_secs(600),
            "{} of {n} events never processed, e.g. {:?}; consumer log: {}",
            missing.len(),
            &missing[..missing.len().min(5)],
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kill_group(&mut child);
    assert!(
        skips_exercised,
        "no kill left an envelope done above the committed offset: the metadata's skip path was not exercised"
    );

    let lines = event_lines(&ledger);
    for (event, key) in &lines {
        assert_eq!(
            expected.get(event),
            Some(key),
            "event {event:?} handled with key {key}: not what the topic holds"
        );
    }
    let mut again_total = 0;
    for (i, start_at) in run_starts.iter().enumerate() {
        let end = run_starts.get(i + 1).copied().unwrap_or(lines.len());
        let run = &lines[*start_at..end];
        let mut per_key: BTreeMap<(i32, &str), (i64, u32)> = BTreeMap::new();
        for ((p, o, idx), key) in run {
            if let Some(prev) = per_key.insert((*p, key), (*o, *idx)) {
                assert!(
                    prev < (*o, *idx),
                    "run {i}: key {key} of partition {p} out of order: {prev:?} then {:?}",
                    (o, idx)
                );
            }
        }
        if i > 0 {
            let committed = &done_at_kill[i - 1];
            let redone: Vec<&EventId> = run
                .iter()
                .map(|l| &l.0)
                .filter(|(p, o, _)| committed.contains(&(*p, *o)))
                .collect();
            assert!(
                redone.is_empty(),
                "restart {i} processed {} events of envelopes committed as done before the kill, e.g. {:?}",
                redone.len(),
                &redone[..redone.len().min(5)]
            );
            let before: HashSet<&EventId> = lines[..*start_at].iter().map(|l| &l.0).collect();
            let again = run.iter().filter(|l| before.contains(&l.0)).count();
            eprintln!("restart {i}: {again} events processed again (of unfinished envelopes)");
            again_total += again;
        }
    }
    eprintln!(
        "{n} events in {} envelopes, {} handler calls, {again_total} processed again after {KILLS} kills",
        expected
            .keys()
            .map(|(p, o, _)| (*p, *o))
            .collect::<BTreeSet<_>>()
            .len(),
        lines.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
