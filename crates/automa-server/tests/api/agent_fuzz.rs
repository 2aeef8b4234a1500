//! Property test of the agent protocol's parsers: whatever an agent (or someone holding an agent token) sends to
//! `/agent/*` — bytes that are not JSON, JSON of the wrong shape, or the right shape with absurd values — the
//! server answers 2xx or a 4xx with a `detail`, never a 5xx, and keeps working for well-behaved agents. Run on
//! both backends: PostgreSQL refuses text SQLite stores.

use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, postgres_url, spawn_app};

#[test]
fn agent_protocol_bodies_never_cause_a_server_error_sqlite() {
    agent_protocol_bodies_never_cause_a_server_error(Backend::Sqlite);
}

#[test]
fn agent_protocol_bodies_never_cause_a_server_error_postgres() {
    if postgres_url().is_some() {
        agent_protocol_bodies_never_cause_a_server_error(Backend::Postgres);
    }
}

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("stdout")),
        Just(json!("stderr")),
        Just(json!("system")),
        Just(json!("2026-01-01T00:00:00Z")),
        Just(json!("\u{0}")),
        Just(json!("x".repeat(70_000))),
        any::<String>().prop_map(Value::from),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), Just(i64::MIN)].prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!(1e300)),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), number(), text()]
}

/// A value of any shape, most often close to what the protocol expects.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS).prop_map(str::to_owned), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The protocol's field names (heartbeat, claim, logs, outcome).
const FIELDS: &[&str] = &[
    "initial",
    "hostname",
    "version",
    "capabilities",
    "running",
    "wait_seconds",
    "chunks",
    "seq",
    "stream",
    "ts",
    "data",
    "exit_code",
    "signal",
    "timed_out",
    "cancelled",
    "oom_killed",
    "output_limit_exceeded",
    "max_rss_kb",
    "cpu_ms",
    "output_bytes",
    "truncated",
    "error",
    "abandoned",
];

fn heartbeat() -> impl Strategy<Value = Value> {
    (any::<bool>(), text(), text(), value(), prop::collection::vec(number(), 0..4)).prop_map(
        |(initial, hostname, version, capabilities, running)| {
            json!({"initial": initial, "hostname": hostname, "version": version, "capabilities": capabilities, "running": running})
        },
    )
}

fn log_batch() -> impl Strategy<Value = Value> {
    let chunk = (number(), text(), text(), text())
        .prop_map(|(seq, stream, ts, data)| json!({"seq": seq, "stream": stream, "ts": ts, "data": data}));
    prop::collection::vec(chunk, 0..6).prop_map(|chunks| json!({ "chunks": chunks }))
}

fn outcome() -> impl Strategy<Value = Value> {
    (prop::option::of(number()), prop::option::of(number()), any::<bool>(), any::<bool>(), prop::option::of(text()))
        .prop_map(|(exit_code, signal, timed_out, abandoned, error)| {
            json!({"exit_code": exit_code, "signal": signal, "timed_out": timed_out, "abandoned": abandoned, "error": error})
        })
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => prop_oneof![heartbeat(), log_batch(), outcome(), value()].prop_map(Body::Json),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Bytes),
        1 => prop::sample::select(vec!["{", "[]", "null", "{\"chunks\": [{}]}", "\"\\u0000\"", "{\"a\":1,\"a\":2}"])
            .prop_map(|text| Body::Bytes(text.as_bytes().to_vec())),
    ]
}

/// A claim that would wait is made not to: the property is about parsing, not about long-polls.
fn without_waiting(path: &str, body: Body) -> Body {
    match body {
        Body::Json(value)
            if path == "/agent/claim"
                && serde_json::from_value::<automa_agent::ClaimRequest>(value.clone()).is_ok() =>
        {
            Body::Json(json!({"wait_seconds": 0}))
        }
        other => other,
    }
}

async fn send(app: &TestApp, token: &str, path: &str, body: &Body) -> (StatusCode, Value) {
    let request = app.client.post(app.url(path)).bearer_auth(token).header("content-type", "application/json");
    let request = match body {
        Body::Json(value) => request.body(value.to_string()),
        Body::Bytes(bytes) => request.body(bytes.clone()),
    };
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    (status, serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null))
}

fn agent_protocol_bodies_never_cause_a_server_error(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, admin, agent, paths) = runtime.block_on(async {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let agent =
            app.post("/agents", &admin, json!({"name": "fuzzed"})).await.body["token"].as_str().unwrap().to_owned();
        let hello = json!({"initial": true, "hostname": "h", "version": "v", "capabilities": {}, "running": []});
        assert_eq!(send(&app, &agent, "/agent/heartbeat", &Body::Json(hello)).await.0, StatusCode::OK);
        let held = app.post("/execute", &admin, json!({"content": "print(1)\n"})).await.body["id"].as_i64().unwrap();
        let (status, claimed) = send(&app, &agent, "/agent/claim", &Body::Json(json!({"wait_seconds": 0}))).await;
        assert_eq!((status, claimed["run_id"].as_i64()), (StatusCode::OK, Some(held)));
        let queued = app.post("/execute", &admin, json!({"content": "print(2)\n"})).await.body["id"].as_i64().unwrap();
        let mut paths = vec!["/agent/heartbeat".to_owned(), "/agent/claim".to_owned()];
        for run in [held, queued, 987_654] {
            paths.push(format!("/agent/runs/{run}/logs"));
            paths.push(format!("/agent/runs/{run}/finish"));
        }
        (app, admin, agent, paths)
    });
    let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(path in prop::sample::select(paths.clone()), body in body())| {
        let body = without_waiting(&path, body);
        let (status, reply) = runtime.block_on(send(&app, &agent, &path, &body));
        prop_assert!(!status.is_server_error(), "POST {} {:?} -> {} {:?}", path, body, status, reply);
        prop_assert!(status.is_success() || reply["detail"].is_string(), "POST {} {:?} -> {} {:?}", path, body, status, reply);
        if let Body::Bytes(bytes) = &body && serde_json::from_slice::<Value>(bytes).is_err() {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "POST {}: not JSON", path);
        }
    });
    runtime.block_on(async {
        let hello = json!({"hostname": "h", "version": "v", "capabilities": {}, "running": []});
        let (status, reply) = send(&app, &agent, "/agent/heartbeat", &Body::Json(hello)).await;
        assert_eq!(status, StatusCode::OK, "a well-behaved agent is still served: {reply:?}");
        let verify = app.get("/audit/verify", &admin).await;
        assert_eq!(verify.body["ok"], json!(true), "whatever was accepted kept the chain intact");
    });
}
