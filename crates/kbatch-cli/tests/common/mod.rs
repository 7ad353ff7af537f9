//! What several of the CLI's test binaries share: a `kbatch` process in a process group of its
//! own, killed with SIGKILL as a whole; and a `kbatch bench … --json` run read back.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kbatch_testkit::brokers;
use serde_json::Value;

/// A process under test, in a process group of its own (spawned with `process_group(0)`),
/// killed with it when the test ends, however it ends.
pub(crate) struct Group(pub(crate) Child);

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
            let _ = self.0.wait();
        }
    }
}

/// SIGKILL to the whole process group; returns once no process of it is left.
pub(crate) fn kill_group(Group(child): &mut Group) {
    let group = format!("-{}", child.id());
    let ok = Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -KILL -- {group}");
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("kill")
        .args(["-0", "--", &group])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "process group {group} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `kbatch bench NAME --quick --json --brokers … EXTRA…` against the test broker; its
/// JSON report, and its stderr for failure messages. Fails the test when it fails.
pub(crate) fn bench_json(name: &str, extra: &[&OsStr]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kbatch"))
        .args(["bench", name, "--quick", "--json", "--brokers", brokers()])
        .args(extra)
        .env_remove("KBATCH_BROKERS")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kbatch failed:\n{stderr}");
    let j =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stderr}"));
    (j, stderr)
}
