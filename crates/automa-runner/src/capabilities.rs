//! What isolation this host gives runs, layer by layer, as detected when the sandbox starts and reported in
//! the agent's capabilities.

use serde::{Deserialize, Serialize};

use crate::network::Slirp;
use crate::protocol::{Layers, ProbeReport};
use crate::{Cidr, Layer, Profile, RunnerError};

/// Which cgroup version a controller is used through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The layers runs actually get. A layer is `true` (or `Some`) only when the host offers it, the profile
/// uses it and it is not disabled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub user_ns: bool,
    pub mount_ns: bool,
    pub pid_ns: bool,
    pub net_ns: bool,
    pub ipc_ns: bool,
    pub uts_ns: bool,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// The landlock ABI version in use.
    pub landlock: Option<u8>,
    pub cgroup_memory: Option<CgroupVersion>,
    pub cgroup_pids: Option<CgroupVersion>,
    pub cgroup_cpu: Option<CgroupVersion>,
    pub rlimits: bool,
    /// What gives networked runs their network, in a namespace of their own: `slirp4netns 1.2.0`. `None`:
    /// networked runs are refused (profile strict) or, like every run, share the host's network (profile none).
    pub network_stack: Option<String>,
    /// Whether networked runs are held to the egress policy (no host loopback, host addresses, link-local,
    /// multicast, nor `network_deny`).
    pub network_egress_policy: bool,
    /// The configured ranges networked runs may not reach, besides those always refused.
    pub network_deny: Vec<String>,
    /// Whether the helper runs as root, and so switches each run to its slot's unprivileged uid.
    pub running_as_root: bool,
    /// Layers missing or weakened; shown to admins.
    pub warnings: Vec<String>,
    /// Required layers the host lacks; non-empty only for a sandbox that refused to start.
    pub missing_required: Vec<String>,
}

/// The outcome of deciding which layers runs get.
pub(crate) struct Plan {
    pub capabilities: Capabilities,
    pub layers: Layers,
    pub slot_user: bool,
    pub cgroups: bool,
    /// Whether networked runs get their own namespace with slirp4netns; without it they are refused.
    pub user_net: bool,
}

/// What the sandbox knows about networking before deciding: slirp4netns found (or why not) and the
/// configured deny list.
pub(crate) struct Networking<'a> {
    pub slirp: Result<&'a Slirp, &'a str>,
    pub deny: &'a [Cidr],
}

/// Decides the layers from the probe. With `Profile::Strict`, a missing required layer is an error: never
/// silently less isolation.
pub(crate) fn plan(
    profile: Profile,
    probe: &ProbeReport,
    disabled: &[Layer],
    cgroup_versions: [Option<CgroupVersion>; 3],
    cgroup_warnings: &[String],
    networking: &Networking<'_>,
) -> Result<Plan, RunnerError> {
    let root = probe.euid == 0;
    let mut caps = Capabilities { running_as_root: root, ..Capabilities::default() };
    let on = |layer: Layer| !disabled.contains(&layer);
    for layer in disabled {
        caps.warnings.push(format!("layer {layer:?} is switched off for testing or diagnostics"));
    }
    let rlimits = probe.rlimits.is_ok() && on(Layer::Rlimits);
    if profile == Profile::None {
        caps.rlimits = rlimits;
        caps.warnings.push("sandbox profile is none: scripts run as plain processes without isolation".into());
        caps.warnings.push(
            "sandbox profile is none: every run, networked or not, shares the host's network, loopback included; \
             no egress policy applies"
                .into(),
        );
        let layers = Layers { rlimits, ..Layers::default() };
        return Ok(Plan { capabilities: caps, layers, slot_user: false, cgroups: false, user_net: false });
    }

    let mut missing = Vec::new();
    let mut required = |name: &str, result: &Result<(), String>, layer: Layer, needed: bool| -> bool {
        if !on(layer) {
            return false;
        }
        match result {
            Ok(()) => true,
            Err(e) if needed => {
                missing.push(format!("{name}: {e}"));
                false
            }
            Err(_) => false,
        }
    };
    // As root the helper needs no user namespace: it builds the sandbox with real privileges and then
    // switches to an unprivileged host uid. Without root the user namespace is what grants those privileges.
    let user_ns = required("user namespace", &probe.user_ns, Layer::UserNs, !root) && !root;
    let mount_ns = required("mount namespace", &probe.mount_ns, Layer::MountNs, true);
    let pid_ns = required("pid namespace", &probe.pid_ns, Layer::PidNs, true);
    let net_ns = required("network namespace", &probe.net_ns, Layer::NetNs, true);
    let ipc_ns = required("ipc namespace", &probe.ipc_ns, Layer::IpcNs, true);
    let uts_ns = required("uts namespace", &probe.uts_ns, Layer::UtsNs, true);
    let no_new_privs = required("no_new_privs", &probe.no_new_privs, Layer::NoNewPrivs, true);
    let seccomp = required("seccomp", &probe.seccomp, Layer::Seccomp, true);
    let rlimits = required("rlimits", &probe.rlimits, Layer::Rlimits, true);
    if !root && !user_ns && on(Layer::UserNs) {
        missing.push("not root and no user namespace: no way to build the sandbox".into());
    }

    let landlock = match probe.landlock_abi {
        Some(abi) if on(Layer::Landlock) => Some(abi),
        Some(_) => None,
        None => {
            caps.warnings.push("landlock is not available: no filesystem access rules beyond the mounts".into());
            None
        }
    };
    let mut cgroups = on(Layer::Cgroups);
    if cgroups {
        caps.warnings.extend(cgroup_warnings.iter().cloned());
        if let Err(e) = &probe.cgroups_writable {
            caps.warnings.push(format!("cgroups are not usable by the helper: {e}; runs have no cgroup limits"));
            cgroups = false;
        }
    }
    if cgroups {
        [caps.cgroup_memory, caps.cgroup_pids, caps.cgroup_cpu] = cgroup_versions;
        cgroups = cgroup_versions.iter().any(Option::is_some);
    }
    if !root {
        caps.warnings
            .push("the helper is not root: every slot runs as the helper's own uid, inside a user namespace".into());
    }

    caps.user_ns = user_ns;
    caps.mount_ns = mount_ns;
    caps.pid_ns = pid_ns;
    caps.net_ns = net_ns;
    caps.ipc_ns = ipc_ns;
    caps.uts_ns = uts_ns;
    caps.no_new_privs = no_new_privs;
    caps.seccomp = seccomp;
    caps.landlock = landlock;
    caps.rlimits = rlimits;
    let user_net = net_ns && networking.slirp.is_ok();
    match networking.slirp {
        Ok(slirp) if net_ns => {
            caps.network_stack = Some(format!("slirp4netns {}", slirp.version));
            caps.network_egress_policy = on(Layer::NetworkPolicy);
            caps.network_deny = networking.deny.iter().map(ToString::to_string).collect();
        }
        Ok(_) => caps.warnings.push("without a network namespace every run shares the host's network".into()),
        Err(reason) => caps.warnings.push(format!("runs that ask for network are refused: {reason}")),
    }
    if !missing.is_empty() {
        caps.missing_required = missing;
        return Err(RunnerError::Unsupported(format!(
            "required isolation layers are missing: {}",
            caps.missing_required.join("; ")
        )));
    }
    let layers = Layers {
        user_ns,
        mount_ns,
        pid_ns,
        net_ns,
        ipc_ns,
        uts_ns,
        no_new_privs,
        drop_caps: on(Layer::Capabilities),
        seccomp,
        landlock: landlock.is_some(),
        rlimits,
    };
    Ok(Plan { capabilities: caps, layers, slot_user: root && on(Layer::SlotUser), cgroups, user_net })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_SLIRP: Networking<'static> = Networking { slirp: Err("slirp4netns is not installed"), deny: &[] };

    fn probe_all_ok(euid: u32) -> ProbeReport {
        ProbeReport {
            euid,
            egid: euid,
            user_ns: Ok(()),
            mount_ns: Ok(()),
            pid_ns: Ok(()),
            net_ns: Ok(()),
            ipc_ns: Ok(()),
            uts_ns: Ok(()),
            no_new_privs: Ok(()),
            seccomp: Ok(()),
            landlock_abi: Some(7),
            rlimits: Ok(()),
            cgroups_writable: Ok(()),
            tun: Ok(()),
        }
    }

    #[test]
    fn strict_refuses_a_host_without_a_required_layer() {
        let probe = ProbeReport { pid_ns: Err("EPERM".into()), ..probe_all_ok(0) };
        let err = plan(Profile::Strict, &probe, &[], [None; 3], &[], &NO_SLIRP).err().expect("refused");
        assert_eq!(
            err.to_string(),
            "the sandbox cannot run here: required isolation layers are missing: pid namespace: EPERM"
        );
    }

    #[test]
    fn unprivileged_strict_needs_a_user_namespace() {
        let probe = ProbeReport { user_ns: Err("disabled by sysctl".into()), ..probe_all_ok(1000) };
        let err = plan(Profile::Strict, &probe, &[], [None; 3], &[], &NO_SLIRP).err().expect("refused");
        assert!(err.to_string().contains("user namespace: disabled by sysctl"), "{err}");
    }

    #[test]
    fn optional_layers_missing_are_warnings() {
        let probe =
            ProbeReport { landlock_abi: None, cgroups_writable: Err("permission denied".into()), ..probe_all_ok(0) };
        let v1 = Some(CgroupVersion::V1);
        let Ok(plan) = plan(Profile::Strict, &probe, &[], [v1, v1, v1], &[], &NO_SLIRP) else { panic!("refused") };
        let caps = plan.capabilities;
        assert!(caps.landlock.is_none() && caps.cgroup_memory.is_none() && !plan.cgroups);
        assert!(caps.warnings.iter().any(|w| w.contains("landlock")), "{caps:?}");
        assert!(caps.warnings.iter().any(|w| w.contains("cgroups are not usable")), "{caps:?}");
    }

    #[test]
    fn profile_none_needs_nothing_but_says_so() {
        let probe = ProbeReport { mount_ns: Err("EPERM".into()), ..probe_all_ok(0) };
        let Ok(plan) = plan(Profile::None, &probe, &[], [None; 3], &[], &NO_SLIRP) else { panic!("refused") };
        assert!(plan.layers.rlimits && !plan.layers.mount_ns && !plan.slot_user);
        assert!(plan.capabilities.warnings[0].contains("profile is none"));
    }

    #[test]
    fn networked_runs_are_refused_without_slirp_and_reported_with_it() {
        let Ok(without) = plan(Profile::Strict, &probe_all_ok(0), &[], [None; 3], &[], &NO_SLIRP) else {
            panic!("refused")
        };
        assert!(!without.user_net && without.capabilities.network_stack.is_none());
        assert!(
            without.capabilities.warnings.iter().any(|w| w.contains("ask for network are refused")),
            "{:?}",
            without.capabilities
        );
        let slirp = Slirp { program: "/usr/bin/slirp4netns".into(), version: "1.2.0".into() };
        let deny = ["10.0.0.0/8".parse().expect("cidr")];
        let networking = Networking { slirp: Ok(&slirp), deny: &deny };
        let Ok(with) = plan(Profile::Strict, &probe_all_ok(0), &[], [None; 3], &[], &networking) else {
            panic!("refused")
        };
        assert!(with.user_net, "{:?}", with.capabilities);
        assert_eq!(with.capabilities.network_stack.as_deref(), Some("slirp4netns 1.2.0"));
        assert!(with.capabilities.network_egress_policy);
        assert_eq!(with.capabilities.network_deny, ["10.0.0.0/8"]);
        let Ok(none) = plan(Profile::None, &probe_all_ok(0), &[], [None; 3], &[], &networking) else {
            panic!("refused")
        };
        assert!(!none.user_net && none.capabilities.network_stack.is_none());
        assert!(none.capabilities.warnings.iter().any(|w| w.contains("shares the host's network")));
    }

    #[test]
    fn capabilities_serialize_with_lowercase_cgroup_versions() {
        let caps = Capabilities { cgroup_pids: Some(CgroupVersion::V2), ..Capabilities::default() };
        let json = serde_json::to_value(&caps).expect("json");
        assert_eq!(json["cgroup_pids"], "v2");
        assert_eq!(json["cgroup_memory"], serde_json::Value::Null);
    }
}
