//! Under the full sandbox, no attack in `attacks` works.

use crate::attacks::{self, full};

#[tokio::test]
async fn cannot_read_outside_its_workdir_nor_the_database() {
    assert!(!attacks::read_outside(&full()).await);
}

#[tokio::test]
async fn cannot_write_outside_its_workdir_nor_kernel_tunables() {
    assert!(!attacks::write_outside(&full()).await);
}

#[tokio::test]
async fn cannot_connect_to_loopback() {
    assert!(!attacks::connect_loopback(&full(), false).await);
}

#[tokio::test]
async fn cannot_see_or_signal_host_processes() {
    assert!(!attacks::see_host_process(&full()).await);
}

#[tokio::test]
async fn cannot_read_the_servers_environment() {
    assert!(!attacks::read_server_env(&full()).await);
}

#[tokio::test]
async fn fork_bomb_is_stopped() {
    assert!(!attacks::fork_bomb(&full()).await);
}

#[tokio::test]
async fn memory_hog_is_stopped_and_the_host_survives() {
    let (leaked, out) = attacks::exhaust_memory(&full()).await;
    assert!(!leaked, "{out:#?}");
    assert!(out.report.oom_killed || out.stderr.contains("MemoryError"), "{out:#?}");
    assert_ne!(out.report.exit_code, Some(0));
}

#[tokio::test]
async fn out_of_memory_kill_is_reported() {
    // Without the address-space rlimit Python cannot fail with MemoryError: the cgroup must kill it.
    let h = crate::support::with(automa_runner::Profile::Strict, &[automa_runner::Layer::Rlimits]);
    let (leaked, out) = attacks::exhaust_memory(&h).await;
    assert!(!leaked, "{out:#?}");
    assert!(out.report.oom_killed, "{out:#?}");
    assert_eq!(out.report.signal, Some(9), "{out:#?}");
    assert!(out.system.contains("out of memory"), "{out:#?}");
}

#[tokio::test]
async fn cannot_fill_the_disk() {
    assert!(!attacks::fill_disk(&full()).await);
}

#[tokio::test]
async fn cpu_limit_stops_the_script() {
    let (leaked, out) = attacks::exceed_cpu(&full()).await;
    assert!(!leaked, "{out:#?}");
    assert_eq!(out.report.signal, Some(libc::SIGXCPU), "{out:#?}");
}

#[tokio::test]
async fn wall_clock_limit_kills_the_run() {
    let out = attacks::overstay(&full()).await;
    assert!(out.report.timed_out, "{out:#?}");
    assert_eq!(out.report.signal, Some(9));
    assert!(!out.stdout.contains("LEAK"));
    assert!(out.system.contains("timeout"), "{out:#?}");
}

#[tokio::test]
async fn output_flood_is_truncated_and_killed() {
    let out = attacks::flood_output(&full()).await;
    let r = &out.report;
    assert!(r.truncated && r.output_limit_exceeded, "{r:#?}");
    assert!(out.stdout.len() <= 1024 * 1024, "kept {} bytes", out.stdout.len());
    assert!(r.output_bytes < 512 * 1024 * 1024, "the run went on for {} bytes", r.output_bytes);
    assert_eq!(r.signal, Some(9));
    assert!(out.system.contains("truncated"), "{}", out.system);
}

#[tokio::test]
async fn no_process_survives_the_run() {
    assert!(!attacks::leave_process(&full()).await);
}

#[tokio::test]
async fn ptrace_mount_unshare_and_chroot_fail() {
    assert!(!attacks::escape_syscalls(&full()).await);
}

#[tokio::test]
async fn holds_no_capability_and_no_way_to_gain_one() {
    assert!(!attacks::hold_privilege(&full()).await);
}

#[tokio::test]
async fn cannot_read_a_concurrent_runs_directory() {
    assert!(!attacks::read_other_run(&full()).await);
}

#[tokio::test]
async fn an_attack_script_that_breaks_before_attacking_fails_its_test() {
    let out = crate::support::script(&full(), "raise SystemExit('broken before the attack')").await;
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| attacks::verdict(&out, &["connect"])));
    assert!(checked.is_err(), "a script that never attacked passed as stopped: {out:#?}");
}
