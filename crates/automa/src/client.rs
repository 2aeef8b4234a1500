//! The HTTP side of the CLI: requests with the caller's token, the server's refusals turned into errors that
//! show its `detail` and status, answers kept both as the text that came (for `--output json`) and read into
//! the API's own types, and the live output of a run followed over its SSE stream.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde::{Serialize, de::DeserializeOwned};

use automa_core::RunStatus;
use automa_server::api::{
    Page, execute::ExecuteRequest, runs::RunResponse, scripts::ScriptResponse, tasks::TaskResponse,
};
use automa_store::LogChunk;

/// Exit codes for runs that did not exit by themselves, after the shell's conventions.
const EXIT_TIMED_OUT: i32 = 124;
const EXIT_CANCELLED: i32 = 130;

/// The most items one page of a list may hold (the API clamps `limit` to this).
const MAX_PAGE: i64 = 500;

/// The most characters of a server's text an error message quotes.
const MAX_QUOTED: usize = 300;

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
            .map(|body| quoted(&body.detail))
            .unwrap_or_else(|_| "no detail".to_owned());
        Err(Refused { status, detail }.into())
    }

    /// `reads`: the request is a GET, whose answer may be quoted in an error (see [`unexpected_answer`]).
    async fn answer<T: DeserializeOwned>(&self, request: RequestBuilder, reads: bool) -> anyhow::Result<Answer<T>> {
        let raw = self.send(request).await?.text().await?;
        let value = serde_json::from_str(&raw).map_err(|error| unexpected_answer(&raw, reads, &error))?;
        Ok(Answer { raw, value })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::GET, path).query(query), true).await
    }

    pub async fn get_text(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        Ok(self.send(self.request(Method::GET, path).query(query)).await?.text().await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::POST, path).json(body), false).await
    }

    /// A POST without a body, as `POST /runs/{id}/cancel` and `POST /tasks/{id}/execute` take.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::POST, path), false).await
    }

    pub async fn post_form<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        form: &B,
    ) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::POST, path).form(form), false).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<Answer<T>> {
        self.answer(self.request(Method::PUT, path).json(body), false).await
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
        let mut events = self.events(&format!("/runs/{run_id}/logs/stream")).await?;
        while let Some(event) = events.next().await? {
            match event.name.as_str() {
                "end" => return Ok(serde_json::from_str(&event.data)?),
                "log" => print_chunk(&serde_json::from_str(&event.data)?)?,
                _ => {}
            }
        }
        bail!("the server closed the stream before run {run_id} ended")
    }

    /// Opens a server-sent event stream, such as `/events` or `/runs/{id}/logs/stream`.
    pub async fn events(&self, path: &str) -> anyhow::Result<EventStream> {
        let response = self.send(self.request(Method::GET, path)).await?;
        Ok(EventStream { response, buffer: String::new() })
    }
}

/// A server-sent event stream, read one event at a time.
pub struct EventStream {
    response: Response,
    buffer: String,
}

impl EventStream {
    /// The next event; `None` when the server closed the stream. Keep-alive comments are skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<Sse>> {
        let mut event = Sse::default();
        loop {
            while let Some(newline) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=newline).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if !line.is_empty() {
                    event.field(line);
                } else if !event.name.is_empty() || !event.data.is_empty() {
                    return Ok(Some(event));
                }
            }
            match self.response.chunk().await? {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }
}

/// One server-sent event: its `event:` name and its `data:` lines joined.
#[derive(Default)]
pub struct Sse {
    pub name: String,
    pub data: String,
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

/// The error for an answer this version cannot read. Only the answers of reads (GET) are quoted, cut short and
/// made harmless for a terminal: the answer of a POST may be the one showing of a token just created (`POST
/// /tokens` by `automa login`, an agent's enrollment token), which must not end up on standard error, in a
/// terminal's scrollback or a CI log, while staying valid.
fn unexpected_answer(raw: &str, reads: bool, error: &serde_json::Error) -> anyhow::Error {
    let shown = if reads {
        format!("{}: {error}", quoted(raw))
    } else {
        format!("{} bytes, not shown as they may hold a new token; {error}", raw.len())
    };
    anyhow::anyhow!("the server's answer is not what this version of automa expects ({shown})")
}

/// A server's text for an error message: at most [`MAX_QUOTED`] characters, with no control characters that
/// could move the cursor or recolour the terminal.
fn quoted(text: &str) -> String {
    let mut short: String = for_terminal(text).chars().take(MAX_QUOTED).collect();
    if text.chars().count() > MAX_QUOTED {
        short.push('…');
    }
    short
}

/// `text` with control characters (other than newline and tab) shown in caret notation (`^[` for escape) or
/// as `\u{..}`, so that a script's output cannot send escape sequences to the terminal that shows it: retitle
/// the window, rewrite what is on screen, or on some terminals answer with keystrokes.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    let neutralized = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(neutralized) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !neutralized(c) => out.push(c),
            '\u{7f}' => out.push_str("^?"),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            c => out.push_str(&c.escape_unicode().to_string()),
        }
    }
    Cow::Owned(out)
}

/// Writes a script's output as it came when piped, neutralized for a terminal.
fn write_output(mut to: impl Write + IsTerminal, text: &str) -> std::io::Result<()> {
    if to.is_terminal() {
        to.write_all(for_terminal(text).as_bytes())?;
    } else {
        to.write_all(text.as_bytes())?;
    }
    to.flush()
}

/// `automa logs` without `--follow`: the whole output, neutralized when standard output is a terminal.
pub fn print_output(text: &str) -> std::io::Result<()> {
    write_output(std::io::stdout().lock(), text)
}

fn print_chunk(chunk: &LogChunk) -> anyhow::Result<()> {
    match chunk.stream.as_str() {
        "stdout" => write_output(std::io::stdout().lock(), &chunk.data)?,
        "stderr" => write_output(std::io::stderr().lock(), &chunk.data)?,
        _ => eprint!("[automa] {}", for_terminal(&chunk.data)),
    }
    Ok(())
}

/// The process exit code that reflects how a run ended.
pub fn exit_code(run: &RunResponse) -> i32 {
    match run.status {
        RunStatus::Succeeded => 0,
        RunStatus::TimedOut => EXIT_TIMED_OUT,
        RunStatus::Cancelled => EXIT_CANCELLED,
        _ => run.exit_code.and_then(|code| i32::try_from(code).ok()).filter(|code| *code != 0).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_for(raw: &str, reads: bool) -> String {
        let error = serde_json::from_str::<RunResponse>(raw).unwrap_err();
        format!("{:#}", unexpected_answer(raw, reads, &error))
    }

    #[test]
    fn an_unreadable_answer_to_a_post_is_never_quoted() {
        let created = r#"{"id":7,"name":"automa CLI","token":"atm_0123456789abcdefSECRET"}"#;
        let message = error_for(created, false);
        assert!(!message.contains("atm_") && !message.contains("SECRET"), "{message}");
        assert!(message.contains(&format!("{} bytes", created.len())), "{message}");
    }

    #[test]
    fn an_unreadable_answer_to_a_read_is_quoted_short_and_without_control_characters() {
        let raw = format!("\u{1b}]0;owned\u{7}\u{1b}[2J{}", "x".repeat(5000));
        let message = error_for(&raw, true);
        assert!(!message.chars().any(|c| c.is_control()), "{message:?}");
        assert!(message.contains("^[]0;owned^G^[[2J"), "{message}");
        assert!(message.len() < 1000 && message.contains('…'), "{} bytes", message.len());
    }

    #[test]
    fn output_for_a_terminal_keeps_lines_and_tabs_and_nothing_else_that_controls_it() {
        assert!(matches!(for_terminal("plain\ttext\n"), Cow::Borrowed(_)));
        assert_eq!(for_terminal("\u{1b}[31mred\r\u{9b}\u{7f}\n"), "^[[31mred^M\\u{9b}^?\n");
    }
}
