//! Building and running the server. The listener is bound first, so callers (tests with port 0) know the
//! address before serving starts; the shutdown signal comes from the caller, so only `main` handles signals.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderValue, Method, StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::get,
};
use tokio::{net::TcpListener, sync::watch};
use tower::Layer;
use tower::util::MapRequestLayer;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
};
use utoipa_swagger_ui::SwaggerUi;

use automa_store::{AuditKey, ChainLimits, Store};

use crate::{
    api,
    auth::{self, Passwords, Sessions},
    config::Config,
    error::ApiError,
    events::Hub,
    execution::{Execution, embedded},
    file_modes, keys,
    limits::LoginLimiter,
    notify::Notifier,
    python::SyntaxChecker,
    rate_limit::{self, RateLimiter},
    requests, retention,
    scheduler::Scheduler,
    sealing::Sealer,
    serving::{self, ConnectionLimits},
    state::AppState,
};

pub struct Application {
    listener: TcpListener,
    router: Router,
    /// `AUTOMA_METRICS_BIND`: serves `/metrics` only, without a token.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    /// Set on shutdown: ends long-polls and the reaper, and makes the embedded agent drain.
    stopping: watch::Sender<bool>,
    /// The embedded agent's sandbox, being built since `build` began; `None` without an embedded agent.
    sandbox: Option<embedded::PreparedSandbox>,
}

impl Application {
    /// Opens and migrates the database, prepares keys and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        check_limits(&config)?;
        file_modes::prepare_data_dir(&config.data_dir)?;
        let key = keys::secret_key(&config)?;
        // Probing the host (interpreter, sandbox layers) starts processes: it runs beside opening the database.
        let sandbox = if config.no_agent { None } else { Some(embedded::prepare_sandbox(&config)?) };
        let python = config.python.clone();
        let interpreter = tokio::task::spawn_blocking(move || automa_runner::resolve_interpreter(python.as_deref()));
        let url = config.database_url();
        let store = Store::connect(&url)
            .await
            .with_context(|| format!("opening {}", automa_store::redact_url(&url)))?
            .with_audit_key(AuditKey::derive(&key))
            .with_chain_limits(ChainLimits {
                max_depth: i64::from(config.run_after_max_depth),
                max_queued: i64::from(config.run_after_max_queued),
            });
        migrate_or_refuse(&store, config.auto_migrate).await?;
        file_modes::warn_if_exposed(&file_modes::sensitive_paths(&config.data_dir, store.sqlite_path().as_deref()));
        if let Some(log_file) = &config.log_file {
            file_modes::warn_if_log_exposed(log_file);
        }
        let interpreter = match interpreter.await? {
            Ok(path) => Some(path),
            Err(error) => {
                tracing::warn!(%error, "no Python interpreter: scripts cannot be checked or run");
                None
            }
        };
        let locker = Arc::new(crate::packages::Locker::detect(&config, interpreter.clone()).await);
        let (router, mut openapi) = api::routes().split_for_parts();
        api::complete(&mut openapi);
        let openapi_json = serde_json::to_value(&openapi)?;
        let (stopping, stopping_rx) = watch::channel(false);
        let events = Hub::default();
        let notifier = Arc::new(
            Notifier::new(&config, store.clone(), Sealer::new(&key), events.clone())
                .context("preparing notification channels")?,
        );
        let execution = Arc::new(Execution::new(
            store.clone(),
            events.clone(),
            Sealer::new(&key),
            config.lease_seconds,
            config.agent_offline_seconds,
            config.max_log_bytes,
            stopping_rx,
        ));
        let state = AppState {
            execution,
            events,
            notifier,
            sandbox: Arc::default(),
            schedule_changed: Arc::default(),
            database_size: Arc::default(),
            locker,
            store,
            sessions: Arc::new(Sessions::new(&key, config.token_ttl_seconds)),
            access: Arc::new(
                auth::access_table(&openapi_json).context("reading the access rules from the OpenAPI document")?,
            ),
            syntax: Arc::new(SyntaxChecker::new(interpreter)),
            login_limiter: Arc::new(LoginLimiter::new(
                config.login_attempts_per_minute,
                config.login_attempts_per_account_per_minute,
            )),
            passwords: Arc::new(Passwords::new(
                config
                    .password_hashing_concurrency
                    .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1)),
            )?),
            failed_logins: Arc::default(),
            trusted_proxies: config.trusted_proxy_networks()?.into(),
            data_dir: config.data_dir.clone(),
            config: Arc::new(config),
        };
        let router = router
            .route_layer(middleware::from_fn_with_state(state.clone(), auth::enforce_access))
            .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
            .merge(crate::dashboard::router())
            .fallback(|| async { ApiError::NotFound("no such route".into()) })
            .method_not_allowed_fallback(|| async {
                (StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({"detail": "method not allowed"})))
                    .into_response()
            })
            .layer(cors(&state.config.cors_origins)?)
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            .layer(middleware::from_fn_with_state(
                Duration::from_secs(state.config.request_timeout_seconds),
                serving::limit_request_time,
            ))
            .layer(middleware::from_fn_with_state(
                Arc::new(RateLimiter::new(state.config.requests_per_minute, state.config.agent_requests_per_minute)),
                rate_limit::limit_requests,
            ))
            // Outside the rate limit, which counts anonymous clients by the address resolved here.
            .layer(middleware::from_fn_with_state(state.clone(), auth::client_address))
            .layer(CatchPanicLayer::custom(|_| {
                ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
            }))
            .layer(middleware::from_fn_with_state(state.clone(), requests::observe))
            .with_state(state.clone());
        let listener =
            TcpListener::bind(&state.config.bind).await.with_context(|| format!("binding {}", state.config.bind))?;
        let metrics_listener = match &state.config.metrics_bind {
            Some(bind) => {
                Some(TcpListener::bind(bind).await.with_context(|| format!("binding AUTOMA_METRICS_BIND {bind}"))?)
            }
            None => None,
        };
        Ok(Application { listener, router, metrics_listener, state, stopping, sandbox })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The address of the metrics-only listener, when `AUTOMA_METRICS_BIND` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Serves, with the embedded agent unless configured without, until `shutdown` completes; then stops
    /// claiming, finishes in-flight requests and lets the embedded agent drain its runs.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let state = self.state;
        state.execution.start_background().await.context("listening for queued runs")?;
        let agent = match self.sandbox {
            None => None,
            Some(prepared) => {
                let stopping = self.stopping.subscribe();
                Some(embedded::start(state.execution.clone(), &state.config, prepared, &state.sandbox, stopping).await?)
            }
        };
        let scheduler = Scheduler::new(
            state.store.clone(),
            state.execution.clone(),
            state.events.clone(),
            state.schedule_changed.clone(),
        )
        .with_notifier(state.notifier.clone());
        let notifier = state.notifier.start(&self.stopping.subscribe());
        let scheduler = tokio::spawn(scheduler.run(self.stopping.subscribe()));
        let failed_logins = tokio::spawn(api::session::flush_failed_logins(state.clone(), self.stopping.subscribe()));
        let retention =
            tokio::spawn(retention::run(state.store.clone(), state.config.clone(), self.stopping.subscribe()));
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(state.config.header_read_timeout_seconds),
            max_header_bytes: state.config.max_header_bytes,
        };
        let metrics = self.metrics_listener.map(|listener| {
            let router = Router::new()
                .route("/metrics", get(api::metrics::scrape))
                .fallback(|| async { ApiError::NotFound("this address serves /metrics only".into()) })
                .with_state(state.clone());
            let mut stopping = self.stopping.subscribe();
            let stopped = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            tokio::spawn(serving::serve(listener, router, limits, stopped))
        });
        let stopping = self.stopping;
        let signal = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        let service = MapRequestLayer::new(trim_trailing_slash).layer(self.router);
        // Start-up is over: what building the API document, the router and the agent freed goes back now.
        auth::return_free_memory();
        serving::serve(self.listener, service, limits, signal).await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        if let Some(agent) = agent {
            let _ = agent.await;
        }
        if let Err(error) = scheduler.await {
            tracing::error!(%error, "the scheduler task failed");
        }
        if let Err(error) = failed_logins.await {
            tracing::error!(%error, "the failed-login summary task failed");
        }
        if let Err(error) = retention.await {
            tracing::error!(%error, "the retention task failed");
        }
        for task in notifier {
            if let Err(error) = task.await {
                tracing::error!(%error, "a notification task failed");
            }
        }
        state.store.close().await;
        Ok(())
    }

    pub fn events(&self) -> &Hub {
        &self.state.events
    }
}

/// Brings the database up to this build's schema, or with `auto_migrate` off refuses to serve an older one:
/// the code expects every migration applied. Several servers starting at once are safe, since the migrator
/// holds a database lock while it applies them.
async fn migrate_or_refuse(store: &Store, auto_migrate: bool) -> anyhow::Result<()> {
    let pending = store.pending_migrations().await.context("reading the database's migrations")?;
    if pending.is_empty() {
        return Ok(());
    }
    if !auto_migrate {
        anyhow::bail!(
            "the database is behind this version of Automa: {} pending migration(s): {}. AUTOMA_AUTO_MIGRATE is \
             false, so apply them with `automa migrate` (same configuration), then start again",
            pending.len(),
            pending.join(", ")
        );
    }
    tracing::info!(migrations = %pending.join(", "), "applying pending database migrations");
    store.migrate().await.context("migrating the database")?;
    Ok(())
}

/// Refuses limits that would make the server unusable rather than start with them.
fn check_limits(config: &Config) -> anyhow::Result<()> {
    config.run_retention()?;
    check_durations(config)?;
    if config.max_header_bytes < MIN_HEADER_BYTES {
        anyhow::bail!(
            "AUTOMA_MAX_HEADER_BYTES must be at least {MIN_HEADER_BYTES} (it is {})",
            config.max_header_bytes
        );
    }
    if config.request_timeout_seconds == 0 || config.header_read_timeout_seconds == 0 {
        anyhow::bail!("AUTOMA_REQUEST_TIMEOUT_SECONDS and AUTOMA_HEADER_READ_TIMEOUT_SECONDS must be at least 1");
    }
    if config.run_after_max_depth == 0 || config.run_after_max_queued == 0 || config.hook_max_payload_bytes == 0 {
        anyhow::bail!(
            "AUTOMA_RUN_AFTER_MAX_DEPTH, AUTOMA_RUN_AFTER_MAX_QUEUED and AUTOMA_HOOK_MAX_PAYLOAD_BYTES must be at least 1"
        );
    }
    Ok(())
}

/// Refuses durations outside what they can mean. Each reaches date arithmetic, which a value this far out
/// overflows (the server panicked at its first claim, fire or sign-in), and long before that it is a mistake.
fn check_durations(config: &Config) -> anyhow::Result<()> {
    const DAY: u64 = 86_400;
    let token_ttl = u64::try_from(config.token_ttl_seconds).unwrap_or(0);
    let days = |value: Option<u32>| value.map_or(0, u64::from);
    let bounded = [
        ("AUTOMA_TOKEN_TTL_SECONDS", token_ttl, 1, 366 * DAY),
        ("AUTOMA_LEASE_SECONDS", config.lease_seconds, 3, DAY),
        ("AUTOMA_AGENT_OFFLINE_SECONDS", config.agent_offline_seconds, 0, 7 * DAY),
        ("AUTOMA_SCHEDULER_LATE_SECONDS", config.scheduler_late_seconds, 0, 7 * DAY),
        ("AUTOMA_NOTIFICATION_TIMEOUT_SECONDS", config.notification_timeout_seconds, 1, 3_600),
        ("AUTOMA_NOTIFICATION_BACKOFF_SECONDS", config.notification_backoff_seconds, 1, DAY),
        ("AUTOMA_RETENTION_RUN_DAYS", days(config.retention_run_days), 0, 36_600),
        ("AUTOMA_RETENTION_AUDIT_DAYS", days(config.retention_audit_days), 0, 36_600),
    ];
    for (name, value, least, most) in bounded {
        if !(least..=most).contains(&value) {
            anyhow::bail!("{name} must be between {least} and {most}");
        }
    }
    Ok(())
}

/// Below this, ordinary browser requests (cookies, long tokens) would be refused.
const MIN_HEADER_BYTES: usize = 4096;

/// Trailing slashes are optional on API paths (`/scripts/` is `/scripts`). The API docs keep theirs: Swagger
/// UI redirects `/docs` to `/docs/` and resolves its assets relative to that.
fn trim_trailing_slash(mut request: axum::extract::Request) -> axum::extract::Request {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.starts_with("/docs") {
        let trimmed = path.trim_end_matches('/');
        let rebuilt = match request.uri().query() {
            Some(query) => format!("{trimmed}?{query}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Browsers may call the API from the configured origins only; with none configured, only the server's own
/// pages (same origin) can, which needs no CORS headers at all.
fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .map(|origin| origin.parse::<HeaderValue>().with_context(|| format!("invalid CORS origin '{origin}'")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]))
}
