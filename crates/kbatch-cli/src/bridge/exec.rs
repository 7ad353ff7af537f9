//! The `--exec` bridge: one `sh -c CMD` per record.

use kbatch_consumer::HandlerError;
use kbatch_core::ConsumedRecord;
use tokio::io::AsyncWriteExt;

/// Runs the command for one record.
pub(crate) async fn exec(cmd: String, r: ConsumedRecord) -> Result<(), HandlerError> {
    let mut command = tokio::process::Command::new("sh");
    if let Some(pos) = r.envelope {
        command
            .env("KBATCH_ENVELOPE_INDEX", pos.index.to_string())
            .env("KBATCH_ENVELOPE_COUNT", pos.count.to_string());
    }
    let mut child = command
        .arg("-c")
        .arg(&cmd)
        .env("KBATCH_TOPIC", &*r.topic)
        .env("KBATCH_PARTITION", r.partition.to_string())
        .env("KBATCH_OFFSET", r.offset.0.to_string())
        .env(
            "KBATCH_KEY",
            r.key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .as_ref(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HandlerError::retriable(format!("cannot run {cmd:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine: ignore a broken pipe.
        let _ = stdin
            .write_all(r.value.as_deref().unwrap_or_default())
            .await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| HandlerError::retriable(format!("{cmd:?}: {e}")))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(65) => Err(HandlerError::permanent(format!(
            "{cmd:?} exited 65 (data error) for offset {}{}",
            r.offset,
            envelope_place(&r)
        ))),
        other => Err(HandlerError::retriable(format!(
            "{cmd:?} exited {other:?} for offset {}{}",
            r.offset,
            envelope_place(&r)
        ))),
    }
}

/// ", event I of N" for an event of an envelope, else nothing.
fn envelope_place(r: &ConsumedRecord) -> String {
    r.envelope
        .map(|p| format!(", event {} of {}", p.index, p.count))
        .unwrap_or_default()
}
