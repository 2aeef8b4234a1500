//! The full role × route × method matrix, derived from the OpenAPI document (which is generated from the route
//! table): for every route and every method axum answers, a secured operation answers 401 without credentials,
//! 403 to a role below the one it declares and lets every role at or above it through; HEAD is authorised as
//! GET; a method the route does not declare is 405 for everyone, before any handler runs; OPTIONS is answered
//! by the CORS layer alike for every path. The access table
//! itself refuses a document in which an operation is public by omission.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, on_both_backends, spawn_app};

on_both_backends!(role_route_matrix, head_reveals_nothing_without_credentials, undeclared_query_parameters_are_refused);

const ROLES: [&str; 3] = ["viewer", "operator", "admin"];

/// Every method axum's router dispatches on, including those no route declares.
fn methods() -> Vec<Method> {
    vec![
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
    ]
}

/// Who may call an operation, as its `security` declares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Needs {
    Nothing,
    Agent,
    Role(String),
}

fn needs(operation: &Value) -> Needs {
    let requirements = operation["security"].as_array().expect("every operation declares its security");
    requirements
        .iter()
        .find_map(|requirement| {
            if requirement.get("agent").is_some() {
                return Some(Needs::Agent);
            }
            requirement["bearer"].as_array().map(|roles| Needs::Role(roles[0].as_str().unwrap().to_owned()))
        })
        .unwrap_or(Needs::Nothing)
}

/// What the document says about `method` on `path`: `None` when it declares no such operation. HEAD is
/// declared by GET.
fn declared(item: &Value, method: &Method) -> Option<Needs> {
    let key = if *method == Method::HEAD { "get".to_owned() } else { method.as_str().to_lowercase() };
    item.get(key).map(needs)
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

fn assert_method_not_allowed(reply: &Reply, method: &Method, path: &str, item: &Value) {
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is not declared");
    let allow = reply.headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    for declared in item.as_object().unwrap().keys() {
        assert!(allow.contains(&declared.to_uppercase()), "{method} {path}: Allow '{allow}' lists {declared}");
    }
    if *method != Method::HEAD {
        assert!(reply.detail().contains("not allowed"), "{method} {path}: {:?}", reply.body);
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
    let paths = openapi["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "the route table was read: {} paths", paths.len());
    let (mut secured, mut refused, mut heads) = (0, 0, 0);
    for (template, item) in paths {
        if template == "/logout" {
            // It ends the caller's sessions, and with them the rest of this matrix; sessions.rs covers it.
            continue;
        }
        let path = victims.fill(template);
        for method in methods() {
            if method == Method::OPTIONS {
                // Answered by the CORS layer before routing (see head_reveals_nothing_without_credentials).
                let reply = app.request(Method::OPTIONS, &path, None, None).await;
                assert_eq!((reply.status, reply.body), (StatusCode::OK, Value::Null), "OPTIONS {path}");
                continue;
            }
            let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let anonymous = app.request(method.clone(), &path, None, body.as_ref()).await;
            let Some(needs) = declared(item, &method) else {
                assert_method_not_allowed(&anonymous, &method, &path, item);
                let as_admin = app.request(method.clone(), &path, Some(&admin), body.as_ref()).await;
                assert_method_not_allowed(&as_admin, &method, &path, item);
                refused += 1;
                continue;
            };
            heads += usize::from(method == Method::HEAD);
            let Needs::Role(required) = needs else {
                if needs == Needs::Agent {
                    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{method} {path} without credentials");
                    for (role, token) in &tokens {
                        let reply = app.request(method.clone(), &path, Some(token), body.as_ref()).await;
                        assert_eq!(
                            reply.status,
                            StatusCode::UNAUTHORIZED,
                            "{method} {path}: {role}'s token is not an agent's"
                        );
                    }
                } else {
                    assert!(!anonymous.status.is_server_error(), "{method} {path} (public): {:?}", anonymous.body);
                }
                continue;
            };
            let optional = item[method.as_str().to_lowercase()]["security"]
                .as_array()
                .is_some_and(|requirements| requirements.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty())));
            if !optional {
                assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{method} {path} without credentials");
                assert_eq!(anonymous.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
            }
            let garbage = app.request(method.clone(), &path, Some("not-a-token"), body.as_ref()).await;
            assert_eq!(garbage.status, StatusCode::UNAUTHORIZED, "{method} {path} with a bad token");
            for (role, token) in &tokens {
                let reply = app.request(method.clone(), &path, Some(token), body.as_ref()).await;
                if reply.status == StatusCode::FORBIDDEN && reply.detail().contains("only the owner") {
                    // Past the role, some resources also have owners (a secret's owner or an admin changes it).
                    assert_eq!(*role, "operator", "{method} {path}: only a non-owner below admin is refused");
                } else if rank(role) < rank(&required) {
                    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path} as {role} needs {required}");
                    if method != Method::HEAD {
                        assert!(
                            reply.detail().contains(required.as_str()),
                            "the 403 names the role: {}",
                            reply.detail()
                        );
                    }
                } else {
                    assert!(
                        reply.status != StatusCode::FORBIDDEN && reply.status != StatusCode::UNAUTHORIZED,
                        "{method} {path} as {role} (needs {required}) got {}: {:?}",
                        reply.status,
                        reply.body
                    );
                    assert!(!reply.status.is_server_error(), "{method} {path} as {role}: {:?}", reply.body);
                }
                secured += 1;
            }
        }
    }
    assert!(secured >= 150, "checked {secured} role × secured operation pairs");
    assert!(heads >= 20, "checked HEAD on {heads} routes");
    assert!(refused >= 100, "checked {refused} undeclared methods");
}

/// HEAD is GET without a body, so it must be authorised as GET: without credentials it answers 401 with the
/// same headers whatever the resource, so neither the status nor the length of a reply tells anything.
async fn head_reveals_nothing_without_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    app.create_script(&admin, "alpha").await;
    let user_id = app.get("/users/me", &admin).await.body["id"].as_i64().unwrap();
    for path in ["/users", "/secrets", "/audit/verify", "/audit", "/tokens", "/runs", "/events", "/users/"] {
        let reply = app.request(Method::HEAD, path, None, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "HEAD {path} without credentials");
    }
    let signature = |reply: &Reply| {
        (reply.status, reply.headers.get("content-length").cloned(), reply.headers.get("content-type").cloned())
    };
    let probes = [
        (format!("/users/{user_id}"), "/users/987654".to_owned()),
        ("/scripts?name=a".to_owned(), "/scripts?name=zzzz".to_owned()),
        ("/scripts/1".to_owned(), "/scripts/987654".to_owned()),
    ];
    for (existing, missing) in &probes {
        for token in [None, Some("not-a-token")] {
            let (hit, miss) = (
                app.request(Method::HEAD, existing, token, None).await,
                app.request(Method::HEAD, missing, token, None).await,
            );
            assert_eq!(hit.status, StatusCode::UNAUTHORIZED, "HEAD {existing}");
            assert_eq!(signature(&hit), signature(&miss), "HEAD {existing} and {missing} look alike");
        }
    }
    let (hit, miss) = (
        app.request(Method::HEAD, &format!("/users/{user_id}"), Some(&viewer), None).await,
        app.request(Method::HEAD, "/users/987654", Some(&viewer), None).await,
    );
    assert_eq!(hit.status, StatusCode::FORBIDDEN, "a viewer may not look at users, even by HEAD");
    assert_eq!(signature(&hit), signature(&miss));
    let allowed = app.request(Method::HEAD, "/scripts?name=alpha", Some(&viewer), None).await;
    assert_eq!(allowed.status, StatusCode::OK, "HEAD works as GET for those allowed");
    assert_eq!(allowed.body, Value::Null, "HEAD has no body");

    // OPTIONS never reaches a handler: the CORS layer answers it, the same way for a resource that exists and
    // one that does not, with no body and, without an allowed origin, no permission.
    let options = |path: String| app.client.request(Method::OPTIONS, app.url(&path)).send();
    let (known, unknown) =
        (options(format!("/users/{user_id}")).await.unwrap(), options("/users/987654".into()).await.unwrap());
    assert_eq!(known.status(), unknown.status());
    let names = |response: &reqwest::Response| {
        let mut names: Vec<String> = response.headers().keys().map(|name| name.to_string()).collect();
        names.sort();
        names
    };
    assert_eq!(names(&known), names(&unknown));
    assert_eq!(known.headers().get("content-length"), unknown.headers().get("content-length"));
    assert!(known.headers().get("access-control-allow-origin").is_none());
    assert!(known.text().await.unwrap().is_empty(), "OPTIONS carries no data");
    let preflight = app
        .client
        .request(Method::OPTIONS, app.url("/users"))
        .header("origin", "https://attacker.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.headers().get("access-control-allow-origin").is_none(), "{:?}", preflight.headers());
    assert!(preflight.text().await.unwrap().is_empty(), "a preflight carries no data");
}

/// A query parameter the operation does not declare is a 422 naming it, on every route, once the caller is
/// authorised (an anonymous caller learns nothing about parameters).
async fn undeclared_query_parameters_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for path in ["/users?limit=5&bogus=1", "/users/me?x", "/scripts?nmae=a", "/runs/1?fields=all", "/health?probe=1"] {
        let reply = app.request(Method::GET, path, Some(&admin), None).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "GET {path}: {:?}", reply.body);
        let field = reply.body["field"].as_str().unwrap();
        assert!(path.contains(&format!("{field}=")) || path.ends_with(&format!("?{field}")), "{path}: {field}");
        assert!(reply.detail().contains("unknown query parameter"), "{}", reply.detail());
    }
    let named = app.request(Method::GET, "/users?bogus=1", Some(&admin), None).await;
    assert!(named.detail().contains("limit, offset"), "the 422 lists what the route takes: {}", named.detail());
    let anonymous = app.request(Method::GET, "/users?bogus=1", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let declared = app.request(Method::GET, "/users?limit=5&offset=0", Some(&admin), None).await;
    assert_eq!(declared.status, StatusCode::OK, "{:?}", declared.body);
}

fn document(operation: Value) -> Value {
    json!({"openapi": "3.1.0", "paths": {"/things": {"get": operation}}})
}

#[test]
fn an_operation_without_an_explicit_rule_is_a_start_up_error() {
    use automa_server::auth::{Access, access_table};
    let refused = [
        (json!({"responses": {}}), "declares no security"),
        (json!({"security": []}), "declares no security"),
        (json!({"security": [{"bearer": ["root"]}]}), "unknown role"),
        (json!({"security": [{"bearer": []}]}), "exactly one role"),
        (json!({"security": [{"bearer": ["viewer", "admin"]}]}), "exactly one role"),
        (json!({"security": [{"cookie": []}]}), "unknown security requirement"),
        (json!({"security": [{"bearer": ["viewer"], "agent": []}]}), "several schemes"),
        (json!({"security": [{"bearer": ["viewer"]}, {"agent": []}]}), "several requirements"),
        (json!({"security": [{"agent": []}, {}]}), "cannot be optional"),
    ];
    for (operation, problem) in refused {
        let error = access_table(&document(operation.clone())).expect_err(&operation.to_string());
        assert!(format!("{error:#}").contains(problem), "{operation}: {error:#}");
        assert!(format!("{error:#}").contains("GET /things"), "the error names the operation: {error:#}");
    }
    let accepted = [
        (json!({"security": [{}]}), Access::Public),
        (json!({"security": [{"bearer": ["operator"]}]}), Access::Role(automa_core::Role::Operator)),
        (json!({"security": [{"bearer": ["admin"]}, {}]}), Access::Optional(automa_core::Role::Admin)),
        (json!({"security": [{"agent": []}]}), Access::Agent),
    ];
    for (operation, access) in accepted {
        let table = access_table(&document(operation.clone())).unwrap();
        assert_eq!(table.rule(&Method::GET, "/things").map(|rule| rule.access), Some(access), "{operation}");
        assert_eq!(table.rule(&Method::HEAD, "/things").map(|rule| rule.access), Some(access), "HEAD is GET");
        assert!(table.rule(&Method::POST, "/things").is_none(), "no rule for an undeclared method");
        assert!(table.rule(&Method::GET, "/other").is_none(), "no rule for an undeclared route");
        assert_eq!(table.allowed("/things"), ["GET", "HEAD"]);
    }
}
