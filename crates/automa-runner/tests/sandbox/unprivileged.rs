//! The sandbox with its helper running as `nobody`: a user namespace instead of root, no slot uids, and
//! cgroups reported as missing rather than failing runs.

use crate::attacks;
use crate::support::{self, script};

#[tokio::test]
async fn runs_scripts_and_reports_missing_cgroups_as_warnings() {
    let h = support::unprivileged(&[]);
    let caps = h.sandbox.capabilities();
    assert!(!caps.running_as_root && caps.user_ns && caps.pid_ns && caps.seccomp, "{caps:#?}");
    assert!(caps.cgroup_memory.is_none(), "{caps:#?}");
    assert!(caps.warnings.iter().any(|w| w.contains("cgroup")), "{caps:#?}");
    let out = script(&h, "import os\nprint(os.getuid(), os.getcwd())").await;
    assert_eq!(out.ok(), "65534 /work\n");
}

#[tokio::test]
async fn unprivileged_cannot_read_outside() {
    assert!(!attacks::read_outside(&support::unprivileged(&[])).await);
}

#[tokio::test]
async fn unprivileged_cannot_connect_to_loopback() {
    assert!(!attacks::connect_loopback(&support::unprivileged(&[]), false).await);
}

#[tokio::test]
async fn unprivileged_cannot_see_host_processes() {
    assert!(!attacks::see_host_process(&support::unprivileged(&[])).await);
}

#[tokio::test]
async fn unprivileged_holds_no_capability() {
    assert!(!attacks::hold_privilege(&support::unprivileged(&[])).await);
}

#[tokio::test]
async fn unprivileged_escape_syscalls_fail() {
    assert!(!attacks::escape_syscalls(&support::unprivileged(&[])).await);
}

#[tokio::test]
async fn unprivileged_leaves_no_process() {
    assert!(!attacks::leave_process(&support::unprivileged(&[])).await);
}

#[tokio::test]
async fn unprivileged_fork_bomb_is_stopped_without_cgroups() {
    assert!(!attacks::fork_bomb(&support::unprivileged(&[])).await);
}

#[tokio::test]
#[ignore = "deliberately weakened sandbox"]
async fn unprivileged_capabilities_remain_without_capability_drop() {
    // Inside its user namespace the unprivileged workload would keep every capability of that namespace.
    assert!(attacks::hold_privilege(&support::unprivileged(&[automa_runner::Layer::Capabilities])).await);
}
