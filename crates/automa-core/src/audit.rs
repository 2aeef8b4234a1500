//! The audit log's hash chain (DESIGN §9). Each entry's hash covers the previous hash and a canonical JSON
//! form of the entry, so editing, inserting or deleting any entry breaks every later link.
//!
//! Entries are keyed: their hash is an HMAC-SHA256 under a key derived from the server's secret key, so
//! someone who can write the database but does not hold the key cannot rewrite history and recompute the
//! chain. Entries written before keying was introduced keep their plain SHA-256 hash (scheme `sha256`) and
//! still verify as they did; they are never re-hashed, because re-hashing would vouch for whatever the
//! database held at upgrade time.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Separates the audit key from every other use of the server key (session signing, secret encryption).
const AUDIT_KEY_LABEL: &[u8] = b"automa audit chain v1";

/// How an entry's hash was computed; stored with the entry so that history written before keying still
/// verifies as it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// `SHA-256(prev_hash || canonical JSON)`: anyone can recompute it. Only entries from before keying.
    Sha256,
    /// `HMAC-SHA256(audit key, prev_hash || canonical JSON)`: needs the server's key.
    HmacSha256,
}

impl HashScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            HashScheme::Sha256 => "sha256",
            HashScheme::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn parse(text: &str) -> Option<HashScheme> {
        match text {
            "sha256" => Some(HashScheme::Sha256),
            "hmac-sha256" => Some(HashScheme::HmacSha256),
            _ => None,
        }
    }
}

/// The key that signs the audit chain, derived from the server's secret key.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// `HMAC-SHA256(server key, label)`: a one-way, domain-separated derivation, so the audit key reveals
    /// nothing about the key that signs sessions and seals secrets.
    pub fn derive(server_key: &[u8]) -> AuditKey {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(server_key).expect("HMAC takes keys of any length");
        mac.update(AUDIT_KEY_LABEL);
        AuditKey(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

/// The hashed content of an audit entry; the id is included so that rows cannot be swapped.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub ts: DateTime<Utc>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub ip: Option<String>,
    pub details: Value,
}

impl AuditRecord {
    /// The entry's hash under `scheme`, hex encoded. Timestamps are hashed at microsecond precision, the
    /// finest both databases keep, so a row read back hashes the same as when it was written.
    pub fn hash(&self, scheme: HashScheme, key: &AuditKey, prev_hash: &str) -> String {
        let canonical = self.canonical();
        match scheme {
            HashScheme::Sha256 => {
                let mut hasher = Sha256::new();
                hasher.update(prev_hash.as_bytes());
                hasher.update(canonical.as_bytes());
                hex::encode(hasher.finalize())
            }
            HashScheme::HmacSha256 => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0).expect("HMAC takes 32-byte keys");
                mac.update(prev_hash.as_bytes());
                mac.update(canonical.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    fn canonical(&self) -> String {
        canonical_json(&json!({
            "id": self.id,
            "ts": self.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "ip": self.ip,
            "details": self.details,
        }))
    }
}

/// JSON with object keys sorted at every depth and no insignificant whitespace.
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let members: Vec<String> = keys
                .into_iter()
                .map(|key| format!("{}:{}", Value::String(key.clone()), canonical_json(&map[key])))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            id: 1,
            ts: DateTime::parse_from_rfc3339("2026-01-01T00:00:00.123456Z").unwrap().with_timezone(&Utc),
            actor_type: "user".into(),
            actor_id: Some("1".into()),
            action: "script.create".into(),
            resource_type: "script".into(),
            resource_id: Some("7".into()),
            ip: Some("127.0.0.1".into()),
            details: json!({"name": "backup", "b": [1, {"z": 1, "a": 2}]}),
        }
    }

    fn key() -> AuditKey {
        AuditKey::derive(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        assert_eq!(canonical_json(&json!({"b": 1, "a": {"d": 1, "c": 2}})), r#"{"a":{"c":2,"d":1},"b":1}"#);
    }

    #[test]
    fn every_field_changes_the_hash() {
        for scheme in [HashScheme::Sha256, HashScheme::HmacSha256] {
            let base = record().hash(scheme, &key(), GENESIS_HASH);
            assert_eq!(base, record().hash(scheme, &key(), GENESIS_HASH));
            assert_ne!(base, record().hash(scheme, &key(), &base));
            let mut changed = record();
            changed.action = "script.delete".into();
            assert_ne!(base, changed.hash(scheme, &key(), GENESIS_HASH));
            let mut changed = record();
            changed.details = json!({"name": "backup2"});
            assert_ne!(base, changed.hash(scheme, &key(), GENESIS_HASH));
            let mut changed = record();
            changed.id = 2;
            assert_ne!(base, changed.hash(scheme, &key(), GENESIS_HASH));
        }
    }

    #[test]
    fn the_legacy_scheme_is_plain_sha256_of_the_link_and_the_entry() {
        let expected = hex::encode(Sha256::digest(format!("{GENESIS_HASH}{}", record().canonical())));
        assert_eq!(record().hash(HashScheme::Sha256, &key(), GENESIS_HASH), expected);
    }

    #[test]
    fn a_keyed_hash_depends_on_the_key_and_differs_from_plain_sha256() {
        let keyed = record().hash(HashScheme::HmacSha256, &key(), GENESIS_HASH);
        let other_key = AuditKey::derive(b"another server key, 32 bytes long");
        assert_ne!(keyed, record().hash(HashScheme::HmacSha256, &other_key, GENESIS_HASH));
        assert_ne!(keyed, record().hash(HashScheme::Sha256, &key(), GENESIS_HASH));
        assert_eq!(format!("{:?}", key()), "AuditKey(***)");
    }
}
