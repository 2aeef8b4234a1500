//! The server under test: `automa serve` from this very executable, started as a child process on a fresh data
//! directory and a free loopback port, so that everything the suite measures crosses a real socket from a
//! separate client process, as users see it. Also what the client reads of the child from `/proc`.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use automa_core::RunStatus;
use automa_server::api::runs::RunResponse;

use crate::bench::postgres::Throwaway;
use crate::client::{Api, EventStream};

/// The longest a server may take to answer `/ready`, or a run to show progress, before the suite gives up.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long the client waits for a run event before it asks for the pending runs instead: the event stream
/// skips events for a client that falls behind.
const EVENT_WAIT: Duration = Duration::from_secs(3);

/// Where a server keeps its data: a temporary directory, with a SQLite file in it or a throwaway PostgreSQL
/// database (created on the server `--database` names and dropped by [`DataDir::remove`]).
pub struct DataDir {
    dir: tempfile::TempDir,
    pub database_url: String,
    postgres: Option<Throwaway>,
}

impl DataDir {
    /// `postgres`: the URL of a PostgreSQL server to create the database on; `None` for SQLite.
    pub async fn new(postgres: Option<&str>) -> anyhow::Result<DataDir> {
        let dir = tempfile::tempdir()?;
        let (database_url, postgres) = match postgres {
            Some(server) => {
                let throwaway = Throwaway::create(server).await?;
                (throwaway.url.clone(), Some(throwaway))
            }
            None => (format!("sqlite://{}", dir.path().join("automa.db").display()), None),
        };
        Ok(DataDir { dir, database_url, postgres })
    }

    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() { "PostgreSQL" } else { "SQLite" }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Drops the PostgreSQL database; the directory goes with `self`.
    pub async fn remove(self) -> anyhow::Result<()> {
        match self.postgres {
            Some(throwaway) => throwaway.drop_database().await,
            None => Ok(()),
        }
    }
}

/// How the server under test is set up.
pub struct ServerSpec<'a> {
    /// `none` or `strict`.
    pub profile: &'a str,
    pub python: &'a Path,
    /// Whether the embedded agent runs (the scheduler's phase leaves runs queued without one).
    pub agent: bool,
    /// More settings, as `AUTOMA_*` variables.
    pub env: Vec<(&'static str, String)>,
}

/// A running `automa serve` child; killed if dropped without [`Server::stop`], and sent SIGTERM by the kernel
/// if the suite dies without either.
pub struct Server {
    child: tokio::process::Child,
    pub pid: u32,
    pub base: String,
    /// From the spawn until the first 200 from `GET /ready`, polled back to back.
    pub startup: Duration,
    /// The resident set when it was first ready, in KiB: before any login.
    pub ready_rss_kib: u64,
    /// The admin created before the server listened: e-mail and password.
    admin: (String, String),
    log: PathBuf,
}

impl Server {
    /// Creates the admin with `automa user add` on the server's database, then starts the server. Creating
    /// the admin over the API, as the first user to sign up, would let anyone on this host who found the
    /// port first become admin of a server that may run scripts unsandboxed, as the user running the suite.
    pub async fn start(data: &DataDir, spec: &ServerSpec<'_>) -> anyhow::Result<Server> {
        // The port is free when asked and bound by the server a moment later. Another process taking it in
        // between gains nothing: the server cannot bind and exits, failing the start, and all the suite would
        // have sent there is the admin's password, random and good only for that server, which never ran.
        let port = free_port()?;
        let log = data.path().join("server.log");
        // Random, not a constant: while the suite runs, anyone on this host could otherwise sign tokens for a
        // server that runs scripts unsandboxed.
        let secret_key = random_hex(32)?;
        let admin = ("bench@example.com".to_owned(), random_hex(16)?);
        let added = server_command(data, spec, &secret_key, port)?
            .args(["user", "add", &admin.0, "--admin"])
            .env("AUTOMA_PASSWORD", &admin.1)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("starting automa user add")?;
        anyhow::ensure!(
            added.status.success(),
            "automa user add failed ({}): {}",
            added.status,
            String::from_utf8_lossy(&added.stderr)
        );
        let mut command = server_command(data, spec, &secret_key, port)?;
        command.arg("serve").stdout(Stdio::null()).stderr(std::fs::File::create(&log)?).kill_on_drop(true);
        let started = Instant::now();
        let child = command.spawn().context("starting automa serve")?;
        let pid = child.id().context("the server exited at once")?;
        let base = format!("http://127.0.0.1:{port}");
        let mut server = Server { child, pid, base, startup: Duration::ZERO, ready_rss_kib: 0, admin, log };
        server.startup = server.until_ready(started).await?;
        server.ready_rss_kib = server.rss_kib()?;
        Ok(server)
    }

    async fn until_ready(&mut self, started: Instant) -> anyhow::Result<Duration> {
        let client = reqwest::Client::new();
        let url = format!("{}/ready", self.base);
        while started.elapsed() < PATIENCE {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("automa serve exited ({status}): {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        anyhow::bail!("automa serve was not ready within {PATIENCE:?}: {}", self.log_tail())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, and the wait for a graceful exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => anyhow::ensure!(status?.success(), "automa serve failed: {}", self.log_tail()),
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("automa serve did not stop within 30 s of SIGTERM");
            }
        }
        Ok(())
    }

    /// The resident set (VmRSS), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status_field(&status, "VmRSS:").context("no VmRSS")
    }

    /// The resident size in KiB and its two parts, from one reading: (all, anonymous, file-backed). Anonymous
    /// is what the server allocated (heap, stacks); file-backed are the pages of files it maps, mostly its own
    /// binary's code, which the page cache holds once for every process running that binary.
    pub fn rss_parts_kib(&self) -> anyhow::Result<(u64, u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let all = status_field(&status, "VmRSS:").context("no VmRSS")?;
        let anonymous = status_field(&status, "RssAnon:").context("no RssAnon")?;
        let files = status_field(&status, "RssFile:").context("no RssFile")?;
        Ok((all, anonymous, files + status_field(&status, "RssShmem:").unwrap_or(0)))
    }

    /// Context switches of all the server's threads so far, (voluntary, involuntary). A thread that wakes up
    /// and goes back to sleep switches once voluntarily; an involuntary switch is a running thread preempted,
    /// which a busy machine adds without any more wake-ups. Threads that ended in between drop out of the sums.
    pub fn context_switches(&self) -> anyhow::Result<(u64, u64)> {
        let (mut voluntary, mut involuntary) = (0, 0);
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid))? {
            let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else { continue };
            voluntary += status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
            involuntary += status_field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
        Ok((voluntary, involuntary))
    }

    /// CPU time (user + system) the server has used, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name may hold spaces and parentheses: fields are counted after its closing one.
        let fields: Vec<&str> = stat.rsplit_once(')').context("no command name")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / clock_ticks_per_second())
    }
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| line.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `automa` from this executable, set up as the server under test on `data`: the settings of `spec`, the same
/// secret key for every command (the audit log's key derives from it), and the kernel's SIGTERM when the suite
/// dies, so that no server outlives a suite that was killed.
fn server_command(
    data: &DataDir,
    spec: &ServerSpec<'_>,
    secret_key: &str,
    port: u16,
) -> anyhow::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    // A clean environment and working directory: the caller's AUTOMA_* variables, `.env` and `automa.toml`
    // would otherwise change the server being measured.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(data.path())
        .env("AUTOMA_DATA_DIR", data.path().join("data"))
        .env("AUTOMA_DATABASE_URL", &data.database_url)
        .env("AUTOMA_BIND", format!("127.0.0.1:{port}"))
        .env("AUTOMA_SECRET_KEY", secret_key)
        .env("AUTOMA_SANDBOX", spec.profile)
        .env("AUTOMA_PYTHON", spec.python)
        .env("AUTOMA_AGENT_CONCURRENCY", "2")
        .env("AUTOMA_NO_AGENT", if spec.agent { "false" } else { "true" })
        // The suite is one client sending thousands of requests: rate limits would measure themselves.
        .env("AUTOMA_REQUESTS_PER_MINUTE", "0")
        .env("AUTOMA_AGENT_REQUESTS_PER_MINUTE", "0")
        .env("AUTOMA_LOG", "warn")
        .envs(spec.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null());
    let suite = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls: prctl and getppid, and an error built
    // without allocating.
    unsafe {
        command.pre_exec(move || {
            // The signal follows the thread that forked, a runtime thread: those live as long as the suite.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The suite may have died before the prctl: then nobody would send the signal.
            if libc::getppid() as u32 != suite {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    Ok(command)
}

/// A port nobody listens on now; the server binds it a moment later (see [`Server::start`]).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The first user of a fresh server, signed in, and what the suite asks of the API.
pub struct Session {
    pub api: Api,
    base: String,
    pub token: String,
    runs: Option<EventStream>,
}

impl Session {
    /// Signs in as the admin the server was started with (`POST /token`).
    pub async fn sign_in(server: &Server) -> anyhow::Result<Session> {
        let anonymous = Api::new(&server.base, None, false)?;
        let (email, password) = server.admin.clone();
        let token: Value = anonymous.post_form("/token", &[("username", email), ("password", password)]).await?.value;
        let token = token["access_token"].as_str().context("no access token")?.to_owned();
        Ok(Session { api: Api::new(&server.base, Some(&token), false)?, base: server.base.clone(), token, runs: None })
    }

    pub async fn add_script(&self, name: &str, filename: &str, content: &str) -> anyhow::Result<i64> {
        let body = json!({"name": name, "filename": filename, "content": content});
        let script: Value = self.api.post("/scripts", &body).await?.value;
        script["id"].as_i64().context("a script without an id")
    }

    /// Queues a run of the script, asking for a warm start when `warm`.
    pub async fn execute(&self, script_id: i64, warm: bool) -> anyhow::Result<i64> {
        let run: Value = self.api.post("/execute", &json!({"script_id": script_id, "warm": warm})).await?.value;
        run["id"].as_i64().context("a run without an id")
    }

    /// Opens the event stream runs are followed on, before anything is submitted so no event is missed.
    pub async fn follow_runs(&mut self) -> anyhow::Result<()> {
        if self.runs.is_none() {
            self.runs = Some(self.api.events("/events").await?);
        }
        Ok(())
    }

    /// Closes the event stream and the client's keep-alive connections: the stream's keep-alives, and the
    /// server's closing of idle connections, would wake an idle server.
    pub fn disconnect(&mut self) -> anyhow::Result<()> {
        self.runs = None;
        self.api = Api::new(&self.base, Some(&self.token), false)?;
        Ok(())
    }

    /// The next of `pending` to end, removed from it, as the `run` event announcing it says; a run that did
    /// not succeed is an error. Falls back to asking for each pending run when no event comes for a while.
    pub async fn next_finished(&mut self, pending: &mut HashSet<i64>) -> anyhow::Result<RunResponse> {
        let started = Instant::now();
        let run = loop {
            anyhow::ensure!(started.elapsed() < PATIENCE, "no run ended within {PATIENCE:?}");
            let events = self.runs.as_mut().context("follow_runs first")?;
            match tokio::time::timeout(EVENT_WAIT, events.next()).await {
                Ok(Ok(Some(event))) if event.name == "run" => {
                    let run: RunResponse = serde_json::from_str(&event.data)?;
                    if run.status.is_terminal() && pending.remove(&run.id) {
                        break run;
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => anyhow::bail!("the server closed the event stream"),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    if let Some(run) = self.any_finished(pending).await? {
                        break run;
                    }
                }
            }
        };
        anyhow::ensure!(
            run.status == RunStatus::Succeeded,
            "run {} ended {}: {}",
            run.id,
            run.status,
            run.error.as_deref().unwrap_or("")
        );
        Ok(run)
    }

    async fn any_finished(&self, pending: &mut HashSet<i64>) -> anyhow::Result<Option<RunResponse>> {
        let ids: Vec<i64> = pending.iter().copied().collect();
        for id in ids {
            let run: RunResponse = self.api.get(&format!("/runs/{id}"), &[]).await?.value;
            if run.status.is_terminal() {
                pending.remove(&id);
                return Ok(Some(run));
            }
        }
        Ok(None)
    }

    /// Submits `count` runs of the script at once and waits until all have ended.
    pub async fn batch(&mut self, script_id: i64, count: usize, warm: bool) -> anyhow::Result<Batch> {
        self.follow_runs().await?;
        let start = Instant::now();
        let mut pending = HashSet::new();
        for _ in 0..count {
            pending.insert(self.execute(script_id, warm).await?);
        }
        let ids = pending.iter().copied().collect();
        let mut runs = Vec::with_capacity(count);
        while !pending.is_empty() {
            runs.push(self.next_finished(&mut pending).await?);
        }
        Ok(Batch { ids, runs, wall: start.elapsed() })
    }

    /// Submits one run and waits for it: the time from the submission until the client learnt of its end.
    pub async fn one_run(&mut self, script_id: i64, warm: bool) -> anyhow::Result<(Duration, RunResponse)> {
        self.follow_runs().await?;
        let start = Instant::now();
        let id = self.execute(script_id, warm).await?;
        let run = self.next_finished(&mut HashSet::from([id])).await?;
        Ok((start.elapsed(), run))
    }
}

/// A batch of runs of one script, submitted at once.
pub struct Batch {
    pub ids: Vec<i64>,
    pub runs: Vec<RunResponse>,
    /// From the first submission until the client learnt that the last run ended.
    pub wall: Duration,
}

/// A server started for a phase, with its data and signed-in session.
pub struct Running {
    pub data: DataDir,
    pub server: Server,
    pub session: Session,
}

impl Running {
    /// Starts a server on `data` (removed again if the start fails) and signs in as its admin.
    pub async fn start(data: DataDir, spec: &ServerSpec<'_>) -> anyhow::Result<Running> {
        let server = match Server::start(&data, spec).await {
            Ok(server) => server,
            Err(error) => {
                data.remove().await?;
                return Err(error);
            }
        };
        let session = match Session::sign_in(&server).await {
            Ok(session) => session,
            Err(error) => {
                Running::cleanup(server, data).await;
                return Err(error);
            }
        };
        Ok(Running { data, server, session })
    }

    /// A fresh SQLite server.
    pub async fn sqlite(spec: &ServerSpec<'_>) -> anyhow::Result<Running> {
        Running::start(DataDir::new(None).await?, spec).await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        // A graceful stop waits for open requests, the event stream among them, which would never end.
        drop(self.session);
        let stopped = self.server.stop().await;
        // What was measured stands: a database left behind is said, not a failure of the suite.
        if let Err(error) = self.data.remove().await {
            eprintln!("{error:#}");
        }
        stopped
    }

    /// After a failure: the server stopped and its database dropped, their own errors only reported.
    async fn cleanup(server: Server, data: DataDir) {
        if let Err(error) = server.stop().await {
            eprintln!("stopping the server after a failure: {error:#}");
        }
        if let Err(error) = data.remove().await {
            eprintln!("{error:#}");
        }
    }

    /// Runs `phase` on this server, then stops it whether the phase succeeded or not.
    pub async fn with<T>(mut self, phase: impl AsyncFnOnce(&mut Running) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match phase(&mut self).await {
            Ok(value) => {
                self.stop().await?;
                Ok(value)
            }
            Err(error) => {
                drop(self.session);
                Running::cleanup(self.server, self.data).await;
                Err(error)
            }
        }
    }
}
