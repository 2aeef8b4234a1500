//! An agent's concurrency, disabling and retiring through the API: the agent reports its slots, the admin caps
//! them, a claim at capacity is answered at once; a disabled or retired agent is refused as a pin and a queued
//! run says why it waits; a retired agent keeps its runs and its name.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app, spawn_app_with};

on_both_backends!(
    heartbeats_report_concurrency_and_get_the_effective_grant,
    a_claim_at_capacity_is_answered_at_once,
    disabling_cancels_running_runs_and_refuses_pins,
    queued_runs_say_why_they_wait,
    retired_agents_keep_history_and_their_name,
    heartbeat_replies_say_how_often_an_idle_agent_heartbeats
);

async fn create(app: &TestApp, admin: &str, body: Value) -> (i64, String) {
    let created = app.post("/agents", admin, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    (created.body["id"].as_i64().unwrap(), created.body["token"].as_str().unwrap().to_owned())
}

fn heartbeat(concurrency: Value) -> Value {
    json!({"initial": true, "hostname": "h", "version": "test", "capabilities": {}, "running": [],
        "concurrency": concurrency})
}

async fn beat(app: &TestApp, token: &str, concurrency: Value) -> (StatusCode, Value) {
    let reply = app.request(Method::POST, "/agent/heartbeat", Some(token), Some(&heartbeat(concurrency))).await;
    (reply.status, reply.body)
}

async fn claim(app: &TestApp, token: &str, wait_seconds: u64) -> (StatusCode, Value) {
    let body = json!({"wait_seconds": wait_seconds});
    let reply = app.request(Method::POST, "/agent/claim", Some(token), Some(&body)).await;
    (reply.status, reply.body)
}

async fn heartbeats_report_concurrency_and_get_the_effective_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (id, token) = create(&app, &admin, json!({"name": "uncapped"})).await;
    let fresh = app.get(&format!("/agents/{id}"), &admin).await.body;
    assert_eq!((fresh["max_concurrency"].clone(), fresh["concurrency"].clone()), (json!(1024), Value::Null));
    for bad in [json!(0), json!(1025), json!(-3)] {
        let (status, body) = beat(&app, &token, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["detail"], "concurrency: must be between 1 and 1024", "{body}");
    }
    let (status, reply) = beat(&app, &token, json!(3)).await;
    assert_eq!((status, reply["max_concurrency"].clone()), (StatusCode::OK, json!(3)), "{reply}");
    let shown = app.get(&format!("/agents/{id}"), &admin).await.body;
    assert_eq!((shown["concurrency"].clone(), shown["effective_concurrency"].clone()), (json!(3), json!(3)));
    let capped = app.put(&format!("/agents/{id}"), &admin, json!({"max_concurrency": 2})).await;
    assert_eq!(
        (capped.body["max_concurrency"].clone(), capped.body["effective_concurrency"].clone()),
        (json!(2), json!(2))
    );
    let (_, reply) = beat(&app, &token, json!(3)).await;
    assert_eq!(reply["max_concurrency"], 2, "the grant follows the cap: {reply}");
    let (_, reply) = beat(&app, &token, Value::Null).await;
    assert_eq!(reply["max_concurrency"], 2, "an agent that reports nothing gets the cap: {reply}");
}

async fn a_claim_at_capacity_is_answered_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (_, token) = create(&app, &admin, json!({"name": "one-slot"})).await;
    beat(&app, &token, json!(1)).await;
    for _ in 0..2 {
        assert_eq!(app.post("/execute", &admin, json!({"content": "print(1)\n"})).await.status, StatusCode::ACCEPTED);
    }
    assert_eq!(claim(&app, &token, 0).await.0, StatusCode::OK);
    let started = std::time::Instant::now();
    let (status, body) = claim(&app, &token, 30).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("at capacity"), "{body}");
    // Held, the claim would have waited its 30 s although a run is queued; answered, it takes no time at all.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the claim was held: {:?}", started.elapsed());
}

async fn disabling_cancels_running_runs_and_refuses_pins(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (id, token) = create(&app, &admin, json!({"name": "box"})).await;
    beat(&app, &token, json!(2)).await;
    let queued = app.post("/execute", &admin, json!({"content": "print(1)\n", "agent_id": id})).await;
    let run = queued.body["id"].as_i64().unwrap();
    assert_eq!(claim(&app, &token, 0).await.0, StatusCode::OK);
    let disabled = app.put(&format!("/agents/{id}"), &admin, json!({"disabled": true})).await;
    assert_eq!(disabled.body["status"], "disabled", "{:?}", disabled.body);
    let ended = app.get(&format!("/runs/{run}"), &admin).await.body;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let reason = "cancelled: agent 'box' was disabled by admin@example.com";
    assert_eq!(ended["error"], reason);
    let text = app.client.get(app.url(&format!("/runs/{run}/logs?format=text"))).bearer_auth(&admin).send().await;
    assert!(text.unwrap().text().await.unwrap().ends_with(&format!("{reason}\n")));
    assert_eq!(beat(&app, &token, json!(2)).await.0, StatusCode::UNAUTHORIZED, "the agent is refused");
    let refused = app.post("/execute", &admin, json!({"content": "print(1)\n", "agent_id": id})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(
        refused.detail(),
        format!("agent 'box' (id {id}) is disabled and takes no runs; pin to another agent or to none")
    );
    let script = app.create_script(&admin, "s").await;
    let task = app.create_task(&admin, "t", script["id"].as_i64().unwrap()).await;
    let task_id = task["id"].as_i64().unwrap();
    let enabled = app.put(&format!("/agents/{id}"), &admin, json!({"disabled": false})).await;
    assert_eq!(enabled.status, StatusCode::OK);
    let pinned = app.put(&format!("/tasks/{task_id}"), &admin, json!({"agent_id": id})).await;
    assert_eq!(pinned.status, StatusCode::OK, "{:?}", pinned.body);
    app.put(&format!("/agents/{id}"), &admin, json!({"disabled": true})).await;
    let refused = app.post(&format!("/tasks/{task_id}/execute"), &admin, json!({})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    assert!(refused.detail().starts_with("agent 'box'"), "{}", refused.detail());
}

async fn queued_runs_say_why_they_wait(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (id, token) = create(&app, &admin, json!({"name": "gpu-box", "labels": ["gpu"]})).await;
    let queue = |body: Value| {
        let (app, admin) = (&app, &admin);
        async move { app.post("/execute", admin, body).await.body["id"].as_i64().unwrap() }
    };
    let reason = |run: i64| {
        let (app, admin) = (&app, &admin);
        async move { app.get(&format!("/runs/{run}"), admin).await.body["waiting_reason"].clone() }
    };
    let pinned = queue(json!({"content": "print(1)\n", "agent_id": id})).await;
    assert_eq!(reason(pinned).await, "pinned to agent 'gpu-box', which is offline");
    beat(&app, &token, json!(1)).await;
    assert_eq!(reason(pinned).await, Value::Null, "an online agent will take it");
    app.put(&format!("/agents/{id}"), &admin, json!({"draining": true})).await;
    assert_eq!(reason(pinned).await, "pinned to agent 'gpu-box', which is draining");
    app.put(&format!("/agents/{id}"), &admin, json!({"disabled": true})).await;
    assert_eq!(reason(pinned).await, "pinned to agent 'gpu-box', which is disabled");
    let listed = app.get("/runs?status=queued", &admin).await.body;
    assert!(listed["items"][0].get("waiting_reason").is_none(), "lists do not compute it: {listed}");
    let task = app.create_task(&admin, "needs-arm", app.create_script(&admin, "s").await["id"].as_i64().unwrap()).await;
    let task_id = task["id"].as_i64().unwrap();
    app.put(&format!("/tasks/{task_id}"), &admin, json!({"labels": ["arm"]})).await;
    let run = app.post(&format!("/tasks/{task_id}/execute"), &admin, json!({})).await.body["id"].as_i64().unwrap();
    assert_eq!(reason(run).await, "no online, enabled agent has the labels arm");

    // A run whose secret no online agent may receive says so, and stops saying it once one may.
    let (cpu_id, cpu) = create(&app, &admin, json!({"name": "cpu-box", "labels": ["cpu"]})).await;
    beat(&app, &cpu, json!(1)).await;
    let secret = json!({"name": "VAULT", "value": "v", "policy": {"agent_labels": ["prod"]}});
    assert_eq!(app.post("/secrets", &admin, secret).await.status, StatusCode::CREATED);
    let guarded = queue(json!({"content": "print(2)\n", "secrets": ["VAULT"]})).await;
    assert_eq!(reason(guarded).await, "secret 'VAULT' may not be given to any online agent that may take the run");
    app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_labels": ["cpu"]}})).await;
    assert_eq!(reason(guarded).await, Value::Null, "cpu-box may receive it");
    let pinned_secret = queue(json!({"content": "print(3)\n", "secrets": ["VAULT"], "agent_id": cpu_id})).await;
    app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_labels": ["prod"]}})).await;
    assert_eq!(reason(pinned_secret).await, "pinned to agent 'cpu-box', but secret 'VAULT' may not be given to it");
}

async fn retired_agents_keep_history_and_their_name(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (id, token) = create(&app, &admin, json!({"name": "old"})).await;
    beat(&app, &token, json!(1)).await;
    let run = app.post("/execute", &admin, json!({"content": "print(1)\n"})).await.body["id"].as_i64().unwrap();
    assert_eq!(claim(&app, &token, 0).await.0, StatusCode::OK);
    let busy = app.delete(&format!("/agents/{id}"), &admin).await;
    assert_eq!(
        (busy.status, busy.detail()),
        (StatusCode::CONFLICT, "agent 'old' is running 1 run: drain or disable it first")
    );
    let outcome = json!({"exit_code": 0});
    let finish = app.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(&token), Some(&outcome)).await;
    assert_eq!(finish.status, StatusCode::OK);
    assert_eq!(app.delete(&format!("/agents/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(beat(&app, &token, json!(1)).await.0, StatusCode::UNAUTHORIZED, "its token is refused");
    let retired = app.get(&format!("/agents/{id}"), &admin).await.body;
    assert_eq!(retired["status"], "retired", "{retired}");
    assert!(retired["retired_at"].is_string());
    let history = app.get(&format!("/runs?agent_id={id}"), &admin).await.body;
    assert_eq!(history["items"][0]["id"], run, "{history}");
    assert_eq!(app.get("/agents", &admin).await.body["total"], 0);
    assert_eq!(app.get("/agents?retired=true", &admin).await.body["items"][0]["id"], id);
    let pin = app.post("/execute", &admin, json!({"content": "print(1)\n", "agent_id": id})).await;
    assert_eq!(pin.status, StatusCode::CONFLICT);
    assert!(pin.detail().contains("is retired"), "{}", pin.detail());
    let taken = app.post("/agents", &admin, json!({"name": "old"})).await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(
        taken.detail(),
        format!(
            "the name 'old' belongs to retired agent {id}; rename that agent (PUT /agents/{id} with a new name) to free it"
        )
    );
    let changed = app.put(&format!("/agents/{id}"), &admin, json!({"labels": ["x"]})).await;
    assert_eq!(
        (changed.status, changed.detail()),
        (StatusCode::CONFLICT, "agent 'old' is retired: only its name can change")
    );
    let renamed = app.put(&format!("/agents/{id}"), &admin, json!({"name": "old-2025"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    create(&app, &admin, json!({"name": "old"})).await;
}

/// An idle agent renews no lease: every 30 s keeps it three times within the 90 s after which it is shown
/// offline, a shorter lease or offline notice shortens it, and it is never below a second.
async fn heartbeat_replies_say_how_often_an_idle_agent_heartbeats(backend: Backend) {
    for (lease, offline_notice, expected) in
        [(30, 90, 30), (6, 90, 6), (30, 12, 4), (30, 0, 30), (300, 0, 30), (3, 1, 1)]
    {
        let app = spawn_app_with(backend, |config| {
            config.lease_seconds = lease;
            config.agent_offline_seconds = offline_notice;
        })
        .await;
        let admin = app.admin_token().await;
        let (_, token) = create(&app, &admin, json!({"name": "idle"})).await;
        let (status, reply) = beat(&app, &token, json!(1)).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(
            reply["idle_heartbeat_seconds"], expected,
            "lease {lease} s, offline notice after {offline_notice} s: {reply}"
        );
    }
}
