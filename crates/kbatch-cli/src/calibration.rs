//! `kbatch calibration show|reset`: what the adaptive producer learned, per profile and level.
//!
//! ```text
//!  --path / $KBATCH_CALIBRATION / default path ──► CalibrationStore ──► table or JSON on stdout
//!                                                        │ warnings (locked, corrupt) on stderr
//! ```
//! Neither command creates a missing file: there is nothing to show or reset in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use kbatch_adaptive::calibration::{CalibrationStore, LevelRecord, Observation};
use kbatch_adaptive::{LevelId, LevelTable};
use serde::Serialize;

/// Which calibration command.
#[derive(Subcommand, Debug)]
pub(crate) enum Calibration {
    /// Print the learned batch settings per profile and level, and recent observations.
    Show(ShowArgs),
    /// Forget what was learned, for one profile or for all.
    Reset(ResetArgs),
}

/// The calibration file.
#[derive(Args, Debug)]
pub(crate) struct FileArg {
    /// The calibration file [default: $KBATCH_DATA_DIR/calibration.sqlite3, else
    /// $XDG_DATA_HOME/kbatch/calibration.sqlite3, else ~/.local/share/kbatch/calibration.sqlite3].
    #[arg(long, env = "KBATCH_CALIBRATION")]
    path: Option<PathBuf>,
}

impl FileArg {
    fn resolve(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(CalibrationStore::default_path)
    }
}

/// Options of `kbatch calibration show`.
#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    file: FileArg,
    /// Only this profile.
    #[arg(long)]
    profile: Option<String>,
    /// Also the K newest observations of each profile.
    #[arg(long, value_name = "K", default_value_t = 0)]
    observations: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Options of `kbatch calibration reset`.
#[derive(Args, Debug)]
pub(crate) struct ResetArgs {
    #[command(flatten)]
    file: FileArg,
    /// Only this profile (default: every profile).
    #[arg(long)]
    profile: Option<String>,
}

pub(crate) fn run(c: Calibration) -> anyhow::Result<()> {
    match c {
        Calibration::Show(a) => show(&a),
        Calibration::Reset(a) => reset(&a),
    }
}

/// What `show --json` prints.
#[derive(Serialize, Debug)]
struct Report {
    path: PathBuf,
    exists: bool,
    /// What was wrong with the file (corrupt and moved aside, …), if anything.
    warning: Option<String>,
    profiles: Vec<ProfileReport>,
}

#[derive(Serialize, Debug)]
struct ProfileReport {
    profile: String,
    levels: Vec<LevelReport>,
    observations: Vec<ObservationReport>,
}

#[derive(Serialize, Debug)]
struct LevelReport {
    level: u8,
    /// The level's latency budget in the default level table; none for a level beyond it.
    budget_ms: Option<f64>,
    max_events: u32,
    linger_ms: f64,
    expected_events_per_s: f64,
    p99_ms: f64,
    observations: u64,
    updated: String,
}

#[derive(Serialize, Debug)]
struct ObservationReport {
    at: String,
    level: u8,
    max_events: u32,
    linger_ms: f64,
    explored: bool,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    fill: f64,
}

fn show(a: &ShowArgs) -> anyhow::Result<()> {
    let path = a.file.resolve();
    let mut report = Report {
        path: path.clone(),
        exists: path.exists(),
        warning: None,
        profiles: Vec::new(),
    };
    if report.exists {
        let store = open(&path, &mut report.warning)?;
        let profiles = match &a.profile {
            Some(p) => vec![p.clone()],
            None => store.profiles().context("cannot list the profiles")?,
        };
        for profile in profiles {
            let levels = store
                .load(&profile)
                .with_context(|| format!("cannot read profile {profile:?}"))?;
            let observations = if a.observations == 0 {
                Vec::new()
            } else {
                store
                    .observations(&profile, None, a.observations)
                    .with_context(|| format!("cannot read observations of {profile:?}"))?
            };
            if levels.is_empty() && observations.is_empty() && a.profile.is_some() {
                continue;
            }
            report.profiles.push(ProfileReport {
                levels: levels.iter().map(level_report).collect(),
                observations: observations.iter().map(observation_report).collect(),
                profile,
            });
        }
    }
    if a.json {
        output(&(serde_json::to_string_pretty(&report)? + "\n"))
    } else {
        output(&render(&report, a.profile.as_deref()))
    }
}

fn reset(a: &ResetArgs) -> anyhow::Result<()> {
    let path = a.file.resolve();
    let what = match &a.profile {
        Some(p) => format!("profile {p:?}"),
        None => "every profile".to_owned(),
    };
    if !path.exists() {
        return output(&format!(
            "no calibration file at {}: nothing to reset (0 rows removed)\n",
            path.display()
        ));
    }
    let store = open(&path, &mut None)?;
    let removed = store
        .reset(a.profile.as_deref())
        .with_context(|| format!("cannot reset {what} in {}", path.display()))?;
    output(&format!(
        "removed {removed} rows ({what}) from {}\n",
        path.display()
    ))
}

/// Writes the command's output; a reader that went away (`| head`) is not an error.
fn output(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Opens the store, printing a warning to stderr (and keeping it in `warning`); fails when the
/// store cannot use the file at all, since there would be nothing to show or reset.
fn open(path: &Path, warning: &mut Option<String>) -> anyhow::Result<CalibrationStore> {
    let opened = CalibrationStore::open(path);
    let text = opened.warning.as_ref().map(ToString::to_string);
    if !opened.store.is_enabled() {
        bail!(text.unwrap_or_else(|| format!("cannot use {}", path.display())));
    }
    if let Some(w) = text {
        eprintln!("warning: {w}");
        *warning = Some(w);
    }
    Ok(opened.store)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn level_report(r: &LevelRecord) -> LevelReport {
    LevelReport {
        level: r.level.0,
        budget_ms: budget(r.level).map(ms),
        max_events: r.best.max_events,
        linger_ms: ms(r.best.linger),
        expected_events_per_s: r.expected_throughput,
        p99_ms: ms(r.p99),
        observations: r.observations,
        updated: rfc3339(r.updated_at),
    }
}

fn observation_report(o: &Observation) -> ObservationReport {
    ObservationReport {
        at: rfc3339(o.at),
        level: o.level.0,
        max_events: o.settings.max_events,
        linger_ms: ms(o.settings.linger),
        explored: o.explored,
        events_per_s: o.throughput,
        p50_ms: ms(o.p50),
        p99_ms: ms(o.p99),
        fill: o.fill,
    }
}

/// The level's budget in the default table; `None` beyond its top (get() would clamp).
fn budget(level: LevelId) -> Option<Duration> {
    let table = LevelTable::default();
    usize::from(level.0)
        .checked_sub(1)
        .and_then(|i| table.levels().get(i))
        .map(|l| l.budget)
}

fn render(r: &Report, profile: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let path = r.path.display();
    if !r.exists {
        let _ = writeln!(
            s,
            "no calibration file at {path}: nothing learned yet (the adaptive producer creates it)"
        );
        return s;
    }
    if r.profiles.is_empty() {
        match profile {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "calibration file {path}: nothing learned for profile {p:?}"
                );
            }
            None => {
                let _ = writeln!(s, "calibration file {path}: nothing learned yet");
            }
        }
        return s;
    }
    let _ = writeln!(s, "calibration file {path}");
    for p in &r.profiles {
        let _ = writeln!(s, "\nprofile {}", p.profile);
        if p.levels.is_empty() {
            let _ = writeln!(s, "  no learned settings yet");
        } else {
            let _ = writeln!(
                s,
                "  {:<5} {:>9} {:>8} {:>10} {:>12} {:>10} {:>6}  updated (UTC)",
                "level", "budget", "best N", "best T", "expected/s", "p99", "obs"
            );
            for l in &p.levels {
                let budget = l.budget_ms.map_or_else(|| "-".to_owned(), fmt_ms);
                let _ = writeln!(
                    s,
                    "  {:<5} {:>9} {:>8} {:>10} {:>12.0} {:>10} {:>6}  {}",
                    format!("L{}", l.level),
                    budget,
                    l.max_events,
                    fmt_ms(l.linger_ms),
                    l.expected_events_per_s,
                    fmt_ms(l.p99_ms),
                    l.observations,
                    l.updated
                );
            }
        }
        if !p.observations.is_empty() {
            let _ = writeln!(s, "  newest {} observations:", p.observations.len());
            let _ = writeln!(
                s,
                "  {:<20} {:<5} {:>8} {:>10} {:>8} {:>12} {:>10} {:>10} {:>5}",
                "at (UTC)", "level", "N", "T", "explored", "events/s", "p50", "p99", "fill"
            );
            for o in &p.observations {
                let _ = writeln!(
                    s,
                    "  {:<20} {:<5} {:>8} {:>10} {:>8} {:>12.0} {:>10} {:>10} {:>5.2}",
                    o.at,
                    format!("L{}", o.level),
                    o.max_events,
                    fmt_ms(o.linger_ms),
                    if o.explored { "yes" } else { "no" },
                    o.events_per_s,
                    fmt_ms(o.p50_ms),
                    fmt_ms(o.p99_ms),
                    o.fill
                );
            }
        }
    }
    s
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1_000.0 {
        format!("{:.2} s", ms / 1e3)
    } else {
        format!("{ms:.1} ms")
    }
}

/// `2026-11-30T05:31:07Z`: RFC 3339 in UTC, to the second. Times before 1970 (never stored)
/// print as the epoch.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_790_000_000), "2026-09-21T14:13:20Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        // Every week (plus an hour, to move through the day) up to 2100 agrees with httpdate's
        // RFC 7231 rendering of the same instant: "Tue, 29 Feb 2000 00:00:00 GMT".
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        for s in (0..4_102_444_800u64).step_by(7 * 86_400 + 3_601) {
            let t = UNIX_EPOCH + Duration::from_secs(s);
            let http = httpdate::fmt_http_date(t);
            let f: Vec<&str> = http.split([' ', ',']).filter(|x| !x.is_empty()).collect();
            let month = MONTHS.iter().position(|m| *m == f[2]).unwrap() + 1;
            let expected = format!("{}-{month:02}-{}T{}Z", f[3], f[1], f[4]);
            assert_eq!(rfc3339(t), expected, "{http}");
        }
    }

    #[test]
    fn budgets_come_from_the_default_table_and_none_beyond_it() {
        assert_eq!(budget(LevelId(1)), Some(Duration::from_millis(1)));
        assert_eq!(budget(LevelId(5)), Some(Duration::from_millis(100)));
        assert_eq!(budget(LevelId(10)), Some(Duration::from_secs(30)));
        assert_eq!(budget(LevelId(11)), None);
        assert_eq!(budget(LevelId(0)), None);
    }
}
