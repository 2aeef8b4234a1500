//! The retention job in a running server: finished runs past the policy disappear on their own, what went is
//! in the audit log, the chain still verifies, and `/ready` reports the database's size.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Backend, on_both_backends, spawn_app_with};

on_both_backends!(the_job_deletes_old_runs_and_records_it);

async fn the_job_deletes_old_runs_and_records_it(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.retention_run_days = Some(30);
        config.retention_interval_seconds = 1;
    })
    .await;
    let admin = app.admin_token().await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let task = app.create_task(&admin, "t", script).await["id"].as_i64().unwrap();
    // Finished runs written behind the server's back: three from long ago, one "recent" (far in the future,
    // so never older than the cut-off).
    for finished in ["2020-01-01", "2020-01-02", "2020-01-03", "2999-01-01"] {
        app.execute_sql(&format!(
            "INSERT INTO runs (task_id, script_id, filename, trigger, status, queued_at, not_before, finished_at, \
             timeout_seconds, memory_mb, cpu_seconds, max_output_bytes) VALUES ({task}, {script}, 's.py', 'api', \
             'succeeded', '{finished}T00:00:00+00:00', '{finished}T00:00:00+00:00', '{finished}T00:00:00+00:00', \
             60, 64, 60, 1024)"
        ))
        .await;
    }

    // The pass deletes, then records what it deleted: wait for the record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let recorded = loop {
        let recorded = app.get("/audit?action=retention.runs", &admin).await.body;
        if recorded["total"] == 1 {
            break recorded;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never recorded a pass: {recorded}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let left = app.get(&format!("/runs?task_id={task}"), &admin).await.body["items"].as_array().cloned().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0]["finished_at"].as_str().unwrap().starts_with("2999"), "{left:?}");
    let details = &recorded["items"][0]["details"];
    assert_eq!((details["runs"].as_i64(), details["by_age"].as_i64()), (Some(3), Some(3)), "{details}");
    assert_eq!(details["policy"]["max_age_days"], 30);
    let verified = app.get("/audit/verify", &admin).await.body;
    assert_eq!((verified["ok"].as_bool(), &verified["pruned_through"]), (Some(true), &Value::Null), "{verified}");

    let ready = app.request(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.body["database_size_bytes"].as_i64().unwrap() > 0, "{:?}", ready.body);
}
