//! Property tests: no JSON body, however odd, makes any POST or PUT route answer with a 5xx; script content and
//! names, however odd, are stored or refused with a 422 naming the field, never a 5xx.

use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::helpers::{Backend, TestApp, postgres_url, spawn_app};

/// Field names the API knows, so random objects often hit real fields with wrong values.
const FIELDS: &[&str] = &[
    "name",
    "email",
    "password",
    "role",
    "content",
    "filename",
    "description",
    "script_id",
    "script_version",
    "agent_id",
    "labels",
    "args",
    "env",
    "secrets",
    "timeout_seconds",
    "memory_mb",
    "cpu_seconds",
    "max_output_bytes",
    "network",
    "retries",
    "retry_backoff_seconds",
    "schedule",
    "scheduled_time",
    "enabled",
    "kind",
    "cron",
    "every_seconds",
    "timezone",
    "at",
    "max_concurrency",
    "disabled",
    "draining",
    "expires_in_days",
    "active",
    "misfire_grace_seconds",
    "coalesce",
    "max_instances",
    "jitter_seconds",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), Just(i64::MIN)].prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("0 3 * * *"),
            Just("UTC"),
            Just("Europe/Paris"),
            Just("cron"),
            Just("interval"),
            Just("once"),
            Just("admin"),
            Just("2026-01-01T00:00:00Z"),
            Just("print(1)"),
            Just("a@b.co"),
            Just("main.py")
        ]
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS).prop_map(str::to_owned), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every POST and PUT route of the document, with path parameters filled with ids that exist.
fn body_routes(openapi: &Value, script_id: i64, task_id: i64) -> Vec<(Method, String)> {
    let mut routes = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        // These end the fuzzing session itself, and every later case would only test a 401.
        if path == "/logout" || path.ends_with("/sessions/revoke") {
            continue;
        }
        for method in ["post", "put"] {
            if item.get(method).is_some() {
                let id = if path.starts_with("/tasks") { task_id } else { script_id };
                routes.push((
                    method.to_uppercase().parse().unwrap(),
                    path.replace("{id}", &id.to_string()).replace("{version}", "1"),
                ));
            }
        }
    }
    routes
}

#[test]
fn no_body_produces_a_server_error_sqlite() {
    no_body_produces_a_server_error(Backend::Sqlite);
}

/// PostgreSQL refuses what SQLite stores (NUL in text and JSON), so the same bodies must be tried on both.
#[test]
fn no_body_produces_a_server_error_postgres() {
    if postgres_url().is_some() {
        no_body_produces_a_server_error(Backend::Postgres);
    }
}

fn no_body_produces_a_server_error(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, admin, routes): (TestApp, String, Vec<(Method, String)>) = runtime.block_on(async {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let script = app.create_script(&admin, "fuzz").await["id"].as_i64().unwrap();
        let task = app.create_task(&admin, "fuzz", script).await["id"].as_i64().unwrap();
        let openapi = app.request(Method::GET, "/openapi.json", None, None).await.body;
        let routes = body_routes(&openapi, script, task);
        (app, admin, routes)
    });
    assert!(routes.len() >= 10, "{routes:?}");
    let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(body in json_value(), route in prop::sample::select(routes.clone()))| {
        let (method, path) = route;
        let reply = runtime.block_on(app.request(method.clone(), &path, Some(&admin), Some(&body)));
        prop_assert!(!reply.status.is_server_error(), "{} {} {} -> {} {:?}", method, path, body, reply.status, reply.body);
        prop_assert!(reply.body.get("detail").is_some() || reply.status.is_success(), "{} {} {}: {:?}", method, path, body, reply.body);
    });
    let verify = runtime.block_on(app.get("/audit/verify", &admin));
    assert_eq!(verify.body["ok"], json!(true), "whatever was accepted kept the chain intact");
}

/// Python-ish source: real tokens, broken syntax, odd characters (NUL, byte-order marks, form feeds, unpaired
/// quotes), and sizes around the limit.
fn script_content() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "print(1)",
        "def f(:",
        "\n",
        "    ",
        "\t",
        "'''",
        "\"",
        "\\",
        "\0",
        "\u{feff}",
        "\u{c}",
        "import os",
        "#",
        "é",
        "lambda: (",
        ")",
        "async def g(): await 1",
        "x = 1 +",
        "if True:\n  pass",
        "\r\n",
        "# coding: latin-1\n",
    ]);
    prop_oneof![
        4 => prop::collection::vec(token, 0..30).prop_map(|tokens| tokens.concat()),
        1 => any::<String>(),
        1 => (0usize..3).prop_map(|extra| "#".repeat(1024 * 1024 - 1 + extra)),
    ]
}

fn script_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9 _.-]{0,20}",
        1 => any::<String>(),
        1 => Just(" padded ".to_owned()),
        1 => Just("x".repeat(101)),
    ]
}

fn script_filename() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("main.py".to_owned()),
        Just(".py".to_owned()),
        Just("../etc/passwd.py".to_owned()),
        Just("a/b.py".to_owned()),
        Just("x.pyc".to_owned()),
        "[a-z_.-]{0,12}\\.py",
        any::<String>(),
    ])
}

/// Script validation (size, name, file name, and the Python syntax check that compiles without running) on
/// stored scripts and ad-hoc runs alike.
#[test]
fn script_validation_answers_every_script() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, admin) = runtime.block_on(async {
        let app = spawn_app(Backend::Sqlite).await;
        let admin = app.admin_token().await;
        (app, admin)
    });
    let config = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(name in script_name(), content in script_content(), filename in script_filename(), adhoc in any::<bool>())| {
        let (path, body) = if adhoc {
            ("/execute", json!({"content": content, "filename": filename}))
        } else {
            ("/scripts", json!({"name": name, "content": content, "filename": filename}))
        };
        let reply = runtime.block_on(app.request(Method::POST, path, Some(&admin), Some(&body)));
        let expected = [StatusCode::CREATED, StatusCode::ACCEPTED, StatusCode::CONFLICT, StatusCode::UNPROCESSABLE_ENTITY];
        prop_assert!(expected.contains(&reply.status), "POST {} -> {} {:?}", path, reply.status, reply.body);
        if reply.status == StatusCode::UNPROCESSABLE_ENTITY {
            let field = reply.body["field"].as_str().unwrap_or_default();
            prop_assert!(["name", "content", "filename"].contains(&field), "{:?}", reply.body);
        }
        if reply.status == StatusCode::CREATED {
            prop_assert!(content.len() <= 1024 * 1024 && !content.contains('\0'), "a stored script fits the rules");
            prop_assert_eq!(reply.body["content"].as_str(), Some(content.as_str()), "stored as sent");
        }
    });
}
