//! Secret policies: who may give a run a secret (finding 7), on which agents it may land, and who may grant
//! network (finding 8, server side). Agents claim over HTTP here, exactly as remote agents do.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, execute_sql, on_both_backends, runs_until, spawn_app, spawn_app_with};

on_both_backends!(
    operators_cannot_read_secrets_through_adhoc_runs,
    tasks_name_secrets_only_as_their_policy_allows,
    a_narrowed_policy_stops_manual_and_queued_runs,
    a_narrowed_policy_turns_scheduled_fires_into_failed_runs,
    runs_with_secrets_go_only_to_agents_the_secret_allows,
    a_widened_policy_wakes_the_claims_it_frees_runs_for,
    deleting_a_secret_wakes_the_claims_that_then_fail_its_runs,
    secret_policies_are_validated_and_audited,
    network_is_granted_by_admins_unless_configured_otherwise,
    tasks_that_named_a_secret_before_policies_keep_it,
    dropping_a_secret_does_not_free_a_task_to_change_what_it_runs,
    new_code_for_a_networked_task_needs_the_network_grant,
);

/// Base64 of the secret: what masking cannot catch, and so what the policy has to stop.
const EXFILTRATE: &str = "import base64, os\nprint(base64.b64encode(os.environ['VAULT'].encode()).decode())\n";

/// Creates a secret; `Value::Null` leaves the policy out (the default), as a client from before policies would.
async fn create_secret(app: &TestApp, token: &str, name: &str, policy: Value) -> Value {
    let mut body = json!({"name": name, "value": "hunter2-value"});
    if !policy.is_null() {
        body["policy"] = policy;
    }
    let reply = app.post("/secrets", token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

/// An agent's claim, answered at once: the assignment, or `None` for 204.
async fn claim(app: &TestApp, agent_token: &str) -> Option<Value> {
    let reply = app.post("/agent/claim", agent_token, json!({"wait_seconds": 0})).await;
    match reply.status {
        StatusCode::OK => Some(reply.body),
        StatusCode::NO_CONTENT => None,
        other => panic!("claim answered {other}: {:?}", reply.body),
    }
}

/// A remote agent: (id, token).
async fn agent(app: &TestApp, admin: &str, name: &str, labels: Value) -> (i64, String) {
    let created = app.post("/agents", admin, json!({"name": name, "labels": labels, "max_concurrency": 100})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    (created.body["id"].as_i64().unwrap(), created.body["token"].as_str().unwrap().to_owned())
}

async fn operators_cannot_read_secrets_through_adhoc_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let script = app.post("/scripts", &operator, json!({"name": "leak", "content": EXFILTRATE})).await;
    let script = script.body["id"].as_i64().unwrap();

    for body in
        [json!({"content": EXFILTRATE, "secrets": ["VAULT"]}), json!({"script_id": script, "secrets": ["VAULT"]})]
    {
        let reply = app.post("/execute", &operator, body.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "an operator's ad-hoc run with a secret: {:?}", reply.body);
        assert!(reply.detail().contains("only admins"), "{}", reply.detail());
    }
    let own = app.post("/secrets", &operator, json!({"name": "MINE", "value": "v"})).await;
    assert_eq!(own.status, StatusCode::CREATED);
    let reply = app.post("/execute", &operator, json!({"content": "print(1)\n", "secrets": ["MINE"]})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "not even their own: ad-hoc secrets are an admin's decision");
    let runs = app.get("/runs", &admin).await;
    assert_eq!(runs.body["total"], 0, "nothing was queued: {:?}", runs.body);

    let by_admin = app.post("/execute", &admin, json!({"content": EXFILTRATE, "secrets": ["VAULT"]})).await;
    assert_eq!(by_admin.status, StatusCode::ACCEPTED, "{:?}", by_admin.body);
}

async fn tasks_name_secrets_only_as_their_policy_allows(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let script = app.post("/scripts", &operator, json!({"name": "leak", "content": EXFILTRATE})).await;
    let script = script.body["id"].as_i64().unwrap();

    let stolen =
        app.post("/tasks", &operator, json!({"name": "steal", "script_id": script, "secrets": ["VAULT"]})).await;
    assert_eq!(stolen.status, StatusCode::FORBIDDEN, "{:?}", stolen.body);
    assert!(stolen.detail().contains("does not allow this task"), "{}", stolen.detail());
    let innocent = app.create_task(&operator, "innocent", script).await["id"].as_i64().unwrap();
    let added = app.put(&format!("/tasks/{innocent}"), &operator, json!({"secrets": ["VAULT"]})).await;
    assert_eq!(added.status, StatusCode::FORBIDDEN, "adding the secret to an existing task: {:?}", added.body);
    let widened = app.put("/secrets/VAULT", &operator, json!({"policy": {"all_tasks": true}})).await;
    assert_eq!(widened.status, StatusCode::FORBIDDEN, "only the owner or an admin edits the policy");
    let replaced = app.put("/secrets/VAULT", &operator, json!({"value": "attacker-chosen"})).await;
    assert_eq!(replaced.status, StatusCode::FORBIDDEN, "nor the value");
    assert_eq!(app.delete("/secrets/VAULT", &operator).await.status, StatusCode::FORBIDDEN, "nor deletes it");

    // The owner's own task joins the policy: the documented workflow needs no extra step.
    let owned = app.post("/tasks", &admin, json!({"name": "owned", "script_id": script, "secrets": ["VAULT"]})).await;
    assert_eq!(owned.status, StatusCode::CREATED, "{:?}", owned.body);
    let owned = owned.body["id"].as_i64().unwrap();
    let policy = app.get("/secrets/VAULT", &operator).await.body["policy"].clone();
    assert_eq!(policy, json!({"all_tasks": false, "task_ids": [owned], "agent_ids": [], "agent_labels": []}));

    // Others may run and tidy an allowed task, but not change what it runs.
    let renamed =
        app.put(&format!("/tasks/{owned}"), &operator, json!({"description": "nightly", "timeout_seconds": 60})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    for change in
        [json!({"args": ["--dump"]}), json!({"env": {"X": "1"}}), json!({"script_id": script, "script_version": 1})]
    {
        let reply = app.put(&format!("/tasks/{owned}"), &operator, change.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{change}: {:?}", reply.body);
        assert!(reply.detail().contains("only the secret's owner or an admin"), "{}", reply.detail());
    }
    assert_eq!(app.post(&format!("/tasks/{owned}/execute"), &operator, json!({})).await.status, StatusCode::ACCEPTED);
    let new_code = app.put(&format!("/scripts/{script}"), &operator, json!({"content": "print('v2')\n"})).await;
    assert_eq!(new_code.status, StatusCode::FORBIDDEN, "a new version would reach the task: {:?}", new_code.body);
    let described = app.put(&format!("/scripts/{script}"), &operator, json!({"description": "leaks"})).await;
    assert_eq!(described.status, StatusCode::OK, "{:?}", described.body);
    let by_owner = app.put(&format!("/scripts/{script}"), &admin, json!({"content": "print('v2')\n"})).await;
    assert_eq!(by_owner.status, StatusCode::OK, "{:?}", by_owner.body);

    // An operator's own secret works for their own tasks.
    create_secret(&app, &operator, "MINE", Value::Null).await;
    let mine = app.post("/tasks", &operator, json!({"name": "mine", "script_id": script, "secrets": ["MINE"]})).await;
    assert_eq!(mine.status, StatusCode::CREATED, "{:?}", mine.body);
}

async fn a_narrowed_policy_stops_manual_and_queued_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let (_, agent_token) = agent(&app, &admin, "remote", json!(["prod"])).await;
    app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_labels": ["prod"]}})).await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let task = app.post("/tasks", &admin, json!({"name": "t", "script_id": script, "secrets": ["VAULT"]})).await;
    let task = task.body["id"].as_i64().unwrap();
    let queued = app.post(&format!("/tasks/{task}/execute"), &admin, json!({})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED);

    let narrowed = app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_labels": ["prod"]}})).await;
    assert_eq!(narrowed.body["policy"]["task_ids"], json!([]), "the task is no longer allowed");
    let refused = app.post(&format!("/tasks/{task}/execute"), &admin, json!({})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert!(refused.detail().contains(&format!("does not allow task {task}")), "{}", refused.detail());

    // The run queued before the change is claimed but fails when its values would be handed out.
    assert!(claim(&app, &agent_token).await.is_none(), "no assignment carries the value");
    let run = app.get(&format!("/runs/{}", queued.body["id"]), &admin).await.body;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("does not allow task"), "{run}");
}

async fn a_narrowed_policy_turns_scheduled_fires_into_failed_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let body = json!({"name": "tick", "script_id": script, "secrets": ["VAULT"],
        "schedule": {"kind": "interval", "every_seconds": 1, "max_instances": 1000}});
    let task = app.post("/tasks", &admin, body).await.body["id"].as_i64().unwrap();
    runs_until(&app, &admin, task, |runs| runs.iter().any(|r| r["status"] == "queued")).await;

    app.put("/secrets/VAULT", &admin, json!({"policy": {}})).await;
    let runs = runs_until(&app, &admin, task, |runs| runs.iter().any(|r| r["status"] == "failed")).await;
    let failed = runs.iter().find(|r| r["status"] == "failed").unwrap();
    assert_eq!(failed["trigger"], "schedule");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("secret 'VAULT' does not allow task"), "{error}");
}

async fn runs_with_secrets_go_only_to_agents_the_secret_allows(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let (remote, remote_token) = agent(&app, &admin, "remote", json!(["gpu"])).await;
    let (embedded, embedded_token) = agent(&app, &admin, "inside", json!([])).await;
    // The embedded agent's record, with a token this test knows.
    app.execute_sql(&format!("UPDATE agents SET embedded = true WHERE id = {embedded}")).await;

    let with_secret = app.post("/execute", &admin, json!({"content": "print(1)\n", "secrets": ["VAULT"]})).await;
    assert_eq!(with_secret.status, StatusCode::ACCEPTED, "{:?}", with_secret.body);
    let plain = app.post("/execute", &admin, json!({"content": "print(2)\n"})).await;
    let taken = claim(&app, &remote_token).await.expect("the remote agent takes the run without secrets");
    assert_eq!(taken["run_id"], plain.body["id"], "the older run with a secret was passed over");
    assert!(claim(&app, &remote_token).await.is_none(), "by default a secret stays with the embedded agent");
    let inside = claim(&app, &embedded_token).await.expect("the embedded agent takes it");
    assert_eq!(
        (inside["run_id"].clone(), inside["env"]["VAULT"].as_str()),
        (with_secret.body["id"].clone(), Some("hunter2-value"))
    );

    // By label, then by id; a pin to an agent the secret refuses is refused up front.
    let pinned =
        app.post("/execute", &admin, json!({"content": "print(3)\n", "secrets": ["VAULT"], "agent_id": remote})).await;
    assert_eq!(pinned.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", pinned.body);
    assert_eq!(pinned.body["field"], "agent_id");
    app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_labels": ["gpu"]}})).await;
    let by_label = app.post("/execute", &admin, json!({"content": "print(4)\n", "secrets": ["VAULT"]})).await;
    assert!(claim(&app, &embedded_token).await.is_none(), "the explicit list replaces the embedded default");
    let remote_run = claim(&app, &remote_token).await.expect("a labelled agent takes it");
    assert_eq!(
        (remote_run["run_id"].clone(), remote_run["env"]["VAULT"].as_str()),
        (by_label.body["id"].clone(), Some("hunter2-value"))
    );
    app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_ids": [embedded]}})).await;
    let by_id = app.post("/execute", &admin, json!({"content": "print(5)\n", "secrets": ["VAULT"]})).await;
    assert!(claim(&app, &remote_token).await.is_none());
    assert_eq!(claim(&app, &embedded_token).await.expect("listed by id")["run_id"], by_id.body["id"]);

    // A task pinned to an agent its secret no longer admits is refused when run by hand, not left waiting.
    app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_ids": [remote]}})).await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let body = json!({"name": "pinned", "script_id": script, "secrets": ["VAULT"], "agent_id": remote});
    let task = app.post("/tasks", &admin, body).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
    let task = task.body["id"].as_i64().unwrap();
    let policy = app.get("/secrets/VAULT", &admin).await.body["policy"].clone();
    app.put("/secrets/VAULT", &admin, json!({"policy": {"task_ids": policy["task_ids"], "agent_ids": [embedded]}}))
        .await;
    let refused = app.post(&format!("/tasks/{task}/execute"), &admin, json!({})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert!(refused.detail().contains("pinned"), "{}", refused.detail());
}

/// A claim waiting while the only queued run names a secret its agent may not receive is woken when the policy
/// admits the agent, not left to the end of its long poll.
async fn a_widened_policy_wakes_the_claims_it_frees_runs_for(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let (_, remote_token) = agent(&app, &admin, "remote", json!(["gpu"])).await;
    let queued = app.post("/execute", &admin, json!({"content": "print(1)\n", "secrets": ["VAULT"]})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let waiting = app.post("/agent/claim", &remote_token, json!({"wait_seconds": 60}));
    let widen = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let widened = app.put("/secrets/VAULT", &admin, json!({"policy": {"agent_labels": ["gpu"]}})).await;
        assert_eq!(widened.status, StatusCode::OK, "{:?}", widened.body);
    };
    let (claimed, ()) =
        tokio::time::timeout(std::time::Duration::from_secs(20), async { tokio::join!(waiting, widen) })
            .await
            .expect("the claim was answered when the policy changed, not at the end of its 60 s");
    assert_eq!((claimed.status, claimed.body["run_id"].clone()), (StatusCode::OK, queued.body["id"].clone()));
}

/// A run naming a secret that no longer exists goes to any agent, to fail with the reason: the deletion wakes a
/// claim that its policy held back, rather than leaving the run queued to the end of the claim's long poll.
async fn deleting_a_secret_wakes_the_claims_that_then_fail_its_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let (_, remote_token) = agent(&app, &admin, "remote", json!([])).await;
    let queued = app.post("/execute", &admin, json!({"content": "print(1)\n", "secrets": ["VAULT"]})).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{:?}", queued.body);
    let run = format!("/runs/{}", queued.body["id"]);
    let waiting = app.post("/agent/claim", &remote_token, json!({"wait_seconds": 60}));
    let deleted_and_failed = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let deleted = app.delete("/secrets/VAULT", &admin).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
        loop {
            let shown = app.get(&run, &admin).await.body;
            // Claimed (running) for a moment before the claim finds the secret gone and fails it.
            if !["queued", "running"].contains(&shown["status"].as_str().unwrap_or_default()) {
                return shown;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let ended = tokio::select! {
        answered = waiting => panic!("the claim ended before the run did: {:?}", answered.body),
        ended = tokio::time::timeout(std::time::Duration::from_secs(20), deleted_and_failed) => ended,
    };
    let ended = ended.expect("the run ended once the secret was gone, not at the end of the 60 s claim");
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(ended["error"].as_str().unwrap_or_default().contains("VAULT"), "{ended}");
}

async fn secret_policies_are_validated_and_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let cases = [
        (json!({"task_ids": [999]}), "policy.task_ids[0]", "no task with id 999"),
        (json!({"agent_ids": [999]}), "policy.agent_ids[0]", "no agent with id 999"),
        (json!({"all_tasks": true, "task_ids": [1]}), "policy.task_ids", "not both"),
        (json!({"agent_labels": [""]}), "policy.agent_labels[0]", ""),
    ];
    for (policy, field, says) in cases {
        let reply = app.post("/secrets", &admin, json!({"name": "S", "value": "v", "policy": policy})).await;
        assert_eq!(
            (reply.status, reply.body["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{policy}: {:?}",
            reply.body
        );
        assert!(reply.detail().contains(says), "{}", reply.detail());
    }
    assert_eq!(app.get("/secrets", &admin).await.body["total"], 0, "nothing half-written");
    create_secret(&app, &admin, "S", json!({})).await;
    let empty = app.put("/secrets/S", &admin, json!({})).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let widened = app.put("/secrets/S", &admin, json!({"policy": {"all_tasks": true}})).await;
    assert_eq!((widened.status, widened.body["policy"]["all_tasks"].as_bool()), (StatusCode::OK, Some(true)));
    let audit = app.get("/audit?action=secret.update", &admin).await.body;
    let entry = &audit["items"][0];
    assert_eq!(entry["details"]["policy"]["all_tasks"], true, "{audit}");
    assert_eq!(entry["details"]["value_changed"], false);
    assert!(!audit.to_string().contains("hunter2"), "the audit log never holds a value");
}

async fn network_is_granted_by_admins_unless_configured_otherwise(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let adhoc = app.post("/execute", &operator, json!({"script_id": script, "network": true})).await;
    assert_eq!(adhoc.status, StatusCode::FORBIDDEN, "{:?}", adhoc.body);
    assert!(adhoc.detail().contains("AUTOMA_NETWORK_GRANT"), "{}", adhoc.detail());
    let task = app.post("/tasks", &operator, json!({"name": "t", "script_id": script, "network": true})).await;
    assert_eq!(task.status, StatusCode::FORBIDDEN, "{:?}", task.body);
    let plain = app.create_task(&operator, "plain", script).await["id"].as_i64().unwrap();
    let turned_on = app.put(&format!("/tasks/{plain}"), &operator, json!({"network": true})).await;
    assert_eq!(turned_on.status, StatusCode::FORBIDDEN, "{:?}", turned_on.body);

    let granted = app.post("/tasks", &admin, json!({"name": "net", "script_id": script, "network": true})).await;
    assert_eq!(granted.status, StatusCode::CREATED, "{:?}", granted.body);
    let id = granted.body["id"].as_i64().unwrap();
    let tidied = app.put(&format!("/tasks/{id}"), &operator, json!({"description": "fetches prices"})).await;
    assert_eq!(tidied.status, StatusCode::OK, "editing other fields keeps the admin's grant");
    let swapped = app.put(&format!("/tasks/{id}"), &operator, json!({"args": ["--upload"]})).await;
    assert_eq!(swapped.status, StatusCode::FORBIDDEN, "changing what a networked task runs is a new grant");
    assert_eq!(app.post(&format!("/tasks/{id}/execute"), &operator, json!({})).await.status, StatusCode::ACCEPTED);

    let open =
        spawn_app_with(backend, |config| config.network_grant = automa_server::config::NetworkGrant::Operator).await;
    let admin = open.admin_token().await;
    let operator = open.user_token(&admin, "operator").await;
    let script = open.create_script(&admin, "s").await["id"].as_i64().unwrap();
    let adhoc = open.post("/execute", &operator, json!({"script_id": script, "network": true})).await;
    assert_eq!(adhoc.status, StatusCode::ACCEPTED, "{:?}", adhoc.body);
    let task = open.post("/tasks", &operator, json!({"name": "t", "script_id": script, "network": true})).await;
    assert_eq!(task.status, StatusCode::CREATED, "{:?}", task.body);
}

/// Migration 0004 on a database from before policies: tasks that already named a secret keep it, nothing else
/// gains it.
async fn tasks_that_named_a_secret_before_policies_keep_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    create_secret(&app, &admin, "UNUSED", Value::Null).await;
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    app.create_task(&admin, "plain", script).await;
    let old = app.post("/tasks", &admin, json!({"name": "old", "script_id": script, "secrets": ["VAULT"]})).await;
    let old = old.body["id"].as_i64().unwrap();
    let app = app
        .restart(|url| async move {
            // Back to the schema before 0004, with the tasks as they were.
            execute_sql(backend, &url, "DELETE FROM _sqlx_migrations WHERE version = 4").await;
            for column in ["all_tasks", "task_ids", "agent_ids", "agent_labels"] {
                execute_sql(backend, &url, &format!("ALTER TABLE secrets DROP COLUMN {column}")).await;
            }
        })
        .await;
    let policy = app.get("/secrets/VAULT", &admin).await.body["policy"].clone();
    assert_eq!(policy, json!({"all_tasks": false, "task_ids": [old], "agent_ids": [], "agent_labels": []}));
    assert_eq!(app.get("/secrets/UNUSED", &admin).await.body["policy"]["task_ids"], json!([]));
    assert_eq!(app.post(&format!("/tasks/{old}/execute"), &admin, json!({})).await.status, StatusCode::ACCEPTED);
}

/// Found by review: a policy entry vouches for what the task runs, whether the task names the secret at the
/// moment or not. Dropping the secret, changing the code (through the task or its script) and naming the
/// secret again must not get a stranger's code run with it.
async fn dropping_a_secret_does_not_free_a_task_to_change_what_it_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    create_secret(&app, &admin, "VAULT", Value::Null).await;
    let vetted = app.post("/scripts", &admin, json!({"name": "vetted", "content": "print('nightly')\n"})).await;
    let vetted = vetted.body["id"].as_i64().unwrap();
    let leak = app.post("/scripts", &operator, json!({"name": "leak", "content": EXFILTRATE})).await;
    let leak = leak.body["id"].as_i64().unwrap();
    let task = app.post("/tasks", &admin, json!({"name": "nightly", "script_id": vetted, "secrets": ["VAULT"]})).await;
    let task = task.body["id"].as_i64().unwrap();
    let path = format!("/tasks/{task}");

    // Through the task: drop the secret, swap the script, name the secret again.
    let dropped = app.put(&path, &operator, json!({"secrets": []})).await;
    assert_eq!(dropped.status, StatusCode::OK, "dropping a secret takes nothing away from its owner");
    let swapped = app.put(&path, &operator, json!({"script_id": leak, "script_version": null})).await;
    assert_eq!(swapped.status, StatusCode::FORBIDDEN, "the policy still lists the task: {:?}", swapped.body);
    assert!(swapped.detail().contains("secret 'VAULT' allows this task"), "{}", swapped.detail());

    // Through the script the task follows.
    let new_code = app.put(&format!("/scripts/{vetted}"), &operator, json!({"content": EXFILTRATE})).await;
    assert_eq!(new_code.status, StatusCode::FORBIDDEN, "the task may name VAULT again: {:?}", new_code.body);
    let renamed = app.put(&path, &operator, json!({"secrets": ["VAULT"]})).await;
    assert_eq!(renamed.status, StatusCode::OK, "naming it again without changing the code is fine");
    let runs = app.post(&format!("{path}/execute"), &operator, json!({})).await;
    assert_eq!(runs.status, StatusCode::ACCEPTED);
    assert_eq!(runs.body["script_id"], vetted, "the vetted code runs with the secret: {:?}", runs.body);
    assert_eq!(runs.body["script_version"], 1, "{:?}", runs.body);
}

/// Found by review: a networked task that follows its script's latest version gets network for whatever code
/// is saved next, so a new version needs the role that grants network.
async fn new_code_for_a_networked_task_needs_the_network_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let operator = app.user_token(&admin, "operator").await;
    let script = app.post("/scripts", &operator, json!({"name": "fetch", "content": "print('fetch')\n"})).await;
    let script = script.body["id"].as_i64().unwrap();
    let networked = app.post("/tasks", &admin, json!({"name": "fetch", "script_id": script, "network": true})).await;
    assert_eq!(networked.status, StatusCode::CREATED, "{:?}", networked.body);

    let new_code = app.put(&format!("/scripts/{script}"), &operator, json!({"content": "print('exfiltrate')\n"})).await;
    assert_eq!(new_code.status, StatusCode::FORBIDDEN, "{:?}", new_code.body);
    assert!(new_code.detail().contains("has network"), "{}", new_code.detail());
    let by_admin = app.put(&format!("/scripts/{script}"), &admin, json!({"content": "print('v2')\n"})).await;
    assert_eq!(by_admin.status, StatusCode::OK, "{:?}", by_admin.body);
}
