//! Runs and their output, live or stored; `automa run` too.

use std::io::IsTerminal;

use clap::{Args, Subcommand};

use automa_core::RunStatus;
use automa_server::api::runs::{RunList, RunResponse};

use super::{ClientFlags, Column, Output, connect, or_dash, print_object, print_raw, print_rows, say, when};
use crate::client::{self, Api};

#[derive(Subcommand)]
pub enum RunCommand {
    /// Run history, newest first.
    List {
        /// Only runs of this task (id or name).
        #[arg(long)]
        task: Option<String>,
        /// queued, running, succeeded, failed, timed_out, cancelled, lost or skipped.
        #[arg(long)]
        status: Option<String>,
        /// Items per page (1-500, default 50).
        #[arg(long)]
        limit: Option<i64>,
        /// The next, older page: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Runs to skip, at most 10,000 (the skipped runs are read: slow on a long history); --cursor
        /// pages deeper at the same cost per page.
        #[arg(long, conflicts_with = "cursor")]
        offset: Option<i64>,
        /// Count every matching run instead of stopping past 10,000.
        #[arg(long)]
        count: bool,
    },
    /// A run.
    Get { run: i64 },
    /// Run a task now.
    Start {
        task: String,
        /// Stream the output and exit with the script's exit code.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cancel a queued or running run.
    Cancel { run: i64 },
}

/// `automa run`: a task, or a local file once.
#[derive(Args)]
pub struct RunFlags {
    /// A task's name or id, or the path of a .py file to run once.
    target: String,
    /// Stream the output and exit with the script's exit code.
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    client: ClientFlags,
    /// Arguments for a script file (after --).
    #[arg(last = true)]
    args: Vec<String>,
}

pub const RUN_COLUMNS: &[Column<RunResponse>] = &[
    ("ID", |r| r.id.to_string()),
    ("TASK", |r| or_dash(r.task_id)),
    ("STATUS", |r| r.status.as_str().to_owned()),
    ("TRIGGER", |r| r.trigger.as_str().to_owned()),
    ("ATTEMPT", |r| r.attempt.to_string()),
    ("QUEUED", |r| when(Some(r.queued_at))),
    ("DURATION", |r| r.duration_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0))),
    ("EXIT", |r| or_dash(r.exit_code)),
];

/// A page of runs, and how to get the next one when there is one.
fn print_runs(output: Output, answer: &client::Answer<RunList>) {
    match output {
        Output::Json => print_raw(&answer.raw),
        Output::Table => {
            let page = &answer.value;
            print_rows(&page.items, RUN_COLUMNS);
            if let Some(cursor) = &page.next_cursor {
                let more = if page.total_exact { "" } else { " more than" };
                println!("({} shown of{more} {}; older: --cursor {cursor})", page.items.len(), page.total);
            }
        }
    }
}

pub async fn runs(flags: &ClientFlags, command: RunCommand) -> anyhow::Result<i32> {
    let api = connect(flags, "automa runs")?;
    let output = flags.output;
    match command {
        RunCommand::List { task, status, limit, cursor, offset, count } => {
            let mut query = Vec::new();
            query.extend(limit.map(|limit| ("limit", limit.to_string())));
            query.extend(cursor.map(|cursor| ("cursor", cursor)));
            query.extend(offset.map(|offset| ("offset", offset.to_string())));
            query.extend(status.map(|status| ("status", status)));
            if count {
                query.push(("count", "true".to_owned()));
            }
            if let Some(task) = task {
                query.push(("task_id", api.task_id(&task).await?.to_string()));
            }
            print_runs(output, &api.get::<RunList>("/runs", &query).await?);
        }
        RunCommand::Get { run } => print_object(output, &api.get::<RunResponse>(&format!("/runs/{run}"), &[]).await?)?,
        RunCommand::Start { task, follow } => return start(&api, output, &task, &[], follow).await,
        RunCommand::Cancel { run } => {
            let answer = api.post_empty::<RunResponse>(&format!("/runs/{run}/cancel")).await?;
            say(output, &format!("cancelling run {run}"));
            if output == Output::Json {
                print_raw(&answer.raw);
            }
        }
    }
    Ok(0)
}

/// `automa run`.
pub async fn run(flags: RunFlags) -> ! {
    let result = async {
        let api = connect(&flags.client, "automa run")?;
        start(&api, flags.client.output, &flags.target, &flags.args, flags.follow).await
    };
    super::exit(result.await)
}

/// Starts a run and shows it, or follows it to its end and gives the script's exit code.
pub(super) async fn start(
    api: &Api,
    output: Output,
    target: &str,
    args: &[String],
    follow: bool,
) -> anyhow::Result<i32> {
    let answer = api.start(target, args).await?;
    if !follow {
        print_object(output, &answer)?;
        return Ok(0);
    }
    follow_run(api, answer.value.id).await
}

pub async fn logs(flags: &ClientFlags, run: i64, follow: bool) -> anyhow::Result<i32> {
    let api = connect(flags, "automa logs")?;
    if follow {
        return follow_run(&api, run).await;
    }
    let path = format!("/runs/{run}/logs");
    match flags.output {
        Output::Json => print_raw(&api.get_text(&path, &[("limit", "5000".to_owned())]).await?),
        Output::Table => client::print_output(&api.get_text(&path, &[("format", "text".to_owned())]).await?)?,
    }
    Ok(0)
}

/// Streams a run's output (stdout to stdout, stderr to stderr) and gives the exit code for how it ended. On a
/// terminal, where a person waits, a line on standard error says when the run is still waiting and how it ended.
async fn follow_run(api: &Api, run: i64) -> anyhow::Result<i32> {
    let watched = std::io::stderr().is_terminal();
    if watched {
        let current: RunResponse = api.get(&format!("/runs/{run}"), &[]).await?.value;
        if current.status == RunStatus::Queued {
            eprintln!("[automa] run {run} is queued; waiting for an agent…");
        }
    }
    let ended = api.follow(run).await?;
    let code = client::exit_code(&ended);
    if watched {
        let took = ended.duration_ms.map_or_else(String::new, |ms| format!(" in {:.1}s", ms as f64 / 1000.0));
        eprintln!("[automa] run {run} {}{took} (exit code {code})", ended.status);
    }
    Ok(code)
}
