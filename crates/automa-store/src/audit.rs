//! The audit log: appending a hash-chained entry inside a caller's transaction, listing with filters, and
//! verifying the chain.

use chrono::{DateTime, Utc};
use serde::Serialize;

use automa_core::{AuditRecord, GENESIS_HASH};

use crate::{AuditEntry, Listed, Page, Store, StoreResult, dispatch};

/// Appends one entry for `$event` by `$actor` on the open write transaction `$tx` and evaluates to its id.
/// The transaction must come from `begin_write`, which serialises writers so that two entries can never
/// claim the same predecessor.
macro_rules! append_audit {
    ($tx:expr, $actor:expr, $event:expr) => {{
        let actor: &$crate::Actor = $actor;
        let event: $crate::AuditEvent = $event;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut *$tx).await?;
        let (prev_id, prev_hash) = last.unwrap_or((0, automa_core::GENESIS_HASH.to_owned()));
        let record = automa_core::AuditRecord {
            id: prev_id + 1,
            ts: $crate::now(),
            actor_type: actor.actor_type.to_owned(),
            actor_id: actor.actor_id.clone(),
            action: event.action,
            resource_type: event.resource_type.to_owned(),
            resource_id: event.resource_id,
            ip: actor.ip.clone(),
            details: event.details,
        };
        let hash = record.hash(&prev_hash);
        sqlx::query(
            "INSERT INTO audit_log (id, ts, actor_type, actor_id, action, resource_type, resource_id, ip, details, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(record.id)
        .bind(record.ts)
        .bind(&record.actor_type)
        .bind(&record.actor_id)
        .bind(&record.action)
        .bind(&record.resource_type)
        .bind(&record.resource_id)
        .bind(&record.ip)
        .bind(sqlx::types::Json(&record.details))
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *$tx)
        .await?;
        record.id
    }};
}
pub(crate) use append_audit;

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

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    pub ok: bool,
    pub checked: i64,
    /// The first entry whose stored hash or link does not match what its content gives.
    pub first_bad_id: Option<i64>,
}

const VERIFY_BATCH: i64 = 1000;

impl Store {
    /// Records an event that changes nothing else, such as a login or a failed login.
    pub async fn record_event(&self, actor: &crate::Actor, event: crate::AuditEvent) -> StoreResult<i64> {
        dispatch!(self, pool => {
            let mut tx = crate::WritePool::begin_write(pool).await?;
            let id = append_audit!(tx, actor, event);
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

    /// Recomputes every entry's hash from its content and its predecessor's hash, in id order, in batches.
    pub async fn verify_audit(&self) -> StoreResult<AuditVerification> {
        let mut prev_hash = GENESIS_HASH.to_owned();
        let mut after_id = 0_i64;
        let mut checked = 0_i64;
        loop {
            let batch: Vec<AuditEntry> = dispatch!(self, pool => {
                sqlx::query_as("SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after_id)
                    .bind(VERIFY_BATCH)
                    .fetch_all(pool)
                    .await?
            });
            if batch.is_empty() {
                return Ok(AuditVerification { ok: true, checked, first_bad_id: None });
            }
            for entry in batch {
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
                checked += 1;
                if entry.prev_hash != prev_hash || record.hash(&prev_hash) != entry.hash {
                    return Ok(AuditVerification { ok: false, checked, first_bad_id: Some(entry.id) });
                }
                prev_hash = entry.hash;
                after_id = entry.id;
            }
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
