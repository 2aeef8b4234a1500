//! Notifications end to end against real sinks started here: a webhook receiver (an HTTP server) and an SMTP
//! sink speaking enough of RFC 5321 to take a message. Runs are driven by a remote agent over the agent
//! protocol, so failures and recoveries are real runs ending through the same path as any other.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus, Uri},
    routing::post,
};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

use automa_server::config::SmtpTls;

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app_with};

on_both_backends!(
    failure_and_recovery_reach_a_signed_webhook_and_an_smtp_sink,
    an_agent_gone_silent_is_reported_to_the_default_channel,
    channels_are_validated_and_their_secret_is_shown_once,
    a_skipped_fire_is_queued_with_the_scheduler_batch,
    a_viewer_never_sees_a_token_the_receiver_echoes,
    an_endless_error_body_is_read_only_in_part,
    a_failing_task_is_reported_once_per_window_with_a_count,
    urls_are_kept_as_parsed_and_unsigned_notices_are_refused,
);

const SECRET: &str = "a-webhook-signing-secret-for-tests";

/// One request the receiver took: its headers and exact body.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests still to answer with 500, for the retry path.
    failures_left: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start(failures: u32) -> (Receiver, String) {
        let receiver = Receiver { failures_left: Arc::new(Mutex::new(failures)), ..Receiver::default() };
        let app = axum::Router::new().route("/hook/{token}", post(receive)).with_state(receiver.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/path-token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits up to 30 s for a request whose JSON `event` is `event`.
    async fn wait_for(&self, event: &str) -> Received {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.all().into_iter().find(|r| r.json()["event"] == event) {
                return found;
            }
            assert!(tokio::time::Instant::now() < deadline, "no '{event}' notice reached the receiver");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    receiver.received.lock().unwrap().push(Received { headers, body });
    let mut failures = receiver.failures_left.lock().unwrap();
    if *failures > 0 {
        *failures -= 1;
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::OK
    }
}

/// A message the SMTP sink accepted.
#[derive(Clone, Debug)]
struct Mail {
    recipients: Vec<String>,
    data: String,
}

/// A plain SMTP server: greets, answers EHLO without extensions, takes MAIL, RCPT and DATA, and keeps each
/// message. Enough of RFC 5321 for a client that does not need STARTTLS or AUTH.
async fn smtp_sink() -> (Arc<Mutex<Vec<Mail>>>, u16) {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = mails.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                write.write_all(b"220 sink.test ESMTP\r\n").await.unwrap();
                let mut recipients = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let command = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
                        b"250 sink.test\r\n"
                    } else if command.starts_with("MAIL FROM:") {
                        recipients.clear();
                        b"250 2.1.0 OK\r\n"
                    } else if command.starts_with("RCPT TO:") {
                        recipients.push(line.trim_end()["RCPT TO:".len()..].trim().to_owned());
                        b"250 2.1.5 OK\r\n"
                    } else if command == "DATA" {
                        write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await.unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(&line);
                        }
                        store.lock().unwrap().push(Mail { recipients: recipients.clone(), data });
                        b"250 2.0.0 queued\r\n"
                    } else if command == "QUIT" {
                        let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                        return;
                    } else if command == "RSET" || command == "NOOP" {
                        b"250 OK\r\n"
                    } else {
                        b"502 5.5.2 not implemented\r\n"
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (mails, port)
}

async fn wait_for_mail(mails: &Arc<Mutex<Vec<Mail>>>, needle: &str) -> Mail {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(mail) = mails.lock().unwrap().iter().find(|mail| mail.data.contains(needle)).cloned() {
            return mail;
        }
        assert!(tokio::time::Instant::now() < deadline, "no mail containing '{needle}' reached the sink");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A remote agent enrolled and heartbeating; returns its token.
async fn agent(app: &TestApp, admin: &str, name: &str) -> String {
    let created = app.post("/agents", admin, json!({"name": name})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let token = created.body["token"].as_str().unwrap().to_owned();
    let heartbeat = json!({"initial": true, "hostname": name, "version": "test", "capabilities": {}, "running": []});
    let reply = app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&heartbeat)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    token
}

/// Runs the task once through the agent, ending with `exit_code`; returns the run's id.
async fn run_once(app: &TestApp, admin: &str, agent: &str, task: i64, exit_code: i64) -> i64 {
    let queued = app.post(&format!("/tasks/{task}/execute"), admin, json!({})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let claim = app.request(Method::POST, "/agent/claim", Some(agent), Some(&json!({"wait_seconds": 5}))).await;
    let run = claim.body["run_id"].as_i64().expect("the agent claims the run");
    assert_eq!(run, queued.body["id"].as_i64().unwrap());
    let outcome =
        json!({"exit_code": exit_code, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0});
    let finished = app.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(agent), Some(&outcome)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);
    run
}

/// Polls a run's deliveries until every one has ended (delivered or failed) and there are `count`.
async fn settled_deliveries(app: &TestApp, token: &str, run: i64, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get(&format!("/runs/{run}/notifications"), token).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let deliveries = reply.body.as_array().cloned().unwrap_or_default();
        if deliveries.len() == count && deliveries.iter().all(|d| d["status"] == "delivered" || d["status"] == "failed")
        {
            return deliveries;
        }
        assert!(tokio::time::Instant::now() < deadline, "run {run}'s deliveries did not settle: {deliveries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delivery(deliveries: &[Value], channel: i64) -> &Value {
    deliveries.iter().find(|d| d["channel_id"] == channel).expect("a delivery to the channel")
}

async fn failure_and_recovery_reach_a_signed_webhook_and_an_smtp_sink(backend: Backend) {
    let (receiver, url) = Receiver::start(1).await;
    let (mails, smtp_port) = smtp_sink().await;
    let app = spawn_app_with(backend, |config| {
        config.smtp_host = Some("127.0.0.1".into());
        config.smtp_port = Some(smtp_port);
        config.smtp_tls = SmtpTls::None;
        config.smtp_from = "Automa <automa@example.com>".into();
        config.notification_backoff_seconds = 1;
        config.public_url = Some("https://automa.example.com/".into());
    })
    .await;
    let admin = app.admin_token().await;
    let webhook = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "ops hook", "kind": "webhook", "url": url, "secret": SECRET}),
        )
        .await;
    assert_eq!(webhook.status, StatusCode::CREATED, "{:?}", webhook.body);
    let webhook = webhook.body["id"].as_i64().unwrap();
    let email = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "ops mail", "kind": "email", "recipients": ["ops@example.com"]}),
        )
        .await;
    assert_eq!(email.status, StatusCode::CREATED, "{:?}", email.body);
    let email = email.body["id"].as_i64().unwrap();

    let script = app.create_script(&admin, "report").await["id"].as_i64().unwrap();
    let task = app.create_task(&admin, "nightly report", script).await["id"].as_i64().unwrap();
    let chosen =
        app.put(&format!("/tasks/{task}/notifications"), &admin, json!({"channel_ids": [webhook, email]})).await;
    assert_eq!(chosen.status, StatusCode::OK, "{:?}", chosen.body);
    assert_eq!(chosen.body["uses_default"], false);
    assert_eq!(chosen.body["events"], json!(["failed", "timed_out", "lost", "recovered"]));
    let agent = agent(&app, &admin, "remote").await;

    // A failure: the webhook first answers 500, so its delivery takes a second attempt after the backoff.
    let failed = run_once(&app, &admin, &agent, task, 3).await;
    let deliveries = settled_deliveries(&app, &admin, failed, 2).await;
    let hooked = delivery(&deliveries, webhook);
    assert_eq!(
        (&hooked["event"], &hooked["status"], &hooked["attempts"], &hooked["response_code"]),
        (&json!("failed"), &json!("delivered"), &json!(2), &json!(200)),
        "{hooked:?}"
    );
    let mailed = delivery(&deliveries, email);
    assert_eq!(
        (&mailed["status"], &mailed["attempts"], &mailed["response_code"]),
        (&json!("delivered"), &json!(1), &json!(250))
    );
    let attempts: Vec<Received> = receiver.all().into_iter().filter(|r| r.json()["event"] == "failed").collect();
    assert_eq!(attempts.len(), 2, "one refused attempt, one accepted");
    let notice = &attempts[1];
    let signature = notice.headers.get("x-automa-signature").expect("signed").to_str().unwrap();
    assert_eq!(signature, expected_signature(&notice.body), "the signature covers the exact body");
    assert_ne!(expected_signature(b"{}"), signature);
    let body = notice.json();
    assert_eq!(body["run"]["id"], failed);
    assert_eq!(body["run"]["task_id"], task);
    assert_eq!(body["run"]["task_name"], "nightly report");
    assert_eq!(body["run"]["status"], "failed");
    assert_eq!(body["run"]["exit_code"], 3);
    assert_eq!(body["run"]["attempt"], 1);
    assert_eq!(body["url"], format!("https://automa.example.com/#/runs/{failed}"));
    assert_eq!(notice.headers.get("x-automa-delivery").unwrap().to_str().unwrap(), hooked["id"].to_string());
    let mail = wait_for_mail(&mails, "failed with exit code 3").await;
    assert_eq!(mail.recipients, ["<ops@example.com>"]);
    assert!(mail.data.contains("Subject: [Automa] Run"), "{}", mail.data);
    assert!(mail.data.contains(&format!("https://automa.example.com/#/runs/{failed}")), "{}", mail.data);

    // The next success is a recovery, naming the failure it recovers from.
    let recovered = run_once(&app, &admin, &agent, task, 0).await;
    let deliveries = settled_deliveries(&app, &admin, recovered, 2).await;
    assert!(deliveries.iter().all(|d| d["event"] == "recovered" && d["status"] == "delivered"), "{deliveries:?}");
    let notice = receiver.wait_for("recovered").await;
    assert_eq!(notice.headers["x-automa-signature"].to_str().unwrap(), expected_signature(&notice.body));
    let body = notice.json();
    assert_eq!((&body["run"]["id"], &body["run"]["status"]), (&json!(recovered), &json!("succeeded")));
    assert_eq!(body["recovered_from"]["run_id"], failed);
    wait_for_mail(&mails, "recovered").await;
    // A success after a success is no news.
    let quiet = run_once(&app, &admin, &agent, task, 0).await;
    assert!(app.get(&format!("/runs/{quiet}/notifications"), &admin).await.body.as_array().unwrap().is_empty());

    // "Send test" reports each channel's outcome.
    let tested = app.post(&format!("/notification-channels/{webhook}/test"), &admin, json!({})).await;
    assert_eq!(tested.status, StatusCode::OK, "{:?}", tested.body);
    assert_eq!((&tested.body["delivered"], &tested.body["response_code"]), (&json!(true), &json!(200)));
    let test = receiver.wait_for("test").await;
    assert_eq!(test.headers["x-automa-signature"].to_str().unwrap(), expected_signature(&test.body));
    let tested = app.post(&format!("/notification-channels/{email}/test"), &admin, json!({})).await;
    assert_eq!(tested.body["delivered"], true, "{:?}", tested.body);
    wait_for_mail(&mails, "Test notice").await;

    // The secret is in no answer and no audit entry.
    let listed = app.get("/notification-channels", &admin).await;
    let audit = app.get("/audit?limit=500", &admin).await;
    for text in [listed.body.to_string(), audit.body.to_string()] {
        assert!(!text.contains(SECRET), "the webhook secret leaked: {text}");
    }
    assert!(audit.body.to_string().contains("notification_channel.create"));
    // The audit keeps the URL's origin only: its path often carries a token.
    assert!(!audit.body.to_string().contains("path-token"));
}

async fn an_agent_gone_silent_is_reported_to_the_default_channel(backend: Backend) {
    let (receiver, url) = Receiver::start(0).await;
    let app = spawn_app_with(backend, |config| config.agent_offline_seconds = 1).await;
    let admin = app.admin_token().await;
    let channel = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "on call", "kind": "webhook", "url": url, "secret": SECRET, "default": true}),
        )
        .await;
    assert_eq!(channel.status, StatusCode::CREATED, "{:?}", channel.body);
    assert_eq!(channel.body["default"], true);
    let channel = channel.body["id"].as_i64().unwrap();
    agent(&app, &admin, "far-away").await;

    let notice = receiver.wait_for("agent_offline").await;
    assert_eq!(notice.headers["x-automa-signature"].to_str().unwrap(), expected_signature(&notice.body));
    let body = notice.json();
    assert_eq!(body["agent"]["name"], "far-away");
    assert!(body["run"].is_null());
    let deliveries = app.get(&format!("/notification-channels/{channel}/deliveries"), &admin).await;
    let offline: Vec<&Value> =
        deliveries.body["items"].as_array().unwrap().iter().filter(|d| d["event"] == "agent_offline").collect();
    assert_eq!(offline.len(), 1, "one notice per silence: {offline:?}");
}

async fn channels_are_validated_and_their_secret_is_shown_once(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    for (body, field) in [
        (json!({"name": "x", "kind": "pager"}), "kind"),
        (json!({"name": "x", "kind": "webhook"}), "url"),
        (json!({"name": "x", "kind": "webhook", "url": "ftp://example.com/"}), "url"),
        (json!({"name": "x", "kind": "webhook", "url": "https://example.com/", "secret": "short"}), "secret"),
        (json!({"name": "x", "kind": "webhook", "url": "https://example.com/", "events": ["nope"]}), "events[0]"),
        // Without AUTOMA_SMTP_HOST there is nothing to send e-mail through.
        (json!({"name": "x", "kind": "email", "recipients": ["a@example.com"]}), "kind"),
    ] {
        let reply = app.post("/notification-channels", &admin, body.clone()).await;
        assert_eq!(
            (reply.status, reply.body["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}"
        );
    }
    let created = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "hook", "kind": "webhook", "url": "https://hooks.example.com/T/B/token"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_i64().unwrap();
    let secret = created.body["secret"].as_str().expect("a generated secret, once").to_owned();
    assert_eq!(secret.len(), 64);
    let read = app.get(&format!("/notification-channels/{id}"), &admin).await;
    assert!(read.body.get("secret").is_none());
    assert_eq!(read.body["url"], "https://hooks.example.com/T/B/token");
    let seen_by_operator = app.get(&format!("/notification-channels/{id}"), &operator).await;
    assert_eq!(seen_by_operator.body["url"], "https://hooks.example.com", "operators see the origin only");
    assert_eq!(
        app.post("/notification-channels", &operator, json!({"name": "y", "kind": "webhook", "url": "https://e.com/"}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // A rename keeps the secret usable; a rotation answers the new one once.
    let renamed = app.put(&format!("/notification-channels/{id}"), &admin, json!({"name": "hook two"})).await;
    assert_eq!((renamed.status, renamed.body.get("secret")), (StatusCode::OK, None));
    let rotated = app.put(&format!("/notification-channels/{id}"), &admin, json!({"rotate_secret": true})).await;
    let new_secret = rotated.body["secret"].as_str().expect("the rotated secret").to_owned();
    assert_ne!(new_secret, secret);

    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let task = app.create_task(&admin, "t", script).await["id"].as_i64().unwrap();
    let path = format!("/tasks/{task}/notifications");
    assert_eq!(app.get(&path, &operator).await.body["uses_default"], true);
    let missing = app.put(&path, &operator, json!({"channel_ids": [id, 999_999]})).await;
    assert_eq!(
        (missing.status, missing.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("channel_ids[1]"))
    );
    let twice = app.put(&path, &operator, json!({"channel_ids": [id, id]})).await;
    assert_eq!(twice.status, StatusCode::UNPROCESSABLE_ENTITY);
    let system_event = app.put(&path, &operator, json!({"channel_ids": [id], "events": ["agent_offline"]})).await;
    assert_eq!(system_event.status, StatusCode::UNPROCESSABLE_ENTITY, "a task raises run events only");
    let set = app.put(&path, &operator, json!({"channel_ids": [id], "events": ["skipped"]})).await;
    assert_eq!((set.status, &set.body["channel_ids"]), (StatusCode::OK, &json!([id])));
    let reset = app.delete(&path, &operator).await;
    assert_eq!((reset.status, &reset.body["uses_default"]), (StatusCode::OK, &json!(true)));

    // Deleting a channel leaves a run's history readable; a task naming it simply sends nothing there.
    assert_eq!(app.delete(&format!("/notification-channels/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("/notification-channels/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
}

async fn a_skipped_fire_is_queued_with_the_scheduler_batch(backend: Backend) {
    let (receiver, url) = Receiver::start(0).await;
    let app = spawn_app_with(backend, |_| {}).await;
    let admin = app.admin_token().await;
    let channel = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "fires", "kind": "webhook", "url": url, "secret": SECRET, "default": true, "events": ["skipped"]}),
        )
        .await;
    assert_eq!(channel.status, StatusCode::CREATED, "{:?}", channel.body);
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    // No agent takes the first fire, so with one instance allowed the next one is skipped.
    let body = json!({"name": "every second", "script_id": script,
        "schedule": {"kind": "interval", "every_seconds": 1, "max_instances": 1}});
    let task = app.post("/tasks", &admin, body).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
    let task = task.body["id"].as_i64().unwrap();

    let notice = receiver.wait_for("skipped").await;
    let body = notice.json();
    assert_eq!((&body["run"]["task_id"], &body["run"]["status"]), (&json!(task), &json!("skipped")));
    let run = body["run"]["id"].as_i64().unwrap();
    let deliveries = settled_deliveries(&app, &admin, run, 1).await;
    assert_eq!((&deliveries[0]["event"], &deliveries[0]["status"]), (&json!("skipped"), &json!("delivered")));
    assert!(
        receiver.all().iter().all(|r| r.json()["event"] == "skipped"),
        "the default channel takes skipped fires only"
    );
}

/// A failed task on a channel of its own, answered by whatever `url` serves; returns the failed run's id.
async fn fail_once_to(app: &TestApp, admin: &str, url: &str) -> i64 {
    let channel = app
        .post(
            "/notification-channels",
            admin,
            json!({"name": "echo", "kind": "webhook", "url": url, "secret": SECRET, "default": true}),
        )
        .await;
    assert_eq!(channel.status, StatusCode::CREATED, "{:?}", channel.body);
    let script = app.create_script(admin, "s").await["id"].as_i64().unwrap();
    let task = app.create_task(admin, "flaky", script).await["id"].as_i64().unwrap();
    let agent = agent(app, admin, "remote").await;
    run_once(app, admin, &agent, task, 1).await
}

async fn a_viewer_never_sees_a_token_the_receiver_echoes(backend: Backend) {
    // Like many chat services, the receiver names the path it does not know in its 404 page.
    async fn not_found(uri: Uri) -> (AxumStatus, String) {
        (AxumStatus::NOT_FOUND, format!("no such hook: {} (token {})", uri, uri.path().rsplit('/').next().unwrap()))
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/services/T0/B1/tok-echoed-secret", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(not_found)).await.unwrap() });
    let app = spawn_app_with(backend, |config| config.notification_attempts = 1).await;
    let admin = app.admin_token().await;
    let run = fail_once_to(&app, &admin, &url).await;

    let seen = settled_deliveries(&app, &admin, run, 1).await;
    assert_eq!((&seen[0]["status"], &seen[0]["response_code"]), (&json!("failed"), &json!(404)));
    let error = seen[0]["last_error"].as_str().unwrap();
    assert!(error.starts_with("HTTP 404") && error.contains("[redacted]"), "admins see a redacted snippet: {error}");
    for role in ["viewer", "operator", "admin"] {
        let token = if role == "admin" { admin.clone() } else { app.user_token(&admin, role).await };
        let reply = app.get(&format!("/runs/{run}/notifications"), &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert!(!reply.body.to_string().contains("tok-echoed-secret"), "{role} sees the token: {:?}", reply.body);
        if role != "admin" {
            assert_eq!(reply.body[0]["last_error"], "the receiver answered with status 404", "{role}");
        }
    }
}

async fn an_endless_error_body_is_read_only_in_part(backend: Backend) {
    // A receiver answering 500 and then streaming its error page for ever; it reports how much it wrote once
    // the client hangs up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (written_tx, written_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let mut written = 0usize;
        let head =
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_ok() {
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            while stream.write_all(chunk.as_bytes()).is_ok() {
                written += 0x10000;
            }
        }
        written_tx.send(written).unwrap();
    });
    let app = spawn_app_with(backend, |config| {
        config.notification_attempts = 1;
        config.notification_timeout_seconds = 60;
    })
    .await;
    let admin = app.admin_token().await;
    let run = fail_once_to(&app, &admin, &url).await;

    let seen = settled_deliveries(&app, &admin, run, 1).await;
    assert_eq!((&seen[0]["status"], &seen[0]["response_code"]), (&json!("failed"), &json!(500)));
    let written = tokio::task::spawn_blocking(move || written_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the client hung up");
    // What the sockets' buffers take, not the stream: without the bound this is gigabytes.
    assert!(written < 64 << 20, "the receiver wrote {written} bytes before the client hung up");
}

async fn a_failing_task_is_reported_once_per_window_with_a_count(backend: Backend) {
    let (receiver, url) = Receiver::start(0).await;
    let app = spawn_app_with(backend, |config| config.notification_concurrency = 1).await;
    let admin = app.admin_token().await;
    let channel = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "on call", "kind": "webhook", "url": url, "secret": SECRET, "default": true}),
        )
        .await;
    let channel = channel.body["id"].as_i64().unwrap();
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let task = app.create_task(&admin, "hammered", script).await["id"].as_i64().unwrap();
    let agent = agent(&app, &admin, "remote").await;
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(run_once(&app, &admin, &agent, task, 1).await);
    }

    let listed = app.get(&format!("/notification-channels/{channel}/deliveries"), &admin).await;
    let deliveries = listed.body["items"].as_array().unwrap().clone();
    assert!((1..=2).contains(&deliveries.len()), "20 failures, one notice and one summary at most: {deliveries:?}");
    let represented: i64 = deliveries.iter().map(|d| 1 + d["details"]["suppressed"].as_i64().unwrap_or(0)).sum();
    assert_eq!(represented, 20, "every failure is counted: {deliveries:?}");
    assert_eq!(deliveries.last().unwrap()["run_id"], runs[0], "the first failure is reported");

    // The recovery still goes out, after the held-back summary.
    let recovered = run_once(&app, &admin, &agent, task, 0).await;
    receiver.wait_for("recovered").await;
    let events: Vec<Value> = receiver.all().iter().map(Received::json).collect();
    let failures: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert!(failures.len() <= 2, "{failures:?}");
    let counted: i64 = failures.iter().map(|e| 1 + e["suppressed"].as_i64().unwrap_or(0)).sum();
    assert_eq!(counted, 20, "the notices count every failure: {failures:?}");
    assert_eq!(events.last().unwrap()["run"]["id"], recovered, "the recovery is the last word");
    if let Some(summary) = failures.iter().find(|e| e["suppressed"].is_i64()) {
        assert_eq!(summary["last_run_id"], runs[19]);
        assert!(summary["summary"].as_str().unwrap().contains("more since"), "{summary:?}");
    }
}

async fn urls_are_kept_as_parsed_and_unsigned_notices_are_refused(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    // Backslashes are slashes to a URL parser: the token is in the path, not the host.
    let created = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "odd", "kind": "webhook", "url": "https://h\\services\\T\\B\\tok-in-path"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["url"], "https://h/services/T/B/tok-in-path");
    let id = created.body["id"].as_i64().unwrap();
    let shown = app.get(&format!("/notification-channels/{id}"), &operator).await;
    assert_eq!(shown.body["url"], "https://h", "{:?}", shown.body);
    let audit = app.get("/audit?limit=500", &admin).await;
    assert!(!audit.body.to_string().contains("tok-in-path"), "{:?}", audit.body);

    // A channel whose secret is gone sends nothing rather than an unsigned-looking signed notice.
    let (receiver, url) = Receiver::start(0).await;
    let hook = app
        .post(
            "/notification-channels",
            &admin,
            json!({"name": "hook", "kind": "webhook", "url": url, "secret": SECRET}),
        )
        .await;
    let hook = hook.body["id"].as_i64().unwrap();
    app.execute_sql(&format!(
        "UPDATE notification_channels SET secret_ciphertext = NULL, secret_nonce = NULL WHERE id = {hook}"
    ))
    .await;
    let tested = app.post(&format!("/notification-channels/{hook}/test"), &admin, json!({})).await;
    assert_eq!(tested.status, StatusCode::OK, "{:?}", tested.body);
    assert_eq!(tested.body["delivered"], false);
    assert!(tested.body["error"].as_str().unwrap().contains("no signing secret"), "{:?}", tested.body);
    assert!(receiver.all().is_empty());
}
