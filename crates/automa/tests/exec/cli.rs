//! `automa run --follow`: live output on the right streams and the script's exit code.

use std::process::Stdio;

use crate::support::{BIN, PATIENCE, Server};

#[tokio::test]
async fn run_follow_streams_output_and_exits_with_the_scripts_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], true).await;
    let script = dir.path().join("job.py");
    std::fs::write(&script, "import sys\nprint('out', sys.argv[1:])\nprint('err', file=sys.stderr)\nsys.exit(7)\n")
        .unwrap();
    let follow = tokio::process::Command::new(BIN)
        .args(["run", script.to_str().unwrap(), "--follow", "--", "x"])
        .env("AUTOMA_URL", &server.base)
        .env("AUTOMA_TOKEN", &server.token)
        // Not used on loopback, where it would carry the token in clear (it leads nowhere: using it would fail).
        .env("HTTP_PROXY", "http://192.0.2.1:9")
        .env("http_proxy", "http://192.0.2.1:9")
        .stdin(Stdio::null())
        // A follower that never sees the run end is killed when the bounded wait below gives up.
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, follow).await.expect("`automa run --follow` ends").unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out ['x']\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    assert_eq!(output.status.code(), Some(7));

    let output = tokio::process::Command::new(BIN)
        .args(["run", "no-such-task", "--follow"])
        .env("AUTOMA_URL", &server.base)
        .env("AUTOMA_TOKEN", &server.token)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no task named 'no-such-task'"));
}
