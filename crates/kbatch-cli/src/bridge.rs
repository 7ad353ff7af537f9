//! `kbatch consume --parallel`: a ready bridge from a topic to a command or an HTTP endpoint,
//! through the parallel consumer (ordering, retries, dead letters).
//!
//! - `--exec CMD`: runs `sh -c CMD` per record, the value on stdin and `KBATCH_TOPIC`,
//!   `KBATCH_PARTITION`, `KBATCH_OFFSET`, `KBATCH_KEY` in the environment. Exit 0 is done,
//!   exit 65 (EX_DATAERR) a permanent failure, anything else retriable.
//! - `--http URL`: POSTs the value to an `http://` URL with `X-Kafka-Topic`, `-Partition`,
//!   `-Offset` and `-Key` headers. 2xx is done; 408, 429 and 5xx (or no answer) are retriable;
//!   other 4xx permanent.

use std::time::Duration;

use kbatch_consumer::HandlerError;
use kbatch_core::ConsumedRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs the command for one record.
pub(crate) async fn exec(cmd: String, r: ConsumedRecord) -> Result<(), HandlerError> {
    let mut child = tokio::process::Command::new("sh")
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
            "{cmd:?} exited 65 (data error) for offset {}",
            r.offset
        ))),
        other => Err(HandlerError::retriable(format!(
            "{cmd:?} exited {other:?} for offset {}",
            r.offset
        ))),
    }
}

/// A parsed `http://host:port/path` URL.
#[derive(Clone, Debug)]
pub(crate) struct HttpTarget {
    host: String,
    port: u16,
    path: String,
}

impl std::str::FromStr for HttpTarget {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_owned(), 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Self { host, port, path })
    }
}

/// POSTs one record; 30 s per request.
pub(crate) async fn post(t: HttpTarget, r: ConsumedRecord) -> Result<(), HandlerError> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
        let body = r.value.as_deref().unwrap_or_default();
        let key = r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).replace(['\r', '\n'], " "))
            .unwrap_or_default();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nX-Kafka-Topic: {}\r\nX-Kafka-Partition: {}\r\nX-Kafka-Offset: {}\r\nX-Kafka-Key: {key}\r\nConnection: close\r\n\r\n",
            t.path,
            t.host,
            t.port,
            body.len(),
            r.topic,
            r.partition,
            r.offset
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return Err(HandlerError::retriable(format!(
                "POST to {}:{}: {e}",
                t.host, t.port
            )));
        }
        Err(_) => return Err(HandlerError::retriable("POST timed out after 30 s")),
    };
    let line = String::from_utf8_lossy(&resp[..resp.len().min(64)]).into_owned();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 | 0 => Err(HandlerError::retriable(format!(
            "HTTP {status} for offset {}",
            r.offset
        ))),
        _ => Err(HandlerError::permanent(format!(
            "HTTP {status} for offset {}",
            r.offset
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_clear_errors() {
        let t: HttpTarget = "http://127.0.0.1:8080/gps/fix".parse().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/gps/fix")
        );
        let t: HttpTarget = "http://localhost".parse().unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        assert!(
            "https://x"
                .parse::<HttpTarget>()
                .unwrap_err()
                .contains("only http://")
        );
        assert!(
            "http://h:99999/"
                .parse::<HttpTarget>()
                .unwrap_err()
                .contains("bad port")
        );
    }
}
