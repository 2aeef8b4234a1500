//! Starting `automa serve` (and `automa agent`) as processes, and a small client for the API and its SSE.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

#[path = "../common/logs.rs"]
pub mod logs;

pub const BIN: &str = env!("CARGO_BIN_EXE_automa");

fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| automa_runner::resolve_interpreter(None).expect("python3 is installed"))
}

/// A running `automa serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub token: String,
    pub data_dir: PathBuf,
    client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every end-to-end server's log is searched for the credentials it saw and the tests' secret values.
        if !std::thread::panicking() {
            let secrets = [self.token.as_str(), ADMIN_PASSWORD, SECRET_VALUE, SECRET_KEY];
            logs::assert_no_secrets_in_log(&self.data_dir.join(LOG_FILE), &secrets);
        }
    }
}

/// The value the tests give their secrets, searched for in the server's log.
pub const SECRET_VALUE: &str = "s3cr3t-value";
const ADMIN_PASSWORD: &str = "admin password";
/// The servers' secret key, which signs sessions and encrypts secrets.
pub const SECRET_KEY: &str = "test-secret-key-of-at-least-32-bytes!!";
/// The server's log, in its data directory, at debug level.
const LOG_FILE: &str = "automa.log";

/// The environment of a test server: its own data directory, a free port, a fixed key, the real interpreter.
pub fn command(data_dir: &Path, extra: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUTOMA_DATA_DIR", data_dir)
        .env("AUTOMA_BIND", "127.0.0.1:0")
        .env("AUTOMA_SECRET_KEY", SECRET_KEY)
        .env("AUTOMA_PYTHON", python())
        .env("AUTOMA_AGENT_CONCURRENCY", "2")
        .env("AUTOMA_LOG", "debug,sqlx=info")
        .env("AUTOMA_LOG_FILE", data_dir.join(LOG_FILE))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in extra {
        command.env(key, value);
    }
    command
}

/// The longest wait for a server to start or stop, or for the next event of a stream: past it the test fails
/// instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(120);

impl Server {
    /// Starts a server on `data_dir` and signs in (creating the first admin when `first` is set).
    pub async fn start(data_dir: &Path, extra: &[(&str, &str)], first: bool) -> Server {
        let mut child = command(data_dir, extra).arg("serve").spawn().expect("automa serve starts");
        let stdout = child.stdout.take().expect("piped");
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).find_map(|line| {
                let rest = line.strip_prefix("Automa is running: open ")?.to_owned();
                Some(rest.split_whitespace().next()?.trim_end_matches('/').to_owned())
            })
        });
        let Ok(Ok(Some(base))) = tokio::time::timeout(PATIENCE, ready).await else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("automa serve exited or did not say it was running within {PATIENCE:?}");
        };
        let client = reqwest::Client::new();
        let (email, password) = ("admin@example.com", ADMIN_PASSWORD);
        if first {
            let created = client.post(format!("{base}/users")).json(&json!({"email": email, "password": password}));
            assert!(created.send().await.unwrap().status().is_success());
        }
        let login = client.post(format!("{base}/token")).form(&[("username", email), ("password", password)]);
        let token: Value = login.send().await.unwrap().json().await.unwrap();
        let token = token["access_token"].as_str().expect("signed in").to_owned();
        Server { child, base, token, data_dir: data_dir.to_path_buf(), client }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response =
            self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let response =
            self.client.put(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Queues inline Python and returns the run.
    pub async fn execute(&self, content: &str, extra: Value) -> Value {
        let mut body = json!({"content": content});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let (status, run) = self.post("/execute", body).await;
        assert_eq!(status, 202, "{run}");
        run
    }

    /// Opens a server-sent event stream.
    pub async fn events(&self, path: &str) -> Events {
        let response = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        Events { response, buffer: String::new() }
    }

    /// Follows a run's output to its end; returns the chunks and the run as it ended.
    pub async fn follow(&self, run_id: i64) -> (Vec<Value>, Value) {
        let mut events = self.events(&format!("/runs/{run_id}/logs/stream")).await;
        let mut chunks = Vec::new();
        loop {
            let (name, data) = events.next().await.expect("the stream ends with an end event");
            match name.as_str() {
                "log" => chunks.push(serde_json::from_str(&data).unwrap()),
                "end" => return (chunks, serde_json::from_str(&data).unwrap()),
                _ => {}
            }
        }
    }
}

/// A server-sent event stream.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next event's name and data; `None` when the stream closes. Panics when none comes within
    /// [`PATIENCE`] (keep-alive comments do not count): a missed event fails the test.
    pub async fn next(&mut self) -> Option<(String, String)> {
        match tokio::time::timeout(PATIENCE, self.next_unbounded()).await {
            Ok(event) => event,
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    async fn next_unbounded(&mut self) -> Option<(String, String)> {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            while let Some(newline) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=newline).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() || !name.is_empty() {
                        return Some((name, data));
                    }
                    continue;
                }
                let (key, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match key {
                    "event" => name = value.to_owned(),
                    "data" => data.push_str(value),
                    _ => {}
                }
            }
            let bytes = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
}

pub fn text_of(chunks: &[Value], stream: &str) -> String {
    chunks.iter().filter(|c| c["stream"] == stream).map(|c| c["data"].as_str().unwrap()).collect()
}

pub use crate::pg_database::postgres_url;

/// A database of its own on that server, dropped with the guard.
pub async fn fresh_database(server_url: &str) -> crate::pg_database::Database {
    crate::pg_database::Database::fresh(server_url, "automa_exec").await
}
