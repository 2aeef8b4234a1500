//! Limits on password guessing, kept in memory: per client address and per account, a number of login
//! attempts a minute. A restart or a second server only resets the counts, which still bounds guessing to a
//! few attempts a minute. Also the aggregation of failed logins for the audit log, so that a guessing client
//! writes one entry a minute rather than one per guess.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use crate::rate_limit::address_key;

const WINDOW: Duration = Duration::from_secs(60);

/// The address a login attempt is counted under: grouped as the general rate limit groups it (IPv6 by /64),
/// since one host usually holds a whole /64 and could otherwise guess from a fresh address each time.
/// Anything that is not an address (none is known) stays as it is.
fn address_group(address: &str) -> String {
    address.parse::<IpAddr>().map_or_else(|_| address.to_owned(), |ip| address_key(ip).to_string())
}

/// How many addresses and accounts are tracked at most. An attacker cannot grow the table faster than the
/// password hashing bound lets attempts through, so the cap is never reached by honest traffic; when it is,
/// new attempts are refused rather than the table growing without bound.
const MAX_TRACKED: usize = 100_000;

/// What one attempt is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Address(String),
    Account(String),
}

pub struct LoginLimiter {
    per_address: u32,
    per_account: u32,
    attempts: Mutex<HashMap<Subject, VecDeque<Instant>>>,
}

/// A reserved login attempt. It counts as a failure unless [`LoginAttempt::forget`] is called (after a
/// successful login, or when the attempt never reached the password check).
#[must_use]
pub struct LoginAttempt<'a> {
    limiter: &'a LoginLimiter,
    subjects: [Subject; 2],
    at: Instant,
}

impl LoginLimiter {
    pub fn new(per_address: u32, per_account: u32) -> Self {
        LoginLimiter { per_address, per_account, attempts: Mutex::new(HashMap::new()) }
    }

    /// Reserves an attempt for `address` at `account` before the password is checked, atomically, so that
    /// parallel guesses are counted as they arrive: with a limit of 5, 40 parallel guesses get 5 checks.
    /// `Err(seconds to wait)` when either has used up its attempts.
    pub fn reserve(&self, address: &str, account: &str) -> Result<LoginAttempt<'_>, u64> {
        let now = Instant::now();
        let subjects = [Subject::Address(address_group(address)), Subject::Account(account.to_owned())];
        let limits = [self.per_address, self.per_account];
        let mut attempts = self.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if attempts.len() >= MAX_TRACKED {
            attempts.retain(|_, stamps| stamps.back().is_some_and(|at| now.duration_since(*at) < WINDOW));
            if attempts.len() >= MAX_TRACKED {
                return Err(WINDOW.as_secs());
            }
        }
        let mut wait = None;
        for (subject, limit) in subjects.iter().zip(limits) {
            let Some(stamps) = attempts.get_mut(subject) else { continue };
            while stamps.front().is_some_and(|at| now.duration_since(*at) >= WINDOW) {
                stamps.pop_front();
            }
            if stamps.len() >= limit as usize {
                let oldest = stamps.front().copied().unwrap_or(now);
                let seconds = WINDOW.saturating_sub(now.duration_since(oldest)).as_secs().max(1);
                wait = wait.max(Some(seconds));
            }
        }
        if let Some(seconds) = wait {
            return Err(seconds);
        }
        for subject in &subjects {
            attempts.entry(subject.clone()).or_default().push_back(now);
        }
        Ok(LoginAttempt { limiter: self, subjects, at: now })
    }
}

impl LoginAttempt<'_> {
    /// Takes the attempt back: it does not count against the limits.
    pub fn forget(self) {
        let mut attempts = self.limiter.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for subject in &self.subjects {
            if let Some(stamps) = attempts.get_mut(subject) {
                if let Some(position) = stamps.iter().position(|at| *at == self.at) {
                    stamps.remove(position);
                }
                if stamps.is_empty() {
                    attempts.remove(subject);
                }
            }
        }
    }
}

/// Failed logins of one address (an IPv6 one's whole /64) at one account within a window, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedLoginSummary {
    /// The address of the window's first failure.
    pub address: Option<String>,
    pub email: String,
    /// Failures in the window, the first included.
    pub count: u64,
    pub window_started_at: DateTime<Utc>,
    /// The entry that recorded the first failure, once written.
    pub first_entry_id: Option<i64>,
}

struct OpenWindow {
    started: Instant,
    summary: FailedLoginSummary,
}

/// What [`FailedLogins::note`] asks the caller to write.
#[derive(Debug, PartialEq)]
pub enum Noted {
    /// The first failure of a window: write it now, and pass its id to [`FailedLogins::first_written`].
    First,
    /// A repeat within an open window: counted, written later as part of the window's summary.
    Repeat,
}

/// Aggregates failed logins: the first failure of an address at an account is written at once; later ones
/// within [`WINDOW`] are only counted, and the window is written as one summarising entry when it closes.
/// The audit chain is append-only, so the first entry is never updated; the summary is a new entry that names
/// it.
#[derive(Default)]
pub struct FailedLogins {
    open: Mutex<HashMap<(Option<String>, String), OpenWindow>>,
    /// Told when a window opens, so the writer sleeps while none is open instead of waking to find nothing.
    opened: tokio::sync::Notify,
}

impl FailedLogins {
    /// Counts a failure. Also returns the summaries of windows that have closed, for the caller to write.
    pub fn note(&self, address: Option<&str>, email: &str) -> (Noted, Vec<FailedLoginSummary>) {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let closed = take_closed(&mut open, now, false);
        let key = (address.map(address_group), email.to_owned());
        if let Some(window) = open.get_mut(&key) {
            window.summary.count += 1;
            return (Noted::Repeat, closed);
        }
        if open.len() >= MAX_TRACKED {
            // Writing each failure is the fallback; the login limits bound how many there can be.
            return (Noted::First, closed);
        }
        let summary = FailedLoginSummary {
            address: address.map(str::to_owned),
            email: key.1.clone(),
            count: 1,
            window_started_at: Utc::now(),
            first_entry_id: None,
        };
        open.insert(key, OpenWindow { started: now, summary });
        self.opened.notify_one();
        (Noted::First, closed)
    }

    /// Remembers the id of the entry that recorded a window's first failure.
    pub fn first_written(&self, address: Option<&str>, email: &str, entry_id: i64) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(window) = open.get_mut(&(address.map(address_group), email.to_owned())) {
            window.summary.first_entry_id = Some(entry_id);
        }
    }

    /// Returns once a window is open (at once if one is).
    pub async fn any_open(&self) {
        loop {
            let opened = self.opened.notified();
            if !self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_empty() {
                return;
            }
            opened.await;
        }
    }

    /// The summaries of closed windows (all windows, with `everything`, at shutdown) that saw more than the
    /// failure already written.
    pub fn take_closed(&self, everything: bool) -> Vec<FailedLoginSummary> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        take_closed(&mut open, Instant::now(), everything)
    }
}

fn take_closed(
    open: &mut HashMap<(Option<String>, String), OpenWindow>,
    now: Instant,
    everything: bool,
) -> Vec<FailedLoginSummary> {
    let closed: Vec<_> = open
        .iter()
        .filter(|(_, w)| everything || now.duration_since(w.started) >= WINDOW)
        .map(|(k, _)| k.clone())
        .collect();
    closed
        .into_iter()
        .filter_map(|key| open.remove(&key))
        .map(|window| window.summary)
        .filter(|summary| summary.count > 1)
        .collect()
}

/// How often closed windows of failed logins are written out.
pub const FAILED_LOGIN_FLUSH: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_allowed_attempts_per_address() {
        let limiter = LoginLimiter::new(2, 100);
        drop(limiter.reserve("a", "x@example.com").unwrap());
        drop(limiter.reserve("a", "y@example.com").unwrap());
        assert!(limiter.reserve("a", "z@example.com").is_err_and(|wait| (1..=60).contains(&wait)));
        assert!(limiter.reserve("b", "x@example.com").is_ok());
    }

    #[test]
    fn blocks_after_the_allowed_attempts_per_account() {
        let limiter = LoginLimiter::new(100, 2);
        drop(limiter.reserve("a", "x@example.com").unwrap());
        drop(limiter.reserve("b", "x@example.com").unwrap());
        assert!(limiter.reserve("c", "x@example.com").is_err());
        assert!(limiter.reserve("c", "y@example.com").is_ok());
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64() {
        let limiter = LoginLimiter::new(2, 100);
        drop(limiter.reserve("2001:db8:1:2::1", "x@example.com").unwrap());
        drop(limiter.reserve("2001:db8:1:2:ffff::2", "y@example.com").unwrap());
        assert!(limiter.reserve("2001:db8:1:2:abcd::3", "z@example.com").is_err(), "the same /64");
        assert!(limiter.reserve("2001:db8:1:3::1", "z@example.com").is_ok(), "another /64");
        drop(limiter.reserve("::ffff:192.0.2.1", "z@example.com").unwrap());
        drop(limiter.reserve("192.0.2.1", "z@example.com").unwrap());
        assert!(limiter.reserve("192.0.2.1", "w@example.com").is_err(), "a mapped IPv4 address is that address");
        assert!(limiter.reserve("192.0.2.2", "w@example.com").is_ok(), "IPv4 addresses are not grouped");

        let failures = FailedLogins::default();
        assert_eq!(failures.note(Some("2001:db8:1:2::1"), "x@example.com").0, Noted::First);
        failures.first_written(Some("2001:db8:1:2::7"), "x@example.com", 3);
        assert_eq!(failures.note(Some("2001:db8:1:2::2"), "x@example.com").0, Noted::Repeat, "the same /64");
        assert_eq!(failures.note(Some("2001:db8:1:3::1"), "x@example.com").0, Noted::First, "another /64");
        let summaries = failures.take_closed(true);
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0].address.as_deref(), Some("2001:db8:1:2::1"), "the first address is reported");
        assert_eq!((summaries[0].count, summaries[0].first_entry_id), (2, Some(3)));
    }

    #[test]
    fn forgotten_attempts_do_not_count() {
        let limiter = LoginLimiter::new(1, 1);
        limiter.reserve("a", "x@example.com").unwrap().forget();
        limiter.reserve("a", "x@example.com").unwrap().forget();
        assert!(limiter.reserve("a", "x@example.com").is_ok());
    }

    #[test]
    fn a_refused_attempt_reserves_nothing() {
        let limiter = LoginLimiter::new(1, 5);
        drop(limiter.reserve("a", "x@example.com").unwrap());
        assert!(limiter.reserve("a", "y@example.com").is_err());
        assert!(limiter.reserve("b", "y@example.com").is_ok(), "the refused attempt did not count for y");
        drop(limiter.reserve("c", "y@example.com").unwrap());
    }

    #[test]
    fn repeated_failures_are_summarised_once() {
        let failures = FailedLogins::default();
        assert_eq!(failures.note(Some("1.2.3.4"), "x@example.com").0, Noted::First);
        failures.first_written(Some("1.2.3.4"), "x@example.com", 7);
        for _ in 0..4 {
            assert_eq!(failures.note(Some("1.2.3.4"), "x@example.com").0, Noted::Repeat);
        }
        assert_eq!(failures.note(Some("1.2.3.4"), "y@example.com").0, Noted::First);
        assert!(failures.take_closed(false).is_empty(), "the window is still open");
        let summaries = failures.take_closed(true);
        assert_eq!(summaries.len(), 1, "a single failure needs no summary: {summaries:?}");
        assert_eq!((summaries[0].count, summaries[0].first_entry_id), (5, Some(7)));
    }
}
