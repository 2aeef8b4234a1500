//! One run on the agent: execute it in the sandbox, ship its output in numbered batches while it runs, then
//! report how it ended. Shipping retries until the server takes the batch; while it cannot, output waits in a
//! bounded channel and, once that is full, the script blocks on its next write rather than the agent growing
//! without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use automa_runner::{OutputChunk, Report, RunSpec, Sandbox, Stream};

use crate::backend::AgentBackend;
use crate::environments::{self, Environments, Preparation};
use crate::protocol::{Assignment, LogBatch, Outcome, WireChunk};
use crate::worker::Running;

/// Chunks waiting to be shipped, per run. With chunks of at most 64 KiB this bounds a run's buffer to 16 MiB.
const CHANNEL_CHUNKS: usize = 256;
/// Bytes per batch; a batch is sent as soon as output is available, so this bounds size, not latency.
const BATCH_BYTES: usize = 512 * 1024;
/// How long to keep trying to deliver output or a result before giving up on an unreachable server.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(600);

/// Why this agent stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its cancellation was requested.
    Cancelled,
    /// The agent is shutting down and gives the run back.
    HandedBack,
    /// The server no longer counts the run as this agent's (it ended or was lost): it writes what happened.
    Gone,
    /// The lease could not be renewed for this long, so the run was stopped before it could expire.
    LeaseLost(Duration),
}

/// Stops a run, and knows how fresh its lease is.
pub(crate) struct RunControl {
    stop: watch::Sender<bool>,
    reason: Mutex<Option<Stop>>,
    /// A moment no later than the server's last grant or renewal of the run's lease: when the request that
    /// renewed it was sent.
    renewed: Mutex<Instant>,
    /// The script has ended: nothing is left to fence, only a result to deliver (which heartbeats keep the
    /// lease for meanwhile).
    ended: AtomicBool,
}

impl RunControl {
    /// Stops the run for `reason`. The server having given the run up (gone, or its lease lost) is a fact a
    /// later reason cannot change; otherwise the latest reason counts (a shutdown after a cancel request hands
    /// the run back, and the server then ends it cancelled).
    pub(crate) fn stop(&self, reason: Stop) {
        {
            let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*current, Some(Stop::Gone | Stop::LeaseLost(_))) {
                *current = Some(reason);
            }
        }
        self.stop.send_replace(true);
    }

    pub(crate) fn reason(&self) -> Option<Stop> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a request sent at `sent` renewed the lease.
    pub(crate) fn renewed(&self, sent: Instant) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        *renewed = (*renewed).max(sent);
    }

    /// How long ago the lease was last known renewed.
    pub(crate) fn unrenewed_for(&self) -> Duration {
        self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    pub(crate) fn script_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Executes one assignment to its end and reports it. `claim_sent` is when the claim that brought it was sent.
pub(crate) async fn execute<B: AgentBackend>(
    backend: Arc<B>,
    sandbox: Arc<Sandbox>,
    environments: Result<Environments, String>,
    running: Running,
    mut work: Assignment,
    claim_sent: Instant,
) {
    let run_id = work.run_id;
    // The server took the lease after holding the claim this long, and no earlier than it received it.
    let arrived = Instant::now();
    let leased = match work.held_ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(held) => (claim_sent + Duration::from_millis(held)).min(arrived),
        None => arrived,
    };
    let (stop, stopped) = watch::channel(false);
    let control = Arc::new(RunControl {
        stop,
        reason: Mutex::new(None),
        renewed: Mutex::new(leased),
        ended: AtomicBool::new(false),
    });
    running.start(run_id, control.clone());
    let (output, chunks) = mpsc::channel(CHANNEL_CHUNKS);
    let shipper = tokio::spawn(ship(backend.clone(), run_id, work.last_log_seq, chunks, control.clone()));
    let started = Instant::now();
    let preparation = match work.environment.take() {
        None => None,
        Some(wanted) => {
            let limit = Duration::from_secs(u64::try_from(work.limits.timeout_seconds()).unwrap_or(0));
            Some(environments::prepare_for_run(&environments, &wanted, &output, stopped.clone(), limit).await)
        }
    };
    let environment_ms = match &preparation {
        Some(Preparation::Ready(_, took)) => Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX)),
        _ => None,
    };
    let result = match preparation {
        None => sandbox.run(spec(work, None), output, stopped).await.map_err(|e| e.to_string()),
        Some(Preparation::Ready(prepared, _)) => {
            let mut spec = spec(work, Some(prepared.lease.path().to_path_buf()));
            // The run's time limit covers waiting for its environment: the script gets what is left.
            // (A millisecond at least: a zero limit is refused as invalid, not timed out.)
            spec.limits.timeout = spec.limits.timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
            // The lease is held until the script has ended, so the environment cannot be evicted under it.
            sandbox.run(spec, output, stopped).await.map_err(|e| e.to_string())
        }
        // The script never starts: the log ends here, which lets the shipper finish.
        Some(Preparation::Failed(error)) => {
            drop(output);
            Err(error)
        }
        Some(Preparation::Stopped) => {
            drop(output);
            Ok(Report { cancelled: true, ..Report::default() })
        }
    };
    let ended = Instant::now();
    control.ended.store(true, Ordering::SeqCst);
    let shipped = shipper.await.unwrap_or(false);
    let mut outcome = match result {
        Ok(report) => outcome(&report),
        Err(error) => Outcome { error: Some(error), ..Outcome::default() },
    };
    outcome.environment_ms = environment_ms;
    if outcome.elapsed_ms.is_none() {
        outcome.elapsed_ms = i64::try_from((ended - started).as_millis()).ok();
    }
    let reason = control.reason();
    if reason == Some(Stop::HandedBack) && (outcome.cancelled || outcome.error.is_some()) {
        // Stopped by this agent's shutdown, not by anything the script did: the run is not over. (A script that
        // ended by itself just as the grace ran out is reported as it ended.)
        let _ = deliver(|| backend.hand_back(run_id), run_id, "hand-back").await;
        running.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
        return;
    }
    if let Some(Stop::LeaseLost(unrenewed)) = reason {
        outcome.lease_lost = true;
        outcome.cancelled = false;
        outcome.error = Some(fenced_explanation(unrenewed));
    }
    if !shipped && outcome.error.is_none() {
        outcome.error = Some("some output could not be delivered to the server".into());
    }
    let report = |mut outcome: Outcome| {
        outcome.ended_ms_ago = i64::try_from(ended.elapsed().as_millis()).ok();
        backend.finish(run_id, outcome)
    };
    let _ = deliver(|| report(outcome.clone()), run_id, "result").await;
    running.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
}

/// What a run stopped by its lease's fence says, in its result and its log.
fn fenced_explanation(unrenewed: Duration) -> String {
    format!(
        "stopped by its agent: the lease could not be renewed for {} s (server unreachable), so it was stopped \
         before another agent could be given it",
        unrenewed.as_secs()
    )
}

fn spec(work: Assignment, environment: Option<std::path::PathBuf>) -> RunSpec {
    RunSpec {
        script_name: work.filename,
        script: work.content,
        args: work.args.into(),
        env: work.env.into_iter().collect(),
        limits: work.limits.into(),
        network: work.network,
        payload: work.payload,
        environment,
        warm: work.warm,
    }
}

fn outcome(report: &Report) -> Outcome {
    let signed = |value: Option<u64>| value.and_then(|v| i64::try_from(v).ok());
    Outcome {
        exit_code: report.exit_code.map(i64::from),
        signal: report.signal.map(i64::from),
        timed_out: report.timed_out,
        cancelled: report.cancelled,
        oom_killed: report.oom_killed,
        output_limit_exceeded: report.output_limit_exceeded,
        max_rss_kb: signed(report.max_rss_kb),
        cpu_ms: signed(report.cpu_ms),
        output_bytes: signed(Some(report.output_bytes)),
        truncated: report.truncated,
        error: None,
        abandoned: false,
        setup_ms: report.setup.and_then(|setup| i64::try_from(setup.as_millis()).ok()),
        lease_lost: false,
        elapsed_ms: i64::try_from(report.duration.as_millis()).ok(),
        ended_ms_ago: None,
        environment_ms: None,
        warm_start: report.warm_start,
    }
}

/// Sends output as it arrives: whatever accumulated while the previous batch was in flight goes in the next,
/// so batches grow under load and stay small (low latency) when output trickles. True when all was delivered.
async fn ship<B: AgentBackend>(
    backend: Arc<B>,
    run_id: i64,
    last_log_seq: i64,
    mut chunks: mpsc::Receiver<OutputChunk>,
    control: Arc<RunControl>,
) -> bool {
    let mut seq = last_log_seq.max(0);
    let mut delivered = true;
    while let Some(first) = chunks.recv().await {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(chunk) = next.take() {
            // The sandbox notes every stop as a cancel. After any other stop the log says what happened instead:
            // the server's line (handed back, lost) or this agent's (the lease's fence).
            if chunk.stream != Stream::System || !stopped_otherwise(&control) {
                bytes += chunk.data.len();
                seq += 1;
                let stream = stream_name(chunk.stream).into();
                let ts = DateTime::<Utc>::from(chunk.at);
                batch.push(WireChunk { seq, stream, ts, data: chunk.data });
            }
            if bytes < BATCH_BYTES {
                next = chunks.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let batch = LogBatch { chunks: batch };
        match deliver(|| backend.append_logs(run_id, batch.clone()), run_id, "output").await {
            Ok(reply) if reply.cancel_requested => control.stop(Stop::Cancelled),
            Ok(_) => {}
            Err(crate::AgentError::Rejected { status: 404 | 409, detail }) => {
                // The run ended or went to another agent: nothing this agent does for it counts any more.
                tracing::warn!(run_id, %detail, "the server no longer takes this run's output; stopping it");
                control.stop(Stop::Gone);
                while chunks.recv().await.is_some() {}
                return false;
            }
            Err(_) => delivered = false,
        }
    }
    if let Some(Stop::LeaseLost(unrenewed)) = control.reason() {
        let data = format!("{}\n", fenced_explanation(unrenewed));
        let note = WireChunk { seq: seq + 1, stream: "system".into(), ts: Utc::now(), data };
        // Refused once the lease has expired: the server's own line then says the run was lost.
        delivered &= deliver(|| backend.append_logs(run_id, LogBatch { chunks: vec![note.clone()] }), run_id, "output")
            .await
            .is_ok();
    }
    delivered
}

/// True once the run was stopped for a reason other than a cancel request.
fn stopped_otherwise(control: &RunControl) -> bool {
    !matches!(control.reason(), None | Some(Stop::Cancelled))
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::System => "system",
    }
}

/// Retries a request with backoff while the failure is worth retrying, up to the delivery deadline.
async fn deliver<T, F, Fut>(mut request: F, run_id: i64, what: &str) -> Result<T, crate::AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::AgentError>>,
{
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    let mut delay = Duration::from_millis(100);
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(run_id, %error, "cannot deliver the run's {what}; retrying");
            }
            Err(error) => {
                tracing::error!(run_id, %error, "giving up delivering the run's {what}");
                return Err(error);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
