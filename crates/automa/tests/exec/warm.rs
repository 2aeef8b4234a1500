//! Warm starts through the API: a task's or an ad-hoc run's `warm`, the embedded agent's prepared sandboxes,
//! and what the run record says.

use serde_json::{Value, json};

use crate::support::{SECRET_VALUE, Server, text_of};

impl Server {
    /// The run as stored once it ended.
    async fn finished(&self, run: &Value) -> Value {
        self.follow(run["id"].as_i64().unwrap()).await;
        self.get(&format!("/runs/{}", run["id"])).await
    }
}

const PRINTS_ITS_INPUTS: &str = r#"
import os, sys
print("args", sys.argv)
print("token", os.environ["API_TOKEN"], "pid", os.getpid(), "files", sorted(os.listdir(".")))
"#;

#[tokio::test]
async fn runs_that_ask_start_warm_once_a_slot_is_prepared_with_all_their_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_AGENT_CONCURRENCY", "2")], true).await;
    let (status, _) = server.post("/secrets", json!({"name": "API_TOKEN", "value": SECRET_VALUE})).await;
    assert_eq!(status, 201);
    let extra = json!({"warm": true, "args": ["a", "b c"], "secrets": ["API_TOKEN"]});
    let mut starts = Vec::new();
    // A slot prepares a sandbox after a warm run; with two slots the third run finds one prepared wherever it
    // goes.
    for _ in 0..3 {
        let run = server.execute(PRINTS_ITS_INPUTS, extra.clone()).await;
        assert_eq!(run["warm"], true, "{run}");
        let (chunks, ended) = server.follow(run["id"].as_i64().unwrap()).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        let out = text_of(&chunks, "stdout");
        assert!(out.starts_with("args ['main.py', 'a', 'b c']\ntoken *** pid 2 files ['main.py']\n"), "{out}");
        let stored = server.get(&format!("/runs/{}", run["id"])).await;
        assert_eq!(stored["warm"], true);
        starts.push(stored["warm_start"].as_bool().expect("warm_start"));
    }
    assert_eq!((starts[0], starts[2]), (false, true), "the first run prepares, the third is served: {starts:?}");

    let cold = server.execute("print('cold')", json!({})).await;
    let ended = server.finished(&cold).await;
    assert_eq!(
        (&ended["status"], &ended["warm"], &ended["warm_start"]),
        (&json!("succeeded"), &json!(false), &json!(false))
    );

    let networked = server.execute("print('online')", json!({"warm": true, "network": true})).await;
    let ended = server.finished(&networked).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!((&ended["warm"], &ended["warm_start"]), (&json!(true), &json!(false)), "a networked run starts cold");
}

#[tokio::test]
async fn a_warm_task_keeps_its_choice_and_its_runs_copy_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AUTOMA_AGENT_CONCURRENCY", "2")], true).await;
    let (_, script) = server.post("/scripts", json!({"name": "hello", "content": "print('hello')\n"})).await;
    let (status, task) = server.post("/tasks", json!({"name": "warm", "script_id": script["id"], "warm": true})).await;
    assert_eq!((status, &task["warm"]), (201, &json!(true)), "{task}");
    let path = format!("/tasks/{}", task["id"]);
    assert_eq!(server.get(&path).await["warm"], true);
    let mut served = Vec::new();
    for _ in 0..3 {
        let (status, run) = server.post(&format!("{path}/execute"), json!({})).await;
        assert_eq!((status, &run["warm"]), (202, &json!(true)), "{run}");
        let (chunks, _) = server.follow(run["id"].as_i64().unwrap()).await;
        assert_eq!(text_of(&chunks, "stdout"), "hello\n");
        let ended = server.get(&format!("/runs/{}", run["id"])).await;
        served.push(ended["warm_start"].as_bool().expect("warm_start"));
    }
    assert!(served[2], "{served:?}");
    let (status, task) = server.put(&path, json!({"warm": false})).await;
    assert_eq!((status, &task["warm"]), (200, &json!(false)), "{task}");
    let (_, run) = server.post(&format!("{path}/execute"), json!({})).await;
    let ended = server.finished(&run).await;
    assert_eq!((&ended["warm"], &ended["warm_start"]), (&json!(false), &json!(false)));
}
