//! Serving HTTP connections with limits on what one client may hold: the request head must arrive within a
//! time and a size (slow or oversized headers cannot pin a connection or memory), and a request, body
//! included, must complete within a time. axum's `serve` exposes none of hyper's connection settings, so
//! connections are served here, the way `axum::serve` does, with those settings applied.

use std::{convert::Infallible, net::SocketAddr, pin::pin, time::Duration};

use axum::{
    Json,
    extract::{ConnectInfo, Request},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tower::{Service, ServiceExt};

use crate::error::ErrorBody;

/// Limits applied to every connection before a request reaches the router.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a complete request head (and the time an idle keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// Largest request head; larger ones are answered 431.
    pub max_header_bytes: usize,
}

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting, lets in-flight requests
/// finish and returns when every connection has closed. Each request carries the peer's `ConnectInfo`.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    // Connections hold a receiver each; shutdown waits until all are dropped.
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = service.clone().map_request(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            request
        });
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let mut stop_requested = stopping.clone();
        // Held until the connection is done, so that shutdown waits for it.
        let in_flight = stopping.clone();
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            let stop_requested = async move {
                let _ = stop_requested.wait_for(|stop| *stop).await;
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop_requested => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(in_flight);
        });
    }
    drop(listener);
    stop.send_replace(true);
    drop(stopping);
    stop.closed().await;
}

/// The route a long-poll holds for up to its own bound (60 s): it is exempt from the request timeout.
const LONG_POLL_PATH: &str = "/agent/claim";

/// Answers 408 when a request, body upload included, has not produced a response within `timeout`. Event
/// streams are unaffected once their response has started, which they do at once; the agent long-poll is
/// exempt.
pub async fn limit_request_time(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == LONG_POLL_PATH {
        return next.run(request).await;
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let detail = format!(
                "the request did not complete within {} s (a slow upload or a slow answer); try again",
                timeout.as_secs()
            );
            (StatusCode::REQUEST_TIMEOUT, Json(ErrorBody { detail, field: None })).into_response()
        }
    }
}
