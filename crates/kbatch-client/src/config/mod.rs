//! Typed, validated client settings.
//!
//! Users set typed fields; [`ClientConfig::extra`] passes other librdkafka properties through.
//! Every `validate()` names the offending field, its value and the accepted range.

mod common;
mod consumer;
mod producer;
mod secret;

pub use common::{ClientConfig, SaslConfig, SecurityProtocol};
pub use consumer::{AssignmentStrategy, AutoOffsetReset, ConsumerConfig, GroupProtocol, Isolation};
pub use producer::{Acks, Compression, KafkaProducerConfig};
pub use secret::Secret;

use kbatch_core::ConfigError;

/// A librdkafka property that a typed field sets, and who owns it: the typed field's name,
/// or, in parentheses, why kbatch keeps it to itself.
pub(crate) type Owned = (&'static str, &'static str);

/// Refuses every `extra` entry for a property in `owned`: librdkafka applies `extra` last, so
/// such an entry would silently override the typed value. `path` names the map in the error
/// (`extra`, `client.extra`). librdkafka also takes a topic-level property with a `topic.`
/// prefix (`topic.acks`), so that spelling is refused as well.
pub(crate) fn refuse_owned<'a>(
    path: &str,
    keys: impl IntoIterator<Item = &'a String>,
    owned: &[Owned],
) -> Result<(), ConfigError> {
    for key in keys {
        if let Some(owner) = owner_of(key, owned) {
            return Err(ConfigError::new(
                format!("{path}[{key:?}]"),
                "(set)",
                owned_message(key, owner),
            ));
        }
    }
    Ok(())
}

/// Who owns `key`, if anyone (see [`refuse_owned`]).
pub(crate) fn owner_of(key: &str, owned: &[Owned]) -> Option<&'static str> {
    let bare = key.strip_prefix("topic.").unwrap_or(key);
    owned
        .iter()
        .find(|(p, _)| *p == key || *p == bare)
        .map(|(_, owner)| *owner)
}

pub(crate) fn owned_message(key: &str, owner: &str) -> String {
    if owner.starts_with('(') {
        format!("no such entry: kbatch sets `{key}` itself {owner}")
    } else {
        format!("no such entry: `{key}` is set from the typed field `{owner}`; set that instead")
    }
}
