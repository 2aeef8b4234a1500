//! What a client gets wrong and what it hears back: 400, 401, 404, 409, 413, 422 (naming the field) and 429,
//! always as `{"detail": ...}`, never a 5xx.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app, spawn_app_with};

on_both_backends!(conflicts, validation_names_the_field, not_found, first_user_rules);

/// Asserts a 422 that names `field` and whose message contains `says`.
async fn expect_invalid(app: &TestApp, method: Method, path: &str, token: &str, body: Value, field: &str, says: &str) {
    let reply = app.request(method.clone(), path, Some(token), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{method} {path} {body}: {:?}", reply.body);
    assert_eq!(reply.body["field"], field, "{method} {path} {body}: {:?}", reply.body);
    assert!(reply.detail().contains(says), "{method} {path} {body}: '{}' should say '{says}'", reply.detail());
}

async fn conflicts(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let duplicate_user =
        app.post("/users", &admin, json!({"email": "ADMIN@example.com", "password": "password-123"})).await;
    assert_eq!(duplicate_user.status, StatusCode::CONFLICT);
    assert!(duplicate_user.detail().contains("already exists"));
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    assert_eq!(app.post("/scripts", &admin, json!({"name": "s", "content": ""})).await.status, StatusCode::CONFLICT);
    app.create_task(&admin, "t", script).await;
    assert_eq!(
        app.post("/tasks", &admin, json!({"name": "t", "script_id": script})).await.status,
        StatusCode::CONFLICT
    );
    app.post("/agents", &admin, json!({"name": "a"})).await;
    assert_eq!(app.post("/agents", &admin, json!({"name": "a"})).await.status, StatusCode::CONFLICT);
    app.post("/tokens", &admin, json!({"name": "k"})).await;
    assert_eq!(app.post("/tokens", &admin, json!({"name": "k"})).await.status, StatusCode::CONFLICT);
    let other = app.create_script(&admin, "s2").await["id"].as_i64().unwrap();
    let renamed = app.put(&format!("/scripts/{other}"), &admin, json!({"name": "s"})).await;
    assert_eq!(renamed.status, StatusCode::CONFLICT, "renaming onto a taken name");
    let in_use = app.delete(&format!("/scripts/{script}"), &admin).await;
    assert_eq!(in_use.status, StatusCode::CONFLICT);
    assert!(in_use.detail().contains('t'), "names the task: {}", in_use.detail());
    let last_admin = app.put("/users/1", &admin, json!({"role": "viewer"})).await;
    assert_eq!(last_admin.status, StatusCode::CONFLICT, "the last admin cannot be demoted");
    assert_eq!(app.delete("/users/1", &admin).await.status, StatusCode::CONFLICT);
    assert_eq!(app.get("/users/me", &admin).await.body["role"], "admin", "nothing was half-applied");
}

async fn validation_names_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let post = Method::POST;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("/users", json!({"email": "nope", "password": "password-1"}), "email", "e-mail"),
        ("/users", json!({"email": "a@b.co", "password": "short"}), "password", "at least 8"),
        ("/users", json!({"email": "a@b.co", "password": "password-1", "role": "root"}), "role", "unknown variant"),
        ("/users", json!({"email": "a@b.co"}), "body", "missing field `password`"),
        ("/users", json!({"email": 5, "password": "password-1"}), "email", "invalid type"),
        (
            "/users",
            json!({"email": "a@b.co", "password": "password-1", "admin": true}),
            "admin",
            "unknown field `admin`",
        ),
        ("/tokens", json!({"name": "ok", "expires_in_days": 0}), "expires_in_days", "between 1 and 3650"),
        ("/tokens", json!({"name": "bad/name"}), "name", "'/'"),
        ("/agents", json!({"name": "a", "max_concurrency": 0}), "max_concurrency", "between 1 and 1024"),
        ("/agents", json!({"name": "a", "labels": ["ok", ""]}), "labels[1]", "empty"),
        ("/scripts", json!({"name": "", "content": ""}), "name", "must not be empty"),
        ("/scripts", json!({"name": "x", "content": "def f(:\n"}), "content", "line 1"),
        ("/scripts", json!({"name": "x", "content": "x = 1\nreturn 2\n"}), "content", "line 2"),
        ("/scripts", json!({"name": "x", "content": "a\0b"}), "content", "null"),
        ("/scripts", json!({"name": "x", "content": "", "filename": "../evil.py"}), "filename", ".py"),
        ("/scripts", json!({"name": "x", "content": "#".repeat(1024 * 1024 + 1)}), "content", "the limit is"),
        ("/tasks", json!({"script_id": script}), "name", "required"),
        ("/tasks", json!({"name": "t"}), "script_id", "required"),
        ("/tasks", json!({"name": "t", "script_id": 999}), "script_id", "no script with id 999"),
        ("/tasks", json!({"name": "t", "script_id": script, "script_version": 7}), "script_version", "versions 1 to 1"),
        ("/tasks", json!({"name": "t", "script_id": script, "agent_id": 42}), "agent_id", "no agent"),
        ("/tasks", json!({"name": "t", "script_id": script, "timeout_seconds": 0}), "timeout_seconds", "between"),
        ("/tasks", json!({"name": "t", "script_id": script, "memory_mb": 1}), "memory_mb", "between 16"),
        ("/tasks", json!({"name": "t", "script_id": script, "retries": -1}), "retries", "between 0"),
        ("/tasks", json!({"name": "t", "script_id": script, "env": {"1BAD": "x"}}), "env.1BAD", "variable name"),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "env": {"PATH": "/evil"}}),
            "env.PATH",
            "set by the sandbox",
        ),
        ("/tasks", json!({"name": "t", "script_id": script, "args": ["a\0"]}), "args[0]", "NUL"),
        ("/tasks", json!({"name": "t", "script_id": script, "secrets": ["no-dash"]}), "secrets[0]", "variable name"),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "schedule": {"kind": "cron", "cron": "61 * * * *"}}),
            "schedule.cron",
            "not a valid cron",
        ),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "schedule": {"kind": "cron", "cron": "* * *"}}),
            "schedule.cron",
            "3 fields",
        ),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "schedule": {"kind": "cron", "cron": "0 * * * *", "timezone": "Mars/Olympus"}}),
            "schedule.timezone",
            "IANA",
        ),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "schedule": {"kind": "interval", "every_seconds": 0}}),
            "schedule.every_seconds",
            "between 1",
        ),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "schedule": {"kind": "hourly"}}),
            "schedule.kind",
            "unknown variant",
        ),
        ("/tasks", json!({"name": "t", "script_id": script, "schedule": {"kind": "once"}}), "schedule.at", "required"),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "scheduled_time": "2001-01-01T00:00:00Z"}),
            "schedule.at",
            "in the past",
        ),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "scheduled_time": "yesterday"}),
            "scheduled_time",
            "input contains invalid characters",
        ),
    ];
    for (path, body, field, says) in cases {
        expect_invalid(&app, post.clone(), path, &admin, body, field, says).await;
    }
    let task = app.create_task(&admin, "t", script).await["id"].as_i64().unwrap();
    expect_invalid(
        &app,
        Method::PUT,
        &format!("/tasks/{task}"),
        &admin,
        json!({"memory_mb": 0}),
        "memory_mb",
        "between",
    )
    .await;
    expect_invalid(
        &app,
        Method::PUT,
        &format!("/scripts/{script}"),
        &admin,
        json!({"content": "if\n"}),
        "content",
        "syntax",
    )
    .await;
    assert_eq!(app.get("/tasks", &admin).await.body["total"], 1, "no failed request left a record");
    assert_eq!(app.get(&format!("/scripts/{script}"), &admin).await.body["version"], 1);

    let bad_query = app.get("/scripts?limit=ten", &admin).await;
    assert_eq!((bad_query.status, bad_query.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));
    let malformed = app
        .client
        .post(app.url("/scripts"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert!(malformed.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("malformed JSON"));
    let not_json = app.client.post(app.url("/scripts")).bearer_auth(&admin).body("name=x").send().await.unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
}

async fn not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for path in [
        "/users/77",
        "/agents/77",
        "/scripts/77",
        "/scripts/77/versions",
        "/scripts/77/versions/1",
        "/tasks/77",
        "/scripts/abc",
        "/no/such/route",
    ] {
        let reply = app.get(path, &admin).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!reply.detail().is_empty(), "{path} explains itself");
    }
    assert_eq!(app.put("/tasks/77", &admin, json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete("/scripts/77", &admin).await.status, StatusCode::NOT_FOUND);
    let wrong_method = app.request(Method::PATCH, "/scripts", Some(&admin), None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!wrong_method.detail().is_empty());
}

async fn first_user_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app
        .request(
            Method::POST,
            "/users",
            None,
            Some(&json!({"email": "first@x.io", "password": "password-1", "role": "viewer"})),
        )
        .await;
    assert_eq!(
        (first.status, first.body["role"].as_str()),
        (StatusCode::CREATED, Some("admin")),
        "the first user is admin"
    );
    let second = app
        .request(Method::POST, "/users", None, Some(&json!({"email": "second@x.io", "password": "password-1"})))
        .await;
    assert_eq!(second.status, StatusCode::UNAUTHORIZED, "afterwards only admins create users");
    let wrong = app.login("first@x.io", "wrong-password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers.get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(app.login("nobody@x.io", "password-1").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.max_body_bytes = 64 * 1024).await;
    let admin = app.admin_token().await;
    let huge = json!({"name": "big", "content": "#".repeat(100 * 1024)});
    let reply = app.post("/scripts", &admin, huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.detail().contains("larger than"));
    assert_eq!(app.get("/scripts", &admin).await.body["total"], 0);
}

#[tokio::test]
async fn repeated_failed_logins_get_429_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.login_attempts_per_minute = 3).await;
    app.admin_token().await;
    for _ in 0..3 {
        assert_eq!(app.login("admin@example.com", "wrong-password").await.status, StatusCode::UNAUTHORIZED);
    }
    let limited = app.login("admin@example.com", "correct horse").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app =
        spawn_app_with(Backend::Sqlite, |config| config.cors_origins = vec!["https://ops.example.com".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/scripts"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://ops.example.com").await.unwrap();
    assert_eq!(allowed.headers().get("access-control-allow-origin").unwrap(), "https://ops.example.com");
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}
