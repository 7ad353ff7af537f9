//! `kbatch consume --parallel`: a ready bridge from a topic to a command or an HTTP endpoint,
//! through the parallel consumer (ordering, retries, dead letters).
//!
//! ```text
//!  topic ─► ParallelConsumer ─► handler per record ─┬─ exec: sh -c CMD, value on stdin
//!            ordering, retries,  Ok / Retriable /   └─ http: POST over one shared client
//!            dead letters        Permanent                   (keep-alive pool, timeouts)
//! ```
//!
//! - `--exec CMD`: runs `sh -c CMD` per record, the value on stdin and `KBATCH_TOPIC`,
//!   `KBATCH_PARTITION`, `KBATCH_OFFSET`, `KBATCH_KEY` in the environment. Exit 0 is done,
//!   exit 65 (EX_DATAERR) a permanent failure, anything else retriable.
//!
//! Packed envelopes are unpacked: the command runs (or the POST is made) once per event,
//! with the event's key and value, the envelope's offset, and `KBATCH_ENVELOPE_INDEX` /
//! `KBATCH_ENVELOPE_COUNT` (`X-Kafka-Envelope-Index` / `-Count`) set.
//! - `--http URL`: POSTs the value to an `http://` or `https://` URL; see [`http`] for the
//!   headers, the status classification and the timeouts.

mod exec;
mod http;

pub(crate) use exec::exec;
pub(crate) use http::{HttpBridge, parse_http_url};
