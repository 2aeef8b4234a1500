//! Notifications (docs/architecture.md, "Notifications"): the worker that sends the outbox's deliveries, and
//! the watchers that raise the installation's own notices (an agent gone silent, a scheduler falling behind).
//! The deliveries themselves are written by the store in the transaction that ends each run.

pub mod send;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, broadcast, watch};

use automa_store::{AttemptOutcome, Delivery, NotificationChannel, Run, SealedSecret, Store, StoreError};

use crate::{
    config::Config,
    events::{Event, Hub},
    sealing::Sealer,
};

pub use send::Sent;

/// How often the outbox is looked at on PostgreSQL when nothing wakes the worker: deliveries another server
/// queued and could not send (it stopped first) are picked up within this.
const POLL: Duration = Duration::from_secs(5);
/// The same on SQLite, where this server queues every delivery it sends and wakes its worker for each, and
/// the outbox's next due time (a retry, or a claim left without an outcome) sets every other wake-up: a look
/// now and then in case another process shares the file, without waking an idle server every few seconds.
const POLL_SQLITE: Duration = Duration::from_secs(300);
/// Retry delays double per attempt up to this.
const MAX_BACKOFF_SECONDS: i64 = 3600;
/// An agent silent for longer than its threshold plus this is no longer news: an installation that was down
/// for a day does not page about every agent that went away meanwhile.
const OFFLINE_LOOKBACK_HOURS: i64 = 24;
/// At most one "scheduler behind" notice per channel per this many seconds.
const LATE_NOTICE_WINDOW_SECONDS: i64 = 600;

pub struct Notifier {
    store: Store,
    sealer: Sealer,
    senders: send::Senders,
    hub: Hub,
    attempts: i64,
    backoff_seconds: i64,
    concurrency: usize,
    /// A claimed delivery is retried elsewhere once this passes without an outcome (its server stopped).
    lease: chrono::Duration,
    public_url: Option<String>,
    agent_offline: Option<chrono::Duration>,
    scheduler_late: Option<chrono::Duration>,
    wake: Notify,
}

impl Notifier {
    pub fn new(config: &Config, store: Store, sealer: Sealer, hub: Hub) -> anyhow::Result<Notifier> {
        let seconds = |value: u64| chrono::Duration::seconds(i64::try_from(value).unwrap_or(i64::MAX / 1000));
        let positive = |value: u64| (value > 0).then(|| seconds(value));
        Ok(Notifier {
            senders: send::Senders::new(config)?,
            store,
            sealer,
            hub,
            attempts: i64::from(config.notification_attempts.max(1)),
            backoff_seconds: i64::try_from(config.notification_backoff_seconds).unwrap_or(MAX_BACKOFF_SECONDS),
            concurrency: config.notification_concurrency.max(1),
            lease: seconds(config.notification_timeout_seconds.max(1) * 3 + 30),
            public_url: config.public_url.as_ref().map(|url| url.trim_end_matches('/').to_owned()),
            agent_offline: positive(config.agent_offline_seconds),
            scheduler_late: positive(config.scheduler_late_seconds),
            wake: Notify::new(),
        })
    }

    pub fn has_smtp(&self) -> bool {
        self.senders.has_smtp()
    }

    /// Seals a webhook secret bound to its channel's name, so a ciphertext copied onto another channel's row
    /// does not decrypt.
    pub fn seal_secret(&self, channel_name: &str, secret: &str) -> SealedSecret {
        self.sealer.seal(&secret_label(channel_name), secret)
    }

    /// The channel's signing secret in clear, for sending or re-sealing under a new name.
    pub async fn channel_secret(&self, channel: &NotificationChannel) -> anyhow::Result<Option<String>> {
        match self.store.channel_secret(channel.id, secret_label(&channel.name)).await? {
            Some(sealed) => Ok(Some(self.sealer.unseal(&sealed)?)),
            None => Ok(None),
        }
    }

    /// Starts the delivery worker and the watchers; they stop when `stopping` turns true.
    pub fn start(self: &Arc<Self>, stopping: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(self.clone().work(stopping.clone()))];
        if let Some(threshold) = self.agent_offline {
            tasks.push(tokio::spawn(self.clone().watch_agents(threshold, stopping.clone())));
        }
        tasks
    }

    /// Claims due deliveries, no more than there are free senders, and sends each on its own task.
    async fn work(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let idle_poll = if self.store.shared_by_servers() { POLL } else { POLL_SQLITE };
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut events = self.hub.subscribe();
        while !*stopping.borrow() {
            let free = permits.available_permits();
            let mut busy = free == 0;
            if free > 0 {
                match self.store.claim_deliveries(self.lease, free as i64).await {
                    Ok(batch) => {
                        busy = batch.len() == free;
                        for delivery in batch {
                            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
                            let this = self.clone();
                            tokio::spawn(async move {
                                this.deliver(delivery).await;
                                drop(permit);
                                this.wake.notify_one();
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot claim notification deliveries; trying again later"),
                }
            }
            let wait = if busy {
                POLL
            } else {
                match self.store.next_delivery_at().await {
                    Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(idle_poll),
                    Ok(None) => idle_poll,
                    Err(_) => POLL,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                _ = self.wake.notified() => {}
                _ = run_ended(&mut events) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Sends one claimed delivery and records the outcome: delivered, retried later with a doubled delay, or
    /// failed after the last attempt.
    async fn deliver(&self, delivery: Delivery) {
        let sent = match self.attempt(&delivery).await {
            Ok(sent) => sent,
            Err(error) => Sent { ok: false, code: None, error: Some(format!("{error:#}")) },
        };
        let retry_at = (!sent.ok && delivery.attempts < self.attempts).then(|| {
            let doublings = u32::try_from(delivery.attempts.clamp(1, 20) - 1).unwrap_or(0);
            let delay = self.backoff_seconds.saturating_mul(1_i64 << doublings).min(MAX_BACKOFF_SECONDS);
            automa_store::now() + chrono::Duration::seconds(delay)
        });
        if !sent.ok {
            tracing::warn!(delivery = delivery.id, channel = %delivery.channel_name, event = %delivery.event,
                attempt = delivery.attempts, error = sent.error.as_deref(), retrying = retry_at.is_some(),
                "a notification was not delivered");
        }
        let outcome = AttemptOutcome { delivered: sent.ok, retry_at, error: sent.error, response_code: sent.code };
        if let Err(error) = self.store.record_attempt(delivery.id, &outcome).await {
            tracing::warn!(%error, delivery = delivery.id, "cannot record a notification attempt");
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> anyhow::Result<Sent> {
        let Some(channel_id) = delivery.channel_id else {
            return Ok(Sent { ok: false, code: None, error: Some("the channel was deleted".into()) });
        };
        let channel = match self.store.get_notification_channel(channel_id).await {
            Err(StoreError::NotFound) => {
                return Ok(Sent { ok: false, code: None, error: Some("the channel was deleted".into()) });
            }
            other => other?,
        };
        let run = match delivery.run_id {
            Some(run_id) => Some(self.store.get_run(run_id).await?),
            None => None,
        };
        let task_name = match run.as_ref().and_then(|run| run.task_id) {
            Some(task_id) => self.store.task_name(task_id).await?,
            None => None,
        };
        let body =
            self.body(&delivery.event, Some(delivery.id), run.as_ref(), task_name.as_deref(), &delivery.details.0);
        self.send(&channel, &delivery.event, Some(delivery.id), &body).await
    }

    /// Sends a test notice to `channel` at once, outside the outbox, and says how it went.
    pub async fn send_test(&self, channel: &NotificationChannel) -> Sent {
        let details = json!({"message": "A test notice from Automa: this channel works."});
        let body = self.body("test", None, None, None, &details);
        match self.send(channel, "test", None, &body).await {
            Ok(sent) => sent,
            Err(error) => Sent { ok: false, code: None, error: Some(format!("{error:#}")) },
        }
    }

    async fn send(
        &self,
        channel: &NotificationChannel,
        event: &str,
        delivery: Option<i64>,
        body: &Value,
    ) -> anyhow::Result<Sent> {
        match channel.kind.as_str() {
            "webhook" => {
                let url = channel.url.as_deref().ok_or_else(|| anyhow::anyhow!("the channel has no URL"))?;
                // Signing with an empty key would look signed to a receiver that checks nothing else.
                let Some(secret) = self.channel_secret(channel).await? else {
                    return Ok(Sent {
                        ok: false,
                        code: None,
                        error: Some("the channel has no signing secret: give it one (rotate_secret)".into()),
                    });
                };
                let bytes = serde_json::to_vec(body)?;
                Ok(self.senders.webhook(url, &secret, event, delivery, bytes).await)
            }
            _ => {
                let (subject, text) = email_text(body);
                Ok(self.senders.email(&channel.recipients.0, &subject, text).await)
            }
        }
    }

    /// The JSON body of a notice; e-mails are written from the same document.
    fn body(
        &self,
        event: &str,
        delivery: Option<i64>,
        run: Option<&Run>,
        task_name: Option<&str>,
        details: &Value,
    ) -> Value {
        let mut body = json!({
            "event": event,
            "delivery_id": delivery,
            "sent_at": automa_store::now(),
            "summary": summary(event, run, task_name, details),
            "run": run.map(|run| run_json(run, task_name)),
            "url": match (run, &self.public_url) {
                (Some(run), Some(base)) => Some(format!("{base}/#/runs/{}", run.id)),
                (None, Some(base)) => Some(format!("{base}/")),
                _ => None,
            },
        });
        if let (Some(body), Some(details)) = (body.as_object_mut(), details.as_object()) {
            for (key, value) in details {
                body.insert(key.clone(), value.clone());
            }
        }
        body
    }

    /// Reports agents that stopped heartbeating, once per silence: the dedupe key is the agent and the time it
    /// was last seen, so every server may look and each channel still hears of it once.
    async fn watch_agents(self: Arc<Self>, threshold: chrono::Duration, mut stopping: watch::Receiver<bool>) {
        let period =
            (threshold / 3).to_std().unwrap_or(POLL).clamp(Duration::from_millis(500), Duration::from_secs(30));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            let now = automa_store::now();
            let since = now - threshold - chrono::Duration::hours(OFFLINE_LOOKBACK_HOURS);
            let silent = match self.store.silent_agents(since, now - threshold).await {
                Ok(silent) => silent,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for silent agents; trying again later");
                    continue;
                }
            };
            for (id, name, last_seen_at) in silent {
                let details = json!({"agent": {"id": id, "name": name, "last_seen_at": last_seen_at,
                    "silent_seconds": (now - last_seen_at).num_seconds()}});
                let key = format!("agent_offline:{id}:{}", last_seen_at.timestamp_micros());
                match self.store.queue_notice("agent_offline", &details, &key).await {
                    Ok(0) => {}
                    Ok(_) => {
                        tracing::warn!(agent = %name, %last_seen_at, "an agent stopped heartbeating");
                        self.wake.notify_one();
                    }
                    Err(error) => tracing::warn!(%error, "cannot queue an agent-offline notice"),
                }
            }
        }
    }

    /// Reports fires that came later than the threshold after their scheduled time, at most once per window.
    pub async fn check_lateness(&self, runs: &[Run]) {
        let Some(threshold) = self.scheduler_late else { return };
        let late: Vec<(&Run, chrono::Duration)> = runs
            .iter()
            .filter_map(|run| run.scheduled_for.map(|at| (run, run.queued_at - at)))
            .filter(|(_, lateness)| *lateness > threshold)
            .collect();
        let Some(worst) = late.iter().map(|(_, lateness)| *lateness).max() else { return };
        let mut task_ids: Vec<i64> = late.iter().filter_map(|(run, _)| run.task_id).collect();
        task_ids.sort_unstable();
        task_ids.dedup();
        task_ids.truncate(20);
        let details = json!({"scheduler": {"lateness_seconds": worst.num_milliseconds() as f64 / 1000.0,
            "threshold_seconds": threshold.num_seconds(), "late_fires": late.len(), "task_ids": task_ids}});
        let key = format!("scheduler_behind:{}", Utc::now().timestamp() / LATE_NOTICE_WINDOW_SECONDS);
        match self.store.queue_notice("scheduler_behind", &details, &key).await {
            Ok(0) => {}
            Ok(_) => {
                tracing::warn!(lateness_seconds = worst.num_seconds(), "the scheduler is behind");
                self.wake.notify_one();
            }
            Err(error) => tracing::warn!(%error, "cannot queue a scheduler-behind notice"),
        }
    }
}

fn secret_label(channel_name: &str) -> String {
    format!("notification channel {channel_name}")
}

/// Waits for a run to end (the store will have queued its notices), or for missed events.
async fn run_ended(events: &mut broadcast::Receiver<Arc<Event>>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Event::Run(run) = &*event
                    && run.status.is_terminal()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

fn run_json(run: &Run, task_name: Option<&str>) -> Value {
    let duration = match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => Some((end - start).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    json!({
        "id": run.id,
        "task_id": run.task_id,
        "task_name": task_name,
        "status": run.status,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "error": run.error,
        "attempt": run.attempt,
        "trigger": run.trigger,
        "scheduled_for": run.scheduled_for,
        "queued_at": run.queued_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_seconds": duration,
    })
}

/// One line saying what happened, for e-mail subjects and chat tools.
fn summary(event: &str, run: Option<&Run>, task_name: Option<&str>, details: &Value) -> String {
    let task = match (task_name, run.and_then(|run| run.task_id)) {
        (Some(name), _) => format!("task '{name}'"),
        (None, Some(id)) => format!("task {id}"),
        (None, None) => "an ad-hoc run".to_owned(),
    };
    let run_id = run.map(|run| run.id).unwrap_or_default();
    let more = match details["suppressed"].as_i64() {
        Some(count) => format!(" (and {count} more since, the last run {})", details["last_run_id"]),
        None => String::new(),
    };
    let line = match event {
        "failed" => match run.and_then(|run| run.exit_code) {
            Some(code) => format!("Run {run_id} of {task} failed with exit code {code}"),
            None => format!("Run {run_id} of {task} failed"),
        },
        "timed_out" => format!("Run {run_id} of {task} timed out"),
        "lost" => format!("Run {run_id} of {task} was lost"),
        "skipped" => format!("A scheduled fire of {task} was skipped"),
        "recovered" => format!("{} recovered: run {run_id} succeeded", capitalised(&task)),
        "agent_offline" => format!("Agent '{}' stopped heartbeating", details["agent"]["name"].as_str().unwrap_or("?")),
        "scheduler_behind" => format!(
            "The scheduler is behind: a fire started {} s late",
            details["scheduler"]["lateness_seconds"].as_f64().unwrap_or_default().round()
        ),
        _ => "Test notice from Automa".to_owned(),
    };
    line + &more
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// An e-mail's subject and plain-text body, written from the notice's JSON body.
fn email_text(body: &Value) -> (String, String) {
    let summary = body["summary"].as_str().unwrap_or("Automa notice").to_owned();
    let mut text = format!("{summary}.\n\n");
    if let Some(run) = body["run"].as_object() {
        for key in [
            "id",
            "task_name",
            "status",
            "exit_code",
            "error",
            "attempt",
            "started_at",
            "finished_at",
            "duration_seconds",
        ] {
            if let Some(value) = run.get(key).filter(|value| !value.is_null()) {
                let value = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
                text.push_str(&format!("{key}: {value}\n"));
            }
        }
    }
    for key in ["recovered_from", "suppressed", "last_run_id", "agent", "scheduler", "message"] {
        if let Some(value) = body.get(key).filter(|value| !value.is_null()) {
            let value = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            text.push_str(&format!("{key}: {value}\n"));
        }
    }
    if let Some(url) = body["url"].as_str() {
        text.push_str(&format!("\n{url}\n"));
    }
    (format!("[Automa] {summary}"), text)
}
