//! Administration through the API: agents, users, secrets, API tokens, and the audit log.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use automa_core::Role;
use automa_server::api::{
    Page,
    agents::{AgentResponse, CreateAgent, CreatedAgent, UpdateAgent},
    audit::{AuditEntryResponse, VerifyResponse},
    secrets::{CreateSecret, SecretPolicyBody, SecretResponse, UpdateSecret},
    tokens::{CreateToken, CreatedToken, TokenInfo},
    users::{CreateUser, UpdateUser, UserResponse},
};
use automa_store::AuditCheckpoint;

use super::{
    ClientFlags, Column, Output, PageFlags, connect, login, or_dash, parse, print_object, print_page, print_raw,
    print_rows, when,
};
use crate::client::Api;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// List agents.
    List {
        #[command(flatten)]
        page: PageFlags,
        /// Include retired agents.
        #[arg(long)]
        retired: bool,
    },
    /// An agent, by id or name.
    Get { agent: String },
    /// Register a remote agent; its enrollment token is shown once.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A label tasks can ask for (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Runs at once (1-1024, default 1).
        #[arg(long)]
        max_concurrency: Option<i64>,
    },
    /// Rename, relabel, drain or disable an agent.
    Update {
        agent: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A label (repeatable; replaces the list).
        #[arg(long = "label")]
        labels: Option<Vec<String>>,
        #[arg(long)]
        max_concurrency: Option<i64>,
        /// A draining agent finishes its runs and takes no new ones.
        #[arg(long)]
        draining: Option<bool>,
        /// A disabled agent is refused by the server.
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Retire an agent: its token stops working and its runs keep naming it. Refused while it runs anything.
    #[command(alias = "delete")]
    Retire { agent: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// List users.
    List {
        #[command(flatten)]
        page: PageFlags,
    },
    /// A user, by id or e-mail.
    Get { user: String },
    /// The user you are signed in as.
    Me,
    /// Create a user; the password is read from AUTOMA_PASSWORD, a prompt, or a line of standard input.
    Create {
        email: String,
        /// viewer (default), operator or admin.
        #[arg(long)]
        role: Option<Role>,
    },
    /// Change a user's role, activation or e-mail (e-mail changes need a session, not an API token).
    Update {
        user: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        role: Option<Role>,
        #[arg(long)]
        active: Option<bool>,
    },
    /// Delete a user and their API tokens.
    Delete { user: String },
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Secret names and policies (never values).
    List {
        #[command(flatten)]
        page: PageFlags,
    },
    /// A secret's owner and policy.
    Get { name: String },
    /// Create a secret; the value is typed at a prompt that does not echo, or read whole from standard input.
    Create {
        name: String,
        #[command(flatten)]
        policy: PolicyFlags,
    },
    /// Replace a secret's value (--value), its policy (any policy flag), or both.
    Update {
        name: String,
        /// Read a new value, as `create` does.
        #[arg(long)]
        value: bool,
        #[command(flatten)]
        policy: PolicyFlags,
    },
    /// Delete a secret.
    Delete { name: String },
}

/// Who may use a secret; any of these flags replaces the whole policy.
#[derive(Args)]
pub struct PolicyFlags {
    /// Every task may use the secret.
    #[arg(long)]
    all_tasks: bool,
    /// A task that may use it (id, repeatable).
    #[arg(long = "task")]
    task_ids: Vec<i64>,
    /// An agent that may receive it (id, repeatable); with no agent or label, the embedded agent only.
    #[arg(long = "agent")]
    agent_ids: Vec<i64>,
    /// Agents with this label may receive it (repeatable).
    #[arg(long = "agent-label")]
    agent_labels: Vec<String>,
}

impl PolicyFlags {
    fn policy(self) -> Option<SecretPolicyBody> {
        let given =
            self.all_tasks || !self.task_ids.is_empty() || !self.agent_ids.is_empty() || !self.agent_labels.is_empty();
        given.then_some(SecretPolicyBody {
            all_tasks: self.all_tasks,
            task_ids: self.task_ids,
            agent_ids: self.agent_ids,
            agent_labels: self.agent_labels,
        })
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Your API tokens, revoked ones included.
    List,
    /// Create an API token; it is shown once.
    Create {
        name: String,
        /// Cap the token below your own role.
        #[arg(long)]
        role: Option<Role>,
        /// Days until it expires (1-3650); never, if not given.
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// Revoke one of your API tokens.
    #[command(alias = "revoke")]
    Delete { id: i64 },
}

/// `automa audit list`: filters of the audit log.
#[derive(Args)]
pub struct AuditListFlags {
    /// e.g. script.update, auth.login_failed.
    #[arg(long)]
    action: Option<String>,
    /// Entries by this user (id).
    #[arg(long)]
    user_id: Option<i64>,
    /// user, agent, system or anonymous.
    #[arg(long)]
    actor_type: Option<String>,
    #[arg(long)]
    resource_type: Option<String>,
    #[arg(long)]
    resource_id: Option<String>,
    /// Entries at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    #[command(flatten)]
    page: PageFlags,
    #[command(flatten)]
    client: ClientFlags,
}

const AGENT_COLUMNS: &[Column<AgentResponse>] = &[
    ("ID", |a| a.id.to_string()),
    ("NAME", |a| a.name.clone()),
    ("STATUS", |a| a.status.clone()),
    ("LABELS", |a| a.labels.join(",")),
    ("CONCURRENCY", |a| {
        let reported = a.concurrency.map_or_else(|| "-".to_owned(), |slots| slots.to_string());
        format!("{reported}/{}/{}", a.max_concurrency, a.effective_concurrency)
    }),
    ("HOST", |a| or_dash(a.hostname.as_deref())),
    ("VERSION", |a| or_dash(a.version.as_deref())),
    ("LAST SEEN", |a| when(a.last_seen_at)),
];

const USER_COLUMNS: &[Column<UserResponse>] = &[
    ("ID", |u| u.id.to_string()),
    ("EMAIL", |u| u.email.clone()),
    ("ROLE", |u| u.role.to_string()),
    ("ACTIVE", |u| u.active.to_string()),
    ("CREATED", |u| when(Some(u.created_at))),
    ("LAST LOGIN", |u| when(u.last_login_at)),
];

const SECRET_COLUMNS: &[Column<SecretResponse>] = &[
    ("ID", |s| s.id.to_string()),
    ("NAME", |s| s.name.clone()),
    ("OWNER", |s| or_dash(s.created_by)),
    ("TASKS", |s| match s.policy.all_tasks {
        true => "all".to_owned(),
        false => ids(&s.policy.task_ids),
    }),
    ("AGENTS", |s| {
        let mut who: Vec<String> = s.policy.agent_ids.iter().map(i64::to_string).collect();
        who.extend(s.policy.agent_labels.iter().map(|label| format!("label:{label}")));
        if who.is_empty() { "embedded".to_owned() } else { who.join(",") }
    }),
    ("UPDATED", |s| when(Some(s.updated_at))),
];

const TOKEN_COLUMNS: &[Column<TokenInfo>] = &[
    ("ID", |t| t.id.to_string()),
    ("NAME", |t| t.name.clone()),
    ("PREFIX", |t| t.prefix.clone()),
    ("ROLE", |t| or_dash(t.role)),
    ("EXPIRES", |t| when(t.expires_at)),
    ("LAST USED", |t| when(t.last_used_at)),
    ("REVOKED", |t| when(t.revoked_at)),
];

const AUDIT_COLUMNS: &[Column<AuditEntryResponse>] = &[
    ("ID", |e| e.id.to_string()),
    ("TIME", |e| when(Some(e.ts))),
    ("ACTOR", |e| format!("{}:{}", e.actor_type, e.actor_id.as_deref().unwrap_or("-"))),
    ("ACTION", |e| e.action.clone()),
    ("RESOURCE", |e| format!("{}:{}", e.resource_type, e.resource_id.as_deref().unwrap_or("-"))),
    ("IP", |e| or_dash(e.ip.as_deref())),
    ("DETAILS", |e| e.details.to_string()),
];

fn ids(ids: &[i64]) -> String {
    if ids.is_empty() { "-".to_owned() } else { ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",") }
}

async fn agent_id(api: &Api, agent: &str) -> anyhow::Result<i64> {
    api.resolve("/agents", "agent", agent, |a: &AgentResponse| (a.name.as_str(), a.id)).await
}

async fn user_id(api: &Api, user: &str) -> anyhow::Result<i64> {
    api.resolve("/users", "user", user, |u: &UserResponse| (u.email.as_str(), u.id)).await
}

pub async fn agents(flags: &ClientFlags, command: AgentCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa agents")?;
    let output = flags.output;
    match command {
        AgentCommand::List { page, retired } => {
            let mut query = page.query();
            if retired {
                query.push(("retired", "true".into()));
            }
            print_page(output, &api.get::<Page<AgentResponse>>("/agents", &query).await?, AGENT_COLUMNS)
        }
        AgentCommand::Get { agent } => {
            let id = agent_id(&api, &agent).await?;
            print_object(output, &api.get::<AgentResponse>(&format!("/agents/{id}"), &[]).await?)?;
        }
        AgentCommand::Create { name, description, labels, max_concurrency } => {
            let body = CreateAgent { name, description, labels, max_concurrency };
            print_object(output, &api.post::<_, CreatedAgent>("/agents", &body).await?)?;
            eprintln!("The token is shown only now: start the agent with it in AUTOMA_TOKEN or --token-file.");
        }
        AgentCommand::Update { agent, name, description, labels, max_concurrency, draining, disabled } => {
            let id = agent_id(&api, &agent).await?;
            let body = UpdateAgent { name, description, labels, max_concurrency, disabled, draining };
            print_object(output, &api.put::<_, AgentResponse>(&format!("/agents/{id}"), &body).await?)?;
        }
        AgentCommand::Retire { agent } => {
            let id = agent_id(&api, &agent).await?;
            api.delete(&format!("/agents/{id}")).await?;
            eprintln!("retired agent {id}");
        }
    }
    Ok(0)
}

pub async fn users(flags: &ClientFlags, command: UserCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa users")?;
    let output = flags.output;
    match command {
        UserCommand::List { page } => {
            print_page(output, &api.get::<Page<UserResponse>>("/users", &page.query()).await?, USER_COLUMNS)
        }
        UserCommand::Get { user } => {
            let id = user_id(&api, &user).await?;
            print_object(output, &api.get::<UserResponse>(&format!("/users/{id}"), &[]).await?)?;
        }
        UserCommand::Me => print_object(output, &api.get::<UserResponse>("/users/me", &[]).await?)?,
        UserCommand::Create { email, role } => {
            let password = login::read_password(&format!("Password for {email}: "))?;
            let body = CreateUser { email, password, role };
            print_object(output, &api.post::<_, UserResponse>("/users", &body).await?)?;
        }
        UserCommand::Update { user, email, role, active } => {
            let id = user_id(&api, &user).await?;
            let body = UpdateUser { email, role, active, ..UpdateUser::default() };
            print_object(output, &api.put::<_, UserResponse>(&format!("/users/{id}"), &body).await?)?;
        }
        UserCommand::Delete { user } => {
            let id = user_id(&api, &user).await?;
            api.delete(&format!("/users/{id}")).await?;
            eprintln!("deleted user {id}");
        }
    }
    Ok(0)
}

pub async fn secrets(flags: &ClientFlags, command: SecretCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa secrets")?;
    let output = flags.output;
    let path = |name: &str| format!("/secrets/{}", encode(name));
    match command {
        SecretCommand::List { page } => {
            print_page(output, &api.get::<Page<SecretResponse>>("/secrets", &page.query()).await?, SECRET_COLUMNS)
        }
        SecretCommand::Get { name } => print_object(output, &api.get::<SecretResponse>(&path(&name), &[]).await?)?,
        SecretCommand::Create { name, policy } => {
            let value = login::read_hidden(&format!("Value of {name}: "), true)?;
            let body = CreateSecret { name, value, policy: policy.policy() };
            print_object(output, &api.post::<_, SecretResponse>("/secrets", &body).await?)?;
        }
        SecretCommand::Update { name, value, policy } => {
            let value = value.then(|| login::read_hidden(&format!("New value of {name}: "), true)).transpose()?;
            let body = UpdateSecret { value, policy: policy.policy() };
            print_object(output, &api.put::<_, SecretResponse>(&path(&name), &body).await?)?;
        }
        SecretCommand::Delete { name } => {
            api.delete(&path(&name)).await?;
            eprintln!("deleted secret {name}");
        }
    }
    Ok(0)
}

/// A path segment with everything but unreserved characters percent-encoded.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub async fn tokens(flags: &ClientFlags, command: TokenCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa tokens")?;
    let output = flags.output;
    match command {
        TokenCommand::List => {
            let answer = api.get::<Vec<TokenInfo>>("/tokens", &[]).await?;
            match output {
                Output::Json => print_raw(&answer.raw),
                Output::Table => print_rows(&answer.value, TOKEN_COLUMNS),
            }
        }
        TokenCommand::Create { name, role, expires_in_days } => {
            let body = CreateToken { name, role, expires_in_days };
            print_object(output, &api.post::<_, CreatedToken>("/tokens", &body).await?)?;
            eprintln!("The token is shown only now.");
        }
        TokenCommand::Delete { id } => {
            let answer = parse::<TokenInfo>(api.delete(&format!("/tokens/{id}")).await?)?;
            print_object(output, &answer)?;
        }
    }
    Ok(0)
}

/// `automa audit list`.
pub async fn audit_list(flags: AuditListFlags) -> ! {
    let result = async {
        let api = connect(&flags.client, "automa audit list")?;
        let mut query = flags.page.query();
        let filters = [
            ("action", flags.action),
            ("user_id", flags.user_id.map(|id| id.to_string())),
            ("actor_type", flags.actor_type),
            ("resource_type", flags.resource_type),
            ("resource_id", flags.resource_id),
            ("since", flags.since.map(|at| at.to_rfc3339())),
            ("until", flags.until.map(|at| at.to_rfc3339())),
        ];
        query.extend(filters.into_iter().filter_map(|(key, value)| Some((key, value?))));
        let answer = api.get::<Page<AuditEntryResponse>>("/audit", &query).await?;
        print_page(flags.client.output, &answer, AUDIT_COLUMNS);
        Ok(0)
    };
    super::exit(result.await)
}

/// `automa audit verify --remote`: the server recomputes the chain; exits 1 if it is broken.
pub async fn audit_verify(flags: &ClientFlags, checkpoint: Option<AuditCheckpoint>) -> ! {
    let result = async {
        let api = connect(flags, "automa audit verify --remote")?;
        let query = match checkpoint {
            Some(checkpoint) => {
                vec![("checkpoint_id", checkpoint.id.to_string()), ("checkpoint_hash", checkpoint.hash)]
            }
            None => Vec::new(),
        };
        let answer = api.get::<VerifyResponse>("/audit/verify", &query).await.context("verifying the audit chain")?;
        print_object(flags.output, &answer)?;
        Ok(if answer.value.ok { 0 } else { 1 })
    };
    super::exit(result.await)
}
