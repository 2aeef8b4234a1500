//! Authorisation: which role a route needs is declared once, in its OpenAPI `security` entry, read into an
//! access table at start-up and enforced by `enforce_access`, so the document clients read is the rule the
//! server applies. The table denies by default.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use automa_core::Role;

use super::{authenticate, authenticate_agent, bearer};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    rate_limit,
    state::AppState,
};

/// Who may call a route, as declared in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed: the operation says so with an explicit empty requirement (`security: [{}]`).
    Public,
    /// Credentials are checked when present; the handler decides (the first-admin setup).
    Optional(Role),
    /// A user with at least this role.
    Role(Role),
    /// An agent's enrollment token.
    Agent,
}

/// What the document declares for one operation: who may call it and which query parameters it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    pub query: BTreeSet<String>,
}

/// Route template → method → rule, read from the OpenAPI document at start-up. A method without a rule on a
/// route is refused, and so is a route without rules: nothing is let through by omission.
#[derive(Debug, Default)]
pub struct AccessTable {
    routes: HashMap<String, BTreeMap<String, Rule>>,
}

impl AccessTable {
    /// The rule of `method` on the route template `path`, if the document declares one. HEAD follows GET,
    /// since axum answers HEAD with the GET handler.
    pub fn rule(&self, method: &Method, path: &str) -> Option<&Rule> {
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.routes.get(path)?.get(method.as_str())
    }

    /// The methods a route answers, for the `Allow` header of a 405.
    pub fn allowed(&self, path: &str) -> Vec<&str> {
        let mut methods: Vec<&str> =
            self.routes.get(path).into_iter().flat_map(|rules| rules.keys()).map(String::as_str).collect();
        if methods.contains(&"GET") {
            methods.push("HEAD");
        }
        methods.sort_unstable();
        methods
    }

    pub fn len(&self) -> usize {
        self.routes.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The HTTP methods an OpenAPI path item can hold operations for.
const OPERATION_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Builds the access table from the OpenAPI document. Every operation must declare its `security`:
/// `bearer: [role]` needs that role; `agent: []` an agent token; an extra empty requirement (`{}`) makes
/// credentials optional; an empty requirement alone marks the operation public. An operation without
/// `security`, or with a requirement this server does not understand, is an error, so the server refuses to
/// start rather than serve a route that is public by accident.
pub fn access_table(openapi: &serde_json::Value) -> anyhow::Result<AccessTable> {
    let paths = openapi["paths"].as_object().ok_or_else(|| anyhow::anyhow!("the OpenAPI document has no paths"))?;
    let mut table = AccessTable::default();
    for (path, item) in paths {
        let item = item.as_object().ok_or_else(|| anyhow::anyhow!("{path}: not a path item"))?;
        let shared = query_parameters(item.get("parameters"));
        let mut rules = BTreeMap::new();
        for (method, operation) in item.iter().filter(|(method, _)| OPERATION_METHODS.contains(&method.as_str())) {
            let method = method.to_uppercase();
            let access =
                operation_access(operation).map_err(|problem| anyhow::anyhow!("{method} {path}: {problem}"))?;
            let mut query = shared.clone();
            query.extend(query_parameters(operation.get("parameters")));
            rules.insert(method, Rule { access, query });
        }
        table.routes.insert(path.clone(), rules);
    }
    Ok(table)
}

fn query_parameters(parameters: Option<&serde_json::Value>) -> BTreeSet<String> {
    parameters
        .and_then(|parameters| parameters.as_array())
        .into_iter()
        .flatten()
        .filter(|parameter| parameter["in"] == "query")
        .filter_map(|parameter| parameter["name"].as_str().map(str::to_owned))
        .collect()
}

fn operation_access(operation: &serde_json::Value) -> Result<Access, String> {
    let requirements = operation
        .get("security")
        .and_then(|security| security.as_array())
        .filter(|requirements| !requirements.is_empty())
        .ok_or("declares no security; mark a public operation explicitly with an empty requirement (`security(())`)")?;
    let mut anonymous = false;
    let mut needed = None;
    for requirement in requirements {
        let requirement = requirement.as_object().ok_or("a security requirement is not an object")?;
        let mut schemes = requirement.iter();
        let Some((scheme, scopes)) = schemes.next() else {
            anonymous = true;
            continue;
        };
        if schemes.next().is_some() {
            return Err("a requirement combines several schemes, which this server does not enforce".into());
        }
        let scopes = scopes.as_array().ok_or("a requirement's scopes are not a list")?;
        let access = match (scheme.as_str(), scopes.as_slice()) {
            ("bearer", [role]) => {
                let role = role.as_str().ok_or("a bearer role is not a string")?;
                Access::Role(role.parse().map_err(|_| format!("unknown role '{role}'"))?)
            }
            ("bearer", _) => return Err("a bearer requirement must name exactly one role".into()),
            ("agent", []) => Access::Agent,
            (other, _) => return Err(format!("unknown security requirement '{other}'")),
        };
        if needed.replace(access).is_some() {
            return Err("several requirements with credentials; declare one".into());
        }
    }
    match (needed, anonymous) {
        (None, _) => Ok(Access::Public),
        (Some(Access::Role(role)), true) => Ok(Access::Optional(role)),
        (Some(Access::Agent), true) => Err("agent routes cannot be optional".into()),
        (Some(access), _) => Ok(access),
    }
}

/// Authenticates and authorises every matched route against the access table, then refuses query parameters
/// the operation does not declare. Unknown routes fall through to the router (which answers 404); a known
/// route with no rule for the method is answered 405 (with `Allow`) before any handler runs.
pub async fn enforce_access(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let Some(path) = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let Some(rule) = state.access.rule(&parts.method, &path) else {
        let allowed = state.access.allowed(&path);
        if allowed.is_empty() {
            return Err(ApiError::Forbidden("this route has no access rule".into()));
        }
        return Ok(method_not_allowed(&allowed));
    };
    let authenticated = match rule.access {
        Access::Public => false,
        Access::Agent => {
            let agent = authenticate_agent(&state, &parts).await?;
            parts.extensions.insert(agent);
            true
        }
        Access::Optional(_) => {
            let has_token = bearer(&parts).is_some();
            if has_token {
                let principal = authenticate(&state, &parts).await?;
                parts.extensions.insert(principal);
            }
            has_token
        }
        Access::Role(required) => {
            let principal = authenticate(&state, &parts).await?;
            if !principal.role.allows(required) {
                return Err(ApiError::Forbidden(format!(
                    "this needs the {required} role; you have {}",
                    principal.role
                )));
            }
            parts.extensions.insert(principal);
            true
        }
    };
    check_query(&parts, &rule.query)?;
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if authenticated {
        response.extensions_mut().insert(rate_limit::Authenticated);
    }
    Ok(response)
}

/// Unknown query parameters are refused, as unknown body fields are: a misspelt filter would otherwise be
/// silently ignored and return more than the caller asked for.
fn check_query(parts: &Parts, declared: &BTreeSet<String>) -> ApiResult<()> {
    let Some(query) = parts.uri.query() else { return Ok(()) };
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if !declared.contains(name.as_ref()) {
            let known = if declared.is_empty() {
                "this route takes no query parameters".to_owned()
            } else {
                format!("this route takes {}", declared.iter().map(String::as_str).collect::<Vec<_>>().join(", "))
            };
            return Err(ApiError::invalid(&name, format!("unknown query parameter; {known}")));
        }
    }
    Ok(())
}

fn method_not_allowed(allowed: &[&str]) -> Response {
    let allow = allowed.join(", ");
    let body = ErrorBody { detail: format!("method not allowed; this route answers {allow}"), field: None };
    let mut response = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Keeps `Arc` of the table cheap to share with the middleware.
pub type SharedAccess = Arc<AccessTable>;
