//! `GET /events`: the changes the dashboard follows live, each sent as its own event type.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app};

on_both_backends!(every_task_change_is_announced_with_the_tasks_id, a_fire_announces_its_run_and_the_task_it_advanced);

/// A Server-Sent Events stream read one event at a time.
struct EventStream {
    response: reqwest::Response,
    received: Vec<u8>,
}

impl EventStream {
    /// Opens `/events`; the server subscribes before it answers, so every change made after this is seen.
    async fn open(app: &TestApp, token: &str) -> EventStream {
        let response = app.client.get(app.url("/events")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        EventStream { response, received: Vec::new() }
    }

    /// The next event's type and data, failing the test past 30 s (keep-alive comments do not count).
    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(30), self.next_unbounded()).await.expect("an event within 30 s")
    }

    async fn next_unbounded(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.received.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.received.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let field = |name: &str| block.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
                if let Some(kind) = field("event:") {
                    return (kind.to_owned(), serde_json::from_str(field("data:").unwrap_or("null")).unwrap());
                }
                continue;
            }
            let chunk = self.response.chunk().await.unwrap().expect("the stream stays open");
            self.received.extend_from_slice(&chunk);
        }
    }
}

async fn every_task_change_is_announced_with_the_tasks_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    let mut events = EventStream::open(&app, &viewer).await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();

    let task = app.create_task(&admin, "t", script).await["id"].as_i64().unwrap();
    assert_eq!(events.next().await, ("task".into(), json!({"id": task})), "created");
    let updated = app.put(&format!("/tasks/{task}"), &admin, json!({"description": "now described"})).await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert_eq!(events.next().await, ("task".into(), json!({"id": task})), "updated");
    for action in ["pause", "resume"] {
        let changed = app.post(&format!("/tasks/{task}/{action}"), &admin, json!({})).await;
        assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
        assert_eq!(events.next().await, ("task".into(), json!({"id": task})), "{action}d");
    }
    let deleted = app.delete(&format!("/tasks/{task}"), &admin).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
    assert_eq!(events.next().await, ("task".into(), json!({"id": task})), "deleted");
}

async fn a_fire_announces_its_run_and_the_task_it_advanced(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let mut events = EventStream::open(&app, &admin).await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let schedule = json!({"kind": "interval", "every_seconds": 1});
    let task = app.post("/tasks", &admin, json!({"name": "tick", "script_id": script, "schedule": schedule})).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
    let id = task.body["id"].as_i64().unwrap();
    // The creation and the fire each announce the task (the fire moved its next fire time); which of the
    // creation and the fired run comes first is up to the scheduler, so only the counts are checked.
    // Fires go on every second, so the bound is on the whole wait, not on each event.
    let announced = async {
        let (mut fired, mut task_events) = (false, 0);
        while !(fired && task_events >= 2) {
            match events.next().await {
                (kind, run) if kind == "run" => {
                    assert_eq!((&run["task_id"], &run["trigger"]), (&json!(id), &json!("schedule")), "{run}");
                    fired = true;
                }
                (kind, data) if kind == "task" => {
                    assert_eq!(data, json!({"id": id}));
                    task_events += 1;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), announced).await.expect("a fired run and the task announced twice");
}
