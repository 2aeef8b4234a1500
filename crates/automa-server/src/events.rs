//! The in-process event hub: run, task, agent and output changes, published after their transaction commits,
//! for `/events`, the live log stream and long-polling claims. Slow subscribers lag and skip; every consumer
//! re-reads the database for what it shows, so a skipped event costs freshness, never correctness.

use std::sync::Arc;

use tokio::sync::broadcast;

use automa_store::Run;

#[derive(Debug, Clone)]
pub enum Event {
    /// A run was queued or changed state.
    Run(Box<Run>),
    /// New output of a run was stored, up to `last_seq`.
    Output { run_id: i64, last_seq: i64 },
    /// An agent registered, heartbeat with a change, or was updated.
    Agent { id: i64 },
    /// A task was created, changed (enabled and paused included), deleted, or fired (its next fire moved).
    Task { id: i64 },
}

impl Event {
    pub fn run_id(&self) -> Option<i64> {
        match self {
            Event::Run(run) => Some(run.id),
            Event::Output { run_id, .. } => Some(*run_id),
            Event::Agent { .. } | Event::Task { .. } => None,
        }
    }
}

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub { sender: broadcast::channel(4096).0 }
    }
}

impl Hub {
    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}
