//! `GET /events`: a Server-Sent Events stream of run, task and agent changes, for the dashboard's live views.

use std::convert::Infallible;

use axum::{
    extract::State,
    response::{Sse, sse},
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use crate::{api::runs::RunResponse, auth::Principal, events::Event, state::AppState};

/// Live changes: `run` events carry the run, `task` and `agent` events `{"id": N}` (re-read the task or agent:
/// a 404 means it was deleted). Output is not included (follow
/// `/runs/{id}/logs/stream` for that). A client that falls behind skips events and should re-read lists. The
/// stream ends when the credentials it was opened with expire or are revoked, and when the server shuts down
/// (the client reconnects to another server or once this one is back).
#[utoipa::path(get, path = "/events", operation_id = "streamEvents", tag = "events", security(("bearer" = ["viewer"])),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = crate::api::ServerSentEvent)))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    let stream = BroadcastStream::new(state.events.subscribe()).filter_map(|event| async move {
        let event = event.ok()?;
        let sse_event = match &*event {
            Event::Run(run) => {
                let data = serde_json::to_string(&RunResponse::from((**run).clone())).ok()?;
                sse::Event::default().event("run").data(data)
            }
            Event::Task { id } => sse::Event::default().event("task").data(serde_json::json!({"id": id}).to_string()),
            Event::Agent { id } => sse::Event::default().event("agent").data(serde_json::json!({"id": id}).to_string()),
            Event::Output { .. } => return None,
        };
        Some(Ok(sse_event))
    });
    let stream = stream.take_until(stream_end(&state, &principal));
    Sse::new(stream).keep_alive(sse::KeepAlive::default())
}

/// When an event stream ends: once the credentials it was opened with end, or the server begins to shut down,
/// whose graceful stop would otherwise wait for the stream forever.
pub(crate) fn stream_end(state: &AppState, principal: &Principal) -> impl Future<Output = ()> + Send + use<> {
    let credentials = principal.credentials_end(state);
    let stopping = state.execution.stopping();
    async move {
        tokio::select! {
            () = credentials => {}
            () = stopping => {}
        }
    }
}
