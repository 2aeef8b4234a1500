//! The OpenAPI document: snapshot-tested whole, and checked route by route for the error responses it must
//! promise.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, spawn_app};

/// Every route of the API. A route added to the code without being listed here fails the test, and so does a
/// route listed here that the document lacks.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/token"),
    ("get", "/users"),
    ("post", "/users"),
    ("get", "/users/me"),
    ("put", "/users/me"),
    ("get", "/users/{id}"),
    ("put", "/users/{id}"),
    ("delete", "/users/{id}"),
    ("get", "/tokens"),
    ("post", "/tokens"),
    ("delete", "/tokens/{id}"),
    ("get", "/agents"),
    ("post", "/agents"),
    ("get", "/agents/{id}"),
    ("put", "/agents/{id}"),
    ("delete", "/agents/{id}"),
    ("get", "/scripts"),
    ("post", "/scripts"),
    ("get", "/scripts/{id}"),
    ("put", "/scripts/{id}"),
    ("delete", "/scripts/{id}"),
    ("get", "/scripts/{id}/versions"),
    ("get", "/scripts/{id}/versions/{version}"),
    ("get", "/tasks"),
    ("post", "/tasks"),
    ("get", "/tasks/{id}"),
    ("put", "/tasks/{id}"),
    ("delete", "/tasks/{id}"),
    ("get", "/audit"),
    ("get", "/logs"),
    ("get", "/audit/verify"),
    ("get", "/health"),
    ("get", "/ready"),
    ("post", "/tasks/{id}/execute"),
    ("post", "/execute"),
    ("get", "/runs"),
    ("get", "/runs/{id}"),
    ("post", "/runs/{id}/cancel"),
    ("get", "/runs/{id}/logs"),
    ("get", "/runs/{id}/logs/stream"),
    ("get", "/secrets"),
    ("post", "/secrets"),
    ("get", "/secrets/{name}"),
    ("put", "/secrets/{name}"),
    ("delete", "/secrets/{name}"),
    ("get", "/events"),
    ("get", "/schedule"),
    ("post", "/tasks/{id}/pause"),
    ("post", "/tasks/{id}/resume"),
    ("post", "/agent/heartbeat"),
    ("post", "/agent/claim"),
    ("post", "/agent/runs/{id}/logs"),
    ("post", "/agent/runs/{id}/finish"),
    ("get", "/setup"),
    ("get", "/schedule/preview"),
    ("post", "/logout"),
    ("post", "/users/{id}/sessions/revoke"),
];

async fn document() -> Value {
    let app = spawn_app(Backend::Sqlite).await;
    let reply = app.request(Method::GET, "/openapi.json", None, None).await;
    assert!(reply.status.is_success());
    reply.body
}

#[tokio::test]
async fn every_route_is_documented_with_its_errors() {
    let openapi = document().await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.push((method.clone(), path.clone()));
            let responses = operation["responses"].as_object().unwrap();
            let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
            let mut expected = vec!["500"];
            if secured {
                expected.extend(["401", "403"]);
            }
            if path.contains('{') {
                expected.push("404");
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["400", "413", "422"]);
            }
            for status in expected {
                let response = &responses.get(status).unwrap_or_else(|| panic!("{method} {path} lacks {status}"));
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
            assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path} has a success response");
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    expected.sort();
    assert_eq!(documented, expected);
}

#[tokio::test]
async fn document_snapshot() {
    let mut openapi = document().await;
    openapi["info"]["version"] = Value::from("[version]");
    insta::assert_json_snapshot!("openapi", openapi);
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app(Backend::Sqlite).await;
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert!(page.status().is_success());
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui") && !html.contains("cdn") && !html.contains("unpkg"), "no CDN");
    let bundle = app.client.get(app.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert!(bundle.status().is_success(), "assets are embedded");
}
