//! The binary as an operator meets it: `serve` with no configuration, the key policy, unknown
//! variables, private data files, `migrate`, `user add --admin`, `audit verify` and `audit checkpoint`.

use std::{
    io::{BufRead, BufReader},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

const AUTOMA: &str = env!("CARGO_BIN_EXE_automa");

/// The binary with a clean environment: no `AUTOMA_*` variable of the test runner leaks in.
fn automa(dir: &Path) -> Command {
    let mut command = Command::new(AUTOMA);
    command.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// How long a server may take to start or to stop before the test fails rather than hangs.
const PATIENCE: Duration = Duration::from_secs(60);

/// The first line of the child's standard output that `wanted` accepts, read on a thread so that the wait is
/// bounded: `None` when the output ended (the child exited) or nothing came within [`PATIENCE`].
fn first_line(child: &mut Child, wanted: impl Fn(&str) -> bool + Send + 'static) -> Option<String> {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (found, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if wanted(&line) {
                let _ = found.send(line);
                break;
            }
        }
    });
    receive.recv_timeout(PATIENCE).ok()
}

/// Waits for the child to exit, killing it and failing the test after [`PATIENCE`].
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `serve` and returns it with the URL it printed.
fn serve(mut command: Command) -> (Child, String) {
    let mut child = command.arg("serve").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(line) = first_line(&mut child, |line| line.starts_with("Automa is running: open ")) {
        let rest = line.strip_prefix("Automa is running: open ").unwrap();
        let url = rest.split_whitespace().next().unwrap().trim_end_matches('/').to_owned();
        return (child, url);
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!("serve exited early or never said it was ready: {}", String::from_utf8_lossy(&output.stderr));
}

fn terminate(mut child: Child) -> (std::process::ExitStatus, String) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_bounded(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    std::io::Write::write_all(&mut stream, format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[test]
fn serve_starts_with_embedded_defaults_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = automa(dir.path());
    command.env("AUTOMA_BIND", "127.0.0.1:0").env("AUTOMA_DATBASE_URL", "typo");
    let (child, url) = serve(command);
    let (status, body) = get(&format!("{url}/ready"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":\"sqlite\""), "{body}");
    assert!(dir.path().join("automa-data/automa.db").exists(), "SQLite under ./automa-data");
    let (exit, stderr) = terminate(child);
    assert!(exit.success(), "a graceful stop exits 0: {stderr}");
    assert!(stderr.contains("AUTOMA_DATBASE_URL"), "misspelt variables are warned about: {stderr}");
}

#[test]
fn production_refuses_to_start_without_a_strong_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing =
        automa(dir.path()).args(["serve", "--bind", "127.0.0.1:0"]).env("AUTOMA_ENV", "production").output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("AUTOMA_SECRET_KEY"));
    let short = automa(dir.path())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("AUTOMA_ENV", "production")
        .env("AUTOMA_SECRET_KEY", "too-short")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 32 bytes"));
    assert!(!dir.path().join("automa-data/secret.key").exists());
}

/// Runs `serve` expecting it to refuse to start, and returns what it said. A server that starts after all is
/// killed (after a bounded wait), so a regression fails instead of hanging.
fn refused_serve(mut command: Command) -> String {
    let mut child =
        command.args(["serve", "--bind", "127.0.0.1:0"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("serve started although it should have refused");
}

#[test]
fn development_refuses_an_empty_or_short_key_too() {
    let dir = tempfile::tempdir().unwrap();
    let with_key = |key: &str| {
        let mut command = automa(dir.path());
        command.env("AUTOMA_SECRET_KEY", key);
        command
    };
    assert!(refused_serve(with_key("")).contains("AUTOMA_SECRET_KEY is set but empty"));
    assert!(refused_serve(with_key("too-short")).contains("at least 32 bytes"));
    assert!(!dir.path().join("automa-data/secret.key").exists(), "an empty key is not taken for an absent one");

    std::fs::create_dir_all(dir.path().join("automa-data")).unwrap();
    std::fs::write(dir.path().join("automa-data/secret.key"), "").unwrap();
    let stderr = refused_serve(automa(dir.path()));
    assert!(stderr.contains("secret.key holds 0 bytes"), "{stderr}");
}

#[test]
fn configuration_file_environment_and_flags_layer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("automa.toml"), "data_dir = \"from-file\"\nbind = \"127.0.0.1:1\"\n").unwrap();
    let mut command = automa(dir.path());
    command.env("AUTOMA_BIND", "127.0.0.1:2").args(["--config", "automa.toml"]);
    command.args(["serve", "--bind", "127.0.0.1:0"]);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let line = first_line(&mut child, |_| true).expect("serve prints its address");
    let port = line.split("http://127.0.0.1:").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or_default();
    assert!(!["", "1", "2"].contains(&port), "the flag's port 0 won over file and environment: {line}");
    assert!(dir.path().join("from-file/automa.db").exists(), "the file's data_dir applies");
    child.stderr.take();
    terminate_quietly(child);
}

fn terminate_quietly(mut child: Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    wait_bounded(&mut child);
}

#[test]
fn operations_commands_work_on_the_database_directly() {
    let dir = tempfile::tempdir().unwrap();
    let migrated = automa(dir.path()).arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));

    let added = automa(dir.path())
        .args(["user", "add", "Root@Example.com", "--admin"])
        .env("AUTOMA_PASSWORD", "a-long-password")
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(String::from_utf8_lossy(&added.stdout).contains("root@example.com (admin)"));
    let duplicate = automa(dir.path())
        .args(["user", "add", "root@example.com"])
        .env("AUTOMA_PASSWORD", "a-long-password")
        .output()
        .unwrap();
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    let verified = automa(dir.path()).args(["audit", "verify"]).output().unwrap();
    assert!(verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stdout).contains("\"ok\": true"));

    tamper(&dir.path().join("automa-data/automa.db"));
    let broken = automa(dir.path()).args(["audit", "verify"]).output().unwrap();
    assert_eq!(broken.status.code(), Some(1));
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(report.contains("\"ok\": false") && report.contains("\"first_bad_id\": 1"), "{report}");
}

fn tamper(database: &Path) {
    execute_sql(database, "UPDATE audit_log SET action = 'user.nothing' WHERE id = 1");
}

fn execute_sql(database: &Path, sql: &'static str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", database.display())).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    });
}

/// The log without its ANSI colour codes.
fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = rest[start..].find('m').map_or("", |end| &rest[start + end + 1..]);
    }
    plain.push_str(rest);
    plain
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn data_files_are_private_from_the_first_start_and_wider_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = automa(dir.path());
    command.env("AUTOMA_BIND", "127.0.0.1:0");
    // The most permissive umask: the modes must come from the server, not from the environment.
    // SAFETY: umask is async-signal-safe and touches only the child's own process state.
    unsafe {
        command.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            Ok(())
        })
    };
    let (child, url) = serve(command);
    assert_eq!(get(&format!("{url}/ready")).0, 200);
    let data = dir.path().join("automa-data");
    let files = ["automa.db", "automa.db-wal", "automa.db-shm", "secret.key"];
    let modes: Vec<(&str, u32)> = files.iter().map(|file| (*file, mode(&data.join(file)))).collect();
    assert_eq!((mode(&data), modes), (0o700, files.iter().map(|file| (*file, 0o600)).collect()));
    let (exit, stderr) = terminate(child);
    assert!(exit.success() && !stderr.contains("chmod"), "nothing to warn about: {stderr}");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("automa.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = automa(dir.path());
    command.env("AUTOMA_BIND", "127.0.0.1:0");
    let (child, _) = serve(command);
    let (_, stderr) = terminate(child);
    let stderr = without_colours(&stderr);
    for (path, wanted) in [("path=automa-data mode", "chmod 0700"), ("path=automa-data/automa.db mode", "chmod 0600")] {
        let warned = stderr.lines().any(|line| line.contains(path) && line.contains(wanted));
        assert!(warned, "{path} is reported: {stderr}");
    }
}

#[test]
fn a_checkpoint_taken_earlier_exposes_deleted_newest_entries() {
    let dir = tempfile::tempdir().unwrap();
    for email in ["a@example.com", "b@example.com"] {
        let added =
            automa(dir.path()).args(["user", "add", email]).env("AUTOMA_PASSWORD", "a-long-password").output().unwrap();
        assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    }
    let taken = automa(dir.path()).args(["audit", "checkpoint"]).output().unwrap();
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    let checkpoint = String::from_utf8(taken.stdout).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(checkpoint.trim()).unwrap();
    assert_eq!((parsed["id"].as_i64(), checkpoint.trim().lines().count()), (Some(2), 1), "one JSON line: {checkpoint}");
    let file = dir.path().join("checkpoint.json");
    std::fs::write(&file, &checkpoint).unwrap();
    let verify_against =
        |checkpoint: &str| automa(dir.path()).args(["audit", "verify", "--checkpoint", checkpoint]).output().unwrap();
    assert!(verify_against(file.to_str().unwrap()).status.success());

    execute_sql(&dir.path().join("automa-data/automa.db"), "DELETE FROM audit_log WHERE id = 2");
    let alone = automa(dir.path()).args(["audit", "verify"]).output().unwrap();
    assert!(alone.status.success(), "the shorter chain is intact on its own");
    for given in [file.to_str().unwrap(), checkpoint.trim()] {
        let caught = verify_against(given);
        assert_eq!(caught.status.code(), Some(1));
        let report = String::from_utf8_lossy(&caught.stdout);
        assert!(report.contains("entries were deleted") && report.contains("\"first_bad_id\": 2"), "{report}");
    }
    let garbage = verify_against("{\"id\": 1}");
    assert!(
        String::from_utf8_lossy(&garbage.stderr).contains("the checkpoint is not"),
        "a malformed checkpoint is refused"
    );
}

#[test]
fn the_agent_refuses_plain_http_to_another_host_and_takes_its_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |server: &str| {
        let mut command = automa(dir.path());
        command.args(["agent", "--server", server, "--data-dir", "agent"]);
        command
    };
    let refused = agent("http://192.0.2.10:8080").env("AUTOMA_TOKEN", "atma_x").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("refusing plain http:// to http://192.0.2.10:8080") && stderr.contains("--allow-insecure-http"),
        "{stderr}"
    );

    let tokenless = agent("https://automa.example.com").output().unwrap();
    assert!(String::from_utf8_lossy(&tokenless.stderr).contains("set AUTOMA_TOKEN or pass --token-file"));
    let on_the_command_line = agent("https://automa.example.com").args(["--token", "atma_x"]).output().unwrap();
    assert!(!on_the_command_line.status.success(), "a token on the command line (visible in ps) is not accepted");
}

#[test]
fn the_agent_refuses_a_configuration_file_whose_settings_it_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let agent = || {
        let mut command = automa(dir.path());
        command.args(["agent", "--server", "http://192.0.2.10:8080"]).env("AUTOMA_TOKEN", "atma_x");
        command
    };
    std::fs::write(dir.path().join("agent.toml"), "network_deny = [\"10.0.0.0/8\"]\n").unwrap();
    for given in [agent().args(["--config", "agent.toml"]).output().unwrap(), {
        agent().env("AUTOMA_CONFIG", "agent.toml").output().unwrap()
    }] {
        let stderr = String::from_utf8_lossy(&given.stderr);
        assert!(!given.status.success());
        assert!(
            stderr.contains("automa agent reads no configuration file") && stderr.contains("--network-deny"),
            "{stderr}"
        );
    }

    std::fs::write(
        dir.path().join("automa.toml"),
        "listen = \"127.0.0.1:9\"\nnetwork_deny = [\"10.0.0.0/8\"]\nuv = \"/x\"\n",
    )
    .unwrap();
    let default_file = agent().output().unwrap();
    let stderr = String::from_utf8_lossy(&default_file.stderr);
    assert!(!default_file.status.success());
    assert!(
        stderr.contains("network_deny (use --network-deny or AUTOMA_NETWORK_DENY)")
            && stderr.contains("uv (use --uv or AUTOMA_UV)")
            && !stderr.contains("listen"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("automa.toml"), "listen = \"127.0.0.1:9\"\nsecret_key = \"x\"\n").unwrap();
    let server_keys_only = agent().output().unwrap();
    let stderr = String::from_utf8_lossy(&server_keys_only.stderr);
    assert!(stderr.contains("refusing plain http://"), "the agent went on to check its flags: {stderr}");
}

#[test]
fn run_refuses_plain_http_to_another_host_and_takes_its_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str| {
        let mut command = automa(dir.path());
        command.args(["run", "hello.py", "--url", url]);
        command
    };
    let refused = run("http://192.0.2.10:8080").env("AUTOMA_TOKEN", "atm_x").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("refusing plain http:// to http://192.0.2.10:8080"), "{stderr}");

    let tokenless = run("https://automa.example.com").output().unwrap();
    let stderr = String::from_utf8_lossy(&tokenless.stderr);
    assert!(stderr.contains("automa run needs its token: set AUTOMA_TOKEN or pass --token-file"), "{stderr}");
    let on_the_command_line = run("https://automa.example.com").args(["--token", "atm_x"]).output().unwrap();
    assert!(!on_the_command_line.status.success(), "a token on the command line (visible in ps) is not accepted");
}

/// Every user's e-mail in a database, in id order, and whether each has its `user.create` audit entry.
fn users_in(database: &Path) -> Vec<(String, bool)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(database).read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query_as(
            "SELECT email, EXISTS (SELECT 1 FROM audit_log WHERE action = 'user.create' \
             AND resource_id = CAST(users.id AS TEXT)) FROM users ORDER BY id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    })
}

fn add_user(dir: &Path, email: &str) -> std::process::Output {
    automa(dir).args(["user", "add", email]).env("AUTOMA_PASSWORD", "a-long-password").output().unwrap()
}

#[test]
fn a_backup_taken_while_the_server_writes_restores_to_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    assert!(add_user(dir.path(), "first@example.com").status.success());
    let mut command = automa(dir.path());
    command.env("AUTOMA_BIND", "127.0.0.1:0");
    let (server, url) = serve(command);
    let (status, ready) = get(&format!("{url}/ready"));
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(status, 200);
    assert!(ready["database_size_bytes"].as_i64().unwrap() > 0, "{ready}");

    // Writers add users, each with its audit entry, while the backup is taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), dir.path().to_owned());
        std::thread::spawn(move || {
            let mut added = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || added < 3 {
                let output = add_user(&dir, &format!("w{added}@example.com"));
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
                added += 1;
            }
        })
    };
    let backup = dir.path().join("backup.db");
    let taken = automa(dir.path()).args(["backup", "backup.db"]).output().unwrap();
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    assert_eq!(mode(&backup), 0o600);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let again = automa(dir.path()).args(["backup", "backup.db"]).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(add_user(dir.path(), "after@example.com").status.success());

    let database = dir.path().join("automa-data/automa.db");
    let refused = automa(dir.path()).args(["restore", "backup.db"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    terminate_quietly(server);

    let backed_up = users_in(&backup);
    assert!(backed_up.iter().all(|(_, audited)| *audited), "every user has its audit entry: {backed_up:?}");
    assert!(users_in(&database).len() > backed_up.len());
    let restored = automa(dir.path()).args(["restore", "backup.db"]).output().unwrap();
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert_eq!(users_in(&database), backed_up, "the restored database holds what the backup held");
    assert_eq!(mode(&database), 0o600);
    let verified = automa(dir.path()).args(["audit", "verify"]).output().unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));

    std::fs::write(dir.path().join("junk.db"), b"not a database").unwrap();
    let junk = automa(dir.path()).args(["restore", "junk.db"]).output().unwrap();
    assert!(!junk.status.success(), "a file that is not a database is refused");
    assert_eq!(users_in(&database), backed_up, "and the database is untouched");
}

#[test]
fn postgresql_backups_point_to_pg_dump_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["backup", "restore"] {
        let output = automa(dir.path())
            .args([command, "dump.pgc", "--database-url", "postgres://automa:hunter2@127.0.0.1:1/automa"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        let tool = if command == "backup" { "pg_dump --format=custom" } else { "pg_restore" };
        assert!(stderr.contains(tool) && stderr.contains("automa:***@") && !stderr.contains("hunter2"), "{stderr}");
        assert!(stderr.contains("-c 'VACUUM (ANALYZE)'"), "a restore is followed by statistics: {stderr}");
    }
}
