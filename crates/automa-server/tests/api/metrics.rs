//! `/metrics`: the document parses as Prometheus text (with the reference parser, `prometheus_client`), its
//! counters move as runs happen through the agent protocol and the scheduler, and who may read it where.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, on_both_backends, runs_until, spawn_app_with};
use crate::openapi::python_tools;

on_both_backends!(
    counters_move_as_runs_happen,
    the_scheduler_reports_its_lateness_and_skipped_fires,
    the_metrics_address_serves_only_metrics_and_the_api_address_needs_a_token,
    every_answer_carries_a_request_id,
);

/// Every sample of a document, read by `prometheus_client`'s parser, which refuses malformed text.
#[derive(Debug)]
struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    fn parse(text: &str) -> Samples {
        let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.documentation, family.name + " has a HELP line"
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
print(json.dumps(samples))
"#;
        let mut child = Command::new(python_tools().join("bin/python"))
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the parser refused the document: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        Samples(serde_json::from_slice(&output.stdout).unwrap())
    }

    /// The value of the one sample with this name and these labels (others may be present); 0 when absent,
    /// as a counter that has not moved yet is.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, value)| *value)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} names one series: {matching:?}");
        matching.first().copied().unwrap_or(0.0)
    }
}

async fn scrape(app: &TestApp, token: &str) -> Samples {
    let response = app.client.get(app.url("/metrics")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Samples::parse(&response.text().await.unwrap())
}

async fn agent(app: &TestApp, admin: &str, name: &str) -> String {
    let created = app.post("/agents", admin, json!({"name": name})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let token = created.body["token"].as_str().unwrap().to_owned();
    let heartbeat = json!({"initial": true, "hostname": name, "version": "test", "capabilities": {}, "running": []});
    let reply = app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&heartbeat)).await;
    assert_eq!(reply.status, StatusCode::OK);
    token
}

/// Claims the waiting run and reports it ended with `exit_code`, its sandbox set up in 40 ms.
async fn run_on(app: &TestApp, agent: &str, exit_code: i64) -> i64 {
    let claim = app.request(Method::POST, "/agent/claim", Some(agent), Some(&json!({"wait_seconds": 0}))).await;
    let run = claim.body["run_id"].as_i64().expect("a run is waiting");
    let outcome = json!({"exit_code": exit_code, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0,
        "setup_ms": 40});
    let finished = app.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(agent), Some(&outcome)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);
    run
}

async fn counters_move_as_runs_happen(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    let before = scrape(&app, &viewer).await;
    assert_eq!(before.value("automa_agents", &[("state", "online")]), 0.0);
    assert_eq!(before.value("automa_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(before.value("automa_db_pool_max_connections", &[]) >= 1.0);
    assert!(before.value("automa_database_size_bytes", &[]) > 0.0);

    let worker = agent(&app, &admin, "worker").await;
    let script = app.create_script(&admin, "report").await["id"].as_i64().unwrap();
    let task = app.create_task(&admin, "nightly report", script).await["id"].as_i64().unwrap();
    let queued = app.post(&format!("/tasks/{task}/execute"), &admin, json!({})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let waiting = scrape(&app, &viewer).await;
    assert_eq!(waiting.value("automa_runs_queued", &[]), 1.0);
    assert_eq!(waiting.value("automa_agents", &[("state", "online")]), 1.0);
    assert_eq!(waiting.value("automa_agents", &[("state", "offline")]), 0.0, "every state is reported");
    run_on(&app, &worker, 0).await;
    for exit_code in [1, 0] {
        let adhoc = app.post("/execute", &admin, json!({"content": "print('x')\n"})).await;
        assert_eq!(adhoc.status, StatusCode::ACCEPTED, "{:?}", adhoc.body);
        run_on(&app, &worker, exit_code).await;
    }
    let cancelled =
        app.post("/execute", &admin, json!({"content": "print('never')\n"})).await.body["id"].as_i64().unwrap();
    assert_eq!(app.post(&format!("/runs/{cancelled}/cancel"), &admin, json!({})).await.status, StatusCode::ACCEPTED);
    let missing = app.get("/runs/424242", &admin).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/no/such/place/atm_notatoken", &admin).await.status, StatusCode::NOT_FOUND);

    let response = app.client.get(app.url("/metrics")).bearer_auth(&viewer).send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.contains("atm_notatoken") && !text.contains("424242"), "raw paths never become labels");
    let after = Samples::parse(&text);
    let moved = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    assert_eq!(moved("automa_runs_finished_total", &[("status", "succeeded")]), 2.0);
    assert_eq!(moved("automa_runs_finished_total", &[("status", "failed")]), 1.0);
    assert_eq!(moved("automa_runs_finished_total", &[("status", "cancelled")]), 1.0);
    assert_eq!(
        after.value("automa_task_runs_finished_total", &[("task", "nightly report"), ("status", "succeeded")]),
        1.0
    );
    assert_eq!(after.value("automa_run_duration_seconds_count", &[("status", "succeeded")]), 2.0);
    assert_eq!(after.value("automa_run_duration_seconds_bucket", &[("status", "failed"), ("le", "+Inf")]), 1.0);
    assert_eq!(after.value("automa_run_queue_wait_seconds_count", &[]), 3.0, "three runs were handed out");
    assert_eq!(after.value("automa_runs_queued", &[]), 0.0);
    assert_eq!(after.value("automa_sandbox_setup_seconds_bucket", &[("le", "0.05")]), 3.0);
    assert_eq!(after.value("automa_sandbox_setup_seconds_bucket", &[("le", "0.025")]), 0.0);
    let finishes = [("method", "POST"), ("route", "/agent/runs/{id}/finish"), ("status", "200")];
    assert_eq!(moved("automa_http_requests_total", &finishes), 3.0);
    let not_found = [("method", "GET"), ("route", "/runs/{id}"), ("status", "404")];
    assert_eq!(after.value("automa_http_requests_total", &not_found), 1.0);
    let unmatched = [("method", "GET"), ("route", "(unmatched)"), ("status", "404")];
    assert_eq!(after.value("automa_http_requests_total", &unmatched), 1.0);
    assert_eq!(
        after.value("automa_http_request_duration_seconds_count", &[("method", "GET"), ("route", "/runs/{id}")]),
        1.0
    );
    // The two earlier scrapes; a scrape is counted once it is answered, so not in its own document.
    assert_eq!(after.value("automa_http_requests_total", &[("route", "/metrics"), ("status", "200")]), 2.0);

    // A renamed task keeps its counts under its new name; a deleted one joins the others.
    let renamed = app.put(&format!("/tasks/{task}"), &admin, json!({"name": "weekly report"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    let later = scrape(&app, &viewer).await;
    assert_eq!(
        later.value("automa_task_runs_finished_total", &[("task", "weekly report"), ("status", "succeeded")]),
        1.0
    );
    assert_eq!(later.value("automa_task_runs_finished_total", &[("task", "nightly report")]), 0.0);
}

async fn the_scheduler_reports_its_lateness_and_skipped_fires(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "tick").await["id"].as_i64().unwrap();
    // Nothing claims the first fire's run, so with one instance allowed the next fires are skipped.
    let schedule = json!({"kind": "interval", "every_seconds": 1, "max_instances": 1});
    let task =
        app.post("/tasks", &admin, json!({"name": "every second", "script_id": script, "schedule": schedule})).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
    let task = task.body["id"].as_i64().unwrap();
    runs_until(&app, &admin, task, |runs| runs.iter().any(|r| r["status"] == "skipped")).await;
    assert_eq!(app.post(&format!("/tasks/{task}/pause"), &admin, json!({})).await.status, StatusCode::OK);

    // The counters follow the fires' commits by a moment: compare until they agree, within a bound.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let runs = runs_until(&app, &admin, task, |_| true).await;
        let count = |status: &str| runs.iter().filter(|r| r["status"] == status).count() as f64;
        let samples = scrape(&app, &admin).await;
        let seen = (
            samples.value("automa_scheduler_lateness_seconds_count", &[]),
            samples.value("automa_scheduler_skipped_fires_total", &[]),
            samples.value("automa_runs_finished_total", &[("status", "skipped")]),
            samples.value("automa_runs_queued", &[]),
        );
        let expected = (count("queued"), count("skipped"), count("skipped"), count("queued"));
        if seen == expected {
            assert_eq!(expected.0, 1.0, "one fire was queued: {runs:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "metrics {seen:?} never matched the runs {expected:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn the_metrics_address_serves_only_metrics_and_the_api_address_needs_a_token(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.metrics_bind = Some("127.0.0.1:0".into())).await;
    let admin = app.admin_token().await;
    let metrics_addr = app.metrics_addr.expect("a metrics listener");
    let client = reqwest::Client::new();

    let open = client.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let samples = Samples::parse(&open.text().await.unwrap());
    assert_eq!(samples.value("automa_agents", &[("state", "online")]), 0.0);
    for path in ["/users", "/health", "/openapi.json", "/", "/metrics/x"] {
        let other = client.get(format!("http://{metrics_addr}{path}")).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND, "{path} is not served on the metrics address");
    }
    let post = client.post(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    let anonymous = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{:?}", anonymous.body);
    let forged = app.request(Method::GET, "/metrics", Some("atm_forged"), None).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/metrics", &admin).await.status, StatusCode::OK);
}

async fn every_answer_carries_a_request_id(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let id_of = |response: &reqwest::Response| response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let first = app.client.get(app.url("/health")).send().await.unwrap();
    let second = app.client.get(app.url("/nowhere")).send().await.unwrap();
    let (first, second) = (id_of(&first), id_of(&second));
    assert_eq!(first.len(), 32, "{first}");
    assert_ne!(first, second, "each request has its own id");

    // A proxy's plain id is kept, so that its logs and these meet; anything else is replaced.
    let offered = |id: &str| app.client.get(app.url("/health")).header("x-request-id", id).send();
    assert_eq!(id_of(&offered("edge-1234.abcd_EF").await.unwrap()), "edge-1234.abcd_EF");
    for forged in ["two words", "x".repeat(65).as_str(), "a\"b"] {
        let answered = id_of(&offered(forged).await.unwrap());
        assert!(answered != forged && answered.len() == 32, "{forged:?} became {answered:?}");
    }
}
