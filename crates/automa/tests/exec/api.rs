//! Execute, logs, SSE, cancel, secrets, args, env, retries and isolation through the API.

use serde_json::json;

use crate::support::{SECRET_VALUE, Server, text_of};

const PRINTS_EVERYTHING: &str = r#"
import os, sys
print("args", sys.argv[1:])
print("greeting", os.environ["GREETING"])
print("token", os.environ["API_TOKEN"], file=sys.stderr)
"#;

#[tokio::test]
async fn a_run_gets_args_env_and_secrets_and_its_output_masks_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let (status, secret) = server.post("/secrets", json!({"name": "API_TOKEN", "value": SECRET_VALUE})).await;
    assert_eq!(status, 201, "{secret}");
    assert!(secret.get("value").is_none());
    let listed = server.get("/secrets").await;
    assert_eq!(listed["items"][0]["name"], "API_TOKEN");
    assert!(!listed.to_string().contains("s3cr3t"));

    let extra = json!({"args": ["a", "b c"], "env": {"GREETING": "hello"}, "secrets": ["API_TOKEN"]});
    let run = server.execute(PRINTS_EVERYTHING, extra).await;
    assert_eq!((run["status"].as_str(), run["trigger"].as_str()), (Some("queued"), Some("api")));
    let id = run["id"].as_i64().unwrap();
    let (chunks, ended) = server.follow(id).await;
    assert_eq!((ended["status"].as_str(), ended["exit_code"].as_i64()), (Some("succeeded"), Some(0)), "{ended}");
    assert!(ended["duration_ms"].as_i64().is_some());
    assert_eq!(text_of(&chunks, "stdout"), "args ['a', 'b c']\ngreeting hello\n");
    assert_eq!(text_of(&chunks, "stderr"), "token ***\n");

    let logs = server.get(&format!("/runs/{id}/logs")).await;
    assert_eq!(logs["run_id"], id);
    assert!(!logs.to_string().contains("s3cr3t"), "stored output is masked");
    let last = logs["next_seq"].as_i64().unwrap();
    assert_eq!(logs["chunks"].as_array().unwrap().last().unwrap()["seq"], last);
    let text = server.get_text(&format!("/runs/{id}/logs?format=text")).await;
    assert!(text.contains("greeting hello\n") && text.contains("token ***\n"), "{text}");
    let after_first = server.get(&format!("/runs/{id}/logs?after=1")).await;
    assert!(after_first["chunks"].as_array().unwrap().iter().all(|c| c["seq"].as_i64().unwrap() > 1));
    let mut resumed = server.events(&format!("/runs/{id}/logs/stream?after={last}")).await;
    assert_eq!(resumed.next().await.unwrap().0, "end", "nothing after the last chunk but the end");
}

#[tokio::test]
async fn cancelling_a_running_run_kills_it_and_a_finished_run_cannot_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let run = server.execute("import time\nprint('started', flush=True)\ntime.sleep(600)\n", json!({})).await;
    let id = run["id"].as_i64().unwrap();
    let mut stream = server.events(&format!("/runs/{id}/logs/stream")).await;
    assert_eq!(stream.next().await.unwrap().0, "log", "the script started");
    let (status, cancelled) = server.post(&format!("/runs/{id}/cancel"), json!({})).await;
    assert_eq!((status, cancelled["cancel_requested"].as_bool()), (202, Some(true)));
    let (_, ended) = server.follow(id).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let (status, body) = server.post(&format!("/runs/{id}/cancel"), json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(body["detail"], format!("run {id} is cancelled and cannot be cancelled"));
    let (status, body) = server.post("/runs/999999/cancel", json!({})).await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("run not found")));
}

#[tokio::test]
async fn a_failing_task_is_retried_and_runs_are_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let (_, script) = server.post("/scripts", json!({"name": "fails", "content": "import sys\nsys.exit(3)\n"})).await;
    let task = json!({"name": "flaky", "script_id": script["id"], "retries": 1, "retry_backoff_seconds": 0});
    let (status, task) = server.post("/tasks", task).await;
    assert_eq!(status, 201, "{task}");
    let (status, run) = server.post(&format!("/tasks/{}/execute", task["id"]), json!({})).await;
    assert_eq!((status, run["trigger"].as_str()), (202, Some("manual")));
    let (_, ended) = server.follow(run["id"].as_i64().unwrap()).await;
    assert_eq!((ended["status"].as_str(), ended["exit_code"].as_i64()), (Some("failed"), Some(3)));
    let retries = server.get(&format!("/runs?task_id={}&trigger=retry", task["id"])).await;
    assert_eq!(retries["total"], 1);
    let retry = &retries["items"][0];
    assert_eq!(retry["attempt"], 2);
    let (_, ended) = server.follow(retry["id"].as_i64().unwrap()).await;
    assert_eq!(ended["status"], "failed");
    let all = server.get(&format!("/runs?task_id={}&status=failed", task["id"])).await;
    assert_eq!(all["total"], 2, "no third attempt");
    let (status, body) = server.post("/execute", json!({"content": "print(1)", "env": {"PATH": "/x"}})).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("env.PATH")));
}

#[tokio::test]
async fn a_run_cannot_read_the_servers_database_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let db = server.data_dir.join("automa.db").canonicalize().unwrap();
    let script = format!(
        r#"
import os
try:
    open({db:?}, "rb").read(16)
    print("db: readable")
except OSError as error:
    print("db: refused", type(error).__name__)
print("env:", sorted(os.environ))
try:
    print("init env:", open("/proc/1/environ", "rb").read())
except OSError as error:
    print("init env: refused")
"#,
        db = db.display().to_string()
    );
    let run = server.execute(&script, json!({})).await;
    let (chunks, ended) = server.follow(run["id"].as_i64().unwrap()).await;
    let out = text_of(&chunks, "stdout");
    assert_eq!(ended["status"], "succeeded", "{out}");
    assert!(out.contains("db: refused"), "{out}");
    assert!(!out.contains("AUTOMA_"), "the server's environment leaked: {out}");
    assert!(out.contains("env: ['HOME', 'LANG', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'PYTHONUNBUFFERED']"), "{out}");
    let ready = server.get("/ready").await;
    assert_eq!(ready["sandbox"]["profile"], "strict");
    assert_eq!(ready["sandbox"]["pid_ns"], true);
}

#[tokio::test]
async fn a_networked_run_cannot_reach_the_server_through_loopback_nor_the_hosts_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_BIND", "0.0.0.0:0")], true).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let lan: Vec<String> =
        String::from_utf8(std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().unwrap().stdout)
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next().map(str::to_owned)
            })
            .filter(|a| !a.starts_with("127."))
            .collect();
    assert!(!lan.is_empty(), "the host has an address besides loopback");
    for address in &lan {
        std::net::TcpStream::connect(format!("{address}:{port}")).expect("the server answers on the host's address");
    }
    let script = r#"
import socket, sys
for host in ["127.0.0.1", "10.0.2.2"] + sys.argv[2:]:
    print("REACHED", host)
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=5).close()
        print("LEAK", host)
    except OSError as error:
        print("refused", host, error)
"#;
    let args: Vec<String> = std::iter::once(port).chain(lan.iter().cloned()).collect();
    let run = server.execute(script, json!({"network": true, "args": args})).await;
    let (chunks, ended) = server.follow(run["id"].as_i64().unwrap()).await;
    let out = text_of(&chunks, "stdout");
    assert_eq!(ended["status"], "succeeded", "{out}");
    for host in ["127.0.0.1", "10.0.2.2"].iter().copied().chain(lan.iter().map(String::as_str)) {
        assert!(out.contains(&format!("REACHED {host}\n")), "{out}");
    }
    assert!(!out.contains("LEAK"), "a networked run reached the server: {out}");
    let ready = server.get("/ready").await;
    assert!(ready["sandbox"]["network_stack"].as_str().is_some_and(|s| s.starts_with("slirp4netns")), "{ready}");
    assert_eq!(ready["sandbox"]["network_egress_policy"], true, "{ready}");
}

/// A hook's JSON body reaches the script as a read-only file named by `AUTOMA_TRIGGER_PAYLOAD`, in the real
/// sandbox; the run that the hook starts then starts the task that runs after it.
#[tokio::test]
async fn a_hook_payload_reaches_the_script_and_its_success_starts_the_next_task() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let reader = "import json, os, stat\npath = os.environ['AUTOMA_TRIGGER_PAYLOAD']\n\
        print(oct(stat.S_IMODE(os.stat(path).st_mode)), json.load(open(path))['ref'])\n\
        print(open(path, encoding='utf-8').read())\n";
    let (_, script) = server.post("/scripts", json!({"name": "reader", "content": reader})).await;
    let (status, task) = server.post("/tasks", json!({"name": "deploy", "script_id": script["id"]})).await;
    assert_eq!(status, 201, "{task}");
    let (_, next_script) = server.post("/scripts", json!({"name": "next", "content": "print('next ran')\n"})).await;
    let (status, next) = server
        .post(
            "/tasks",
            json!({"name": "notify", "script_id": next_script["id"], "run_after": [{"task_id": task["id"]}]}),
        )
        .await;
    assert_eq!(status, 201, "{next}");
    let (status, hook) = server.post(&format!("/tasks/{}/hooks", task["id"]), json!({"name": "ci"})).await;
    assert_eq!(status, 201, "{hook}");

    let payload = r#"{"ref": "refs/tags/v1.2", "pusher": "ünïcode"}"#;
    let called = reqwest::Client::new()
        .post(format!("{}{}", server.base, hook["path"].as_str().unwrap()))
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(called.status(), 202);
    let run_id = called.json::<serde_json::Value>().await.unwrap()["run_id"].as_i64().unwrap();
    let (chunks, ended) = server.follow(run_id).await;
    assert_eq!(ended["status"], "succeeded", "{ended} {chunks:?}");
    assert_eq!((ended["trigger"].as_str(), ended["hook_id"].as_i64()), (Some("hook"), hook["id"].as_i64()));
    assert_eq!(text_of(&chunks, "stdout"), format!("0o444 refs/tags/v1.2\n{payload}\n"));

    let runs = server.get(&format!("/runs?task_id={}", next["id"])).await;
    let downstream = &runs["items"][0];
    assert_eq!((downstream["trigger"].as_str(), downstream["upstream_run_id"].as_i64()), (Some("after"), Some(run_id)));
    let (chunks, ended) = server.follow(downstream["id"].as_i64().unwrap()).await;
    assert_eq!((ended["status"].as_str(), text_of(&chunks, "stdout")), (Some("succeeded"), "next ran\n".to_owned()));
}
