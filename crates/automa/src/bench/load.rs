//! Authenticated reads under load: `GET /tasks/{id}` with a bearer token from many keep-alive connections at
//! once, against the public `GET /health` on the same server, so the ratio is what authentication and the
//! database cost. The load generator is built in (hyper's HTTP/1.1 client, one request at a time on each
//! connection) and shares the machine's cores with the server: its own CPU use is reported beside it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::body::Body as _;
use serde_json::{Value, json};

use crate::bench::Settings;
use crate::bench::floor;
use crate::bench::report::{Measurement, Report, Samples, Target};
use crate::bench::server::{Running, Server, ServerSpec};

pub const PHASE: &str = "authenticated GET";

/// Requests before this long into a round are not counted: connections open, caches fill.
const WARM_UP: Duration = Duration::from_secs(1);

/// What one round of load measured.
struct Round {
    requests_per_second: f64,
    latency_ms: Samples,
    generator_cores: f64,
    server_cores: f64,
}

pub async fn authenticated_get(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let (connections, seconds) = (settings.connections, settings.load_seconds);
    println!("\n## {PHASE}: {connections} keep-alive connections for {seconds} s each after {WARM_UP:?} of warm-up");
    let spec = ServerSpec { profile: "none", python: &settings.python, agent: true, env: Vec::new() };
    let (health, task) = Running::sqlite(&spec)
        .await?
        .with(async |running| {
            let script = running.session.add_script("hi", "hi.py", floor::SCRIPT).await?;
            let task: Value =
                running.session.api.post("/tasks", &json!({"name": "read-me", "script_id": script})).await?.value;
            let task_id = task["id"].as_i64().context("a task without an id")?;
            let health = load(&running.server, "/health", None, settings).await?;
            let bearer = format!("Bearer {}", running.session.token);
            let task = load(&running.server, &format!("/tasks/{task_id}"), Some(&bearer), settings).await?;
            Ok((health, task))
        })
        .await?;
    let what = "GET /tasks/{id} (bearer) against GET /health";
    report.add(
        PHASE,
        Measurement::new(format!("{what}: req/s"), task.requests_per_second, "req/s")
            .against(health.requests_per_second)
            .target(Target::AtLeast(20_000.0)),
    );
    report.add(
        PHASE,
        Measurement::new(format!("{what}: p50"), task.latency_ms.median(), "ms").against(health.latency_ms.median()),
    );
    report.add(
        PHASE,
        Measurement::new(format!("{what}: p99"), task.latency_ms.percentile(0.99), "ms")
            .against(health.latency_ms.percentile(0.99))
            .target(Target::AtMost(5.0)),
    );
    report.add(
        PHASE,
        Measurement::new("load generator's CPU during GET /tasks/{id}", task.generator_cores, "cores")
            .against(health.generator_cores),
    );
    report.add(
        PHASE,
        Measurement::new("server's CPU during GET /tasks/{id}", task.server_cores, "cores")
            .against(health.server_cores),
    );
    report.print_phase(PHASE);
    Ok(())
}

/// `connections` connections sending `GET path` back to back for the warm-up and `load_seconds`.
async fn load(server: &Server, path: &str, authorization: Option<&str>, settings: &Settings) -> anyhow::Result<Round> {
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse()?;
    let start = Instant::now();
    let measured_from = start + WARM_UP;
    let until = measured_from + Duration::from_secs(settings.load_seconds);
    let mut connections = tokio::task::JoinSet::new();
    for _ in 0..settings.connections {
        let (path, authorization) = (path.to_owned(), authorization.map(str::to_owned));
        connections.spawn(async move { connection(addr, &path, authorization.as_deref(), measured_from, until).await });
    }
    tokio::time::sleep_until(measured_from.into()).await;
    let (generator_before, server_before) = (own_cpu_seconds()?, server.cpu_seconds()?);
    let mut latencies = Vec::new();
    while let Some(done) = connections.join_next().await {
        latencies.extend(done??);
    }
    let window = (Instant::now().min(until) - measured_from).as_secs_f64();
    let (generator_after, server_after) = (own_cpu_seconds()?, server.cpu_seconds()?);
    anyhow::ensure!(!latencies.is_empty(), "no request of GET {path} was answered");
    Ok(Round {
        requests_per_second: latencies.len() as f64 / window,
        latency_ms: Samples::new(latencies),
        generator_cores: (generator_after - generator_before) / window,
        server_cores: (server_after - server_before) / window,
    })
}

/// One keep-alive connection: requests one after another until `until`; the latencies (ms) of those sent
/// from `measured_from` on.
async fn connection(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    measured_from: Instant,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let host = addr.to_string();
    let mut latencies = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= until {
            return Ok(latencies);
        }
        let mut request = hyper::Request::get(path).header(hyper::header::HOST, &host);
        if let Some(authorization) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        sender.ready().await?;
        let response = sender.send_request(request.body(String::new())?).await?;
        anyhow::ensure!(response.status().is_success(), "GET {path} answered {}", response.status());
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            frame?;
        }
        if sent >= measured_from {
            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// CPU time (user + system) this process has used, in seconds.
fn own_cpu_seconds() -> anyhow::Result<f64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}
