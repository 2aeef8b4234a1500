//! Sessions and credentials under attack: capped tokens cannot escalate, password guessing is limited before
//! any password is checked, login input is bounded before use, and sessions end on password change, logout
//! and revocation — event streams with them.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app, spawn_app_with};

on_both_backends!(
    capped_tokens_cannot_escalate,
    a_cap_at_the_owners_role_still_holds_after_promotion,
    credential_changes_need_a_session_and_the_current_password,
    parallel_guesses_are_counted_before_any_check,
    oversized_logins_are_refused_before_use,
    repeated_failures_are_one_entry_with_a_count,
    sessions_end_on_password_change_logout_and_revocation,
    event_streams_end_when_their_session_is_revoked,
    event_streams_end_when_their_session_expires,
    forwarded_addresses_count_only_from_trusted_proxies,
);

async fn created_token(app: &TestApp, token: &str, body: Value) -> String {
    let created = app.post("/tokens", token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    created.body["token"].as_str().unwrap().to_owned()
}

async fn capped_tokens_cannot_escalate(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let viewer_cap = created_token(&app, &admin, json!({"name": "ro", "role": "viewer"})).await;

    let uncapped = app.post("/tokens", &viewer_cap, json!({"name": "escalated"})).await;
    assert_eq!(uncapped.status, StatusCode::FORBIDDEN, "{:?}", uncapped.body);
    assert!(uncapped.detail().contains("capped at viewer"), "{}", uncapped.detail());
    let higher = app.post("/tokens", &viewer_cap, json!({"name": "escalated", "role": "admin"})).await;
    assert_eq!(higher.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", higher.body);
    let same = created_token(&app, &viewer_cap, json!({"name": "ro-2", "role": "viewer"})).await;
    assert_eq!(app.get("/users/me", &same).await.body["role"], "viewer");
    assert_eq!(app.get("/users", &same).await.status, StatusCode::FORBIDDEN);

    // A token that expires cannot mint one that outlives it.
    let short_lived = created_token(&app, &admin, json!({"name": "ci", "expires_in_days": 1})).await;
    let child = app.post("/tokens", &short_lived, json!({"name": "ci-child"})).await;
    assert_eq!(child.status, StatusCode::CREATED, "{:?}", child.body);
    let listed = app.get("/tokens", &admin).await.body;
    let expiry_of = |name: &str| {
        listed.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["expires_at"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(expiry_of("ci-child"), expiry_of("ci"), "the child's expiry is brought forward to its parent's");

    // Neither a capped nor an uncapped token changes its owner's password.
    for token in [&viewer_cap, &short_lived] {
        let changed = app.put("/users/me", token, json!({"password": "taken-over", "current_password": "x"})).await;
        assert_eq!(changed.status, StatusCode::FORBIDDEN, "{:?}", changed.body);
        assert!(changed.detail().contains("not an API token"), "{}", changed.detail());
    }
    assert_eq!(app.login("admin@example.com", "correct horse").await.status, StatusCode::OK);
}

/// A cap equal to its owner's role today is still a cap: once the owner is promoted, neither the token nor
/// anything it created acts above it.
async fn a_cap_at_the_owners_role_still_holds_after_promotion(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    let operator_id = app.get("/users/me", &operator).await.body["id"].as_i64().unwrap();
    let operator_cap = created_token(&app, &operator, json!({"name": "ops", "role": "operator"})).await;

    let uncapped = app.post("/tokens", &operator_cap, json!({"name": "follows-the-owner"})).await;
    assert_eq!(uncapped.status, StatusCode::FORBIDDEN, "{:?}", uncapped.body);
    assert!(uncapped.detail().contains("capped at operator"), "{}", uncapped.detail());
    let child = created_token(&app, &operator_cap, json!({"name": "ops-child", "role": "operator"})).await;

    let promoted = app.put(&format!("/users/{operator_id}"), &admin, json!({"role": "admin"})).await;
    assert_eq!(promoted.status, StatusCode::OK, "{:?}", promoted.body);
    for token in [&operator_cap, &child] {
        assert_eq!(app.get("/users/me", token).await.body["role"], "operator");
        assert_eq!(app.get("/users", token).await.status, StatusCode::FORBIDDEN);
        let minted = app.post("/tokens", token, json!({"name": "after-promotion"})).await;
        assert_eq!(minted.status, StatusCode::FORBIDDEN, "{:?}", minted.body);
    }
}

async fn credential_changes_need_a_session_and_the_current_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let admin_id = app.get("/users/me", &admin).await.body["id"].as_i64().unwrap();
    let created = app.post("/users", &admin, json!({"email": "ops@example.com", "password": "password-1"})).await;
    let ops_id = created.body["id"].as_i64().unwrap();
    let ops = app.token_for("ops@example.com", "password-1").await;

    let missing = app.put("/users/me", &ops, json!({"password": "password-2"})).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", missing.body);
    assert_eq!(missing.body["field"], "current_password");
    let wrong = app.put("/users/me", &ops, json!({"email": "me@evil.example", "current_password": "password-0"})).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{:?}", wrong.body);
    let right =
        app.put("/users/me", &ops, json!({"email": "ops2@example.com", "current_password": "password-1"})).await;
    assert_eq!(right.status, StatusCode::OK, "{:?}", right.body);
    assert_eq!(right.body["email"], "ops2@example.com");

    // An admin's own account through /users/{id} follows the same rules as /users/me.
    let own = app.put(&format!("/users/{admin_id}"), &admin, json!({"password": "new-horse-1"})).await;
    assert_eq!(own.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", own.body);
    // Other users' credentials are an admin's to reset, from a session only.
    let admin_token = created_token(&app, &admin, json!({"name": "automation"})).await;
    let by_token = app.put(&format!("/users/{ops_id}"), &admin_token, json!({"password": "reset-by-token"})).await;
    assert_eq!(by_token.status, StatusCode::FORBIDDEN, "{:?}", by_token.body);
    let role_by_token = app.put(&format!("/users/{ops_id}"), &admin_token, json!({"role": "operator"})).await;
    assert_eq!(role_by_token.status, StatusCode::OK, "roles stay manageable by automation");
    let reset = app.put(&format!("/users/{ops_id}"), &admin, json!({"password": "reset-by-admin"})).await;
    assert_eq!(reset.status, StatusCode::OK, "{:?}", reset.body);
    assert_eq!(app.login("ops2@example.com", "reset-by-admin").await.status, StatusCode::OK);

    let too_long = app.put("/users/me", &admin, json!({"password": "p".repeat(1025), "current_password": "x"})).await;
    assert_eq!(
        (too_long.status, too_long.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password"))
    );
}

/// A wrong login with its own reqwest client, so parallel requests really are parallel connections.
async fn wrong_login(app: &TestApp, email: &str) -> StatusCode {
    app.login(email, "not-the-password").await.status
}

fn tally(statuses: &[StatusCode]) -> (usize, usize) {
    let count = |wanted| statuses.iter().filter(|s| **s == wanted).count();
    let (unauthorized, limited) = (count(StatusCode::UNAUTHORIZED), count(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(unauthorized + limited, statuses.len(), "only 401 and 429: {statuses:?}");
    (unauthorized, limited)
}

async fn parallel_guesses_are_counted_before_any_check(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.login_attempts_per_minute = 5;
        config.login_attempts_per_account_per_minute = 1000;
    })
    .await;
    app.admin_token().await;
    let statuses = join_all((0..40).map(|_| wrong_login(&app, "admin@example.com"))).await;
    let (checked, limited) = tally(&statuses);
    assert!((1..=5).contains(&checked), "40 parallel guesses against a limit of 5: {checked} were checked");
    assert_eq!(checked + limited, 40);

    let app = spawn_app_with(backend, |config| {
        config.login_attempts_per_minute = 1000;
        config.login_attempts_per_account_per_minute = 5;
    })
    .await;
    app.admin_token().await;
    let statuses = join_all((0..40).map(|_| wrong_login(&app, "admin@example.com"))).await;
    let (checked, _) = tally(&statuses);
    assert!((1..=5).contains(&checked), "per account: {checked} of 40 guesses were checked");
    assert_eq!(wrong_login(&app, "someone-else@example.com").await, StatusCode::UNAUTHORIZED, "other accounts");
}

/// The test process's resident memory now and at its peak, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 300 parallel logins cost bounded memory: argon2 holds about 19 MiB per verification, so 300 at once would
/// take gigabytes (2.8 GB was measured on a release build); bounded, the peak grows by a few verifications'
/// worth. The server runs in this test's process (nextest gives each test its own), so its peak is ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_has_bounded_memory() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.login_attempts_per_minute = 100_000;
        config.login_attempts_per_account_per_minute = 100_000;
        config.password_hashing_concurrency = Some(2);
    })
    .await;
    app.admin_token().await;
    let (before, _) = memory_kib();
    let statuses = join_all((0..300).map(|i| {
        let app = &app;
        async move { app.login(&format!("flood-{i}@example.com"), "guess").await.status }
    }))
    .await;
    let (_, peak) = memory_kib();
    let (checked, refused) = tally(&statuses);
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("300 parallel logins: {checked} checked, {refused} refused, peak memory grew by {growth_mib} MiB");
    // Two hashing threads at 19 MiB each, plus 300 connections: about 50 MiB. Unbounded, 300 verifications
    // would take 5.7 GB; even ten at once would pass this bound.
    assert!(growth_mib < 160, "300 parallel logins grew the peak memory by {growth_mib} MiB");
    assert!(checked >= 2, "some logins were checked: {statuses:?}");
    let busy = statuses.contains(&StatusCode::TOO_MANY_REQUESTS);
    assert!(busy, "a flood beyond the hashing bound is refused, not queued without end");
}

async fn audit_entries(app: &TestApp, token: &str, action: &str) -> Vec<Value> {
    let log = app.get(&format!("/audit?action={action}&limit=500"), token).await;
    assert_eq!(log.status, StatusCode::OK, "{:?}", log.body);
    log.body["items"].as_array().unwrap().clone()
}

fn database_bytes(app: &TestApp) -> u64 {
    let path = app.database_url.trim_start_matches("sqlite://");
    ["", "-wal"].iter().filter_map(|suffix| std::fs::metadata(format!("{path}{suffix}")).ok()).map(|m| m.len()).sum()
}

async fn oversized_logins_are_refused_before_use(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let size_before = database_bytes(&app);
    // Each on its own connection: a refused body may leave its connection closed behind it.
    let login_body = |content_type: &'static str, body: String| {
        reqwest::Client::new().post(app.url("/token")).header("content-type", content_type).body(body).send()
    };
    let form = |username_bytes: usize| {
        login_body("application/x-www-form-urlencoded", format!("username={}&password=x", "a".repeat(username_bytes)))
    };
    assert_eq!(form(64 * 1024).await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
    let as_json = login_body("application/json", json!({"username": "a".repeat(5000), "password": "x"}).to_string());
    assert_eq!(as_json.await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE, "the JSON form has the same limit");
    // Past 1 MiB the server stops reading, so the client may still be writing 5 MiB when the connection
    // closes: a closed connection is a refusal too. What matters is that nothing was stored.
    if let Ok(huge) = form(5 * 1024 * 1024).await {
        assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let long_name = app.login(&format!("{}@example.com", "a".repeat(300)), "x").await;
    assert_eq!(
        (long_name.status, long_name.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("username"))
    );
    let long_password = app.login("admin@example.com", &"p".repeat(2000)).await;
    assert_eq!(
        (long_password.status, long_password.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password"))
    );
    assert!(audit_entries(&app, &admin, "auth.login_failed").await.is_empty(), "nothing was recorded");
    if backend == Backend::Sqlite {
        let growth = database_bytes(&app).saturating_sub(size_before);
        assert!(growth < 256 * 1024, "the database grew by {growth} bytes");
    }
}

async fn repeated_failures_are_one_entry_with_a_count(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for _ in 0..7 {
        assert_eq!(wrong_login(&app, "admin@example.com").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(wrong_login(&app, "other@example.com").await, StatusCode::UNAUTHORIZED);
    let first = audit_entries(&app, &admin, "auth.login_failed").await;
    assert_eq!(first.len(), 2, "the first failure per account is written at once: {first:?}");
    // The window's summary is written when it closes; a graceful shutdown closes every window.
    let app = app.restart(|_| async {}).await;
    let entries = audit_entries(&app, &admin, "auth.login_failed").await;
    let summaries: Vec<&Value> = entries.iter().filter(|e| e["details"]["summary"] == true).collect();
    assert_eq!(summaries.len(), 1, "{entries:?}");
    let summary = &summaries[0]["details"];
    assert_eq!((summary["email"].as_str(), summary["count"].as_i64()), (Some("admin@example.com"), Some(7)));
    let first_id = first.iter().find(|e| e["details"]["email"] == "admin@example.com").unwrap()["id"].clone();
    assert_eq!(summary["first_entry_id"], first_id, "the summary names the entry it continues");
    assert_eq!(entries.len(), 3, "a lone failure needs no summary: {entries:?}");
    assert_eq!(app.get("/audit/verify", &admin).await.body["ok"], true, "the chain is intact");
}

async fn sessions_end_on_password_change_logout_and_revocation(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let created = app.post("/users", &admin, json!({"email": "u@example.com", "password": "password-1"})).await;
    let user_id = created.body["id"].as_i64().unwrap();
    let alive = |token: String| {
        let app = &app;
        async move { app.get("/users/me", &token).await.status == StatusCode::OK }
    };

    let first = app.token_for("u@example.com", "password-1").await;
    let second = app.token_for("u@example.com", "password-1").await;
    let changed =
        app.put("/users/me", &first, json!({"password": "password-2", "current_password": "password-1"})).await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    assert!(!alive(first).await && !alive(second).await, "a password change ends the sessions of the old one");

    let session = app.token_for("u@example.com", "password-2").await;
    let token = created_token(&app, &session, json!({"name": "t"})).await;
    assert_eq!(app.post("/logout", &token, json!({})).await.status, StatusCode::FORBIDDEN, "tokens do not log out");
    assert_eq!(app.post("/logout", &session, json!({})).await.status, StatusCode::NO_CONTENT);
    assert!(!alive(session).await, "logout ends the session");
    assert!(alive(token.clone()).await, "API tokens are not sessions");

    let session = app.token_for("u@example.com", "password-2").await;
    let by_user = app.post(&format!("/users/{user_id}/sessions/revoke"), &session, json!({})).await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN, "only an admin signs others out");
    let revoked = app.post(&format!("/users/{user_id}/sessions/revoke"), &admin, json!({})).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{:?}", revoked.body);
    assert!(!alive(session).await, "signed out everywhere");
    assert!(alive(admin.clone()).await, "the admin's own session is untouched");
    assert_eq!(app.post("/users/999999/sessions/revoke", &admin, json!({})).await.status, StatusCode::NOT_FOUND);
    assert!(alive(app.token_for("u@example.com", "password-2").await).await, "signing in again works");

    let session = app.token_for("u@example.com", "password-2").await;
    for active in [false, true] {
        let toggled = app.put(&format!("/users/{user_id}"), &admin, json!({"active": active})).await;
        assert_eq!(toggled.status, StatusCode::OK, "{:?}", toggled.body);
    }
    assert!(!alive(session).await, "reactivating a user does not revive their old sessions");

    let updates = audit_entries(&app, &admin, "user.update").await;
    let revoking = |e: &&Value| e["details"]["sessions_revoked"] == true;
    assert_eq!(updates.iter().filter(revoking).count(), 2, "the password change and the deactivation: {updates:?}");
    assert_eq!(audit_entries(&app, &admin, "auth.logout").await.len(), 1);
    let revocations = audit_entries(&app, &admin, "user.sessions_revoke").await;
    assert_eq!(revocations[0]["resource_id"], user_id.to_string());
}

/// Opens an event stream and waits (bounded) for the server to end it; true when it did.
async fn stream_ends(app: &TestApp, path: &str, token: &str, end_it: impl Future<Output = ()>) -> bool {
    let mut response = app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    end_it.await;
    let drained = async { while let Ok(Some(_)) = response.chunk().await {} };
    tokio::time::timeout(Duration::from_secs(60), drained).await.is_ok()
}

async fn event_streams_end_when_their_session_is_revoked(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let task = app.create_task(&admin, "t", script).await["id"].as_i64().unwrap();
    // Without an agent the run stays queued, so its log stream would follow it forever.
    let run = app.post(&format!("/tasks/{task}/execute"), &admin, json!({})).await;
    let run = run.body["id"].as_i64().unwrap();

    let session = app.user_token(&admin, "viewer").await;
    let logout = async {
        assert_eq!(app.post("/logout", &session, json!({})).await.status, StatusCode::NO_CONTENT);
    };
    assert!(stream_ends(&app, "/events", &session, logout).await, "/events ended at logout");

    let session = app.user_token(&admin, "viewer").await;
    let user_id = app.get("/users/me", &session).await.body["id"].as_i64().unwrap();
    let revoke = async {
        let path = format!("/users/{user_id}/sessions/revoke");
        assert_eq!(app.post(&path, &admin, json!({})).await.status, StatusCode::NO_CONTENT);
    };
    let logs = format!("/runs/{run}/logs/stream");
    assert!(stream_ends(&app, &logs, &session, revoke).await, "the log stream ended at revocation");
}

async fn event_streams_end_when_their_session_expires(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.token_ttl_seconds = 2).await;
    let admin = app.admin_token().await;
    assert!(stream_ends(&app, "/events", &admin, async {}).await, "/events ended when the session expired");
}

async fn login_address(app: &TestApp, forwarded_for: &str) -> Value {
    let response = app
        .client
        .post(app.url("/token"))
        .header("x-forwarded-for", forwarded_for)
        .form(&[("username", "admin@example.com"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let token = response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    audit_entries(app, &token, "auth.login").await[0]["ip"].clone()
}

async fn forwarded_addresses_count_only_from_trusted_proxies(backend: Backend) {
    let app = spawn_app(backend).await;
    app.admin_token().await;
    assert_eq!(login_address(&app, "198.51.100.9").await, "127.0.0.1", "by default the header is ignored");

    let app = spawn_app_with(backend, |config| config.trusted_proxies = vec!["127.0.0.1".into()]).await;
    app.admin_token().await;
    assert_eq!(login_address(&app, "198.51.100.9").await, "198.51.100.9");
    assert_eq!(
        login_address(&app, "203.0.113.1, 198.51.100.9, 127.0.0.1").await,
        "198.51.100.9",
        "the right-most hop that is not a trusted proxy; what the client wrote further left is not believed"
    );
}
