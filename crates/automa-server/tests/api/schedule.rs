//! The scheduler through the API: fires become runs, the misfire policy is applied as configured across a
//! restart, and the upcoming-fires list follows pauses.

use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, execute_sql, on_both_backends, runs_until, spawn_app};

on_both_backends!(misfire_policy_applies_after_a_restart, upcoming_fires_follow_pauses, interval_fires_become_runs);

fn statuses(runs: &[Value]) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = runs
        .iter()
        .map(|r| (r["scheduled_for"].as_str().unwrap().to_owned(), r["status"].as_str().unwrap().to_owned()))
        .collect();
    list.sort();
    list
}

async fn interval_fires_become_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let body = json!({"name": "tick", "script_id": script, "args": ["a"],
        "schedule": {"kind": "interval", "every_seconds": 1, "max_instances": 100}});
    let task = app.post("/tasks", &admin, body).await.body;
    let id = task["id"].as_i64().unwrap();
    let runs = runs_until(&app, &admin, id, |runs| runs.len() >= 2).await;
    for run in &runs {
        assert_eq!((run["trigger"].as_str(), run["status"].as_str()), (Some("schedule"), Some("queued")));
        let scheduled = chrono::DateTime::parse_from_rfc3339(run["scheduled_for"].as_str().unwrap()).unwrap();
        let anchor = chrono::DateTime::parse_from_rfc3339(task["schedule"]["at"].as_str().unwrap()).unwrap();
        assert_eq!((scheduled - anchor).num_milliseconds() % 1000, 0, "fires fall on the interval's rhythm");
    }
    let ticks: Vec<&str> = runs.iter().map(|r| r["scheduled_for"].as_str().unwrap()).collect();
    let mut unique = ticks.clone();
    unique.dedup();
    assert_eq!(unique.len(), ticks.len(), "one run per tick");
}

async fn misfire_policy_applies_after_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    // Hourly ticks half an hour off the clock: the last missed one is 30 minutes late and the next one 30 minutes
    // away, so nothing in the test depends on how long the test takes (a slow machine changes no outcome).
    let anchor = (Utc::now() - chrono::Duration::minutes(210)).to_rfc3339_opts(SecondsFormat::Micros, false);
    let mut ids = Vec::new();
    for (name, grace, coalesce) in [("skip-late", 3600, false), ("coalesce", 86_400, true), ("run-all", 86_400, false)]
    {
        let schedule = json!({"kind": "interval", "every_seconds": 3600, "at": anchor, "misfire_grace_seconds": grace,
            "coalesce": coalesce, "max_instances": 10});
        let task = app.post("/tasks", &admin, json!({"name": name, "script_id": script, "schedule": schedule})).await;
        assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
        ids.push(task.body["id"].as_i64().unwrap());
    }
    // While the server is down, the four ticks at -3.5, -2.5, -1.5 and -0.5 h come due.
    let app = app
        .restart(|url| async move {
            execute_sql(backend, &url, &format!("UPDATE tasks SET next_fire_at = '{anchor}'")).await;
        })
        .await;
    let [skip_late, coalesce, run_all] = ids[..] else { unreachable!() };

    let skipped = runs_until(&app, &admin, skip_late, |runs| runs.len() == 4).await;
    let outcome: Vec<String> = statuses(&skipped).into_iter().map(|(_, status)| status).collect();
    assert_eq!(outcome, ["skipped", "skipped", "skipped", "queued"], "only the tick within an hour of grace runs");
    let late = skipped.iter().find(|r| r["status"] == "skipped").unwrap();
    assert!(late["error"].as_str().unwrap().contains("beyond the misfire grace of 3600 s"), "{late:?}");

    let coalesced = runs_until(&app, &admin, coalesce, |runs| runs.len() == 4).await;
    let outcome: Vec<String> = statuses(&coalesced).into_iter().map(|(_, status)| status).collect();
    assert_eq!(outcome, ["skipped", "skipped", "skipped", "queued"], "one coalesced run, for the latest tick");
    assert!(
        coalesced
            .iter()
            .filter(|r| r["status"] == "skipped")
            .all(|r| r["error"].as_str().unwrap().contains("coalesced"))
    );

    let all = runs_until(&app, &admin, run_all, |runs| runs.len() == 4).await;
    assert!(all.iter().all(|r| r["status"] == "queued"), "every tick within grace runs: {all:?}");

    for id in ids {
        let task = app.get(&format!("/tasks/{id}"), &admin).await.body;
        let next = chrono::DateTime::parse_from_rfc3339(task["next_fire_at"].as_str().unwrap()).unwrap();
        assert!(next > Utc::now(), "the task moved on to its next tick");
    }
}

async fn upcoming_fires_follow_pauses(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let daily = json!({"name": "daily", "script_id": script, "schedule": {"kind": "cron", "cron": "0 6 * * *", "timezone": "Asia/Tokyo"}});
    let daily = app.post("/tasks", &admin, daily).await.body["id"].as_i64().unwrap();
    let hourly = json!({"name": "hourly", "script_id": script, "schedule": {"kind": "cron", "cron": "30 * * * *"}});
    app.post("/tasks", &admin, hourly).await;

    let fires = app.get("/schedule?limit=30", &admin).await.body;
    let fires = fires.as_array().unwrap();
    assert_eq!(fires.len(), 30);
    let times: Vec<&str> = fires.iter().map(|f| f["fire_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "soonest first");
    assert!(fires.iter().any(|f| f["task_name"] == "daily"), "a daily fire falls within the next 30");
    assert!(
        fires
            .iter()
            .filter(|f| f["task_name"] == "daily")
            .all(|f| f["fire_at"].as_str().unwrap().contains("T21:00:00"))
    );

    let paused = app.post(&format!("/tasks/{daily}/pause"), &admin, json!({})).await;
    assert_eq!((paused.status, paused.body["enabled"].as_bool()), (StatusCode::OK, Some(false)));
    let fires = app.get("/schedule?limit=30", &admin).await.body;
    assert!(fires.as_array().unwrap().iter().all(|f| f["task_name"] == "hourly"));
    let resumed = app.post(&format!("/tasks/{daily}/resume"), &admin, json!({})).await.body;
    assert!(resumed["next_fire_at"].as_str().unwrap().contains("T21:00:00"));

    let bad = app.get("/schedule?limit=0", &admin).await;
    assert_eq!((bad.status, bad.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));
    let far = app.get("/schedule?until=2999-01-01T00:00:00Z", &admin).await;
    assert_eq!(far.body["field"], "until");
}
