//! Triggers: hooks start their task (and nothing else: a revoked token is refused exactly like one that never
//! existed), within their own rate limit and body limits, audited as the hook; run-after starts a task once per
//! upstream run on the upstream's final outcome, never on a status it does not wait for, and refuses cycles.
//! Runs are driven through the agent protocol by the test, as a remote agent would, so every outcome is chosen.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, on_both_backends, spawn_app, spawn_app_with};

on_both_backends!(
    a_hook_starts_its_task_and_a_revoked_hook_looks_unknown,
    hook_bodies_are_bounded_declared_and_well_formed,
    each_hook_has_its_own_rate_limit,
    run_after_fires_once_per_upstream_run_on_its_final_outcome,
    run_after_refuses_cycles_and_unknown_tasks_and_guards_deletes,
    a_hook_lives_only_while_its_creator_may_run_tasks,
    the_hook_payload_limit_is_a_setting,
);

async fn hook(app: &TestApp, token: &str, task: i64, body: Value) -> Reply {
    let created = app.post(&format!("/tasks/{task}/hooks"), token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    created
}

/// Calls a hook as an outside system would: no credentials but the path.
async fn call(app: &TestApp, path: &str, content_type: Option<&str>, body: Option<Vec<u8>>) -> Reply {
    // A connection of its own per call: the server closes one after refusing a body it did not read (413), and a
    // pooled client could send the next call down that closing connection.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut request = client.post(app.url(path));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers }
}

async fn task(app: &TestApp, admin: &str, name: &str) -> i64 {
    let script = app.create_script(admin, name).await["id"].as_i64().unwrap();
    app.create_task(admin, name, script).await["id"].as_i64().unwrap()
}

async fn a_hook_starts_its_task_and_a_revoked_hook_looks_unknown(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    let viewer = app.user_token(&admin, "viewer").await;
    let task = task(&app, &admin, "deploy").await;
    let created = hook(&app, &operator, task, json!({"name": "ci"})).await;
    let token = created.body["token"].as_str().unwrap().to_owned();
    let path = created.body["path"].as_str().unwrap().to_owned();
    assert_eq!(path, format!("/hooks/{token}"));
    assert!(token.starts_with("atmh_") && token.starts_with(created.body["prefix"].as_str().unwrap()));
    assert_eq!(created.body["rate_per_minute"], 60, "the default rate");
    let hook_id = created.body["id"].as_i64().unwrap();
    let duplicate = app.post(&format!("/tasks/{task}/hooks"), &operator, json!({"name": "ci"})).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{:?}", duplicate.body);
    let refused = app.post(&format!("/tasks/{task}/hooks"), &viewer, json!({"name": "viewer"})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let payload = br#"{"ref": "refs/heads/main", "commits": [1, 2, 3]}"#.to_vec();
    let called = call(&app, &path, Some("application/json"), Some(payload)).await;
    assert_eq!(called.status, StatusCode::ACCEPTED, "{:?}", called.body);
    let run_id = called.body["run_id"].as_i64().unwrap();
    assert_eq!(called.body.as_object().unwrap().len(), 2, "the caller learns the run's id and time only");
    let run = app.get(&format!("/runs/{run_id}"), &viewer).await.body;
    assert_eq!((run["trigger"].as_str(), run["hook_id"].as_i64()), (Some("hook"), Some(hook_id)), "{run}");
    assert_eq!((run["task_id"].as_i64(), run["status"].as_str()), (Some(task), Some("queued")));
    let filtered = app.get(&format!("/runs?trigger=hook&task_id={task}"), &viewer).await.body;
    assert_eq!(filtered["total"], 1);
    let listed = app.get(&format!("/tasks/{task}/hooks"), &viewer).await.body;
    assert!(listed[0]["last_triggered_at"].is_string(), "{listed}");
    assert!(!listed.to_string().contains(&token), "the token is never shown again");

    // Revoked, unknown and malformed tokens get one answer.
    let revoked = app.delete(&format!("/tasks/{task}/hooks/{hook_id}"), &operator).await;
    assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);
    assert!(revoked.body["revoked_at"].is_string());
    let other_task = app.delete(&format!("/tasks/{}/hooks/{hook_id}", task + 1000), &operator).await;
    assert_eq!(other_task.status, StatusCode::NOT_FOUND, "a hook is revoked under its own task");
    let after_revoke = call(&app, &path, None, None).await;
    let made_up = call(&app, &format!("/hooks/atmh_{}", "A".repeat(43)), None, None).await;
    let malformed = call(&app, "/hooks/not-a-token", None, None).await;
    for reply in [&after_revoke, &made_up, &malformed] {
        assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &json!({"detail": "no such hook"})));
    }
    assert_eq!(app.get(&format!("/runs?task_id={task}"), &viewer).await.body["total"], 1, "nothing more ran");

    let audit = app.get("/audit?resource_type=hook", &admin).await.body;
    let entries = audit["items"].as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["action"].as_str().unwrap(), e["actor_type"].as_str().unwrap())).collect();
    for expected in [("hook.create", "user"), ("hook.trigger", "hook"), ("hook.revoke", "user")] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    let trigger = entries.iter().find(|e| e["action"] == "hook.trigger").unwrap();
    assert_eq!(
        (trigger["actor_id"].as_str(), trigger["details"]["run_id"].as_i64()),
        (Some(&*hook_id.to_string()), Some(run_id))
    );
    assert!(!audit.to_string().contains(&token), "no token in the audit log");
    assert!(!audit.to_string().contains("refs/heads/main"), "no payload in the audit log");
    assert_eq!(app.get("/audit/verify", &admin).await.body["ok"], true);
}

async fn hook_bodies_are_bounded_declared_and_well_formed(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let task = task(&app, &admin, "ingest").await;
    let path = hook(&app, &admin, task, json!({"name": "feed"})).await.body["path"].as_str().unwrap().to_owned();
    let json = Some("application/json");

    let mut big = br#"{"pad": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(br#""}"#);
    let oversize = call(&app, &path, json, Some(big)).await;
    assert_eq!(oversize.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", oversize.body);
    assert!(oversize.detail().contains("1048576"), "{}", oversize.detail());

    let plain = call(&app, &path, Some("text/plain"), Some(b"{}".to_vec())).await;
    assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{:?}", plain.body);
    let malformed = call(&app, &path, json, Some(b"{\"a\": ".to_vec())).await;
    assert_eq!((malformed.status, malformed.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("body")));
    assert!(malformed.detail().contains("is not JSON"), "{}", malformed.detail());
    assert_eq!(app.get(&format!("/runs?task_id={task}"), &admin).await.body["total"], 0, "refused calls run nothing");

    let just_fits = {
        let mut body = br#"{"pad": ""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1024 * 1024 - 11));
        body.extend(br#""}"#);
        body
    };
    assert_eq!(just_fits.len(), 1024 * 1024);
    assert_eq!(call(&app, &path, json, Some(just_fits)).await.status, StatusCode::ACCEPTED, "1 MiB exactly");
    assert_eq!(call(&app, &path, None, None).await.status, StatusCode::ACCEPTED, "no body at all");
    let unicode = call(&app, &path, Some("application/json; charset=utf-8"), Some("[\"é\\u0000\"]".into())).await;
    assert_eq!(unicode.status, StatusCode::ACCEPTED, "{:?}", unicode.body);
}

async fn each_hook_has_its_own_rate_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let task = task(&app, &admin, "limited").await;
    let too_fast =
        app.post(&format!("/tasks/{task}/hooks"), &admin, json!({"name": "x", "rate_per_minute": 1001})).await;
    assert_eq!(
        (too_fast.status, too_fast.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("rate_per_minute"))
    );
    let slow = hook(&app, &admin, task, json!({"name": "slow", "rate_per_minute": 2})).await.body["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = hook(&app, &admin, task, json!({"name": "other", "rate_per_minute": 2})).await.body["path"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        assert_eq!(call(&app, &slow, None, None).await.status, StatusCode::ACCEPTED);
    }
    let limited = call(&app, &slow, None, None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", limited.body);
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(call(&app, &other, None, None).await.status, StatusCode::ACCEPTED, "another hook has its own budget");
    assert_eq!(app.get(&format!("/runs?task_id={task}"), &admin).await.body["total"], 3);
}

/// An agent registered through the API, driven by the test.
async fn agent(app: &TestApp, admin: &str) -> String {
    let created = app.post("/agents", admin, json!({"name": "driver", "max_concurrency": 50})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let token = created.body["token"].as_str().unwrap().to_owned();
    let heartbeat =
        json!({"initial": true, "hostname": "driver", "version": "test", "capabilities": {}, "running": []});
    assert_eq!(
        app.request(Method::POST, "/agent/heartbeat", Some(&token), Some(&heartbeat)).await.status,
        StatusCode::OK
    );
    token
}

/// Claims the oldest queued run and finishes it with `exit_code`; returns its id.
async fn run_next(app: &TestApp, agent: &str, exit_code: i64) -> i64 {
    let claim = app.request(Method::POST, "/agent/claim", Some(agent), Some(&json!({"wait_seconds": 0}))).await;
    let run = claim.body["run_id"].as_i64().unwrap_or_else(|| panic!("a run to claim: {:?}", claim.body));
    finish(app, agent, run, exit_code).await;
    run
}

async fn finish(app: &TestApp, agent: &str, run: i64, exit_code: i64) -> Reply {
    let outcome =
        json!({"exit_code": exit_code, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0});
    let finished = app.request(Method::POST, &format!("/agent/runs/{run}/finish"), Some(agent), Some(&outcome)).await;
    assert_eq!(finished.status, StatusCode::OK, "{:?}", finished.body);
    finished
}

async fn runs_of(app: &TestApp, token: &str, task: i64) -> Vec<Value> {
    let mut runs =
        app.get(&format!("/runs?task_id={task}&limit=500"), token).await.body["items"].as_array().unwrap().clone();
    runs.reverse();
    runs
}

async fn run_after_fires_once_per_upstream_run_on_its_final_outcome(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let driver = agent(&app, &admin).await;
    let upstream = task(&app, &admin, "extract").await;
    let on_success = task(&app, &admin, "load").await;
    let on_failure = task(&app, &admin, "alert").await;
    let link = |on: Value| json!({"run_after": [{"task_id": upstream, "on": on}]});
    let saved = app.put(&format!("/tasks/{on_success}"), &admin, json!({"run_after": [{"task_id": upstream}]})).await;
    assert_eq!(saved.body["run_after"], json!([{"task_id": upstream, "on": ["succeeded"]}]), "the default is success");
    let saved = app.put(&format!("/tasks/{on_failure}"), &admin, link(json!(["timed_out", "failed"]))).await;
    assert_eq!(saved.body["run_after"], json!([{"task_id": upstream, "on": ["failed", "timed_out"]}]));

    // Three upstream successes: three downstream runs, each naming its own upstream run; none on failure.
    for _ in 0..3 {
        let queued = app.post(&format!("/tasks/{upstream}/execute"), &admin, json!({})).await;
        assert_eq!(queued.status, StatusCode::ACCEPTED);
    }
    // Claims take the oldest queued run first: the three upstream runs, before any run they start.
    let mut upstream_runs = Vec::new();
    for _ in 0..3 {
        upstream_runs.push(run_next(&app, &driver, 0).await);
    }
    let loads = runs_of(&app, &admin, on_success).await;
    let recorded: Vec<(Option<&str>, Option<i64>)> =
        loads.iter().map(|r| (r["trigger"].as_str(), r["upstream_run_id"].as_i64())).collect();
    let expected: Vec<(Option<&str>, Option<i64>)> =
        upstream_runs.iter().map(|id| (Some("after"), Some(*id))).collect();
    assert_eq!(recorded, expected);
    assert!(runs_of(&app, &admin, on_failure).await.is_empty(), "not on a status it does not wait for");
    // A repeated report changes nothing, and downstream runs are runs like any other.
    finish(&app, &driver, upstream_runs[0], 0).await;
    assert_eq!(runs_of(&app, &admin, on_success).await.len(), 3);
    for _ in 0..3 {
        run_next(&app, &driver, 0).await;
    }

    // With a retry left, a failure is not final: only the last attempt's failure starts the alert.
    app.put(&format!("/tasks/{upstream}"), &admin, json!({"retries": 1, "retry_backoff_seconds": 0})).await;
    app.post(&format!("/tasks/{upstream}/execute"), &admin, json!({})).await;
    let first = run_next(&app, &driver, 1).await;
    assert!(runs_of(&app, &admin, on_failure).await.is_empty(), "attempt {first} will be retried");
    let last = run_next(&app, &driver, 1).await;
    let alerts = runs_of(&app, &admin, on_failure).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0]["upstream_run_id"].as_i64(), alerts[0]["trigger"].as_str()), (Some(last), Some("after")));
    assert_eq!(runs_of(&app, &admin, on_success).await.len(), 3);

    // A cancelled queued run is an end too; a disabled downstream task does not start.
    app.put(&format!("/tasks/{on_failure}"), &admin, link(json!(["cancelled"]))).await;
    app.put(
        &format!("/tasks/{on_success}"),
        &admin,
        json!({"enabled": false, "run_after": [{"task_id": upstream, "on": ["cancelled"]}]}),
    )
    .await;
    let queued = app.post(&format!("/tasks/{upstream}/execute"), &admin, json!({})).await.body["id"].as_i64().unwrap();
    assert_eq!(app.post(&format!("/runs/{queued}/cancel"), &admin, json!({})).await.status, StatusCode::ACCEPTED);
    let alerts = runs_of(&app, &admin, on_failure).await;
    assert_eq!(alerts.last().unwrap()["upstream_run_id"].as_i64(), Some(queued), "{alerts:?}");
    assert_eq!(runs_of(&app, &admin, on_success).await.len(), 3, "disabled");

    if backend == Backend::Postgres {
        two_servers_finishing_one_run_fire_once(&app, &admin, &driver, upstream, on_failure).await;
    }
}

/// Two servers on one database take the same finish report at the same moment: one downstream run.
async fn two_servers_finishing_one_run_fire_once(
    app: &TestApp,
    admin: &str,
    driver: &str,
    upstream: i64,
    downstream: i64,
) {
    let replica = app.replica().await;
    // Earlier outcomes left downstream runs queued: done with them first, so each claim below is the upstream's.
    loop {
        let claim = app.request(Method::POST, "/agent/claim", Some(driver), Some(&json!({"wait_seconds": 0}))).await;
        let Some(run) = claim.body["run_id"].as_i64() else { break };
        finish(app, driver, run, 0).await;
    }
    app.put(&format!("/tasks/{downstream}"), admin, json!({"run_after": [{"task_id": upstream, "on": ["succeeded"]}]}))
        .await;
    for _ in 0..10 {
        app.post(&format!("/tasks/{upstream}/execute"), admin, json!({})).await;
        let claim = app.request(Method::POST, "/agent/claim", Some(driver), Some(&json!({"wait_seconds": 0}))).await;
        let run = claim.body["run_id"].as_i64().unwrap();
        let before = runs_of(app, admin, downstream).await.len();
        tokio::join!(finish(app, driver, run, 0), finish(&replica, driver, run, 0));
        let after = runs_of(app, admin, downstream).await;
        assert_eq!(after.len(), before + 1, "one downstream run for run {run}");
        assert_eq!(after.last().unwrap()["upstream_run_id"].as_i64(), Some(run));
        // The downstream run is claimed and succeeds, which starts nothing (it has no dependants).
        run_next(app, driver, 0).await;
    }
}

async fn run_after_refuses_cycles_and_unknown_tasks_and_guards_deletes(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let (a, b, c) = (task(&app, &admin, "a").await, task(&app, &admin, "b").await, task(&app, &admin, "c").await);
    let after = |id: i64| json!({"run_after": [{"task_id": id}]});
    assert_eq!(app.put(&format!("/tasks/{b}"), &admin, after(a)).await.status, StatusCode::OK);
    assert_eq!(app.put(&format!("/tasks/{c}"), &admin, after(b)).await.status, StatusCode::OK);
    let cycle = app.put(&format!("/tasks/{a}"), &admin, after(c)).await;
    assert_eq!((cycle.status, cycle.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("run_after")));
    assert_eq!(cycle.detail(), "run_after: would make a cycle: 'a' → 'c' → 'b' → 'a' (each runs after the next)");
    assert!(
        app.get(&format!("/tasks/{a}"), &admin).await.body["run_after"].as_array().unwrap().is_empty(),
        "nothing saved"
    );
    let itself = app.put(&format!("/tasks/{a}"), &admin, after(a)).await;
    assert_eq!(itself.detail(), "run_after: would make a cycle: 'a' → 'a' (each runs after the next)");
    let script = app.get(&format!("/tasks/{a}"), &admin).await.body["script_id"].as_i64().unwrap();
    let created = app
        .post("/tasks", &admin, json!({"name": "d", "script_id": script, "run_after": [{"task_id": 999_999}]}))
        .await;
    assert_eq!(
        (created.status, created.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("run_after[0].task_id"))
    );
    for (body, field) in [
        (json!([{"task_id": a, "on": ["skipped"]}]), "run_after[0].on"),
        (json!([{"task_id": a, "on": []}]), "run_after[0].on"),
        (json!([{"task_id": a, "on": ["failed", "failed"]}]), "run_after[0].on"),
        (json!([{"task_id": a}, {"task_id": a, "on": ["failed"]}]), "run_after[1].task_id"),
        (json!([{"task_id": a, "on": ["sucess"]}]), "run_after[0].on[0]"),
        (json!([{"task_id": a, "when": "always"}]), "run_after[0].when"),
    ] {
        let reply = app.put(&format!("/tasks/{c}"), &admin, json!({"run_after": body})).await;
        assert_eq!(
            (reply.status, reply.body["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}: {:?}",
            reply.body
        );
    }

    let refused = app.delete(&format!("/tasks/{a}"), &admin).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.detail().contains(&format!("'b' (id {b})")), "{}", refused.detail());
    // Clearing the link, or deleting the downstream task, lets it go.
    assert_eq!(app.put(&format!("/tasks/{b}"), &admin, json!({"run_after": null})).await.status, StatusCode::OK);
    assert_eq!(app.delete(&format!("/tasks/{c}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&format!("/tasks/{a}"), &admin).await.status, StatusCode::NO_CONTENT);
    let audit = app.get(&format!("/audit?resource_type=task&resource_id={b}"), &admin).await.body;
    assert!(audit.to_string().contains("run_after"), "the link is in the task's audit details");
}

async fn a_hook_lives_only_while_its_creator_may_run_tasks(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    let operator_id = app.get("/users/me", &operator).await.body["id"].as_i64().unwrap();
    let task = task(&app, &admin, "deploy").await;
    let path = hook(&app, &operator, task, json!({"name": "ci"})).await.body["path"].as_str().unwrap().to_owned();
    let by_admin = hook(&app, &admin, task, json!({"name": "admin"})).await.body["path"].as_str().unwrap().to_owned();
    assert_eq!(call(&app, &path, None, None).await.status, StatusCode::ACCEPTED);
    let unknown = json!({"detail": "no such hook"});

    let user = format!("/users/{operator_id}");
    assert_eq!(app.put(&user, &admin, json!({"active": false})).await.status, StatusCode::OK);
    let deactivated = call(&app, &path, None, None).await;
    assert_eq!((deactivated.status, &deactivated.body), (StatusCode::NOT_FOUND, &unknown), "like a made-up token");
    assert_eq!(app.put(&user, &admin, json!({"active": true})).await.status, StatusCode::OK);
    assert_eq!(call(&app, &path, None, None).await.status, StatusCode::ACCEPTED, "reactivated");
    assert_eq!(app.put(&user, &admin, json!({"role": "viewer"})).await.status, StatusCode::OK);
    let demoted = call(&app, &path, None, None).await;
    assert_eq!((demoted.status, &demoted.body), (StatusCode::NOT_FOUND, &unknown), "a viewer's hook");
    assert_eq!(app.delete(&user, &admin).await.status, StatusCode::NO_CONTENT);
    let deleted = call(&app, &path, None, None).await;
    assert_eq!((deleted.status, &deleted.body), (StatusCode::NOT_FOUND, &unknown), "a deleted creator's hook");
    assert_eq!(call(&app, &by_admin, None, None).await.status, StatusCode::ACCEPTED, "other hooks still work");
    assert_eq!(app.get(&format!("/runs?task_id={task}"), &admin).await.body["total"], 3);
}

async fn the_hook_payload_limit_is_a_setting(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.hook_max_payload_bytes = 64).await;
    let admin = app.admin_token().await;
    let task = task(&app, &admin, "ingest").await;
    let path = hook(&app, &admin, task, json!({"name": "feed"})).await.body["path"].as_str().unwrap().to_owned();
    let fits = format!(r#"{{"pad": "{}"}}"#, "x".repeat(64 - 11));
    assert_eq!(fits.len(), 64);
    let called = call(&app, &path, Some("application/json"), Some(fits.into_bytes())).await;
    assert_eq!(called.status, StatusCode::ACCEPTED, "{:?}", called.body);
    let over = format!(r#"{{"pad": "{}"}}"#, "x".repeat(64 - 10));
    let refused = call(&app, &path, Some("application/json"), Some(over.into_bytes())).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", refused.body);
    assert_eq!(refused.detail(), "a hook's body is at most 64 bytes");
}
