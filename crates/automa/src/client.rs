//! The HTTP side of the CLI: requests with the caller's token, the server's refusals turned into errors that
//! show its `detail` and status, answers kept both as the text that came (for `--output json`) and read into
//! the API's own types, and the live output of a run followed over its SSE stream.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde::{Serialize, de::DeserializeOwned};

use automa_server::api::{
    Page, execute::ExecuteRequest, runs::RunResponse, scripts::ScriptResponse, tasks::TaskResponse,
};
use automa_store::LogChunk;

/// Exit codes for runs that did not exit by themselves, after the shell's conventions.
const EXIT_TIMED_OUT: i32 = 124;
const EXIT_CANCELLED: i32 = 130;

/// The most items one page of a list may hold (the API clamps `limit` to this).
const MAX_PAGE: i64 = 500;

pub struct Api {
    client: Client,
    base: String,
    token: Option<String>,
}

/// The server's refusal of a request: its status and the `detail` of its error body.
#[derive(Debug)]
pub struct Refused {
    pub status: reqwest::StatusCode,
    pub detail: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {}: {}", self.status, self.detail)
    }
}

impl std::error::Error for Refused {}

/// An answer as it came and as the API's type reads it.
pub struct Answer<T> {
    pub raw: String,
    pub value: T,
}

impl Api {
    pub fn new(url: &str, token: Option<&str>, allow_insecure_http: bool) -> anyhow::Result<Api> {
        Ok(Api {
            client: automa_agent::client_for(url, allow_insecure_http, concat!("automa/", env!("CARGO_PKG_VERSION")))?,
            base: url.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<automa_server::error::ErrorBody>(&text)
            .map(|body| body.detail)
            .unwrap_or_else(|_| "no detail".to_owned());
        Err(Refused { status, detail }.into())
    }

    async fn answer<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<Answer<T>> {
        let raw = self.send(request).await?.text().await?;
        let value = serde_json::from_str(&raw)
            .with_context(|| format!("the server's answer is not what this version of automa expects: {raw}"))?;
        Ok(Answer { raw, value })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::GET, path).query(query)).await
    }

    pub async fn get_text(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        Ok(self.send(self.request(Method::GET, path).query(query)).await?.text().await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::POST, path).json(body)).await
    }

    /// A POST without a body, as `POST /runs/{id}/cancel` and `POST /tasks/{id}/execute` take.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::POST, path)).await
    }

    pub async fn post_form<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        form: &B,
    ) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::POST, path).form(form)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::PUT, path).json(body)).await
    }

    /// A DELETE; some answer 204 without a body, others the resource as it ended (a revoked token).
    pub async fn delete(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.send(self.request(Method::DELETE, path)).await?.text().await?)
    }

    /// The id of the item of a list whose `key` equals `wanted`: an id given as a number is taken as it is,
    /// anything else is looked up by name (with the list's `name` filter, where it has one, to narrow it).
    pub async fn resolve<T: DeserializeOwned>(
        &self,
        path: &str,
        kind: &str,
        wanted: &str,
        key: impl Fn(&T) -> (&str, i64),
    ) -> anyhow::Result<i64> {
        if let Ok(id) = wanted.parse::<i64>() {
            return Ok(id);
        }
        let mut query = vec![("limit", MAX_PAGE.to_string())];
        if matches!(path, "/scripts" | "/tasks") {
            query.push(("name", wanted.to_owned()));
        }
        let mut offset = 0;
        loop {
            let mut paged = query.clone();
            paged.push(("offset", offset.to_string()));
            let page: Page<T> = self.get(path, &paged).await?.value;
            if let Some(id) = page.items.iter().map(&key).find(|(name, _)| name.eq_ignore_ascii_case(wanted)) {
                return Ok(id.1);
            }
            offset += page.items.len() as i64;
            if page.items.is_empty() || offset >= page.total {
                bail!("no {kind} named '{wanted}'");
            }
        }
    }

    pub async fn script_id(&self, wanted: &str) -> anyhow::Result<i64> {
        self.resolve("/scripts", "script", wanted, |s: &ScriptResponse| (s.name.as_str(), s.id)).await
    }

    pub async fn task_id(&self, wanted: &str) -> anyhow::Result<i64> {
        self.resolve("/tasks", "task", wanted, |t: &TaskResponse| (t.name.as_str(), t.id)).await
    }

    /// Queues a run of a task (by id or name) or of a local `.py` file.
    pub async fn start(&self, target: &str, args: &[String]) -> anyhow::Result<Answer<RunResponse>> {
        if target.ends_with(".py") && Path::new(target).is_file() {
            let content = std::fs::read_to_string(target).with_context(|| format!("reading {target}"))?;
            let filename = Path::new(target).file_name().and_then(|n| n.to_str()).unwrap_or("main.py");
            let body = ExecuteRequest {
                content: Some(content),
                filename: Some(filename.to_owned()),
                args: args.to_vec(),
                ..ExecuteRequest::default()
            };
            return self.post("/execute", &body).await;
        }
        if !args.is_empty() {
            bail!("arguments can only be given to a script file; a task runs with its own arguments");
        }
        let id = self.task_id(target).await.map_err(|error| match target.ends_with(".py") {
            true => error.context(format!("and there is no file {target}")),
            false => error,
        })?;
        self.post_empty(&format!("/tasks/{id}/execute")).await
    }

    /// Streams the run's output until it ends and returns the run as it ended.
    pub async fn follow(&self, run_id: i64) -> anyhow::Result<RunResponse> {
        let mut response = self.send(self.request(Method::GET, &format!("/runs/{run_id}/logs/stream"))).await?;
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

fn print_chunk(chunk: &LogChunk) -> anyhow::Result<()> {
    match chunk.stream.as_str() {
        "stdout" => {
            let mut out = std::io::stdout().lock();
            out.write_all(chunk.data.as_bytes())?;
            out.flush()?;
        }
        "stderr" => std::io::stderr().write_all(chunk.data.as_bytes())?,
        _ => eprint!("[automa] {}", chunk.data),
    }
    Ok(())
}

/// The process exit code that reflects how a run ended.
pub fn exit_code(run: &RunResponse) -> i32 {
    match run.status.as_str() {
        "succeeded" => 0,
        "timed_out" => EXIT_TIMED_OUT,
        "cancelled" => EXIT_CANCELLED,
        _ => run.exit_code.and_then(|code| i32::try_from(code).ok()).filter(|code| *code != 0).unwrap_or(1),
    }
}
