//! One source of truth for an agent's concurrency: the agent reports what it runs (`--concurrency`), the admin
//! may cap it, and the agent is given the smaller. Mismatched settings used to stall the queue (a claim the
//! server could not grant was held for a whole 30 s long poll, so five 1-second runs took two minutes). Also:
//! retiring (deleting) an agent keeps its history.

use std::process::{Child, Stdio};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::Server;

const ONE_SECOND: &str = "import time\ntime.sleep(1)\nprint('done')\n";
const RUNS: usize = 5;

/// The agent's long poll (`CLAIM_WAIT` in automa-agent): a stalled claim costs this long.
const LONG_POLL_SECONDS: i64 = 30;

fn start_agent(server: &Server, dir: &std::path::Path, token: &str, concurrency: &str) -> Child {
    crate::support::command(dir, &[])
        .args(["agent", "--server", &server.base, "--concurrency", concurrency])
        .env("AUTOMA_TOKEN", token)
        .arg("--data-dir")
        .arg(dir.join("agent"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn time(run: &Value, field: &str) -> DateTime<Utc> {
    run[field].as_str().unwrap_or_else(|| panic!("{field} in {run}")).parse().unwrap()
}

/// The most runs that were running at the same moment, from their start and end times.
fn most_at_once(runs: &[Value]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for run in runs {
        edges.push((time(run, "started_at"), 1));
        edges.push((time(run, "finished_at"), -1));
    }
    // At the same instant an end comes before a start: a slot freed and taken at once is not an overlap.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, change) in edges {
        now += change;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

/// Queues five 1-second runs for an agent created with `cap` (none: the default) and started with
/// `--concurrency slots`; checks they all ran without a stall and never above `effective` at once, and returns
/// the server, the agent's id and its process.
async fn five_runs(cap: Option<i64>, slots: &str, effective: usize) -> (tempfile::TempDir, Server, i64, Child) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true")], true).await;
    let mut body = json!({"name": "remote"});
    if let Some(cap) = cap {
        body["max_concurrency"] = cap.into();
    }
    let (status, agent) = server.post("/agents", body).await;
    assert_eq!(status, 201, "{agent}");
    let agent_id = agent["id"].as_i64().unwrap();
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(server.execute(ONE_SECOND, json!({"agent_id": agent_id})).await["id"].as_i64().unwrap());
    }
    let process = start_agent(&server, dir.path(), agent["token"].as_str().unwrap(), slots);
    let mut runs = Vec::new();
    for id in ids {
        let (_, ended) = server.follow(id).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        runs.push(ended);
    }
    let first_start = runs.iter().map(|run| time(run, "started_at")).min().unwrap();
    let last_end = runs.iter().map(|run| time(run, "finished_at")).max().unwrap();
    // Not a performance bound: with the stall, the second run could only start when the claim the server held
    // for the agent at its capacity ran out, one whole long poll after the first run started. Without it,
    // five 1-second runs take a few seconds even on a slow machine.
    assert!(
        (last_end - first_start).num_seconds() < LONG_POLL_SECONDS,
        "the runs took from {first_start} to {last_end}: a claim waited out a long poll"
    );
    assert!(most_at_once(&runs) <= effective, "more than {effective} runs at once: {runs:?}");
    let shown = server.get(&format!("/agents/{agent_id}")).await;
    assert_eq!(shown["effective_concurrency"], effective, "{shown}");
    assert_eq!(shown["concurrency"], slots.parse::<i64>().unwrap(), "{shown}");
    (dir, server, agent_id, process)
}

#[tokio::test]
async fn an_agent_without_a_cap_runs_its_own_concurrency_without_stalling() {
    let (_dir, _server, _, mut process) = five_runs(None, "2", 2).await;
    let _ = process.kill();
    let _ = process.wait();
}

#[tokio::test]
async fn a_cap_below_the_agents_concurrency_does_not_stall_the_queue() {
    let (_dir, _server, _, mut process) = five_runs(Some(1), "4", 1).await;
    let _ = process.kill();
    let _ = process.wait();
}

#[tokio::test]
async fn a_deleted_agent_is_retired_and_keeps_its_history() {
    let (_dir, server, agent_id, mut process) = five_runs(None, "2", 2).await;
    let response = reqwest::Client::new()
        .delete(format!("{}/agents/{agent_id}", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let _ = process.kill();
    let _ = process.wait();
    let retired = server.get(&format!("/agents/{agent_id}")).await;
    assert_eq!(retired["status"], "retired", "{retired}");
    let history = server.get(&format!("/runs?agent_id={agent_id}")).await;
    assert_eq!(history["total"], RUNS, "{history}");
    assert_eq!(server.get("/agents").await["total"], 0, "a retired agent leaves the list");
    assert_eq!(server.get("/agents?retired=true").await["total"], 1);
}
