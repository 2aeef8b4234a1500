//! The seccomp deny-list: system calls a Python script never needs and that widen the kernel's attack surface
//! or let it undo the sandbox (namespaces, mounts, tracing, keys, modules, BPF ...).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_vhangup,
    libc::SYS_personality,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Socket options that make a socket send through a named interface. A route lookup that fails for such a
/// socket, the egress policy's `prohibit` routes included, is taken to mean "on-link" and the packet leaves on
/// that interface anyway, so a networked run could address what the policy refuses directly on slirp's tap.
/// (`IP_PKTINFO` with an interface index, a control message, cannot be filtered here; libslirp answers ARP only
/// for its own gateway and DNS addresses, which is what stops that path.)
const INTERFACE_PINNING_OPTIONS: &[(libc::c_int, libc::c_int)] = &[
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE),
    (libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX),
    (libc::IPPROTO_IP, libc::IP_UNICAST_IF),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_IF),
];

/// The two filters: the deny-list (EPERM) and `clone3` (ENOSYS). `clone3` passes its flags in memory that
/// seccomp cannot read, so it is refused as unknown and glibc falls back to `clone`, whose flags the first
/// filter checks (trap 10).
pub(super) fn filters() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e}"))?;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::try_from(flag).unwrap_or(0);
            let condition = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("seccomp: {e}"))?;
    denied.insert(libc::SYS_clone, clone_rules);
    let setsockopt_rules = INTERFACE_PINNING_OPTIONS
        .iter()
        .map(|&(level, option)| {
            let level = u64::try_from(level).unwrap_or(0);
            let option = u64::try_from(option).unwrap_or(0);
            SeccompRule::new(vec![
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, level)?,
                SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, option)?,
            ])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("seccomp: {e}"))?;
    denied.insert(libc::SYS_setsockopt, setsockopt_rules);
    let eperm = errno(libc::EPERM);
    let deny = SeccompFilter::new(denied, SeccompAction::Allow, eperm, arch).map_err(|e| format!("seccomp: {e}"))?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        errno(libc::ENOSYS),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    let mut programs = [deny, no_clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|e| format!("seccomp: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    programs.push(no_x32());
    Ok(programs)
}

/// x32 system calls share the x86_64 audit arch with their numbers offset by `__X32_SYSCALL_BIT`, so they
/// would walk past a deny-list of x86_64 numbers: refuse every one of them.
fn no_x32() -> BpfProgram {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const LOAD_WORD_ABSOLUTE: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_IF_AT_LEAST: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    vec![
        // seccomp_data.nr is at offset 0.
        sock_filter { code: LOAD_WORD_ABSOLUTE, jt: 0, jf: 0, k: 0 },
        sock_filter { code: JUMP_IF_AT_LEAST, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        sock_filter { code: RETURN, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | enosys },
        sock_filter { code: RETURN, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW },
    ]
}

fn errno(code: libc::c_int) -> SeccompAction {
    SeccompAction::Errno(u32::try_from(code).unwrap_or(1))
}

/// Installs the filters. Unlike `seccompiler::apply_filter` this leaves no_new_privs alone, which is a
/// layer of its own: the caller sets it first, or holds CAP_SYS_ADMIN when that layer is switched off.
pub(super) fn apply(filters: &[BpfProgram]) -> Result<(), String> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const sock_filter,
    }
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    for filter in filters {
        let len = u16::try_from(filter.len()).map_err(|_| "seccomp: filter too long".to_owned())?;
        let program = SockFprog { len, filter: filter.as_ptr() };
        // SAFETY: the kernel copies the program, which lives for the duration of the call.
        let rc = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) };
        if rc != 0 {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
