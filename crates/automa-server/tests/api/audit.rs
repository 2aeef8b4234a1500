//! The audit log records every change, login and failed login; its keyed hash chain exposes tampering, even
//! by someone who can write the database and recompute plain hashes, and a checkpoint kept elsewhere exposes
//! deleted newest entries. Non-admins read it redacted.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, on_both_backends, spawn_app};

on_both_backends!(
    changes_and_logins_are_recorded,
    tampering_is_detected,
    concurrent_writers_keep_one_chain,
    rewriting_history_with_recomputed_sha256_hashes_is_detected,
    a_checkpoint_detects_deleted_newest_entries,
    history_from_before_keying_still_verifies,
    non_admins_read_the_log_redacted,
    non_admins_get_no_hashes_and_no_addresses_but_their_own,
);

/// What `GET /audit/verify` answers for an intact chain of `checked` entries, all keyed.
fn intact(checked: i64) -> impl Fn(&Value) {
    move |body: &Value| {
        assert_eq!(
            (body["ok"].as_bool(), body["checked"].as_i64(), &body["first_bad_id"], body["keyed_from_id"].as_i64()),
            (Some(true), Some(checked), &Value::Null, Some(1)),
            "{body}"
        );
        assert_eq!(body["head"]["id"], checked, "{body}");
    }
}

async fn changes_and_logins_are_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    assert_eq!(app.login("admin@example.com", "wrong-password").await.status, StatusCode::UNAUTHORIZED);
    let script = app.create_script(&admin, "s").await["id"].as_i64().unwrap();
    app.put(&format!("/scripts/{script}"), &admin, json!({"content": "print(2)\n"})).await;
    let task =
        app.post("/tasks", &admin, json!({"name": "t", "script_id": script, "env": {"API_KEY": "hunter2"}})).await;
    let rejected = app.post("/scripts", &admin, json!({"name": "s", "content": ""})).await;
    assert_eq!(rejected.status, StatusCode::CONFLICT);

    let log = app.get("/audit?limit=100", &admin).await;
    let actions: Vec<&str> =
        log.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["task.create", "script.update", "script.create", "auth.login_failed", "auth.login", "user.create"]
    );
    let failed = &log.body["items"][3];
    assert_eq!(
        (failed["actor_type"].as_str(), failed["details"]["email"].as_str()),
        (Some("anonymous"), Some("admin@example.com"))
    );
    assert_eq!(failed["ip"], "127.0.0.1");
    let task_entry = &log.body["items"][0];
    assert_eq!(task_entry["resource_id"], task.body["id"].as_i64().unwrap().to_string());
    assert!(!task_entry.to_string().contains("hunter2"), "environment values stay out of the audit log");
    assert_eq!(task_entry["details"]["warm"], false, "the task's choice of warm starts is audited");

    let filtered = app.get(&format!("/audit?resource_type=script&resource_id={script}"), &admin).await;
    assert_eq!(filtered.body["total"], 2);
    let by_user = app.get("/logs?user_id=1&action=script.create", &admin).await;
    assert_eq!(by_user.body["total"], 1, "the /logs alias filters the same way");
    let future = app.get("/audit?since=2999-01-01T00:00:00Z", &admin).await;
    assert_eq!(future.body["total"], 0);

    let verify = app.get("/audit/verify", &admin).await;
    intact(6)(&verify.body);
    assert_eq!(log.body["items"][0]["scheme"], "hmac-sha256");
}

async fn tampering_is_detected(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for name in ["a", "b", "c"] {
        app.create_script(&admin, name).await;
    }
    assert_eq!(app.get("/audit/verify", &admin).await.body["ok"], true);
    app.execute_sql("UPDATE audit_log SET details = '{\"name\": \"innocent\"}' WHERE id = 3").await;
    let verify = app.get("/audit/verify", &admin).await;
    assert_eq!(
        (verify.body["ok"].as_bool(), verify.body["checked"].as_i64(), verify.body["first_bad_id"].as_i64()),
        (Some(false), Some(3), Some(3))
    );
    assert_eq!(verify.body["problem"], "its hmac-sha256 hash does not match its content");

    app.execute_sql("DELETE FROM audit_log WHERE id = 3").await;
    let after_delete = app.get("/audit/verify", &admin).await;
    assert_eq!(
        (after_delete.body["ok"].as_bool(), after_delete.body["first_bad_id"].as_i64()),
        (Some(false), Some(4)),
        "a removed entry breaks the next link"
    );
}

async fn concurrent_writers_keep_one_chain(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let admin = app.admin_token().await;
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            let admin = admin.clone();
            tokio::spawn(async move { app.post("/agents", &admin, json!({"name": format!("agent-{i}")})).await.status })
        })
        .collect();
    for writer in writers {
        assert_eq!(writer.await.unwrap(), StatusCode::CREATED);
    }
    let verify = app.request(Method::GET, "/audit/verify", Some(&admin), None).await;
    intact(18)(&verify.body);
}

/// Rewrites the chain from entry `from` on as someone with write access to the database but without the
/// server's key would: recompute each hash as plain `SHA-256(prev_hash || canonical JSON)`, the scheme every
/// entry used before the chain was keyed, and relink. With `scheme`, also relabels the rewritten entries.
async fn rehash_with_plain_sha256(app: &TestApp, admin: &str, from: i64, scheme: Option<&str>) {
    let log = app.get("/audit?limit=500", admin).await;
    let mut entries = log.body["items"].as_array().unwrap().clone();
    entries.reverse();
    let mut prev_hash =
        if from == 1 { "0".repeat(64) } else { entries[(from - 2) as usize]["hash"].as_str().unwrap().to_owned() };
    for entry in &entries[(from - 1) as usize..] {
        let ts = chrono::DateTime::parse_from_rfc3339(entry["ts"].as_str().unwrap()).unwrap().to_utc();
        let hashed = json!({
            "id": entry["id"],
            "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "actor_type": entry["actor_type"],
            "actor_id": entry["actor_id"],
            "action": entry["action"],
            "resource_type": entry["resource_type"],
            "resource_id": entry["resource_id"],
            "ip": entry["ip"],
            "details": entry["details"],
        });
        let canonical = automa_core::audit::canonical_json(&hashed);
        let hash = hex::encode(Sha256::new().chain_update(&prev_hash).chain_update(canonical).finalize());
        let relabel = scheme.map(|scheme| format!(", scheme = '{scheme}'")).unwrap_or_default();
        app.execute_sql(&format!(
            "UPDATE audit_log SET prev_hash = '{prev_hash}', hash = '{hash}'{relabel} WHERE id = {}",
            entry["id"]
        ))
        .await;
        prev_hash = hash;
    }
}

async fn rewriting_history_with_recomputed_sha256_hashes_is_detected(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for name in ["a", "b", "c"] {
        app.create_script(&admin, name).await;
    }
    app.execute_sql("UPDATE audit_log SET details = '{\"name\": \"innocent\"}' WHERE id = 3").await;
    rehash_with_plain_sha256(&app, &admin, 3, None).await;
    let verify = app.get("/audit/verify", &admin).await;
    assert_eq!(
        (verify.body["ok"].as_bool(), verify.body["first_bad_id"].as_i64(), verify.body["problem"].as_str()),
        (Some(false), Some(3), Some("its hmac-sha256 hash does not match its content")),
        "plain hashes do not pass for keyed ones: {}",
        verify.body
    );

    rehash_with_plain_sha256(&app, &admin, 3, Some("sha256")).await;
    let verify = app.get("/audit/verify", &admin).await;
    assert_eq!(
        (verify.body["ok"].as_bool(), verify.body["first_bad_id"].as_i64(), verify.body["problem"].as_str()),
        (Some(false), Some(3), Some("an unkeyed (sha256) entry follows keyed entries")),
        "relabelling rewritten entries as pre-keying history is a downgrade: {}",
        verify.body
    );
}

async fn a_checkpoint_detects_deleted_newest_entries(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    for name in ["a", "b", "c"] {
        app.create_script(&admin, name).await;
    }
    let head = app.get("/audit/verify", &admin).await.body["head"].clone();
    let checkpoint =
        format!("/audit/verify?checkpoint_id={}&checkpoint_hash={}", head["id"], head["hash"].as_str().unwrap());
    assert_eq!(app.get(&checkpoint, &admin).await.body["ok"], true);
    app.create_script(&admin, "d").await;
    assert_eq!(app.get(&checkpoint, &admin).await.body["ok"], true, "a chain that grew still holds the checkpoint");

    app.execute_sql(&format!("DELETE FROM audit_log WHERE id >= {}", head["id"])).await;
    let without = app.get("/audit/verify", &admin).await;
    assert_eq!(without.body["ok"], true, "the shorter chain is intact on its own: {}", without.body);
    let with = app.get(&checkpoint, &admin).await;
    assert_eq!((with.body["ok"].as_bool(), with.body["first_bad_id"].as_i64()), (Some(false), head["id"].as_i64()));
    assert!(with.body["problem"].as_str().unwrap().contains("entries were deleted"), "{}", with.body);

    // Rewriting the whole chain as unkeyed history passes on its own, but not against a checkpoint.
    let head = app.get("/audit/verify", &admin).await.body["head"].clone();
    rehash_with_plain_sha256(&app, &admin, 1, Some("sha256")).await;
    let downgraded = app.get("/audit/verify", &admin).await;
    assert_eq!((downgraded.body["ok"].as_bool(), &downgraded.body["keyed_from_id"]), (Some(true), &Value::Null));
    let checkpoint =
        format!("/audit/verify?checkpoint_id={}&checkpoint_hash={}", head["id"], head["hash"].as_str().unwrap());
    let with = app.get(&checkpoint, &admin).await;
    assert_eq!(with.body["problem"], format!("entry {} no longer has the checkpoint's hash", head["id"]));

    let half = app.get("/audit/verify?checkpoint_id=3", &admin).await;
    assert_eq!(
        (half.status, half.detail()),
        (StatusCode::UNPROCESSABLE_ENTITY, "checkpoint_hash: is needed with checkpoint_id")
    );
    let bad = app.get("/audit/verify?checkpoint_id=3&checkpoint_hash=xyz", &admin).await;
    assert_eq!(
        (bad.status, bad.detail()),
        (StatusCode::UNPROCESSABLE_ENTITY, "checkpoint_hash: must be 64 hexadecimal digits")
    );
}

async fn history_from_before_keying_still_verifies(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    app.create_script(&admin, "a").await;
    // A database from before keying: every entry has a plain SHA-256 hash and says so.
    rehash_with_plain_sha256(&app, &admin, 1, Some("sha256")).await;
    let legacy = app.get("/audit/verify", &admin).await;
    assert_eq!((legacy.body["ok"].as_bool(), legacy.body["checked"].as_i64()), (Some(true), Some(3)));
    assert_eq!(legacy.body["keyed_from_id"], Value::Null);
    app.create_script(&admin, "b").await;
    let upgraded = app.get("/audit/verify", &admin).await;
    assert_eq!(
        (upgraded.body["ok"].as_bool(), upgraded.body["checked"].as_i64(), upgraded.body["keyed_from_id"].as_i64()),
        (Some(true), Some(4), Some(4)),
        "old entries verify as written and new ones are keyed: {}",
        upgraded.body
    );
    app.execute_sql("UPDATE audit_log SET details = '{\"name\": \"innocent\"}' WHERE id = 3").await;
    assert_eq!(app.get("/audit/verify", &admin).await.body["first_bad_id"], 3, "old entries are still checked");
}

async fn non_admins_read_the_log_redacted(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    let operator = app.user_token(&admin, "operator").await;
    assert_eq!(app.login("admin@example.com", "my-password-in-the-wrong-field").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("hunter2", "x").await.status, StatusCode::UNAUTHORIZED);
    let viewer_email = app.get("/audit?action=user.create", &admin).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["email"].as_str().unwrap().to_owned())
        .find(|email| email.starts_with("viewer-"))
        .unwrap();

    for reader in [&viewer, &operator] {
        for path in ["/audit?limit=500", "/logs?limit=500"] {
            let log = app.get(path, reader).await;
            assert_eq!(log.status, StatusCode::OK);
            let text = log.body.to_string();
            assert!(!text.contains("hunter2") && !text.contains("admin@example.com"), "{path}: {text}");
            let failed: Vec<&Value> =
                log.body["items"].as_array().unwrap().iter().filter(|e| e["action"] == "auth.login_failed").collect();
            assert_eq!(failed.len(), 2, "failed logins are listed, redacted");
            for entry in failed {
                assert_eq!(
                    (&entry["details"], &entry["ip"], &entry["redacted"]),
                    (&json!({}), &Value::Null, &json!(true))
                );
            }
        }
    }
    let seen_by_viewer = app.get("/audit?action=user.create", &viewer).await;
    let emails: Vec<&str> = seen_by_viewer.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.iter().filter(|email| **email == "***").count(), 2, "{emails:?}");
    assert!(emails.contains(&viewer_email.as_str()), "a reader sees its own e-mail: {emails:?}");

    let whole = app.get("/audit?limit=500", &admin).await.body.to_string();
    assert!(whole.contains("hunter2") && whole.contains("admin@example.com"), "admins read everything");
    assert!(!whole.contains("\"redacted\":true"));
}

/// A hash lets a reader test guesses at what redaction hid (plainly so for entries hashed with SHA-256 before
/// the chain was keyed), and a login's address says where someone is: neither is for non-admins.
async fn non_admins_get_no_hashes_and_no_addresses_but_their_own(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "viewer").await;
    let viewer_id = app.get("/users/me", &viewer).await.body["id"].as_i64().unwrap().to_string();
    let logins_as = |log: &Value| -> Vec<(String, Value, Value)> {
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "auth.login")
            .map(|e| (e["actor_id"].as_str().unwrap().to_owned(), e["ip"].clone(), e["redacted"].clone()))
            .collect()
    };

    let seen_by_viewer = app.get("/audit?limit=500", &viewer).await.body;
    for entry in seen_by_viewer["items"].as_array().unwrap() {
        assert_eq!((&entry["hash"], &entry["prev_hash"]), (&Value::Null, &Value::Null), "{entry}");
    }
    let logins = logins_as(&seen_by_viewer);
    assert_eq!(logins.len(), 2, "{logins:?}");
    for (actor_id, ip, redacted) in logins {
        if actor_id == viewer_id {
            assert_eq!((ip, redacted), (json!("127.0.0.1"), json!(false)), "a reader sees its own address");
        } else {
            assert_eq!((ip, redacted), (Value::Null, json!(true)), "another user's address is hidden");
        }
    }

    let seen_by_admin = app.get("/audit?limit=500", &admin).await.body;
    for entry in seen_by_admin["items"].as_array().unwrap() {
        assert_eq!(entry["hash"].as_str().map(str::len), Some(64), "{entry}");
        assert_eq!(entry["prev_hash"].as_str().map(str::len), Some(64), "{entry}");
    }
    assert!(logins_as(&seen_by_admin).iter().all(|(_, ip, _)| ip == "127.0.0.1"), "admins see every address");
}
