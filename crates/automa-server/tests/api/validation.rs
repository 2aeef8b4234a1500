//! Requests that mean nothing are refused with a 422 naming the field (finding 12): ad-hoc code is
//! syntax-checked as scripts are, and every reference, name and limit is checked before anything is queued.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, on_both_backends, spawn_app};

on_both_backends!(meaningless_runs_and_tasks_are_refused);

async fn meaningless_runs_and_tasks_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let secret = app.post("/secrets", &admin, json!({"name": "S", "value": "v"})).await;
    assert_eq!(secret.status, StatusCode::CREATED);
    let disabled = app.post("/agents", &admin, json!({"name": "off"})).await.body["id"].as_i64().unwrap();
    app.put(&format!("/agents/{disabled}"), &admin, json!({"disabled": true})).await;
    let huge = 1_000_000_000_000_i64;
    let cases = [
        ("/execute", json!({"content": "def (:"}), "content", "syntax error at line 1"),
        ("/execute", json!({"script_id": script, "content": "print(1)"}), "content", "not both"),
        ("/execute", json!({}), "script_id", "either script_id or content"),
        ("/execute", json!({"script_id": 999}), "script_id", "no script with id 999"),
        ("/execute", json!({"content": "", "filename": ""}), "filename", "plain file name"),
        ("/execute", json!({"content": "", "filename": "../evil.py"}), "filename", "plain file name"),
        ("/execute", json!({"content": "", "filename": "dir/main.py"}), "filename", "plain file name"),
        ("/execute", json!({"script_id": script, "filename": "other.py"}), "filename", "only for inline content"),
        ("/execute", json!({"script_id": script, "timeout_seconds": -1}), "timeout_seconds", "between 1"),
        ("/execute", json!({"script_id": script, "timeout_seconds": huge}), "timeout_seconds", "between 1"),
        ("/execute", json!({"script_id": script, "memory_mb": -5}), "memory_mb", "between 16"),
        ("/execute", json!({"script_id": script, "args": ["a\0b"]}), "args[0]", "NUL"),
        ("/execute", json!({"script_id": script, "env": {"TMPDIR": "/x"}}), "env.TMPDIR", "set by the sandbox"),
        ("/execute", json!({"script_id": script, "secrets": ["NOPE"]}), "secrets[0]", "no secret named 'NOPE'"),
        ("/execute", json!({"script_id": script, "secrets": ["S", "S"]}), "secrets[1]", "listed twice"),
        (
            "/execute",
            json!({"script_id": script, "secrets": ["S"], "env": {"S": "x"}}),
            "secrets[0]",
            "also set in env",
        ),
        ("/execute", json!({"script_id": script, "agent_id": 999}), "agent_id", "no agent with id 999"),
        ("/secrets", json!({"name": "PATH", "value": "v"}), "name", "set by the sandbox"),
        ("/tasks", json!({"name": "t", "script_id": script, "labels": [""]}), "labels[0]", ""),
        ("/tasks", json!({"name": "t", "script_id": script, "retries": 101}), "retries", "between 0 and 100"),
        ("/tasks", json!({"name": "t", "script_id": script, "agent_id": disabled}), "agent_id", "disabled"),
        ("/tasks", json!({"name": "t", "script_id": script, "secrets": ["NOPE"]}), "secrets[0]", "no secret named"),
        ("/tasks", json!({"name": "t", "script_id": script, "env": {"TMPDIR": "/x"}}), "env.TMPDIR", "sandbox"),
        (
            "/tasks",
            json!({"name": "t", "script_id": script, "schedule": null, "scheduled_time": "2099-01-01T00:00:00Z"}),
            "scheduled_time",
            "not both",
        ),
    ];
    for (path, body, field, says) in cases {
        let reply = app.request(Method::POST, path, Some(&admin), Some(&body)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "POST {path} {body}: {:?}", reply.body);
        assert_eq!(reply.body["field"], field, "POST {path} {body}: {:?}", reply.body);
        assert!(reply.detail().contains(says), "POST {path} {body}: '{}' should say '{says}'", reply.detail());
    }
    assert_eq!(app.get("/runs", &admin).await.body["total"], 0, "nothing was queued");
    assert_eq!(app.get("/tasks", &admin).await.body["total"], 0, "nothing was saved");

    let task = app.create_task(&admin, "t", script).await["id"].as_i64().unwrap();
    let pinned = app.put(&format!("/tasks/{task}"), &admin, json!({"agent_id": disabled})).await;
    assert_eq!((pinned.status, pinned.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("agent_id")));
    let valid = app.post("/execute", &admin, json!({"content": "print('ok')\n", "filename": "job.py"})).await;
    assert_eq!(valid.status, StatusCode::ACCEPTED, "{:?}", valid.body);
}
