//! Per-client rate limiting: GCRA (a token bucket kept as one timestamp per client, the
//! "theoretical arrival time"), so a check is one hash-map lookup and a few integer operations.
//!
//! Memory is bounded: at most [`RateLimiter::MAX_CLIENTS`] clients are tracked (plus one shared
//! overflow bucket), each entry under 100 bytes, so about 1 MB in all. When the table is full, clients
//! whose bucket has refilled (idle: forgetting them changes nothing) are swept out, at most once a
//! second; if every tracked client is still active, new clients share the overflow bucket, so a flood
//! of new addresses can neither grow the table nor reset an active client's bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Who a request is charged to.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum ClientKey {
    /// The authenticated principal (API key hash prefix or JWT subject), as the first 128 bits of
    /// the SHA-256 of its full text: fixed size, and subjects that share a long prefix still get
    /// their own buckets.
    Principal([u8; 16]),
    /// The peer address; IPv6 by its /64 prefix (one host usually holds a whole /64).
    Address(IpAddr),
    /// New clients while the table is full of active ones.
    Overflow,
}

impl ClientKey {
    pub fn principal(name: &str) -> Self {
        let digest = Sha256::digest(name.as_bytes());
        Self::Principal(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
    }

    pub fn address(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => Self::Address(IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())),
            v4 => Self::Address(v4),
        }
    }
}

pub struct RateLimiter {
    /// Time one request uses up: 1 s / rate.
    interval_ns: u64,
    /// How far ahead of now a client's arrival time may run: burst × interval.
    tolerance_ns: u64,
    started: Instant,
    state: Mutex<Clients>,
}

struct Clients {
    /// Theoretical arrival time per client, in ns since `started`.
    arrival: HashMap<ClientKey, u64>,
    last_sweep_ns: u64,
}

impl RateLimiter {
    pub const MAX_CLIENTS: usize = 10_000;
    const SWEEP_EVERY_NS: u64 = 1_000_000_000;

    /// `None` when `requests_per_second` is 0 (rate limiting off).
    pub fn new(requests_per_second: u32, burst: u32) -> Option<Self> {
        if requests_per_second == 0 {
            return None;
        }
        let interval_ns = 1_000_000_000 / u64::from(requests_per_second);
        Some(Self {
            interval_ns,
            tolerance_ns: interval_ns * u64::from(burst.max(1)),
            started: Instant::now(),
            state: Mutex::new(Clients { arrival: HashMap::new(), last_sweep_ns: 0 }),
        })
    }

    /// Charges one request to `client`: `Err(wait)` when it is over its rate, `wait` being how long
    /// until it may send again.
    pub fn check(&self, client: ClientKey) -> Result<(), Duration> {
        self.check_at(client, self.started.elapsed().as_nanos() as u64)
    }

    fn check_at(&self, client: ClientKey, now: u64) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("rate limiter lock");
        let Clients { arrival, last_sweep_ns } = &mut *state;
        let arrival_time = match arrival.get_mut(&client) {
            Some(t) => t,
            None => {
                let mut client = client;
                if arrival.len() >= Self::MAX_CLIENTS {
                    if now.saturating_sub(*last_sweep_ns) >= Self::SWEEP_EVERY_NS {
                        *last_sweep_ns = now;
                        arrival.retain(|_, t| *t > now);
                    }
                    if arrival.len() >= Self::MAX_CLIENTS {
                        client = ClientKey::Overflow;
                    }
                }
                arrival.entry(client).or_insert(now)
            }
        };
        let next = (*arrival_time).max(now) + self.interval_ns;
        if next - now > self.tolerance_ns {
            return Err(Duration::from_nanos(next - now - self.tolerance_ns));
        }
        *arrival_time = next;
        Ok(())
    }

    /// How many clients are tracked now (for tests and the bound).
    pub fn tracked_clients(&self) -> usize {
        self.state.lock().expect("rate limiter lock").arrival.len()
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u32 {
    u32::try_from(wait.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn ip(text: &str) -> ClientKey {
        ClientKey::address(text.parse().unwrap())
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate_applies() {
        let limiter = RateLimiter::new(10, 5).unwrap();
        let a = || ip("10.0.0.1");
        assert!((0..5).all(|_| limiter.check_at(a(), 0).is_ok()));
        let wait = limiter.check_at(a(), 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(retry_after_seconds(wait), 1);
        // Another client has its own bucket.
        assert!(limiter.check_at(ip("10.0.0.2"), 0).is_ok());
        // One interval later, exactly one more request fits.
        assert!(limiter.check_at(a(), SECOND / 10).is_ok());
        assert!(limiter.check_at(a(), SECOND / 10).is_err());
        // After a full refill, a whole burst again.
        assert!((0..5).all(|_| limiter.check_at(a(), 10 * SECOND).is_ok()));
    }

    #[test]
    fn zero_rate_means_off_and_retry_after_rounds_up() {
        assert!(RateLimiter::new(0, 10).is_none());
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_slash_64_and_mapped_ipv4_by_the_ipv4_address() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn long_principals_that_share_a_prefix_have_their_own_buckets() {
        let limiter = RateLimiter::new(1, 1).unwrap();
        let prefix = format!("sub:{}", "é".repeat(100));
        let (alice, bob) = (format!("{prefix}alice"), format!("{prefix}bob"));
        assert_ne!(ClientKey::principal(&alice), ClientKey::principal(&bob));
        assert_eq!(ClientKey::principal(&alice), ClientKey::principal(&alice.clone()));
        assert!(limiter.check_at(ClientKey::principal(&alice), 0).is_ok());
        assert!(limiter.check_at(ClientKey::principal(&alice), 0).is_err());
        assert!(limiter.check_at(ClientKey::principal(&bob), 0).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_and_idle_clients_are_forgotten_first() {
        let limiter = RateLimiter::new(1, 1).unwrap();
        let client = |n: u32| ClientKey::address(IpAddr::V4(n.into()));
        for n in 0..RateLimiter::MAX_CLIENTS as u32 {
            assert!(limiter.check_at(client(n), 0).is_ok());
        }
        // Full of active clients: a flood of new ones shares one bucket and the table does not grow.
        assert!(limiter.check_at(client(1_000_000), SECOND / 2).is_ok());
        assert!(limiter.check_at(client(1_000_001), SECOND / 2).is_err());
        assert_eq!(limiter.tracked_clients(), RateLimiter::MAX_CLIENTS + 1);
        // An active client still has its own (empty) bucket: the flood did not reset it.
        assert!(limiter.check_at(client(7), SECOND / 2).is_err());
        // Two seconds on, everyone is idle: a sweep makes room and a new client gets its own bucket.
        assert!(limiter.check_at(client(2_000_000), 3 * SECOND).is_ok());
        assert!(limiter.tracked_clients() <= 2);
    }
}
