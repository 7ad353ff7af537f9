//! What each contender's client really runs with: librdkafka's own dump of its settings
//! (`debug=conf`), compared so that only batching differs, and the adaptive producer's
//! settings as the runs use them.

use std::collections::BTreeMap;

use kbatch_adaptive::Shape;
use kbatch_client::bench::{client_settings, ignored_setting};

use super::adapter;
use super::contenders::{Contender, Settings};

type SettingMap = BTreeMap<String, String>;

/// librdkafka's settings that are a contender's batching, the one thing that differs.
fn is_batching(name: &str) -> bool {
    matches!(
        name,
        "linger.ms" | "queue.buffering.max.ms" | "batch.num.messages" | "batch.size"
    )
}

/// librdkafka's own dump of every contender's client settings: everything but batching must
/// be equal. Returns the shared settings and each contender's batching as librdkafka lists it.
pub(super) fn check_settings(
    s: &Settings,
    contenders: &[Contender],
) -> anyhow::Result<(SettingMap, BTreeMap<String, SettingMap>)> {
    let mut shared: Option<(String, SettingMap)> = None;
    let mut batching = BTreeMap::new();
    let mut diffs = Vec::new();
    for c in contenders {
        let all: SettingMap = client_settings(&s.producer(*c).effective_kafka_for_bench())?
            .into_iter()
            .filter(|(k, _)| !ignored_setting(k))
            .collect();
        let (b, rest): (SettingMap, SettingMap) =
            all.into_iter().partition(|(k, _)| is_batching(k));
        batching.insert(c.key(), b);
        match &shared {
            None => shared = Some((c.key(), rest)),
            Some((who, reference)) => {
                for k in reference.keys().chain(rest.keys()) {
                    if reference.get(k) != rest.get(k) {
                        diffs.push(format!(
                            "{k}: {who} {:?}, {} {:?}",
                            reference.get(k),
                            c.key(),
                            rest.get(k)
                        ));
                    }
                }
            }
        }
    }
    diffs.sort();
    diffs.dedup();
    anyhow::ensure!(
        diffs.is_empty(),
        "contenders would run with different librdkafka settings:\n  {}",
        diffs.join("\n  ")
    );
    Ok((shared.map(|(_, s)| s).unwrap_or_default(), batching))
}

/// The adaptive producer's settings as the runs use them (the crate's defaults, calibration
/// off), for the report.
pub(super) fn adaptive_facts(s: &Settings) -> serde_json::Value {
    let c = adapter::config(
        s.producer(Contender::Adaptive(Shape::PerEvent)),
        Shape::PerEvent,
    );
    serde_json::json!({
        "summary": format!(
            "crate defaults: intake {} events, microbatch ≤ {} B, epoch {} ms, starts at {}, \
             explore share {}, no budget cap beyond the level's; calibration off; client linger \
             {} ms (set by AdaptiveProducer::start), batch {} records / {} B",
            c.intake_capacity, c.max_batch_bytes, c.epoch.as_millis(), c.initial_level,
            c.learner.explore_share, s.batching(Contender::Adaptive(Shape::PerEvent)).linger_ms,
            s.inner.batch_records, s.inner.batch_bytes
        ),
        "intake_capacity": c.intake_capacity,
        "max_batch_bytes": c.max_batch_bytes,
        "epoch_ms": c.epoch.as_millis() as u64,
        "initial_level": c.initial_level.to_string(),
        "explore_share": c.learner.explore_share,
        "calibration": format!("{:?}", c.calibration),
        "levels": c.levels.levels().iter().map(|l| serde_json::json!({
            "level": l.id.to_string(), "min_rate": l.min_rate, "budget_ms": l.budget.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
    })
}
