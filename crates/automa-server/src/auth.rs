//! Authentication and authorisation. Passwords are argon2id; sessions are short-lived HS256 JWTs; API tokens
//! are random strings stored only as SHA-256 hashes. Which role a route needs is declared once, in its
//! OpenAPI `security` entry, and enforced from there by `enforce_access` — the document clients read is the
//! rule the server applies.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use automa_core::Role;
use automa_store::{Actor, User};

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    state::AppState,
};

/// API tokens start with this, so a leaked one is recognisable by secret scanners and by us.
pub const API_TOKEN_PREFIX: &str = "atm_";
/// Agent enrollment tokens start with this.
pub const AGENT_TOKEN_PREFIX: &str = "atma_";

/// Hashes a password with argon2id on the blocking pool: a hash takes tens of milliseconds of CPU.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow::anyhow!("hashing a password: {error}"))
    })
    .await?
}

/// Checks a password against a stored hash. With no hash (unknown user) it still spends the time of one
/// verification, so response times do not reveal which e-mail addresses exist.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let decoy = DECOY.get_or_init(|| {
            Argon2::default().hash_password(b"decoy password").map(|hash| hash.to_string()).unwrap_or_default()
        });
        let known = hash.is_some();
        let target = hash.unwrap_or_else(|| decoy.clone());
        Argon2::default().verify_password(password.as_bytes(), target.as_str()).is_ok() && known
    })
    .await
    .unwrap_or(false)
}

/// A new random secret of 32 bytes with the given prefix, URL-safe.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the database keeps of a token: its SHA-256. Tokens are 256 random bits, so a fast hash is enough.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

/// Signs and checks session tokens.
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl_seconds: i64,
}

impl Sessions {
    pub fn new(key: &[u8], ttl_seconds: i64) -> Sessions {
        Sessions { encoding: EncodingKey::from_secret(key), decoding: DecodingKey::from_secret(key), ttl_seconds }
    }

    pub fn issue(&self, user_id: i64) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = Claims { sub: user_id.to_string(), iat: now, exp: now + self.ttl_seconds };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    fn user_id(&self, token: &str) -> Option<i64> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?.claims.sub.parse().ok()
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    Session,
    ApiToken { id: i64 },
}

/// The authenticated user of a request and the role it acts with (an API token may cap it).
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub role: Role,
    pub credential: Credential,
    pub ip: Option<String>,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor::user(self.user.id, self.ip.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, ApiError> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

/// The client's address, when the server runs on a socket that records it.
pub struct ClientIp(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

/// The client's address, for the audit log.
pub fn client_ip(parts: &Parts) -> Option<String> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

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
    match rule.access {
        Access::Public => {}
        Access::Agent => {
            let agent = authenticate_agent(&state, &parts).await?;
            parts.extensions.insert(agent);
        }
        Access::Optional(_) => {
            if bearer(&parts).is_some() {
                let principal = authenticate(&state, &parts).await?;
                parts.extensions.insert(principal);
            }
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
        }
    }
    check_query(&parts, &rule.query)?;
    Ok(next.run(Request::from_parts(parts, body)).await)
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

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authenticate(state: &AppState, parts: &Parts) -> ApiResult<Principal> {
    let token =
        bearer(parts).ok_or_else(|| ApiError::Unauthorized("authentication required: send a Bearer token".into()))?;
    let invalid = || ApiError::Unauthorized("the token is invalid, expired or revoked".into());
    let ip = client_ip(parts);
    if token.starts_with(API_TOKEN_PREFIX) {
        let (api_token, user) = state.store.authenticate_token(&token_hash(token)).await?.ok_or_else(invalid)?;
        let cap = api_token.role_cap.as_deref().and_then(|r| r.parse().ok()).unwrap_or(Role::Admin);
        let role = user.role().min(cap);
        return Ok(Principal { user, role, credential: Credential::ApiToken { id: api_token.id }, ip });
    }
    let user_id = state.sessions.user_id(token).ok_or_else(invalid)?;
    let user = match state.store.get_user(user_id).await {
        Ok(user) if user.active => user,
        Ok(_) | Err(automa_store::StoreError::NotFound) => return Err(invalid()),
        Err(other) => return Err(other.into()),
    };
    Ok(Principal { role: user.role(), user, credential: Credential::Session, ip })
}

/// The agent behind an agent token.
#[derive(Debug, Clone)]
pub struct AgentPrincipal {
    pub agent: automa_store::Agent,
    pub ip: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for AgentPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<AgentPrincipal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("agent token required".into()))
    }
}

async fn authenticate_agent(state: &AppState, parts: &Parts) -> ApiResult<AgentPrincipal> {
    let token = bearer(parts).ok_or_else(|| ApiError::Unauthorized("agent token required".into()))?;
    let agent = state
        .store
        .authenticate_agent(&token_hash(token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the agent token is invalid or the agent is disabled".into()))?;
    Ok(AgentPrincipal { agent, ip: client_ip(parts) })
}

/// Shared by the first-admin check and tests: whether a principal may act as `role`.
pub fn require(principal: Option<&Principal>, role: Role) -> ApiResult<&Principal> {
    let principal = principal.ok_or_else(|| ApiError::Unauthorized("authentication required".into()))?;
    if principal.role.allows(role) {
        Ok(principal)
    } else {
        Err(ApiError::Forbidden(format!("this needs the {role} role; you have {}", principal.role)))
    }
}

/// Keeps `Arc` of the table cheap to share with the middleware.
pub type SharedAccess = Arc<AccessTable>;
