//! Starts a real server per test on its own database — a fresh SQLite file, or a fresh PostgreSQL database
//! when `AUTOMA_TEST_PG_URL` is set — and gives the test a small typed client.

use std::{net::SocketAddr, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use automa_server::{Application, Config, config::SecretString};

use crate::pg_database::Database;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares one test per backend from an async scenario `fn(Backend)`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::helpers::postgres_url().is_some() {
                        super::$scenario($crate::helpers::Backend::Postgres).await;
                    }
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

pub use crate::pg_database::postgres_url;

pub struct TestApp {
    pub addr: SocketAddr,
    /// The metrics-only listener's address, when the test configured `metrics_bind`.
    pub metrics_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub database_url: String,
    pub backend: Backend,
    config: Config,
    data_dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Shared with the server that replaces this one on a restart; the last holder drops the database.
    database: Option<std::sync::Arc<Database>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let (database_url, database) = match backend {
        Backend::Sqlite => (format!("sqlite://{}", data_dir.path().join("automa.db").display()), None),
        Backend::Postgres => {
            let server_url = postgres_url().expect("the PostgreSQL tier needs a server");
            let database = Database::fresh(&server_url, "automa_test").await;
            (database.url.clone(), Some(std::sync::Arc::new(database)))
        }
    };
    let mut config = Config {
        data_dir: data_dir.path().to_path_buf(),
        database_url: Some(SecretString::new(database_url.clone())),
        bind: "127.0.0.1:0".into(),
        login_attempts_per_minute: 1000,
        // Tests send bursts from one address; the rate limit has its own tests.
        requests_per_minute: 0,
        agent_requests_per_minute: 0,
        // These tests are about the API; execution has its own end-to-end tests with the real sandbox helper.
        no_agent: true,
        // A uv on the machine's PATH must never reach a package index from a test.
        package_offline: true,
        ..Config::default()
    };
    adjust(&mut config);
    start(config, database_url, backend, Some(data_dir), database).await
}

async fn start(
    config: Config,
    database_url: String,
    backend: Backend,
    data_dir: Option<tempfile::TempDir>,
    database: Option<std::sync::Arc<Database>>,
) -> TestApp {
    let app = Application::build(config.clone()).await.expect("the server starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        client: reqwest::Client::new(),
        database_url,
        backend,
        config,
        data_dir,
        shutdown: Some(shutdown),
        server: Some(server),
        database,
    }
}

/// A response's status and JSON body (`Value::Null` when the body is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

impl TestApp {
    /// Stops the server, lets `while_down` change the database behind its back, and starts a new server on the
    /// same database and data directory (so sessions stay valid).
    pub async fn restart<F: Future<Output = ()>>(mut self, while_down: impl FnOnce(String) -> F) -> TestApp {
        let _ = self.shutdown.take().expect("running").send(());
        self.server.take().expect("running").await.unwrap().unwrap();
        while_down(self.database_url.clone()).await;
        let data_dir = self.data_dir.take().expect("kept until the restart");
        let mut config = self.config.clone();
        config.bind = "127.0.0.1:0".into();
        start(config, self.database_url.clone(), self.backend, Some(data_dir), self.database.clone()).await
    }

    /// A second server on the same database and data directory (so the same key), as a replica runs.
    pub async fn replica(&self) -> TestApp {
        let mut config = self.config.clone();
        config.bind = "127.0.0.1:0".into();
        start(config, self.database_url.clone(), self.backend, None, self.database.clone()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let streaming = headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            // An event stream never ends by itself; its status and headers are the answer.
            return Reply { status, body: Value::Null, headers };
        }
        let text = response.text().await.unwrap();
        Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(token), Some(&body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::PUT, path, Some(token), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        let response = self
            .client
            .post(self.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("username", email)
                    .append_pair("password", password)
                    .finish(),
            )
            .send()
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        Reply { status, body: response.json().await.unwrap_or(Value::Null), headers }
    }

    /// Creates the first user (who becomes admin) and returns a session token.
    pub async fn admin_token(&self) -> String {
        let created = self
            .request(
                Method::POST,
                "/users",
                None,
                Some(&json!({"email": "admin@example.com", "password": "correct horse"})),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        self.token_for("admin@example.com", "correct horse").await
    }

    pub async fn token_for(&self, email: &str, password: &str) -> String {
        let login = self.login(email, password).await;
        assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
        login.body["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates a user with `role` through the API and returns a session token for them.
    pub async fn user_token(&self, admin: &str, role: &str) -> String {
        let email = format!("{role}-{}@example.com", random_suffix());
        let created =
            self.post("/users", admin, json!({"email": email, "password": "password-123", "role": role})).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        self.token_for(&email, "password-123").await
    }

    pub async fn create_script(&self, token: &str, name: &str) -> Value {
        let reply = self.post("/scripts", token, json!({"name": name, "content": "print('hello')\n"})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body
    }

    pub async fn create_task(&self, token: &str, name: &str, script_id: i64) -> Value {
        let reply = self.post("/tasks", token, json!({"name": name, "script_id": script_id})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body
    }

    /// Runs a statement directly on the database, behind the server's back.
    pub async fn execute_sql(&self, sql: &str) {
        execute_sql(self.backend, &self.database_url, sql).await
    }
}

/// Runs a statement directly on a database.
pub async fn execute_sql(backend: Backend, database_url: &str, sql: &str) {
    use sqlx::Connection;
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.unwrap();
        }
    }
}

/// Polls the task's runs until `done` holds, for at most 30 s.
pub async fn runs_until(app: &TestApp, token: &str, task: i64, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runs = app.get(&format!("/runs?task_id={task}&limit=500"), token).await.body["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if done(&runs) {
            return runs;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting; task {task} has {runs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
