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
