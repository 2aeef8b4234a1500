//! Authentication and authorisation. Passwords are argon2id; sessions are short-lived HS256 JWTs; API tokens
//! are random strings stored only as SHA-256 hashes. Which role a route needs is declared once, in its
//! OpenAPI `security` entry, and enforced from there by `enforce_access` — the document clients read is the
//! rule the server applies.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
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
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot};

use automa_core::Role;
use automa_store::{Actor, User};

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    rate_limit,
    state::AppState,
};

/// API tokens start with this, so a leaked one is recognisable by secret scanners and by us.
pub const API_TOKEN_PREFIX: &str = "atm_";
/// Agent enrollment tokens start with this.
pub const AGENT_TOKEN_PREFIX: &str = "atma_";

/// Hashes a password with argon2id on the blocking pool: a hash takes tens of milliseconds of CPU and about
/// 19 MiB of memory. The server goes through [`Passwords`], which bounds how many run at once; this is for the
/// command line.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_now(&password)).await?
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| anyhow::anyhow!("hashing a password: {error}"))
}

/// Checks a password against a stored hash. With no hash (unknown user) it still spends the time of one
/// verification, so response times do not reveal which e-mail addresses exist.
fn verify_now(password: &str, hash: Option<&str>) -> bool {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let decoy = DECOY.get_or_init(|| hash_now("decoy password").unwrap_or_default());
    Argon2::default().verify_password(password.as_bytes(), hash.unwrap_or(decoy)).is_ok() && hash.is_some()
}

/// Password hashing and verification for requests, bounded: each argon2 call holds about 19 MiB, so without a
/// bound a burst of logins costs memory in proportion to the burst (300 parallel logins took 2.8 GB in the
/// review, 5.7 GB in our test). A fixed set of `concurrency` threads does the work, and a few times that many
/// requests may wait; past that a request is refused at once with 429 and `Retry-After`, before it costs
/// anything.
pub struct Passwords {
    jobs: std::sync::mpsc::SyncSender<PasswordJob>,
}

enum PasswordJob {
    Hash { password: String, done: oneshot::Sender<anyhow::Result<String>> },
    Verify { password: String, hash: Option<String>, done: oneshot::Sender<bool> },
}

/// glibc raises its mmap threshold each time a large block is freed, up to 32 MiB; argon2's 19 MiB blocks then
/// come from the heap, and heap fragmentation keeps about ten of them resident (measured: +155 MiB after a few
/// logins, constant thereafter). A fixed threshold maps and unmaps each large block, so a verification's memory
/// is returned as soon as it ends and the bound on hashing threads is the bound on memory.
fn return_large_allocations_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Requests allowed to wait for a hashing thread, per thread.
const WAITING_PER_THREAD: usize = 4;

impl Passwords {
    pub fn new(concurrency: usize) -> anyhow::Result<Passwords> {
        let concurrency = concurrency.max(1);
        return_large_allocations_at_once();
        let (jobs, queue) = std::sync::mpsc::sync_channel::<PasswordJob>(concurrency * WAITING_PER_THREAD);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for index in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("password-{index}")).spawn(move || {
                // Ends when the server drops its `Passwords`, which closes the queue.
                loop {
                    let job = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                    match job {
                        Ok(PasswordJob::Hash { password, done }) => {
                            let _ = done.send(hash_now(&password));
                        }
                        Ok(PasswordJob::Verify { password, hash, done }) => {
                            let _ = done.send(verify_now(&password, hash.as_deref()));
                        }
                        Err(_) => return,
                    }
                }
            })?;
        }
        Ok(Passwords { jobs })
    }

    pub async fn hash(&self, password: String) -> ApiResult<String> {
        let (done, result) = oneshot::channel();
        self.submit(PasswordJob::Hash { password, done })?;
        Ok(result.await.map_err(anyhow::Error::from)??)
    }

    /// Whether `password` matches `hash`; with no hash it spends the same effort and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> ApiResult<bool> {
        let (done, result) = oneshot::channel();
        self.submit(PasswordJob::Verify { password, hash, done })?;
        Ok(result.await.map_err(anyhow::Error::from)?)
    }

    fn submit(&self, job: PasswordJob) -> ApiResult<()> {
        self.jobs.try_send(job).map_err(|error| match error {
            std::sync::mpsc::TrySendError::Full(_) => ApiError::TooManyRequests {
                detail: "the server is busy checking other passwords; try again shortly".into(),
                retry_after_seconds: 1,
            },
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                ApiError::Internal(anyhow::anyhow!("the password threads have stopped"))
            }
        })
    }
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
    Ok(Principal { role: user.role(), user, credential, ip })
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
