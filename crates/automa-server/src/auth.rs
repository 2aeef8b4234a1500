//! Authentication and authorisation. Passwords are argon2id; sessions are short-lived HS256 JWTs; API tokens
//! are random strings stored only as SHA-256 hashes. Which role a route needs is declared once, in its
//! OpenAPI `security` entry, and enforced from there by `enforce_access` — the document clients read is the
//! rule the server applies.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State},
    http::{Method, header, request::Parts},
    middleware::Next,
    response::Response,
};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use automa_core::Role;
use automa_store::{Actor, User};

use crate::{
    error::{ApiError, ApiResult},
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
    /// No credentials needed.
    Public,
    /// Credentials are checked when present; the handler decides (the first-admin setup).
    Optional(Role),
    /// A user with at least this role.
    Role(Role),
    /// An agent's enrollment token.
    Agent,
}

/// Route → access, read from the OpenAPI document at start-up.
pub type AccessTable = HashMap<(Method, String), Access>;

/// Builds the access table from the OpenAPI document: an operation without `security` is public; one with
/// `bearer: [role]` needs that role; an extra empty requirement (`{}`) makes it optional.
pub fn access_table(openapi: &serde_json::Value) -> AccessTable {
    let mut table = AccessTable::new();
    let Some(paths) = openapi["paths"].as_object() else { return table };
    for (path, item) in paths {
        let Some(operations) = item.as_object() else { continue };
        for (method, operation) in operations {
            let Ok(method) = method.to_uppercase().parse::<Method>() else { continue };
            table.insert((method, path.clone()), operation_access(operation));
        }
    }
    table
}

fn operation_access(operation: &serde_json::Value) -> Access {
    let Some(requirements) = operation["security"].as_array() else { return Access::Public };
    let optional = requirements.iter().any(|requirement| requirement.as_object().is_some_and(|r| r.is_empty()));
    for requirement in requirements {
        if requirement.get("agent").is_some() {
            return Access::Agent;
        }
        if let Some(role) = requirement["bearer"].as_array().and_then(|roles| roles.first()).and_then(|r| r.as_str()) {
            let role = role.parse().unwrap_or(Role::Admin);
            return if optional { Access::Optional(role) } else { Access::Role(role) };
        }
    }
    Access::Public
}

/// Authenticates and authorises every request against the access table. Unknown routes fall through to the
/// router (which answers 404); a known route missing from the table is refused, so a forgotten declaration
/// fails closed.
pub async fn enforce_access(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let Some(path) = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let access = state.access.get(&(parts.method.clone(), path)).copied();
    match access {
        None if parts.method == Method::HEAD || parts.method == Method::OPTIONS => {}
        None => return Err(ApiError::Forbidden("this route has no access rule".into())),
        Some(Access::Public) => {}
        Some(Access::Agent) => {
            let agent = authenticate_agent(&state, &parts).await?;
            parts.extensions.insert(agent);
        }
        Some(Access::Optional(_)) => {
            if bearer(&parts).is_some() {
                let principal = authenticate(&state, &parts).await?;
                parts.extensions.insert(principal);
            }
        }
        Some(Access::Role(required)) => {
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
    Ok(next.run(Request::from_parts(parts, body)).await)
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
