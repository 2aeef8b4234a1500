//! A remote agent's life: bad server URLs, settings it cannot use and refused tokens end `automa agent` with a
//! clear message; an agent disabled mid-run stops its script and exits; a clean stop says goodbye and shows the
//! agent offline at once; an agent given several server URLs moves to one that answers; and agents report
//! their uv and environment cache.

use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{PATIENCE, Server, command, fresh_database, postgres_url, text_of};

const REFUSED: &str = "the server refused this agent's token";

/// `automa agent` for `agent` (a created agent, with its token) at `servers`; its stderr is captured.
fn start_agent(dir: &std::path::Path, token: &str, servers: &[&str], extra: &[(&str, &str)]) -> Child {
    let mut process = command(dir, extra);
    process.arg("agent");
    for server in servers {
        process.args(["--server", server]);
    }
    process
        .env("AUTOMA_TOKEN", token)
        .arg("--data-dir")
        .arg(dir.join("agent"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the process to exit, failing the test past `bound`; returns its status and its stderr.
async fn exit_within(process: Child, bound: Duration) -> (ExitStatus, String) {
    let waited = tokio::task::spawn_blocking(move || process.wait_with_output());
    let output = tokio::time::timeout(bound, waited)
        .await
        .unwrap_or_else(|_| panic!("the agent did not exit within {bound:?}"))
        .unwrap()
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

async fn create_agent(server: &Server, name: &str) -> Value {
    let (status, agent) = server.post("/agents", json!({"name": name, "max_concurrency": 2})).await;
    assert_eq!(status, 201, "{agent}");
    agent
}

#[tokio::test]
async fn a_server_url_without_a_scheme_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let process = start_agent(dir.path(), "atma_whatever", &["127.0.0.1:18081"], &[]);
    // Refused before any connection is tried: seconds, where today it retried "builder error" forever.
    let (status, stderr) = exit_within(process, Duration::from_secs(30)).await;
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(
            "the server URL '127.0.0.1:18081' has no scheme: write http://127.0.0.1:18081 (loopback) or https://"
        ),
        "{stderr}"
    );
    let process = start_agent(dir.path(), "atma_whatever", &["https://a.example.com,http://b.example.com"], &[]);
    let (status, stderr) = exit_within(process, Duration::from_secs(30)).await;
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains("refusing plain http:// to http://b.example.com"), "{stderr}");
}

/// The agent's settings come from its flags and environment alone: a server configuration file beside it is not
/// read (the broken one here would stop it first), and each setting it cannot use is named.
#[tokio::test]
async fn an_agent_refuses_settings_it_cannot_use_naming_them_and_reads_no_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    // A server's setting the agent does not take, and one no server could start with: it is not read.
    std::fs::write(dir.path().join("automa.toml"), "bind = \"not an address\"\n").unwrap();
    let cases = [
        (("AUTOMA_SANDBOX", "loose"), "AUTOMA_SANDBOX"),
        (("AUTOMA_SANDBOX", "loose"), r#"unknown sandbox profile "loose": expected "strict" or "none""#),
        (("AUTOMA_NETWORK_DENY", "10.0.0.0/8, 10.0.0.0/33"), "AUTOMA_NETWORK_DENY"),
        (("AUTOMA_AGENT_CONCURRENCY", "0"), "AUTOMA_AGENT_CONCURRENCY (--concurrency) must be between 1 and 1024"),
    ];
    for (setting, message) in cases {
        let mut process = command(dir.path(), &[setting]);
        let process = process
            .current_dir(dir.path())
            .args(["agent", "--server", "http://127.0.0.1:9", "--data-dir"])
            .arg(dir.path().join("agent"))
            .env("AUTOMA_TOKEN", "atma_whatever")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Refused before any connection is tried (nothing listens on port 9).
        let (status, stderr) = exit_within(process, Duration::from_secs(30)).await;
        assert!(!status.success(), "{setting:?}: {status}: {stderr}");
        assert!(stderr.contains(message), "{setting:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_wrong_token_ends_the_agent_with_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true")], true).await;
    let process = start_agent(dir.path(), "atma_not_a_token_of_this_server", &[&server.base], &[]);
    // The first heartbeat is refused: the agent exits at once instead of retrying.
    let (status, stderr) = exit_within(process, Duration::from_secs(30)).await;
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains(REFUSED), "{stderr}");
}

#[tokio::test]
async fn an_agent_disabled_mid_run_stops_its_script_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true")], true).await;
    let agent = create_agent(&server, "doomed").await;
    // Without a sandbox the script's pid is this host's, so the test can see whether the process is gone.
    let process =
        start_agent(dir.path(), agent["token"].as_str().unwrap(), &[&server.base], &[("AUTOMA_SANDBOX", "none")]);
    let script = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n";
    let run = server.execute(script, json!({"agent_id": agent["id"]})).await;
    let id = run["id"].as_i64().unwrap();
    let mut stream = server.events(&format!("/runs/{id}/logs/stream")).await;
    let (name, data) = stream.next().await.expect("the run starts");
    assert_eq!(name, "log", "{data}");
    let chunk: Value = serde_json::from_str(&data).unwrap();
    let pid: u32 = chunk["data"].as_str().unwrap().trim().parse().expect("the script printed its pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the script is running");

    let (status, updated) = server.put(&format!("/agents/{}", agent["id"]), json!({"disabled": true})).await;
    assert_eq!(status, 200, "{updated}");
    // The next heartbeat (every second while a run goes) is refused; well under the 600 s the script sleeps,
    // where today the agent never exits.
    let (status, stderr) = exit_within(process, Duration::from_secs(30)).await;
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains(REFUSED), "{stderr}");
    // Gone, or dead and waiting to be reaped by an init that does not reap (as in some containers).
    let left = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(left.is_empty() || left.contains("State:\tZ"), "the script {pid} was stopped with the agent: {left}");
    let events = server.get(&format!("/agents/{}/events", agent["id"])).await;
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"refused") && kinds.contains(&"online"), "{events}");
}

#[tokio::test]
async fn sigterm_of_an_idle_agent_shows_it_offline_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true")], true).await;
    let agent = create_agent(&server, "leaving").await;
    let process = start_agent(dir.path(), agent["token"].as_str().unwrap(), &[&server.base], &[]);
    // A run executed shows the agent registered and working.
    let run = server.execute("print('hello')\n", json!({"agent_id": agent["id"]})).await;
    let (_, ended) = server.follow(run["id"].as_i64().unwrap()).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(server.get(&format!("/agents/{}", agent["id"])).await["status"], "online");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, stderr) = exit_within(process, PATIENCE).await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("waiting for running runs"), "an idle agent waits for nothing: {stderr}");
    // Offline at once, not 90 s later when its heartbeats are missed.
    let after = server.get(&format!("/agents/{}", agent["id"])).await;
    assert_eq!(after["status"], "offline", "{after}");
    let events = server.get(&format!("/agents/{}/events", agent["id"])).await;
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["goodbye", "online"], "newest first: {events}");
}

/// An idle agent heartbeats as often as the server's replies ask, not a third of the lease as before servers
/// said: here a 3 s offline notice asks for every second, where a third of the default lease is 10 s.
#[tokio::test]
async fn an_idle_agent_heartbeats_as_often_as_the_server_asks() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("AUTOMA_NO_AGENT", "true"), ("AUTOMA_AGENT_OFFLINE_SECONDS", "3")];
    let server = Server::start(dir.path(), &settings, true).await;
    let agent = create_agent(&server, "idle").await;
    let mut process = start_agent(dir.path(), agent["token"].as_str().unwrap(), &[&server.base], &[]);
    let mut seen = std::collections::BTreeSet::new();
    let watching = async {
        while seen.len() < 4 {
            let shown = server.get(&format!("/agents/{}", agent["id"])).await;
            if let Some(last_seen) = shown["last_seen_at"].as_str() {
                seen.insert(last_seen.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(15), watching).await;
    process.kill().unwrap();
    process.wait().unwrap();
    assert!(waited.is_ok(), "heartbeats seen in 15 s, at most 2 at the old 10 s: {seen:?}");
}

#[tokio::test]
async fn an_agent_moves_past_a_dead_server_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_NO_AGENT", "true")], true).await;
    let agent = create_agent(&server, "failover").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = format!("http://{dead}");
    let mut process = start_agent(dir.path(), agent["token"].as_str().unwrap(), &[&dead, &server.base], &[]);
    for round in 0..3 {
        let run = server.execute(&format!("print('run {round}')\n"), json!({"agent_id": agent["id"]})).await;
        let (chunks, ended) = server.follow(run["id"].as_i64().unwrap()).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        assert_eq!(text_of(&chunks, "stdout"), format!("run {round}\n"));
    }
    let _ = process.kill();
    let _ = process.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_executing_when_its_first_server_is_killed() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let settings = [("AUTOMA_DATABASE_URL", database.url.as_str()), ("AUTOMA_NO_AGENT", "true")];
    let mut first = Server::start(dirs[0].path(), &settings, true).await;
    let second = Server::start(dirs[1].path(), &settings, false).await;
    let agent = create_agent(&first, "both").await;
    let urls = format!("{},{}", first.base, second.base);
    let mut process = start_agent(dirs[0].path(), agent["token"].as_str().unwrap(), &[&urls], &[]);
    let mut ids = Vec::new();
    for round in 0..3 {
        let run = first.execute(&format!("print('before {round}')\n"), json!({"agent_id": agent["id"]})).await;
        ids.push(run["id"].as_i64().unwrap());
        let (_, ended) = second.follow(*ids.last().unwrap()).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for round in 0..3 {
        let run = second.execute(&format!("print('after {round}')\n"), json!({"agent_id": agent["id"]})).await;
        ids.push(run["id"].as_i64().unwrap());
        let (_, ended) = second.follow(*ids.last().unwrap()).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
    }
    let _ = process.kill();
    let _ = process.wait();
    for id in ids {
        let run = second.get(&format!("/runs/{id}")).await;
        assert_eq!((run["status"].as_str(), run["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{run}");
        let logs = second.get(&format!("/runs/{id}/logs")).await;
        let stdout = text_of(logs["chunks"].as_array().unwrap(), "stdout");
        assert_eq!(stdout.lines().count(), 1, "run {id} executed once: {stdout}");
    }
}

/// Both agents report uv and their environment cache in their capabilities: the remote one from its flags, the
/// embedded one from the server's settings; an agent without uv reports none and still runs other scripts.
#[tokio::test]
async fn agents_report_their_uv_and_environment_cache() {
    let Some(uv) = crate::packages::test_uv() else { return };
    let version = std::process::Command::new(&uv).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).split_whitespace().nth(1).unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_UV", "/nonexistent/uv")], true).await;
    let embedded = server.execute("print('stdlib only')\n", json!({})).await;
    let (chunks, ended) = server.follow(embedded["id"].as_i64().unwrap()).await;
    assert_eq!((ended["status"].as_str(), text_of(&chunks, "stdout").as_str()), (Some("succeeded"), "stdlib only\n"));

    let agent = create_agent(&server, "with-uv").await;
    let mut process = command(dir.path(), &[]);
    process
        .args(["agent", "--server", &server.base, "--uv"])
        .arg(&uv)
        .args(["--package-offline", "--env-cache-mb", "64", "--data-dir"])
        .arg(dir.path().join("agent"))
        .env("AUTOMA_TOKEN", agent["token"].as_str().unwrap())
        .stdout(Stdio::null());
    let mut process = process.spawn().unwrap();
    let run = server.execute("print('remote')\n", json!({"agent_id": agent["id"]})).await;
    let (_, ended) = server.follow(run["id"].as_i64().unwrap()).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");

    let agents = server.get("/agents").await;
    let packages = |name: &str| {
        let found = agents["items"].as_array().unwrap().iter().find(|a| a["name"].as_str().unwrap().starts_with(name));
        found.unwrap_or_else(|| panic!("{name} in {agents}"))["capabilities"]["packages"].clone()
    };
    assert_eq!(packages("with-uv"), json!({"uv": version, "environment_builds": 0, "cached_environments": 0}));
    assert_eq!(packages("embedded-")["uv"], Value::Null, "{agents}");
    process.kill().unwrap();
    process.wait().unwrap();
}
