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

/// Durations so long that date arithmetic overflows them once made `automa serve` panic at its first claim,
/// fire or sign-in, or at start. Each is refused at start with the variable's name and range, and so is a
/// token lifetime that has already ended.
#[tokio::test]
async fn serve_refuses_durations_out_of_range_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "99999999999999999";
    for (name, value) in [
        ("AUTOMA_LEASE_SECONDS", huge),
        ("AUTOMA_AGENT_OFFLINE_SECONDS", huge),
        ("AUTOMA_SCHEDULER_LATE_SECONDS", huge),
        ("AUTOMA_NOTIFICATION_TIMEOUT_SECONDS", huge),
        ("AUTOMA_NOTIFICATION_BACKOFF_SECONDS", huge),
        ("AUTOMA_RETENTION_RUN_DAYS", "4000000000"),
        ("AUTOMA_TOKEN_TTL_SECONDS", huge),
        ("AUTOMA_TOKEN_TTL_SECONDS", "-5"),
    ] {
        let mut serve = crate::support::command(dir.path(), &[(name, value), ("AUTOMA_SANDBOX", "none")]);
        serve.arg("serve").stderr(Stdio::piped());
        let output = tokio::time::timeout(PATIENCE, tokio::task::spawn_blocking(move || serve.output()))
            .await
            .unwrap_or_else(|_| panic!("{name}={value}: automa serve did not exit"))
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}={value}: {stderr}");
        assert!(stderr.contains(&format!("{name} must be between")), "{name}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}={value}: {stderr}");
    }
}
