//! Notification channels (admins), each task's choice of channels and events, a run's deliveries, and the
//! "send test" action. A webhook's signing secret is sealed like secrets' values and shown once, in the answer
//! that created or replaced it; no other route returns it and it is never audited.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{ResourceName, Role};
use automa_store::{
    ChannelUpdate, Delivery, NewChannel, NotificationChannel, RUN_EVENTS, SYSTEM_EVENTS, TaskNotifications,
    notifications::url_origin,
};

use crate::{
    api::{Page, Paging},
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

const MAX_URL_BYTES: usize = 2048;
const MAX_RECIPIENTS: usize = 20;
const MIN_SECRET_BYTES: usize = 16;
const MAX_SECRET_BYTES: usize = 256;

/// A channel's events when none are given: every failure, the recovery, and the installation's own notices.
const DEFAULT_CHANNEL_EVENTS: &[&str] =
    &["failed", "timed_out", "lost", "recovered", "agent_offline", "scheduler_behind"];
/// A task's events when its choice names none.
const DEFAULT_TASK_EVENTS: &[&str] = &["failed", "timed_out", "lost", "recovered"];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    pub name: String,
    /// `webhook` or `email`.
    pub kind: String,
    /// Webhook: the `http` or `https` URL notices are POSTed to.
    pub url: Option<String>,
    /// E-mail: the addresses notices are sent to (1-20).
    pub recipients: Option<Vec<String>>,
    /// Webhook: the signing secret (16-256 characters). Default: a random one, returned once in the answer.
    pub secret: Option<String>,
    /// Whether the channel receives the notices of tasks that choose none, and the agent-offline and
    /// scheduler-behind notices.
    #[serde(default)]
    pub default: bool,
    /// What the channel receives as a default channel. Default: every failure, `recovered`, `agent_offline`
    /// and `scheduler_behind`.
    pub events: Option<Vec<String>>,
}

/// Changes to a channel; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    pub name: Option<String>,
    pub url: Option<String>,
    pub recipients: Option<Vec<String>>,
    /// A new signing secret for a webhook.
    pub secret: Option<String>,
    /// Replace the webhook's signing secret with a random one, returned once in the answer.
    #[serde(default)]
    pub rotate_secret: bool,
    pub default: Option<bool>,
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelResponse {
    pub id: i64,
    pub name: String,
    pub kind: String,
    /// The webhook's URL; for users who are not admins only its origin, since URLs often carry a token.
    pub url: Option<String>,
    pub recipients: Vec<String>,
    pub default: bool,
    pub events: Vec<String>,
    /// The signing secret: only in the answer that created or replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ChannelResponse {
    fn new(channel: NotificationChannel, principal: &Principal, secret: Option<String>) -> ChannelResponse {
        let admin = principal.role == Role::Admin;
        ChannelResponse {
            url: channel.url.map(|url| if admin { url } else { url_origin(&url) }),
            id: channel.id,
            name: channel.name,
            kind: channel.kind,
            recipients: channel.recipients.0,
            default: channel.is_default,
            events: channel.events.0,
            secret,
            created_at: channel.created_at,
            updated_at: channel.updated_at,
        }
    }
}

/// What a test notice came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestOutcome {
    pub delivered: bool,
    /// The HTTP status, or the SMTP reply code.
    pub response_code: Option<i64>,
    pub error: Option<String>,
}

/// A task's notification choice. With `uses_default`, the task has none and the default channels apply.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskNotificationsResponse {
    pub task_id: i64,
    pub uses_default: bool,
    pub channel_ids: Vec<i64>,
    pub events: Vec<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl TaskNotificationsResponse {
    fn new(task_id: i64, saved: Option<TaskNotifications>) -> Self {
        match saved {
            Some(saved) => TaskNotificationsResponse {
                task_id,
                uses_default: false,
                channel_ids: saved.channel_ids.0,
                events: saved.events.0,
                updated_at: Some(saved.updated_at),
            },
            None => TaskNotificationsResponse {
                task_id,
                uses_default: true,
                channel_ids: Vec::new(),
                events: Vec::new(),
                updated_at: None,
            },
        }
    }
}

/// The channels and events of a task: its notices go to these channels only, never to the defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTaskNotifications {
    pub channel_ids: Vec<i64>,
    /// Of `failed`, `timed_out`, `lost`, `skipped`, `recovered`. Default: the failures and `recovered`.
    pub events: Option<Vec<String>>,
}

/// One notice to one channel and the outcome of its latest attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    pub id: i64,
    pub channel_id: Option<i64>,
    /// Kept after the channel is deleted.
    pub channel_name: String,
    pub run_id: Option<i64>,
    pub event: String,
    /// `pending` (waiting for its next attempt), `sending`, `delivered` or `failed` (attempts exhausted).
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The HTTP status, or the SMTP reply code, of the latest attempt.
    pub response_code: Option<i64>,
    /// Event-specific fields (`recovered_from`, `agent`, `scheduler`, and on a grouped failure notice
    /// `suppressed`: how many later failures of the task it stands for, the last being `last_run_id`).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl DeliveryResponse {
    /// Users who are not admins see a failed answer's status, not its body: receivers often echo the request
    /// path, and a webhook URL's path is often its token (the snippet kept for admins is redacted too).
    fn for_viewer(delivery: Delivery) -> Self {
        let mut response = DeliveryResponse::from(delivery);
        if let Some(code) = response.response_code.filter(|_| response.last_error.is_some()) {
            response.last_error = Some(format!("the receiver answered with status {code}"));
        }
        response
    }
}

impl From<Delivery> for DeliveryResponse {
    fn from(delivery: Delivery) -> Self {
        DeliveryResponse {
            next_attempt_at: (delivery.status == "pending").then_some(delivery.next_attempt_at),
            id: delivery.id,
            channel_id: delivery.channel_id,
            channel_name: delivery.channel_name,
            run_id: delivery.run_id,
            event: delivery.event,
            status: delivery.status,
            attempts: delivery.attempts,
            last_error: delivery.last_error,
            response_code: delivery.response_code,
            details: delivery.details.0,
            created_at: delivery.created_at,
            last_attempt_at: delivery.last_attempt_at,
            delivered_at: delivery.delivered_at,
        }
    }
}

fn parse_events(
    field: &str,
    events: Option<Vec<String>>,
    allowed: &[&[&str]],
    default: &[&str],
) -> ApiResult<Vec<String>> {
    let Some(events) = events else { return Ok(default.iter().map(|e| (*e).to_owned()).collect()) };
    for (index, event) in events.iter().enumerate() {
        if !allowed.iter().any(|set| set.contains(&event.as_str())) {
            let names: Vec<&str> = allowed.iter().flat_map(|set| set.iter().copied()).collect();
            return Err(ApiError::invalid(
                &format!("{field}[{index}]"),
                format!("must be one of {}", names.join(", ")),
            ));
        }
        if events[..index].contains(event) {
            return Err(ApiError::invalid(&format!("{field}[{index}]"), "is listed twice"));
        }
    }
    Ok(events)
}

fn parse_url(url: &str) -> ApiResult<String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|error| ApiError::invalid("url", format!("is not a URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() || url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid("url", format!("must be an http or https URL of at most {MAX_URL_BYTES} bytes")));
    }
    // Stored as parsed, so what is sent to and what is shown as the origin are the same URL.
    Ok(parsed.as_str().to_owned())
}

fn parse_recipients(recipients: Vec<String>) -> ApiResult<Vec<String>> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid("recipients", format!("give 1 to {MAX_RECIPIENTS} addresses")));
    }
    recipients
        .iter()
        .enumerate()
        .map(|(index, address)| {
            let field = format!("recipients[{index}]");
            automa_core::Email::parse(&field, address)?;
            address
                .parse::<lettre::Address>()
                .map(|_| address.trim().to_owned())
                .map_err(|_| ApiError::invalid(&field, "must be an e-mail address like name@example.com"))
        })
        .collect()
}

fn check_secret(secret: &str) -> ApiResult<()> {
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&secret.len()) || secret.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "secret",
            format!("must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    hex::encode(bytes)
}

/// Notification channels. Users who are not admins see webhook URLs as their origin only.
#[utoipa::path(get, path = "/notification-channels", operation_id = "listNotificationChannels", tag = "notifications", params(Paging), security(("bearer" = ["operator"])),
    responses((status = 200, body = Page<ChannelResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page<ChannelResponse>>> {
    let page = paging.page();
    let listed = state.store.list_notification_channels(page).await?;
    Ok(Json(Page::from_listed(listed, page, |channel| ChannelResponse::new(channel, &principal, None))))
}

/// Create a channel. A webhook's signing secret is in this answer and never again.
#[utoipa::path(post, path = "/notification-channels", operation_id = "createNotificationChannel", tag = "notifications", request_body = CreateChannel, security(("bearer" = ["admin"])),
    responses((status = 201, body = ChannelResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateChannel>,
) -> ApiResult<(StatusCode, Json<ChannelResponse>)> {
    let name = ResourceName::parse("name", &input.name)?.into_inner();
    let events = parse_events("events", input.events, &[RUN_EVENTS, SYSTEM_EVENTS], DEFAULT_CHANNEL_EVENTS)?;
    let (url, recipients, secret) = match input.kind.as_str() {
        "webhook" => {
            if input.recipients.is_some() {
                return Err(ApiError::invalid("recipients", "a webhook has a url, not recipients"));
            }
            let url =
                parse_url(input.url.as_deref().ok_or_else(|| ApiError::invalid("url", "a webhook needs a url"))?)?;
            let secret = match input.secret {
                Some(secret) => {
                    check_secret(&secret)?;
                    secret
                }
                None => random_secret(),
            };
            (Some(url), Vec::new(), Some(secret))
        }
        "email" => {
            if input.url.is_some() || input.secret.is_some() {
                return Err(ApiError::invalid("url", "an e-mail channel has recipients, not a url or a secret"));
            }
            if !state.notifier.has_smtp() {
                return Err(ApiError::invalid(
                    "kind",
                    "e-mail needs an SMTP relay: set AUTOMA_SMTP_HOST on the server",
                ));
            }
            let recipients = input
                .recipients
                .ok_or_else(|| ApiError::invalid("recipients", "an e-mail channel needs recipients"))?;
            (None, parse_recipients(recipients)?, None)
        }
        _ => return Err(ApiError::invalid("kind", "must be webhook or email")),
    };
    let new = NewChannel {
        secret: secret.as_ref().map(|secret| state.notifier.seal_secret(&name, secret)),
        name,
        kind: input.kind,
        url,
        recipients,
        is_default: input.default,
        events,
    };
    let channel = state.store.create_notification_channel(&principal.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(ChannelResponse::new(channel, &principal, secret))))
}

/// A channel.
#[utoipa::path(get, path = "/notification-channels/{id}", operation_id = "getNotificationChannel", tag = "notifications", security(("bearer" = ["operator"])),
    params(("id" = i64, Path, description = "The channel's id")),
    responses((status = 200, body = ChannelResponse)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<ChannelResponse>> {
    let channel = state.store.get_notification_channel(id).await.map_err(missing("channel"))?;
    Ok(Json(ChannelResponse::new(channel, &principal, None)))
}

/// Change a channel; its kind stays. A new or rotated secret is in this answer and never again.
#[utoipa::path(put, path = "/notification-channels/{id}", operation_id = "updateNotificationChannel", tag = "notifications", request_body = UpdateChannel, security(("bearer" = ["admin"])),
    params(("id" = i64, Path, description = "The channel's id")),
    responses((status = 200, body = ChannelResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<UpdateChannel>,
) -> ApiResult<Json<ChannelResponse>> {
    let current = state.store.get_notification_channel(id).await.map_err(missing("channel"))?;
    let webhook = current.kind == "webhook";
    let name =
        input.name.as_deref().map(|name| ResourceName::parse("name", name)).transpose()?.map(ResourceName::into_inner);
    if !webhook && (input.url.is_some() || input.secret.is_some() || input.rotate_secret) {
        return Err(ApiError::invalid("url", "an e-mail channel has recipients, not a url or a secret"));
    }
    if webhook && input.recipients.is_some() {
        return Err(ApiError::invalid("recipients", "a webhook has a url, not recipients"));
    }
    if input.secret.is_some() && input.rotate_secret {
        return Err(ApiError::invalid("secret", "give a secret or rotate_secret, not both"));
    }
    let url = input.url.as_deref().map(parse_url).transpose()?;
    let recipients = input.recipients.map(parse_recipients).transpose()?;
    let events = match input.events {
        Some(events) => Some(parse_events("events", Some(events), &[RUN_EVENTS, SYSTEM_EVENTS], &[])?),
        None => None,
    };
    let new_secret = match input.secret {
        Some(secret) => {
            check_secret(&secret)?;
            Some(secret)
        }
        None if input.rotate_secret => Some(random_secret()),
        None => None,
    };
    let final_name = name.clone().unwrap_or_else(|| current.name.clone());
    // The secret is sealed under the channel's name: a rename re-seals the one it keeps.
    let kept_secret = match (&new_secret, webhook && final_name != current.name) {
        (None, true) => state.notifier.channel_secret(&current).await?,
        _ => None,
    };
    let sealed =
        new_secret.as_ref().or(kept_secret.as_ref()).map(|secret| state.notifier.seal_secret(&final_name, secret));
    let update = ChannelUpdate { name, url, recipients, secret: sealed, is_default: input.default, events };
    let channel =
        state.store.update_notification_channel(&principal.actor(), id, update).await.map_err(missing("channel"))?;
    Ok(Json(ChannelResponse::new(channel, &principal, new_secret)))
}

/// Delete a channel. Its past deliveries stay in the runs' history; pending ones are dropped.
#[utoipa::path(delete, path = "/notification-channels/{id}", operation_id = "deleteNotificationChannel", tag = "notifications", security(("bearer" = ["admin"])),
    params(("id" = i64, Path, description = "The channel's id")),
    responses((status = 204)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store.delete_notification_channel(&principal.actor(), id).await.map_err(missing("channel"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test notice now (one attempt, outside the outbox) and say how it went.
#[utoipa::path(post, path = "/notification-channels/{id}/test", operation_id = "testNotificationChannel", tag = "notifications", security(("bearer" = ["admin"])),
    params(("id" = i64, Path, description = "The channel's id")),
    responses((status = 200, body = TestOutcome)))]
pub async fn test(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TestOutcome>> {
    let channel = state.store.get_notification_channel(id).await.map_err(missing("channel"))?;
    let sent = state.notifier.send_test(&channel).await;
    let details = serde_json::json!({"name": channel.name, "delivered": sent.ok, "response_code": sent.code});
    let event = automa_store::AuditEvent::new("notification_channel.test", "notification_channel", Some(id), details);
    state.store.record_event(&principal.actor(), event).await?;
    Ok(Json(TestOutcome { delivered: sent.ok, response_code: sent.code, error: sent.error }))
}

/// A channel's deliveries, newest first, including the installation's own notices (agents, scheduler).
#[utoipa::path(get, path = "/notification-channels/{id}/deliveries", operation_id = "listChannelDeliveries", tag = "notifications", params(("id" = i64, Path, description = "The channel's id"), Paging), security(("bearer" = ["admin"])),
    responses((status = 200, body = Page<DeliveryResponse>)))]
pub async fn deliveries(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page<DeliveryResponse>>> {
    state.store.get_notification_channel(id).await.map_err(missing("channel"))?;
    let page = paging.page();
    Ok(Json(Page::from_listed(state.store.channel_deliveries(id, page).await?, page, DeliveryResponse::from)))
}

/// The notices of a run and the outcome of each.
#[utoipa::path(get, path = "/runs/{id}/notifications", operation_id = "listRunNotifications", tag = "runs", security(("bearer" = ["viewer"])),
    params(("id" = i64, Path, description = "The run's id")),
    responses((status = 200, body = Vec<DeliveryResponse>)))]
pub async fn run_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Vec<DeliveryResponse>>> {
    state.store.get_run(id).await.map_err(missing("run"))?;
    let shown = if principal.role == Role::Admin { DeliveryResponse::from } else { DeliveryResponse::for_viewer };
    Ok(Json(state.store.run_deliveries(id).await?.into_iter().map(shown).collect()))
}

/// A task's notification choice, or that it uses the default channels.
#[utoipa::path(get, path = "/tasks/{id}/notifications", operation_id = "getTaskNotifications", tag = "notifications", security(("bearer" = ["viewer"])),
    params(("id" = i64, Path, description = "The task's id")),
    responses((status = 200, body = TaskNotificationsResponse)))]
pub async fn get_task(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TaskNotificationsResponse>> {
    state.store.get_task(id).await.map_err(missing("task"))?;
    Ok(Json(TaskNotificationsResponse::new(id, state.store.get_task_notifications(id).await?)))
}

/// Choose a task's channels and events; its notices then go there instead of the default channels.
#[utoipa::path(put, path = "/tasks/{id}/notifications", operation_id = "setTaskNotifications", tag = "notifications", request_body = SetTaskNotifications, security(("bearer" = ["operator"])),
    params(("id" = i64, Path, description = "The task's id")),
    responses((status = 200, body = TaskNotificationsResponse)))]
pub async fn set_task(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<SetTaskNotifications>,
) -> ApiResult<Json<TaskNotificationsResponse>> {
    let events = parse_events("events", input.events, &[RUN_EVENTS], DEFAULT_TASK_EVENTS)?;
    if let Some(index) =
        input.channel_ids.iter().enumerate().position(|(index, id)| input.channel_ids[..index].contains(id))
    {
        return Err(ApiError::invalid(&format!("channel_ids[{index}]"), "is listed twice"));
    }
    let saved = state
        .store
        .set_task_notifications(&principal.actor(), id, Some((input.channel_ids, events)))
        .await
        .map_err(missing("task"))?;
    Ok(Json(TaskNotificationsResponse::new(id, saved)))
}

/// Return a task to the default channels.
#[utoipa::path(delete, path = "/tasks/{id}/notifications", operation_id = "resetTaskNotifications", tag = "notifications", security(("bearer" = ["operator"])),
    params(("id" = i64, Path, description = "The task's id")),
    responses((status = 200, body = TaskNotificationsResponse)))]
pub async fn reset_task(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TaskNotificationsResponse>> {
    state.store.set_task_notifications(&principal.actor(), id, None).await.map_err(missing("task"))?;
    Ok(Json(TaskNotificationsResponse::new(id, None)))
}
