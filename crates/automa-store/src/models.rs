//! The records the store reads and writes. Their field names are the API's field names (DESIGN §8), so the
//! server can return most of them as they are.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use automa_core::{Labels, Role, RunParams, RunStatus, Schedule, Trigger};

/// Who made a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `user`, `agent`, `system` or `anonymous` (a failed login, the first-user setup).
    pub actor_type: &'static str,
    pub actor_id: Option<String>,
    pub ip: Option<String>,
}

impl Actor {
    pub fn user(id: i64, ip: Option<String>) -> Actor {
        Actor { actor_type: "user", actor_id: Some(id.to_string()), ip }
    }
    pub fn agent(id: i64, ip: Option<String>) -> Actor {
        Actor { actor_type: "agent", actor_id: Some(id.to_string()), ip }
    }
    pub fn system() -> Actor {
        Actor { actor_type: "system", actor_id: None, ip: None }
    }
    pub fn anonymous(ip: Option<String>) -> Actor {
        Actor { actor_type: "anonymous", actor_id: None, ip }
    }
    /// A webhook that started a run: its token is the credential, so the hook is who acted.
    pub fn hook(id: i64, ip: Option<String>) -> Actor {
        Actor { actor_type: "hook", actor_id: Some(id.to_string()), ip }
    }
}

/// What a change was, for the audit log. `details` never holds a secret.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub action: String,
    pub resource_type: &'static str,
    pub resource_id: Option<String>,
    pub details: Value,
}

impl AuditEvent {
    pub fn new(
        action: impl Into<String>,
        resource_type: &'static str,
        resource_id: Option<i64>,
        details: Value,
    ) -> Self {
        AuditEvent { action: action.into(), resource_type, resource_id: resource_id.map(|id| id.to_string()), details }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Sessions issued under an older epoch are refused; bumped to sign the user out everywhere.
    pub session_epoch: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub active: Option<bool>,
}

impl UserUpdate {
    /// Whether the update ends the user's sessions: a new password (whoever knew the old one may hold a
    /// session), and a deactivation (so that reactivating does not bring old sessions back to life).
    pub fn ends_sessions(&self) -> bool {
        self.password_hash.is_some() || self.active == Some(false)
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiToken {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub prefix: String,
    pub role_cap: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub user_id: i64,
    pub name: String,
    pub token_hash: String,
    pub prefix: String,
    pub role_cap: Option<Role>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Agent {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub labels: Json<Vec<String>>,
    pub max_concurrency: i64,
    pub disabled: bool,
    pub draining: bool,
    pub embedded: bool,
    pub hostname: Option<String>,
    pub version: Option<String>,
    pub capabilities: Json<Value>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// When the agent said goodbye or was found silent past the offline threshold; its next heartbeat clears it.
    pub disconnected_at: Option<DateTime<Utc>>,
    /// The runs at once the agent reports it has (its `--concurrency`); `None` until it reported them.
    pub slots: Option<i64>,
    /// When the agent was retired: its record stays for the runs that name it, but it is refused.
    pub retired_at: Option<DateTime<Utc>>,
}

impl Agent {
    /// How many runs the agent may hold at once: what it runs, within the admin's cap. An agent that has not
    /// reported its slots (never seen, or older than the report) gets the cap.
    pub fn effective_concurrency(&self) -> i64 {
        self.slots.map_or(self.max_concurrency, |slots| slots.min(self.max_concurrency))
    }

    /// Whether the agent last reported a uv to build environments with (`capabilities.packages.uv`), so that it
    /// may take runs whose script has a lock; the claim statement applies the same rule.
    pub fn builds_environments(&self) -> bool {
        self.capabilities.0.pointer("/packages/uv").is_some_and(Value::is_string)
    }

    /// An agent is online while its heartbeats keep coming and it has not said goodbye; admin states win over
    /// liveness.
    pub fn status(&self, now: DateTime<Utc>, offline_after: chrono::Duration) -> &'static str {
        if self.retired_at.is_some() {
            "retired"
        } else if self.disabled {
            "disabled"
        } else if self.disconnected_at.is_some() || self.last_seen_at.is_none_or(|seen| now - seen > offline_after) {
            "offline"
        } else if self.draining {
            "draining"
        } else {
            "online"
        }
    }
}

/// Something that happened to an agent, for its history on the dashboard.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AgentEvent {
    pub id: i64,
    pub agent_id: i64,
    pub at: DateTime<Utc>,
    /// `online`, `reconnected`, `offline`, `goodbye`, `refused` or `run_lost`.
    pub kind: String,
    pub detail: String,
}

/// The kinds of [`AgentEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEventKind {
    /// The agent started (its initial heartbeat).
    Online,
    /// The first heartbeat after the agent was offline or had said goodbye, without a restart.
    Reconnected,
    /// No heartbeat came for longer than the offline threshold.
    Offline,
    /// The agent stopped cleanly and said so.
    Goodbye,
    /// The server refused the agent's token (disabled or retired).
    Refused,
    /// A run the agent held was marked lost.
    RunLost,
}

impl AgentEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentEventKind::Online => "online",
            AgentEventKind::Reconnected => "reconnected",
            AgentEventKind::Offline => "offline",
            AgentEventKind::Goodbye => "goodbye",
            AgentEventKind::Refused => "refused",
            AgentEventKind::RunLost => "run_lost",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub description: String,
    pub labels: Vec<String>,
    pub max_concurrency: i64,
    pub token_hash: String,
    pub embedded: bool,
}

#[derive(Debug, Clone, Default)]
pub struct AgentUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Vec<String>>,
    pub max_concurrency: Option<i64>,
    pub disabled: Option<bool>,
    pub draining: Option<bool>,
}

/// A script with the content of its current version.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Script {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub filename: String,
    pub content: String,
    pub version: i64,
    pub sha256: String,
    pub size: i64,
    /// The current version's packages.
    #[sqlx(flatten)]
    pub packages: ScriptPackages,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ScriptVersion {
    pub script_id: i64,
    pub version: i64,
    pub content: String,
    pub sha256: String,
    pub size: i64,
    #[sqlx(flatten)]
    pub packages: ScriptPackages,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// The packages a script version needs: its PEP 508 requirements, its `requires-python`, and the lock the
/// server resolved them into when the version was saved (`None` without requirements).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ScriptPackages {
    pub dependencies: Json<Vec<String>>,
    pub requires_python: Option<String>,
    pub lock: Option<String>,
}

impl ScriptPackages {
    pub fn new(dependencies: Vec<String>, requires_python: Option<String>, lock: Option<String>) -> ScriptPackages {
        ScriptPackages { dependencies: Json(dependencies), requires_python, lock }
    }
}

#[derive(Debug, Clone)]
pub struct NewScript {
    pub name: String,
    pub description: String,
    pub filename: String,
    pub content: String,
    pub packages: ScriptPackages,
}

#[derive(Debug, Clone, Default)]
pub struct ScriptUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub filename: Option<String>,
    pub content: Option<String>,
    /// New packages: with `content`, or alone, they append a version when they differ from the current ones.
    pub packages: Option<ScriptPackages>,
    /// Refuse the update (409) unless the script is still at this version: for changes computed from it.
    pub expected_version: Option<i64>,
}

/// The columns a task and a run keep their [`RunParams`] in, read back through the same checks as the API's
/// input, so a row the checks would refuse is an error rather than a run with invalid parameters.
#[derive(sqlx::FromRow)]
pub struct RunParamsColumns {
    args: Json<Vec<String>>,
    env: Json<std::collections::BTreeMap<String, String>>,
    secrets: Json<Vec<String>>,
    timeout_seconds: i64,
    memory_mb: i64,
    cpu_seconds: i64,
    max_output_bytes: i64,
    network: bool,
    warm: bool,
}

impl TryFrom<RunParamsColumns> for RunParams {
    type Error = automa_core::InvalidField;

    fn try_from(columns: RunParamsColumns) -> Result<Self, Self::Error> {
        let limits = automa_core::Limits::new(
            columns.timeout_seconds,
            columns.memory_mb,
            columns.cpu_seconds,
            columns.max_output_bytes,
        )?;
        RunParams::new(
            automa_core::Args::parse(columns.args.0)?,
            automa_core::EnvVars::parse(columns.env.0)?,
            automa_core::SecretNames::parse(columns.secrets.0)?,
            limits,
            columns.network,
        )
        .map(|params| params.with_warm(columns.warm))
    }
}

/// Binds a [`RunParams`] to nine consecutive placeholders, in the order of [`RunParamsColumns`]: `args, env,
/// secrets, timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm`.
pub(crate) trait BindRunParams<'q> {
    fn bind_run_params(self, params: &'q RunParams) -> Self;
}

impl<'q, DB, O> BindRunParams<'q> for sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    Json<&'q automa_core::Args>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Json<&'q automa_core::EnvVars>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Json<&'q automa_core::SecretNames>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn bind_run_params(self, params: &'q RunParams) -> Self {
        let limits = params.limits();
        self.bind(Json(params.args()))
            .bind(Json(params.env()))
            .bind(Json(params.secrets()))
            .bind(limits.timeout_seconds())
            .bind(limits.memory_mb())
            .bind(limits.cpu_seconds())
            .bind(limits.max_output_bytes())
            .bind(params.network())
            .bind(params.warm())
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Task {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub script_id: i64,
    pub script_version: Option<i64>,
    pub agent_id: Option<i64>,
    #[sqlx(try_from = "Vec<String>", json)]
    pub labels: Labels,
    #[sqlx(flatten, try_from = "RunParamsColumns")]
    #[serde(flatten)]
    pub params: RunParams,
    pub retries: i64,
    pub retry_backoff_seconds: i64,
    pub schedule: Option<Json<Schedule>>,
    pub enabled: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tasks whose runs start this one, from `task_run_after`; filled in by the store after the row.
    #[sqlx(skip)]
    pub run_after: Vec<RunAfter>,
}

/// Start a task when a run of task `task_id` ends in one of `on`, once per such run. Only a run's final
/// outcome counts: a failed attempt that is retried does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunAfter {
    pub task_id: i64,
    pub on: Vec<RunStatus>,
}

impl RunAfter {
    /// The statuses a run-after link may wait for: every way a started run ends. `skipped` is a fire that
    /// never became a run.
    pub const STATUSES: [RunStatus; 5] =
        [RunStatus::Succeeded, RunStatus::Failed, RunStatus::TimedOut, RunStatus::Cancelled, RunStatus::Lost];
}

/// A webhook that starts a task. Its token is shown once, at creation; the store keeps only its hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Hook {
    pub id: i64,
    pub task_id: i64,
    pub name: String,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    /// Runs the hook may start per rolling minute.
    pub rate_per_minute: i64,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub last_triggered_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewHook {
    pub task_id: i64,
    pub name: String,
    pub token_hash: String,
    pub prefix: String,
    pub rate_per_minute: i64,
}

/// What calling a hook did.
#[derive(Debug, Clone)]
pub enum HookTrigger {
    Queued(Box<Run>),
    /// No live hook has this token: it never existed or was revoked (the caller cannot tell which).
    Unknown,
    /// The hook started `rate_per_minute` runs in the last minute; one more fits in this many seconds.
    Limited {
        retry_after_seconds: i64,
    },
}

/// Every settable field of a task, already validated. Create and update both write a whole `TaskSpec`: an
/// update is a read, a merge in the server, and this write.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    pub description: String,
    pub script_id: i64,
    pub script_version: Option<i64>,
    pub agent_id: Option<i64>,
    pub labels: Labels,
    pub params: RunParams,
    pub retries: i64,
    pub retry_backoff_seconds: i64,
    pub schedule: Option<Schedule>,
    pub enabled: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub run_after: Vec<RunAfter>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub script_id: Option<i64>,
    pub agent_id: Option<i64>,
    pub enabled: Option<bool>,
    pub scheduled: Option<bool>,
    pub name_contains: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: DateTime<Utc>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub ip: Option<String>,
    pub details: Json<Value>,
    pub prev_hash: String,
    pub hash: String,
    /// `sha256` for entries written before the chain was keyed, `hmac-sha256` after.
    pub scheme: String,
}

/// A run as stored: its outcome and the parameters it was queued with, frozen.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Run {
    pub id: i64,
    pub task_id: Option<i64>,
    pub script_id: Option<i64>,
    pub script_version: Option<i64>,
    pub filename: String,
    pub agent_id: Option<i64>,
    pub target_agent_id: Option<i64>,
    pub labels: Json<Vec<String>>,
    #[sqlx(try_from = "String")]
    pub trigger: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub attempt: i64,
    pub retries: i64,
    pub retry_backoff_seconds: i64,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub queued_at: DateTime<Utc>,
    pub not_before: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub max_rss_kb: Option<i64>,
    pub cpu_ms: Option<i64>,
    pub output_bytes: Option<i64>,
    pub truncated: bool,
    pub error: Option<String>,
    /// How long the agent took to prepare the run's packages (0: cached); `None` for runs without any.
    pub environment_ms: Option<i64>,
    /// The agent handed the run to a sandbox prepared before it came (it asked for it with `warm`).
    pub warm_start: bool,
    pub lease_until: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    #[sqlx(flatten, try_from = "RunParamsColumns")]
    #[serde(flatten)]
    pub params: RunParams,
    pub log_bytes: i64,
    pub log_capped: bool,
    pub created_by: Option<i64>,
    /// The hook that started the run (trigger `hook`, and its retries).
    pub hook_id: Option<i64>,
    /// The run whose end started this one (trigger `after`, and its retries).
    pub upstream_run_id: Option<i64>,
}

/// Everything a new run freezes. Exactly one of `script_id` (with its version) and `content` is set.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub task_id: Option<i64>,
    pub script_id: Option<i64>,
    pub script_version: Option<i64>,
    pub content: Option<String>,
    pub filename: String,
    pub target_agent_id: Option<i64>,
    pub labels: Labels,
    pub trigger: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub retries: i64,
    pub retry_backoff_seconds: i64,
    pub params: RunParams,
}

/// A claimed run with the script text it runs.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub run: Run,
    pub content: String,
    /// The lock and `requires-python` of the run's script version, when it has a lock.
    pub environment: Option<(String, Option<String>)>,
    /// The highest output chunk number the run already has (0 for a fresh run): a run handed back and
    /// claimed again continues its log after it.
    pub last_log_seq: i64,
    /// The JSON body of the hook call that started the run, if it had one.
    pub payload: Option<String>,
}

/// How a run ended, as its agent reports it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub status: RunStatus,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub max_rss_kb: Option<i64>,
    pub cpu_ms: Option<i64>,
    pub output_bytes: Option<i64>,
    pub truncated: bool,
    pub error: Option<String>,
    /// How long the agent took to prepare the run's packages (0: cached); `None` for runs without any.
    pub environment_ms: Option<i64>,
    /// The run started in a prepared sandbox.
    pub warm_start: bool,
    /// How long before the report the run ended, by the agent's account: `finished_at` is set that long
    /// before now, but never before the run was claimed. `None`: now.
    pub ended_ago: Option<chrono::Duration>,
    /// How long the run took, by the agent's monotonic clock: `started_at` is set that long before
    /// `finished_at`, but never before the run was claimed. `None`: the claim's time stays.
    pub elapsed: Option<chrono::Duration>,
    /// The attempt may still be running until its lease ends (the server lost it without the agent reporting
    /// its end, or the agent stopped it only because it could not renew the lease): its retry does not become
    /// claimable before then.
    pub retry_after_lease: bool,
}

/// What changing an agent did: the agent as it is now, and the runs that ended because it was disabled.
#[derive(Debug, Clone)]
pub struct AgentUpdated {
    pub agent: Agent,
    pub cancelled: Vec<Finished>,
    /// The change may let the agent take runs it could not take before: waiting claims should look again.
    pub may_take_more: bool,
}

/// What finishing (or losing) a run changed.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run as it is now.
    pub run: Run,
    /// False when the run was already over: a late or repeated report changes nothing.
    pub changed: bool,
    /// The run queued to retry it, if any.
    pub retry: Option<Run>,
    /// Runs of tasks that run after this one, queued because it ended (finally) in a status they wait for.
    pub downstream: Vec<Run>,
}

/// A heartbeat as recorded: the agent as it is now, and whether the heartbeat brought it back from being
/// offline.
#[derive(Debug, Clone)]
pub struct AgentSeen {
    pub agent: Agent,
    pub returned: bool,
}

/// What a heartbeat learned about the runs an agent says it is running.
#[derive(Debug, Clone, Default)]
pub struct LeaseRenewal {
    /// Runs whose cancellation was requested: the agent kills them.
    pub cancel: Vec<i64>,
    /// Runs the server no longer counts as this agent's running runs (finished, lost, deleted): the agent
    /// stops them, since their result would be ignored.
    pub gone: Vec<i64>,
}

/// One piece of a run's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LogChunk {
    pub seq: i64,
    pub stream: String,
    pub ts: DateTime<Utc>,
    pub data: String,
}

/// What appending output did.
#[derive(Debug, Clone, Default)]
pub struct LogAppend {
    pub inserted: Vec<LogChunk>,
    pub cancel_requested: bool,
}

/// Which runs `/runs/` returns; every field narrows the list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub task_id: Option<i64>,
    pub script_id: Option<i64>,
    pub agent_id: Option<i64>,
    pub status: Option<RunStatus>,
    pub trigger: Option<Trigger>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Which page of runs to read: newest first, `limit` of them, either older than the run `before` (keyset
/// paging: every page costs the same however deep) or after skipping `offset` (costs as many rows as it skips).
#[derive(Debug, Clone, Copy)]
pub struct RunPage {
    pub limit: i64,
    /// Only runs with a smaller id: the last run of the previous page.
    pub before: Option<i64>,
    pub offset: i64,
    /// Count every matching run rather than stopping past [`RunPage::TOTAL_CAP`].
    pub exact_total: bool,
}

impl RunPage {
    /// How far the total of a list is counted unless an exact count is asked for: counting stays bounded
    /// (a few milliseconds) however long the history, and a person reading "more than 10,000" learns enough.
    pub const TOTAL_CAP: i64 = 10_000;
    /// The deepest `offset` a page may start at: an offset page reads every run it skips, so deeper pages
    /// (which `before` reaches at the cost of one page) would let any reader make the database scan the
    /// history again and again.
    pub const MAX_OFFSET: i64 = 10_000;

    /// The newest runs, `limit` bounded like every list (see [`crate::Page`]).
    pub fn new(limit: Option<i64>) -> RunPage {
        RunPage { limit: crate::Page::new(limit, None).limit, before: None, offset: 0, exact_total: false }
    }
}

/// A page of runs, newest first.
#[derive(Debug, Clone)]
pub struct RunList {
    pub items: Vec<Run>,
    /// The matching runs (all pages), or [`RunPage::TOTAL_CAP`] when `total_exact` is false: there are more.
    pub total: i64,
    pub total_exact: bool,
    /// The `before` of the next page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// A secret's name, owner, policy and dates; its value is never read back through the API.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SecretInfo {
    pub id: i64,
    pub name: String,
    /// The owner: with admins, the only user who may change the secret or its policy.
    pub created_by: Option<i64>,
    pub all_tasks: bool,
    pub task_ids: Json<Vec<i64>>,
    pub agent_ids: Json<Vec<i64>>,
    pub agent_labels: Json<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SecretInfo {
    pub fn policy(&self) -> SecretPolicy {
        SecretPolicy {
            all_tasks: self.all_tasks,
            task_ids: self.task_ids.0.clone(),
            agent_ids: self.agent_ids.0.clone(),
            agent_labels: self.agent_labels.0.clone(),
        }
    }
}

/// Who may use a secret. Deny by default: no task, and the embedded agent only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SecretPolicy {
    /// Every task may use the secret (ad-hoc runs still need an admin).
    pub all_tasks: bool,
    /// The tasks that may use the secret, when not `all_tasks`.
    pub task_ids: Vec<i64>,
    /// Agents that may receive the secret, by id. With `agent_labels`, both empty means the embedded agent only.
    pub agent_ids: Vec<i64>,
    /// Agents that may receive the secret: those with any of these labels.
    pub agent_labels: Vec<String>,
}

impl SecretPolicy {
    pub fn allows_task(&self, task_id: i64) -> bool {
        self.all_tasks || self.task_ids.contains(&task_id)
    }

    /// The same rule as the claim statement's, checked again when the agent receives the values.
    pub fn allows_agent(&self, agent: &Agent) -> bool {
        if self.agent_ids.is_empty() && self.agent_labels.is_empty() {
            return agent.embedded;
        }
        self.agent_ids.contains(&agent.id) || self.agent_labels.iter().any(|label| agent.labels.0.contains(label))
    }
}

/// A secret's encrypted value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedSecret {
    pub name: String,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: i64, labels: &[&str], embedded: bool) -> Agent {
        Agent {
            id,
            name: format!("agent-{id}"),
            description: String::new(),
            labels: Json(labels.iter().map(|l| (*l).to_owned()).collect()),
            max_concurrency: 1,
            disabled: false,
            draining: false,
            embedded,
            hostname: None,
            version: None,
            capabilities: Json(Value::Null),
            last_seen_at: None,
            created_at: Utc::now(),
            disconnected_at: None,
            slots: None,
            retired_at: None,
        }
    }

    #[test]
    fn a_secret_policy_denies_by_default() {
        let default = SecretPolicy::default();
        assert!(!default.allows_task(1), "no task until one is named");
        assert!(default.allows_agent(&agent(1, &[], true)), "the embedded agent");
        assert!(!default.allows_agent(&agent(2, &["prod"], false)), "no remote agent");

        let listed = SecretPolicy { task_ids: vec![7], agent_labels: vec!["prod".into()], ..SecretPolicy::default() };
        assert!(listed.allows_task(7) && !listed.allows_task(8));
        assert!(listed.allows_agent(&agent(2, &["gpu", "prod"], false)));
        assert!(!listed.allows_agent(&agent(1, &[], true)), "an explicit list replaces the embedded default");
        let by_id = SecretPolicy { all_tasks: true, agent_ids: vec![3], ..SecretPolicy::default() };
        assert!(by_id.allows_task(123) && by_id.allows_agent(&agent(3, &[], false)));
        assert!(!by_id.allows_agent(&agent(4, &[], false)));
    }
}

/// What a new version of a script reaches: the tasks that run its latest version.
#[derive(Debug, Clone, Default)]
pub struct ScriptReach {
    pub task_ids: Vec<i64>,
    /// The secrets those tasks name.
    pub secrets: Vec<String>,
    /// Whether any of those tasks has network.
    pub network: bool,
}
