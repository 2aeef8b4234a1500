//! The full role × route matrix, derived from the OpenAPI document (which is generated from the route table):
//! every secured route answers 401 without credentials, 403 to a role below the one it declares, and lets
//! every role at or above it through.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app};

on_both_backends!(role_route_matrix);

const ROLES: [&str; 3] = ["viewer", "operator", "admin"];

struct Route {
    method: Method,
    path: String,
    /// `None`: public. `Some("agent")`: agent tokens only.
    required: Option<String>,
}

fn routes(openapi: &Value) -> Vec<Route> {
    let mut routes = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let required = operation["security"].as_array().and_then(|requirements| {
                requirements.iter().find_map(|requirement| {
                    if requirement.get("agent").is_some() {
                        return Some("agent".to_owned());
                    }
                    requirement["bearer"].as_array().map(|roles| roles[0].as_str().unwrap().to_owned())
                })
            });
            routes.push(Route { method: method.to_uppercase().parse().unwrap(), path: path.clone(), required });
        }
    }
    routes
}

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap_or(usize::MAX)
}

/// Resources that destructive routes may act on without disturbing the callers.
struct Victims {
    ids: std::collections::HashMap<&'static str, i64>,
}

impl Victims {
    async fn create(app: &TestApp, admin: &str) -> Victims {
        let mut ids = std::collections::HashMap::new();
        let user = app.post("/users", admin, json!({"email": "victim@example.com", "password": "password-123"})).await;
        ids.insert("users", user.body["id"].as_i64().unwrap());
        let agent = app.post("/agents", admin, json!({"name": "victim"})).await;
        ids.insert("agents", agent.body["id"].as_i64().unwrap());
        let script = app.create_script(admin, "victim").await["id"].as_i64().unwrap();
        ids.insert("scripts", script);
        let task = app.create_task(admin, "victim", script).await["id"].as_i64().unwrap();
        ids.insert("tasks", task);
        let token = app.post("/tokens", admin, json!({"name": "victim"})).await;
        ids.insert("tokens", token.body["id"].as_i64().unwrap());
        let secret = app.post("/secrets", admin, json!({"name": "VICTIM", "value": "s3cret"})).await;
        assert!(secret.status.is_success(), "{:?}", secret.body);
        let run = app.post("/execute", admin, json!({"content": "print(1)\n"})).await;
        ids.insert("runs", run.body["id"].as_i64().unwrap());
        Victims { ids }
    }

    fn fill(&self, path: &str) -> String {
        let resource = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        let id = self.ids.get(resource).copied().unwrap_or(1);
        path.replace("{id}", &id.to_string()).replace("{version}", "1").replace("{name}", "VICTIM")
    }
}

async fn role_route_matrix(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let openapi = app.request(Method::GET, "/openapi.json", None, None).await.body;
    let victims = Victims::create(&app, &admin).await;
    let mut tokens = vec![];
    for role in ROLES {
        let token = if role == "admin" { admin.clone() } else { app.user_token(&admin, role).await };
        tokens.push((role, token));
    }
    let routes = routes(&openapi);
    assert!(routes.len() >= 25, "the route table was read: {} routes", routes.len());
    let mut checked = 0;
    for route in &routes {
        let Some(required) = &route.required else { continue };
        if route.path == "/logout" {
            // It ends the caller's sessions, and with them the rest of this matrix; sessions.rs covers it.
            continue;
        }
        let path = victims.fill(&route.path);
        let body = matches!(route.method, Method::POST | Method::PUT).then(|| json!({}));
        let anonymous = app.request(route.method.clone(), &path, None, body.as_ref()).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{} {path} without credentials", route.method);
        assert_eq!(anonymous.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
        let garbage = app.request(route.method.clone(), &path, Some("not-a-token"), body.as_ref()).await;
        assert_eq!(garbage.status, StatusCode::UNAUTHORIZED, "{} {path} with a bad token", route.method);
        for (role, token) in &tokens {
            let reply = app.request(route.method.clone(), &path, Some(token), body.as_ref()).await;
            if required == "agent" {
                assert_eq!(
                    reply.status,
                    StatusCode::UNAUTHORIZED,
                    "{} {path}: a user token is not an agent token",
                    route.method
                );
            } else if reply.status == StatusCode::FORBIDDEN && reply.detail().contains("only the owner") {
                // Past the role, some resources also have owners (a secret's owner or an admin changes it).
                assert_eq!(*role, "operator", "{} {path}: only a non-owner below admin is refused", route.method);
            } else if rank(role) < rank(required) {
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{} {path} as {role} needs {required}", route.method);
                assert!(reply.detail().contains(required.as_str()), "the 403 names the role: {}", reply.detail());
            } else {
                assert!(
                    reply.status != StatusCode::FORBIDDEN && reply.status != StatusCode::UNAUTHORIZED,
                    "{} {path} as {role} (needs {required}) got {}: {:?}",
                    route.method,
                    reply.status,
                    reply.body
                );
                assert!(!reply.status.is_server_error(), "{} {path} as {role}: {:?}", route.method, reply.body);
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "checked {checked} role × route pairs");
}
