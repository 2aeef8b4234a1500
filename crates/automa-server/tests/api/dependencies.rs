//! Scripts with dependencies: the PEP 723 block or an explicit list, validated and locked with a real uv
//! against a local find-links directory of wheels the tests build themselves (no network), on both backends.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app_with};
use crate::packages::{self, test_uv};

on_both_backends!(
    a_pep_723_script_is_locked_and_its_lock_updated,
    explicit_dependencies_are_locked_and_must_agree_with_the_block,
    malformed_and_unresolvable_requirements_are_refused_by_name,
    an_agent_is_given_the_lock_and_reports_its_environment,
    a_run_that_needs_packages_goes_only_to_an_agent_with_uv,
    a_lock_that_finds_both_slots_taken_is_answered_503_with_retry_after,
    a_refused_update_does_not_run_uv,
    requirements_with_line_breaks_are_refused_by_entry,
    each_lock_has_a_cache_of_its_own_removed_when_it_ends,
    without_uv_only_scripts_with_dependencies_are_refused
);

/// Writes a wheel and returns its `sha256:<hex>`.
fn make_wheel(dir: &Path, name: &str, version: &str) -> String {
    let wheel = packages::make_wheel(dir, name, version);
    format!("sha256:{}", hex::encode(Sha256::digest(std::fs::read(wheel).unwrap())))
}

/// A server locking offline against `wheels` only.
async fn app_with_wheels(backend: Backend, uv: PathBuf, wheels: &Path) -> TestApp {
    let wheels = wheels.display().to_string();
    spawn_app_with(backend, move |config| {
        config.uv = Some(uv);
        config.package_find_links = vec![wheels];
        config.package_offline = true;
    })
    .await
}

fn script_with(dependencies: &str) -> String {
    format!(
        "# /// script\n# requires-python = \">=3.8\"\n# dependencies = [{dependencies}]\n# ///\nimport demo_pkg\nprint(demo_pkg.VALUE)\n"
    )
}

fn hashes_of(version: &Value, name: &str) -> Vec<String> {
    let packages = version["locked_packages"].as_array().expect("locked packages");
    let package = packages.iter().find(|package| package["name"] == name).expect("the package is locked");
    package["hashes"].as_array().unwrap().iter().map(|hash| hash.as_str().unwrap().to_owned()).collect()
}

async fn a_pep_723_script_is_locked_and_its_lock_updated(backend: Backend) {
    let Some(uv) = test_uv() else { return };
    let wheels = tempfile::tempdir().unwrap();
    let first_hash = make_wheel(wheels.path(), "demo-pkg", "1.0.0");
    let app = app_with_wheels(backend, uv, wheels.path()).await;
    let admin = app.admin_token().await;
    assert!(app.get("/ready", &admin).await.body["uv"].is_string(), "the server reports its uv");

    let created =
        app.post("/scripts", &admin, json!({"name": "with-packages", "content": script_with("\"demo-pkg>=1\"")})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["dependencies"], json!(["demo-pkg>=1"]));
    assert_eq!(created.body["requires_python"], ">=3.8");
    assert!(created.body["lock"].as_str().unwrap().contains("demo-pkg==1.0.0"), "{:?}", created.body["lock"]);
    assert_eq!(hashes_of(&created.body, "demo-pkg"), [first_hash]);
    let id = created.body["id"].as_i64().unwrap();
    let version = app.get(&format!("/scripts/{id}/versions/1"), &admin).await;
    assert_eq!(
        (version.body["lock"].clone(), version.body["locked_packages"][0]["version"].clone()),
        (created.body["lock"].clone(), json!("1.0.0"))
    );

    // Editing the code keeps the packages: only "update lock" changes them.
    let second_hash = make_wheel(wheels.path(), "demo-pkg", "1.1.0");
    let edited = app
        .put(&format!("/scripts/{id}"), &admin, json!({"content": script_with("\"demo-pkg >= 1\"") + "# edited\n"}))
        .await;
    assert_eq!((edited.status, edited.body["version"].as_i64()), (StatusCode::OK, Some(2)), "{:?}", edited.body);
    assert_eq!(edited.body["lock"], created.body["lock"], "the same requirements keep their lock");

    let locked = app.post(&format!("/scripts/{id}/lock"), &admin, json!({})).await;
    assert_eq!(locked.status, StatusCode::CREATED, "{:?}", locked.body);
    assert_eq!(locked.body["version"], 3);
    assert_eq!(hashes_of(&locked.body, "demo-pkg"), [second_hash]);
    assert_eq!(app.get(&format!("/scripts/{id}"), &admin).await.body["version"], 3);

    let again = app.post(&format!("/scripts/{id}/lock"), &admin, json!({})).await;
    assert_eq!(
        (again.status, again.body["version"].as_i64()),
        (StatusCode::OK, Some(3)),
        "an unchanged lock saves nothing"
    );
    let audit = app.get("/audit?action=script.update", &admin).await;
    assert!(audit.body.to_string().contains("lock_changed"), "{:?}", audit.body);

    let plain = app.post("/scripts", &admin, json!({"name": "plain", "content": "print(1)\n"})).await;
    let refused = app.post(&format!("/scripts/{}/lock", plain.body["id"]), &admin, json!({})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.body["detail"], "the script has no dependencies to lock");
}

async fn explicit_dependencies_are_locked_and_must_agree_with_the_block(backend: Backend) {
    let Some(uv) = test_uv() else { return };
    let wheels = tempfile::tempdir().unwrap();
    let hash = make_wheel(wheels.path(), "demo-pkg", "1.0.0");
    let app = app_with_wheels(backend, uv, wheels.path()).await;
    let admin = app.admin_token().await;

    let explicit = app
        .post(
            "/scripts",
            &admin,
            json!({"name": "explicit", "content": "import demo_pkg\n", "dependencies": ["demo-pkg==1.0.0"]}),
        )
        .await;
    assert_eq!(explicit.status, StatusCode::CREATED, "{:?}", explicit.body);
    assert_eq!(
        (explicit.body["dependencies"].clone(), explicit.body["requires_python"].clone()),
        (json!(["demo-pkg==1.0.0"]), Value::Null)
    );
    assert_eq!(hashes_of(&explicit.body, "demo-pkg"), [hash]);
    let id = explicit.body["id"].as_i64().unwrap();
    let edited = app.put(&format!("/scripts/{id}"), &admin, json!({"content": "import demo_pkg\nprint(2)\n"})).await;
    assert_eq!(edited.body["dependencies"], json!(["demo-pkg==1.0.0"]), "explicit dependencies stay across edits");
    let cleared = app.put(&format!("/scripts/{id}"), &admin, json!({"dependencies": []})).await;
    assert_eq!((cleared.body["version"].as_i64(), cleared.body["lock"].clone()), (Some(3), Value::Null));

    let same = app
        .post(
            "/scripts",
            &admin,
            json!({"name": "same", "content": script_with("\"demo-pkg>=1\""), "dependencies": ["demo-pkg >= 1"]}),
        )
        .await;
    assert_eq!(same.status, StatusCode::CREATED, "the same requirements in both places agree: {:?}", same.body);
    let differ = app
        .post(
            "/scripts",
            &admin,
            json!({"name": "differ", "content": script_with("\"demo-pkg>=1\""), "dependencies": ["demo-pkg<1"]}),
        )
        .await;
    assert_eq!(
        (differ.status, differ.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("dependencies"))
    );
    assert!(differ.body["detail"].as_str().unwrap().contains("differ from the script's `# /// script` block"));
}

async fn malformed_and_unresolvable_requirements_are_refused_by_name(backend: Backend) {
    let Some(uv) = test_uv() else { return };
    let wheels = tempfile::tempdir().unwrap();
    make_wheel(wheels.path(), "demo-pkg", "1.0.0");
    let app = app_with_wheels(backend, uv, wheels.path()).await;
    let admin = app.admin_token().await;

    let in_block = app.post("/scripts", &admin, json!({"name": "a", "content": script_with("\"demo-pkg >=\"")})).await;
    assert_eq!((in_block.status, in_block.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("content")));
    let detail = in_block.body["detail"].as_str().unwrap();
    assert!(detail.contains("dependencies[0]: 'demo-pkg >=' is not a valid PEP 508 requirement"), "{detail}");

    let listed = app
        .post("/scripts", &admin, json!({"name": "b", "content": "print(1)\n", "dependencies": ["demo-pkg", "bad["]}))
        .await;
    assert_eq!(
        (listed.status, listed.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("dependencies[1]"))
    );
    assert!(listed.body["detail"].as_str().unwrap().contains("'bad['"), "{:?}", listed.body);

    let url = app
        .post(
            "/scripts",
            &admin,
            json!({"name": "c", "content": "print(1)\n", "dependencies": ["x @ file:///etc/passwd"]}),
        )
        .await;
    assert_eq!(url.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(url.body["detail"].as_str().unwrap().contains("direct reference"), "{:?}", url.body);

    let unresolvable =
        app.post("/scripts", &admin, json!({"name": "d", "content": script_with("\"no-such-package\"")})).await;
    assert_eq!(
        (unresolvable.status, unresolvable.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("dependencies"))
    );
    let detail = unresolvable.body["detail"].as_str().unwrap();
    assert!(detail.contains("could not be resolved") && detail.contains("no-such-package"), "{detail}");
    let too_new = app.post("/scripts", &admin, json!({"name": "e", "content": script_with("\"demo-pkg>5\"")})).await;
    assert!(too_new.body["detail"].as_str().unwrap().contains("demo-pkg"), "{:?}", too_new.body);
    assert_eq!(app.get("/scripts", &admin).await.body["total"], 0, "nothing refused was stored");
}

async fn without_uv_only_scripts_with_dependencies_are_refused(backend: Backend) {
    let missing = tempfile::tempdir().unwrap().path().join("uv");
    let app = spawn_app_with(backend, move |config| config.uv = Some(missing)).await;
    let admin = app.admin_token().await;
    assert_eq!(app.get("/ready", &admin).await.body["uv"], Value::Null);

    let plain =
        app.post("/scripts", &admin, json!({"name": "plain", "content": "import json\nprint(json.dumps(1))\n"})).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{:?}", plain.body);
    assert_eq!((plain.body["dependencies"].clone(), plain.body["lock"].clone()), (json!([]), Value::Null));
    let only_python = app
        .post(
            "/scripts",
            &admin,
            json!({"name": "only-python", "content": "# /// script\n# requires-python = \">=3.8\"\n# ///\nprint(1)\n"}),
        )
        .await;
    assert_eq!(
        (only_python.status, only_python.body["requires_python"].as_str()),
        (StatusCode::CREATED, Some(">=3.8"))
    );

    let refused = app.post("/scripts", &admin, json!({"name": "needs", "content": script_with("\"demo-pkg\"")})).await;
    assert_eq!(
        (refused.status, refused.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("dependencies"))
    );
    assert!(refused.body["detail"].as_str().unwrap().contains("no uv"), "{:?}", refused.body);
}

async fn an_agent_is_given_the_lock_and_reports_its_environment(backend: Backend) {
    let Some(uv) = test_uv() else { return };
    let wheels = tempfile::tempdir().unwrap();
    make_wheel(wheels.path(), "demo-pkg", "1.0.0");
    let app = app_with_wheels(backend, uv, wheels.path()).await;
    let admin = app.admin_token().await;
    let created = app.post("/agents", &admin, json!({"name": "builder"})).await;
    let agent = created.body["token"].as_str().unwrap().to_owned();
    heartbeat(&app, &agent, json!({"uv": "0.9.0"})).await;
    let script = app.post("/scripts", &admin, json!({"name": "s", "content": script_with("\"demo-pkg\"")})).await;
    let plain = app.post("/execute", &admin, json!({"content": "print(1)\n"})).await;
    assert_eq!(plain.status, StatusCode::ACCEPTED, "{:?}", plain.body);
    let locked = app.post("/execute", &admin, json!({"script_id": script.body["id"]})).await;
    assert_eq!(locked.status, StatusCode::ACCEPTED, "{:?}", locked.body);

    let claim = json!({"wait_seconds": 0});
    let first = app.request(Method::POST, "/agent/claim", Some(&agent), Some(&claim)).await.body;
    assert_eq!((first["run_id"].clone(), first["environment"].clone()), (plain.body["id"].clone(), Value::Null));
    let second = app.request(Method::POST, "/agent/claim", Some(&agent), Some(&claim)).await.body;
    assert_eq!(second["run_id"], locked.body["id"]);
    assert_eq!(second["environment"], json!({"lock": script.body["lock"], "requires_python": ">=3.8"}));

    let run = second["run_id"].as_i64().unwrap();
    let system = json!({"chunks": [
        {"seq": 1, "stream": "system", "ts": "2026-01-01T00:00:00Z", "data": "preparing environment\n"},
        {"seq": 2, "stream": "system", "ts": "2026-01-01T00:00:00Z", "data": "environment ready (0 ms, cached)\n"},
    ]});
    let shipped = app.request(Method::POST, &format!("/agent/runs/{run}/logs"), Some(&agent), Some(&system)).await;
    assert_eq!(shipped.status, StatusCode::OK, "agents may write system lines: {:?}", shipped.body);
    let finish = format!("/agent/runs/{run}/finish");
    let negative = json!({"exit_code": 0, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0, "environment_ms": -1});
    let refused = app.request(Method::POST, &finish, Some(&agent), Some(&negative)).await;
    assert_eq!(
        (refused.status, refused.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("environment_ms"))
    );
    let outcome = json!({"exit_code": 0, "signal": null, "max_rss_kb": null, "cpu_ms": null, "output_bytes": 0, "environment_ms": 0});
    assert_eq!(app.request(Method::POST, &finish, Some(&agent), Some(&outcome)).await.status, StatusCode::OK);
    let shown = app.get(&format!("/runs/{run}"), &admin).await.body;
    assert_eq!((shown["status"].as_str(), shown["environment_ms"].as_i64()), (Some("succeeded"), Some(0)), "{shown}");
    let log = app.client.get(app.url(&format!("/runs/{run}/logs?format=text"))).bearer_auth(&admin).send().await;
    assert_eq!(log.unwrap().text().await.unwrap(), "preparing environment\nenvironment ready (0 ms, cached)\n");
}

/// Registers the agent with `packages` as its package capabilities.
async fn heartbeat(app: &TestApp, agent: &str, packages: Value) {
    let heartbeat = json!({"initial": true, "hostname": "h", "version": "test", "capabilities": {"packages": packages}, "running": []});
    let sent = app.request(Method::POST, "/agent/heartbeat", Some(agent), Some(&heartbeat)).await;
    assert_eq!(sent.status, StatusCode::OK, "{:?}", sent.body);
}

async fn a_run_that_needs_packages_goes_only_to_an_agent_with_uv(backend: Backend) {
    let Some(uv) = test_uv() else { return };
    let wheels = tempfile::tempdir().unwrap();
    make_wheel(wheels.path(), "demo-pkg", "1.0.0");
    let app = app_with_wheels(backend, uv, wheels.path()).await;
    let admin = app.admin_token().await;
    let agent = |name: &'static str| {
        let (app, admin) = (&app, &admin);
        async move { app.post("/agents", admin, json!({"name": name})).await.body["token"].as_str().unwrap().to_owned() }
    };
    let (bare, builder) = (agent("bare").await, agent("builder").await);
    heartbeat(&app, &bare, json!({"uv": null, "environment_builds": 0, "cached_environments": 0})).await;
    let script = app.post("/scripts", &admin, json!({"name": "s", "content": script_with("\"demo-pkg\"")})).await;
    let locked = app.post("/execute", &admin, json!({"script_id": script.body["id"]})).await;
    let plain = app.post("/execute", &admin, json!({"content": "print(1)\n"})).await;
    let locked_run = format!("/runs/{}", locked.body["id"]);
    let reason = app.get(&locked_run, &admin).await.body["waiting_reason"].clone();
    assert!(
        reason.as_str().is_some_and(|reason| reason.contains("no online agent that may take it has uv")),
        "{reason}"
    );

    let claim = json!({"wait_seconds": 0});
    let first = app.request(Method::POST, "/agent/claim", Some(&bare), Some(&claim)).await;
    assert_eq!(first.body["run_id"], plain.body["id"], "the older locked run is passed over, the stdlib run is not");
    let none = app.request(Method::POST, "/agent/claim", Some(&bare), Some(&claim)).await;
    assert_eq!(none.status, StatusCode::NO_CONTENT, "{:?}", none.body);

    heartbeat(&app, &builder, json!({"uv": "0.9.0", "environment_builds": 0, "cached_environments": 0})).await;
    assert_eq!(app.get(&locked_run, &admin).await.body["waiting_reason"], Value::Null);
    let taken = app.request(Method::POST, "/agent/claim", Some(&builder), Some(&claim)).await;
    assert_eq!(taken.body["run_id"], locked.body["id"]);
}

/// A server whose uv answers `--version`, leaves a file in the returned directory each time it is run for
/// anything else, and then does `then` (shell): `exec /bin/sleep 60` to hold its lock slot, `exit 1` to fail.
async fn app_with_fake_uv(backend: Backend, then: &str) -> (TestApp, tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    std::fs::create_dir(&calls).unwrap();
    let uv = dir.path().join("uv");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'uv 0.0.0'; exit 0; fi\n: > '{}/called-'$$\n{then}\n",
        calls.display()
    );
    std::fs::write(&uv, script).unwrap();
    std::fs::set_permissions(&uv, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = spawn_app_with(backend, move |config| config.uv = Some(uv)).await;
    (app, dir, calls)
}

fn calls_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

async fn a_lock_that_finds_both_slots_taken_is_answered_503_with_retry_after(backend: Backend) {
    let (app, _uv, calls) = app_with_fake_uv(backend, "exec /bin/sleep 60").await;
    let admin = app.admin_token().await;
    let save = |name: &'static str| {
        let (app, admin) = (&app, &admin);
        async move { app.post("/scripts", admin, json!({"name": name, "content": script_with("\"demo-pkg\"")})).await }
    };
    let third = async {
        // Both slots are taken once two uv processes have started.
        let started = tokio::time::Instant::now();
        while calls_in(&calls) < 2 {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "the two locks never started uv");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        save("third").await
    };
    let busy = tokio::select! {
        reply = third => reply,
        reply = save("first") => panic!("a lock holding its slot ended: {:?}", reply.body),
        reply = save("second") => panic!("a lock holding its slot ended: {:?}", reply.body),
    };
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", busy.body);
    assert_eq!(busy.headers.get("retry-after").and_then(|value| value.to_str().ok()), Some("10"));
    assert_eq!(busy.body["detail"], "the server is locking other scripts' dependencies; try again");
    assert_eq!(calls_in(&calls), 2, "the refused lock never ran uv");
}

async fn a_refused_update_does_not_run_uv(backend: Backend) {
    let (app, _uv, calls) = app_with_fake_uv(backend, "exit 1").await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    let script = app.create_script(&admin, "s").await["id"].clone();
    let task = app.post("/tasks", &admin, json!({"name": "t", "script_id": script, "network": true})).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);

    let refused = app.put(&format!("/scripts/{script}"), &operator, json!({"dependencies": ["demo-pkg"]})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert_eq!(calls_in(&calls), 0, "uv ran for an operator who may not change the script");
    let renamed =
        app.put(&format!("/scripts/{script}"), &operator, json!({"description": "d", "dependencies": []})).await;
    assert_eq!(renamed.status, StatusCode::OK, "the same dependencies need no grant: {:?}", renamed.body);
    // Updating the lock is refused before anything about the script's dependencies is told.
    let lock = app.post(&format!("/scripts/{script}/lock"), &operator, json!({})).await;
    assert_eq!(lock.status, StatusCode::FORBIDDEN, "{:?}", lock.body);
}

async fn requirements_with_line_breaks_are_refused_by_entry(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let admin = app.admin_token().await;
    for (dependencies, field) in
        [(json!(["requests\n>=1"]), "dependencies[0]"), (json!(["rich", "a\u{2028}b"]), "dependencies[1]")]
    {
        let refused = app
            .post("/scripts", &admin, json!({"name": "s", "content": "print(1)\n", "dependencies": dependencies}))
            .await;
        assert_eq!((refused.status, refused.body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)));
        assert!(
            refused.body["detail"].as_str().unwrap().contains("control character or line break"),
            "{:?}",
            refused.body
        );
    }
    let block = "# /// script\n# requires-python = \">=3.8\\n--index-url=http://x\"\n# ///\nprint(1)\n";
    let refused = app.post("/scripts", &admin, json!({"name": "s", "content": block})).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", refused.body);
    assert!(refused.body["detail"].as_str().unwrap().contains("control character or line break"), "{:?}", refused.body);
}

fn caches_in(packages: &Path) -> Vec<String> {
    let names = std::fs::read_dir(packages).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap());
    names.filter(|name| name.starts_with("uv-cache")).collect()
}

async fn each_lock_has_a_cache_of_its_own_removed_when_it_ends(backend: Backend) {
    let Some(uv) = test_uv() else { return };
    let wheels = tempfile::tempdir().unwrap();
    make_wheel(wheels.path(), "demo-pkg", "1.0.0");
    let find_links = wheels.path().display().to_string();
    let mut packages = PathBuf::new();
    let app = spawn_app_with(backend, |config| {
        config.uv = Some(uv);
        config.package_find_links = vec![find_links];
        packages = config.data_dir.join("packages");
        std::fs::create_dir_all(packages.join("uv-cache-a1b2c3").join("wheels-v5")).unwrap();
    })
    .await;
    assert_eq!(caches_in(&packages), Vec::<String>::new(), "caches left by an earlier server are removed at start");
    let admin = app.admin_token().await;

    let locked = app.post("/scripts", &admin, json!({"name": "s", "content": script_with("\"demo-pkg\"")})).await;
    assert_eq!(locked.status, StatusCode::CREATED, "{:?}", locked.body);
    assert_eq!(caches_in(&packages), Vec::<String>::new(), "a lock's cache goes when it succeeds");
    let failed = app.post("/scripts", &admin, json!({"name": "t", "content": script_with("\"demo-pkg>5\"")})).await;
    assert_eq!(failed.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", failed.body);
    assert_eq!(caches_in(&packages), Vec::<String>::new(), "and when it fails");
}
