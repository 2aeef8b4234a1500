//! Losing processes: `kill -9` of the server while runs are running loses nothing, `kill -9` of a remote agent
//! loses its run within the lease, and a remote agent (`automa agent`) executes runs over HTTP like the
//! embedded one.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::{Server, text_of};

const LONG: &str = "import time\nprint('started', flush=True)\ntime.sleep(600)\n";

#[tokio::test]
async fn after_kill_9_every_run_ends_and_queued_runs_execute() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("AUTOMA_LEASE_SECONDS", "3")];
    let mut server = Server::start(dir.path(), &settings, true).await;
    let mut long = Vec::new();
    for _ in 0..2 {
        long.push(server.execute(LONG, json!({})).await["id"].as_i64().unwrap());
    }
    let mut quick = Vec::new();
    for _ in 0..3 {
        quick.push(server.execute("print('quick')\n", json!({})).await["id"].as_i64().unwrap());
    }
    for id in &long {
        let mut stream = server.events(&format!("/runs/{id}/logs/stream")).await;
        assert_eq!(stream.next().await.unwrap().0, "log", "run {id} started");
    }
    for id in &quick {
        assert_eq!(server.get(&format!("/runs/{id}")).await["status"], "queued");
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = Server::start(dir.path(), &settings, false).await;
    for id in &long {
        let (_, ended) = server.follow(*id).await;
        assert_eq!(ended["status"], "lost", "{ended}");
    }
    for id in &quick {
        let (chunks, ended) = server.follow(*id).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        assert_eq!(text_of(&chunks, "stdout"), "quick\n");
    }
}

#[tokio::test]
async fn a_remote_agent_executes_runs_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true")], true).await;
    let (status, agent) =
        server.post("/agents", json!({"name": "remote", "labels": ["py"], "max_concurrency": 2})).await;
    assert_eq!(status, 201, "{agent}");
    let mut process = crate::support::command(dir.path(), &[])
        .args(["agent", "--server", &server.base])
        .env("AUTOMA_TOKEN", agent["token"].as_str().unwrap())
        // A proxy from the environment would carry the token in clear past this host: on loopback it is not
        // used (this one leads nowhere, so using it would fail the run).
        .env("HTTP_PROXY", "http://192.0.2.1:9")
        .env("http_proxy", "http://192.0.2.1:9")
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let run = server.execute("print('remote')\n", json!({"agent_id": agent["id"]})).await;
    let (chunks, ended) = server.follow(run["id"].as_i64().unwrap()).await;
    let _ = process.kill();
    let _ = process.wait();
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(ended["agent_id"], agent["id"]);
    assert_eq!(text_of(&chunks, "stdout"), "remote\n");
    let listed = server.get(&format!("/agents/{}", agent["id"])).await;
    assert_eq!(listed["capabilities"]["ready"], true, "{listed}");
}

/// On SQLite the idle reaper sleeps up to the 90 s silence threshold, so the claim that takes a lease must wake
/// it: the run of an agent killed mid-run is lost once its 3 s lease ends, not at the reaper's next look.
#[tokio::test]
async fn a_killed_remote_agents_run_is_lost_when_its_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true"), ("AUTOMA_LEASE_SECONDS", "3")], true).await;
    let (status, agent) = server.post("/agents", json!({"name": "doomed"})).await;
    assert_eq!(status, 201, "{agent}");
    let mut process = crate::support::command(dir.path(), &[])
        .args(["agent", "--server", &server.base])
        .env("AUTOMA_TOKEN", agent["token"].as_str().unwrap())
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let id = server.execute(LONG, json!({"agent_id": agent["id"]})).await["id"].as_i64().unwrap();
    let mut stream = server.events(&format!("/runs/{id}/logs/stream")).await;
    assert_eq!(stream.next().await.unwrap().0, "log", "run {id} started");
    process.kill().unwrap();
    process.wait().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), server.follow(id)).await;
    let (_, ended) = ended.expect("lost within 30 s of the kill, not at the idle reaper's look 90 s on");
    assert_eq!(ended["status"], "lost", "{ended}");
}
