//! Connection settings shared by producers, consumers and admin clients.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use kbatch_core::ConfigError;

use super::secret::{Secret, is_secret_property};

/// How the client talks to brokers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// SASL mechanism and credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password, hidden in `Debug`.
    pub password: Secret,
}

/// Properties that typed fields own: passing them through `extra` would silently fight the
/// typed value, so it is rejected with a pointer to the field.
const OWNED_PROPERTIES: &[super::Owned] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("client.id", "client_id"),
    ("security.protocol", "security_protocol"),
    ("sasl.mechanisms", "sasl"),
    ("sasl.mechanism", "sasl"),
    ("sasl.username", "sasl"),
    ("sasl.password", "sasl"),
    ("ssl.ca.location", "ssl_ca_location"),
];

/// Connection settings common to every client.
///
/// Defaults: `brokers = "127.0.0.1:9092"`, `client_id = "kbatch"`, plaintext, no extras.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Client id reported to brokers (quotas, logs).
    pub client_id: String,
    /// Transport security.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials, required with the `Sasl*` protocols.
    pub sasl: Option<SaslConfig>,
    /// CA bundle for TLS; the system default when `None`.
    pub ssl_ca_location: Option<PathBuf>,
    /// Extra librdkafka properties passed through as given, for settings kbatch does not type.
    /// Values of credential-like keys are hidden in `Debug`.
    pub extra: BTreeMap<String, String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            client_id: "kbatch".to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl: None,
            ssl_ca_location: None,
            extra: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("ClientConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("security_protocol", &self.security_protocol)
            .field("sasl", &self.sasl)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("extra", &extra)
            .finish()
    }
}

impl ClientConfig {
    /// Settings for the given bootstrap servers, other fields at their defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }

    /// Sets the client id.
    #[must_use]
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets SASL credentials and switches the protocol to a SASL one if it was not already.
    #[must_use]
    pub fn with_sasl(
        mut self,
        mechanism: &str,
        username: &str,
        password: impl Into<Secret>,
    ) -> Self {
        self.sasl = Some(SaslConfig {
            mechanism: mechanism.to_owned(),
            username: username.to_owned(),
            password: password.into(),
        });
        if !self.security_protocol.uses_sasl() {
            self.security_protocol = SecurityProtocol::SaslPlaintext;
        }
        self
    }

    /// Adds a librdkafka property to pass through unchanged.
    #[must_use]
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Checks every field; the error names the field, the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "brokers",
                "\"\"",
                "host:port[,host:port...]",
            ));
        }
        for b in self.brokers.split(',').map(str::trim) {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(ConfigError::new(
                    "brokers",
                    format!("{b:?}"),
                    "host:port with a port in 1..=65535, comma-separated",
                ));
            }
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new("client_id", "\"\"", "a non-empty string"));
        }
        match (&self.sasl, self.security_protocol.uses_sasl()) {
            (None, true) => {
                return Err(ConfigError::new(
                    "sasl",
                    "None",
                    format!(
                        "credentials, because security_protocol is {:?}",
                        self.security_protocol
                    ),
                ));
            }
            (Some(s), _)
                if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&s.mechanism.as_str()) =>
            {
                return Err(ConfigError::new(
                    "sasl.mechanism",
                    format!("{:?}", s.mechanism),
                    "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ));
            }
            _ => {}
        }
        super::refuse_owned("extra", self.extra.keys(), OWNED_PROPERTIES)
    }

    /// Writes these settings into an rdkafka config (extras last, so they win over defaults).
    pub(crate) fn apply(&self, c: &mut rdkafka::ClientConfig) {
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.as_str());
        if let Some(s) = &self.sasl {
            c.set("sasl.mechanisms", &s.mechanism)
                .set("sasl.username", &s.username)
                .set("sasl.password", s.password.expose());
        }
        if let Some(p) = &self.ssl_ca_location {
            c.set("ssl.ca.location", p.to_string_lossy());
        }
    }

    pub(crate) fn apply_extra(&self, c: &mut rdkafka::ClientConfig) {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_brokers_with_the_value() {
        let e = ClientConfig::new("localhost").validate().unwrap_err();
        assert_eq!(e.field, "brokers");
        assert!(e.to_string().contains("\"localhost\""), "{e}");
        assert!(ClientConfig::new("a:1,b:2").validate().is_ok());
        assert!(ClientConfig::new("a:0").validate().is_err());
        assert!(ClientConfig::new("").validate().is_err());
    }

    #[test]
    fn typed_properties_cannot_be_passed_through() {
        let e = ClientConfig::new("a:1")
            .with_extra("bootstrap.servers", "b:2")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("`brokers`"), "{e}");
    }

    #[test]
    fn sasl_protocol_needs_credentials() {
        let mut c = ClientConfig::new("a:1");
        c.security_protocol = SecurityProtocol::SaslSsl;
        assert_eq!(c.validate().unwrap_err().field, "sasl");
        let c = ClientConfig::new("a:1").with_sasl("GSSAPI-ish", "u", "p");
        assert_eq!(c.validate().unwrap_err().field, "sasl.mechanism");
    }

    #[test]
    fn secrets_hidden_in_debug() {
        let c = ClientConfig::new("a:1")
            .with_sasl("PLAIN", "alice", "hunter2")
            .with_extra("ssl.key.password", "s3cret")
            .with_extra("linger.ms", "7");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("s3cret"), "{d}");
        assert!(d.contains("alice") && d.contains("linger.ms"), "{d}");
    }
}
