//! Who may write where: API keys (stored as SHA-256 hashes) and their topic patterns.
//!
//! ```text
//!  Authorization: Bearer <token> | X-API-Key: <token>
//!        │ sha256
//!        ▼
//!  compare with every stored hash in constant time ──none──► 401 (WWW-Authenticate: Bearer)
//!        │ key
//!        ▼
//!  topic starts with "__"? ──yes──► 403 (also with insecure_no_auth)
//!  topic matches one of the key's patterns? ──no──► 403
//! ```

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::GatewayConfig;
use crate::error::RequestError;

/// Lower-case hex of the SHA-256 of `token`: what a config stores for it.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

struct StoredKey {
    name: String,
    hash: [u8; 32],
    patterns: Vec<String>,
}

/// Checks credentials and topic permissions of requests.
pub(crate) struct Authorizer {
    keys: Vec<StoredKey>,
    insecure_no_auth: bool,
}

impl Authorizer {
    /// From a validated config (the hashes are known to be 64 hex digits).
    pub(crate) fn new(config: &GatewayConfig) -> Self {
        let keys = config
            .api_keys
            .iter()
            .filter_map(|k| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&k.sha256_hex, &mut hash).ok()?;
                Some(StoredKey {
                    name: k.name.clone(),
                    hash,
                    patterns: k.topics.clone(),
                })
            })
            .collect();
        Self {
            keys,
            insecure_no_auth: config.insecure_no_auth,
        }
    }

    /// May the request with these headers write to `topic`? Returns the key's name (or
    /// `None` without authentication) for logs.
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        topic: &str,
    ) -> Result<Option<&str>, RequestError> {
        let key = match presented_token(headers) {
            Some(token) => self.find(token),
            None => None,
        };
        if key.is_none() && !self.insecure_no_auth {
            return Err(RequestError::Unauthorized);
        }
        if topic.starts_with("__") {
            return Err(RequestError::Forbidden {
                topic: topic.to_owned(),
                why: "topics starting with \"__\" are Kafka's internal topics and never writable through the gateway",
            });
        }
        match key {
            Some(k) if k.patterns.iter().any(|p| topic_matches(p, topic)) => {
                Ok(Some(k.name.as_str()))
            }
            Some(_) => Err(RequestError::Forbidden {
                topic: topic.to_owned(),
                why: "the topic matches none of this API key's topic patterns",
            }),
            // Only reachable with insecure_no_auth: anyone may write to any other topic.
            None => Ok(None),
        }
    }

    /// True when the headers carry a valid key, or none is needed: whether the request may
    /// have its body read at all.
    pub(crate) fn authenticated(&self, headers: &HeaderMap) -> bool {
        self.insecure_no_auth || presented_token(headers).is_some_and(|t| self.find(t).is_some())
    }

    /// The key whose hash equals the token's. Every stored hash is compared, each in
    /// constant time, so timing tells nothing about how much of a hash matched.
    fn find(&self, token: &str) -> Option<&StoredKey> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(presented.ct_eq(&k.hash)) && found.is_none() {
                found = Some(k);
            }
        }
        found
    }
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive) or `X-API-Key`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Glob match where `*` matches any run of characters (including none) and every other
/// character matches itself.
pub(crate) fn topic_matches(pattern: &str, topic: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), topic.as_bytes());
    // Iterative matching with backtracking to the last `*`: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::ApiKey;

    #[test]
    fn patterns_match_with_wildcards() {
        let cases = [
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("orders", "order", false),
            ("orders-*", "orders-eu", true),
            ("orders-*", "orders-", true),
            ("orders-*", "orders", false),
            ("*", "anything", true),
            ("*-audit", "x-audit", true),
            ("*-audit", "x-audit-2", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b", "abab", true),
            ("", "", true),
            ("", "x", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(topic_matches(p, t), want, "pattern {p:?} topic {t:?}");
        }
    }

    fn authorizer(insecure: bool) -> Authorizer {
        let c = GatewayConfig::default()
            .with_api_key(ApiKey::from_token("orders", "tok-1", ["orders-*"]))
            .with_api_key(ApiKey::from_token("all", "tok-2", ["*"]))
            .with_insecure_no_auth(insecure);
        Authorizer::new(&c)
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn tokens_are_checked_then_topics() {
        let a = authorizer(false);
        let bearer = headers("authorization", "Bearer tok-1");
        assert_eq!(a.authorize(&bearer, "orders-eu").unwrap(), Some("orders"));
        let api_key = headers("x-api-key", "tok-1");
        assert_eq!(a.authorize(&api_key, "orders-eu").unwrap(), Some("orders"));
        assert!(matches!(
            a.authorize(&bearer, "payments"),
            Err(RequestError::Forbidden { .. })
        ));
        assert!(
            a.authorize(&headers("authorization", "bearer tok-2"), "payments")
                .is_ok()
        );
        for wrong in [
            HeaderMap::new(),
            headers("authorization", "Bearer tok-3"),
            headers("authorization", "Basic tok-1"),
            headers("authorization", "Bearer "),
            headers("x-api-key", "tok-1x"),
        ] {
            assert!(
                matches!(
                    a.authorize(&wrong, "orders-eu"),
                    Err(RequestError::Unauthorized)
                ),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn internal_topics_are_never_writable() {
        let a = authorizer(false);
        let all = headers("x-api-key", "tok-2");
        assert!(matches!(
            a.authorize(&all, "__consumer_offsets"),
            Err(RequestError::Forbidden { .. })
        ));
        let open = authorizer(true);
        assert_eq!(open.authorize(&HeaderMap::new(), "events").unwrap(), None);
        assert!(matches!(
            open.authorize(&HeaderMap::new(), "__transaction_state"),
            Err(RequestError::Forbidden { .. })
        ));
    }

    #[test]
    fn stored_hash_is_the_sha256_of_the_token() {
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
