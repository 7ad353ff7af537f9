//! kbatch's own error codes, and their classification.
//!
//! ```text
//!  librdkafka code ──ErrorCode::from_rdkafka (pub(crate))──► ErrorCode::QueueFull / … / Other(n)
//!                                                             │ classify_code
//!                                                             ▼
//!                                              Retriable / Permanent / Fatal
//! ```
//!
//! Callers match on the codes kbatch classifies or acts on; every other code librdkafka or a
//! broker may report is kept, by number, as [`ErrorCode::Other`]. Names and descriptions are
//! librdkafka's, so messages say what librdkafka would.

use std::borrow::Cow;
use std::fmt;

use kbatch_core::{Classify, ErrorClass};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka_sys::RDKafkaRespErr;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// A librdkafka or broker error code.
        ///
        /// The named variants are those kbatch classifies or acts on; any other code is
        /// [`ErrorCode::Other`] with librdkafka's number. Conversions are canonical: a code with
        /// a named variant never comes as `Other`, so compare with the named variants (or use
        /// [`ErrorCode::from_raw`]) rather than building `Other` by hand. Variants may be
        /// named in later versions, hence `#[non_exhaustive]`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $name,)+
            /// A code kbatch does not name: librdkafka's number (negative for client-side
            /// errors, positive for the broker's protocol errors).
            Other(i32),
        }

        impl ErrorCode {
            /// Every named variant, for tests.
            #[cfg(test)]
            const NAMED: &[ErrorCode] = &[$(ErrorCode::$name,)+];

            pub(crate) fn from_rdkafka(code: RDKafkaErrorCode) -> Self {
                match code {
                    $(RDKafkaErrorCode::$name => ErrorCode::$name,)+
                    other => ErrorCode::Other(other as i32),
                }
            }

            /// librdkafka's code, when librdkafka knows the number.
            pub(crate) fn to_rdkafka(self) -> Option<RDKafkaErrorCode> {
                match self {
                    $(ErrorCode::$name => Some(RDKafkaErrorCode::$name),)+
                    ErrorCode::Other(n) => RDKafkaRespErr::try_from(n).ok().map(RDKafkaErrorCode::from),
                }
            }

            /// librdkafka's number for this code.
            pub fn raw(self) -> i32 {
                match self {
                    $(ErrorCode::$name => RDKafkaErrorCode::$name as i32,)+
                    ErrorCode::Other(n) => n,
                }
            }

            fn named(self) -> Option<&'static str> {
                match self {
                    $(ErrorCode::$name => Some(stringify!($name)),)+
                    ErrorCode::Other(_) => None,
                }
            }
        }
    };
}

error_codes! {
    /// librdkafka raised a fatal error: this client instance can do nothing more.
    Fatal,
    /// This producer instance was fenced by a newer one with the same transactional id.
    Fenced,
    /// Broker: the producer's epoch is stale (a newer instance took over).
    InvalidProducerEpoch,
    /// Broker: another producer with the same transactional id is active.
    ProducerFenced,
    /// Broker: the idempotent producer's sequence numbers are out of order.
    OutOfOrderSequenceNumber,
    /// Broker: the producer id is unknown (its state expired).
    UnknownProducerId,
    /// Broker: the producer id does not belong to the transactional id.
    InvalidProducerIdMapping,
    /// Broker: not authorized to use the transactional id.
    TransactionalIdAuthorizationFailed,
    /// Broker: not authorized for a cluster-level operation (idempotence needs one).
    ClusterAuthorizationFailed,
    /// The client is being destroyed.
    BrokerDestroy,
    /// Broker: the transaction timeout exceeds the broker's maximum.
    InvalidTransactionTimeout,
    /// A feature the broker does not support was needed.
    UnsupportedFeature,
    /// Broker: the request version is not supported.
    UnsupportedVersion,
    /// Broker: another static member took this member's instance id.
    FencedInstanceId,
    /// Broker: the static member's instance id is still held by a previous member.
    UnreleasedInstanceId,
    /// Broker: the record is larger than the topic or broker accepts.
    MessageSizeTooLarge,
    /// Broker: the record's size field is invalid.
    InvalidMessageSize,
    /// Broker: the batch is larger than the broker accepts.
    MessageBatchTooLarge,
    /// The topic does not exist (client-side).
    UnknownTopic,
    /// The partition does not exist (client-side).
    UnknownPartition,
    /// Broker: the topic or partition does not exist.
    UnknownTopicOrPartition,
    /// Broker: the topic name is invalid.
    InvalidTopic,
    /// Broker: the partition count is invalid.
    InvalidPartitions,
    /// Broker: a record failed the broker's validation.
    InvalidRecord,
    /// Broker: the record is corrupt (CRC mismatch).
    InvalidMessage,
    /// The client received a malformed message.
    BadMessage,
    /// Broker: not authorized to access the topic.
    TopicAuthorizationFailed,
    /// Broker: not authorized to access the group.
    GroupAuthorizationFailed,
    /// Broker: SASL authentication failed.
    SaslAuthenticationFailed,
    /// Authentication failed (client-side).
    Authentication,
    /// Broker: the topic already exists.
    TopicAlreadyExists,
    /// Broker: the request violates the broker's policy.
    PolicyViolation,
    /// Broker: a configuration value is invalid.
    InvalidConfig,
    /// Broker: the replication factor is invalid.
    InvalidReplicationFactor,
    /// Broker: the `acks` value is invalid.
    InvalidRequiredAcks,
    /// An argument or configuration is invalid (client-side).
    InvalidArgument,
    /// Broker: the record's timestamp is out of the accepted range.
    InvalidTimestamp,
    /// Broker: the commit metadata is larger than `offset.metadata.max.bytes`.
    OffsetMetadataTooLarge,
    /// The key could not be serialized.
    KeySerialization,
    /// The value could not be serialized.
    ValueSerialization,
    /// Broker: topic deletion is disabled.
    TopicDeletionDisabled,
    /// Broker: the request is invalid.
    InvalidRequest,
    /// A generic client failure.
    Fail,
    /// The connection to a broker failed.
    BrokerTransportFailure,
    /// Every broker connection is down.
    AllBrokersDown,
    /// The record was not acknowledged within the delivery timeout.
    MessageTimedOut,
    /// The operation did not finish within its timeout.
    OperationTimedOut,
    /// The client's queue is full: wait for deliveries and try again.
    QueueFull,
    /// The record was purged from the client's queue (producer closing).
    PurgeQueue,
    /// The record was purged while in flight (producer closing).
    PurgeInflight,
    /// Broker: the request timed out.
    RequestTimedOut,
    /// Broker: the partition has no leader at the moment.
    LeaderNotAvailable,
    /// Broker: this broker no longer leads the partition.
    NotLeaderForPartition,
    /// Broker: fewer in-sync replicas than `min.insync.replicas`; nothing was written.
    NotEnoughReplicas,
    /// Broker: written to the leader, but too few replicas: possibly persisted.
    NotEnoughReplicasAfterAppend,
    /// Broker: the connection failed during the request.
    NetworkException,
    /// Broker: this broker is not the group or transaction coordinator.
    NotCoordinator,
    /// Broker: the coordinator is not available.
    CoordinatorNotAvailable,
    /// Broker: the coordinator is still loading.
    CoordinatorLoadInProgress,
    /// Broker: the group is rebalancing.
    RebalanceInProgress,
}

impl ErrorCode {
    /// The code for librdkafka's number `code`: a named variant when there is one.
    pub fn from_raw(code: i32) -> Self {
        match RDKafkaRespErr::try_from(code) {
            Ok(known) => Self::from_rdkafka(RDKafkaErrorCode::from(known)),
            Err(_) => ErrorCode::Other(code),
        }
    }

    /// librdkafka's name for the code, e.g. `MessageSizeTooLarge`.
    pub fn name(self) -> Cow<'static, str> {
        match (self.named(), self.to_rdkafka()) {
            (Some(name), _) => Cow::Borrowed(name),
            (None, Some(c)) => Cow::Owned(format!("{c:?}")),
            (None, None) => Cow::Owned(format!("Code{}", self.raw())),
        }
    }

    /// librdkafka's description of the code, e.g. `Broker: Message size too large`.
    pub fn description(self) -> String {
        let Some(c) = self.to_rdkafka() else {
            return format!("unknown error code {}", self.raw());
        };
        // librdkafka's text is only reachable through rdkafka's Display, "<name> (<text>)".
        let shown = c.to_string();
        let name = format!("{c:?} (");
        shown
            .strip_prefix(&name)
            .and_then(|s| s.strip_suffix(')'))
            .map_or(shown.clone(), str::to_owned)
    }

    /// True for a full client queue: wait for deliveries and try again.
    pub fn is_queue_full(self) -> bool {
        self == ErrorCode::QueueFull
    }
}

/// `MessageSizeTooLarge (Broker: Message size too large)`: the name and librdkafka's
/// description.
impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
    }
}

impl Classify for ErrorCode {
    fn class(&self) -> ErrorClass {
        classify_code(*self)
    }
}

/// Classifies an error code, as seen after the client's own retries are exhausted.
///
/// Permanent: the same record or request fails again (too large, unknown or invalid topic
/// and partition, authorization, bad record). Fatal: the client instance is unusable
/// (fenced, fatal idempotence state, destroyed). Everything else — timeouts, transport,
/// leadership changes, full queues, not enough replicas, codes kbatch does not name — is
/// retriable.
pub fn classify_code(code: ErrorCode) -> ErrorClass {
    use ErrorCode as C;
    match code {
        C::Fatal
        | C::Fenced
        | C::InvalidProducerEpoch
        | C::ProducerFenced
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::TransactionalIdAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::BrokerDestroy
        | C::InvalidTransactionTimeout
        | C::UnsupportedFeature
        | C::UnsupportedVersion
        // Another member took this static member's instance id, or still holds it.
        | C::FencedInstanceId
        | C::UnreleasedInstanceId => ErrorClass::Fatal,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::UnknownTopic
        | C::UnknownPartition
        // Retried by the client until `topic.metadata.propagation.max.ms`; once it reaches
        // the caller, the topic or partition does not exist.
        | C::UnknownTopicOrPartition
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidRecord
        | C::InvalidMessage
        | C::BadMessage
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::TopicAlreadyExists
        | C::PolicyViolation
        | C::InvalidConfig
        | C::InvalidReplicationFactor
        | C::InvalidRequiredAcks
        | C::InvalidArgument
        | C::InvalidTimestamp
        | C::OffsetMetadataTooLarge
        | C::KeySerialization
        | C::ValueSerialization
        | C::TopicDeletionDisabled
        | C::InvalidRequest => ErrorClass::Permanent,
        _ => ErrorClass::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_codes_round_trip_and_are_never_other() {
        for &code in ErrorCode::NAMED {
            let rd = code.to_rdkafka().expect("named codes are librdkafka's");
            assert_eq!(ErrorCode::from_rdkafka(rd), code);
            assert_eq!(ErrorCode::from_raw(code.raw()), code);
            assert_eq!(code.name(), format!("{rd:?}"));
            assert_eq!(code.to_string(), rd.to_string(), "same text as librdkafka");
        }
        // Every number librdkafka knows maps to a code that maps back to it.
        for n in -200..=200 {
            if let Ok(known) = RDKafkaRespErr::try_from(n) {
                let code = ErrorCode::from_raw(n);
                assert_eq!(code.raw(), n, "{code:?}");
                assert_eq!(code.to_string(), RDKafkaErrorCode::from(known).to_string());
            }
        }
    }

    #[test]
    fn unnamed_codes_keep_number_name_and_description() {
        let c = ErrorCode::from_rdkafka(RDKafkaErrorCode::InvalidFetchSessionEpoch);
        assert_eq!(c, ErrorCode::Other(71));
        assert_eq!(c.name(), "InvalidFetchSessionEpoch");
        assert!(c.description().contains("fetch session epoch"), "{c}");
        assert_eq!(classify_code(c), ErrorClass::Retriable);
        let unknown = ErrorCode::from_raw(9_999);
        assert_eq!(unknown, ErrorCode::Other(9_999));
        assert_eq!(unknown.to_string(), "Code9999 (unknown error code 9999)");
    }

    #[test]
    fn codes_fall_in_the_documented_classes() {
        use ErrorCode as C;
        for (code, class) in [
            (C::MessageSizeTooLarge, ErrorClass::Permanent),
            (C::TopicAuthorizationFailed, ErrorClass::Permanent),
            (C::UnknownPartition, ErrorClass::Permanent),
            (C::MessageTimedOut, ErrorClass::Retriable),
            (C::QueueFull, ErrorClass::Retriable),
            (C::NotLeaderForPartition, ErrorClass::Retriable),
            (C::NotEnoughReplicasAfterAppend, ErrorClass::Retriable),
            (C::BrokerTransportFailure, ErrorClass::Retriable),
            (C::ProducerFenced, ErrorClass::Fatal),
            (C::UnreleasedInstanceId, ErrorClass::Fatal),
        ] {
            assert_eq!(classify_code(code), class, "{code}");
            assert_eq!(code.class(), class);
        }
        assert_eq!(
            C::MessageSizeTooLarge.to_string(),
            "MessageSizeTooLarge (Broker: Message size too large)"
        );
    }
}
