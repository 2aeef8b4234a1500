//! The dashboard's server side: its files, their headers, and the two endpoints it relies on (`GET /setup` and
//! `GET /schedule/preview`). The pages themselves are tested in a real browser by tests/browser.

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::helpers::{Backend, spawn_app};

#[tokio::test]
async fn pages_are_served_with_a_strict_policy_and_revalidated() {
    let app = spawn_app(Backend::Sqlite).await;
    let index = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(index.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let policy = index.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(policy.starts_with("default-src 'self'") && !policy.contains("unsafe"), "{policy}");
    assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
    let html = index.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/assets/js/main.js">"#));
    assert!(!html.contains("http://") && !html.contains("https://"), "no third-party resources");

    let script = app.client.get(app.url("/assets/js/main.js")).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(script.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    let etag = script.headers()[header::ETAG].clone();
    let again = app.client.get(app.url("/assets/js/main.js")).header(header::IF_NONE_MATCH, etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let css = app.client.get(app.url("/assets/app.css")).send().await.unwrap();
    assert_eq!(css.headers()[header::CONTENT_TYPE], "text/css; charset=utf-8");
}

#[tokio::test]
async fn unknown_files_and_api_paths_stay_json_404s() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in ["/assets/nope.js", "/assets/../Cargo.toml", "/assets/%2e%2e/Cargo.toml", "/no-such-route", "/runs-x"] {
        let reply = app.request(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!reply.detail().is_empty(), "{path}: {:?}", reply.body);
    }
}

#[tokio::test]
async fn setup_reports_whether_the_first_admin_is_missing() {
    let app = spawn_app(Backend::Sqlite).await;
    let before = app.request(Method::GET, "/setup", None, None).await;
    assert_eq!(before.body["needs_admin"], true);
    app.admin_token().await;
    let after = app.request(Method::GET, "/setup", None, None).await;
    assert_eq!(after.body["needs_admin"], false);
}

#[tokio::test]
async fn schedule_preview_gives_fires_in_the_schedules_time_zone() {
    let app = spawn_app(Backend::Sqlite).await;
    let unauthenticated = app.request(Method::GET, "/schedule/preview?kind=cron&cron=0+9+*+*+*", None, None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    let admin = app.admin_token().await;
    let preview = app.get("/schedule/preview?kind=cron&cron=30+9+*+*+1-5&timezone=Europe/Berlin", &admin).await;
    assert_eq!(preview.status, StatusCode::OK, "{:?}", preview.body);
    let fires = preview.body["fires"].as_array().unwrap();
    assert_eq!(fires.len(), 5);
    for fire in fires {
        let local = fire["local"].as_str().unwrap();
        assert!(local.ends_with("09:30:00 CET") || local.ends_with("09:30:00 CEST"), "{local}");
        assert!(!local.starts_with("Sat") && !local.starts_with("Sun"), "{local}");
    }
    let interval = app.get("/schedule/preview?kind=interval&every_seconds=60&count=3", &admin).await;
    let times: Vec<&Value> = interval.body["fires"].as_array().unwrap().iter().map(|f| &f["at"]).collect();
    assert_eq!(times.len(), 3);
}

#[tokio::test]
async fn schedule_preview_names_the_bad_parameter() {
    let app = spawn_app(Backend::Sqlite).await;
    let admin = app.admin_token().await;
    for (query, field, says) in [
        ("kind=cron&cron=61+*+*+*+*", "cron", ""),
        ("kind=cron&cron=0+9+*", "cron", "expected 5"),
        ("kind=cron", "cron", "required"),
        ("kind=cron&cron=0+9+*+*+*&timezone=Mars/Olympus", "timezone", "IANA"),
        ("kind=interval", "every_seconds", "required"),
        ("kind=interval&every_seconds=0", "every_seconds", "between"),
        ("kind=once", "at", "required"),
        ("kind=cron&cron=0+9+*+*+*&count=500", "count", "between"),
        ("kind=weekly", "kind", ""),
    ] {
        let reply = app.get(&format!("/schedule/preview?{query}"), &admin).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {:?}", reply.body);
        assert_eq!(reply.body["field"], field, "{query}: {:?}", reply.body);
        assert!(reply.detail().contains(says), "{query}: {}", reply.detail());
    }
}
