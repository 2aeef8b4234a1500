//! The agent protocol over HTTP(S), for `AUTOMA_TOKEN=T automa agent --server URL`. Connections are outbound
//! only. The agent's token and every run's secrets travel on this connection, so plain `http://` is refused
//! unless the server is on this host's loopback or the operator explicitly allows it.

use std::time::Duration;

use reqwest::{Client, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};

use crate::backend::{AgentBackend, AgentError};
use crate::protocol::{Assignment, ClaimRequest, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome};

pub struct HttpBackend {
    client: Client,
    base: String,
    token: String,
}

/// Time allowed for a request beyond the time the server may hold it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl HttpBackend {
    /// A backend for `server`, which must be `https://`, or `http://` on loopback, or `http://` anywhere with
    /// `allow_insecure_http`.
    pub fn new(server: &str, token: &str, allow_insecure_http: bool) -> Result<HttpBackend, AgentError> {
        let client = client_for(server, allow_insecure_http, &format!("automa-agent/{}", crate::VERSION))?;
        Ok(HttpBackend { client, base: server.trim_end_matches('/').to_owned(), token: token.to_owned() })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, AgentError> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
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
    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<HeartbeatReply, AgentError> {
        self.post_some("/agent/heartbeat", &heartbeat).await
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
}
