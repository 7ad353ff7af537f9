//! Locating or starting the real services the tests run against.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Bootstrap servers of the Kafka cluster the tests use.
///
/// `KBATCH_BROKERS` if set; otherwise `scripts/kafka up` starts a real broker (once per
/// `cargo test` or `cargo nextest run` run: the state dir is keyed by the parent process,
/// which owns and reaps it).
pub fn brokers() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| service("KBATCH_BROKERS", "kafka"))
}

/// URL of the PostgreSQL test database (`KBATCH_PG_URL`, or one started by `scripts/postgres`).
pub fn pg_url() -> &'static str {
    static U: OnceLock<String> = OnceLock::new();
    U.get_or_init(|| service("KBATCH_PG_URL", "postgres"))
}

/// URL of the MariaDB test database (`KBATCH_MYSQL_URL`, or one started by `scripts/mariadb`).
pub fn mysql_url() -> &'static str {
    static U: OnceLock<String> = OnceLock::new();
    U.get_or_init(|| service("KBATCH_MYSQL_URL", "mariadb"))
}

fn service(env: &str, script: &str) -> String {
    if let Ok(v) = std::env::var(env)
        && !v.trim().is_empty()
    {
        return v;
    }
    start_service(env, script, &[], script).0
}

/// Runs `scripts/<script> up <args>` in a state dir of its own, owned by this test run, and
/// returns the address it printed last and the state dir.
pub(crate) fn start_service(
    env: &str,
    script: &str,
    args: &[&str],
    instance: &str,
) -> (String, PathBuf) {
    // The parent is `cargo test`, `cargo nextest` (one process per test, each a direct child
    // of the runner's main process) or the shell running a test binary: every test process of
    // the run shares one service, stopped by the script's watcher when that parent exits. The
    // first `up` starts it under the state dir's lock; the others wait on that lock, then find
    // it running and only register, so many test processes starting at once are safe.
    let owner = std::os::unix::process::parent_id();
    let root = repo_root();
    let state = root
        .join("target")
        .join("kbatch-testkit")
        .join(format!("{instance}-{owner}"));
    let out = Command::new(root.join("scripts").join(script))
        .arg("up")
        .args(args)
        .arg("--state-dir")
        .arg(&state)
        .arg("--owner-pid")
        .arg(owner.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run scripts/{script}: {e}; set {env} to use a running service")
        });
    assert!(
        out.status.success(),
        "scripts/{script} up failed ({}); set {env} to use a running service",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let addr = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(!addr.is_empty(), "scripts/{script} up printed no address");
    eprintln!("kbatch-testkit: {instance} at {addr} (owner pid {owner})");
    (addr, state)
}
