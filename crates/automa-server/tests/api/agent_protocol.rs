//! The agent protocol over HTTP as a remote agent speaks it: output is taken only for a run the agent holds
//! while it runs, so an agent cannot write into another agent's run or into history.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app};

on_both_backends!(
    output_is_taken_only_from_the_agent_running_the_run,
    what_an_agent_reports_is_bounded_and_reads_back,
    a_run_handed_back_is_queued_again_for_any_agent,
    an_agents_events_are_for_users_and_say_goodbye_and_refusal,
    an_agents_history_keeps_its_newest_hundred_events,
    reported_times_out_of_range_are_refused_and_the_run_still_finishes,
    a_cancelled_run_lost_with_its_agent_is_not_retried
);

async fn agent(app: &TestApp, admin: &str, name: &str) -> String {
    let created = app.post("/agents", admin, json!({"name": name})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let token = created.body["token"].as_str().unwrap().to_owned();
    let heartbeat = json!({"initial": true, "hostname": name, "version": "test", "capabilities": {}, "running": []});
    assert_eq!(
        app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&heartbeat)).await.status,
        StatusCode::OK
    );
    token
}

fn batch(seq: i64, line: &str) -> Value {
    json!({"chunks": [{"seq": seq, "stream": "stdout", "ts": "2026-01-01T00:00:00Z", "data": line}]})
}

async fn output_is_taken_only_from_the_agent_running_the_run(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let holder = agent(&app, &admin, "holder").await;
    let other = agent(&app, &admin, "other").await;
    let queued = app.post("/execute", &admin, json!({"content": "print('hello')\n"})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let claim = app.request(Method::POST, "/agent/claim", Some(&holder), Some(&json!({"wait_seconds": 0}))).await;
    let run = claim.body["run_id"].as_i64().expect("the holder claims the run");
    let logs = format!("/agent/runs/{run}/logs");

    assert_eq!(
        app.request(Method::POST, &logs, Some(&holder), Some(&batch(1, "hello\n"))).await.status,
        StatusCode::OK
    );
    let intruder = app.request(Method::POST, &logs, Some(&other), Some(&batch(2, "forged\n"))).await;
    assert_eq!(intruder.status, StatusCode::CONFLICT);
    assert!(intruder.detail().contains("not held by this agent"), "{}", intruder.detail());

    let outcome = json!({"exit_code": 0, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 6});
    let finished = app.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(&holder), Some(&outcome)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);
    let late = app.request(Method::POST, &logs, Some(&holder), Some(&batch(3, "rewritten history\n"))).await;
    assert_eq!(
        (late.status, late.detail()),
        (StatusCode::CONFLICT, format!("run {run} is succeeded: it takes no more output; stop it").as_str())
    );
    let text = app.client.get(app.url(&format!("/runs/{run}/logs?format=text"))).bearer_auth(&admin).send().await;
    assert_eq!(text.unwrap().text().await.unwrap(), "hello\n", "only the holder's output while it ran is stored");
    // Another agent's finished run and a run that does not exist look the same: nothing about others' runs.
    let after = app.request(Method::POST, &logs, Some(&other), Some(&batch(4, "x\n"))).await;
    let missing = app.request(Method::POST, "/agent/runs/999999/logs", Some(&holder), Some(&batch(1, "x\n"))).await;
    assert_eq!(
        (after.status, after.detail()),
        (StatusCode::CONFLICT, format!("run {run} is not held by this agent; stop it").as_str())
    );
    assert_eq!(
        (missing.status, missing.detail()),
        (StatusCode::CONFLICT, "run 999999 is not held by this agent; stop it")
    );
}

/// Found by schemathesis: a number PostgreSQL's JSONB keeps but cannot give back as a double made every later
/// read of the agent a 500. What an agent reports about itself is bounded and made of values that read back.
async fn what_an_agent_reports_is_bounded_and_reads_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let token = agent(&app, &admin, "reporter").await;
    let report = |hostname: &str, capabilities: Value| json!({"initial": false, "hostname": hostname, "version": "test", "capabilities": capabilities, "running": []});
    for (body, field) in [
        (report("reporter", json!({"slots": 1.7976931348623157e308})), "capabilities"),
        (report("reporter", json!({"nested": [{"big": 123456789012345678901234567890.0}]})), "capabilities"),
        (report("reporter", json!({"padding": "x".repeat(20_000)})), "capabilities"),
        (report(&"h".repeat(254), json!({})), "hostname"),
    ] {
        let reply = app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&body)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", reply.body);
        assert_eq!(reply.body["field"], field);
    }
    let fine = report("reporter", json!({"slots": 9007199254740991_i64, "ratio": 0.5, "ok": true}));
    assert_eq!(app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&fine)).await.status, StatusCode::OK);
    let agents = app.get("/agents", &admin).await;
    assert_eq!(agents.status, StatusCode::OK, "{:?}", agents.body);
    assert_eq!(agents.body["items"][0]["capabilities"]["slots"], 9007199254740991_i64);
}

async fn a_run_handed_back_is_queued_again_for_any_agent(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let first = agent(&app, &admin, "first").await;
    let second = agent(&app, &admin, "second").await;
    let queued = app.post("/execute", &admin, json!({"content": "print('hello')\n"})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let claim = |token: String| {
        let app = &app;
        async move { app.request(Method::POST, "/agent/claim", Some(&token), Some(&json!({"wait_seconds": 0}))).await }
    };
    let run = claim(first.clone()).await.body["run_id"].as_i64().expect("the first agent claims the run");
    let logs = format!("/agent/runs/{run}/logs");
    assert_eq!(app.request(Method::POST, &logs, Some(&first), Some(&batch(1, "hello\n"))).await.status, StatusCode::OK);
    let hand_back = format!("/agent/runs/{run}/hand-back");

    let intruder = app.request(Method::POST, &hand_back, Some(&second), None).await;
    assert_eq!(
        (intruder.status, intruder.detail()),
        (StatusCode::CONFLICT, format!("run {run} is not held by this agent").as_str())
    );
    let handed = app.request(Method::POST, &hand_back, Some(&first), None).await;
    assert_eq!((handed.status, handed.body["status"].as_str()), (StatusCode::OK, Some("queued")), "{:?}", handed.body);
    let again = app.request(Method::POST, &hand_back, Some(&first), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "a repeated hand-back changes nothing");
    let listed = app.get(&format!("/runs/{run}"), &admin).await.body;
    assert_eq!((listed["status"].as_str(), listed["attempt"].as_i64()), (Some("queued"), Some(1)), "{listed}");

    let reclaimed = claim(second.clone()).await.body;
    assert_eq!((reclaimed["run_id"].as_i64(), reclaimed["last_log_seq"].as_i64()), (Some(run), Some(2)), "{reclaimed}");
    let text = app.client.get(app.url(&format!("/runs/{run}/logs?format=text"))).bearer_auth(&admin).send().await;
    assert_eq!(text.unwrap().text().await.unwrap(), "hello\nagent 'first' shut down; run handed back and requeued\n");
}

async fn agent_id(app: &TestApp, admin: &str, name: &str) -> i64 {
    let agents = app.get("/agents?limit=500", admin).await;
    agents.body["items"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap()["id"].as_i64().unwrap()
}

async fn an_agents_events_are_for_users_and_say_goodbye_and_refusal(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    let token = agent(&app, &admin, "visible").await;
    let id = agent_id(&app, &admin, "visible").await;
    let events = format!("/agents/{id}/events");

    let goodbye = app.request(Method::POST, "/agent/goodbye", Some(&token), None).await;
    assert_eq!(goodbye.status, StatusCode::NO_CONTENT, "{:?}", goodbye.body);
    assert_eq!(app.get(&format!("/agents/{id}"), &viewer).await.body["status"], "offline", "offline at once");
    let disabled = app.put(&format!("/agents/{id}"), &admin, json!({"disabled": true})).await;
    assert_eq!(disabled.status, StatusCode::OK, "{:?}", disabled.body);
    let heartbeat = json!({"hostname": "visible", "version": "test", "capabilities": {}, "running": []});
    for _ in 0..3 {
        let refused = app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&heartbeat)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }

    let listed = app.get(&events, &viewer).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let kinds: Vec<&str> =
        listed.body["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // Three refusals in a row are recorded once: a refused agent looping cannot flood the history.
    assert_eq!(kinds, ["refused", "goodbye", "online"], "{:?}", listed.body);
    assert_eq!(listed.body["total"], 3);
    let paged = app.get(&format!("{events}?limit=1&offset=1"), &viewer).await;
    assert_eq!(paged.body["items"][0]["kind"], "goodbye", "{:?}", paged.body);

    // A heartbeat after goodbye is a return.
    let enabled = app.put(&format!("/agents/{id}"), &admin, json!({"disabled": false})).await;
    assert_eq!(enabled.status, StatusCode::OK);
    let back = app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&heartbeat)).await;
    assert_eq!(back.status, StatusCode::OK, "{:?}", back.body);
    assert_eq!(app.get(&format!("/agents/{id}"), &viewer).await.body["status"], "online");
    assert_eq!(app.get(&events, &viewer).await.body["items"][0]["kind"], "reconnected");

    let as_agent = app.request(Method::GET, &events, Some(&token), None).await;
    assert_eq!(as_agent.status, StatusCode::UNAUTHORIZED, "an agent token reads no user route");
    let anonymous = app.request(Method::GET, &events, None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let unknown = app.get("/agents/999999/events", &viewer).await;
    assert_eq!((unknown.status, unknown.detail()), (StatusCode::NOT_FOUND, "agent not found"));
    let nobody = app.request(Method::POST, "/agent/goodbye", Some("atma_nobody"), None).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
}

async fn an_agents_history_keeps_its_newest_hundred_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let token = agent(&app, &admin, "chatty").await;
    let id = agent_id(&app, &admin, "chatty").await;
    for _ in 0..105 {
        let goodbye = app.request(Method::POST, "/agent/goodbye", Some(&token), None).await;
        assert_eq!(goodbye.status, StatusCode::NO_CONTENT);
    }
    let listed = app.get(&format!("/agents/{id}/events?limit=500"), &admin).await;
    assert_eq!(listed.body["total"], 100, "pruned on insert");
    let items = listed.body["items"].as_array().unwrap();
    assert!(items.iter().all(|e| e["kind"] == "goodbye"), "the oldest (online) went first");
}

/// A retry queued on one server (by an agent's finish) answers a claim waiting on another server of the same
/// PostgreSQL database at once, not when that claim's long poll ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_queued_on_one_server_wakes_a_claim_waiting_on_another() {
    if crate::helpers::postgres_url().is_none() {
        return;
    }
    let first = spawn_app(Backend::Postgres).await;
    let second = first.replica().await;
    let admin = first.admin_token().await;
    let holder = agent(&first, &admin, "holder").await;
    let waiter = agent(&first, &admin, "waiter").await;
    let script = first.create_script(&admin, "flaky").await;
    let body = json!({"name": "flaky", "script_id": script["id"], "retries": 1, "retry_backoff_seconds": 0});
    let task = first.post("/tasks", &admin, body).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
    let queued = first.post(&format!("/tasks/{}/execute", task.body["id"]), &admin, json!({})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let claim = first.request(Method::POST, "/agent/claim", Some(&holder), Some(&json!({"wait_seconds": 0}))).await;
    let run = claim.body["run_id"].as_i64().expect("the holder claims the run");

    let long_poll = json!({"wait_seconds": 30});
    let waiting = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let claim = second.request(Method::POST, "/agent/claim", Some(&waiter), Some(&long_poll)).await;
        (claim, started.elapsed())
    });
    // The waiting claim has looked once and found nothing before the retry is queued: without a wake-up it
    // would sleep out its 30 s. (Had the retry come first, the claim would take it at once either way.)
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let outcome = json!({"exit_code": 1, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0});
    let finished =
        first.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(&holder), Some(&outcome)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);

    let (claim, waited) = waiting.await.unwrap();
    assert_eq!(claim.status, StatusCode::OK, "{:?}", claim.body);
    assert_eq!(claim.body["attempt"], 2, "the retry: {:?}", claim.body);
    // Far below the 30 s long poll: the wake-up, not the poll's end, answered the claim.
    assert!(waited < std::time::Duration::from_secs(10), "the claim waited {waited:?}");
}

/// What an agent says about a run's times is checked before any date arithmetic: a value no clock can hold is
/// a 422 naming the field (it was a panic, a 500 the agent kept resending), and the run finishes on a sane retry.
async fn reported_times_out_of_range_are_refused_and_the_run_still_finishes(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let holder = agent(&app, &admin, "timer").await;
    let queued = app.post("/execute", &admin, json!({"content": "print('hello')\n"})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let claim = app.request(Method::POST, "/agent/claim", Some(&holder), Some(&json!({"wait_seconds": 0}))).await;
    let run = claim.body["run_id"].as_i64().expect("the agent claims the run");
    let finish = format!("/agent/runs/{run}/finish");
    for (field, value) in [("ended_ms_ago", i64::MAX), ("ended_ms_ago", -1), ("elapsed_ms", 9_000_000_000_000_000)] {
        let outcome = json!({"exit_code": 0, "signal": null, "max_rss_kb": null, "cpu_ms": null,
            "output_bytes": 0, field: value});
        let refused = app.request(Method::POST, &finish, Some(&holder), Some(&outcome)).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}={value}: {:?}", refused.body);
        assert!(refused.detail().contains(field), "{}", refused.detail());
    }
    assert_eq!(app.get(&format!("/runs/{run}"), &admin).await.body["status"], "running", "nothing was written");
    let outcome = json!({"exit_code": 0, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0,
        "elapsed_ms": 1500, "ended_ms_ago": 0});
    let finished = app.request(Method::POST, &finish, Some(&holder), Some(&outcome)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);
}

/// A user cancels a run whose agent has lost the server; the run then ends `lost` (fenced, or reaped). It is
/// not tried again: the user asked for it to stop.
async fn a_cancelled_run_lost_with_its_agent_is_not_retried(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let holder = agent(&app, &admin, "cut-off").await;
    let script = app.create_script(&admin, "cancelled").await;
    let body = json!({"name": "cancelled", "script_id": script["id"], "retries": 2, "retry_backoff_seconds": 0});
    let task = app.post("/tasks", &admin, body).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
    let queued = app.post(&format!("/tasks/{}/execute", task.body["id"]), &admin, json!({})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let claim = app.request(Method::POST, "/agent/claim", Some(&holder), Some(&json!({"wait_seconds": 0}))).await;
    let run = claim.body["run_id"].as_i64().expect("the agent claims the run");
    let cancel = app.post(&format!("/runs/{run}/cancel"), &admin, json!({})).await;
    assert!(cancel.status.is_success(), "{:?}", cancel.body);

    let fenced = json!({"exit_code": null, "signal": 9, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0,
        "lease_lost": true});
    let finished = app.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(&holder), Some(&fenced)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);
    assert_eq!(finished.body["status"], "lost");
    let runs = app.get(&format!("/runs?task_id={}", task.body["id"]), &admin).await;
    assert_eq!(runs.body["total"], 1, "no retry: {:?}", runs.body);
}
