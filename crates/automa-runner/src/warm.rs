//! Warm starts: a run that opts in ([`crate::RunSpec::warm`]) is handed to a sandbox prepared before it came.
//!
//! A prepared sandbox is a cold run's sandbox in every respect (the same helper, namespaces, root, slot uid and
//! cgroups, rlimits, no_new_privs, no capabilities, landlock and seccomp) whose workload is the interpreter
//! running [`BOOTSTRAP`] instead of a script, blocked reading its run from stdin. At hand-over it receives the
//! script, argv, environment (secrets included) and rlimits, lowers the rlimits from the prepared ceilings to
//! the run's own, writes the script into its work directory and runs it as `__main__`, as `python script`
//! would. Each prepared sandbox serves one run and is gone with it, so no run ever sees another's state; its
//! slot then prepares the next one.
//!
//! The pool is lazy: a slot prepares a sandbox only after it ran a warm request (the first one runs cold), and
//! one left unused for [`IDLE`] is dropped, with the memory its interpreter held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::Limits;
use crate::sandbox::Launched;

/// The interpreter's bootstrap, written into the prepared sandbox's work directory, which it deletes as it
/// starts.
pub(crate) const BOOTSTRAP: &str = include_str!("warm/bootstrap.py");
/// Not a name a run's script can take from the API's `.py` names, and gone before any run's script is written.
pub(crate) const BOOTSTRAP_NAME: &str = ".automa-warm.py";
/// How long a prepared sandbox waits for a run before it is dropped.
pub(crate) const IDLE: Duration = Duration::from_secs(300);

/// The limits a sandbox is prepared with after a run with `limits`: the highest a run may ask for, so that
/// every run's own can be reached by lowering, and the run's for the sandbox's fixed budget (the size of
/// `/work` and `/tmp`, processes, files), which the next run most likely shares.
pub(crate) fn ceiling(limits: &Limits) -> Limits {
    const WEEK: u64 = 7 * 24 * 3600;
    Limits { timeout: Duration::from_secs(WEEK), memory_mb: 65_536, cpu_seconds: WEEK, ..*limits }
}

/// Whether a sandbox prepared with `prepared` can serve a run with `limits`: each of the run's rlimits is
/// reached by lowering, and the sizes fixed when the sandbox was built are the run's.
pub(crate) fn fits(prepared: &Limits, limits: &Limits) -> bool {
    limits.disk_mb == prepared.disk_mb
        && limits.memory_mb <= prepared.memory_mb
        && limits.cpu_seconds <= prepared.cpu_seconds
        && limits.max_processes <= prepared.max_processes
        && limits.open_files <= prepared.open_files
}

/// Why a run cannot start warm at all, or `None` when it can. The run then runs cold: a warm start never gives
/// it anything a cold one would not.
pub(crate) fn refusal(network: bool, environment: bool, env: &[(String, String)]) -> Option<String> {
    if network {
        return Some("it has network, which a prepared sandbox does not".into());
    }
    if environment {
        return Some("it runs in a packages environment, not the plain interpreter".into());
    }
    env.iter()
        .find(|(key, _)| changes_start_up(key))
        .map(|(key, _)| format!("its variable {key} changes how the interpreter starts"))
}

/// Variables the interpreter, the C library or the dynamic loader read when the process starts: a prepared
/// interpreter started before they were known.
fn changes_start_up(key: &str) -> bool {
    ["PYTHON", "LC_", "LD_", "MALLOC_"].iter().any(|prefix| key.starts_with(prefix))
        || ["LANG", "LANGUAGE", "TZ", "HOME", "GLIBC_TUNABLES"].contains(&key)
}

/// The run as the bootstrap reads it: fields, each as its decimal length, a newline and its bytes: the script's
/// name and content, the rlimits (empty when the sandbox sets none), the argument count and arguments, then
/// the environment's names and values.
pub(crate) fn encode_run(
    script_name: &str,
    script: &str,
    args: &[String],
    env: &[(String, String)],
    rlimits: Option<&Limits>,
) -> String {
    const MIB: u64 = 1024 * 1024;
    let rlimits = rlimits.map_or_else(String::new, |limits| {
        format!(
            "{} {} {} {} {}",
            limits.memory_mb.saturating_mul(MIB),
            limits.cpu_seconds,
            limits.max_processes,
            limits.open_files,
            limits.disk_mb.saturating_mul(MIB),
        )
    });
    let argc = args.len().to_string();
    let fields = [script_name, script, &rlimits, &argc]
        .into_iter()
        .chain(args.iter().map(String::as_str))
        .chain(env.iter().flat_map(|(key, value)| [key.as_str(), value.as_str()]));
    let mut run = String::new();
    for field in fields {
        run.push_str(&field.len().to_string());
        run.push('\n');
        run.push_str(field);
    }
    run
}

/// A prepared sandbox: its helper, already sent its request, and the channel to it.
pub(crate) struct Prepared {
    /// When it is dropped unless a run took it.
    expires: tokio::time::Instant,
    /// What it was prepared with ([`ceiling`]).
    pub limits: Limits,
    pub launched: Launched,
}

/// One prepared sandbox per slot at most. Dropping one kills its helper, and with it the sandbox's init and
/// everything in its pid namespace.
pub(crate) struct WarmPool {
    prepared: Mutex<Vec<Option<Prepared>>>,
    /// Whether a task drops the sandboxes left unused: one for the whole pool, however many are put.
    sweeping: AtomicBool,
}

impl WarmPool {
    pub fn new(slots: usize) -> Arc<WarmPool> {
        Arc::new(WarmPool {
            prepared: Mutex::new((0..slots).map(|_| None).collect()),
            sweeping: AtomicBool::new(false),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Prepared>>> {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn has(&self, slot: usize) -> bool {
        self.slots()[slot].is_some()
    }

    pub fn take(&self, slot: usize) -> Option<Prepared> {
        self.slots()[slot].take()
    }

    /// Drops every prepared sandbox, killing their supervisors.
    pub fn clear(&self) {
        let prepared: Vec<Option<Prepared>> = self.slots().iter_mut().map(Option::take).collect();
        drop(prepared);
    }

    /// Keeps `launched` as `slot`'s prepared sandbox until a run takes it or [`IDLE`] passes.
    pub fn put(self: &Arc<Self>, slot: usize, limits: Limits, launched: Launched) {
        let expires = tokio::time::Instant::now() + IDLE;
        let replaced = self.slots()[slot].replace(Prepared { expires, limits, launched });
        drop(replaced);
        if !self.sweeping.swap(true, Ordering::SeqCst) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Drops the prepared sandboxes whose time is up and returns the next one's end, or `None` (and the
    /// sweeper stops) when none is left.
    fn expire(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let mut slots = self.slots();
        let expired: Vec<Prepared> =
            slots.iter_mut().filter_map(|slot| slot.take_if(|prepared| prepared.expires <= now)).collect();
        let next = slots.iter().flatten().map(|prepared| prepared.expires).min();
        if next.is_none() {
            // Under the lock: a `put` after this sees the flag down and starts another sweeper.
            self.sweeping.store(false, Ordering::SeqCst);
        }
        drop(slots);
        drop(expired);
        next
    }
}

/// Drops prepared sandboxes left unused for [`IDLE`] until the pool is empty or gone.
async fn sweep(pool: Weak<WarmPool>) {
    loop {
        let next = match pool.upgrade() {
            Some(pool) => pool.expire(tokio::time::Instant::now()),
            None => return,
        };
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_that_would_start_differently_are_refused() {
        assert!(refusal(false, false, &[("TOKEN".into(), "x".into())]).is_none());
        assert!(refusal(true, false, &[]).is_some());
        assert!(refusal(false, true, &[]).is_some());
        for key in ["PYTHONPATH", "LC_ALL", "LD_PRELOAD", "TZ", "HOME", "MALLOC_ARENA_MAX"] {
            assert!(refusal(false, false, &[(key.into(), "x".into())]).is_some(), "{key}");
        }
    }

    #[test]
    fn a_prepared_sandbox_serves_runs_whose_limits_it_can_lower_to() {
        let limits = Limits::default();
        let prepared = ceiling(&limits);
        assert!(fits(&prepared, &limits));
        assert!(fits(&prepared, &Limits { memory_mb: 65_536, max_processes: 1, ..limits }));
        assert!(!fits(&prepared, &Limits { memory_mb: 65_537, ..limits }));
        assert!(!fits(&prepared, &Limits { max_processes: limits.max_processes + 1, ..limits }));
        assert!(!fits(&prepared, &Limits { disk_mb: limits.disk_mb / 2, ..limits }));
    }

    #[test]
    fn fields_are_length_prefixed_in_bytes() {
        let run =
            encode_run("s.py", "print('é')\n", &["a\nb".into()], &[("K".into(), "v".into())], Some(&Limits::default()));
        let expected_rlimits = "536870912 3600 64 256 268435456";
        let expected =
            format!("4\ns.py12\nprint('é')\n{}\n{expected_rlimits}1\n1{}1\nK1\nv", expected_rlimits.len(), "3\na\nb");
        assert_eq!(run, expected);
        assert!(encode_run("s.py", "", &[], &[], None).starts_with("4\ns.py0\n0\n1\n0"));
    }
}
