//! A fleet as an operator runs one: two `automa serve` (API only) on one PostgreSQL database and three remote
//! agents with different labels and concurrency, connected to one server or the other. 1,000 runs submitted
//! through both servers at once each execute exactly once, on an agent whose labels they require (or the agent
//! they are pinned to), never more at once on an agent than its concurrency; checked from what the scripts
//! themselves recorded. And, ignored by default, the throughput of 1, 2 and 3 agents (and of the embedded one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::{PATIENCE, Server, command, fresh_database, postgres_url};

const RUNS: usize = 1_000;
/// Tasks (labelled runs) are created and runs submitted by this many clients at once.
const CLIENTS: usize = 8;
/// How long the whole fleet may take to work through its runs before the test calls it a stall: several
/// times what 2 shared cores need (about half a minute), so only a fleet that stopped making progress fails.
const STALL: Duration = Duration::from_secs(300);

/// An `automa agent` process; killed when dropped.
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// SIGTERM and a bounded wait for the process to exit (an idle agent or server stops at once).
async fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "process {pid} did not stop within {PATIENCE:?} of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `automa agent` for `server` with the token of a created agent; `extra` is its environment.
fn start_agent(server: &str, agent: &Value, concurrency: usize, dir: &Path, extra: &[(&str, &str)]) -> AgentProcess {
    let mut environment = vec![("AUTOMA_LOG", "warn")];
    environment.extend_from_slice(extra);
    let child = command(dir, &environment)
        .args(["agent", "--server", server, "--concurrency", &concurrency.to_string()])
        .env("AUTOMA_TOKEN", agent["token"].as_str().expect("the token is shown on creation"))
        .arg("--data-dir")
        .arg(dir.join("agent"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    AgentProcess { child }
}

async fn create_agent(server: &Server, name: &str, labels: &[&str], max_concurrency: usize) -> Value {
    let body = json!({"name": name, "labels": labels, "max_concurrency": max_concurrency});
    let (status, agent) = server.post("/agents", body).await;
    assert_eq!(status, 201, "{agent}");
    agent
}

/// Two servers, API only, on one PostgreSQL database.
async fn two_servers(database_url: &str, dirs: &[tempfile::TempDir; 2]) -> [Server; 2] {
    let settings = [
        ("AUTOMA_DATABASE_URL", database_url),
        ("AUTOMA_NO_AGENT", "true"),
        // One user submitting 1,000 runs in seconds is this test's load, not the abuse the limit is for.
        ("AUTOMA_REQUESTS_PER_MINUTE", "0"),
    ];
    [Server::start(dirs[0].path(), &settings, true).await, Server::start(dirs[1].path(), &settings, false).await]
}

/// Polls until no run is queued or running. Runs here are never retried or handed back, so once none is
/// queued none can become queued again, and the running count read after it settles the question.
async fn wait_until_settled(server: &Server, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let queued = server.get("/runs?status=queued&limit=1").await["total"].as_i64().unwrap();
        let running = server.get("/runs?status=running&limit=1").await["total"].as_i64().unwrap();
        if queued + running == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queued} queued and {running} running after {patience:?}: the fleet stalled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every run in the database, by id.
async fn all_runs(server: &Server) -> BTreeMap<i64, Value> {
    let mut runs = BTreeMap::new();
    loop {
        let page = server.get(&format!("/runs?limit=500&offset={}", runs.len())).await;
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            return runs;
        }
        runs.extend(items.iter().map(|run| (run["id"].as_i64().unwrap(), run.clone())));
    }
}

/// What a run requires of its agent.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Any agent whose labels include these (`POST /tasks` with `labels`, then `POST /tasks/{id}/execute`).
    Labels(&'static [&'static str]),
    /// This agent, by its index in the fleet (`POST /execute` with `agent_id`).
    Pinned(usize),
}

/// The mix of 20 runs, repeated: most runs any agent or several agents may take, some that only one can.
fn placement(index: usize) -> Placement {
    match index % 20 {
        0..=7 => Placement::Labels(&[]),
        8 => Placement::Labels(&["py"]),
        9 => Placement::Labels(&["linux", "py"]),
        10..=13 => Placement::Labels(&["linux"]),
        14..=17 => Placement::Labels(&["gpu"]),
        18 => Placement::Pinned(1),
        _ => Placement::Pinned(2),
    }
}

/// The script every run executes: it takes 50 ms, so that runs on one agent overlap when the agent runs them
/// side by side, and appends one line to `marks`: its run's key (its argument), its pid, when it started and
/// ended (CLOCK_MONOTONIC, one clock for every process on the host), and its ancestors' pids, among which is
/// the agent process that ran it. The line is one O_APPEND write of far less than a page, so lines from
/// scripts running at once never interleave.
fn marking_script(marks: &Path) -> String {
    let marks = marks.to_str().expect("a UTF-8 temporary path");
    format!(
        r#"import os, sys, time

start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
time.sleep(0.05)
ancestors, pid = [], os.getppid()
while pid > 1:
    ancestors.append(str(pid))
    with open(f'/proc/{{pid}}/stat') as stat:
        pid = int(stat.read().rsplit(')', 1)[1].split()[1])
end = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
mark = f'{{sys.argv[1]}} {{os.getpid()}} {{start}} {{end}} {{",".join(ancestors)}}\n'
fd = os.open({marks:?}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, mark.encode())
os.close(fd)
"#
    )
}

/// One execution of a script, as it recorded itself.
#[derive(Debug)]
struct Mark {
    key: usize,
    start_ns: u64,
    end_ns: u64,
    ancestors: Vec<u32>,
}

fn read_marks(path: &Path) -> Vec<Mark> {
    let text = std::fs::read_to_string(path).expect("the scripts wrote their marks");
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 5, "a whole mark: {line:?}");
            Mark {
                key: fields[0].parse().unwrap(),
                start_ns: fields[2].parse().unwrap(),
                end_ns: fields[3].parse().unwrap(),
                ancestors: fields[4].split(',').map(|pid| pid.parse().unwrap()).collect(),
            }
        })
        .collect()
}

/// The most intervals open at any one instant; one that ends when another starts does not overlap it.
fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, bool)> =
        intervals.iter().flat_map(|&(start, end)| [(start, true), (end, false)]).collect();
    // At equal times ends sort before starts (false < true).
    edges.sort_unstable();
    let (mut open, mut most) = (0usize, 0usize);
    for (_, starts) in edges {
        if starts {
            open += 1;
            most = most.max(open);
        } else {
            open -= 1;
        }
    }
    most
}

/// Submits run `index` through `server` and returns its id.
async fn submit(server: &Server, script_id: i64, agents: &[Value], index: usize) -> i64 {
    let args = json!([index.to_string()]);
    let run = match placement(index) {
        Placement::Labels(labels) => {
            // Only tasks carry labels, and a task's run takes the task's arguments: one task per run.
            let body =
                json!({"name": format!("fleet-{index}"), "script_id": script_id, "labels": labels, "args": args});
            let (status, task) = server.post("/tasks", body).await;
            assert_eq!(status, 201, "{task}");
            let (status, run) = server.post(&format!("/tasks/{}/execute", task["id"]), json!({})).await;
            assert_eq!(status, 202, "{run}");
            run
        }
        Placement::Pinned(agent) => {
            let body = json!({"script_id": script_id, "args": args, "agent_id": agents[agent]["id"]});
            let (status, run) = server.post("/execute", body).await;
            assert_eq!(status, 202, "{run}");
            run
        }
    };
    run["id"].as_i64().unwrap()
}

/// The fleet: name, labels, concurrency (the agent's `--concurrency` and its record's `max_concurrency`), and
/// the server it connects to.
const FLEET: [(&str, &[&str], usize, usize); 3] =
    [("a", &["linux", "py"], 1, 0), ("b", &["linux"], 2, 1), ("c", &["gpu"], 3, 0)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_servers_and_three_agents_runs_1000_runs_each_once_on_a_matching_agent() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers = Arc::new(two_servers(&database.url, &dirs).await);
    let marks_dir = tempfile::tempdir().unwrap();
    let marks = marks_dir.path().join("marks");
    let (status, script) =
        servers[0].post("/scripts", json!({"name": "mark", "content": marking_script(&marks)})).await;
    assert_eq!(status, 201, "{script}");
    let script_id = script["id"].as_i64().unwrap();

    let agent_dirs: Vec<tempfile::TempDir> = FLEET.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents = Vec::new();
    let mut processes = Vec::new();
    for ((name, labels, concurrency, server), dir) in FLEET.iter().zip(&agent_dirs) {
        let agent = create_agent(&servers[0], name, labels, *concurrency).await;
        // Without the sandbox the scripts can write their marks outside their run's directory, to one file
        // the test reads, and see their own process ancestry; the strict sandbox (the default) would keep
        // them inside. What is checked here is the scheduling, not the isolation.
        let extra = [("AUTOMA_SANDBOX", "none")];
        processes.push(start_agent(&servers[*server].base, &agent, *concurrency, dir.path(), &extra));
        agents.push(agent);
    }
    let agents = Arc::new(agents);

    let started = std::time::Instant::now();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (servers, agents) = (servers.clone(), agents.clone());
        clients.push(tokio::spawn(async move {
            let mut submitted = Vec::new();
            for index in (client..RUNS).step_by(CLIENTS) {
                submitted.push((index, submit(&servers[index % 2], script_id, &agents, index).await));
            }
            submitted
        }));
    }
    let mut run_of_key = BTreeMap::new();
    for client in clients {
        run_of_key.extend(client.await.unwrap());
    }
    let submitted = started.elapsed();
    wait_until_settled(&servers[1], STALL).await;
    let finished = started.elapsed();
    let pids: Vec<u32> = processes.iter().map(AgentProcess::pid).collect();
    drop(processes);

    let runs = all_runs(&servers[0]).await;
    assert_eq!(runs.len(), RUNS, "one run per submission");
    for run in runs.values() {
        assert_eq!((run["status"].as_str(), run["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{run}");
    }

    let marks = read_marks(&marks);
    let mut executions = BTreeMap::<usize, Vec<&Mark>>::new();
    for mark in &marks {
        executions.entry(mark.key).or_default().push(mark);
    }
    let keys: BTreeSet<usize> = executions.keys().copied().collect();
    assert_eq!(keys, (0..RUNS).collect(), "every run executed, and nothing else");
    let twice: Vec<_> = executions.iter().filter(|(_, marks)| marks.len() > 1).collect();
    assert!(twice.is_empty(), "runs executed more than once: {twice:?}");

    let mut intervals = vec![Vec::new(); FLEET.len()];
    for mark in &marks {
        let agent = pids.iter().position(|pid| mark.ancestors.contains(pid));
        let agent = agent.unwrap_or_else(|| panic!("run key {} ran outside every agent: {mark:?}", mark.key));
        let (name, labels, _, _) = FLEET[agent];
        match placement(mark.key) {
            Placement::Labels(required) => assert!(
                required.iter().all(|label| labels.contains(label)),
                "run key {} requires {required:?} and ran on agent {name} with {labels:?}",
                mark.key
            ),
            Placement::Pinned(pinned) => {
                assert_eq!(
                    agent, pinned,
                    "run key {} is pinned to agent {} and ran on {name}",
                    mark.key, FLEET[pinned].0
                )
            }
        }
        let run = &runs[&run_of_key[&mark.key]];
        assert_eq!(run["agent_id"], agents[agent]["id"], "the server names the agent that ran it: {run}");
        intervals[agent].push((mark.start_ns, mark.end_ns));
    }
    let mut overlaps = Vec::new();
    for ((name, _, concurrency, _), intervals) in FLEET.iter().zip(&intervals) {
        let most = max_overlap(intervals);
        assert!(most <= *concurrency, "agent {name} ran {most} runs at once, above its concurrency {concurrency}");
        overlaps.push(format!("{name}: {} runs, at most {most} at once (concurrency {concurrency})", intervals.len()));
    }
    // The bound above only means something if agents did run side by side: with hundreds of runs queued,
    // an agent with several slots fills them.
    assert!(intervals.iter().map(|i| max_overlap(i)).max() > Some(1), "no agent ever ran two runs at once");
    eprintln!(
        "fleet: {RUNS} runs submitted in {:.1} s, all finished in {:.1} s; {}",
        submitted.as_secs_f64(),
        finished.as_secs_f64(),
        overlaps.join("; ")
    );
}

/// Runs queued before the agents start, for each measurement.
const QUEUED: usize = 120;

/// Queues `QUEUED` runs printing `hi` through the servers in turn.
async fn queue_trivial(servers: &[&Server]) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for index in 0..QUEUED {
        ids.insert(servers[index % servers.len()].execute("print('hi')\n", json!({})).await["id"].as_i64().unwrap());
    }
    ids
}

/// Runs a second over the span the server recorded, from the first of `ids` to start to the last to end;
/// every one of them must have succeeded.
async fn measured_rate(server: &Server, ids: &BTreeSet<i64>) -> f64 {
    let runs = all_runs(server).await;
    let time = |run: &Value, field: &str| {
        DateTime::parse_from_rfc3339(run[field].as_str().unwrap_or_else(|| panic!("{field}: {run}"))).unwrap().to_utc()
    };
    let (mut first, mut last) = (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC);
    for id in ids {
        let run = &runs[id];
        assert_eq!(run["status"], "succeeded", "{run}");
        first = first.min(time(run, "started_at"));
        last = last.max(time(run, "finished_at"));
    }
    ids.len() as f64 / (last - first).as_seconds_f64()
}

/// A row of the table, also printed as it is measured.
fn measured(setup: String, rate: f64) -> (String, f64) {
    eprintln!("{setup}: {rate:.1} runs/s");
    (setup, rate)
}

/// Throughput of remote agents with 1 slot each, 1 to 3 of them, with `QUEUED` trivial runs already queued,
/// in the strict sandbox, with two servers on one PostgreSQL database; then of the embedded agent alone with
/// 1 to 3 slots. It prints a table and asserts nothing about speed: run it with
/// `cargo nextest run -p automa --test exec --run-ignored ignored-only fleet_throughput --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: takes minutes of both cores"]
async fn fleet_throughput() {
    let Some(server_url) = postgres_url() else { return };
    let database = fresh_database(&server_url).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers = two_servers(&database.url, &dirs).await;
    let mut table = Vec::new();

    let agent_dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents = Vec::new();
    for index in 0..3 {
        agents.push(create_agent(&servers[0], &format!("agent-{index}"), &[], 1).await);
    }
    for count in 1..=3 {
        let ids = queue_trivial(&[&servers[0], &servers[1]]).await;
        let mut processes: Vec<AgentProcess> = (0..count)
            .map(|index| start_agent(&servers[index % 2].base, &agents[index], 1, agent_dirs[index].path(), &[]))
            .collect();
        wait_until_settled(&servers[0], STALL).await;
        for process in &mut processes {
            terminate(&mut process.child).await;
        }
        let setup = format!("{count} remote agent{}, 1 slot each", if count == 1 { "" } else { "s" });
        table.push(measured(setup, measured_rate(&servers[0], &ids).await));
    }

    let embedded_dir = tempfile::tempdir().unwrap();
    for concurrency in 1..=3 {
        let ids = queue_trivial(&[&servers[0]]).await;
        let concurrency_setting = concurrency.to_string();
        let settings = [
            ("AUTOMA_DATABASE_URL", database.url.as_str()),
            ("AUTOMA_AGENT_CONCURRENCY", concurrency_setting.as_str()),
            ("AUTOMA_EMBEDDED_AGENT_NAME", "embedded"),
        ];
        let mut embedded = Server::start(embedded_dir.path(), &settings, false).await;
        wait_until_settled(&servers[0], STALL).await;
        terminate(&mut embedded.child).await;
        let setup = format!("embedded agent, {concurrency} slot{}", if concurrency == 1 { "" } else { "s" });
        table.push(measured(setup, measured_rate(&servers[0], &ids).await));
    }

    eprintln!("\nthroughput: {QUEUED} queued runs of print('hi') each, strict sandbox, two servers on PostgreSQL");
    eprintln!("{:<34} {:>7}", "agents", "runs/s");
    for (setup, rate) in table {
        eprintln!("{setup:<34} {rate:>7.1}");
    }
}
