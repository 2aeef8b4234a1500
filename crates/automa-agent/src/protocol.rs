//! The messages of the agent protocol (DESIGN §6). The server's `/agent/...` routes and the in-process backend
//! exchange exactly these types, so both agents follow one set of rules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{Args, Limits, RunStatus};

/// Sent at start-up (`initial`) and then periodically.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    /// The first heartbeat after the agent started: the server marks runs it held before as lost.
    #[serde(default)]
    pub initial: bool,
    pub hostname: String,
    pub version: String,
    /// The sandbox layers this host offers, and why runs are refused if they are.
    #[schema(value_type = Object)]
    pub capabilities: serde_json::Value,
    /// Runs this agent is executing; their leases are renewed.
    #[serde(default)]
    pub running: Vec<i64>,
    /// How many runs this agent executes at once (`automa agent --concurrency`, `AUTOMA_AGENT_CONCURRENCY`),
    /// 1-1024. The server grants at most this, within the admin's cap. Absent from older agents: the cap alone
    /// decides.
    #[serde(default)]
    pub concurrency: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// How long a lease lasts; the agent heartbeats several times within it.
    pub lease_seconds: u64,
    /// Runs whose cancellation was requested.
    pub cancel: Vec<i64>,
    /// Runs the server no longer counts as this agent's (finished or lost): stop them.
    pub gone: Vec<i64>,
    /// The runs this agent may hold at once: its reported concurrency within the admin's cap. The agent claims
    /// only below it. Absent from older servers: the agent's own concurrency applies.
    #[serde(default)]
    pub max_concurrency: Option<i64>,
    /// How often the agent heartbeats while it runs nothing: often enough to be seen online. Absent from older
    /// servers: a third of the lease.
    #[serde(default)]
    pub idle_heartbeat_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimRequest {
    /// How long the server may hold the request when no run is waiting (at most 60 s).
    pub wait_seconds: u64,
}

/// A claimed run: everything the agent needs to execute it.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub run_id: i64,
    pub attempt: i64,
    pub filename: String,
    pub content: String,
    #[schema(value_type = Vec<String>)]
    pub args: Args,
    /// The task's environment and its secrets' values. A plain map, not the validated environment of the run's
    /// parameters: the secrets are resolved only when the run is handed out, and join it here.
    pub env: BTreeMap<String, String>,
    /// The run's limits, as the fields `timeout_seconds`, `memory_mb`, `cpu_seconds` and `max_output_bytes` of
    /// this object, as agents of every version expect them.
    #[serde(flatten)]
    pub limits: Limits,
    pub network: bool,
    /// The run asks for a warm start: the agent hands it to a sandbox prepared before it came when it can,
    /// isolated like any other. Absent when false, so the assignments of other runs keep their shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// The run's output already stored (a run handed back by an agent that shut down, claimed again): this
    /// execution numbers its chunks after it, so they follow the earlier output instead of being taken for
    /// resends of it.
    #[serde(default)]
    pub last_log_seq: i64,
    /// The JSON body of the hook call that started the run: the sandbox writes it to a read-only file and
    /// names it in `AUTOMA_TRIGGER_PAYLOAD`. Absent for other runs (and from servers that predate hooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Milliseconds the server held the claim before it granted this run and took its lease. The agent adds
    /// it to the moment it sent the claim to get a moment no later than the lease's start, which a long poll
    /// would otherwise push far into the past. Absent from servers that predate it: the agent then counts the
    /// lease from the answer's arrival, moments after the server took it (within the fence's margin), since
    /// counting from the claim's sending would fence every run that followed a long wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<i64>,
    /// Set when the script version has dependencies; absent for standard-library scripts, so their
    /// assignments keep the shape agents from before dependencies read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentSpec>,
}

/// The packages a run needs, as the server locked them when the script version was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentSpec {
    /// `uv pip compile --universal --generate-hashes` output: every package pinned with its hashes.
    pub lock: String,
    /// The script's `requires-python`, checked against the agent's interpreter before building.
    #[serde(default)]
    pub requires_python: Option<String>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment holds secret values: never print it.
        f.debug_struct("Assignment")
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// One numbered piece of output. Numbers start at 1 and increase by one per chunk of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WireChunk {
    pub seq: i64,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// When the agent read the output from the script (the agent's clock).
    pub ts: DateTime<Utc>,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogBatch {
    pub chunks: Vec<WireChunk>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LogsReply {
    pub cancel_requested: bool,
}

/// How a run ended, as the sandbox reported it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub cancelled: bool,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub output_limit_exceeded: bool,
    pub max_rss_kb: Option<i64>,
    pub cpu_ms: Option<i64>,
    pub output_bytes: Option<i64>,
    #[serde(default)]
    pub truncated: bool,
    /// Why the run could not be executed or was stopped, when it was.
    pub error: Option<String>,
    /// The agent gave the run up (it shut down before the run ended). Agents hand such runs back instead
    /// (`/agent/runs/{id}/hand-back`); the server treats this flag the same way, for agents that send it.
    #[serde(default)]
    pub abandoned: bool,
    /// Milliseconds from starting the run's sandbox until its script was started in it, when the agent knows.
    #[serde(default)]
    pub setup_ms: Option<i64>,
    /// The agent stopped the run because it could not renew the run's lease in time (the server was
    /// unreachable), before the lease could expire and the run be given to another agent. The run ends `lost`
    /// (and is retried like any lost run).
    #[serde(default)]
    pub lease_lost: bool,
    /// How long the run took on the agent, in milliseconds, measured with a monotonic clock. The server
    /// stores `started_at` this long before `finished_at` (within what it saw). At most ten years.
    #[serde(default)]
    pub elapsed_ms: Option<i64>,
    /// How many milliseconds before this report was sent the run ended, recomputed on every attempt to
    /// deliver it. The server stores `finished_at` this long before it received the report (within what it
    /// saw), so a result delivered after an outage keeps the time the run really ended. At most ten years.
    #[serde(default)]
    pub ended_ms_ago: Option<i64>,
    /// How long preparing the run's environment took: 0 when it was cached, absent without dependencies.
    #[serde(default)]
    pub environment_ms: Option<i64>,
    /// The run was handed to a sandbox prepared before it came. Absent for a cold start, so reports stay as
    /// agents before warm starts sent them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm_start: bool,
}

impl Outcome {
    /// The status the run ends with. Cancellation wins over how the killed process exited; a timeout over a
    /// failure.
    pub fn status(&self) -> RunStatus {
        if self.abandoned || self.lease_lost {
            RunStatus::Lost
        } else if self.cancelled {
            RunStatus::Cancelled
        } else if self.timed_out {
            RunStatus::TimedOut
        } else if self.exit_code == Some(0) && self.error.is_none() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        }
    }

    /// A human explanation for runs that did not simply exit.
    pub fn explanation(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(error.clone());
        }
        if self.oom_killed {
            Some("killed: out of memory".into())
        } else if self.output_limit_exceeded {
            Some("killed: wrote far more output than its limit".into())
        } else if self.timed_out {
            Some("killed: ran past its time limit".into())
        } else {
            self.signal.map(|signal| format!("killed by signal {signal}"))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FinishReply {
    /// The run's status after the report (unchanged when the run had already ended).
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An assignment exactly as servers serialized it before its limits were one type, field order included:
    /// agents and servers of either age read each other's.
    const ASSIGNMENT_BEFORE_RUN_PARAMS: &str = r#"{"run_id":7,"attempt":1,"filename":"main.py","content":"print(1)","args":["a"],"env":{"TOKEN":"s"},"timeout_seconds":60,"memory_mb":256,"cpu_seconds":30,"max_output_bytes":4096,"network":true,"last_log_seq":0,"held_ms":5}"#;

    #[test]
    fn assignment_keeps_its_wire_shape() {
        let assignment: Assignment = serde_json::from_str(ASSIGNMENT_BEFORE_RUN_PARAMS).unwrap();
        assert_eq!(assignment.limits, Limits::new(60, 256, 30, 4096).unwrap());
        assert_eq!(assignment.args.as_slice(), ["a"]);
        assert_eq!(serde_json::to_string(&assignment).unwrap(), ASSIGNMENT_BEFORE_RUN_PARAMS);
    }

    #[test]
    fn only_a_warm_assignment_says_so() {
        let cold: Assignment = serde_json::from_str(ASSIGNMENT_BEFORE_RUN_PARAMS).unwrap();
        assert!(!cold.warm);
        let warm_wire = ASSIGNMENT_BEFORE_RUN_PARAMS.replace(r#""network":true,"#, r#""network":true,"warm":true,"#);
        let warm: Assignment = serde_json::from_str(&warm_wire).unwrap();
        assert!(warm.warm);
        assert_eq!(serde_json::to_string(&warm).unwrap(), warm_wire);
        assert_eq!(serde_json::to_string(&Assignment { warm: false, ..warm }).unwrap(), ASSIGNMENT_BEFORE_RUN_PARAMS);
    }

    #[test]
    fn a_cold_outcome_keeps_its_wire_shape() {
        let cold = serde_json::to_value(Outcome { exit_code: Some(0), ..Outcome::default() }).unwrap();
        assert!(cold.get("warm_start").is_none(), "{cold}");
        let warm = serde_json::to_value(Outcome { warm_start: true, ..Outcome::default() }).unwrap();
        assert_eq!(warm["warm_start"], true);
        assert!(serde_json::from_value::<Outcome>(warm).unwrap().warm_start);
    }

    #[test]
    fn assignment_with_invalid_limits_is_refused_naming_the_field() {
        let invalid = ASSIGNMENT_BEFORE_RUN_PARAMS.replace(r#""memory_mb":256"#, r#""memory_mb":0"#);
        let error = serde_json::from_str::<Assignment>(&invalid).unwrap_err();
        assert!(error.to_string().contains("memory_mb"), "{error}");
    }

    #[test]
    fn outcome_status_precedence() {
        let cancelled = Outcome { cancelled: true, signal: Some(9), ..Outcome::default() };
        assert_eq!(cancelled.status(), RunStatus::Cancelled);
        let timed_out = Outcome { timed_out: true, signal: Some(9), ..Outcome::default() };
        assert_eq!(timed_out.status(), RunStatus::TimedOut);
        assert_eq!(Outcome { exit_code: Some(0), ..Outcome::default() }.status(), RunStatus::Succeeded);
        assert_eq!(Outcome { exit_code: Some(3), ..Outcome::default() }.status(), RunStatus::Failed);
        let abandoned = Outcome { abandoned: true, cancelled: true, ..Outcome::default() };
        assert_eq!(abandoned.status(), RunStatus::Lost);
        let fenced = Outcome { lease_lost: true, cancelled: true, signal: Some(9), ..Outcome::default() };
        assert_eq!(fenced.status(), RunStatus::Lost);
    }
}
