//! Under the full sandbox, no attack in `attacks` works, whether the run starts cold or warm (handed to a
//! prepared sandbox): every test below runs once in each mode.

use automa_runner::{Layer, Profile};

use crate::attacks;
use crate::support::{self, Harness, Mode};

/// Each test, once in `cold` and once in `warm`, with `$h` the harness of its mode: the full sandbox, or the
/// one with the listed layers switched off.
macro_rules! in_both_modes {
    ($(async fn $name:ident($h:ident $(, without $layers:expr)?) $body:block)*) => {
        mod cold {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                let $h: &Harness = &support::harness(Profile::Strict, &[$($layers)?], Mode::Cold).await;
                $body
            })*
        }
        mod warm {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                let $h: &Harness = &support::harness(Profile::Strict, &[$($layers)?], Mode::Warm).await;
                $body
            })*
        }
    };
}

in_both_modes! {
    async fn cannot_read_outside_its_workdir_nor_the_database(h) {
        assert!(!attacks::read_outside(h).await);
    }

    async fn cannot_write_outside_its_workdir_nor_kernel_tunables(h) {
        assert!(!attacks::write_outside(h).await);
    }

    async fn cannot_connect_to_loopback(h) {
        assert!(!attacks::connect_loopback(h, false).await);
    }

    async fn cannot_see_or_signal_host_processes(h) {
        assert!(!attacks::see_host_process(h).await);
    }

    async fn cannot_read_the_servers_environment(h) {
        assert!(!attacks::read_server_env(h).await);
    }

    async fn fork_bomb_is_stopped(h) {
        assert!(!attacks::fork_bomb(h).await);
    }

    async fn memory_hog_is_stopped_and_the_host_survives(h) {
        let (leaked, out) = attacks::exhaust_memory(h).await;
        assert!(!leaked, "{out:#?}");
        assert!(out.report.oom_killed || out.stderr.contains("MemoryError"), "{out:#?}");
        assert_ne!(out.report.exit_code, Some(0));
    }

    // Without the address-space rlimit Python cannot fail with MemoryError: the cgroup must kill it.
    async fn out_of_memory_kill_is_reported(h, without Layer::Rlimits) {
        let (leaked, out) = attacks::exhaust_memory(h).await;
        assert!(!leaked, "{out:#?}");
        assert!(out.report.oom_killed, "{out:#?}");
        assert_eq!(out.report.signal, Some(9), "{out:#?}");
        assert!(out.system.contains("out of memory"), "{out:#?}");
    }

    async fn cannot_fill_the_disk(h) {
        assert!(!attacks::fill_disk(h).await);
    }

    async fn cpu_limit_stops_the_script(h) {
        let (leaked, out) = attacks::exceed_cpu(h).await;
        assert!(!leaked, "{out:#?}");
        assert_eq!(out.report.signal, Some(libc::SIGXCPU), "{out:#?}");
    }

    async fn wall_clock_limit_kills_the_run(h) {
        let out = attacks::overstay(h).await;
        assert!(out.report.timed_out, "{out:#?}");
        assert_eq!(out.report.signal, Some(9));
        assert!(!out.stdout.contains("LEAK"));
        assert!(out.system.contains("timeout"), "{out:#?}");
    }

    async fn output_flood_is_truncated_and_killed(h) {
        let out = attacks::flood_output(h).await;
        let r = &out.report;
        assert!(r.truncated && r.output_limit_exceeded, "{r:#?}");
        assert!(out.stdout.len() <= 1024 * 1024, "kept {} bytes", out.stdout.len());
        assert!(r.output_bytes < 512 * 1024 * 1024, "the run went on for {} bytes", r.output_bytes);
        assert_eq!(r.signal, Some(9));
        assert!(out.system.contains("truncated"), "{}", out.system);
    }

    async fn no_process_survives_the_run(h) {
        assert!(!attacks::leave_process(h).await);
    }

    async fn ptrace_mount_unshare_and_chroot_fail(h) {
        assert!(!attacks::escape_syscalls(h).await);
    }

    async fn holds_no_capability_and_no_way_to_gain_one(h) {
        assert!(!attacks::hold_privilege(h).await);
    }

    async fn cannot_read_a_concurrent_runs_directory(h) {
        assert!(!attacks::read_other_run(h).await);
    }

    async fn an_attack_script_that_breaks_before_attacking_fails_its_test(h) {
        let out = support::script(h, "raise SystemExit('broken before the attack')").await;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| attacks::verdict(&out, &["connect"])));
        assert!(checked.is_err(), "a script that never attacked passed as stopped: {out:#?}");
    }
}
