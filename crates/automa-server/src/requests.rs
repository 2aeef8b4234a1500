//! What every request leaves behind: an id, returned in `x-request-id` and carried by a `request` span so that
//! every line logged while answering names it; a debug line when it is answered; and its count and latency
//! under its route template. Spans and metrics name the route template (`/runs/{id}`), never the raw path,
//! which a client chooses and which may hold a token (`/hooks/{token}`).

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

use crate::{metrics::UNMATCHED_ROUTE, state::AppState};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen id kept; a proxy's ids (a UUID, nginx's 32 hex digits) fit.
const MAX_CLIENT_ID: usize = 64;

/// A client's `x-request-id` is kept when it is short and plain (letters, digits, `-`, `_`, `.`), so that a
/// proxy's id follows the request into these logs; anything else is replaced, so a client cannot write
/// control characters, quotes or kilobytes into every line of a request.
fn request_id(request: &Request) -> String {
    let offered = request.headers().get(&REQUEST_ID).and_then(|value| value.to_str().ok());
    match offered {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_CLIENT_ID
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            id.to_owned()
        }
        _ => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).expect("the operating system provides randomness");
            hex::encode(bytes)
        }
    }
}

/// The methods the API answers are labels of their own; anything else is `other`, so that a client inventing
/// methods cannot add series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, |path| path.as_str()).to_owned();
    let method = method_label(request.method());
    let header = HeaderValue::from_str(&id).expect("a request id is plain ASCII");
    request.headers_mut().insert(REQUEST_ID, header.clone());
    let span = tracing::info_span!("request", request_id = %id, method, route = %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| tracing::debug!(status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "answered"));
    state.execution.metrics.http_request(method, &route, status, elapsed);
    response.headers_mut().insert(REQUEST_ID, header);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &[u8]) -> Request {
        let mut request = Request::new(axum::body::Body::empty());
        request.headers_mut().insert(REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        request
    }

    #[test]
    fn a_plain_client_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(&with_id(b"edge-7f3a.1_b")), "edge-7f3a.1_b");
        for bad in [&b"has space"[..], b"quote\"d", b"semi;colon", &[b'a'; 65], b""] {
            let replaced = request_id(&with_id(bad));
            assert_eq!(replaced.len(), 32, "{:?} is replaced by a fresh id", String::from_utf8_lossy(bad));
            assert!(replaced.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let fresh = request_id(&Request::new(axum::body::Body::empty()));
        assert_ne!(fresh, request_id(&Request::new(axum::body::Body::empty())), "fresh ids differ");
    }
}
