//! Evidence that the hostile tests can fail: with the layers that stop an attack switched off, the attack
//! works. Ignored by default (these runs are deliberately unsafe); `.ci/run` runs them with
//! `cargo nextest run -p automa-runner --test sandbox --run-ignored ignored-only layers_off`.

use automa_runner::Layer::{self, *};
use automa_runner::Profile;

use crate::attacks;
use crate::support::{Harness, with};

fn off(layers: &[Layer]) -> Harness {
    with(Profile::Strict, layers)
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn read_outside_works_without_mount_ns_landlock_and_slot_user() {
    assert!(attacks::read_outside(&off(&[MountNs, Landlock, SlotUser])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn write_outside_works_without_mount_ns_landlock_and_slot_user() {
    assert!(attacks::write_outside(&off(&[MountNs, Landlock, SlotUser])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn loopback_works_without_net_ns_and_landlock() {
    assert!(attacks::connect_loopback(&off(&[NetNs, Landlock]), false).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn host_processes_are_visible_without_pid_ns() {
    assert!(attacks::see_host_process(&off(&[PidNs])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn server_env_is_readable_without_pid_ns_slot_user_capability_drop_and_landlock() {
    assert!(attacks::read_server_env(&off(&[PidNs, SlotUser, Capabilities, Landlock])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn fork_bomb_works_without_cgroups_and_rlimits() {
    assert!(attacks::fork_bomb(&off(&[Cgroups, Rlimits])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn memory_hog_works_without_cgroups_and_rlimits() {
    assert!(attacks::exhaust_memory(&off(&[Cgroups, Rlimits])).await.0);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn disk_fill_works_without_mount_ns() {
    // The slot user could not reach root's pyenv Python without the mount namespace.
    assert!(attacks::fill_disk(&off(&[MountNs, SlotUser])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn cpu_burn_works_without_rlimits() {
    assert!(attacks::exceed_cpu(&off(&[Rlimits])).await.0);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn daemon_survives_without_pid_ns_and_cgroups() {
    assert!(attacks::leave_process(&off(&[PidNs, Cgroups])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn escape_syscalls_work_without_seccomp() {
    assert!(attacks::escape_syscalls(&off(&[Seccomp])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn capabilities_remain_without_capability_drop() {
    assert!(attacks::hold_privilege(&off(&[Capabilities])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn privileges_can_be_gained_without_no_new_privs() {
    assert!(attacks::hold_privilege(&off(&[NoNewPrivs])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn other_runs_are_readable_without_mount_ns_slot_user_and_landlock() {
    assert!(attacks::read_other_run(&off(&[MountNs, SlotUser, Landlock])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn host_loopback_metadata_and_host_addresses_are_reachable_without_the_egress_policy() {
    let reach = crate::network::policy_off_reaches_everything().await;
    assert!(reach.public, "{reach:#?}");
    for leak in ["host loopback", "metadata"] {
        assert!(reach.leaks.iter().any(|l| l == leak), "{leak} was not reached: {reach:#?}");
    }
    // IPv6 stays out of reach even then: slirp4netns runs without --enable-ipv6.
    for address in crate::network::host_addresses() {
        let leak = format!("host address {address}");
        assert!(reach.leaks.contains(&leak), "{leak} was not reached: {reach:#?}");
    }
}
