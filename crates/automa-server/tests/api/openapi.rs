//! The OpenAPI document: checked by an OpenAPI 3.1 validator, route by route for the parameters, operation ids
//! and error responses it must promise, and snapshot-tested whole.

use std::{collections::BTreeSet, io::Write, path::PathBuf, process::Command};

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
    ("get", "/agents/{id}/events"),
    ("get", "/scripts"),
    ("post", "/scripts"),
    ("get", "/scripts/{id}"),
    ("put", "/scripts/{id}"),
    ("delete", "/scripts/{id}"),
    ("get", "/scripts/{id}/versions"),
    ("get", "/scripts/{id}/versions/{version}"),
    ("post", "/scripts/{id}/lock"),
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
    ("post", "/agent/runs/{id}/hand-back"),
    ("post", "/agent/goodbye"),
    ("get", "/setup"),
    ("get", "/schedule/preview"),
    ("post", "/logout"),
    ("post", "/users/{id}/sessions/revoke"),
    ("get", "/tasks/{id}/hooks"),
    ("post", "/tasks/{id}/hooks"),
    ("delete", "/tasks/{id}/hooks/{hook_id}"),
    ("post", "/hooks/{token}"),
    ("get", "/metrics"),
    ("get", "/notification-channels"),
    ("post", "/notification-channels"),
    ("get", "/notification-channels/{id}"),
    ("put", "/notification-channels/{id}"),
    ("delete", "/notification-channels/{id}"),
    ("post", "/notification-channels/{id}/test"),
    ("get", "/notification-channels/{id}/deliveries"),
    ("get", "/runs/{id}/notifications"),
    ("get", "/tasks/{id}/notifications"),
    ("put", "/tasks/{id}/notifications"),
    ("delete", "/tasks/{id}/notifications"),
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
            let secured = operation["security"]
                .as_array()
                .is_some_and(|requirements| requirements.iter().any(|r| r.as_object().is_some_and(|r| !r.is_empty())));
            let mut expected = vec!["500", "422"];
            if secured {
                expected.extend(["401", "403"]);
            }
            if path.contains('{') {
                expected.push("404");
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["400", "413"]);
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

#[tokio::test]
async fn every_operation_has_a_unique_id_and_declares_its_parameters() {
    let openapi = document().await;
    let mut ids = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}')).collect();
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(
                id.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && id.len() >= 5,
                "{method} {path}: {id}"
            );
            assert!(ids.insert(id.to_owned()), "{method} {path}: operationId {id} repeats");
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            let declared: BTreeSet<&str> = parameters
                .iter()
                .filter(|parameter| parameter["in"] == "path")
                .map(|parameter| {
                    assert_eq!(parameter["required"], true, "{method} {path}: path parameters are required");
                    let kind = &parameter["schema"]["type"];
                    assert!(kind == "integer" || kind == "string", "{method} {path}: {parameter} has a type");
                    parameter["name"].as_str().unwrap()
                })
                .collect();
            assert_eq!(declared, in_path, "{method} {path} declares its path parameters");
            let security = operation["security"].as_array();
            assert!(security.is_some_and(|s| !s.is_empty()), "{method} {path} declares its security, even when public");
        }
    }
}

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The pinned Python tools (`scripts/python-tools`), installed once into a virtual environment under the target
/// directory.
pub(crate) fn python_tools() -> PathBuf {
    let output =
        Command::new(repository_root().join("scripts/python-tools")).output().expect("scripts/python-tools runs");
    assert!(output.status.success(), "scripts/python-tools: {}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Runs the document through openapi-spec-validator (OpenAPI 3.1: the schema, unresolved path parameters,
/// repeated operation ids, broken references) and returns its complaints.
fn validate(openapi: &Value) -> Vec<String> {
    let script = r#"
import json, sys
from openapi_spec_validator import OpenAPIV31SpecValidator
document = json.load(sys.stdin)
for error in OpenAPIV31SpecValidator(document).iter_errors():
    print("/".join(map(str, error.absolute_path)) + ": " + str(error).splitlines()[0])
"#;
    let mut child = Command::new(python_tools().join("bin/python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(openapi.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the validator ran: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let openapi = document().await;
    let complaints = validate(&openapi);
    assert!(complaints.is_empty(), "{} complaints:\n{}", complaints.len(), complaints.join("\n"));

    // The validator is not a rubber stamp: a path parameter left undeclared and a repeated id are caught.
    let mut broken = openapi.clone();
    broken["paths"]["/users/{id}"]["get"]["parameters"] = Value::Array(vec![]);
    broken["paths"]["/runs"]["get"]["operationId"] = broken["paths"]["/users"]["get"]["operationId"].clone();
    let complaints = validate(&broken).join("\n");
    assert!(complaints.contains("Path parameter 'id'"), "{complaints}");
    assert!(complaints.contains("is not unique"), "{complaints}");
}
