//! A networked run's network: slirp4netns on the host's side of the run's own network namespace, and the
//! egress policy inside that namespace.
//!
//! The supervisor forks the launcher while it is still in the host's namespaces (slirp must open its
//! sockets there). The launcher waits until the supervisor has unshared, then becomes slirp4netns pointed at
//! the supervisor. slirp says through its ready fd when the namespace's interface is up; it exits when the
//! supervisor closes its exit fd or dies (the launcher's parent-death signal survives the exec), so it never
//! outlives the run. The supervisor then installs the egress policy as `prohibit` routes, while it still has
//! CAP_NET_ADMIN over the namespace, and only after that starts the init.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use crate::Cidr;
use crate::protocol::UserNet;

/// How long slirp4netns may take to bring the run's interface up; it takes a few milliseconds.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long slirp4netns may take to exit once the run is over, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Bytes of slirp4netns's own messages kept for an error report.
const LOG_BYTES: u64 = 4096;

/// Destinations always refused, whatever the configuration: link-local (the cloud metadata services at
/// 169.254.169.254 and fe80::/10), and multicast and reserved ranges, which slirp would send from the host.
const ALWAYS_DENIED: &[&str] = &["169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "fe80::/10", "ff00::/8"];

/// A forked launcher waiting for the run's network namespace to exist.
/// Dropped without `start`, its go pipe closes first, so the waiting launcher leaves before it is reaped.
pub(super) struct Launcher {
    go: OwnedFd,
    ready: OwnedFd,
    log: File,
    denied: Option<Vec<Cidr>>,
    slirp: Slirp,
}

/// The slirp4netns process of a run (first the launcher that becomes it). Dropping it ends it: the exit fd
/// closes, and a slirp that does not leave within the grace period is killed. Either way it is reaped.
pub(super) struct Slirp {
    pid: Pid,
    exit: Option<OwnedFd>,
}

impl Launcher {
    /// Forks the launcher; call before unsharing the network namespace. The destinations to refuse are
    /// gathered here too, since only here are the host's own addresses visible.
    pub(super) fn fork(net: &UserNet) -> Result<Launcher, String> {
        let denied = if net.policy { Some(denied_destinations(&net.deny)?) } else { None };
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (go_r, go_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let log = memfd("slirp4netns-log")?;
        let supervisor = nix::unistd::getpid();
        // SAFETY: the helper is single-threaded, so the child may allocate and run ordinary code.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop((go_w, ready_r, exit_w));
                let code = match become_slirp(net, supervisor, go_r, ready_w, exit_r, &log) {
                    Ok(never) => match never {},
                    Err(message) => {
                        let _ = writeln!(&log, "{message}");
                        1
                    }
                };
                std::process::exit(code)
            }
            ForkResult::Parent { child } => {
                Ok(Launcher { slirp: Slirp { pid: child, exit: Some(exit_w) }, go: go_w, ready: ready_r, log, denied })
            }
        }
    }

    /// Lets slirp4netns attach to the supervisor's new network namespace, waits until the interface is up
    /// and installs the egress policy. Call after unsharing.
    pub(super) fn start(self) -> Result<Slirp, String> {
        let Launcher { go, ready, mut log, denied, slirp } = self;
        File::from(go).write_all(b"1").map_err(|e| format!("start slirp4netns: {e}"))?;
        let timeout = PollTimeout::try_from(READY_TIMEOUT).unwrap_or(PollTimeout::MAX);
        let polled = loop {
            let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        let mut answer = [0u8; 1];
        let up = matches!(polled, Ok(n) if n > 0) && matches!(File::from(ready).read(&mut answer), Ok(1));
        if !up || answer != *b"1" {
            drop(slirp);
            let reason =
                if matches!(polled, Ok(0)) { format!("not up within {READY_TIMEOUT:?}") } else { "failed".into() };
            return Err(format!("the run's network could not be set up: slirp4netns {reason}: {}", read_log(&mut log)));
        }
        if let Some(denied) = denied {
            deny_routes(&denied)?;
        }
        Ok(slirp)
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        drop(self.exit.take());
        if let Ok(pidfd) = super::pidfd_open(self.pid) {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let grace = PollTimeout::try_from(EXIT_GRACE).unwrap_or(PollTimeout::MAX);
            if matches!(nix::poll::poll(&mut fds, grace), Ok(n) if n > 0) {
                let _ = waitpid(self.pid, None);
                return;
            }
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// In the forked launcher, born in the slot's cgroups (slirp's memory and CPU are the run's): ties its life to
/// the supervisor's, waits for the go and execs slirp4netns with an empty environment.
fn become_slirp(
    net: &UserNet,
    supervisor: Pid,
    go: OwnedFd,
    ready: OwnedFd,
    exit: OwnedFd,
    log: &File,
) -> Result<std::convert::Infallible, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    if nix::unistd::getppid() != supervisor {
        return Err("the supervisor is gone".into());
    }
    let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("dup2: {e}"))?;
    nix::unistd::dup2_stdout(log).map_err(|e| format!("dup2: {e}"))?;
    nix::unistd::dup2_stderr(log).map_err(|e| format!("dup2: {e}"))?;
    let mut signal = [0u8; 1];
    if !matches!(File::from(go).read(&mut signal), Ok(1)) {
        return Err("the supervisor gave up before the network namespace was ready".into());
    }
    let mut args = vec![
        net.slirp4netns.display().to_string(),
        "--configure".into(),
        "--mtu=65520".into(),
        "--enable-seccomp".into(),
        format!("--ready-fd={}", ready.as_raw_fd()),
        format!("--exit-fd={}", exit.as_raw_fd()),
    ];
    if nix::unistd::geteuid().is_root() {
        // Root's slirp keeps no capability but binding low ports and sees only /etc and /run. Without root
        // slirp has no privilege to shed, and this mode would need uid 0 mapped in the run's user namespace.
        args.push("--enable-sandbox".into());
    }
    if net.policy {
        // Otherwise the gateway 10.0.2.2 is the host's 127.0.0.1.
        args.push("--disable-host-loopback".into());
    }
    args.extend([supervisor.to_string(), "tap0".into()]);
    let args = args
        .into_iter()
        .map(|a| std::ffi::CString::new(a).map_err(|_| "a NUL byte in the slirp4netns path".to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    close_all_but(&[ready.as_raw_fd(), exit.as_raw_fd()])?;
    let err = nix::unistd::execve::<_, std::ffi::CString>(&args[0], &args, &[]).unwrap_err();
    Err(format!("exec {}: {err}", net.slirp4netns.display()))
}

/// Marks every fd above stderr close-on-exec except `keep`, which must reach slirp4netns.
fn close_all_but(keep: &[i32]) -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes integers only and affects this process's fd table.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) } != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    for &fd in keep {
        // SAFETY: fcntl on an fd this process owns, with an integer argument.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn memfd(name: &str) -> Result<File, String> {
    let name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn read_log(log: &mut File) -> String {
    let mut text = String::new();
    let _ = log.rewind();
    let _ = log.take(LOG_BYTES).read_to_string(&mut text);
    let text = text.trim().replace('\n', "; ");
    if text.is_empty() { "it said nothing".into() } else { text }
}

/// Everything the run may not reach: the fixed ranges, each of the host's own addresses (slirp would
/// otherwise connect to the server through the host's LAN address) and the configured ranges.
fn denied_destinations(configured: &[Cidr]) -> Result<Vec<Cidr>, String> {
    let mut denied =
        ALWAYS_DENIED.iter().map(|c| c.parse::<Cidr>().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    denied.extend(host_addresses()?.into_iter().filter(|a| !a.is_loopback()).map(Cidr::host));
    denied.extend(configured.iter().copied());
    // A range listed twice would fail as an existing route.
    let mut unique = Vec::with_capacity(denied.len());
    for cidr in denied {
        if !unique.contains(&cidr) {
            unique.push(cidr);
        }
    }
    Ok(unique)
}

/// The addresses of every interface of the host's network namespace.
fn host_addresses() -> Result<Vec<IpAddr>, String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list this function frees below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!("getifaddrs: {}", std::io::Error::last_os_error()));
    }
    let mut found = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it really is.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// Adds a `prohibit` route for each range over rtnetlink: a connect to it fails with EACCES inside the
/// namespace, before slirp ever sees a packet. The sandbox root has no `ip` binary, and needs none.
fn deny_routes(denied: &[Cidr]) -> Result<(), String> {
    // SAFETY: socket takes integers only and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let mut socket = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    for (seq, cidr) in (1u32..).zip(denied) {
        let failed = |e: std::io::Error| format!("egress policy: route prohibit {cidr}: {e}");
        socket.write_all(&route_message(cidr, seq)).map_err(failed)?;
        let mut answer = [0u8; 1024];
        let n = socket.read(&mut answer).map_err(failed)?;
        match ack_error(&answer[..n]) {
            Some(0) => {}
            // A host without IPv6 needs no IPv6 route: nothing can leave that way.
            Some(e) if e == -libc::EAFNOSUPPORT && cidr.address().is_ipv6() => {}
            Some(e) => return Err(failed(std::io::Error::from_raw_os_error(-e))),
            None => return Err(failed(std::io::Error::other("no acknowledgement"))),
        }
    }
    Ok(())
}

/// An RTM_NEWROUTE request: nlmsghdr, rtmsg and one RTA_DST attribute, in the kernel's byte order.
fn route_message(cidr: &Cidr, seq: u32) -> Vec<u8> {
    let (family, address) = match cidr.address() {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
    };
    // 4 + 4 or 4 + 16 bytes: already aligned to NLA_ALIGNTO.
    let attribute_len = 4 + address.len();
    let len = 16 + 12 + attribute_len;
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    let mut message = Vec::with_capacity(len);
    message.extend((len as u32).to_ne_bytes());
    message.extend(libc::RTM_NEWROUTE.to_ne_bytes());
    message.extend((flags as u16).to_ne_bytes());
    message.extend(seq.to_ne_bytes());
    message.extend(0u32.to_ne_bytes());
    message.extend([
        family as u8,
        cidr.prefix(),
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_STATIC,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_PROHIBIT,
    ]);
    message.extend(0u32.to_ne_bytes());
    message.extend((attribute_len as u16).to_ne_bytes());
    message.extend(libc::RTA_DST.to_ne_bytes());
    message.extend(address);
    message
}

/// The error of an NLMSG_ERROR answer (0 is the acknowledgement), or `None` for anything else.
fn ack_error(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if i32::from(kind) != libc::NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?))
}
