//! Scripts (with `push`, which creates a script or adds a version) and tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use automa_core::Schedule;
use automa_server::api::{
    Page,
    agents::AgentResponse,
    scripts::{CreateScript, ScriptResponse, UpdateScript, VersionResponse},
    tasks::{TaskInput, TaskResponse},
};

use super::{
    ClientFlags, Column, Output, PageFlags, connect, or_dash, print_object, print_page, print_raw, say, usage, when,
};
use crate::client::{self, Api};

#[derive(Subcommand)]
pub enum ScriptCommand {
    /// List scripts.
    List {
        /// Only scripts whose name contains this.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: PageFlags,
    },
    /// A script (by id or name) with its current version, or the version given.
    Get {
        script: String,
        #[arg(long)]
        version: Option<i64>,
        /// Print only the source.
        #[arg(long)]
        content: bool,
    },
    /// Create a script from a file.
    Create {
        name: String,
        /// The Python file.
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// The file name the script runs as (default main.py).
        #[arg(long)]
        filename: Option<String>,
    },
    /// Change a script; new content (--file) adds a version.
    Update {
        script: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        filename: Option<String>,
    },
    /// Delete a script and its versions.
    Delete { script: String },
    /// A script's versions, newest first.
    Versions {
        script: String,
        #[command(flatten)]
        page: PageFlags,
    },
    /// Resolve the script's dependencies again: a new version when the lock changed, else the current one.
    Lock { script: String },
    /// Create the script named after FILE.py (without .py), or add a version when its content changed.
    Push {
        file: PathBuf,
        /// The script's name, instead of the file's.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// List tasks.
    List {
        /// Only tasks whose name contains this.
        #[arg(long)]
        name: Option<String>,
        /// Only tasks of this script (id or name).
        #[arg(long)]
        script: Option<String>,
        #[command(flatten)]
        page: PageFlags,
    },
    /// A task, by id or name.
    Get { task: String },
    /// Create a task running a script.
    Create {
        name: String,
        /// The script (id or name).
        #[arg(long)]
        script: String,
        #[command(flatten)]
        fields: Box<TaskFields>,
    },
    /// Change a task; fields not given keep their value, lists given replace the old ones.
    Update {
        task: String,
        #[arg(long)]
        name: Option<String>,
        /// Another script (id or name).
        #[arg(long)]
        script: Option<String>,
        #[command(flatten)]
        fields: Box<TaskFields>,
    },
    /// Delete a task.
    Delete { task: String },
    /// Run a task now (the same as `automa runs start`).
    Start {
        task: String,
        /// Stream the output and exit with the script's exit code.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Args)]
pub struct TaskFields {
    #[arg(long)]
    description: Option<String>,
    /// Pin this version of the script; 0 runs the latest.
    #[arg(long)]
    script_version: Option<i64>,
    /// Run on this agent (id or name); `any`: any agent with the task's labels.
    #[arg(long)]
    agent: Option<String>,
    /// A label the agent must have (repeatable).
    #[arg(long = "label")]
    labels: Option<Vec<String>>,
    /// An argument for the script (repeatable, in order).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Option<Vec<String>>,
    /// NAME=VALUE in the run's environment (repeatable).
    #[arg(long = "env")]
    env: Option<Vec<String>>,
    /// The name of a secret the run gets as a variable (repeatable).
    #[arg(long = "secret")]
    secrets: Option<Vec<String>>,
    #[arg(long)]
    timeout_seconds: Option<i64>,
    #[arg(long)]
    memory_mb: Option<i64>,
    /// Whether the script may use the network.
    #[arg(long)]
    network: Option<bool>,
    /// Whether its runs ask for a warm start (a sandbox the agent prepared before the run came).
    #[arg(long)]
    warm: Option<bool>,
    #[arg(long)]
    retries: Option<i64>,
    /// Run on this cron schedule (5 fields, or 6 with seconds first).
    #[arg(long, conflicts_with_all = ["every_seconds", "at", "no_schedule"])]
    cron: Option<String>,
    /// The time zone the cron expression is read in (default UTC).
    #[arg(long, requires = "cron")]
    timezone: Option<String>,
    /// Run every N seconds.
    #[arg(long, conflicts_with_all = ["at", "no_schedule"])]
    every_seconds: Option<i64>,
    /// Run once at this time (RFC 3339, e.g. 2030-01-01T09:00:00Z).
    #[arg(long, conflicts_with = "no_schedule")]
    at: Option<DateTime<Utc>>,
    /// Remove the schedule.
    #[arg(long)]
    no_schedule: bool,
    /// Whether the schedule fires.
    #[arg(long)]
    enabled: Option<bool>,
}

const SCRIPT_COLUMNS: &[Column<ScriptResponse>] = &[
    ("ID", |s| s.id.to_string()),
    ("NAME", |s| s.name.clone()),
    ("VERSION", |s| s.version.to_string()),
    ("SIZE", |s| s.size.to_string()),
    ("UPDATED", |s| when(Some(s.updated_at))),
    ("DESCRIPTION", |s| s.description.clone()),
];

const VERSION_COLUMNS: &[Column<VersionResponse>] = &[
    ("VERSION", |v| v.version.to_string()),
    ("SIZE", |v| v.size.to_string()),
    ("SHA256", |v| v.sha256.chars().take(12).collect()),
    ("BY", |v| or_dash(v.created_by)),
    ("CREATED", |v| when(Some(v.created_at))),
];

const TASK_COLUMNS: &[Column<TaskResponse>] = &[
    ("ID", |t| t.id.to_string()),
    ("NAME", |t| t.name.clone()),
    ("SCRIPT", |t| t.script_id.to_string()),
    ("SCHEDULE", |t| t.schedule.as_ref().map_or_else(|| "-".to_owned(), describe)),
    ("ENABLED", |t| t.enabled.to_string()),
    ("NEXT FIRE", |t| when(t.next_fire_at)),
    ("DESCRIPTION", |t| t.description.clone()),
];

fn describe(schedule: &Schedule) -> String {
    match (&schedule.cron, schedule.every_seconds, schedule.at) {
        (Some(cron), _, _) => format!("cron {cron} {}", schedule.timezone),
        (None, Some(every), _) => format!("every {every}s"),
        (None, None, Some(at)) => format!("once {}", when(Some(at))),
        _ => "-".to_owned(),
    }
}

pub async fn scripts(flags: &ClientFlags, command: ScriptCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa scripts")?;
    let output = flags.output;
    match command {
        ScriptCommand::List { name, page } => {
            let mut query = page.query();
            query.extend(name.map(|name| ("name", name)));
            print_page(output, &api.get::<Page<ScriptResponse>>("/scripts", &query).await?, SCRIPT_COLUMNS);
        }
        ScriptCommand::Get { script, version, content } => {
            let id = api.script_id(&script).await?;
            if let Some(version) = version {
                let answer = api.get::<VersionResponse>(&format!("/scripts/{id}/versions/{version}"), &[]).await?;
                return show_script(output, &answer, content, &answer.value.content);
            }
            let answer = api.get::<ScriptResponse>(&format!("/scripts/{id}"), &[]).await?;
            return show_script(output, &answer, content, &answer.value.content);
        }
        ScriptCommand::Create { name, file, description, filename } => {
            let content = read_source(&file)?;
            let body = CreateScript { name, content, description, filename, dependencies: None };
            print_object(output, &api.post::<_, ScriptResponse>("/scripts", &body).await?)?;
        }
        ScriptCommand::Update { script, file, name, description, filename } => {
            let id = api.script_id(&script).await?;
            let content = file.as_deref().map(read_source).transpose()?;
            let body = UpdateScript { name, content, description, filename, dependencies: None };
            print_object(output, &api.put::<_, ScriptResponse>(&format!("/scripts/{id}"), &body).await?)?;
        }
        ScriptCommand::Delete { script } => {
            let id = api.script_id(&script).await?;
            api.delete(&format!("/scripts/{id}")).await?;
            say(output, &format!("deleted script {id}"));
        }
        ScriptCommand::Versions { script, page } => {
            let id = api.script_id(&script).await?;
            let answer = api.get::<Page<VersionResponse>>(&format!("/scripts/{id}/versions"), &page.query()).await?;
            print_page(output, &answer, VERSION_COLUMNS);
        }
        ScriptCommand::Lock { script } => {
            let id = api.script_id(&script).await?;
            print_object(output, &api.post_empty::<VersionResponse>(&format!("/scripts/{id}/lock")).await?)?;
        }
        ScriptCommand::Push { file, name, description } => push(&api, output, &file, name, description).await?,
    }
    Ok(0)
}

fn show_script<T: serde::Serialize>(
    output: Output,
    answer: &client::Answer<T>,
    only_content: bool,
    content: &str,
) -> anyhow::Result<i32> {
    if only_content {
        print!("{content}");
    } else if output == Output::Table {
        // The source would drown the other fields; --content prints it.
        super::table::fields(&answer.value, &["content"])?.print();
    } else {
        print_raw(&answer.raw);
    }
    Ok(0)
}

fn read_source(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).map_err(|error| usage(format!("reading {}: {error}", file.display())))
}

/// Creates the script, or adds a version when the content differs from the current one, and says which.
async fn push(
    api: &Api,
    output: Output,
    file: &Path,
    name: Option<String>,
    description: Option<String>,
) -> anyhow::Result<()> {
    let content = read_source(file)?;
    let filename = file.file_name().and_then(|name| name.to_str()).map(str::to_owned);
    let stem = file.file_stem().and_then(|stem| stem.to_str()).map(str::to_owned);
    let name = name.or(stem).ok_or_else(|| usage(format!("{} has no usable file name", file.display())))?;
    let page: Page<ScriptResponse> =
        api.get("/scripts", &[("name", name.clone()), ("limit", "500".to_owned())]).await?.value;
    let Some(current) = page.items.into_iter().find(|script| script.name == name) else {
        let body = CreateScript {
            name: name.clone(),
            content,
            description: description.unwrap_or_default(),
            filename,
            dependencies: None,
        };
        let answer = api.post::<_, ScriptResponse>("/scripts", &body).await?;
        say(output, &format!("created script '{name}' (id {}, version 1)", answer.value.id));
        return print_pushed(output, &answer);
    };
    if current.content == content && description.is_none() {
        let answer = api.get::<ScriptResponse>(&format!("/scripts/{}", current.id), &[]).await?;
        say(output, &format!("script '{name}' is unchanged (version {})", current.version));
        return print_pushed(output, &answer);
    }
    let body = UpdateScript { content: Some(content), description, ..UpdateScript::default() };
    let answer = api.put::<_, ScriptResponse>(&format!("/scripts/{}", current.id), &body).await?;
    let message = match answer.value.version {
        version if version == current.version => format!("script '{name}' is unchanged (version {version})"),
        version => format!("script '{name}': new version {version} (was {})", current.version),
    };
    say(output, &message);
    print_pushed(output, &answer)
}

fn print_pushed(output: Output, answer: &client::Answer<ScriptResponse>) -> anyhow::Result<()> {
    if output == Output::Json {
        print_raw(&answer.raw);
    }
    Ok(())
}

pub async fn tasks(flags: &ClientFlags, command: TaskCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa tasks")?;
    let output = flags.output;
    match command {
        TaskCommand::List { name, script, page } => {
            let mut query = page.query();
            query.extend(name.map(|name| ("name", name)));
            if let Some(script) = script {
                query.push(("script_id", api.script_id(&script).await?.to_string()));
            }
            print_page(output, &api.get::<Page<TaskResponse>>("/tasks", &query).await?, TASK_COLUMNS);
        }
        TaskCommand::Get { task } => {
            let id = api.task_id(&task).await?;
            print_object(output, &api.get::<TaskResponse>(&format!("/tasks/{id}"), &[]).await?)?;
        }
        TaskCommand::Create { name, script, fields } => {
            let mut body = task_input(&api, *fields).await?;
            body.name = Some(name);
            body.script_id = Some(api.script_id(&script).await?);
            print_object(output, &api.post::<_, TaskResponse>("/tasks", &body).await?)?;
        }
        TaskCommand::Update { task, name, script, fields } => {
            let id = api.task_id(&task).await?;
            let mut body = task_input(&api, *fields).await?;
            body.name = name;
            if let Some(script) = script {
                body.script_id = Some(api.script_id(&script).await?);
            }
            print_object(output, &api.put::<_, TaskResponse>(&format!("/tasks/{id}"), &body).await?)?;
        }
        TaskCommand::Delete { task } => {
            let id = api.task_id(&task).await?;
            api.delete(&format!("/tasks/{id}")).await?;
            say(output, &format!("deleted task {id}"));
        }
        TaskCommand::Start { task, follow } => return super::runs::start(&api, output, &task, &[], follow).await,
    }
    Ok(0)
}

/// The task fields given as flags, in the API's input type; what is not given stays absent (unchanged).
async fn task_input(api: &Api, fields: TaskFields) -> anyhow::Result<TaskInput> {
    let env = match fields.env {
        Some(pairs) => Some(
            pairs
                .iter()
                .map(|pair| match pair.split_once('=') {
                    Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
                    None => Err(usage(format!("--env {pair}: expected NAME=VALUE"))),
                })
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?,
        ),
        None => None,
    };
    let agent_id = match fields.agent.as_deref() {
        None => None,
        Some("any") => Some(None),
        Some(agent) => {
            Some(Some(api.resolve("/agents", "agent", agent, |a: &AgentResponse| (a.name.as_str(), a.id)).await?))
        }
    };
    let schedule = match (fields.cron, fields.every_seconds, fields.at, fields.no_schedule) {
        (Some(cron), ..) => {
            let mut schedule = json!({"kind": "cron", "cron": cron});
            if let Some(timezone) = fields.timezone {
                schedule["timezone"] = timezone.into();
            }
            Some(Some(schedule))
        }
        (None, Some(every), ..) => Some(Some(json!({"kind": "interval", "every_seconds": every}))),
        (None, None, Some(at), _) => Some(Some(json!({"kind": "once", "at": at}))),
        (None, None, None, true) => Some(None),
        (None, None, None, false) => None,
    };
    // The schedule's own defaults (grace, coalescing, ...) come from its type, as on the server.
    let schedule = schedule
        .map(|schedule| schedule.map(serde_json::from_value::<Schedule>).transpose())
        .transpose()
        .context("building the schedule")?;
    Ok(TaskInput {
        description: fields.description,
        script_version: fields.script_version.map(|version| Some(version).filter(|v| *v != 0)),
        agent_id,
        labels: fields.labels,
        args: fields.args,
        env,
        secrets: fields.secrets,
        timeout_seconds: fields.timeout_seconds,
        memory_mb: fields.memory_mb,
        network: fields.network,
        warm: fields.warm,
        retries: fields.retries,
        schedule,
        enabled: fields.enabled,
        ..TaskInput::default()
    })
}
