//! One run on the agent: execute it in the sandbox, ship its output in numbered batches while it runs, then
//! report how it ended. Shipping retries until the server takes the batch; while it cannot, output waits in a
//! bounded channel and, once that is full, the script blocks on its next write rather than the agent growing
//! without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use automa_runner::{Limits, OutputChunk, Report, RunSpec, Sandbox, Stream};

use crate::backend::AgentBackend;
use crate::protocol::{Assignment, LogBatch, Outcome, WireChunk};
use crate::worker::Running;

/// Chunks waiting to be shipped, per run. With chunks of at most 64 KiB this bounds a run's buffer to 16 MiB.
const CHANNEL_CHUNKS: usize = 256;
/// Bytes per batch; a batch is sent as soon as output is available, so this bounds size, not latency.
const BATCH_BYTES: usize = 512 * 1024;
/// How long to keep trying to deliver output or a result before giving up on an unreachable server.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(600);

/// Stops a run: `cancel` for a cancel request, `abandon` when the agent gives the run back.
pub(crate) struct RunControl {
    stop: watch::Sender<bool>,
    abandoned: AtomicBool,
}

impl RunControl {
    pub(crate) fn cancel(&self) {
        self.stop.send_replace(true);
    }

    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
    }
}

/// Executes one assignment to its end and reports it.
pub(crate) async fn execute<B: AgentBackend>(
    backend: Arc<B>,
    sandbox: Arc<Sandbox>,
    running: Running,
    work: Assignment,
) {
    let run_id = work.run_id;
    let (stop, stopped) = watch::channel(false);
    let control = Arc::new(RunControl { stop, abandoned: AtomicBool::new(false) });
    running.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id, control.clone());
    let (output, chunks) = mpsc::channel(CHANNEL_CHUNKS);
    let shipper = tokio::spawn(ship(backend.clone(), run_id, work.last_log_seq, chunks, control.clone()));
    let result = sandbox.run(spec(work), output, stopped).await;
    let shipped = shipper.await.unwrap_or(false);
    let mut outcome = match result {
        Ok(report) => outcome(&report),
        Err(error) => Outcome { error: Some(error.to_string()), ..Outcome::default() },
    };
    if control.abandoned.load(Ordering::SeqCst) && (outcome.cancelled || outcome.error.is_some()) {
        // Stopped by this agent's shutdown, not by anything the script did: the run is not over. (A script that
        // ended by itself just as the grace ran out is reported as it ended.)
        let _ = deliver(|| backend.hand_back(run_id), run_id, "hand-back").await;
        running.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
        return;
    }
    if !shipped && outcome.error.is_none() {
        outcome.error = Some("some output could not be delivered to the server".into());
    }
    let _ = deliver(|| backend.finish(run_id, outcome.clone()), run_id, "result").await;
    running.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
}

fn spec(work: Assignment) -> RunSpec {
    let clamp = |value: i64| u64::try_from(value).unwrap_or(0);
    RunSpec {
        script_name: work.filename,
        script: work.content,
        args: work.args,
        env: work.env.into_iter().collect(),
        limits: Limits {
            timeout: Duration::from_secs(clamp(work.timeout_seconds)),
            memory_mb: clamp(work.memory_mb),
            cpu_seconds: clamp(work.cpu_seconds),
            max_output_bytes: clamp(work.max_output_bytes),
            ..Limits::default()
        },
        network: work.network,
        payload: work.payload,
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
            // The sandbox notes a stop as a cancel; after a shutdown's stop the server writes what happened
            // (the run was handed back), which a "cancelled" line would contradict.
            if chunk.stream != Stream::System || !control.abandoned.load(Ordering::SeqCst) {
                bytes += chunk.data.len();
                seq += 1;
                let stream = stream_name(chunk.stream).into();
                batch.push(WireChunk { seq, stream, ts: Utc::now(), data: chunk.data });
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
            Ok(reply) if reply.cancel_requested => control.cancel(),
            Ok(_) => {}
            Err(crate::AgentError::Rejected { status: 404 | 409, detail }) => {
                // The run ended or went to another agent: nothing this agent does for it counts any more.
                tracing::warn!(run_id, %detail, "the server no longer takes this run's output; stopping it");
                control.cancel();
                while chunks.recv().await.is_some() {}
                return false;
            }
            Err(_) => delivered = false,
        }
    }
    delivered
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
