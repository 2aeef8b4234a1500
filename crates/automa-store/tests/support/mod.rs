//! What the store's integration tests share: a fresh database per test on each backend (dropped whatever the
//! test's outcome), the macro that runs a test body on both, and small builders.
// Each test file compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use automa_core::{Args, EnvVars, Labels, Limits, RunParams, RunStatus, SecretNames, Trigger};
use automa_store::{Actor, AuditKey, NewAgent, NewRun, NewScript, RunAfter, ScriptPackages, Store, TaskSpec};

/// A store on a fresh database. Dropping it drops the PostgreSQL database, also when the test panicked.
pub struct TestDb {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap()
            .with_audit_key(test_key());
        store.migrate().await.unwrap();
        TestDb { store, _dir: Some(dir), pg: None }
    }

    pub async fn postgres() -> Option<TestDb> {
        let Ok(url) = std::env::var("AUTOMA_TEST_PG_URL") else {
            assert!(
                std::env::var("AUTOMA_REQUIRE_PG").is_err(),
                "AUTOMA_REQUIRE_PG is set but AUTOMA_TEST_PG_URL is not"
            );
            eprintln!("NOTICE: AUTOMA_TEST_PG_URL is not set; skipping the PostgreSQL tier");
            return None;
        };
        let name = format!("test_{:016x}", rand_u64());
        let admin = Store::connect(&url).await.unwrap();
        admin.execute_raw(&format!("CREATE DATABASE {name}")).await.unwrap();
        admin.close().await;
        let db_url = database_url(&url, &name);
        // Owned by the guard before anything can fail, so the database is dropped whatever happens next.
        let mut db = TestDb { store: Store::connect(&db_url).await.unwrap(), _dir: None, pg: Some((url, name)) };
        db.store = db.store.clone().with_audit_key(test_key());
        db.store.migrate().await.unwrap();
        Some(db)
    }

    /// The URL of this test's PostgreSQL database, for a test that needs a connection of its own beside the
    /// store's.
    pub fn postgres_url(&self) -> Option<String> {
        self.pg.as_ref().map(|(url, name)| database_url(url, name))
    }
}

/// The URL of database `name` on the server `url` names.
fn database_url(url: &str, name: &str) -> String {
    match url.rfind('/') {
        Some(slash) => format!("{}/{name}", &url[..slash]),
        None => unreachable!("a PostgreSQL URL has a path"),
    }
}

/// Tries, 400 ms apart, to drop a test database: autovacuum may hold it for a few seconds after a busy test.
const DROP_ATTEMPTS: u32 = 25;

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((url, name)) = self.pg.take() else { return };
        // Drop cannot await, and may run while the test's runtime unwinds: a thread with a runtime of its own
        // does the clean-up. `WITH (FORCE)` ends the test's own connections, which are still open.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let admin = Store::connect(&url).await.unwrap();
                // Clean-up, not the test: an autovacuum worker on the database (a superuser's backend, which
                // the test role may not terminate) can make the drop fail for a moment, so it is retried.
                for attempt in 1..=DROP_ATTEMPTS {
                    match admin.execute_raw(&format!("DROP DATABASE {name} WITH (FORCE)")).await {
                        Ok(()) => break,
                        Err(error) if attempt == DROP_ATTEMPTS => {
                            eprintln!("NOTICE: test database {name} left behind: {error}")
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(400)).await,
                    }
                }
                admin.close().await;
            })
        });
        let _ = dropped.join();
    }
}

pub fn test_key() -> AuditKey {
    AuditKey::derive(b"a test server key of 32 bytes...")
}

pub fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Runs `body` on SQLite and, when configured, PostgreSQL.
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let db = super::TestDb::sqlite().await;
                super::$body(&db.store).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = super::TestDb::postgres().await {
                    super::$body(&db.store).await;
                }
            }
        }
    };
}

pub async fn agent(store: &Store, name: &str, labels: &[&str], max_concurrency: i64) -> i64 {
    let new = NewAgent {
        name: name.into(),
        description: String::new(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        max_concurrency,
        token_hash: format!("hash-{name}"),
        embedded: false,
    };
    store.create_agent(&Actor::system(), new).await.unwrap().id
}

pub async fn script(store: &Store) -> (i64, i64) {
    let new = NewScript {
        name: "s".into(),
        description: String::new(),
        filename: "s.py".into(),
        content: "print(1)".into(),
        packages: ScriptPackages::default(),
    };
    let script = store.create_script(&Actor::system(), new).await.unwrap();
    (script.id, script.version)
}

fn labels_of(labels: &[&str]) -> Labels {
    Labels::parse("labels", labels.iter().map(|l| l.to_string()).collect()).unwrap()
}

/// Parameters of a short, small run without arguments, environment or network.
fn small_params() -> RunParams {
    let limits = Limits::new(60, 64, 60, 1024).unwrap();
    RunParams::new(Args::default(), EnvVars::default(), SecretNames::default(), limits, false).unwrap()
}

pub fn new_run(script: (i64, i64), labels: &[&str], target: Option<i64>, retries: i64) -> NewRun {
    NewRun {
        task_id: None,
        script_id: Some(script.0),
        script_version: Some(script.1),
        content: None,
        filename: "s.py".into(),
        target_agent_id: target,
        labels: labels_of(labels),
        trigger: Trigger::Api,
        scheduled_for: None,
        retries,
        retry_backoff_seconds: 0,
        params: small_params(),
    }
}

/// A task of `script` with `labels` and `retries`, run after each of `after` succeeds.
pub fn task_spec(name: &str, script: (i64, i64), after: &[i64], labels: &[&str], retries: i64) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        description: String::new(),
        script_id: script.0,
        script_version: None,
        agent_id: None,
        labels: labels_of(labels),
        params: small_params(),
        retries,
        retry_backoff_seconds: 0,
        schedule: None,
        enabled: true,
        next_fire_at: None,
        run_after: after.iter().map(|&task_id| RunAfter { task_id, on: vec![RunStatus::Succeeded] }).collect(),
    }
}
