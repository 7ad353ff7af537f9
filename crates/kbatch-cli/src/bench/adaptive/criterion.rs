//! The intake micro-benchmark's figure, read from criterion's output when it was run
//! (`cargo bench -p kbatch-adaptive --bench intake`): `<dir>/…/intake…/…/new/estimates.json`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What to run when there is no figure.
pub(super) const HOW_TO_RUN: &str = "run `cargo bench -p kbatch-adaptive --bench intake`";

/// One criterion benchmark of the intake.
#[derive(Debug, Serialize)]
pub(super) struct IntakeFigure {
    /// criterion's id (`group/function/value`), else the directory.
    pub(super) id: String,
    pub(super) estimates: PathBuf,
    /// Mean time per iteration, ns, and its confidence interval.
    pub(super) mean_ns: f64,
    pub(super) mean_ci_ns: (f64, f64),
    /// Elements per iteration, when the benchmark declared a throughput in elements.
    pub(super) elements: Option<u64>,
}

impl IntakeFigure {
    /// In words: time per iteration and, with elements, per element and per second.
    pub(super) fn describe(&self) -> String {
        let per = self.elements.map_or_else(String::new, |n| {
            let each = self.mean_ns / n as f64;
            format!(" = {each:.1} ns/event, {:.2} M events/s", 1e3 / each)
        });
        format!(
            "{}: {:.1} µs/iteration (CI {:.1}–{:.1}){per}",
            self.id,
            self.mean_ns / 1e3,
            self.mean_ci_ns.0 / 1e3,
            self.mean_ci_ns.1 / 1e3
        )
    }
}

/// Every `new/estimates.json` under `dir` on a path with a component starting with `intake`,
/// sorted by path.
pub(super) fn find(dir: &Path) -> Vec<IntakeFigure> {
    let mut out = Vec::new();
    walk(dir, dir, 0, &mut out);
    out.sort_by(|a, b| a.estimates.cmp(&b.estimates));
    out
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<IntakeFigure>) {
    // criterion nests group / function / value / new: a few levels suffice.
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let estimates = path.join("estimates.json");
        let is_intake = path
            .strip_prefix(root)
            .map(|rel| {
                rel.components().any(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .to_lowercase()
                        .starts_with("intake")
                })
            })
            .unwrap_or(false);
        if path.file_name().is_some_and(|n| n == "new") && is_intake && estimates.is_file() {
            if let Some(f) = read(&path, &estimates) {
                out.push(f);
            }
        } else {
            walk(root, &path, depth + 1, out);
        }
    }
}

fn read(new: &Path, estimates: &Path) -> Option<IntakeFigure> {
    let json = |p: &Path| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    let e = json(estimates)?;
    let mean = &e["mean"];
    let bench = json(&new.join("benchmark.json"));
    let id = bench
        .as_ref()
        .and_then(|b| b["full_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            new.parent()
                .map_or_else(String::new, |p| p.display().to_string())
        });
    Some(IntakeFigure {
        id,
        estimates: estimates.to_path_buf(),
        mean_ns: mean["point_estimate"].as_f64()?,
        mean_ci_ns: (
            mean["confidence_interval"]["lower_bound"].as_f64()?,
            mean["confidence_interval"]["upper_bound"].as_f64()?,
        ),
        elements: bench.and_then(|b| b["throughput"]["Elements"].as_u64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_intake_estimates_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("kbatch-criterion-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let intake = root.join("intake/try_send/new");
        let other = root.join("envelope/encode/new");
        for d in [&intake, &other] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(
                d.join("estimates.json"),
                r#"{"mean":{"point_estimate":25000.0,"confidence_interval":{"lower_bound":24000.0,"upper_bound":26000.0}}}"#,
            )
            .unwrap();
        }
        std::fs::write(
            intake.join("benchmark.json"),
            r#"{"full_id":"intake/try_send","throughput":{"Elements":1000}}"#,
        )
        .unwrap();
        let found = find(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, "intake/try_send");
        assert_eq!(f.elements, Some(1_000));
        assert_eq!(
            f.describe(),
            "intake/try_send: 25.0 µs/iteration (CI 24.0–26.0) = 25.0 ns/event, 40.00 M events/s"
        );
        assert!(find(Path::new("/nonexistent/criterion")).is_empty());
    }
}
