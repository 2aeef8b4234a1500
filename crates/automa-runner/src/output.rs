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
        let read = &buf[..grant.keep];
        pending.extend_from_slice(read);
        // Only a read that brings a newline or fills a chunk can end one: looking through all that is pending
        // after every read would cost quadratic time for a script that writes a long line a byte at a time.
        if read.contains(&b'\n') || pending.len() >= MAX_CHUNK {
            while let Some(cut) = chunk_end(&pending) {
                let rest = pending.split_off(cut);
                send(&out, stream, &std::mem::replace(&mut pending, rest)).await;
            }
        }
        if grant.first_truncation {
            send(&out, stream, &std::mem::take(&mut pending)).await;
            let note = format!("output truncated: only the first {} bytes are kept\n", budget.limit);
            send(&out, Stream::System, note.as_bytes()).await;
        }
    }
    send(&out, stream, &pending).await;
}

/// Where the next chunk of `pending` ends: after its last newline within the chunk size, or, for a long line,
/// at the last UTF-8 character boundary within it. Looking for newlines beyond the chunk size would let a
/// chunk grow to nearly twice it (a partial line pending plus a full read).
fn chunk_end(pending: &[u8]) -> Option<usize> {
    if let Some(newline) = pending[..pending.len().min(MAX_CHUNK)].iter().rposition(|&b| b == b'\n') {
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
    // NUL is replaced like invalid UTF-8: stored output is text, and PostgreSQL's text cannot hold it.
    let data = String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}");
    let chunk = OutputChunk { stream, data, at: std::time::SystemTime::now() };
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

/// Log chunking against arbitrary output, written in arbitrary pieces: nothing is lost or altered under the
/// budget, chunks stay line-aligned and bounded, a long line is cut only at character boundaries, and past the
/// budget exactly the first `limit` bytes are kept, with one note.
#[cfg(test)]
mod chunking_properties {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use proptest::prelude::*;
    use tokio::io::ReadBuf;

    use super::*;

    /// A pipe that hands over its bytes in the given piece sizes, as a script's writes may arrive.
    struct Pieces {
        data: Vec<u8>,
        sizes: Vec<usize>,
        at: usize,
        piece: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let size = self.sizes[self.piece % self.sizes.len()];
            let end = (self.at + size).min(self.data.len()).min(self.at + buf.remaining());
            let start = self.at;
            buf.put_slice(&self.data[start..end]);
            self.at = end;
            self.piece += 1;
            Poll::Ready(Ok(()))
        }
    }

    fn drained(data: Vec<u8>, sizes: Vec<usize>, limit: u64) -> (Vec<OutputChunk>, (u64, bool)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            // Received while draining, as the runner does: a newline written byte by byte makes a chunk per
            // read, more than any channel holds.
            let (tx, mut rx) = mpsc::channel(64);
            let budget = Budget::new(limit);
            let receive = async {
                let mut chunks = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    chunks.push(chunk);
                }
                chunks
            };
            let ((), chunks) = tokio::join!(
                drain(Pieces { data, sizes, at: 0, piece: 0 }, Stream::Stdout, budget.clone(), tx),
                receive
            );
            (chunks, budget.totals())
        })
    }

    /// Output made of short lines, long lines and runs without newlines, in one- to four-byte characters.
    fn output() -> impl Strategy<Value = String> {
        let character = prop::sample::select(vec!['a', '\n', 'é', '€', '𝄞', ' ', '\r', '\t']);
        let segment = prop_oneof![
            4 => "[a-z ]{0,80}\n",
            2 => (character.clone(), 1usize..140_000).prop_map(|(c, n)| c.to_string().repeat(n)),
            1 => ".{0,200}".prop_map(|text| text.replace('\0', "")),
        ];
        prop::collection::vec(segment, 0..12).prop_map(|segments| segments.concat())
    }

    fn piece_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(prop_oneof![1 => 1usize..8, 4 => 1usize..70_000], 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn under_the_budget_output_arrives_whole_in_bounded_line_aligned_chunks(text in output(), sizes in piece_sizes()) {
            let (chunks, totals) = drained(text.clone().into_bytes(), sizes, u64::MAX / 4);
            prop_assert_eq!(totals, (text.len() as u64, false));
            prop_assert_eq!(chunks.iter().map(|c| c.data.as_str()).collect::<String>(), text);
            for (index, chunk) in chunks.iter().enumerate() {
                prop_assert!(!chunk.data.is_empty() && chunk.data.len() <= MAX_CHUNK, "chunk {} has {} bytes", index, chunk.data.len());
                let last = index + 1 == chunks.len();
                // A chunk ends a line, or is a long line cut within three bytes of the size (a character
                // boundary), or is the end of the output.
                prop_assert!(last || chunk.data.ends_with('\n') || chunk.data.len() > MAX_CHUNK - 4, "chunk {} of {} bytes", index, chunk.data.len());
                prop_assert_eq!(chunk.stream, Stream::Stdout);
            }
        }

        #[test]
        fn past_the_budget_exactly_the_first_bytes_are_kept(text in "[a-z\n]{0,3000}", sizes in piece_sizes(), limit in 0u64..3000) {
            let (chunks, totals) = drained(text.clone().into_bytes(), sizes, limit);
            let over = text.len() as u64 > limit;
            prop_assert_eq!(totals, (text.len() as u64, over));
            let kept: String = chunks.iter().filter(|c| c.stream == Stream::Stdout).map(|c| c.data.as_str()).collect();
            prop_assert_eq!(kept.as_str(), &text[..text.len().min(limit as usize)]);
            let notes = chunks.iter().filter(|c| c.stream == Stream::System).count();
            prop_assert_eq!(notes, usize::from(over));
        }

        #[test]
        fn arbitrary_bytes_are_chunked_without_loss_of_length_bounds(data in prop::collection::vec(any::<u8>(), 0..200_000), sizes in piece_sizes()) {
            let (chunks, totals) = drained(data.clone(), sizes, u64::MAX / 4);
            prop_assert_eq!(totals, (data.len() as u64, false));
            // Invalid UTF-8 is replaced (at most three bytes per byte), never dropped silently.
            let received: usize = chunks.iter().map(|c| c.data.len()).sum();
            prop_assert!(received >= data.len() && received <= 3 * data.len());
            prop_assert!(chunks.iter().all(|c| !c.data.contains('\0')), "NUL never reaches stored text");
        }
    }
}
