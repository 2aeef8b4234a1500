//! A per-address limit on failed logins, so passwords cannot be guessed at network speed. Kept in memory: a
//! restart or a second server only resets the count, which still bounds guessing to a few attempts a minute.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct LoginLimiter {
    per_minute: u32,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl LoginLimiter {
    pub fn new(per_minute: u32) -> Self {
        LoginLimiter { per_minute, failures: Mutex::new(HashMap::new()) }
    }

    /// `Some(seconds to wait)` when `client` has used up its failed attempts.
    pub fn check(&self, client: &str) -> Option<u64> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let recent = failures.get_mut(client)?;
        recent.retain(|at| now.duration_since(*at) < WINDOW);
        if recent.len() < self.per_minute as usize {
            return None;
        }
        let oldest = recent.first().copied().unwrap_or(now);
        Some((WINDOW.saturating_sub(now.duration_since(oldest))).as_secs().max(1))
    }

    pub fn record_failure(&self, client: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if failures.len() > 10_000 {
            failures.retain(|_, attempts| attempts.last().is_some_and(|at| now.duration_since(*at) < WINDOW));
        }
        failures.entry(client.to_owned()).or_default().push(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_allowed_failures() {
        let limiter = LoginLimiter::new(2);
        assert_eq!(limiter.check("a"), None);
        limiter.record_failure("a");
        assert_eq!(limiter.check("a"), None);
        limiter.record_failure("a");
        assert!(limiter.check("a").is_some_and(|wait| (1..=60).contains(&wait)));
        assert_eq!(limiter.check("b"), None);
    }
}
