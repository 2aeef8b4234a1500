//! Leases fence: two `automa serve` (API only) on one PostgreSQL database and remote agents, one of them behind a
//! TCP proxy the test can cut. A run whose agent cannot reach its server for longer than the lease is stopped by
//! that agent before the lease can expire, so its retry on another agent never runs at the same time (checked
//! from the scripts' own marks); a result delivered after a short outage keeps the script's own times; a run
//! whose agent is killed is lost within the lease and retried at once on an agent of the other server; an idle
//! agent whose heartbeat failed tries again within moments, not a whole idle period later.
//!
//! The agents run scripts without a sandbox (AUTOMA_SANDBOX=none): the scripts append marks to a file of the
//! test's, which the strict sandbox's private filesystem would hide, and which is the only account of when each
//! execution ran that does not come from the system under test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::{PATIENCE, Server, fresh_database, postgres_url, text_of};

/// Writes a start mark, a tick every 50 ms for `SECONDS` seconds, then an end mark, each `kind pid ns`, to the
/// file named by `MARKS`; prints a line when it starts so the test can wait for that.
const MARKING: &str = r#"import os, time
path, seconds = os.environ['MARKS'], float(os.environ['SECONDS'])
def mark(kind):
    with open(path, 'a') as f:
        f.write(f'{kind} {os.getpid()} {time.time_ns()}\n')
mark('start')
print('started', flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    time.sleep(0.05)
    mark('tick')
mark('end')
print('done', flush=True)
"#;

/// A TCP proxy to one server that the test can cut: while cut, open connections are dropped and new ones
/// closed as soon as they are accepted, as an unreachable server looks to its agent. Or it can fall silent:
/// connections, open and new, stay open and nothing more goes through them, as a host that went down without
/// a word (its packets dropped) looks.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    changed: Arc<Notify>,
}

/// Longer than any test waits: a silent proxy's connections are held this long before they are dropped.
const SILENCE: Duration = Duration::from_secs(300);

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, silent, changed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        let (cut_flag, silent_flag, cut_changed) = (cut.clone(), silent.clone(), changed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                if silent_flag.load(Ordering::SeqCst) {
                    tokio::spawn(async move {
                        tokio::time::sleep(SILENCE).await;
                        drop(inbound);
                    });
                    continue;
                }
                if cut_flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, cut, silent, changed) =
                    (target.clone(), cut_flag.clone(), silent_flag.clone(), cut_changed.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    let mut inbound = inbound;
                    let cutting = changed.notified();
                    tokio::pin!(cutting);
                    cutting.as_mut().enable();
                    if cut.load(Ordering::SeqCst) {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cutting => {
                            if silent.load(Ordering::SeqCst) {
                                tokio::time::sleep(SILENCE).await;
                            }
                        }
                    }
                });
            }
        });
        Proxy { url, cut, silent, changed }
    }

    fn fall_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A remote agent process of `server` (a URL), killed when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_agent(admin: &Server, dir: &Path, name: &str, server_url: &str) -> (i64, AgentProcess) {
    let (status, agent) = admin.post("/agents", json!({"name": name, "max_concurrency": 2})).await;
    assert_eq!(status, 201, "{agent}");
    let process = crate::support::command(dir, &[("AUTOMA_SANDBOX", "none")])
        .args(["agent", "--server", server_url, "--concurrency", "2"])
        .env("AUTOMA_TOKEN", agent["token"].as_str().unwrap())
        .arg("--data-dir")
        .arg(dir.join(name))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    (agent["id"].as_i64().unwrap(), AgentProcess(process))
}

/// Two API-only servers on one PostgreSQL database with a lease of `lease` seconds.
async fn two_servers(database_url: &str, dirs: &[tempfile::TempDir; 2], lease: &str) -> [Server; 2] {
    let settings =
        [("AUTOMA_DATABASE_URL", database_url), ("AUTOMA_NO_AGENT", "true"), ("AUTOMA_LEASE_SECONDS", lease)];
    [Server::start(dirs[0].path(), &settings, true).await, Server::start(dirs[1].path(), &settings, false).await]
}

async fn marking_task(server: &Server, marks: &Path, seconds: f64, retries: i64) -> i64 {
    let (status, script) = server.post("/scripts", json!({"name": "marking", "content": MARKING})).await;
    assert_eq!(status, 201, "{script}");
    let env = json!({"MARKS": marks.display().to_string(), "SECONDS": seconds.to_string()});
    let body = json!({"name": "marking", "script_id": script["id"], "retries": retries,
        "retry_backoff_seconds": 0, "env": env});
    let (status, task) = server.post("/tasks", body).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_i64().unwrap()
}

/// Queues a run of `task` and returns its id once the script has started.
async fn start_run(server: &Server, task: i64) -> i64 {
    let (status, run) = server.post(&format!("/tasks/{task}/execute"), json!({})).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_i64().unwrap();
    wait_until_started(server, id).await;
    id
}

async fn wait_until_started(server: &Server, id: i64) {
    let mut stream = server.events(&format!("/runs/{id}/logs/stream")).await;
    let (name, data) = stream.next().await.expect("the stream stays open");
    assert_eq!(name, "log", "run {id} started: {data}");
}

/// The next `run` event of `events` about a retry that is running.
async fn next_running_retry(events: &mut crate::support::Events) -> Value {
    loop {
        let (name, data) = events.next().await.expect("the event stream stays open");
        if name == "run" {
            let run: Value = serde_json::from_str(&data).unwrap();
            if run["trigger"] == "retry" && run["status"] == "running" {
                return run;
            }
        }
    }
}

/// Each execution's (first, last) mark in nanoseconds since the epoch, by process id, and whether it ended.
fn executions(marks: &Path) -> BTreeMap<u32, (i128, i128, bool)> {
    let mut executions = BTreeMap::new();
    for line in std::fs::read_to_string(marks).unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, pid, ns] = fields[..] else { continue };
        let (pid, ns): (u32, i128) = (pid.parse().unwrap(), ns.parse().unwrap());
        let entry = executions.entry(pid).or_insert((ns, ns, false));
        entry.0 = entry.0.min(ns);
        entry.1 = entry.1.max(ns);
        entry.2 |= kind == "end";
    }
    executions
}

fn timestamp(run: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(run[field].as_str().unwrap_or_else(|| panic!("{field} in {run}")))
        .unwrap()
        .to_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_off_from_its_server_longer_than_the_lease_never_overlaps_its_retry() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A lease of 6 s: the agent's fence is at 4 s without a renewal.
    let [a, b] = two_servers(&database.url, &dirs, "6").await;
    let proxy = Proxy::start(&a.base).await;
    let marks = dirs[0].path().join("marks");
    // Long enough that, unfenced, the first execution would still be running when its retry starts.
    let task = marking_task(&a, &marks, 15.0, 1).await;
    let (first_agent, _one) = start_agent(&a, dirs[0].path(), "one", &proxy.url).await;
    let id = start_run(&a, task).await;
    // Only now the second agent, on the other server: the first attempt is surely the first agent's.
    let mut events = b.events("/events").await;
    let (second_agent, _two) = start_agent(&a, dirs[1].path(), "two", &b.base).await;

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    let retry = tokio::time::timeout(PATIENCE, next_running_retry(&mut events)).await.expect("a retry starts");
    eprintln!("the retry started {:?} after the cut", cut_at.elapsed());
    let retry_id = retry["id"].as_i64().unwrap();
    let (_, retried) = b.follow(retry_id).await;
    proxy.restore();
    let (chunks, first) = a.follow(id).await;

    assert_eq!(first["status"], "lost", "{first}");
    assert_eq!(first["agent_id"], first_agent);
    let error = first["error"].as_str().unwrap();
    assert!(error.contains("lease"), "the first attempt's error names the lease: {error}");
    let system = text_of(&chunks, "system");
    assert!(system.contains("lease"), "its log says what happened: {system:?}");
    assert!(!system.contains("cancelled"), "the run was not cancelled: {system:?}");
    assert_eq!((retried["status"].as_str(), retried["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{retried}");
    assert_eq!(retried["agent_id"], second_agent);

    let executions = executions(&marks);
    assert_eq!(executions.len(), 2, "one execution per attempt: {executions:?}");
    let spans: Vec<_> = executions.values().collect();
    let (earlier, later) = if spans[0].0 < spans[1].0 { (spans[0], spans[1]) } else { (spans[1], spans[0]) };
    let gap_ms = (later.0 - earlier.1) / 1_000_000;
    eprintln!("the first execution's last mark came {gap_ms} ms before the retry's first");
    assert!(gap_ms > 0, "the two attempts ran at the same time for {} ms: {executions:?}", -gap_ms);
    assert!(!earlier.2 && later.2, "the first execution was stopped, the retry ran to its end: {executions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ends_during_a_short_outage_keeps_its_own_times() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A lease of 12 s: the fence is at 8 s, so a 5 s outage does not stop the run.
    let [a, _b] = two_servers(&database.url, &dirs, "12").await;
    let proxy = Proxy::start(&a.base).await;
    let marks = dirs[0].path().join("marks");
    let task = marking_task(&a, &marks, 3.0, 0).await;
    let _one = start_agent(&a, dirs[0].path(), "one", &proxy.url).await;
    let id = start_run(&a, task).await;
    proxy.cut();
    // The outage itself, not a wait for something: the script ends about 3 s into it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    let (chunks, ended) = a.follow(id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(text_of(&chunks, "stdout"), "started\ndone\n");

    let executions = executions(&marks);
    let (first, last, _) = *executions.values().next().expect("the script marked");
    let script_ms = i64::try_from((last - first) / 1_000_000).unwrap();
    let stored_ms = ended["duration_ms"].as_i64().unwrap();
    eprintln!("script {script_ms} ms by its own marks, stored duration {stored_ms} ms");
    // The interpreter's start and exit lie outside the marks; an outage's length would be seconds.
    assert!((stored_ms - script_ms).abs() < 500, "stored {stored_ms} ms, the script ran {script_ms} ms: {ended}");
    let finished = timestamp(&ended, "finished_at");
    let last_mark = chrono::DateTime::from_timestamp_nanos(i64::try_from(last).unwrap());
    assert!((finished - last_mark).num_milliseconds().abs() < 500, "finished at {finished}, last mark {last_mark}");
    let stdout: Vec<_> = chunks.iter().filter(|c| c["stream"] == "stdout").collect();
    let done_at = timestamp(stdout[1], "ts");
    assert!((done_at - last_mark).num_milliseconds().abs() < 500, "output keeps its time: {done_at} vs {last_mark}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_run_is_lost_within_the_lease_and_retried_at_once_elsewhere() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let lease = 6;
    let [a, b] = two_servers(&database.url, &dirs, &lease.to_string()).await;
    let marks = dirs[0].path().join("marks");
    let task = marking_task(&a, &marks, 2.0, 1).await;
    let (_, mut one) = start_agent(&a, dirs[0].path(), "one", &a.base).await;
    let id = start_run(&a, task).await;
    let mut events = b.events("/events").await;
    let (second_agent, _two) = start_agent(&a, dirs[1].path(), "two", &b.base).await;

    one.0.kill().unwrap();
    let killed_at = chrono::Utc::now();
    one.0.wait().unwrap();
    let retry = tokio::time::timeout(PATIENCE, next_running_retry(&mut events)).await.expect("a retry starts");
    let lost = b.get(&format!("/runs/{id}")).await;
    assert_eq!(lost["status"], "lost", "{lost}");
    let lost_after = timestamp(&lost, "finished_at") - killed_at;
    // The lease ran from the last renewal, before the kill; the reaper looks just after it ends.
    assert!(lost_after.num_milliseconds() <= lease * 1000 + 500, "lost {lost_after} after the kill: {lost}");
    let retry = b.get(&format!("/runs/{}", retry["id"])).await;
    assert_eq!(retry["agent_id"], second_agent, "{retry}");
    let waited = timestamp(&retry, "started_at") - timestamp(&retry, "not_before");
    eprintln!("lost {lost_after} after the kill; the retry started {waited} after it became eligible");
    // Far less than one 30 s long poll, which is what a retry nobody was told about waits.
    assert!(waited.num_milliseconds() < 2000, "the retry waited {waited} once eligible: {retry}");
}

/// An agent given two servers keeps its runs when the first stops answering without refusing (its host went
/// down): its heartbeats give up on that server in time to renew the leases through the second, so the run is
/// neither fenced nor retried, and runs once to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_through_its_second_server_when_the_first_falls_silent() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A lease of 12 s: the fence is at 8 s without a renewal, and a heartbeat is given up after 4 s. A
    // renewal can then be missing for a tick, the wait for the silent server and the next tick: 6 s at most.
    let [a, b] = two_servers(&database.url, &dirs, "12").await;
    let proxy = Proxy::start(&a.base).await;
    let marks = dirs[0].path().join("marks");
    // Long past the fence: a run stopped for want of renewals would not reach its end mark.
    let task = marking_task(&a, &marks, 14.0, 1).await;
    let servers = format!("{},{}", proxy.url, b.base);
    let (agent_id, _agent) = start_agent(&a, dirs[0].path(), "two-servers", &servers).await;
    let id = start_run(&a, task).await;

    proxy.fall_silent();
    let (chunks, ended) = b.follow(id).await;

    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!((ended["attempt"].as_i64(), ended["agent_id"].as_i64()), (Some(1), Some(agent_id)), "{ended}");
    assert_eq!(text_of(&chunks, "stdout"), "started\ndone\n");
    let runs = b.get(&format!("/runs?task_id={task}")).await;
    assert_eq!(runs["total"], 1, "no retry was queued: {runs}");
    let executions = executions(&marks);
    assert_eq!(executions.len(), 1, "one execution: {executions:?}");
    assert!(executions.values().all(|execution| execution.2), "it ran to its end: {executions:?}");
}

/// An idle agent heartbeats every 10 s here (a third of a 30 s offline notice). While its server is cut off its
/// heartbeat fails, and it tries again after 1 s, 2 s, 4 s: the first heartbeat after the way is open again comes
/// within moments, where waiting a whole idle period after the failure would leave it silent about 8 s more.
#[tokio::test]
async fn an_idle_agent_tries_again_soon_after_a_failed_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("AUTOMA_NO_AGENT", "true"), ("AUTOMA_AGENT_OFFLINE_SECONDS", "30")];
    let server = Server::start(dir.path(), &settings, true).await;
    let proxy = Proxy::start(&server.base).await;
    let (id, _agent) = start_agent(&server, dir.path(), "idle", &proxy.url).await;
    let last_seen = async || server.get(&format!("/agents/{id}")).await["last_seen_at"].as_str().map(str::to_owned);
    let registered = async {
        loop {
            if let Some(seen) = last_seen().await {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let registered = tokio::time::timeout(PATIENCE, registered).await.expect("the agent registered");
    proxy.cut();
    // The idle heartbeat due 10 s after registering fails, and so does the retry a second later.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(last_seen().await.as_deref(), Some(registered.as_str()), "no heartbeat got through the cut");
    proxy.restore();
    let heard = async {
        while last_seen().await.as_deref() == Some(registered.as_str()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), heard).await.is_ok(),
        "no heartbeat within 5 s of the way opening again"
    );
}
