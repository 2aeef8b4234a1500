//! `GET /events`: the changes the dashboard follows live, each sent as its own event type.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app};

on_both_backends!(every_task_change_is_announced_with_the_tasks_id);

/// A Server-Sent Events stream read one event at a time.
struct EventStream {
    response: reqwest::Response,
    received: String,
}

impl EventStream {
    /// Opens `/events`; the server subscribes before it answers, so every change made after this is seen.
    async fn open(app: &TestApp, token: &str) -> EventStream {
        let response = app.client.get(app.url("/events")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        EventStream { response, received: String::new() }
    }

    /// The next event's type and data, skipping keep-alive comments.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.received.find("\n\n") {
                let block: String = self.received.drain(..end + 2).collect();
                let field = |name: &str| block.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
                if let Some(kind) = field("event:") {
                    return (kind.to_owned(), serde_json::from_str(field("data:").unwrap_or("null")).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream stays open");
            self.received.push_str(std::str::from_utf8(&chunk).unwrap());
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
