//! Glue between the driver and the calibration store: load at start, save in the
//! background, never fail or stall the producer because of the file.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinHandle;

use crate::calibration::{CalibrationStore, LevelRecord, Observation};
use crate::config::CalibrationSetting;
use crate::learner::{Judged, Learned};

/// Observations kept for the next save; older ones are dropped when saves cannot keep up.
const MAX_UNSAVED: usize = 1_000;

pub(crate) struct Persistence {
    store: Option<Arc<CalibrationStore>>,
    profile: String,
    /// What the store held at start.
    pub(crate) learned: Vec<Learned>,
    unsaved: Vec<Observation>,
    saving: Option<JoinHandle<Option<String>>>,
    warned: bool,
}

impl Persistence {
    /// Opens the store and loads `profile`. Problems are logged as warnings and leave the
    /// producer on bootstrap settings.
    pub(crate) fn open(setting: &CalibrationSetting, profile: &str) -> Self {
        let path = match setting {
            CalibrationSetting::Disabled => None,
            CalibrationSetting::Default => Some(CalibrationStore::default_path()),
            CalibrationSetting::Path(p) => Some(p.clone()),
        };
        let mut me = Self {
            store: None,
            profile: profile.to_owned(),
            learned: Vec::new(),
            unsaved: Vec::new(),
            saving: None,
            warned: false,
        };
        let Some(path) = path else { return me };
        let opened = CalibrationStore::open(&path);
        if let Some(w) = opened.warning {
            tracing::warn!(path = %path.display(), "calibration: {w}; starting from bootstrap settings where nothing could be read");
        }
        match opened.store.load(profile) {
            Ok(records) => {
                me.learned = records.iter().map(learned_of).collect();
                if !me.learned.is_empty() {
                    tracing::info!(path = %path.display(), profile, levels = me.learned.len(), "calibration: starting from what was learned");
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), profile, "calibration: cannot load ({e}); starting from bootstrap settings");
            }
        }
        me.store = Some(Arc::new(opened.store));
        me
    }

    /// Keeps an epoch's result for the next save.
    pub(crate) fn observe(&mut self, j: &Judged) {
        if self.store.is_none() {
            return;
        }
        if self.unsaved.len() >= MAX_UNSAVED {
            self.unsaved.remove(0);
        }
        self.unsaved.push(Observation {
            level: j.level,
            settings: j.choice.settings,
            explored: j.choice.explored,
            throughput: j.stats.throughput(),
            p50: j.stats.p50,
            p99: j.stats.p99,
            fill: j.stats.fill.clamp(0.0, 1.0),
            at: j.at,
        });
    }

    /// Saves on a blocking thread unless a save is still running (then the next one will).
    pub(crate) fn save_in_background(&mut self, learned: Vec<Learned>) {
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = self.saving.take()
            && let Some(Some(w)) = h.now_or_never_result()
        {
            self.warn_once(&w);
        }
        if let Some(job) = self.job(learned) {
            self.saving = Some(tokio::task::spawn_blocking(job));
        }
    }

    /// Saves and waits for it; returns the problem, if any.
    pub(crate) async fn save_now(&mut self, learned: Vec<Learned>) -> Option<String> {
        if let Some(h) = self.saving.take() {
            let _ = h.await;
        }
        let job = self.job(learned)?;
        let result = tokio::task::spawn_blocking(job)
            .await
            .unwrap_or_else(|e| Some(format!("the save task failed: {e}")));
        if let Some(w) = &result {
            tracing::warn!("calibration: cannot save what was learned: {w}");
        }
        result
    }

    fn job(&mut self, learned: Vec<Learned>) -> Option<impl FnOnce() -> Option<String> + use<>> {
        let store = Arc::clone(self.store.as_ref()?);
        let profile = self.profile.clone();
        let observations = std::mem::take(&mut self.unsaved);
        Some(move || {
            let now = SystemTime::now();
            let records: Vec<LevelRecord> = learned
                .iter()
                .filter(|l| l.observations > 0)
                .map(|l| LevelRecord {
                    level: l.level,
                    best: l.best,
                    expected_throughput: l.expected_throughput,
                    p99: l.p99,
                    observations: l.observations,
                    updated_at: now,
                })
                .collect();
            let a = store.save(&profile, &records).err();
            let b = store.record(&profile, &observations).err();
            a.or(b).map(|e| e.to_string())
        })
    }

    fn warn_once(&mut self, w: &str) {
        if self.warned {
            tracing::debug!("calibration: cannot save: {w}");
        } else {
            self.warned = true;
            tracing::warn!(
                "calibration: cannot save what was learned: {w} (further failures are logged at debug level)"
            );
        }
    }
}

fn learned_of(r: &LevelRecord) -> Learned {
    Learned {
        level: r.level,
        best: r.best,
        expected_throughput: r.expected_throughput,
        p99: r.p99,
        observations: r.observations,
    }
}

/// The result of a finished join handle, without waiting.
trait NowOrNever<T> {
    fn now_or_never_result(self) -> Option<T>;
}

impl<T> NowOrNever<T> for JoinHandle<T> {
    fn now_or_never_result(self) -> Option<T> {
        use futures::FutureExt as _;
        self.now_or_never().and_then(Result::ok)
    }
}
