//! The agent's sandbox: the settings it is built from (the same for the agent embedded in `automa serve` and
//! for `automa agent`, each filling them from its own configuration), building it, and the status an agent
//! reports for it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::{Serialize, Serializer};

use automa_runner::{Capabilities, Cidr, HelperCommand, Profile, Sandbox, SandboxConfig};

/// The argument that makes the `automa` binary act as the sandbox helper.
pub const SANDBOX_HELPER_ARG: &str = "__sandbox-helper";

/// The most runs an agent may execute at once (and report).
const MOST_CONCURRENCY: usize = 1024;

/// Everything the sandbox is built from; each field names the setting that fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// `AUTOMA_SANDBOX`: `strict` (default) or `none`.
    pub profile: String,
    /// `AUTOMA_PYTHON`: the interpreter runs use; default: the real executable behind `python3`.
    pub python: Option<PathBuf>,
    /// `AUTOMA_SANDBOX_HELPER`: the program that sets up the sandbox; default: this binary with
    /// [`SANDBOX_HELPER_ARG`].
    pub helper: Option<PathBuf>,
    /// Where run directories live: `runs/` under the data directory.
    pub work_root: PathBuf,
    /// `AUTOMA_NETWORK_DENY`: address ranges networked runs may not reach, besides those always refused.
    pub network_deny: Vec<String>,
    /// `AUTOMA_WARM_POOL`: whether runs that ask for a warm start get one (default); `false`: all start cold.
    pub warm_pool: bool,
}

impl SandboxSettings {
    /// The default profile, also the server's `AUTOMA_SANDBOX` default.
    pub const DEFAULT_PROFILE: &str = "strict";

    /// Settings whose run directories live under `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> SandboxSettings {
        SandboxSettings {
            profile: Self::DEFAULT_PROFILE.into(),
            python: None,
            helper: None,
            work_root: data_dir.join("runs"),
            network_deny: Vec::new(),
            warm_pool: true,
        }
    }
}

/// Runs an agent executes at once: `AUTOMA_AGENT_CONCURRENCY` (or `--concurrency`), by default the number of
/// cores up to the most an agent may report (1024).
pub fn concurrency(requested: Option<usize>) -> anyhow::Result<usize> {
    match requested {
        Some(value @ 1..=MOST_CONCURRENCY) => Ok(value),
        Some(_) => {
            anyhow::bail!("AUTOMA_AGENT_CONCURRENCY (--concurrency) must be between 1 and {MOST_CONCURRENCY}")
        }
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(MOST_CONCURRENCY)),
    }
}

/// Builds the sandbox as configured, or says why it cannot be built. `strict` never falls back to less.
/// A setting that cannot be read is the outer error; a host that cannot give the profile, the inner one.
pub async fn build_sandbox(settings: &SandboxSettings, slots: usize) -> anyhow::Result<Result<Arc<Sandbox>, String>> {
    let profile: Profile = settings.profile.parse().context("AUTOMA_SANDBOX")?;
    if profile == Profile::None {
        tracing::error!("AUTOMA_SANDBOX=none: scripts run WITHOUT ISOLATION, as plain processes of this user");
    }
    let helper = match &settings.helper {
        Some(program) => HelperCommand { program: program.clone(), args: Vec::new() },
        None => HelperCommand {
            program: std::env::current_exe().context("locating this binary for the sandbox helper")?,
            args: vec![SANDBOX_HELPER_ARG.into()],
        },
    };
    let python = settings.python.clone();
    let warm_pool = settings.warm_pool;
    let work_root = absolute(settings.work_root.clone())?;
    let network_deny = settings
        .network_deny
        .iter()
        .map(|cidr| cidr.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .context("AUTOMA_NETWORK_DENY")?;
    let built = tokio::task::spawn_blocking(move || {
        let interpreter = automa_runner::resolve_interpreter(python.as_deref()).map_err(|e| e.to_string())?;
        let mut sandbox_config = SandboxConfig::new(profile, interpreter, helper, work_root);
        sandbox_config.slots = slots;
        sandbox_config.network_deny = network_deny;
        sandbox_config.warm_pool = warm_pool;
        Sandbox::new(sandbox_config).map(Arc::new).map_err(|e| e.to_string())
    })
    .await?;
    Ok(built)
}

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path } else { std::env::current_dir()?.join(path) })
}

/// What an agent's sandbox gives runs, or why it refuses them: the `capabilities` of its heartbeats and the
/// `sandbox` of the server's `/ready`. In JSON: `{"ready": true, "profile": ..., <the layers>}` or
/// `{"ready": false, "refused": "<why>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxStatus {
    Ready { profile: Profile, capabilities: Capabilities },
    Refused { reason: String },
}

impl SandboxStatus {
    /// The status of a sandbox as built by [`build_sandbox`].
    pub fn of(sandbox: &Result<Arc<Sandbox>, String>) -> SandboxStatus {
        match sandbox {
            Ok(sandbox) => {
                SandboxStatus::Ready { profile: sandbox.profile(), capabilities: sandbox.capabilities().clone() }
            }
            Err(reason) => SandboxStatus::Refused { reason: reason.clone() },
        }
    }
}

impl Serialize for SandboxStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Ready<'a> {
            ready: bool,
            profile: Profile,
            #[serde(flatten)]
            capabilities: &'a Capabilities,
        }
        #[derive(Serialize)]
        struct Refused<'a> {
            ready: bool,
            refused: &'a str,
        }
        match self {
            SandboxStatus::Ready { profile, capabilities } => {
                Ready { ready: true, profile: *profile, capabilities }.serialize(serializer)
            }
            SandboxStatus::Refused { reason } => Refused { ready: false, refused: reason }.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_status_is_the_layers_with_the_profile_and_a_refused_one_says_why() {
        let capabilities = Capabilities { seccomp: true, landlock: Some(4), ..Capabilities::default() };
        let ready = serde_json::to_value(SandboxStatus::Ready { profile: Profile::Strict, capabilities }).unwrap();
        assert_eq!((&ready["ready"], &ready["profile"]), (&true.into(), &"strict".into()));
        assert_eq!(
            (&ready["seccomp"], &ready["landlock"], &ready["user_ns"]),
            (&true.into(), &4.into(), &false.into())
        );
        let refused = serde_json::to_value(SandboxStatus::Refused { reason: "no user namespaces".into() }).unwrap();
        assert_eq!(refused, serde_json::json!({"ready": false, "refused": "no user namespaces"}));
    }

    #[test]
    fn concurrency_is_bounded_and_defaults_to_the_cores() {
        assert_eq!(concurrency(Some(3)).unwrap(), 3);
        assert!(concurrency(None).unwrap() >= 1);
        for wrong in [0, 1025] {
            let message = concurrency(Some(wrong)).unwrap_err().to_string();
            assert_eq!(message, "AUTOMA_AGENT_CONCURRENCY (--concurrency) must be between 1 and 1024");
        }
    }

    #[tokio::test]
    async fn unreadable_settings_name_their_variable() {
        let settings = SandboxSettings { profile: "loose".into(), ..SandboxSettings::new("data".as_ref()) };
        let error = build_sandbox(&settings, 1).await.unwrap_err();
        assert!(format!("{error:#}").starts_with("AUTOMA_SANDBOX: "), "{error:#}");
        let settings =
            SandboxSettings { network_deny: vec!["10.0.0.0/33".into()], ..SandboxSettings::new("data".as_ref()) };
        let error = build_sandbox(&settings, 1).await.unwrap_err();
        assert!(format!("{error:#}").starts_with("AUTOMA_NETWORK_DENY: "), "{error:#}");
    }
}
