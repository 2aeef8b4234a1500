//! Limits on what one client may take from the server: a request rate per token or address, the size and
//! arrival time of request heads, and the time a request may take. Each limit is set low here and shown to
//! answer with its documented status; none of these depends on the store's backend.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, TestApp, spawn_app_with};

/// An upper bound for waits on the server; never reached when the limits work.
const PATIENCE: Duration = Duration::from_secs(30);

async fn heartbeat(app: &TestApp, agent_token: &str) -> StatusCode {
    let body = json!({"initial": false, "hostname": "h", "version": "test", "capabilities": {}, "running": []});
    app.request(Method::POST, "/agent/heartbeat", Some(agent_token), Some(&body)).await.status
}

#[tokio::test]
async fn requests_beyond_the_rate_get_429_per_authenticated_token_else_per_address() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.requests_per_minute = 6;
        config.agent_requests_per_minute = 100;
    })
    .await;
    // Anonymous, counted under the address: POST /users, POST /token (twice, with user_token's login). A
    // token's first request is moved from the address to the token once it has authenticated.
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    let agent = app.post("/agents", &admin, json!({"name": "remote"})).await.body["token"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        assert_eq!(app.get("/setup", &admin).await.status, StatusCode::OK);
    }
    let refused = app.get("/setup", &admin).await;
    assert_eq!(
        (refused.status, refused.detail()),
        (StatusCode::TOO_MANY_REQUESTS, "too many requests: try again in 10 s")
    );
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 10, "a 6-a-minute budget refills one request every 10 s");

    assert_eq!(app.get("/scripts", &viewer).await.status, StatusCode::OK, "another token has its own budget");
    for _ in 0..20 {
        assert_eq!(heartbeat(&app, &agent).await, StatusCode::OK, "agents have their own, larger budget");
    }
    for n in 0..3 {
        assert_eq!(app.get("/scripts", &format!("atm_made-up-{n}")).await.status, StatusCode::UNAUTHORIZED);
    }
    let next_guess = app.get("/scripts", "atm_made-up-3").await;
    assert_eq!(next_guess.status, StatusCode::TOO_MANY_REQUESTS, "made-up tokens spend the address's budget");
    assert_eq!(app.request(Method::GET, "/health", None, None).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.get("/scripts", &viewer).await.status, StatusCode::OK, "an authenticated token keeps its own");
}

/// A bearer token that has not authenticated anything buys no budget of its own, on routes that never look
/// at it (public ones, unknown ones) as on those that answer 401.
#[tokio::test]
async fn made_up_bearer_tokens_on_public_and_unknown_routes_spend_the_addresss_budget() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.requests_per_minute = 5).await;
    for n in 0..20 {
        let ready = app.request(Method::GET, "/ready", Some(&format!("atm_junk-{n}")), None).await;
        let expected = if n < 5 { StatusCode::OK } else { StatusCode::TOO_MANY_REQUESTS };
        assert_eq!(ready.status, expected, "request {n}: {:?}", ready.body);
    }
    for path in ["/health", "/openapi.json", "/setup", "/no-such-route"] {
        let answer = app.request(Method::GET, path, Some("atm_junk-again"), None).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_anonymous_clients_are_counted_by_their_forwarded_address() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.requests_per_minute = 2;
        config.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let health = |client: &'static str| app.client.get(app.url("/health")).header("x-forwarded-for", client).send();
    for _ in 0..2 {
        assert_eq!(health("198.51.100.1").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(health("198.51.100.1").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(health("198.51.100.2").await.unwrap().status(), StatusCode::OK, "another client behind the proxy");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.max_header_bytes = 4096).await;
    let health = |padding: usize| app.client.get(app.url("/health")).header("x-padding", "p".repeat(padding)).send();
    assert_eq!(health(1000).await.unwrap().status(), StatusCode::OK);
    assert_eq!(health(8000).await.unwrap().status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_headers_is_disconnected() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.header_read_timeout_seconds = 1).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: automa\r\nX-Slow: ").await.unwrap();
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await;
    match read {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("expected the connection to be closed, got {:?}", String::from_utf8_lossy(&buffer[..n])),
        Err(_) => panic!("the server kept a connection with unfinished headers open"),
    }
}

#[tokio::test]
async fn a_request_whose_body_does_not_arrive_in_time_gets_408_but_long_polls_and_event_streams_live_on() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.request_timeout_seconds = 1).await;
    let admin = app.admin_token().await;
    let mut events = app.client.get(app.url("/events")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /scripts HTTP/1.1\r\nHost: automa\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"name\": \"slo"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server waited for the body beyond its request timeout");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#"{"detail":"the request did not complete within 1 s"#), "{response}");

    let agent = app.post("/agents", &admin, json!({"name": "remote"})).await.body["token"].as_str().unwrap().to_owned();
    let claim = app.request(Method::POST, "/agent/claim", Some(&agent), Some(&json!({"wait_seconds": 2}))).await;
    assert_eq!(claim.status, StatusCode::NO_CONTENT, "the long-poll is bounded by its own wait: {:?}", claim.body);

    // The event stream opened before the 408 has outlived the request timeout and still delivers.
    let body = json!({"initial": true, "hostname": "h", "version": "test", "capabilities": {}, "running": []});
    assert_eq!(app.request(Method::POST, "/agent/heartbeat", Some(&agent), Some(&body)).await.status, StatusCode::OK);
    let mut received = String::new();
    while !received.contains("event: agent") {
        let chunk = tokio::time::timeout(PATIENCE, events.chunk()).await.expect("the stream delivers").unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk.expect("the stream is still open")));
    }
}
