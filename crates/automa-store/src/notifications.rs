//! Notifications: channels, each task's choice of channels and events, and the outbox of deliveries. A run's
//! notices are queued by [`queue_run_notices`] inside the transaction that ends the run, so they are written
//! exactly when the run's end is; workers on every server then claim due deliveries (`FOR UPDATE SKIP LOCKED`
//! on PostgreSQL, the write lock on SQLite) and record each attempt's outcome.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Transaction, types::Json};

use automa_core::{InvalidField, RunStatus};

use crate::{
    Actor, AuditEvent, Backend, Listed, Page, SealedSecret, Store, StoreError, StoreResult, WritePool, composed,
    dispatch, now,
};

/// Events a run can raise.
pub const RUN_EVENTS: &[&str] = &["failed", "timed_out", "lost", "skipped", "recovered"];
/// Events about the installation rather than a run; they go to the default channels.
pub const SYSTEM_EVENTS: &[&str] = &["agent_offline", "scheduler_behind"];

/// A task's failures of one kind are reported to a channel at most once per this many seconds plus one
/// grouped notice counting the rest (`details.suppressed`): a task made to fail a thousand times a minute
/// (a public hook can) sends two messages, not a thousand.
pub const GROUP_WINDOW_SECONDS: i64 = 600;

const CHANNEL_COLUMNS: &str = "id, name, kind, url, recipients, is_default, events, created_at, updated_at";

pub(crate) const INSERT_DELIVERY: &str = "INSERT INTO notification_deliveries (channel_id, channel_name, run_id, event, details, \
     dedupe_key, status, attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7) \
     ON CONFLICT (channel_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING";

/// A place notices are sent: a webhook (whose signing secret is kept apart, sealed) or e-mail recipients.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct NotificationChannel {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub recipients: Json<Vec<String>>,
    pub is_default: bool,
    pub events: Json<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A channel to create. `secret` is the webhook signing secret, already sealed.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub recipients: Vec<String>,
    pub secret: Option<SealedSecret>,
    pub is_default: bool,
    pub events: Vec<String>,
}

/// A channel change; `None` keeps the current value. The kind never changes.
#[derive(Debug, Clone, Default)]
pub struct ChannelUpdate {
    pub name: Option<String>,
    pub url: Option<String>,
    pub recipients: Option<Vec<String>>,
    pub secret: Option<SealedSecret>,
    pub is_default: Option<bool>,
    pub events: Option<Vec<String>>,
}

/// A task's own choice of channels and events.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TaskNotifications {
    pub task_id: i64,
    pub channel_ids: Json<Vec<i64>>,
    pub events: Json<Vec<String>>,
    pub updated_at: DateTime<Utc>,
}

/// One notice to one channel, with the outcome of its latest attempt.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub channel_id: Option<i64>,
    pub channel_name: String,
    pub run_id: Option<i64>,
    pub event: String,
    pub details: Json<Value>,
    pub dedupe_key: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub response_code: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What one attempt at a delivery came to.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub delivered: bool,
    /// When to try again; `None` after a success or the last attempt.
    pub retry_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub response_code: Option<i64>,
}

/// What routing reads of a channel: id, name, whether it is a default, and the events it takes as one.
pub(crate) type ChannelRow = (i64, String, bool, Json<Vec<String>>);
/// A task's own choice: its channels and events.
pub(crate) type TaskChoice = (Json<Vec<i64>>, Json<Vec<String>>);

/// The channels a notice for `event` goes to: the task's own choice when it has one, else the defaults.
pub(crate) fn recipients_of(channels: &[ChannelRow], choice: Option<&TaskChoice>, event: &str) -> Vec<(i64, String)> {
    match choice {
        Some((ids, events)) if events.0.iter().any(|e| e == event) => {
            channels.iter().filter(|(id, ..)| ids.0.contains(id)).map(|(id, name, ..)| (*id, name.clone())).collect()
        }
        Some(_) => Vec::new(),
        None => channels
            .iter()
            .filter(|(_, _, is_default, events)| *is_default && events.0.iter().any(|e| e == event))
            .map(|(id, name, ..)| (*id, name.clone()))
            .collect(),
    }
}

/// A task's previous final run, for a `recovered` notice.
#[derive(sqlx::FromRow)]
pub(crate) struct PreviousRun {
    id: i64,
    #[sqlx(try_from = "String")]
    status: RunStatus,
    finished_at: Option<DateTime<Utc>>,
}
/// The latest delivery of an event to a channel, for grouping: id, status, creation time and details.
pub(crate) type RecentDelivery = (i64, String, DateTime<Utc>, Json<Value>);

/// Queues the notices `run` raises, inside the transaction `tx` that ended it. `retried` says a retry was
/// queued with it: a failure that will be tried again notifies nobody yet. A success notifies `recovered` when
/// the task's previous final run had failed. Runs without a task raise nothing.
pub(crate) async fn queue_run_notices<DB>(
    tx: &mut Transaction<'_, DB>,
    run: &crate::Run,
    retried: bool,
) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    ChannelRow: for<'r> sqlx::FromRow<'r, DB::Row>,
    TaskChoice: for<'r> sqlx::FromRow<'r, DB::Row>,
    PreviousRun: for<'r> sqlx::FromRow<'r, DB::Row>,
    RecentDelivery: for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
    str: sqlx::Type<DB>,
    for<'a, 'q> Json<&'a Value>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let notable = matches!(
        run.status,
        RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost | RunStatus::Skipped | RunStatus::Succeeded
    );
    let Some(task_id) = run.task_id.filter(|_| notable && !retried) else { return Ok(()) };
    let channels: Vec<ChannelRow> =
        sqlx::query_as("SELECT id, name, is_default, events FROM notification_channels").fetch_all(&mut **tx).await?;
    if channels.is_empty() {
        return Ok(());
    }
    let mut details = json!({});
    let event: Option<&str> = if run.status == RunStatus::Succeeded {
        let previous: Option<PreviousRun> = sqlx::query_as(
            "SELECT id, status, finished_at FROM runs WHERE task_id = $1 AND id < $2 \
             AND (status = 'succeeded' OR (status IN ('failed', 'timed_out', 'lost') AND attempt > retries)) \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(task_id)
        .bind(run.id)
        .fetch_optional(&mut **tx)
        .await?;
        match previous {
            Some(PreviousRun { id, status, finished_at }) if status != RunStatus::Succeeded => {
                details = json!({"recovered_from": {"run_id": id, "status": status, "finished_at": finished_at}});
                Some("recovered")
            }
            _ => None,
        }
    } else {
        Some(run.status.as_str())
    };
    let Some(event) = event else { return Ok(()) };
    let choice: Option<TaskChoice> =
        sqlx::query_as("SELECT channel_ids, events FROM task_notifications WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&mut **tx)
            .await?;
    let at = now();
    for (channel_id, channel_name) in recipients_of(&channels, choice.as_ref(), event) {
        let mut due = at;
        if event == "recovered" {
            // Failures held back for a grouped notice go first, so the recovery is the last word.
            sqlx::query(
                "UPDATE notification_deliveries SET next_attempt_at = $3 WHERE channel_id = $1 \
             AND status = 'pending' AND attempts = 0 AND next_attempt_at > $3 \
             AND run_id IN (SELECT id FROM runs WHERE task_id = $2)",
            )
            .bind(channel_id)
            .bind(task_id)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        } else {
            let window = Duration::seconds(GROUP_WINDOW_SECONDS);
            let recent: Option<RecentDelivery> = sqlx::query_as(
                "SELECT d.id, d.status, d.created_at, d.details FROM notification_deliveries d \
             JOIN runs r ON r.id = d.run_id WHERE r.task_id = $1 AND d.channel_id = $2 \
             AND d.event = $3 AND d.created_at > $4 ORDER BY d.id DESC LIMIT 1",
            )
            .bind(task_id)
            .bind(channel_id)
            .bind(event)
            .bind(at - window)
            .fetch_optional(&mut **tx)
            .await?;
            match recent {
                // Not sent yet: this failure is folded into it and counted.
                Some((id, status, _, Json(mut grouped))) if status == "pending" => {
                    let count = grouped["suppressed"].as_i64().unwrap_or(0) + 1;
                    if let Some(fields) = grouped.as_object_mut() {
                        fields.insert("suppressed".into(), json!(count));
                        fields.insert("last_run_id".into(), json!(run.id));
                    }
                    sqlx::query("UPDATE notification_deliveries SET details = $2 WHERE id = $1")
                        .bind(id)
                        .bind(Json(&grouped))
                        .execute(&mut **tx)
                        .await?;
                    continue;
                }
                // One went out within the window: the next waits for the window's end and gathers the
                // failures until then.
                Some((_, _, created_at, _)) => due = created_at + window,
                None => {}
            }
        }
        sqlx::query(
                        "INSERT INTO notification_deliveries (channel_id, channel_name, run_id, event, details, \
                         status, attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7)",
                    )
                    .bind(channel_id)
                    .bind(channel_name)
                    .bind(run.id)
                    .bind(event)
                    .bind(Json(&details))
                    .bind(due)
                    .bind(at)
                    .execute(&mut **tx)
                    .await?;
    }
    Ok(())
}

/// The audit details of a channel: never its secret, and of its URL only the origin, since a webhook URL often
/// carries a token in its path.
fn channel_audit(channel: &NotificationChannel, secret_changed: bool) -> Value {
    json!({"name": channel.name, "kind": channel.kind, "url_origin": channel.url.as_deref().map(url_origin),
        "recipients": channel.recipients.0, "default": channel.is_default, "events": channel.events.0,
        "secret_changed": secret_changed})
}

/// `scheme://host[:port]` of a URL as a browser would read it (a backslash counts as a `/`, `user:pw@` is dropped),
/// so a token in an oddly typed path never passes for part of the host.
pub fn url_origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

impl Store {
    pub async fn create_notification_channel(
        &self,
        actor: &Actor,
        new: NewChannel,
    ) -> StoreResult<NotificationChannel> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let at = now();
            let channel: NotificationChannel = sqlx::query_as(composed(format!(
                "INSERT INTO notification_channels (name, kind, url, recipients, secret_ciphertext, secret_nonce, \
                 is_default, events, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                 RETURNING {CHANNEL_COLUMNS}"
            )))
            .bind(&new.name)
            .bind(&new.kind)
            .bind(&new.url)
            .bind(Json(&new.recipients))
            .bind(new.secret.as_ref().map(|s| s.ciphertext.clone()))
            .bind(new.secret.as_ref().map(|s| s.nonce.clone()))
            .bind(new.is_default)
            .bind(Json(&new.events))
            .bind(at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a channel named '{}' already exists", new.name)))?;
            let details = channel_audit(&channel, new.secret.is_some());
            self.append_audit(&mut tx, actor, AuditEvent::new("notification_channel.create", "notification_channel", Some(channel.id), details)).await?;
            tx.commit().await?;
            Ok(channel)
        })
    }

    pub async fn update_notification_channel(
        &self,
        actor: &Actor,
        id: i64,
        update: ChannelUpdate,
    ) -> StoreResult<NotificationChannel> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let current: NotificationChannel =
                sqlx::query_as(composed(format!("SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
            let name = update.name.clone().unwrap_or(current.name);
            let channel: NotificationChannel = sqlx::query_as(composed(format!(
                "UPDATE notification_channels SET name = $2, url = $3, recipients = $4, is_default = $5, events = $6, \
                 updated_at = $7 WHERE id = $1 RETURNING {CHANNEL_COLUMNS}"
            )))
            .bind(id)
            .bind(&name)
            .bind(update.url.clone().or(current.url))
            .bind(Json(update.recipients.clone().unwrap_or(current.recipients.0)))
            .bind(update.is_default.unwrap_or(current.is_default))
            .bind(Json(update.events.clone().unwrap_or(current.events.0)))
            .bind(now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a channel named '{name}' already exists")))?;
            if let Some(secret) = &update.secret {
                sqlx::query("UPDATE notification_channels SET secret_ciphertext = $2, secret_nonce = $3 WHERE id = $1")
                    .bind(id)
                    .bind(&secret.ciphertext)
                    .bind(&secret.nonce)
                    .execute(&mut *tx)
                    .await?;
            }
            let details = channel_audit(&channel, update.secret.is_some());
            self.append_audit(&mut tx, actor, AuditEvent::new("notification_channel.update", "notification_channel", Some(id), details)).await?;
            tx.commit().await?;
            Ok(channel)
        })
    }

    /// Deletes a channel. Its past deliveries stay in the runs' history under its name; pending ones are
    /// dropped with it.
    pub async fn delete_notification_channel(&self, actor: &Actor, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE notification_deliveries SET status = 'failed', last_error = 'the channel was deleted' \
                         WHERE channel_id = $1 AND status IN ('pending', 'sending')")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let name: String = sqlx::query_scalar("DELETE FROM notification_channels WHERE id = $1 RETURNING name")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            self.append_audit(&mut tx, actor, AuditEvent::new("notification_channel.delete", "notification_channel", Some(id), json!({"name": name}))).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn get_notification_channel(&self, id: i64) -> StoreResult<NotificationChannel> {
        dispatch!(self, pool => {
            sqlx::query_as(composed(format!("SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
    }

    pub async fn list_notification_channels(&self, page: Page) -> StoreResult<Listed<NotificationChannel>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM notification_channels").fetch_one(pool).await?;
            let items = sqlx::query_as(composed(format!(
                "SELECT {CHANNEL_COLUMNS} FROM notification_channels ORDER BY name LIMIT $1 OFFSET $2"
            )))
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
            Ok(Listed { items, total })
        })
    }

    /// A webhook channel's sealed signing secret, named `label` for unsealing.
    pub async fn channel_secret(&self, id: i64, label: String) -> StoreResult<Option<SealedSecret>> {
        type Sealed = (Option<Vec<u8>>, Option<Vec<u8>>);
        let sealed: Option<Sealed> = dispatch!(self, pool => {
            sqlx::query_as("SELECT secret_ciphertext, secret_nonce FROM notification_channels WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        match sealed {
            None => Err(StoreError::NotFound),
            Some((Some(ciphertext), Some(nonce))) => Ok(Some(SealedSecret { name: label, ciphertext, nonce })),
            Some(_) => Ok(None),
        }
    }

    pub async fn get_task_notifications(&self, task_id: i64) -> StoreResult<Option<TaskNotifications>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as("SELECT task_id, channel_ids, events, updated_at FROM task_notifications WHERE task_id = $1")
                .bind(task_id)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Sets a task's own choice (`Some`) or returns it to the default channels (`None`). Every channel named
    /// must exist; the error names the first that does not.
    pub async fn set_task_notifications(
        &self,
        actor: &Actor,
        task_id: i64,
        choice: Option<(Vec<i64>, Vec<String>)>,
    ) -> StoreResult<Option<TaskNotifications>> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let task: Option<i64> = sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1").bind(task_id).fetch_optional(&mut *tx).await?;
            task.ok_or(StoreError::NotFound)?;
            let saved = match &choice {
                Some((channel_ids, events)) => {
                    let existing: Vec<i64> = sqlx::query_scalar("SELECT id FROM notification_channels").fetch_all(&mut *tx).await?;
                    if let Some((index, id)) = channel_ids.iter().enumerate().find(|(_, id)| !existing.contains(id)) {
                        return Err(InvalidField::new(format!("channel_ids[{index}]"), format!("there is no channel with id {id}")).into());
                    }
                    let saved: TaskNotifications = sqlx::query_as(
                        "INSERT INTO task_notifications (task_id, channel_ids, events, updated_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (task_id) DO UPDATE SET channel_ids = excluded.channel_ids, events = excluded.events, \
                         updated_at = excluded.updated_at RETURNING task_id, channel_ids, events, updated_at",
                    )
                    .bind(task_id)
                    .bind(Json(channel_ids))
                    .bind(Json(events))
                    .bind(now())
                    .fetch_one(&mut *tx)
                    .await?;
                    Some(saved)
                }
                None => {
                    sqlx::query("DELETE FROM task_notifications WHERE task_id = $1").bind(task_id).execute(&mut *tx).await?;
                    None
                }
            };
            let details = match &choice {
                Some((channel_ids, events)) => json!({"channel_ids": channel_ids, "events": events}),
                None => json!({"default": true}),
            };
            self.append_audit(&mut tx, actor, AuditEvent::new("task.notifications", "task", Some(task_id), details)).await?;
            tx.commit().await?;
            Ok(saved)
        })
    }

    /// A run's deliveries, oldest first.
    pub async fn run_deliveries(&self, run_id: i64) -> StoreResult<Vec<Delivery>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as("SELECT * FROM notification_deliveries WHERE run_id = $1 ORDER BY id")
                .bind(run_id)
                .fetch_all(pool)
                .await?)
        })
    }

    /// A channel's deliveries, newest first: those of runs and the installation's own notices.
    pub async fn channel_deliveries(&self, channel_id: i64, page: Page) -> StoreResult<Listed<Delivery>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM notification_deliveries WHERE channel_id = $1")
                .bind(channel_id)
                .fetch_one(pool)
                .await?;
            let items = sqlx::query_as(
                "SELECT * FROM notification_deliveries WHERE channel_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            )
            .bind(channel_id)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
            Ok(Listed { items, total })
        })
    }

    /// Queues a notice about the installation (not a run) to every default channel that takes `event`, once
    /// per channel and `dedupe_key` however many servers raise it. Returns how many deliveries were queued.
    pub async fn queue_notice(&self, event: &str, details: &Value, dedupe_key: &str) -> StoreResult<u64> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_with_lock().await?;
            let channels: Vec<ChannelRow> =
                sqlx::query_as("SELECT id, name, is_default, events FROM notification_channels WHERE is_default")
                    .fetch_all(&mut *tx)
                    .await?;
            let at = now();
            let mut queued = 0;
            for (channel_id, channel_name) in recipients_of(&channels, None, event) {
                queued += sqlx::query(INSERT_DELIVERY)
                    .bind(channel_id)
                    .bind(channel_name)
                    .bind(None::<i64>)
                    .bind(event)
                    .bind(Json(details))
                    .bind(dedupe_key)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(queued)
        })
    }

    /// Claims up to `limit` due deliveries for `lease`: pending ones whose time has come, and ones a worker
    /// claimed but never reported (its server stopped). Each claim counts as an attempt.
    pub async fn claim_deliveries(&self, lease: Duration, limit: i64) -> StoreResult<Vec<Delivery>> {
        let at = now();
        let lock = if self.is_postgres() { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE notification_deliveries SET status = 'sending', attempts = attempts + 1, lease_until = $2, \
             last_attempt_at = $1 WHERE id IN (SELECT id FROM notification_deliveries \
             WHERE (status = 'pending' AND next_attempt_at <= $1) OR (status = 'sending' AND lease_until < $1) \
             ORDER BY next_attempt_at, id LIMIT $3{lock}) RETURNING *"
        );
        match &*self.backend {
            Backend::Sqlite(pool) => {
                let mut tx = pool.begin_with_lock().await?;
                let claimed =
                    sqlx::query_as(composed(sql)).bind(at).bind(at + lease).bind(limit).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(claimed)
            }
            Backend::Postgres(pool) => {
                Ok(sqlx::query_as(composed(sql)).bind(at).bind(at + lease).bind(limit).fetch_all(pool).await?)
            }
        }
    }

    /// Records an attempt's outcome on a delivery this worker still holds.
    pub async fn record_attempt(&self, id: i64, outcome: &AttemptOutcome) -> StoreResult<()> {
        let at = now();
        let status = match (outcome.delivered, outcome.retry_at) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        dispatch!(self, pool => {
            sqlx::query(
                "UPDATE notification_deliveries SET status = $2, next_attempt_at = COALESCE($3, next_attempt_at), \
                 lease_until = NULL, last_error = $4, response_code = $5, delivered_at = $6 \
                 WHERE id = $1 AND status = 'sending'",
            )
            .bind(id)
            .bind(status)
            .bind(outcome.retry_at)
            .bind(&outcome.error)
            .bind(outcome.response_code)
            .bind(outcome.delivered.then_some(at))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// When [`Store::claim_deliveries`] next has something to claim: the earliest pending delivery becomes due,
    /// or the earliest claim left without an outcome runs out.
    pub async fn next_delivery_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let (due, lease_ends): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = dispatch!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT MIN(next_attempt_at) FROM notification_deliveries WHERE status = 'pending'), \
                 (SELECT MIN(lease_until) FROM notification_deliveries WHERE status = 'sending')",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(due.into_iter().chain(lease_ends).min())
    }

    /// Enabled agents last heard from between `since` and `before`: gone quiet recently enough to notify.
    pub async fn silent_agents(
        &self,
        since: DateTime<Utc>,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<(i64, String, DateTime<Utc>)>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT id, name, last_seen_at FROM agents WHERE NOT disabled AND last_seen_at IS NOT NULL \
                 AND last_seen_at >= $1 AND last_seen_at < $2 ORDER BY id",
            )
            .bind(since)
            .bind(before)
            .fetch_all(pool)
            .await?)
        })
    }

    /// The name of a task, if it still exists.
    pub async fn task_name(&self, task_id: i64) -> StoreResult<Option<String>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_scalar("SELECT name FROM tasks WHERE id = $1").bind(task_id).fetch_optional(pool).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_paths_and_credentials() {
        assert_eq!(url_origin("https://hooks.example.com/services/T0/B1/xyz"), "https://hooks.example.com");
        assert_eq!(url_origin("http://user:pw@host:8080/p?q"), "http://host:8080");
        assert_eq!(url_origin("https://example.com"), "https://example.com");
        assert_eq!(url_origin("https://h\\services\\T\\B\\tok"), "https://h");
        assert_eq!(url_origin("not a url/with/tok"), "(not a URL)");
    }

    #[test]
    fn a_task_choice_replaces_the_defaults() {
        let channels = vec![
            (1, "ops".to_owned(), true, Json(vec!["failed".to_owned()])),
            (2, "team".to_owned(), false, Json(vec![])),
        ];
        assert_eq!(recipients_of(&channels, None, "failed"), [(1, "ops".to_owned())]);
        assert!(recipients_of(&channels, None, "lost").is_empty());
        let choice = (Json(vec![2]), Json(vec!["lost".to_owned()]));
        assert_eq!(recipients_of(&channels, Some(&choice), "lost"), [(2, "team".to_owned())]);
        assert!(recipients_of(&channels, Some(&choice), "failed").is_empty(), "the task chose its events");
    }
}
