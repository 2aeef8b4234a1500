//! Authentication: who a request comes from. Sessions are short-lived HS256 JWTs carrying the user's session
//! epoch; API tokens are random strings stored only as SHA-256 hashes, with an optional role cap; agents
//! have tokens of their own. Passwords are in `passwords`, and which role a route needs in `access`.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{header, request::Parts},
    middleware::Next,
    response::Response,
};
use base64::Engine;
use chrono::Utc;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use automa_core::Role;
use automa_store::{Actor, User};

use crate::{
    error::{ApiError, ApiResult},
    state::AppState,
};

mod access;
mod passwords;

pub use access::{Access, AccessTable, Rule, SharedAccess, access_table, enforce_access};
pub(crate) use passwords::return_free_memory;
pub use passwords::{Passwords, hash_password};

/// API tokens start with this, so a leaked one is recognisable by secret scanners and by us.
pub const API_TOKEN_PREFIX: &str = "atm_";
/// Agent enrollment tokens start with this.
pub const AGENT_TOKEN_PREFIX: &str = "atma_";

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
    /// The user's session epoch when the token was issued; a token from an older epoch is refused.
    epoch: i64,
}

/// A session token's verified content.
struct SessionClaims {
    user_id: i64,
    epoch: i64,
    expires_at: i64,
}

/// Signs and checks session tokens, and tells open event streams when a user's sessions are revoked.
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl_seconds: i64,
    revocations: broadcast::Sender<i64>,
}

impl Sessions {
    pub fn new(key: &[u8], ttl_seconds: i64) -> Sessions {
        Sessions {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            ttl_seconds,
            revocations: broadcast::channel(256).0,
        }
    }

    /// A session token for `user`, valid until their session epoch moves on or the token expires.
    pub fn issue(&self, user: &User) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims =
            Claims { sub: user.id.to_string(), iat: now, exp: now + self.ttl_seconds, epoch: user.session_epoch };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    fn verify(&self, token: &str) -> Option<SessionClaims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?.claims;
        Some(SessionClaims { user_id: claims.sub.parse().ok()?, epoch: claims.epoch, expires_at: claims.exp })
    }

    /// Tells this server's open event streams of `user_id` to check their credentials again now. Streams on
    /// other servers notice within [`STREAM_RECHECK`].
    pub fn announce_revocation(&self, user_id: i64) {
        // No receiver means no open stream: nothing to tell.
        let _ = self.revocations.send(user_id);
    }
}

/// How often a long-lived request re-checks its credentials in the database, for revocations made by another
/// server on the same database (this server's own revocations are announced at once).
pub const STREAM_RECHECK: Duration = Duration::from_secs(30);

/// How a request proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A session token from `POST /token`, issued under the user's `epoch`, valid until `expires_at` (Unix
    /// seconds).
    Session { epoch: i64, expires_at: i64 },
    /// An API token; `capped` when it has a role cap, even one at or above its owner's current role: the cap
    /// still holds after the owner is promoted, so the token must not create an uncapped one that would not.
    ApiToken { id: i64, capped: bool, expires_at: Option<chrono::DateTime<Utc>> },
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

    /// Refuses API tokens: changing credentials, or ending sessions, needs someone who signed in.
    pub fn require_session(&self, what: &str) -> ApiResult<()> {
        match self.credential {
            Credential::Session { .. } => Ok(()),
            Credential::ApiToken { .. } => Err(ApiError::Forbidden(format!(
                "{what} needs a session from POST /token, not an API token: a leaked or capped token must not be \
                 able to take over its owner's account"
            ))),
        }
    }

    /// Resolves when these credentials stop being good: the session or token expires, the session is revoked
    /// (logout, password change, sign-out everywhere), the token is revoked, or the user is deactivated,
    /// deleted or has their role changed. Event streams end with it, so none outlives its credentials.
    pub fn credentials_end(&self, state: &AppState) -> impl Future<Output = ()> + Send + use<> {
        let store = state.store.clone();
        let mut revocations = state.sessions.revocations.subscribe();
        let principal = self.clone();
        let expires_at = match &self.credential {
            Credential::Session { expires_at, .. } => Some(*expires_at),
            Credential::ApiToken { expires_at, .. } => expires_at.map(|at| at.timestamp()),
        };
        async move {
            let expiry = async {
                match expires_at {
                    Some(at) => {
                        let left = at.saturating_sub(Utc::now().timestamp()).max(0);
                        tokio::time::sleep(Duration::from_secs(left.unsigned_abs())).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let revoked = async {
                loop {
                    tokio::select! {
                        announced = revocations.recv() => match announced {
                            Ok(user_id) if user_id != principal.user.id => continue,
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                        },
                        () = tokio::time::sleep(STREAM_RECHECK) => {}
                    }
                    if !principal.still_valid(&store).await {
                        return;
                    }
                }
            };
            tokio::select! {
                () = expiry => {}
                () = revoked => {}
            }
        }
    }

    /// Whether the credentials would still be accepted with the same role; a database error counts as no, so
    /// a stream fails closed (its client reconnects and authenticates afresh).
    async fn still_valid(&self, store: &automa_store::Store) -> bool {
        let Ok(user) = store.get_user(self.user.id).await else { return false };
        if !user.active || user.role != self.user.role {
            return false;
        }
        match &self.credential {
            Credential::Session { epoch, .. } => user.session_epoch == *epoch,
            Credential::ApiToken { id, .. } => store.token_is_live(*id).await.unwrap_or(false),
        }
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

/// The client's address, for the audit log and login limits: the one [`client_address`] resolved, or the
/// peer's.
pub fn client_ip(parts: &Parts) -> Option<String> {
    if let Some(ClientAddress(address)) = parts.extensions.get::<ClientAddress>() {
        return Some(address.to_string());
    }
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

/// The client's address as resolved through trusted proxies.
#[derive(Debug, Clone, Copy)]
struct ClientAddress(IpAddr);

/// Resolves the client's address once per request. With no trusted proxies configured (the default) it is
/// the peer's address and `X-Forwarded-For` is ignored, since any client can send one. When the peer is a
/// trusted proxy, the header is read from the right (the hop the proxy added) and the first address that is
/// not itself a trusted proxy is the client: addresses further left were written by the client and prove
/// nothing.
pub async fn client_address(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let forwarded = request.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
        let address = resolve_client(peer, forwarded, &state.trusted_proxies);
        request.extensions_mut().insert(ClientAddress(address));
    }
    next.run(request).await
}

fn resolve_client<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|value| value.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A hop that is not an address cannot be attributed: the last trusted hop is the best we know.
        let Ok(address) = hop.parse::<IpAddr>() else { return client };
        client = address;
        if !is_trusted(&address) {
            break;
        }
    }
    client
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
        let role = user.role.min(cap);
        let credential = Credential::ApiToken {
            id: api_token.id,
            capped: api_token.role_cap.is_some(),
            expires_at: api_token.expires_at,
        };
        return Ok(Principal { user, role, credential, ip });
    }
    let claims = state.sessions.verify(token).ok_or_else(invalid)?;
    let user = match state.store.get_user(claims.user_id).await {
        Ok(user) if user.active && user.session_epoch == claims.epoch => user,
        Ok(_) | Err(automa_store::StoreError::NotFound) => return Err(invalid()),
        Err(other) => return Err(other.into()),
    };
    let credential = Credential::Session { epoch: claims.epoch, expires_at: claims.expires_at };
    Ok(Principal { role: user.role, user, credential, ip })
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
    let hash = token_hash(token);
    let ip = client_ip(parts);
    let Some(agent) = state.store.authenticate_agent(&hash).await? else {
        state.execution.note_refused(&hash, ip.as_deref()).await;
        return Err(ApiError::Unauthorized("the agent token is invalid or the agent is disabled".into()));
    };
    Ok(AgentPrincipal { agent, ip })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(peer: &str, forwarded: &[&str], trusted: &[&str]) -> String {
        let trusted: Vec<IpNet> = trusted.iter().map(|net| net.parse().unwrap()).collect();
        resolve_client(peer.parse().unwrap(), forwarded.iter().copied(), &trusted).to_string()
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        assert_eq!(resolve("10.0.0.5", &["203.0.113.7"], &[]), "10.0.0.5");
        assert_eq!(resolve("10.0.0.5", &["203.0.113.7"], &["192.168.0.0/16"]), "10.0.0.5");
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let proxies = ["10.0.0.0/8"];
        assert_eq!(resolve("10.0.0.5", &["203.0.113.7"], &proxies), "203.0.113.7");
        // The client wrote the left part itself; only what trusted proxies appended counts.
        assert_eq!(resolve("10.0.0.5", &["1.1.1.1, 203.0.113.7, 10.0.0.9"], &proxies), "203.0.113.7");
        assert_eq!(resolve("10.0.0.5", &["1.1.1.1", "203.0.113.7"], &proxies), "203.0.113.7");
        assert_eq!(resolve("10.0.0.5", &["garbage, 10.0.0.9"], &proxies), "10.0.0.9");
        assert_eq!(resolve("10.0.0.5", &[], &proxies), "10.0.0.5");
        assert_eq!(resolve("::1", &["2001:db8::1"], &["::1/128"]), "2001:db8::1");
    }
}
