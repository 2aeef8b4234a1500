//! The audit log records every change, login and failed login, and its hash chain exposes tampering.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, on_both_backends, spawn_app};

on_both_backends!(changes_and_logins_are_recorded, tampering_is_detected, concurrent_writers_keep_one_chain);

async fn changes_and_logins_are_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    assert_eq!(app.login("admin@example.com", "wrong-password").await.status, StatusCode::UNAUTHORIZED);
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    app.put(&format!("/scripts/{script}"), &admin, json!({"content": "print(2)\n"})).await;
    let task =
        app.post("/tasks", &admin, json!({"name": "t", "script_id": script, "env": {"API_KEY": "hunter2"}})).await;
    let rejected = app.post("/scripts", &admin, json!({"name": "s", "content": ""})).await;
    assert_eq!(rejected.status, StatusCode::CONFLICT);

    let log = app.get("/audit?limit=100", &admin).await;
    let actions: Vec<&str> =
        log.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["task.create", "script.update", "script.create", "auth.login_failed", "auth.login", "user.create"]
    );
    let failed = &log.body["items"][3];
    assert_eq!(
        (failed["actor_type"].as_str(), failed["details"]["email"].as_str()),
        (Some("anonymous"), Some("admin@example.com"))
    );
    assert_eq!(failed["ip"], "127.0.0.1");
    let task_entry = &log.body["items"][0];
    assert_eq!(task_entry["resource_id"], task.body["id"].as_i64().unwrap().to_string());
    assert!(!task_entry.to_string().contains("hunter2"), "environment values stay out of the audit log");

    let filtered = app.get(&format!("/audit?resource_type=script&resource_id={script}"), &admin).await;
    assert_eq!(filtered.body["total"], 2);
    let by_user = app.get("/logs?user_id=1&action=script.create", &admin).await;
    assert_eq!(by_user.body["total"], 1, "the /logs alias filters the same way");
    let future = app.get("/audit?since=2999-01-01T00:00:00Z", &admin).await;
    assert_eq!(future.body["total"], 0);

    let verify = app.get("/audit/verify", &admin).await;
    assert_eq!(verify.body, json!({"ok": true, "checked": 6, "first_bad_id": null}));
}

async fn tampering_is_detected(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for name in ["a", "b", "c"] {
        app.create_script(&admin, name).await;
    }
    assert_eq!(app.get("/audit/verify", &admin).await.body["ok"], true);
    app.execute_sql("UPDATE audit_log SET details = '{\"name\": \"innocent\"}' WHERE id = 3").await;
    let verify = app.get("/audit/verify", &admin).await;
    assert_eq!(verify.body, json!({"ok": false, "checked": 3, "first_bad_id": 3}));

    app.execute_sql("DELETE FROM audit_log WHERE id = 3").await;
    let after_delete = app.get("/audit/verify", &admin).await;
    assert_eq!(
        (after_delete.body["ok"].as_bool(), after_delete.body["first_bad_id"].as_i64()),
        (Some(false), Some(4)),
        "a removed entry breaks the next link"
    );
}

async fn concurrent_writers_keep_one_chain(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let admin = app.admin_token().await;
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            let admin = admin.clone();
            tokio::spawn(async move { app.post("/agents", &admin, json!({"name": format!("agent-{i}")})).await.status })
        })
        .collect();
    for writer in writers {
        assert_eq!(writer.await.unwrap(), StatusCode::CREATED);
    }
    let verify = app.request(Method::GET, "/audit/verify", Some(&admin), None).await;
    assert_eq!(verify.body, json!({"ok": true, "checked": 18, "first_bad_id": null}));
}
