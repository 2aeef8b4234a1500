//! The agent protocol over HTTP(S), for `automa agent --server URL --token T`. Connections are outbound only.

use std::time::Duration;

use reqwest::{Client, StatusCode};
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
    pub fn new(server: &str, token: &str) -> Result<HttpBackend, AgentError> {
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(format!("automa-agent/{}", crate::VERSION))
            .build()
            .map_err(|e| AgentError::Transport(e.to_string()))?;
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
}
