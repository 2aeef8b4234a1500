//! 200 runs queued at once, each printing 1,000 numbered lines interleaved on stdout and stderr: every line
//! is stored exactly once and in order within its stream.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::support::Server;

const LINES_PER_STREAM: usize = 500;
const RUNS: usize = 200;

#[tokio::test]
async fn every_line_of_200_concurrent_runs_is_stored_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let script = format!(
        "import sys\nfor i in range({LINES_PER_STREAM}):\n    print(f'out {{i}}')\n    print(f'err {{i}}', file=sys.stderr)\n"
    );
    let mut events = server.events("/events").await;
    let mut ids = HashSet::new();
    for _ in 0..RUNS {
        ids.insert(server.execute(&script, json!({})).await["id"].as_i64().unwrap());
    }
    let mut ended = HashSet::new();
    while ended.len() < RUNS {
        let (name, data) = events.next().await.expect("the event stream stays open");
        if name != "run" {
            continue;
        }
        let run: Value = serde_json::from_str(&data).unwrap();
        let id = run["id"].as_i64().unwrap();
        if ids.contains(&id) && !matches!(run["status"].as_str(), Some("queued" | "running")) {
            assert_eq!(run["status"], "succeeded", "{run}");
            ended.insert(id);
        }
    }
    for id in ids {
        check_lines(&server, id).await;
    }
}

async fn check_lines(server: &Server, id: i64) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut after = 0;
    loop {
        let page = server.get(&format!("/runs/{id}/logs?after={after}&limit=5000")).await;
        let chunks = page["chunks"].as_array().unwrap();
        if chunks.is_empty() {
            break;
        }
        for chunk in chunks {
            let data = chunk["data"].as_str().unwrap();
            match chunk["stream"].as_str().unwrap() {
                "stdout" => out.extend(data.lines().map(str::to_owned)),
                "stderr" => err.extend(data.lines().map(str::to_owned)),
                other => panic!("run {id} has a {other} chunk: {data}"),
            }
        }
        after = page["next_seq"].as_i64().unwrap();
    }
    let expected = |prefix: &str| (0..LINES_PER_STREAM).map(|i| format!("{prefix} {i}")).collect::<Vec<_>>();
    assert_eq!(out, expected("out"), "stdout of run {id}");
    assert_eq!(err, expected("err"), "stderr of run {id}");
}
