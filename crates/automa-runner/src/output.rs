//! Draining a run's stdout and stderr under one byte budget (SANDBOX.md, trap 9): the first
//! `max_output_bytes` are streamed in line-aligned chunks, the rest is counted and dropped, and past the hard
//! cap the run is killed. Memory use stays bounded whatever the script writes.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, mpsc};

use crate::{OutputChunk, Stream};

/// A line longer than this is split across chunks.
const MAX_CHUNK: usize = 64 * 1024;

/// The shared budget of both streams of one run.
#[derive(Debug)]
pub(crate) struct Budget {
    state: Mutex<State>,
    limit: u64,
    hard_cap: u64,
    /// Woken once when the hard cap is passed.
    pub over_cap: Notify,
}

#[derive(Debug, Default)]
struct State {
    total: u64,
    kept: u64,
    noted: bool,
}

/// What a read is allowed to keep.
struct Grant {
    keep: usize,
    /// This read is the first to hit the limit: the reader tells the user.
    first_truncation: bool,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Budget> {
        let hard_cap = limit.saturating_add(limit.max(1024 * 1024));
        Arc::new(Budget { state: Mutex::new(State::default()), limit, hard_cap, over_cap: Notify::new() })
    }

    fn take(&self, n: usize) -> Grant {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.total = state.total.saturating_add(n as u64);
        let keep = usize::try_from((self.limit - state.kept).min(n as u64)).unwrap_or(n);
        state.kept += keep as u64;
        let first_truncation = keep < n && !state.noted;
        state.noted |= first_truncation;
        if state.total > self.hard_cap {
            self.over_cap.notify_one();
        }
        Grant { keep, first_truncation }
    }

    /// Bytes written in all, and whether any were dropped.
    pub(crate) fn totals(&self) -> (u64, bool) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.total, state.total > state.kept)
    }
}

/// Reads `pipe` to its end, sending what the budget allows as chunks. A closed receiver does not stop the
/// draining: the script must never block on a full pipe because nobody listens.
pub(crate) async fn drain(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    budget: Arc<Budget>,
    out: mpsc::Sender<OutputChunk>,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_CHUNK);
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let grant = budget.take(n);
        pending.extend_from_slice(&buf[..grant.keep]);
        while let Some(cut) = chunk_end(&pending) {
            let rest = pending.split_off(cut);
            send(&out, stream, &std::mem::replace(&mut pending, rest)).await;
        }
        if grant.first_truncation {
            send(&out, stream, &std::mem::take(&mut pending)).await;
            let note = format!("output truncated: only the first {} bytes are kept\n", budget.limit);
            send(&out, Stream::System, note.as_bytes()).await;
        }
    }
    send(&out, stream, &pending).await;
}

/// Where the next chunk of `pending` ends: after its last newline, or, for a long line, at the last UTF-8
/// character boundary within the chunk size.
fn chunk_end(pending: &[u8]) -> Option<usize> {
    if let Some(newline) = pending.iter().rposition(|&b| b == b'\n') {
        return Some(newline + 1);
    }
    if pending.len() < MAX_CHUNK {
        return None;
    }
    let head = &pending[..MAX_CHUNK];
    match std::str::from_utf8(head) {
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => Some(e.valid_up_to()),
        _ => Some(MAX_CHUNK),
    }
}

pub(crate) async fn send(out: &mpsc::Sender<OutputChunk>, stream: Stream, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let chunk = OutputChunk { stream, data: String::from_utf8_lossy(bytes).into_owned() };
    let _ = out.send(chunk).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(input: &[u8], limit: u64) -> (Vec<OutputChunk>, (u64, bool)) {
        let (tx, mut rx) = mpsc::channel(1024);
        let budget = Budget::new(limit);
        drain(input, Stream::Stdout, budget.clone(), tx).await;
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push(c);
        }
        (chunks, budget.totals())
    }

    #[tokio::test]
    async fn lines_never_straddle_chunks() {
        let input = "one\ntwo\nthree".as_bytes();
        let (chunks, totals) = collect(input, 1000).await;
        assert_eq!(chunks.iter().map(|c| c.data.as_str()).collect::<String>(), "one\ntwo\nthree");
        assert!(chunks.iter().all(|c| c.data.ends_with('\n') || c.data == "three"));
        assert_eq!(totals, (13, false));
    }

    #[tokio::test]
    async fn long_lines_split_at_character_boundaries() {
        let input = "é".repeat(MAX_CHUNK);
        let (chunks, _) = collect(input.as_bytes(), u64::MAX / 4).await;
        assert!(chunks.len() >= 2);
        assert!(chunks.iter().all(|c| !c.data.contains('\u{FFFD}')));
        assert_eq!(chunks.iter().map(|c| c.data.as_str()).collect::<String>(), input);
    }

    #[tokio::test]
    async fn output_past_the_limit_is_counted_and_dropped() {
        let (chunks, totals) = collect(b"0123456789\nabcdef\n", 12).await;
        let text: String = chunks.iter().filter(|c| c.stream == Stream::Stdout).map(|c| c.data.clone()).collect();
        assert_eq!(text, "0123456789\na");
        assert!(chunks.iter().any(|c| c.stream == Stream::System && c.data.contains("truncated")));
        assert_eq!(totals, (18, true));
    }
}
