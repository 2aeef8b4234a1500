//! What a run is started with: its arguments, environment, secrets' names, limits and network access, as one
//! [`RunParams`] that can only hold valid values. The API parses input into it, the store keeps it in a task's
//! and a run's columns, the agent protocol carries it and the runner turns its limits into a sandbox budget, so
//! a new parameter is added here and flows through without being copied field by field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{InvalidField, ResourceName};

/// The variable that names the payload file of a run started by a hook with a body; set only then.
pub const TRIGGER_PAYLOAD_ENV: &str = "AUTOMA_TRIGGER_PAYLOAD";

/// Variables the runner's sandbox sets itself in a run (`TMPDIR` only without a private `/tmp`, the trigger
/// payload only for a hook's body). Neither a task's environment nor a secret may name them, so that a run
/// always finds them as the sandbox set them. They live here rather than in automa-runner because the runner
/// depends on this crate (for [`Limits`]), not the other way round.
pub const SANDBOX_ENV: [&str; 7] =
    ["PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "TMPDIR", TRIGGER_PAYLOAD_ENV];

const WEEK_SECONDS: i64 = 7 * 24 * 3600;

/// Checks `name` is a variable name the run may be given: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes, and not
/// one of [`SANDBOX_ENV`]. A secret's name is checked here too, since it becomes a variable.
pub fn check_env_name(field: &str, name: &str) -> Result<(), InvalidField> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        return Err(InvalidField::new(field, "is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"));
    }
    if SANDBOX_ENV.contains(&name) {
        return Err(InvalidField::new(field, "is set by the sandbox and cannot be overridden"));
    }
    Ok(())
}

/// Checks `name` may name a secret: a secret becomes a variable of the runs that name it, so it is checked as
/// [`check_env_name`] does, with reasons that speak of secrets.
pub fn check_secret_name(field: &str, name: &str) -> Result<(), InvalidField> {
    check_env_name(field, name).map_err(|_| {
        let message = if SANDBOX_ENV.contains(&name) {
            "is set by the sandbox; no run could receive this secret"
        } else {
            "must be usable as a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        };
        InvalidField::new(field, message)
    })
}

/// `sys.argv[1:]` of the script: at most 256 arguments of at most 8192 bytes, without NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Args(Vec<String>);

impl Args {
    pub fn parse(args: Vec<String>) -> Result<Self, InvalidField> {
        if args.len() > 256 {
            return Err(InvalidField::new("args", "at most 256 arguments"));
        }
        if let Some(index) = args.iter().position(|arg| arg.contains('\0') || arg.len() > 8192) {
            return Err(InvalidField::new(format!("args[{index}]"), "must be at most 8192 bytes, without NUL"));
        }
        Ok(Self(args))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A run's own environment: at most 256 variables, named as [`check_env_name`] allows, each value at most
/// 32 KiB without NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    pub fn parse(env: BTreeMap<String, String>) -> Result<Self, InvalidField> {
        if env.len() > 256 {
            return Err(InvalidField::new("env", "at most 256 variables"));
        }
        for (name, value) in &env {
            let field = format!("env.{name}");
            check_env_name(&field, name)?;
            if value.contains('\0') || value.len() > 32 * 1024 {
                return Err(InvalidField::new(field, "must be at most 32 KiB, without NUL"));
            }
        }
        Ok(Self(env))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// The names of the secrets given to a run as variables: at most 64, each once, each a name a run may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct SecretNames(Vec<String>);

impl SecretNames {
    pub fn parse(secrets: Vec<String>) -> Result<Self, InvalidField> {
        if secrets.len() > 64 {
            return Err(InvalidField::new("secrets", "at most 64 secrets"));
        }
        for (index, name) in secrets.iter().enumerate() {
            let field = format!("secrets[{index}]");
            check_secret_name(&field, name)?;
            if secrets[..index].contains(name) {
                return Err(InvalidField::new(field, format!("'{name}' is listed twice")));
            }
        }
        Ok(Self(secrets))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// The labels an agent has or a run asks for: at most 32 resource names, sorted, without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Labels(Vec<String>);

impl Labels {
    /// `field` names the list in errors (`labels`, `policy.agent_labels`); an entry is named `field[index]`.
    pub fn parse(field: &str, labels: Vec<String>) -> Result<Self, InvalidField> {
        if labels.len() > 32 {
            return Err(InvalidField::new(field, "at most 32 labels"));
        }
        let mut parsed = labels
            .iter()
            .enumerate()
            .map(|(index, label)| {
                ResourceName::parse(&format!("{field}[{index}]"), label).map(ResourceName::into_inner)
            })
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        Ok(Self(parsed))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn into_inner(self) -> Vec<String> {
        self.0
    }
}

/// A run's resource budget as users set it. The sandbox's other limits (processes, disk, open files) are the
/// runner's and not per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "LimitsFields")]
pub struct Limits {
    /// Wall-clock seconds before the run is killed, 1 to a week.
    timeout_seconds: i64,
    /// Memory in MB, 16 to 65536.
    memory_mb: i64,
    /// CPU seconds, 1 to a week.
    cpu_seconds: i64,
    /// Output kept across stdout and stderr, 1 KiB to 1 GiB.
    max_output_bytes: i64,
}

/// The wire and column shape of [`Limits`], before it is checked.
#[derive(Deserialize)]
struct LimitsFields {
    timeout_seconds: i64,
    memory_mb: i64,
    cpu_seconds: i64,
    max_output_bytes: i64,
}

impl TryFrom<LimitsFields> for Limits {
    type Error = InvalidField;

    fn try_from(fields: LimitsFields) -> Result<Self, Self::Error> {
        Limits::new(fields.timeout_seconds, fields.memory_mb, fields.cpu_seconds, fields.max_output_bytes)
    }
}

/// `value` if it is within `range`, else an error naming `field` and the range.
pub fn in_range(field: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, InvalidField> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(InvalidField::new(field, format!("must be between {} and {}", range.start(), range.end())))
    }
}

impl Limits {
    pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
    pub const DEFAULT_MEMORY_MB: i64 = 512;
    pub const DEFAULT_MAX_OUTPUT_BYTES: i64 = 10 * 1024 * 1024;

    pub fn new(
        timeout_seconds: i64,
        memory_mb: i64,
        cpu_seconds: i64,
        max_output_bytes: i64,
    ) -> Result<Self, InvalidField> {
        Ok(Limits {
            timeout_seconds: in_range("timeout_seconds", timeout_seconds, 1..=WEEK_SECONDS)?,
            memory_mb: in_range("memory_mb", memory_mb, 16..=65_536)?,
            cpu_seconds: in_range("cpu_seconds", cpu_seconds, 1..=WEEK_SECONDS)?,
            max_output_bytes: in_range("max_output_bytes", max_output_bytes, 1024..=1024 * 1024 * 1024)?,
        })
    }

    pub fn timeout_seconds(&self) -> i64 {
        self.timeout_seconds
    }

    pub fn memory_mb(&self) -> i64 {
        self.memory_mb
    }

    pub fn cpu_seconds(&self) -> i64 {
        self.cpu_seconds
    }

    pub fn max_output_bytes(&self) -> i64 {
        self.max_output_bytes
    }
}

impl Default for Limits {
    /// An hour of wall-clock and CPU time, 512 MB and 10 MiB of output.
    fn default() -> Self {
        Limits {
            timeout_seconds: Self::DEFAULT_TIMEOUT_SECONDS,
            memory_mb: Self::DEFAULT_MEMORY_MB,
            cpu_seconds: Self::DEFAULT_TIMEOUT_SECONDS,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Everything a run is started with besides its script and target, valid as a whole: a secret's name is not
/// also set in `env` (one would silently replace the other). Serialized flat, field by field, as the API,
/// the store's columns and the agent protocol have always spelled it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RunParamsFields")]
pub struct RunParams {
    args: Args,
    env: EnvVars,
    secrets: SecretNames,
    #[serde(flatten)]
    limits: Limits,
    network: bool,
    /// Omitted when false, so that what a cold run is sent stays as it always was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    warm: bool,
}

#[derive(Deserialize)]
struct RunParamsFields {
    args: Args,
    env: EnvVars,
    secrets: SecretNames,
    #[serde(flatten)]
    limits: Limits,
    network: bool,
    #[serde(default)]
    warm: bool,
}

impl TryFrom<RunParamsFields> for RunParams {
    type Error = InvalidField;

    fn try_from(fields: RunParamsFields) -> Result<Self, Self::Error> {
        Ok(RunParams::new(fields.args, fields.env, fields.secrets, fields.limits, fields.network)?
            .with_warm(fields.warm))
    }
}

/// Replacements for some of a [`RunParams`]'s fields, as an API request gives them; absent fields keep their
/// value. Applied with [`RunParams::change`], which checks the result whole.
#[derive(Debug, Clone, Default)]
pub struct RunParamsChange {
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub secrets: Option<Vec<String>>,
    pub timeout_seconds: Option<i64>,
    pub memory_mb: Option<i64>,
    pub cpu_seconds: Option<i64>,
    pub max_output_bytes: Option<i64>,
    pub network: Option<bool>,
    pub warm: Option<bool>,
}

impl RunParams {
    pub fn new(
        args: Args,
        env: EnvVars,
        secrets: SecretNames,
        limits: Limits,
        network: bool,
    ) -> Result<Self, InvalidField> {
        if let Some(index) = secrets.as_slice().iter().position(|name| env.contains(name)) {
            return Err(InvalidField::new(
                format!("secrets[{index}]"),
                format!("'{}' is also set in env; a variable comes from one place", secrets.as_slice()[index]),
            ));
        }
        Ok(RunParams { args, env, secrets, limits, network, warm: false })
    }

    /// These parameters, asking for a warm start or not.
    pub fn with_warm(self, warm: bool) -> Self {
        RunParams { warm, ..self }
    }

    /// These parameters with `change` applied, checked whole.
    pub fn change(&self, change: RunParamsChange) -> Result<Self, InvalidField> {
        let args = change.args.map(Args::parse).transpose()?.unwrap_or_else(|| self.args.clone());
        let env = change.env.map(EnvVars::parse).transpose()?.unwrap_or_else(|| self.env.clone());
        let secrets = change.secrets.map(SecretNames::parse).transpose()?.unwrap_or_else(|| self.secrets.clone());
        let limits = Limits::new(
            change.timeout_seconds.unwrap_or(self.limits.timeout_seconds),
            change.memory_mb.unwrap_or(self.limits.memory_mb),
            change.cpu_seconds.unwrap_or(self.limits.cpu_seconds),
            change.max_output_bytes.unwrap_or(self.limits.max_output_bytes),
        )?;
        Ok(RunParams::new(args, env, secrets, limits, change.network.unwrap_or(self.network))?
            .with_warm(change.warm.unwrap_or(self.warm)))
    }

    pub fn args(&self) -> &Args {
        &self.args
    }

    pub fn env(&self) -> &EnvVars {
        &self.env
    }

    pub fn secrets(&self) -> &SecretNames {
        &self.secrets
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the run may use the network.
    pub fn network(&self) -> bool {
        self.network
    }

    /// Whether the run asks to be handed to a sandbox prepared before it came (a warm start), which the agent
    /// gives it when it can; it is isolated like any other run either way.
    pub fn warm(&self) -> bool {
        self.warm
    }
}

impl TryFrom<Vec<String>> for Args {
    type Error = InvalidField;

    fn try_from(args: Vec<String>) -> Result<Self, Self::Error> {
        Args::parse(args)
    }
}

impl From<Args> for Vec<String> {
    fn from(args: Args) -> Self {
        args.0
    }
}

impl TryFrom<BTreeMap<String, String>> for EnvVars {
    type Error = InvalidField;

    fn try_from(env: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        EnvVars::parse(env)
    }
}

impl From<EnvVars> for BTreeMap<String, String> {
    fn from(env: EnvVars) -> Self {
        env.0
    }
}

impl TryFrom<Vec<String>> for SecretNames {
    type Error = InvalidField;

    fn try_from(secrets: Vec<String>) -> Result<Self, Self::Error> {
        SecretNames::parse(secrets)
    }
}

impl From<SecretNames> for Vec<String> {
    fn from(secrets: SecretNames) -> Self {
        secrets.0
    }
}

impl TryFrom<Vec<String>> for Labels {
    type Error = InvalidField;

    fn try_from(labels: Vec<String>) -> Result<Self, Self::Error> {
        Labels::parse("labels", labels)
    }
}

impl From<Labels> for Vec<String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn args_are_bounded_and_name_the_bad_one() {
        assert_eq!(Args::parse(strings(&["-v", "x"])).unwrap().as_slice(), ["-v", "x"]);
        assert_eq!(Args::parse(vec![String::new(); 257]).unwrap_err().field, "args");
        let error = Args::parse(strings(&["ok", "a\0b"])).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.message.as_str()),
            ("args[1]", "must be at most 8192 bytes, without NUL")
        );
        assert_eq!(Args::parse(vec!["x".repeat(8193)]).unwrap_err().field, "args[0]");
    }

    #[test]
    fn env_refuses_bad_names_sandbox_variables_and_values() {
        assert!(EnvVars::parse(env(&[("API_URL", "https://x"), ("_x1", "")])).is_ok());
        let bad_name = EnvVars::parse(env(&[("1X", "v")])).unwrap_err();
        assert_eq!(bad_name.field, "env.1X");
        assert!(bad_name.message.contains("not a valid variable name"));
        for reserved in SANDBOX_ENV {
            let error = EnvVars::parse(env(&[(reserved, "v")])).unwrap_err();
            assert_eq!(error.field, format!("env.{reserved}"));
            assert_eq!(error.message, "is set by the sandbox and cannot be overridden");
        }
        assert_eq!(EnvVars::parse(env(&[("X", "a\0")])).unwrap_err().field, "env.X");
        assert_eq!(EnvVars::parse(env(&[("X", &"v".repeat(32 * 1024 + 1))])).unwrap_err().field, "env.X");
        let many = (0..257).map(|i| (format!("V{i}"), String::new())).collect();
        assert_eq!(EnvVars::parse(many).unwrap_err().field, "env");
    }

    #[test]
    fn secret_names_are_variable_names_listed_once() {
        assert!(SecretNames::parse(strings(&["TOKEN", "KEY"])).is_ok());
        let twice = SecretNames::parse(strings(&["S", "S"])).unwrap_err();
        assert_eq!((twice.field.as_str(), twice.message.as_str()), ("secrets[1]", "'S' is listed twice"));
        let reserved = SecretNames::parse(strings(&["OK", "PATH"])).unwrap_err();
        assert_eq!(reserved.field, "secrets[1]");
        assert_eq!(reserved.message, "is set by the sandbox; no run could receive this secret");
        assert_eq!(SecretNames::parse(strings(&["a-b"])).unwrap_err().field, "secrets[0]");
        assert_eq!(SecretNames::parse(vec!["S".into(); 65]).unwrap_err().field, "secrets");
    }

    #[test]
    fn labels_are_sorted_deduplicated_names() {
        let labels = Labels::parse("labels", strings(&["gpu", "eu", "gpu"])).unwrap();
        assert_eq!(labels.as_slice(), ["eu", "gpu"]);
        assert_eq!(
            Labels::parse("policy.agent_labels", strings(&["ok", "a/b"])).unwrap_err().field,
            "policy.agent_labels[1]"
        );
        assert_eq!(Labels::parse("labels", vec!["x".into(); 33]).unwrap_err().field, "labels");
    }

    #[test]
    fn limits_name_the_field_out_of_range() {
        let cases = [
            (Limits::new(0, 512, 60, 2048), "timeout_seconds", "must be between 1 and 604800"),
            (Limits::new(60, 8, 60, 2048), "memory_mb", "must be between 16 and 65536"),
            (Limits::new(60, 512, 604_801, 2048), "cpu_seconds", "must be between 1 and 604800"),
            (Limits::new(60, 512, 60, 1023), "max_output_bytes", "must be between 1024 and 1073741824"),
        ];
        for (result, field, message) in cases {
            let error = result.unwrap_err();
            assert_eq!((error.field.as_str(), error.message.as_str()), (field, message));
        }
        let limits = Limits::new(60, 16, 1, 1024).unwrap();
        assert_eq!((limits.timeout_seconds(), limits.memory_mb(), limits.cpu_seconds()), (60, 16, 1));
    }

    #[test]
    fn defaults_are_an_hour_512_mb_and_10_mib() {
        let params = RunParams::default();
        assert_eq!(params.limits(), Limits::new(3600, 512, 3600, 10 * 1024 * 1024).unwrap());
        assert!(params.args().as_slice().is_empty() && params.env().as_map().is_empty() && !params.network());
    }

    #[test]
    fn a_secret_may_not_also_be_set_in_env() {
        let change = RunParamsChange {
            env: Some(env(&[("TOKEN", "x")])),
            secrets: Some(strings(&["OTHER", "TOKEN"])),
            ..RunParamsChange::default()
        };
        let error = RunParams::default().change(change).unwrap_err();
        assert_eq!(error.field, "secrets[1]");
        assert!(error.message.contains("also set in env"), "{}", error.message);
    }

    #[test]
    fn a_change_keeps_absent_fields_and_checks_the_rest() {
        let base = RunParams::default()
            .change(RunParamsChange {
                args: Some(strings(&["a"])),
                memory_mb: Some(1024),
                network: Some(true),
                ..RunParamsChange::default()
            })
            .unwrap();
        let changed = base.change(RunParamsChange { timeout_seconds: Some(60), ..RunParamsChange::default() }).unwrap();
        assert_eq!(changed.args().as_slice(), ["a"]);
        assert_eq!((changed.limits().timeout_seconds(), changed.limits().memory_mb()), (60, 1024));
        assert!(changed.network());
        let refused = base.change(RunParamsChange { memory_mb: Some(1), ..RunParamsChange::default() });
        assert_eq!(refused.unwrap_err().field, "memory_mb");
    }

    #[test]
    fn serde_is_flat_and_round_trips() {
        let params = RunParams::default()
            .change(RunParamsChange {
                args: Some(strings(&["x"])),
                env: Some(env(&[("A", "1")])),
                secrets: Some(strings(&["S"])),
                network: Some(true),
                ..RunParamsChange::default()
            })
            .unwrap();
        let value = serde_json::to_value(&params).unwrap();
        assert_eq!(
            value,
            json!({"args": ["x"], "env": {"A": "1"}, "secrets": ["S"], "timeout_seconds": 3600, "memory_mb": 512,
                   "cpu_seconds": 3600, "max_output_bytes": 10485760, "network": true})
        );
        assert_eq!(serde_json::from_value::<RunParams>(value).unwrap(), params);
    }

    #[test]
    fn deserializing_goes_through_the_same_checks() {
        let mut value = serde_json::to_value(RunParams::default()).unwrap();
        value["memory_mb"] = json!(1);
        assert!(serde_json::from_value::<RunParams>(value.clone()).unwrap_err().to_string().contains("memory_mb"));
        value["memory_mb"] = json!(512);
        value["env"] = json!({"PATH": "/evil"});
        assert!(serde_json::from_value::<RunParams>(value.clone()).unwrap_err().to_string().contains("env.PATH"));
        value["env"] = json!({"S": "v"});
        value["secrets"] = json!(["S"]);
        assert!(serde_json::from_value::<RunParams>(value).unwrap_err().to_string().contains("secrets[0]"));
        assert!(serde_json::from_value::<Labels>(json!(["a/b"])).unwrap_err().to_string().contains("labels[0]"));
        assert!(serde_json::from_value::<Args>(json!(["a\u{0}"])).is_err());
    }
}
