//! The audit log: appending a hash-chained entry inside a caller's transaction, listing with filters, and
//! verifying the chain.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sqlx::{Transaction, types::Json};

use automa_core::{AuditKey, AuditRecord, GENESIS_HASH, HashScheme};

use crate::{Actor, AuditEntry, AuditEvent, Listed, Page, Store, StoreError, StoreResult, dispatch};

impl Store {
    /// Appends one entry for `event` by `actor` on the open write transaction `tx` and returns its id. The entry
    /// is keyed with the store's audit key; a store opened without one refuses to write rather than extend the
    /// chain with hashes anyone could forge. The transaction must come from `begin_write`, which serialises
    /// writers so that two entries can never claim the same predecessor.
    pub(crate) async fn append_audit<DB>(
        &self,
        tx: &mut Transaction<'_, DB>,
        actor: &Actor,
        event: AuditEvent,
    ) -> StoreResult<i64>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        (i64, String): for<'r> sqlx::FromRow<'r, DB::Row>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
        str: sqlx::Type<DB>,
        for<'a, 'q> Json<&'a serde_json::Value>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let key = self.audit_key()?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut **tx).await?;
        let (prev_id, prev_hash) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
        let record = AuditRecord {
            id: prev_id + 1,
            ts: crate::now(),
            actor_type: actor.actor_type.to_owned(),
            actor_id: actor.actor_id.clone(),
            action: event.action,
            resource_type: event.resource_type.to_owned(),
            resource_id: event.resource_id,
            ip: actor.ip.clone(),
            details: event.details,
        };
        let scheme = HashScheme::HmacSha256;
        let hash = record.hash(scheme, key, &prev_hash);
        sqlx::query(
            "INSERT INTO audit_log (id, ts, actor_type, actor_id, action, resource_type, resource_id, ip, details, \
         prev_hash, hash, scheme) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(record.id)
        .bind(record.ts)
        .bind(&record.actor_type)
        .bind(&record.actor_id)
        .bind(&record.action)
        .bind(&record.resource_type)
        .bind(&record.resource_id)
        .bind(&record.ip)
        .bind(Json(&record.details))
        .bind(&prev_hash)
        .bind(&hash)
        .bind(scheme.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(record.id)
    }
}

/// Which entries `/audit/` returns; every field narrows the list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_type: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// An entry's position and hash, kept outside the database so that a later verification can tell whether
/// the chain still reaches that entry unchanged (deleting the newest entries leaves a shorter chain that is
/// otherwise intact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    pub id: i64,
    pub hash: String,
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    pub ok: bool,
    pub checked: i64,
    /// The first entry whose stored hash or link does not match what its content gives, or the checkpoint's
    /// entry when the chain no longer reaches it unchanged.
    pub first_bad_id: Option<i64>,
    /// Why verification failed.
    pub problem: Option<String>,
    /// The first entry hashed with the audit key; entries before it carry plain SHA-256 hashes from before
    /// the chain was keyed, which anyone with write access to the database could have recomputed.
    pub keyed_from_id: Option<i64>,
    /// The last entry checked, to keep as a checkpoint when the chain is intact.
    pub head: AuditCheckpoint,
    /// Where the walk started when audit retention has deleted the oldest entries: the last deleted entry,
    /// as stored by retention and vouched for by its keyed `audit.prune` entry.
    pub pruned_through: Option<AuditCheckpoint>,
}

/// The action of the entry each audit retention transaction writes; its details name the checkpoint it left.
pub(crate) const PRUNE_ACTION: &str = "audit.prune";

const VERIFY_BATCH: i64 = 1000;

/// Walks the chain entry by entry; holds what has been established so far.
struct ChainWalk<'k> {
    key: &'k AuditKey,
    head: AuditCheckpoint,
    checked: i64,
    keyed_from_id: Option<i64>,
    pruned_through: Option<AuditCheckpoint>,
}

impl ChainWalk<'_> {
    /// Checks one entry against its predecessor; the reason if it does not hold.
    fn check(&mut self, entry: AuditEntry) -> Result<(), String> {
        self.checked += 1;
        let scheme =
            HashScheme::parse(&entry.scheme).ok_or_else(|| format!("unknown hash scheme '{}'", entry.scheme))?;
        if scheme == HashScheme::Sha256 && self.keyed_from_id.is_some() {
            // Unkeyed entries are history from before keying; one after a keyed entry is a forgery or a
            // downgrade of a keyed entry to a hash anyone can compute.
            return Err("an unkeyed (sha256) entry follows keyed entries".into());
        }
        if entry.prev_hash != self.head.hash {
            return Err("its prev_hash does not match the previous entry's hash".into());
        }
        let record = AuditRecord {
            id: entry.id,
            ts: entry.ts,
            actor_type: entry.actor_type,
            actor_id: entry.actor_id,
            action: entry.action,
            resource_type: entry.resource_type,
            resource_id: entry.resource_id,
            ip: entry.ip,
            details: entry.details.0,
        };
        if record.hash(scheme, self.key, &self.head.hash) != entry.hash {
            return Err(format!("its {} hash does not match its content", scheme.as_str()));
        }
        if scheme == HashScheme::HmacSha256 && self.keyed_from_id.is_none() {
            self.keyed_from_id = Some(entry.id);
        }
        self.head = AuditCheckpoint { id: entry.id, hash: entry.hash };
        Ok(())
    }

    fn finish(self, first_bad_id: Option<i64>, problem: Option<String>) -> AuditVerification {
        AuditVerification {
            ok: problem.is_none(),
            checked: self.checked,
            first_bad_id,
            problem,
            keyed_from_id: self.keyed_from_id,
            head: self.head,
            pruned_through: self.pruned_through,
        }
    }
}

impl Store {
    /// The key audit entries are hashed with; a store opened without one cannot write audited changes.
    pub(crate) fn audit_key(&self) -> StoreResult<&AuditKey> {
        self.audit_key.as_deref().ok_or(StoreError::NoAuditKey)
    }

    /// Records an event that changes nothing else, such as a login or a failed login.
    pub async fn record_event(&self, actor: &crate::Actor, event: crate::AuditEvent) -> StoreResult<i64> {
        dispatch!(self, pool => {
            let mut tx = crate::WritePool::begin_write(pool).await?;
            let id = self.append_audit(&mut tx, actor, event).await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    pub async fn list_audit(&self, filter: &AuditFilter, page: Page) -> StoreResult<Listed<AuditEntry>> {
        dispatch!(self, pool => {
            let mut count = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM audit_log WHERE 1=1");
            push_audit_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let mut select = sqlx::QueryBuilder::new("SELECT * FROM audit_log WHERE 1=1");
            push_audit_filter(&mut select, filter);
            select.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit).push(" OFFSET ").push_bind(page.offset);
            let items = select.build_query_as().fetch_all(pool).await?;
            Ok(Listed { items, total })
        })
    }

    /// Recomputes every entry's hash from its content and its predecessor's hash, in id order, in batches,
    /// with the scheme each entry was written with. The walk starts from genesis, or from the checkpoint audit
    /// retention stored when it deleted the oldest entries; that checkpoint counts only if a keyed
    /// `audit.prune` entry further down the chain names it. With a `checkpoint` kept outside the database, the
    /// chain must also still hold the checkpoint's entry with the checkpoint's hash (a shorter chain or a
    /// different hash fails), unless retention has since deleted that entry.
    pub async fn verify_audit(&self, checkpoint: Option<&AuditCheckpoint>) -> StoreResult<AuditVerification> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let start = self.stored_audit_checkpoint().await?;
            let result = self.verify_from(start.as_ref(), checkpoint).await?;
            // A retention pass between reading the stored checkpoint and reading the first entries looks like
            // a broken first link; it shows as a moved checkpoint, and a second walk settles it.
            if result.ok || attempts == 3 || self.stored_audit_checkpoint().await? == start {
                return Ok(result);
            }
        }
    }

    async fn verify_from(
        &self,
        start: Option<&AuditCheckpoint>,
        checkpoint: Option<&AuditCheckpoint>,
    ) -> StoreResult<AuditVerification> {
        let mut walk = ChainWalk {
            key: self.audit_key()?,
            head: start.cloned().unwrap_or_else(|| AuditCheckpoint { id: 0, hash: GENESIS_HASH.to_owned() }),
            checked: 0,
            keyed_from_id: None,
            pruned_through: start.cloned(),
        };
        // The genesis "entry" 0 is always reached, and so is an entry retention deleted (the stored checkpoint
        // vouches for the chain up to it); any other checkpoint only when its entry is seen intact.
        let mut reached_checkpoint = match (checkpoint, start) {
            (None, _) => true,
            (Some(c), _) if c.id == 0 && c.hash == GENESIS_HASH => true,
            (Some(c), Some(s)) if c.id < s.id => true,
            (Some(c), Some(s)) if c.id == s.id => {
                if c.hash != s.hash {
                    let problem = format!("entry {} no longer has the checkpoint's hash", c.id);
                    return Ok(walk.finish(Some(c.id), Some(problem)));
                }
                true
            }
            _ => false,
        };
        let vouching = start.map(|s| serde_json::json!({"id": s.id, "hash": s.hash}));
        let mut vouched = start.is_none();
        loop {
            let batch: Vec<AuditEntry> = dispatch!(self, pool => {
                sqlx::query_as("SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(walk.head.id)
                    .bind(VERIFY_BATCH)
                    .fetch_all(pool)
                    .await?
            });
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                let id = entry.id;
                // Only a keyed entry can vouch: an unkeyed one anyone could have written.
                let vouches = entry.action == PRUNE_ACTION
                    && entry.scheme == HashScheme::HmacSha256.as_str()
                    && vouching.is_some()
                    && entry.details.0.get("checkpoint") == vouching.as_ref();
                if let Err(problem) = walk.check(entry) {
                    return Ok(walk.finish(Some(id), Some(problem)));
                }
                vouched |= vouches;
                if let Some(checkpoint) = checkpoint.filter(|c| c.id == id) {
                    if checkpoint.hash != walk.head.hash {
                        let problem = format!("entry {id} no longer has the checkpoint's hash");
                        return Ok(walk.finish(Some(id), Some(problem)));
                    }
                    reached_checkpoint = true;
                }
            }
        }
        if let Some(start) = start.filter(|_| !vouched) {
            let problem = format!(
                "the stored retention checkpoint (entry {}) is not vouched for by any keyed {PRUNE_ACTION} entry: \
                 the oldest entries may have been deleted and the checkpoint forged",
                start.id
            );
            return Ok(walk.finish(Some(start.id), Some(problem)));
        }
        match checkpoint {
            Some(checkpoint) if !reached_checkpoint => {
                let problem = format!(
                    "the chain ends at entry {} and does not hold the checkpoint's entry {}: entries were deleted",
                    walk.head.id, checkpoint.id
                );
                Ok(walk.finish(Some(checkpoint.id), Some(problem)))
            }
            _ => Ok(walk.finish(None, None)),
        }
    }
}

fn push_audit_filter<DB>(builder: &mut sqlx::QueryBuilder<DB>, filter: &AuditFilter)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> DateTime<Utc>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let text_filters = [
        ("actor_type", &filter.actor_type),
        ("actor_id", &filter.actor_id),
        ("action", &filter.action),
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
    ];
    for (column, value) in text_filters {
        if let Some(value) = value {
            builder.push(format_args!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(since) = filter.since {
        builder.push(" AND ts >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        builder.push(" AND ts < ").push_bind(until);
    }
}
