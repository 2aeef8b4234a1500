//! The server's own logs, from the real binary at trace level in JSON into a small rolling file: every line
//! parses, the lines of a request carry the id its response returned, the file rolls by size, and no password,
//! token or secret value appears anywhere, standard error included, after sign-ins, failed sign-ins, an API
//! token's use and a run of a task that receives a secret.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{SECRET_KEY, command, logs};

const PASSWORD: &str = "pass-Zq8w-first-admin";
const WRONG_PASSWORD: &str = "wrong-Kx3v-guess";
const SECRET: &str = "value-Vb7p-of-the-secret";
/// Small enough that a few requests at trace level roll the file several times.
const MAX_BYTES: u64 = 16 * 1024;
const MAX_FILES: usize = 1000;

/// A response's status, `x-request-id` and JSON body.
async fn call(request: reqwest::RequestBuilder) -> (u16, String, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    (status, id, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn json_logs_carry_request_ids_roll_by_size_and_never_hold_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("logs/automa.log");
    let max_bytes = MAX_BYTES.to_string();
    let max_files = MAX_FILES.to_string();
    let mut child = command(
        dir.path(),
        &[
            ("AUTOMA_LOG", "trace"),
            ("AUTOMA_LOG_FORMAT", "json"),
            ("AUTOMA_LOG_FILE", log_file.to_str().unwrap()),
            ("AUTOMA_LOG_MAX_BYTES", &max_bytes),
            ("AUTOMA_LOG_MAX_FILES", &max_files),
        ],
    )
    .arg("serve")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().unwrap();
    let base = tokio::task::spawn_blocking(move || {
        let line = BufReader::new(stdout).lines().map(Result::unwrap).find(|l| l.starts_with("Automa is running"));
        line.expect("the server started").split_whitespace().nth(4).unwrap().trim_end_matches('/').to_owned()
    })
    .await
    .unwrap();

    let client = reqwest::Client::new();
    let url = |path: &str| format!("{base}{path}");
    let mut ids = Vec::new();
    let email = "admin@example.com";
    let (status, id, _) = call(client.post(url("/users")).json(&json!({"email": email, "password": PASSWORD}))).await;
    assert_eq!(status, 201);
    ids.push(id);
    for _ in 0..2 {
        let (status, id, _) =
            call(client.post(url("/token")).form(&[("username", email), ("password", WRONG_PASSWORD)])).await;
        assert_eq!(status, 401);
        ids.push(id);
    }
    let (status, id, session) =
        call(client.post(url("/token")).form(&[("username", email), ("password", PASSWORD)])).await;
    assert_eq!(status, 200);
    ids.push(id);
    let session = session["access_token"].as_str().unwrap().to_owned();
    let (status, id, created) =
        call(client.post(url("/tokens")).bearer_auth(&session).json(&json!({"name": "prometheus"}))).await;
    assert_eq!(status, 201, "{created}");
    ids.push(id);
    let api_token = created["token"].as_str().unwrap().to_owned();
    let (status, id, _) = call(client.get(url("/tasks")).bearer_auth(&api_token)).await;
    assert_eq!(status, 200);
    ids.push(id);
    let (status, id, _) = call(client.get(url("/tasks")).bearer_auth(format!("{api_token}x"))).await;
    assert_eq!(status, 401);
    ids.push(id);

    let secret = json!({"name": "API_KEY", "value": SECRET});
    let (status, _, body) = call(client.post(url("/secrets")).bearer_auth(&api_token).json(&secret)).await;
    assert_eq!(status, 201, "{body}");
    let script = json!({"name": "uses-key", "content": "import os\nprint('key', os.environ['API_KEY'])\n"});
    let (status, _, script) = call(client.post(url("/scripts")).bearer_auth(&api_token).json(&script)).await;
    assert_eq!(status, 201, "{script}");
    let task = json!({"name": "keyed", "script_id": script["id"], "secrets": ["API_KEY"], "env": {"MODE": "test"}});
    let (status, _, task) = call(client.post(url("/tasks")).bearer_auth(&api_token).json(&task)).await;
    assert_eq!(status, 201, "{task}");
    let path = format!("/tasks/{}/execute", task["id"]);
    let (status, _, run) = call(client.post(url(&path)).bearer_auth(&session).json(&json!({}))).await;
    assert_eq!(status, 202, "{run}");
    // The output stream ends with an `end` event when the run does.
    let mut stream =
        client.get(url(&format!("/runs/{}/logs/stream", run["id"]))).bearer_auth(&session).send().await.unwrap();
    let mut events = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while !events.contains("event: end") {
            let chunk = stream.chunk().await.unwrap().expect("the stream stays open until the end event");
            events.push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    assert!(ended.await.is_ok(), "the run did not end: {events}");
    let (_, _, ended) = call(client.get(url(&format!("/runs/{}", run["id"]))).bearer_auth(&session)).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let output = client.get(url(&format!("/runs/{}/logs?format=text", run["id"]))).bearer_auth(&session).send();
    assert_eq!(output.await.unwrap().text().await.unwrap(), "key ***\n", "the script received the secret");
    // The real sandbox's setup time reached the metrics.
    let metrics = client.get(url("/metrics")).bearer_auth(&api_token).send().await.unwrap().text().await.unwrap();
    let setup = metrics.lines().find(|l| l.starts_with("automa_sandbox_setup_seconds_sum")).expect("a setup time");
    assert!(metrics.contains("automa_sandbox_setup_seconds_count 1\n"), "{metrics}");
    eprintln!("measured: {setup}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    let stderr = stderr.join().unwrap();

    let files = logs::log_files(&log_file);
    assert!(files.len() >= 3, "the log rolled by size: {} files", files.len());
    let mut lines = Vec::new();
    for (file, text) in &files {
        assert!(text.len() as u64 <= MAX_BYTES || text.lines().count() == 1, "{} is past the limit", file.display());
        for line in text.lines() {
            let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(parsed["level"].is_string() && parsed["timestamp"].is_string(), "{line}");
            lines.push(parsed);
        }
    }
    eprintln!("measured: {} log files, {} lines", files.len(), lines.len());
    for line in stderr.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("standard error holds a line that is not JSON ({e}): {line}"));
    }
    for id in &ids {
        let answered = lines.iter().any(|line| {
            line["fields"]["message"] == "answered" && line["span"]["request_id"].as_str() == Some(id.as_str())
        });
        assert!(answered, "no line carries request id {id}");
    }
    let secrets = [PASSWORD, WRONG_PASSWORD, SECRET, SECRET_KEY, session.as_str(), api_token.as_str()];
    logs::assert_no_secrets_in_log(&log_file, &secrets);
    logs::assert_no_secrets("standard error", &stderr, &secrets);
    // The search finds what is there: a request id is.
    let all: String = files.iter().map(|(_, text)| text.as_str()).collect();
    let found = std::panic::catch_unwind(|| logs::assert_no_secrets("the log", &all, &[ids[0].as_str()]));
    assert!(found.is_err(), "the search reports a string that is in the log");
}
