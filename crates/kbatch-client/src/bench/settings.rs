//! librdkafka's own account of a client's settings: with `debug=conf`, `rd_kafka_new` logs
//! every property that differs from its default, global and default-topic, as it parsed them.
//! Comparing those lists across contenders (the Python peers log the same lines through their
//! `logger`) checks what each client really runs with, not what we meant to hand it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};

use crate::config::KafkaProducerConfig;
use crate::error::{Error, Result};

/// Settings that say which client or callback this is, not how it produces: bindings set
/// their own callbacks (their addresses differ per process), name themselves, and the dump
/// itself needs `debug`.
pub fn ignored_setting(name: &str) -> bool {
    let bare = name.strip_prefix("topic.").unwrap_or(name);
    bare.ends_with("_cb")
        || bare.ends_with("_conf")
        || matches!(
            bare,
            "opaque"
                | "debug"
                | "log.queue"
                | "log_level"
                | "enabled_events"
                | "client.software.name"
                | "client.software.version"
        )
}

#[derive(Default)]
struct Capture {
    lines: Mutex<Vec<String>>,
}

impl ClientContext for Capture {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, line: &str) {
        if fac == "CONF" {
            self.lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line.to_owned());
        }
    }
}

impl ProducerContext for Capture {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// The non-default librdkafka settings of a producer made from `config`, as librdkafka itself
/// lists them (`debug=conf`): global ones by name, default-topic ones as `topic.NAME`.
/// Credentials appear redacted, as librdkafka prints them.
pub fn client_settings(config: &KafkaProducerConfig) -> Result<BTreeMap<String, String>> {
    let mut c = config.to_rdkafka();
    c.set("debug", "conf").set_log_level(RDKafkaLogLevel::Debug);
    let p: BaseProducer<Capture> = c
        .create_with_context(Capture::default())
        .map_err(|e| Error::kafka("create producer for its settings", e))?;
    // The lines wait on the client's log queue until it is polled.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut settings = BTreeMap::new();
    while Instant::now() < deadline {
        p.poll(Duration::from_millis(20));
        let lines = p
            .context()
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        settings = parse_conf_dump(lines.iter().map(String::as_str));
        if settings.contains_key("metadata.broker.list")
            && settings.contains_key("topic.request.required.acks")
        {
            return Ok(settings);
        }
    }
    Err(Error::Invalid {
        what: "librdkafka settings dump".into(),
        why: format!("incomplete after 5 s: {settings:?}"),
    })
}

/// Parses librdkafka's `debug=conf` lines (`[thrd:app]:   name = value`, under the headings
/// `Client configuration:` and `Default topic configuration:`), in any binding's framing.
pub fn parse_conf_dump<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut topic = false;
    for line in lines {
        let body = line.rsplit_once("]:").map_or(line, |(_, b)| b).trim();
        if body.ends_with("configuration:") {
            topic = body.contains("topic");
            continue;
        }
        if let Some((k, v)) = body.split_once(" = ") {
            let k = k.trim();
            let name = if topic {
                format!("topic.{k}")
            } else {
                k.to_owned()
            };
            out.insert(name, v.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_sections_in_any_framing() {
        let lines = [
            "CONF [rdkafka#producer-1] [thrd:app]: Client configuration:",
            "CONF [rdkafka#producer-1] [thrd:app]:   queue.buffering.max.ms = 5",
            "[thrd:app]:   metadata.broker.list = 127.0.0.1:9092",
            "[thrd:app]: Default topic configuration:",
            "[thrd:app]:   request.required.acks = -1",
        ];
        let s = parse_conf_dump(lines);
        assert_eq!(s["queue.buffering.max.ms"], "5");
        assert_eq!(s["metadata.broker.list"], "127.0.0.1:9092");
        assert_eq!(s["topic.request.required.acks"], "-1");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn identity_and_callbacks_are_ignored_settings() {
        assert!(ignored_setting("dr_msg_cb"));
        assert!(ignored_setting("client.software.name"));
        assert!(ignored_setting("opaque"));
        assert!(!ignored_setting("queue.buffering.max.messages"));
        assert!(!ignored_setting("topic.request.required.acks"));
    }
}
