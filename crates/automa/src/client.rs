//! `automa run`: the CLI client that starts a run through the REST API and, with `--follow`, streams its
//! output live (stdout to stdout, stderr to stderr) and exits with the script's exit code.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

/// Exit codes for runs that did not exit by themselves, after the shell's conventions.
const EXIT_TIMED_OUT: i32 = 124;
const EXIT_CANCELLED: i32 = 130;

pub struct Api {
    client: Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(url: &str, token: &str, allow_insecure_http: bool) -> anyhow::Result<Api> {
        Ok(Api {
            client: automa_agent::client_for(url, allow_insecure_http, concat!("automa/", env!("CARGO_PKG_VERSION")))?,
            base: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        bail!("the server answered {status}: {}", body["detail"].as_str().unwrap_or("no detail"))
    }

    async fn json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send(request).await?.json().await?)
    }

    /// Queues a run of a task (by id or name) or of a local `.py` file.
    pub async fn start(&self, target: &str, args: &[String]) -> anyhow::Result<Value> {
        let post = reqwest::Method::POST;
        if target.ends_with(".py") && Path::new(target).is_file() {
            let content = std::fs::read_to_string(target).with_context(|| format!("reading {target}"))?;
            let filename = Path::new(target).file_name().and_then(|n| n.to_str()).unwrap_or("main.py");
            let body = json!({"content": content, "filename": filename, "args": args});
            return self.json(self.request(post, "/execute").json(&body)).await;
        }
        if !args.is_empty() {
            bail!("arguments can only be given to a script file; a task runs with its own arguments");
        }
        let id = match target.parse::<i64>() {
            Ok(id) => id,
            Err(_) => self.task_id(target).await?,
        };
        self.json(self.request(post, &format!("/tasks/{id}/execute"))).await
    }

    async fn task_id(&self, name: &str) -> anyhow::Result<i64> {
        let page =
            self.json(self.request(reqwest::Method::GET, "/tasks").query(&[("name", name), ("limit", "500")])).await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .find(|task| task["name"] == name)
            .and_then(|task| task["id"].as_i64())
            .with_context(|| format!("no task named '{name}' (and no such .py file)"))
    }

    /// Streams the run's output until it ends and returns the run as it ended.
    pub async fn follow(&self, run_id: i64) -> anyhow::Result<Value> {
        let mut response =
            self.send(self.request(reqwest::Method::GET, &format!("/runs/{run_id}/logs/stream"))).await?;
        let mut buffer = String::new();
        let mut event = Sse::default();
        while let Some(bytes) = response.chunk().await? {
            buffer.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(newline) = buffer.find('\n') {
                let line: String = buffer.drain(..=newline).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if !line.is_empty() {
                    event.field(line);
                    continue;
                }
                match std::mem::take(&mut event) {
                    Sse { name, data } if name == "end" => return Ok(serde_json::from_str(&data)?),
                    Sse { name, data } if name == "log" => print_chunk(&serde_json::from_str(&data)?)?,
                    _ => {}
                }
            }
        }
        bail!("the server closed the stream before run {run_id} ended")
    }
}

#[derive(Default)]
struct Sse {
    name: String,
    data: String,
}

impl Sse {
    fn field(&mut self, line: &str) {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match key {
            "event" => self.name = value.to_owned(),
            "data" if self.data.is_empty() => self.data = value.to_owned(),
            "data" => {
                self.data.push('\n');
                self.data.push_str(value);
            }
            _ => {}
        }
    }
}

fn print_chunk(chunk: &Value) -> anyhow::Result<()> {
    let data = chunk["data"].as_str().unwrap_or_default();
    match chunk["stream"].as_str() {
        Some("stdout") => {
            let mut out = std::io::stdout().lock();
            out.write_all(data.as_bytes())?;
            out.flush()?;
        }
        Some("stderr") => std::io::stderr().write_all(data.as_bytes())?,
        _ => eprint!("[automa] {data}"),
    }
    Ok(())
}

/// The process exit code that reflects how a run ended.
pub fn exit_code(run: &Value) -> i32 {
    match run["status"].as_str() {
        Some("succeeded") => 0,
        Some("timed_out") => EXIT_TIMED_OUT,
        Some("cancelled") => EXIT_CANCELLED,
        _ => run["exit_code"].as_i64().and_then(|code| i32::try_from(code).ok()).filter(|code| *code != 0).unwrap_or(1),
    }
}
