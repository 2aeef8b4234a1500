//! Networked runs: a network namespace of their own behind slirp4netns, and the egress policy.
//!
//! The "public" host is a network namespace the test builds itself: a veth pair with addresses from the
//! documentation range 198.51.100.0/24, routed from the host, and a listener that also answers on
//! 169.254.169.254. No packet leaves the machine, and since every refused destination really has a listener
//! (the test connects to each from the host first), a refusal proves the policy, not an absent service.

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use automa_runner::{Layer, Profile, RunnerError};
use tokio::sync::{mpsc, watch};

use crate::attacks::assert_reached;
use crate::support::{self, Harness, run, spec};

pub const PUBLIC: &str = "198.51.100.2";
const HOST_SIDE: &str = "198.51.100.1";
pub const METADATA: &str = "169.254.169.254";

/// The public host and the host's own listener, torn down (namespace, veth pair, route) when dropped.
pub struct Network {
    namespace: String,
    veth: String,
    metadata_route: String,
    /// Answers on the public address and on 169.254.169.254, inside the public namespace.
    pub public_port: u16,
    /// Listens on every address of the host, its loopback included, IPv6 too where the host has it.
    pub host_listener: TcpListener,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl Network {
    pub fn start() -> Network {
        // 169.254.169.254 is routed host-wide for the test's duration: one test at a time, across processes.
        let lock =
            File::create(std::env::temp_dir().join("automa-test-network.lock")).expect("create the test's lock file");
        // SAFETY: flock on an fd this process owns, with integer arguments.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
        let id = std::process::id() % 1_000_000;
        let namespace = format!("automa-public-{id}");
        let veth = format!("apub{id}");
        let peer = format!("apubp{id}");
        let previous_metadata_route = ip(&["route", "show", "exact", &format!("{METADATA}/32")]);
        let mut network = Network {
            namespace: namespace.clone(),
            veth: veth.clone(),
            metadata_route: previous_metadata_route.trim().to_owned(),
            public_port: 0,
            host_listener: TcpListener::bind("[::]:0")
                .or_else(|_| TcpListener::bind("0.0.0.0:0"))
                .expect("bind the host listener"),
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
            _lock: lock,
        };
        ip(&["netns", "add", &namespace]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &namespace]);
        ip(&["addr", "add", &format!("{HOST_SIDE}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["-n", &namespace, "addr", "add", &format!("{PUBLIC}/30"), "dev", &peer]);
        ip(&["-n", &namespace, "link", "set", &peer, "up"]);
        ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        ip(&["-n", &namespace, "addr", "add", &format!("{METADATA}/32"), "dev", "lo"]);
        ip(&["route", "replace", &format!("{METADATA}/32"), "via", PUBLIC, "dev", &veth]);

        let netns = File::open(format!("/run/netns/{namespace}")).expect("open the public namespace");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let stop = network.stop.clone();
        network.server = Some(std::thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the public namespace");
            let listener = TcpListener::bind("0.0.0.0:0").expect("bind the public listener");
            port_tx.send(listener.local_addr().expect("addr").port()).expect("send the port");
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut stream) = stream {
                    let _ = stream.write_all(b"public-hello\n");
                }
            }
        }));
        network.public_port = port_rx.recv().expect("the public listener starts");
        network
    }

    pub fn host_port(&self) -> u16 {
        self.host_listener.local_addr().expect("addr").port()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the listener's accept so its thread ends and the namespace loses its last user.
        let _ = TcpStream::connect_timeout(&format!("{PUBLIC}:{}", self.public_port).parse().expect("addr"), SECOND);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let _ = Command::new("ip").args(["route", "del", &format!("{METADATA}/32"), "dev", &self.veth]).output();
        if !self.metadata_route.is_empty() {
            let _ =
                Command::new("ip").arg("route").arg("replace").args(self.metadata_route.split_whitespace()).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).output();
    }
}

const SECOND: Duration = Duration::from_secs(1);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host's own IPv4 addresses but loopback: its LAN address and the public link's host side among them.
pub fn host_addresses() -> Vec<String> {
    addresses(&["-4", "-o", "addr", "show"])
}

/// The host's global IPv6 addresses, when the host listener could take IPv6.
fn host_addresses_v6(network: &Network) -> Vec<String> {
    if !network.host_listener.local_addr().expect("addr").is_ipv6() {
        return Vec::new();
    }
    addresses(&["-6", "-o", "addr", "show", "scope", "global"])
}

fn addresses(ip_args: &[&str]) -> Vec<String> {
    ip(ip_args)
        .lines()
        .filter_map(|line| line.split_whitespace().skip_while(|w| !w.starts_with("inet")).nth(1))
        .filter_map(|cidr| cidr.split('/').next())
        .filter(|address| !address.starts_with("127."))
        .map(str::to_owned)
        .collect()
}

/// What a networked run reached: the public host, and every refused destination it connected to anyway.
#[derive(Debug)]
pub struct Reach {
    pub public: bool,
    pub leaks: Vec<String>,
    pub resolv_conf: String,
}

/// Tries the public host, the host's loopback through slirp's gateway, the metadata address and each of the
/// host's own addresses (IPv6 ones too), after checking from the host that each of them really answers.
pub async fn reach(h: &Harness, network: &Network) -> Reach {
    let addresses: Vec<String> = host_addresses().into_iter().chain(host_addresses_v6(network)).collect();
    let (host_port, public_port) = (network.host_port(), network.public_port);
    let socket = |address: &str| match address.contains(':') {
        true => format!("[{address}]:{host_port}"),
        false => format!("{address}:{host_port}"),
    };
    for target in
        [format!("127.0.0.1:{host_port}"), format!("{PUBLIC}:{public_port}"), format!("{METADATA}:{public_port}")]
            .into_iter()
            .chain(addresses.iter().map(|a| socket(a)))
    {
        TcpStream::connect_timeout(&target.parse().expect("addr"), SECOND)
            .unwrap_or_else(|e| panic!("{target} must answer from the host for its refusal to mean anything: {e}"));
    }
    let mut s = spec(REACH);
    s.network = true;
    s.args = [host_port.to_string(), public_port.to_string()].into_iter().chain(addresses.iter().cloned()).collect();
    let out = run(h, s).await;
    let mut expected = vec!["public".to_owned(), "host loopback".into(), "metadata".into(), "pinned".into()];
    expected.extend(addresses.iter().map(|a| format!("host address {a}")));
    assert_reached(&out, &expected.iter().map(String::as_str).collect::<Vec<_>>());
    let lines = |prefix: &str| -> Vec<String> {
        out.stdout.lines().filter_map(|l| l.strip_prefix(prefix)).map(str::to_owned).collect()
    };
    Reach {
        public: lines("CONNECTED ").iter().any(|l| l == "public"),
        leaks: lines("LEAK "),
        resolv_conf: lines("RESOLV ").join("\n"),
    }
}

const REACH: &str = r#"
import socket, sys
host_port, public_port, addresses = sys.argv[1], sys.argv[2], sys.argv[3:]
def connect(name, host, port):
    print("REACHED", name)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        print("CONNECTED", name)
        return True
    except OSError as e:
        print("refused", name, host, e)
        return False
print("RESOLV", open("/etc/resolv.conf").read().strip())
connect("public", "198.51.100.2", public_port)
targets = [("host loopback", "10.0.2.2", host_port), ("metadata", "169.254.169.254", public_port)]
targets += [("host address " + a, a, host_port) for a in addresses]
for name, host, port in targets:
    if connect(name, host, port):
        print("LEAK", name)
# A socket pinned to slirp's interface is sent there even where a prohibit route refuses the address.
print("REACHED pinned")
pinned = socket.socket()
try:
    pinned.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"tap0")
    print("LEAK pinned")
except OSError as e:
    print("refused pinned", e)
"#;

#[tokio::test]
async fn networked_run_reaches_a_public_host_but_not_the_host_nor_metadata() {
    let network = Network::start();
    let h = support::strict();
    let caps = h.sandbox.capabilities();
    assert!(caps.network_stack.as_deref().is_some_and(|s| s.starts_with("slirp4netns ")), "{caps:#?}");
    assert!(caps.network_egress_policy, "{caps:#?}");
    let reach = reach(&h, &network).await;
    assert!(reach.public, "{reach:#?}");
    assert!(reach.leaks.is_empty(), "{reach:#?}");
    assert_eq!(reach.resolv_conf, "nameserver 10.0.2.3");
}

#[tokio::test]
async fn unprivileged_networked_run_reaches_a_public_host_but_not_the_host_nor_metadata() {
    let network = Network::start();
    let h = support::unprivileged(&[]);
    if !nobody_can_open_tun() {
        // Distributions make /dev/net/tun 0666 (`.ci/run` too); without that, networked runs are refused.
        let caps = h.sandbox.capabilities();
        assert!(caps.network_stack.is_none(), "{caps:#?}");
        assert!(caps.warnings.iter().any(|w| w.contains("cannot open /dev/net/tun")), "{caps:#?}");
        return;
    }
    let reach = reach(&h, &network).await;
    assert!(reach.public, "{reach:#?}");
    assert!(reach.leaks.is_empty(), "{reach:#?}");
}

fn nobody_can_open_tun() -> bool {
    Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", "exec 3<>/dev/net/tun"])
        .status()
        .expect("setpriv")
        .success()
}

#[tokio::test]
async fn configured_ranges_are_refused_too() {
    let network = Network::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(Profile::Strict, &dir);
    config.network_deny = vec!["198.51.100.0/24".parse().expect("cidr")];
    let h = Harness { sandbox: automa_runner::Sandbox::new(config).expect("the sandbox starts"), dir, warm: false };
    assert_eq!(h.sandbox.capabilities().network_deny, ["198.51.100.0/24"]);
    let reach = reach(&h, &network).await;
    assert!(!reach.public, "{reach:#?}");
    assert!(reach.leaks.is_empty(), "{reach:#?}");
}

#[tokio::test]
async fn strict_refuses_networked_runs_without_slirp4netns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(Profile::Strict, &dir);
    config.slirp4netns = Some("/nonexistent/slirp4netns".into());
    let h = Harness { sandbox: automa_runner::Sandbox::new(config).expect("the sandbox starts"), dir, warm: false };
    let caps = h.sandbox.capabilities();
    assert!(caps.network_stack.is_none(), "{caps:#?}");
    assert!(caps.warnings.iter().any(|w| w.contains("ask for network are refused")), "{caps:#?}");
    let (tx, _rx) = mpsc::channel(8);
    let (_cancel, cancel) = watch::channel(false);
    let mut s = spec("print('ran')");
    s.network = true;
    let err = h.sandbox.run(s, tx, cancel).await.expect_err("a networked run is refused");
    assert!(matches!(err, RunnerError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/slirp4netns does not start"), "{err}");
    assert_eq!(support::script(&h, "print('ran')").await.ok(), "ran\n");
}

/// Pids of the slirp4netns processes this test process started, through its helpers.
fn our_slirps() -> Vec<i32> {
    let parent_of = |pid: i32| -> Option<(i32, String)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        Some((rest.split_whitespace().nth(1)?.parse().ok()?, name.to_owned()))
    };
    let me = i32::try_from(std::process::id()).expect("pid");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            // slirp4netns is a child of the run's supervisor, a child of the slot's helper, a child of the test.
            let supervisor = parent_of(pid).filter(|(_, name)| name == "slirp4netns").map(|(supervisor, _)| supervisor);
            let slot_helper = supervisor.and_then(parent_of).map(|(slot_helper, _)| slot_helper);
            slot_helper.and_then(parent_of).is_some_and(|(test, _)| test == me)
        })
        .collect()
}

#[tokio::test]
async fn slirp4netns_ends_with_its_run() {
    let h = support::strict();
    let (cancel, cancel_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel(16);
    let mut s = spec("import time\nprint('ready', flush=True)\ntime.sleep(60)");
    s.network = true;
    let running = h.sandbox.run(s, tx, cancel_rx);
    let watcher = async {
        let first = rx.recv().await.expect("the run reports");
        assert_eq!(first.data, "ready\n", "{first:?}");
        let slirps = our_slirps();
        cancel.send(true).expect("cancel");
        slirps
    };
    let (report, slirps) = tokio::join!(running, watcher);
    assert!(report.expect("the run ends").cancelled);
    assert!(!slirps.is_empty(), "a slirp4netns serves the networked run");
    let alive: Vec<_> = slirps.iter().filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()).collect();
    assert!(alive.is_empty(), "slirp4netns outlived its run: {alive:?}");
}

/// The policy's layer-off demonstration, run by `layers_off`.
pub async fn policy_off_reaches_everything() -> Reach {
    let network = Network::start();
    let h = support::with(Profile::Strict, &[Layer::NetworkPolicy]);
    reach(&h, &network).await
}
