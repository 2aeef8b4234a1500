//! The agent protocol over HTTP(S), for `AUTOMA_TOKEN=T automa agent --server URL [--server URL2 ...]`.
//! Connections are outbound only. The agent's token and every run's secrets travel on these connections, so
//! plain `http://` is refused unless the server is on this host's loopback or the operator explicitly allows it.
//! With several server URLs (servers sharing one database), the agent keeps using the one that answers and
//! moves to the next when a request cannot reach it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Client, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};

use crate::backend::{AgentBackend, AgentError};
use crate::protocol::{Assignment, ClaimRequest, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome};

/// One server URL and the client that carries the token to it (and nowhere else).
struct Endpoint {
    base: String,
    client: Client,
}

pub struct HttpBackend {
    endpoints: Vec<Endpoint>,
    current: Rotation,
    token: String,
}

/// Time allowed for a request beyond the time the server may hold it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A goodbye is a courtesy at shutdown: an unreachable server must not hold the agent up.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which of several servers requests go to. Requests run concurrently (heartbeats, claims, output of several
/// runs), so when a server goes down several of them fail at about the same time: each moves the index on only
/// from the index it used, so those failures move it once, not once each (which could skip the server that
/// answers, or flap between two).
struct Rotation {
    current: AtomicUsize,
    len: usize,
}

impl Rotation {
    fn new(len: usize) -> Rotation {
        Rotation { current: AtomicUsize::new(0), len: len.max(1) }
    }

    fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// Moves on from `failed`, the index a failed request used; the new index when this call moved it, `None`
    /// when another request already had (or there is nowhere else to go).
    fn advance_from(&self, failed: usize) -> Option<usize> {
        if self.len < 2 {
            return None;
        }
        let next = (failed + 1) % self.len;
        self.current.compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| next)
    }
}

impl HttpBackend {
    /// A backend for `servers` (from [`parse_server_urls`]), tried in order, each `https://`, or `http://` on
    /// loopback, or `http://` anywhere with `allow_insecure_http`.
    pub fn new(servers: &[Url], token: &str, allow_insecure_http: bool) -> Result<HttpBackend, AgentError> {
        if servers.is_empty() {
            return Err(AgentError::Config("no server URL given".into()));
        }
        let user_agent = format!("automa-agent/{}", crate::VERSION);
        let endpoints = servers
            .iter()
            .map(|url| {
                let base = url.as_str().trim_end_matches('/').to_owned();
                Ok(Endpoint { client: client_for(&base, allow_insecure_http, &user_agent)?, base })
            })
            .collect::<Result<Vec<_>, AgentError>>()?;
        Ok(HttpBackend { current: Rotation::new(endpoints.len()), endpoints, token: token.to_owned() })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, AgentError> {
        let index = self.current.current();
        let result = self.post_to(&self.endpoints[index], path, body, timeout).await;
        if let Err(error) = &result
            && unreachable(error)
            && let Some(next) = self.current.advance_from(index)
        {
            tracing::warn!(from = %self.endpoints[index].base, to = %self.endpoints[next].base, %error,
                "the server cannot be reached; switching to the next server URL");
        }
        result
    }

    async fn post_to<B: Serialize, R: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, AgentError> {
        let response = endpoint
            .client
            .post(format!("{}{path}", endpoint.base))
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let detail = body["detail"].as_str().unwrap_or("no detail").to_owned();
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                return Err(AgentError::Refused { status: status.as_u16(), detail });
            }
            return Err(AgentError::Rejected { status: status.as_u16(), detail });
        }
        response.json().await.map(Some).map_err(|e| AgentError::Transport(e.to_string()))
    }

    async fn post_some<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, AgentError> {
        self.post(path, body, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| AgentError::Transport(format!("{path} answered without a body")))
    }
}

/// A failure that says nothing about the request, only that this server cannot serve it now: another server
/// URL may. (A gateway's 502/503/504 stands for a server behind it that is down or overloaded.)
fn unreachable(error: &AgentError) -> bool {
    match error {
        AgentError::Transport(_) => true,
        AgentError::Rejected { status, .. } => matches!(status, 502..=504),
        AgentError::Refused { .. } | AgentError::Config(_) => false,
    }
}

/// The server URLs given to `automa agent`: each value may be a comma-separated list. Every URL is checked
/// (see [`parse_server_url`]); at least one is needed and none may repeat.
pub fn parse_server_urls(values: &[String], allow_insecure_http: bool) -> Result<Vec<Url>, AgentError> {
    let mut urls: Vec<Url> = Vec::new();
    for text in values.iter().flat_map(|value| value.split(',')).map(str::trim) {
        if text.is_empty() {
            return Err(AgentError::Config(format!(
                "an empty server URL in '{}': separate URLs with one comma, or repeat --server",
                values.join(",")
            )));
        }
        let url = parse_server_url(text, allow_insecure_http)?;
        if urls.contains(&url) {
            return Err(AgentError::Config(format!("the server URL '{text}' is given twice")));
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err(AgentError::Config("no server URL: pass --server URL (or set AUTOMA_URL)".into()));
    }
    Ok(urls)
}

/// One server URL: absolute, with a scheme and a host, without credentials (the token travels in its own
/// header, from AUTOMA_TOKEN or --token-file), a query or a fragment (the agent appends its own paths), and
/// on a transport [`check_transport`] accepts.
pub fn parse_server_url(text: &str, allow_insecure_http: bool) -> Result<Url, AgentError> {
    let invalid = |why: &str| AgentError::Config(format!("the server URL '{text}' {why}"));
    if !text.contains("://") {
        return Err(invalid(&format!("has no scheme: write http://{text} (loopback) or https://{text}")));
    }
    let url = Url::parse(text).map_err(|e| invalid(&format!("is invalid: {e}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "carries credentials: remove them; the agent's token goes in AUTOMA_TOKEN or --token-file",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("has a query or a fragment: give the server's base URL only"));
    }
    check_transport(url.as_str(), allow_insecure_http)?;
    Ok(url)
}

/// An HTTP client that carries a token to `server` and nowhere else: the transport is checked first; redirects
/// are not followed (the protocol has none, and a bearer token must not follow one to another host); and for
/// plain http:// on loopback no proxy from the environment is used and `localhost` is pinned to 127.0.0.1,
/// since either would carry the token in clear past this host.
pub fn client_for(server: &str, allow_insecure_http: bool, user_agent: &str) -> Result<Client, AgentError> {
    check_transport(server, allow_insecure_http)?;
    let mut builder = Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none());
    if Url::parse(server).is_ok_and(|url| is_loopback(&url)) {
        builder = builder.no_proxy().resolve("localhost", std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    builder.build().map_err(|e| AgentError::Transport(e.to_string()))
}

/// Refuses a server URL on which the token and secrets would cross a network in clear, unless allowed.
pub fn check_transport(server: &str, allow_insecure_http: bool) -> Result<(), AgentError> {
    let url =
        Url::parse(server).map_err(|e| AgentError::Config(format!("the server URL '{server}' is invalid: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(&url) => {
            if !is_loopback(&url) {
                tracing::warn!(%server, "plain http:// to another host: the token and secrets travel in clear");
            }
            Ok(())
        }
        "http" => Err(AgentError::Config(format!(
            "refusing plain http:// to {server}: the token and run secrets would travel in clear. Use https://, \
             or --allow-insecure-http (AUTOMA_ALLOW_INSECURE_HTTP=true) on a network you trust"
        ))),
        other => Err(AgentError::Config(format!("the server URL '{server}' must be https:// (not {other}://)"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

impl AgentBackend for HttpBackend {
    async fn heartbeat(&self, heartbeat: Heartbeat, patience: Duration) -> Result<HeartbeatReply, AgentError> {
        self.post("/agent/heartbeat", &heartbeat, patience)
            .await?
            .ok_or_else(|| AgentError::Transport("/agent/heartbeat answered without a body".into()))
    }

    async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, AgentError> {
        let request = ClaimRequest { wait_seconds: wait.as_secs() };
        self.post("/agent/claim", &request, wait + REQUEST_TIMEOUT).await
    }

    async fn append_logs(&self, run_id: i64, batch: LogBatch) -> Result<LogsReply, AgentError> {
        self.post_some(&format!("/agent/runs/{run_id}/logs"), &batch).await
    }

    async fn finish(&self, run_id: i64, outcome: Outcome) -> Result<FinishReply, AgentError> {
        self.post_some(&format!("/agent/runs/{run_id}/finish"), &outcome).await
    }

    async fn hand_back(&self, run_id: i64) -> Result<FinishReply, AgentError> {
        self.post_some(&format!("/agent/runs/{run_id}/hand-back"), &serde_json::json!({})).await
    }

    async fn goodbye(&self) -> Result<(), AgentError> {
        self.post::<_, serde_json::Value>("/agent/goodbye", &serde_json::json!({}), GOODBYE_TIMEOUT).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback_unless_allowed() {
        for allowed in [
            "https://automa.example.com",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:80",
            "http://localhost:8080/",
        ] {
            assert!(check_transport(allowed, false).is_ok(), "{allowed}");
        }
        for refused in
            ["http://automa.example.com", "http://10.0.0.5:8080", "http://[fe80::1]", "http://localhost.evil.com"]
        {
            let error = check_transport(refused, false).unwrap_err().to_string();
            assert!(
                error.contains("refusing plain http://") && error.contains("--allow-insecure-http"),
                "{refused}: {error}"
            );
            assert!(check_transport(refused, true).is_ok(), "{refused} when explicitly allowed");
        }
        assert!(
            check_transport("ftp://automa.example.com", true).unwrap_err().to_string().contains("must be https://")
        );
        assert!(check_transport("automa.example.com:8080", true).is_err());
    }

    fn refusal(values: &[&str]) -> String {
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        parse_server_urls(&values, false).unwrap_err().to_string()
    }

    #[test]
    fn server_urls_are_repeated_or_comma_separated_and_each_is_checked() {
        let values =
            ["http://127.0.0.1:1/".to_owned(), " https://a.example.com , https://b.example.com/automa".to_owned()];
        let urls: Vec<String> = parse_server_urls(&values, false).unwrap().iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, ["http://127.0.0.1:1/", "https://a.example.com/", "https://b.example.com/automa"]);

        assert_eq!(
            refusal(&["127.0.0.1:18081"]),
            "the server URL '127.0.0.1:18081' has no scheme: write http://127.0.0.1:18081 (loopback) or \
             https://127.0.0.1:18081"
        );
        // Without the check `localhost:8080` parses as a URL whose scheme is `localhost`.
        assert!(refusal(&["localhost:8080"]).contains("has no scheme"));
        assert!(refusal(&["https://a.example.com,127.0.0.1:1"]).contains("'127.0.0.1:1' has no scheme"));
        assert!(refusal(&["https://a.example.com,"]).contains("an empty server URL"));
        assert!(refusal(&[""]).contains("an empty server URL"));
        assert!(refusal(&["https://a.example.com/?x=1"]).contains("has a query or a fragment"));
        assert!(refusal(&["https://a.example.com/#top"]).contains("has a query or a fragment"));
        assert!(refusal(&["https://me:pw@a.example.com"]).contains("carries credentials"));
        assert!(refusal(&["https://me@a.example.com"]).contains("carries credentials"));
        assert!(refusal(&["https://a.example.com", "https://a.example.com/"]).contains("given twice"));
        assert!(refusal(&["http://"]).contains("is invalid"));
        assert!(refusal(&[]).contains("no server URL"));
        // The transport rule holds for every URL of the list, not just the first.
        assert!(refusal(&["https://a.example.com", "http://b.example.com"]).contains("refusing plain http://"));
        let insecure = ["https://a.example.com".to_owned(), "http://b.example.com".to_owned()];
        assert!(parse_server_urls(&insecure, true).is_ok());
    }

    #[test]
    fn concurrent_failures_on_one_server_move_on_once() {
        let rotation = Rotation::new(3);
        assert_eq!(rotation.current(), 0);
        // Three requests that all used server 0 fail: the first moves to 1, the others change nothing.
        assert_eq!(rotation.advance_from(0), Some(1));
        assert_eq!(rotation.advance_from(0), None);
        assert_eq!(rotation.advance_from(0), None);
        assert_eq!(rotation.current(), 1);
        assert_eq!(rotation.advance_from(1), Some(2));
        // Past the last it wraps to the first.
        assert_eq!(rotation.advance_from(2), Some(0));
        assert_eq!(rotation.current(), 0);
        // A single server has nowhere to go.
        let single = Rotation::new(1);
        assert_eq!(single.advance_from(0), None);
        assert_eq!(single.current(), 0);
    }

    #[test]
    fn concurrent_failures_from_many_threads_move_on_exactly_once() {
        let rotation = std::sync::Arc::new(Rotation::new(2));
        let moved: usize = (0..16)
            .map(|_| {
                let rotation = rotation.clone();
                std::thread::spawn(move || usize::from(rotation.advance_from(0).is_some()))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .sum();
        assert_eq!(moved, 1);
        assert_eq!(rotation.current(), 1);
    }

    #[test]
    fn only_failures_that_say_nothing_about_the_request_move_to_another_server() {
        assert!(unreachable(&AgentError::Transport("connection refused".into())));
        for status in [502, 503, 504] {
            assert!(unreachable(&AgentError::Rejected { status, detail: String::new() }), "{status}");
        }
        for status in [400, 404, 409, 422, 500] {
            assert!(!unreachable(&AgentError::Rejected { status, detail: String::new() }), "{status}");
        }
        assert!(!unreachable(&AgentError::Refused { status: 401, detail: String::new() }));
    }

    #[tokio::test]
    async fn a_request_that_cannot_connect_moves_to_the_next_server() {
        // A port nothing listens on: bound, then closed.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let servers = parse_server_urls(&[format!("http://{dead},http://127.0.0.1:9")], false).unwrap();
        let backend = HttpBackend::new(&servers, "atma_test", false).unwrap();
        let error = backend.claim(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(error, AgentError::Transport(_)), "{error}");
        assert_eq!(backend.current.current(), 1);
    }
}
