//! A general request rate limit: a token bucket per credential, so one client cannot monopolise the server.
//! Counting happens before authentication (it protects the token look-up too), so a bearer token earns a
//! bucket of its own only once it has authenticated a request: until then, and for requests without one,
//! the request is counted under the client's address, so made-up tokens cannot buy fresh budgets. The request
//! that first authenticates a token is moved from its address's bucket to the token's. Agent tokens, which
//! ship output in many small requests, have their own, larger budget. A token that is revoked or expires
//! keeps its bucket until that is forgotten: it gains nothing it did not have while it was good (dropping the
//! bucket on a 401 would let a good token reset its budget through a route it is not good for).
//!
//! Buckets live in memory: a restart or a second server starts them afresh, which still bounds any one
//! client to a small multiple of the limit.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use crate::{
    auth::{self, AGENT_TOKEN_PREFIX},
    error::ApiError,
};

/// Buckets kept before full (idle) ones are forgotten; a full bucket is the same as none.
const MAX_BUCKETS: usize = 100_000;

/// Set on the response by the access check when the request's bearer token authenticated it, so that the
/// token is counted under its own bucket from then on.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// SHA-256 of a bearer token that has authenticated a request: the raw token is never kept.
    Token([u8; 32]),
    /// Requests from one address without a token, or with one that has not authenticated yet.
    Address(IpAddr),
    /// Shared by new clients while the table is full of active buckets, so memory stays bounded.
    Overflow,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    budget: Budget,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.budget.refill_per_second()).min(self.budget.capacity());
        self.updated = now;
    }

    /// Seconds until one request is available, or `Ok` if one is.
    fn check(&self) -> Result<(), u64> {
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.budget.refill_per_second()).ceil().max(1.0) as u64)
        }
    }
}

struct Buckets {
    by_key: HashMap<Key, Bucket>,
    pruned: Instant,
}

/// A budget: `per_minute` requests in a burst, refilled continuously at `per_minute` a minute.
#[derive(Debug, Clone, Copy)]
struct Budget {
    per_minute: u32,
}

impl Budget {
    fn capacity(self) -> f64 {
        f64::from(self.per_minute)
    }

    fn refill_per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

pub struct RateLimiter {
    users: Budget,
    agents: Budget,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    pub fn new(requests_per_minute: u32, agent_requests_per_minute: u32) -> RateLimiter {
        RateLimiter {
            users: Budget { per_minute: requests_per_minute },
            agents: Budget { per_minute: agent_requests_per_minute },
            buckets: Mutex::new(Buckets { by_key: HashMap::new(), pruned: Instant::now() }),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(seconds until one is available)` when it is empty.
    fn take(&self, key: Key, budget: Budget, now: Instant) -> Result<(), u64> {
        if budget.per_minute == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = buckets.admit(key, now);
        let bucket = buckets.by_key.entry(key).or_insert(Bucket { tokens: budget.capacity(), updated: now, budget });
        bucket.refill(now);
        bucket.check()?;
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Takes one request from `key`'s bucket if it has one; `None` if it has none.
    fn take_existing(&self, key: &Key, now: Instant) -> Option<Result<(), u64>> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.by_key.get_mut(key)?;
        if bucket.budget.per_minute == 0 {
            return Some(Ok(()));
        }
        bucket.refill(now);
        Some(bucket.check().map(|()| bucket.tokens -= 1.0))
    }

    /// Moves one request from `address`'s bucket to the bucket of the token it authenticated, creating that.
    fn charge_to_token(&self, address: Option<IpAddr>, token: Key, budget: Budget, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bucket) = address.and_then(|address| buckets.by_key.get_mut(&Key::Address(address))) {
            bucket.tokens = (bucket.tokens + 1.0).min(bucket.budget.capacity());
        }
        let key = buckets.admit(token, now);
        if key == Key::Overflow {
            // No room for the token's bucket: it stays counted under its address.
            return;
        }
        let bucket = buckets.by_key.entry(key).or_insert(Bucket { tokens: budget.capacity(), updated: now, budget });
        bucket.refill(now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

impl Buckets {
    /// The key to count under: `key` itself, unless the table is full of active buckets and `key` is new.
    /// Full buckets are forgotten at most once a second, so a flood of new clients cannot make every
    /// request scan the table.
    fn admit(&mut self, key: Key, now: Instant) -> Key {
        if self.by_key.len() < MAX_BUCKETS || self.by_key.contains_key(&key) {
            return key;
        }
        if now.saturating_duration_since(self.pruned) >= Duration::from_secs(1) {
            self.pruned = now;
            self.by_key.retain(|_, bucket| {
                bucket.refill(now);
                bucket.tokens < bucket.budget.capacity()
            });
        }
        if self.by_key.len() < MAX_BUCKETS { key } else { Key::Overflow }
    }
}

/// The address a client is counted under, here and by the login limits: IPv6 clients by their /64, since one
/// host usually holds a whole /64 and could otherwise take a fresh budget per address.
pub(crate) fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        v4 => v4,
    }
}

fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}

/// Counts every request against its authenticated token's or else its address's budget; answers 429 with
/// `Retry-After` when the budget is spent.
pub async fn limit_requests(State(limiter): State<Arc<RateLimiter>>, request: Request, next: Next) -> Response {
    let now = Instant::now();
    let (parts, body) = request.into_parts();
    // The client's address as resolved through trusted proxies (the peer's without any).
    let address = auth::client_ip(&parts).and_then(|ip| ip.parse::<IpAddr>().ok()).map(address_key);
    let request = Request::from_parts(parts, body);
    let token = bearer_token(&request).map(|token| {
        let budget = if token.starts_with(AGENT_TOKEN_PREFIX) { limiter.agents } else { limiter.users };
        (Key::Token(Sha256::digest(token.as_bytes()).into()), budget)
    });
    let counted_by_token = token.as_ref().and_then(|(key, _)| limiter.take_existing(key, now));
    let verdict = counted_by_token
        .unwrap_or_else(|| address.map_or(Ok(()), |address| limiter.take(Key::Address(address), limiter.users, now)));
    if let Err(retry_after_seconds) = verdict {
        return ApiError::TooManyRequests {
            detail: format!("too many requests: try again in {retry_after_seconds} s"),
            retry_after_seconds,
        }
        .into_response();
    }
    let response = next.run(request).await;
    if counted_by_token.is_none()
        && response.extensions().get::<Authenticated>().is_some()
        && let Some((key, budget)) = token
    {
        limiter.charge_to_token(address, key, budget, Instant::now());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long until the next request would pass.
    fn wait_after(limiter: &RateLimiter, key: Key, budget: Budget, now: Instant) -> Option<Duration> {
        limiter.take(key, budget, now).err().map(Duration::from_secs)
    }

    #[test]
    fn a_bucket_allows_a_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(3, 0);
        let key = || Key::Address("192.0.2.1".parse().unwrap());
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(wait_after(&limiter, key(), limiter.users, start), None);
        }
        assert_eq!(wait_after(&limiter, key(), limiter.users, start), Some(Duration::from_secs(20)));
        assert_eq!(wait_after(&limiter, key(), limiter.users, start + Duration::from_secs(20)), None);
        assert_eq!(wait_after(&limiter, Key::Address("192.0.2.2".parse().unwrap()), limiter.users, start), None);
        assert_eq!(wait_after(&limiter, key(), limiter.agents, start), None, "a budget of 0 is no limit");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn memory_stays_bounded_under_many_clients() {
        let limiter = RateLimiter::new(10, 0);
        let start = Instant::now();
        for n in 0..(MAX_BUCKETS as u32 + 10) {
            let key = Key::Address(IpAddr::V4(n.into()));
            let _ = limiter.take(key, limiter.users, start);
        }
        assert!(limiter.buckets.lock().unwrap().by_key.len() <= MAX_BUCKETS + 1);
    }
}
