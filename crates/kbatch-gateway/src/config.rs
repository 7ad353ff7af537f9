//! Gateway settings: where to listen, how much a request may carry, who may write where.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kbatch_core::ConfigError;
use serde::Deserialize;

use crate::error::Error;
use crate::sink::ProducerKind;

/// Settings of the [`Gateway`](crate::Gateway).
///
/// Defaults: bind `127.0.0.1:8082` (loopback only: exposing the gateway is a decision),
/// bodies up to 8 MiB, 10,000 records per request, 30 s per request, no API keys — which
/// [`validate`](GatewayConfig::validate) refuses unless `insecure_no_auth` is set.
///
/// Loadable from TOML ([`GatewayConfig::from_toml_file`]); every field is optional there:
///
/// ```toml
/// bind = "0.0.0.0:8082"
/// max_body_bytes = 8388608
/// max_records_per_request = 10000
/// request_timeout_ms = 30000
/// producer = "adaptive"            # or "plain"
/// packed_topics = ["metrics-*"]    # sent as packed envelopes; consumers must unpack
/// calibration_path = "/var/lib/kbatch/gateway-calibration.sqlite"
/// header_read_timeout_ms = 10000
/// max_headers = 100
/// max_connections = 10000
/// max_concurrent_requests = 1024
/// metrics = true
/// # TLS (both or neither): PEM files
/// # tls_cert = "/etc/kbatch/gateway.crt"
/// # tls_key = "/etc/kbatch/gateway.key"
///
/// [[api_keys]]
/// name = "orders-service"
/// # sha256 of the token, e.g. `printf %s "$TOKEN" | sha256sum`
/// sha256_hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// topics = ["orders", "orders-*"]
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Address to listen on. Default `127.0.0.1:8082`.
    pub bind: SocketAddr,
    /// Largest request body in bytes, 1 KiB..=1 GiB. Default 8 MiB; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most records in one request, 1..=1,000,000. Default 10,000; more get 413.
    pub max_records_per_request: usize,
    /// Time from a request's start to its answer, 100 ms..=1 h (TOML: `request_timeout_ms`).
    /// Records the broker has not acknowledged by then are answered 503. Default 30 s.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// How long a topic's partition count (or its absence) is remembered, 0..=1 h
    /// (TOML: `topic_cache_ttl_ms`). Default 5 s: a new topic is writable within that.
    #[serde(rename = "topic_cache_ttl_ms", with = "millis")]
    pub topic_cache_ttl: Duration,
    /// How long an `Idempotency-Key`'s answer is kept for retries, 1 s..=24 h (TOML:
    /// `idempotency_window_ms`). Default 10 min.
    #[serde(rename = "idempotency_window_ms", with = "millis")]
    pub idempotency_window: Duration,
    /// Most `Idempotency-Key` answers kept (and requests in flight), 1..=10,000,000. Default
    /// 100,000; the oldest answers go first.
    pub idempotency_max_entries: usize,
    /// Most bytes of kept answers, 1 KiB..=16 GiB. Default 256 MiB.
    pub idempotency_max_bytes: usize,
    /// Credentials allowed to write, with the topics each may write to.
    pub api_keys: Vec<ApiKey>,
    /// Accept requests without credentials. Required, and loudly logged, when `api_keys`
    /// is empty. Internal topics (`__*`) stay unwritable.
    pub insecure_no_auth: bool,
    /// What sends the records: [`ProducerKind::Adaptive`] (default; per-event records,
    /// batched by the pressure level, honours `X-Latency-Budget-Ms`) or
    /// [`ProducerKind::Plain`] (the batching `Producer` given to the gateway, its linger;
    /// budgets ignored).
    pub producer: ProducerKind,
    /// Topic patterns (`*` as in `api_keys`) whose records are packed: many records become
    /// one Kafka record holding an envelope (`kbatch_core::envelope`), which consumers must
    /// unpack (kbatch's consumers do). Default none.
    pub packed_topics: Vec<String>,
    /// SQLite file where the adaptive producers remember what they learned (profiles
    /// `gateway`, `gateway-packed`). Default: the adaptive producer's default file.
    pub calibration_path: Option<PathBuf>,
    /// Time a client has to send a request's headers, 100 ms..=10 min (TOML:
    /// `header_read_timeout_ms`). The clock starts when the connection waits for a request,
    /// so it is also the idle timeout of a keep-alive connection, and it bounds the TLS
    /// handshake. A client trickling its headers (slow-loris) is cut off. Default 10 s.
    #[serde(rename = "header_read_timeout_ms", with = "millis")]
    pub header_read_timeout: Duration,
    /// Most headers in one request, 1..=10,000. Default 100; more get 431.
    pub max_headers: usize,
    /// Most open connections, 1..=1,000,000. Default 10,000. Past it the gateway stops
    /// accepting: new connections wait in the kernel's listen backlog until one closes.
    pub max_connections: usize,
    /// Most produce requests handled at once, across all produce routes, 1..=1,000,000.
    /// Default 1,024. Past it a request is answered 429 `overloaded` with `Retry-After: 1` at
    /// once, never queued. `/healthz`, `/readyz` and `/metrics` are not limited.
    pub max_concurrent_requests: usize,
    /// Serve `GET /metrics` (Prometheus text). Default true.
    pub metrics: bool,
    /// PEM file with the certificate chain to serve HTTPS with (with `tls_key`). Default none:
    /// plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
}

/// One credential: the SHA-256 of its token (never the token) and its topic patterns.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiKey {
    /// A name for logs; never the token.
    pub name: String,
    /// Lower- or upper-case hex of the SHA-256 of the token (64 hex digits).
    pub sha256_hex: String,
    /// Topic patterns this key may write to; `*` matches any run of characters
    /// (`orders-*`, `*`). A topic starting with `__` is refused whatever the pattern.
    pub topics: Vec<String>,
}

impl ApiKey {
    /// A key named `name` whose token hashes to `sha256_hex`, allowed `topics`.
    pub fn new(
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            sha256_hex: sha256_hex.into(),
            topics: topics.into_iter().map(Into::into).collect(),
        }
    }

    /// A key for a plain `token`: hashes it. For tests and tools; configs store the hash.
    pub fn from_token(
        name: impl Into<String>,
        token: &str,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self::new(name, crate::auth::sha256_hex(token), topics)
    }

    /// Parses the CLI form `NAME:HEX:PATTERN[,PATTERN…]`.
    pub fn parse_cli(s: &str) -> Result<Self, ConfigError> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(hex), Some(patterns)) if !name.is_empty() => {
                let key = Self::new(name, hex, patterns.split(',').filter(|p| !p.is_empty()));
                key.validate(0)?;
                Ok(key)
            }
            _ => Err(ConfigError::new(
                "api_key",
                "(hidden)",
                "NAME:SHA256HEX:PATTERN[,PATTERN…], e.g. orders:9f86…0a08:orders-*",
            )),
        }
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(
                format!("api_keys[{i}].name"),
                "\"\"",
                "a non-empty name",
            ));
        }
        let ok = self.sha256_hex.len() == 64 && hex::decode(&self.sha256_hex).is_ok();
        if !ok {
            // The value is a hash, not the token, but a token pasted here by mistake must
            // not end up in a log: only its length is shown.
            return Err(ConfigError::new(
                format!("api_keys[{i}] ({}).sha256_hex", self.name),
                format!("({} characters, hidden)", self.sha256_hex.len()),
                "64 hex digits: the SHA-256 of the token, not the token itself",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                format!("api_keys[{i}] ({}).topics", self.name),
                format!("{:?}", self.topics),
                "at least one non-empty topic pattern, e.g. [\"orders-*\"]",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("sha256_hex", &"***")
            .field("topics", &self.topics)
            .finish()
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("bind", &self.bind)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_records_per_request", &self.max_records_per_request)
            .field("request_timeout", &self.request_timeout)
            .field("topic_cache_ttl", &self.topic_cache_ttl)
            .field("idempotency_window", &self.idempotency_window)
            .field("idempotency_max_entries", &self.idempotency_max_entries)
            .field("idempotency_max_bytes", &self.idempotency_max_bytes)
            .field("api_keys", &self.api_keys)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("producer", &self.producer)
            .field("packed_topics", &self.packed_topics)
            .field("calibration_path", &self.calibration_path)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_headers", &self.max_headers)
            .field("max_connections", &self.max_connections)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("metrics", &self.metrics)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8082)),
            max_body_bytes: 8 << 20,
            max_records_per_request: 10_000,
            request_timeout: Duration::from_secs(30),
            topic_cache_ttl: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(600),
            idempotency_max_entries: 100_000,
            idempotency_max_bytes: 256 << 20,
            api_keys: Vec::new(),
            insecure_no_auth: false,
            producer: ProducerKind::Adaptive,
            packed_topics: Vec::new(),
            calibration_path: None,
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_connections: 10_000,
            max_concurrent_requests: 1024,
            metrics: true,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl GatewayConfig {
    /// Reads a TOML file (fields as in the type docs; absent ones keep their default). Not
    /// validated yet, so flags can still add keys: [`Gateway::bind`](crate::Gateway::bind)
    /// validates, as does [`validate`](GatewayConfig::validate).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            why: source.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| Error::ConfigFile {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    /// Sets the listen address.
    #[must_use]
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Sets the body and record-count limits.
    #[must_use]
    pub fn with_limits(mut self, max_body_bytes: usize, max_records_per_request: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self.max_records_per_request = max_records_per_request;
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn with_request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Sets how long and how many `Idempotency-Key` answers are kept.
    #[must_use]
    pub fn with_idempotency(
        mut self,
        window: Duration,
        max_entries: usize,
        max_bytes: usize,
    ) -> Self {
        self.idempotency_window = window;
        self.idempotency_max_entries = max_entries;
        self.idempotency_max_bytes = max_bytes;
        self
    }

    /// Adds a credential.
    #[must_use]
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_keys.push(key);
        self
    }

    /// Accepts requests without credentials (see the field).
    #[must_use]
    pub fn with_insecure_no_auth(mut self, yes: bool) -> Self {
        self.insecure_no_auth = yes;
        self
    }

    /// Chooses what sends the records (see the field).
    #[must_use]
    pub fn with_producer(mut self, producer: ProducerKind) -> Self {
        self.producer = producer;
        self
    }

    /// Adds a topic pattern whose records are packed (see the field).
    #[must_use]
    pub fn with_packed_topic(mut self, pattern: impl Into<String>) -> Self {
        self.packed_topics.push(pattern.into());
        self
    }

    /// Sets the adaptive producers' calibration file.
    #[must_use]
    pub fn with_calibration_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.calibration_path = Some(path.into());
        self
    }

    /// Sets the connection bounds: header read (and keep-alive idle) timeout, most headers
    /// per request, most open connections.
    #[must_use]
    pub fn with_connection_limits(
        mut self,
        header_read_timeout: Duration,
        max_headers: usize,
        max_connections: usize,
    ) -> Self {
        self.header_read_timeout = header_read_timeout;
        self.max_headers = max_headers;
        self.max_connections = max_connections;
        self
    }

    /// Sets how many produce requests are handled at once before 429 `overloaded`.
    #[must_use]
    pub fn with_max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n;
        self
    }

    /// Serves (or not) `GET /metrics`.
    #[must_use]
    pub fn with_metrics(mut self, yes: bool) -> Self {
        self.metrics = yes;
        self
    }

    /// Serves HTTPS with the PEM certificate chain and private key at these paths.
    #[must_use]
    pub fn with_tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Checks every field, naming the first wrong one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check_range("max_body_bytes", self.max_body_bytes, 1024, 1 << 30)?;
        ConfigError::check_range(
            "max_records_per_request",
            self.max_records_per_request,
            1,
            1_000_000,
        )?;
        ConfigError::check_range(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        ConfigError::check_range(
            "topic_cache_ttl",
            self.topic_cache_ttl,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        ConfigError::check_range(
            "idempotency_window",
            self.idempotency_window,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        ConfigError::check_range(
            "idempotency_max_entries",
            self.idempotency_max_entries,
            1,
            10_000_000,
        )?;
        ConfigError::check_range(
            "idempotency_max_bytes",
            self.idempotency_max_bytes,
            1 << 10,
            16 << 30,
        )?;
        ConfigError::check_range(
            "header_read_timeout",
            self.header_read_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        ConfigError::check_range("max_headers", self.max_headers, 1, 10_000)?;
        ConfigError::check_range("max_connections", self.max_connections, 1, 1_000_000)?;
        ConfigError::check_range(
            "max_concurrent_requests",
            self.max_concurrent_requests,
            1,
            1_000_000,
        )?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) | (None, None) => {}
            (Some(c), None) => {
                return Err(ConfigError::new(
                    "tls_key",
                    "none",
                    format!("the PEM private key of tls_cert {c:?}; TLS needs both or neither"),
                ));
            }
            (None, Some(k)) => {
                return Err(ConfigError::new(
                    "tls_cert",
                    "none",
                    format!(
                        "the PEM certificate chain of tls_key {k:?}; TLS needs both or neither"
                    ),
                ));
            }
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            k.validate(i)?;
        }
        if let Some((i, p)) = self
            .packed_topics
            .iter()
            .enumerate()
            .find(|(_, p)| p.is_empty())
        {
            return Err(ConfigError::new(
                format!("packed_topics[{i}]"),
                format!("{p:?}"),
                "a non-empty topic pattern, e.g. \"metrics-*\"",
            ));
        }
        if self.api_keys.is_empty() && !self.insecure_no_auth {
            return Err(ConfigError::new(
                "api_keys",
                "[]",
                "at least one API key, or insecure_no_auth = true to accept anyone on purpose",
            ));
        }
        Ok(())
    }
}

/// Durations as whole milliseconds in TOML.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn defaults_refuse_to_start_without_keys_or_the_insecure_flag() {
        let e = GatewayConfig::default().validate().unwrap_err();
        assert_eq!(e.field, "api_keys");
        GatewayConfig::default()
            .with_insecure_no_auth(true)
            .validate()
            .unwrap();
        let c = GatewayConfig::default().with_api_key(ApiKey::new("a", HASH, ["x"]));
        c.validate().unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8082");
    }

    #[test]
    fn invalid_fields_are_named_and_hashes_never_shown() {
        let e = GatewayConfig::default()
            .with_insecure_no_auth(true)
            .with_limits(10, 5)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_body_bytes");
        let e = GatewayConfig::default()
            .with_api_key(ApiKey::new("orders", "my-secret-token", ["o"]))
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "api_keys[0] (orders).sha256_hex");
        assert!(!e.to_string().contains("my-secret-token"), "{e}");
        let c = GatewayConfig::default().with_api_key(ApiKey::new("a", HASH, ["x"]));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(HASH) && dbg.contains("\"a\""), "{dbg}");
    }

    #[test]
    fn connection_limits_and_tls_are_validated() {
        let ok = || GatewayConfig::default().with_insecure_no_auth(true);
        let c = ok();
        assert_eq!(
            (c.header_read_timeout, c.max_headers, c.max_connections),
            (Duration::from_secs(10), 100, 10_000)
        );
        assert_eq!((c.max_concurrent_requests, c.metrics), (1024, true));
        let e = ok()
            .with_connection_limits(Duration::from_millis(10), 100, 10)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "header_read_timeout");
        let e = ok()
            .with_connection_limits(Duration::from_secs(1), 0, 10)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_headers");
        let e = ok().with_max_concurrent_requests(0).validate().unwrap_err();
        assert_eq!(e.field, "max_concurrent_requests");
        let mut c = ok();
        c.tls_key = Some("gw.key".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "tls_cert");
        assert!(e.to_string().contains("gw.key"), "{e}");
        ok().with_tls("gw.crt", "gw.key").validate().unwrap();
    }

    #[test]
    fn loads_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            format!(
                "bind = \"0.0.0.0:9000\"\nrequest_timeout_ms = 2500\nheader_read_timeout_ms = 4000\n\
                 max_concurrent_requests = 8\ntls_cert = \"/etc/gw.crt\"\ntls_key = \"/etc/gw.key\"\n\
                 [[api_keys]]\nname = \"svc\"\nsha256_hex = \"{HASH}\"\ntopics = [\"orders-*\"]\n"
            ),
        )
        .unwrap();
        let c = GatewayConfig::from_toml_file(&path).unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.header_read_timeout, Duration::from_millis(4000));
        assert_eq!(c.max_concurrent_requests, 8);
        assert_eq!(c.tls_key.as_deref(), Some(Path::new("/etc/gw.key")));
        assert_eq!(
            c.max_body_bytes,
            8 << 20,
            "absent fields keep their default"
        );
        assert_eq!(c.api_keys[0].topics, ["orders-*"]);
        std::fs::write(&path, "bind = \"0.0.0.0:9000\"\ntypo = 1\n").unwrap();
        let e = GatewayConfig::from_toml_file(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("typo") && e.contains("gw.toml"), "{e}");
    }

    #[test]
    fn producer_choice_and_packed_topics_load_from_toml() {
        let c: GatewayConfig = toml::from_str(
            "producer = \"plain\"\npacked_topics = [\"metrics-*\"]\ncalibration_path = \"/tmp/c.sqlite\"\n",
        )
        .unwrap();
        assert_eq!(c.producer, ProducerKind::Plain);
        assert_eq!(c.packed_topics, ["metrics-*"]);
        assert_eq!(
            c.calibration_path.as_deref(),
            Some(Path::new("/tmp/c.sqlite"))
        );
        assert_eq!(GatewayConfig::default().producer, ProducerKind::Adaptive);
        let e = toml::from_str::<GatewayConfig>("producer = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fast") && e.contains("adaptive"), "{e}");
        let e = GatewayConfig::default()
            .with_insecure_no_auth(true)
            .with_packed_topic("")
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "packed_topics[0]");
    }

    #[test]
    fn cli_key_form_parses() {
        let k = ApiKey::parse_cli(&format!("svc:{HASH}:orders,audit-*")).unwrap();
        assert_eq!(k.name, "svc");
        assert_eq!(k.topics, ["orders", "audit-*"]);
        assert!(ApiKey::parse_cli("svc:abc").is_err());
        assert!(ApiKey::parse_cli(&format!("svc:{HASH}:")).is_err());
    }
}
