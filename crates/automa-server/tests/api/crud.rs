//! Create, read, update and delete round trips for every resource, with 404s for what is gone.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, on_both_backends, spawn_app};

on_both_backends!(
    users_round_trip,
    tokens_round_trip,
    agents_round_trip,
    scripts_round_trip,
    tasks_round_trip,
    schedules_arm_and_disarm
);

async fn users_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let me = app.get("/users/me", &admin).await;
    assert_eq!((me.status, me.body["role"].as_str()), (StatusCode::OK, Some("admin")));

    let created = app
        .post("/users", &admin, json!({"email": "Ops@Example.com", "password": "password-1", "role": "operator"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["email"], "ops@example.com", "emails are stored lower-case");
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(app.get(&format!("/users/{id}"), &admin).await.body["role"], "operator");
    assert_eq!(app.get("/users", &admin).await.body["total"], 2);
    assert!(created.body.get("password_hash").is_none() && created.body.get("password").is_none());

    let updated = app.put(&format!("/users/{id}"), &admin, json!({"role": "viewer", "password": "new-password"})).await;
    assert_eq!((updated.status, updated.body["role"].as_str()), (StatusCode::OK, Some("viewer")));
    assert_eq!(app.login("OPS@example.com", "new-password").await.status, StatusCode::OK, "login is case-insensitive");
    assert_eq!(app.login("ops@example.com", "password-1").await.status, StatusCode::UNAUTHORIZED);

    let own = app.token_for("ops@example.com", "new-password").await;
    let changed =
        app.put("/users/me", &own, json!({"password": "another-password", "current_password": "new-password"})).await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    let own = app.token_for("ops@example.com", "another-password").await;
    assert_eq!(app.put("/users/me", &own, json!({"role": "admin"})).await.status, StatusCode::FORBIDDEN);

    let deactivated = app.put(&format!("/users/{id}"), &admin, json!({"active": false})).await;
    assert_eq!(deactivated.status, StatusCode::OK);
    assert_eq!(app.get("/users/me", &own).await.status, StatusCode::UNAUTHORIZED, "a deactivated user's session ends");

    assert_eq!(app.delete(&format!("/users/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("/users/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&format!("/users/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
}

async fn tokens_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let created = app.post("/tokens", &admin, json!({"name": "ci", "role": "viewer", "expires_in_days": 30})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let token = created.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("atm_") && token.starts_with(created.body["prefix"].as_str().unwrap()));

    let me = app.get("/users/me", &token).await;
    assert_eq!((me.status, me.body["role"].as_str()), (StatusCode::OK, Some("viewer")), "the token's role cap applies");
    assert_eq!(app.post("/scripts", &token, json!({"name": "x", "content": ""})).await.status, StatusCode::FORBIDDEN);

    let listed = app.get("/tokens", &admin).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert!(listed.body[0].get("token").is_none(), "the token is shown only once");
    assert!(listed.body[0]["last_used_at"].is_string(), "use is recorded");

    let id = created.body["id"].as_i64().unwrap();
    let revoked = app.delete(&format!("/tokens/{id}"), &admin).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    assert_eq!(app.get("/users/me", &token).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.delete("/tokens/9999", &admin).await.status, StatusCode::NOT_FOUND);
}

async fn agents_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let created = app
        .post("/agents", &admin, json!({"name": "build-1", "labels": ["linux", "gpu", "linux"], "max_concurrency": 4}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert!(created.body["token"].as_str().unwrap().starts_with("atma_"));
    assert_eq!(created.body["labels"], json!(["gpu", "linux"]), "labels are a set");
    assert_eq!(created.body["status"], "offline", "no heartbeat yet");
    let id = created.body["id"].as_i64().unwrap();

    let fetched = app.get(&format!("/agents/{id}"), &admin).await;
    assert_eq!(fetched.body["name"], "build-1");
    assert!(fetched.body.get("token").is_none());

    let updated = app.put(&format!("/agents/{id}"), &admin, json!({"disabled": true, "description": "spare"})).await;
    assert_eq!(
        (updated.body["status"].as_str(), updated.body["description"].as_str()),
        (Some("disabled"), Some("spare"))
    );
    assert_eq!(app.get("/agents", &admin).await.body["items"][0]["id"], id);

    assert_eq!(app.delete(&format!("/agents/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    let retired = app.get(&format!("/agents/{id}"), &admin).await;
    assert_eq!(retired.body["status"], "retired", "deleting retires: the record stays for its runs");
    assert_eq!(app.get("/agents", &admin).await.body["total"], 0);
    assert_eq!(app.get("/agents/999999", &admin).await.status, StatusCode::NOT_FOUND);
}

async fn scripts_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let created = app.create_script(&admin, "report").await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!((created["version"].as_i64(), created["filename"].as_str()), (Some(1), Some("main.py")));
    assert_eq!(created["sha256"].as_str().unwrap().len(), 64);

    let unchanged = app.put(&format!("/scripts/{id}"), &admin, json!({"content": "print('hello')\n"})).await;
    assert_eq!(unchanged.body["version"], 1, "identical content appends no version");
    let edited =
        app.put(&format!("/scripts/{id}"), &admin, json!({"content": "print('v2')\n", "description": "d"})).await;
    assert_eq!((edited.status, edited.body["version"].as_i64()), (StatusCode::OK, Some(2)));

    let versions = app.get(&format!("/scripts/{id}/versions"), &admin).await;
    assert_eq!(versions.body["total"], 2);
    assert_eq!(versions.body["items"][0]["version"], 2, "newest first");
    let first = app.get(&format!("/scripts/{id}/versions/1"), &admin).await;
    assert_eq!(first.body["content"], "print('hello')\n", "versions are immutable");
    assert_eq!(app.get(&format!("/scripts/{id}/versions/3"), &admin).await.status, StatusCode::NOT_FOUND);

    app.create_script(&admin, "other").await;
    let filtered = app.get("/scripts?name=REP", &admin).await;
    assert_eq!(filtered.body["total"], 1, "name filter is case-insensitive");
    let paged = app.get("/scripts?limit=1&offset=1", &admin).await;
    assert_eq!((paged.body["items"].as_array().unwrap().len(), paged.body["total"].as_i64()), (1, Some(2)));
    assert_eq!(app.get("/scripts?name=100%25", &admin).await.body["total"], 0, "LIKE wildcards are literal");

    assert_eq!(app.delete(&format!("/scripts/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("/scripts/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("/scripts/{id}/versions"), &admin).await.status, StatusCode::NOT_FOUND);
}

async fn tasks_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "etl").await;
    let script_id = script["id"].as_i64().unwrap();
    let agent = app.post("/agents", &admin, json!({"name": "a1"})).await.body;
    let secret = json!({"name": "DB_PASSWORD", "value": "v", "policy": {"agent_ids": [agent["id"]]}});
    assert_eq!(app.post("/secrets", &admin, secret).await.status, StatusCode::CREATED);
    let body = json!({
        "name": "nightly", "description": "d", "script_id": script_id, "script_version": 1,
        "agent_id": agent["id"], "labels": ["linux"], "args": ["--full", "x y"], "env": {"MODE": "full"},
        "secrets": ["DB_PASSWORD"], "timeout_seconds": 600, "memory_mb": 256, "cpu_seconds": 300,
        "max_output_bytes": 65536, "network": true, "warm": true, "retries": 2, "retry_backoff_seconds": 30,
        "schedule": {"kind": "cron", "cron": "0 3 * * *", "timezone": "Europe/Paris"}, "enabled": true
    });
    let created = app.post("/tasks", &admin, body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    for field in [
        "name",
        "script_id",
        "script_version",
        "agent_id",
        "labels",
        "args",
        "env",
        "secrets",
        "timeout_seconds",
        "memory_mb",
        "cpu_seconds",
        "max_output_bytes",
        "network",
        "warm",
        "retries",
        "retry_backoff_seconds",
        "enabled",
    ] {
        assert_eq!(created.body[field], body[field], "{field} round-trips");
    }
    assert_eq!(created.body["schedule"]["misfire_grace_seconds"], 60, "a generous misfire default");
    let next = created.body["next_fire_at"].as_str().expect("a scheduled task has its next fire");
    assert!(next.ends_with(":00Z") && (next.contains("T01:00") || next.contains("T02:00")), "03:00 Paris is {next}");
    let id = created.body["id"].as_i64().unwrap();

    let updated =
        app.put(&format!("/tasks/{id}"), &admin, json!({"schedule": null, "agent_id": null, "args": []})).await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert!(
        updated.body["schedule"].is_null()
            && updated.body["next_fire_at"].is_null()
            && updated.body["agent_id"].is_null()
    );
    assert_eq!(updated.body["env"], body["env"], "absent fields keep their value");
    assert_eq!(updated.body["warm"], true, "absent fields keep their value");
    let cold = app.put(&format!("/tasks/{id}"), &admin, json!({"warm": false})).await;
    assert_eq!((cold.status, &cold.body["warm"]), (StatusCode::OK, &json!(false)), "{:?}", cold.body);
    let wrong = app.put(&format!("/tasks/{id}"), &admin, json!({"warm": "yes"})).await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", wrong.body);
    let run = app.post("/execute", &admin, json!({"content": "print(1)\n", "warm": true})).await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{:?}", run.body);
    assert_eq!((&run.body["warm"], &run.body["warm_start"]), (&json!(true), &json!(false)));
    let stored = app.get(&format!("/runs/{}", run.body["id"]), &admin).await;
    assert_eq!((&stored.body["warm"], &stored.body["warm_start"]), (&json!(true), &json!(false)));

    let once = app.put(&format!("/tasks/{id}"), &admin, json!({"scheduled_time": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(
        (once.body["schedule"]["kind"].as_str(), once.body["next_fire_at"].as_str()),
        (Some("once"), Some("2999-01-01T00:00:00Z"))
    );

    assert_eq!(app.get(&format!("/tasks?script_id={script_id}"), &admin).await.body["total"], 1);
    assert_eq!(app.get("/tasks?scheduled=false", &admin).await.body["total"], 0);
    assert_eq!(
        app.delete(&format!("/scripts/{script_id}"), &admin).await.status,
        StatusCode::CONFLICT,
        "a script in use stays"
    );

    let removed_agent = app.delete(&format!("/agents/{}", agent["id"]), &admin).await;
    assert_eq!(removed_agent.status, StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&format!("/tasks/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("/tasks/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&format!("/scripts/{script_id}"), &admin).await.status, StatusCode::NO_CONTENT);
}

async fn schedules_arm_and_disarm(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let interval = json!({"name": "every", "script_id": script, "schedule": {"kind": "interval", "every_seconds": 90}});
    let created = app.post("/tasks", &admin, interval).await.body;
    let anchor =
        chrono::DateTime::parse_from_rfc3339(created["schedule"]["at"].as_str().expect("the anchor is stored"))
            .unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(created["next_fire_at"].as_str().unwrap()).unwrap();
    assert_eq!((next - anchor).num_seconds(), 90, "the first fire is one interval after the anchor");
    let id = created["id"].as_i64().unwrap();

    let paused = app.put(&format!("/tasks/{id}"), &admin, json!({"enabled": false})).await.body;
    assert!(paused["next_fire_at"].is_null(), "a disabled task does not fire");
    let resumed = app.put(&format!("/tasks/{id}"), &admin, json!({"enabled": true})).await.body;
    assert!(resumed["next_fire_at"].is_string(), "switching it back on arms it again");
    assert_eq!(resumed["schedule"]["at"], created["schedule"]["at"], "the rhythm keeps its anchor");

    let later = app.put(&format!("/tasks/{id}"), &admin, json!({"scheduled_time": "2999-01-01T00:00:00Z"})).await.body;
    let edited = app.put(&format!("/tasks/{id}"), &admin, json!({"description": "edited"})).await.body;
    assert_eq!(edited["next_fire_at"], later["next_fire_at"], "other edits keep the next fire");

    let moment_ago = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let once = app.put(&format!("/tasks/{id}"), &admin, json!({"scheduled_time": moment_ago})).await;
    assert_eq!(once.status, StatusCode::OK, "a one-off a moment ago is within its grace: {:?}", once.body);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let task = app.get(&format!("/tasks/{id}"), &admin).await.body;
        let runs = app.get(&format!("/runs?task_id={id}"), &admin).await.body;
        if task["next_fire_at"].is_null() && runs["total"] == 1 {
            assert_eq!(
                (runs["items"][0]["trigger"].as_str(), runs["items"][0]["status"].as_str()),
                (Some("schedule"), Some("queued"))
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the one-off never fired: {task:?} {runs:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = app.put(&format!("/tasks/{id}"), &admin, json!({"description": "edited again"})).await.body;
    assert!(after["next_fire_at"].is_null(), "editing a fired one-off does not arm it again");
}
