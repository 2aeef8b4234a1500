//! The audit log's hash chain (DESIGN §9). Each entry's hash covers the previous hash and a canonical JSON
//! form of the entry, so editing, inserting or deleting any entry breaks every later link.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// `SHA-256(prev_hash || canonical JSON)`, hex encoded. Timestamps are hashed at microsecond precision,
    /// the finest both databases keep, so a row read back hashes the same as when it was written.
    pub fn hash(&self, prev_hash: &str) -> String {
        let canonical = canonical_json(&json!({
            "id": self.id,
            "ts": self.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "ip": self.ip,
            "details": self.details,
        }));
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(canonical.as_bytes());
        hex::encode(hasher.finalize())
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

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        assert_eq!(canonical_json(&json!({"b": 1, "a": {"d": 1, "c": 2}})), r#"{"a":{"c":2,"d":1},"b":1}"#);
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = record().hash(GENESIS_HASH);
        assert_eq!(base, record().hash(GENESIS_HASH));
        assert_ne!(base, record().hash(&base));
        let mut changed = record();
        changed.action = "script.delete".into();
        assert_ne!(base, changed.hash(GENESIS_HASH));
        let mut changed = record();
        changed.details = json!({"name": "backup2"});
        assert_ne!(base, changed.hash(GENESIS_HASH));
        let mut changed = record();
        changed.id = 2;
        assert_ne!(base, changed.hash(GENESIS_HASH));
    }
}
