//! Limits on what one caller may cost: token buckets per caller in a map of bounded size, the
//! per-caller rate limit of the admin APIs, and log lines that are written at most once a
//! second.
//!
//! These are the only state the coordinator keeps between requests that etcd does not have.
//! Losing it (a restart, another replica) costs nothing but a fresh allowance: it decides
//! nothing about releases.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The default of `--rate-limit-per-second`: generous, so that people, scripts, the dashboard
/// and the tests never meet it, while one caller still cannot monopolize the coordinator.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 200.0;
/// The default of `--rate-limit-burst`.
pub const DEFAULT_BURST: f64 = 400.0;
/// The most callers whose allowance is remembered. An idle caller's bucket is full, which is
/// the same as no bucket, so idle callers are forgotten first when the map is full.
pub const MAX_CALLERS: usize = 10_000;

/// How fast a bucket refills, and how many tokens it holds at most.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `count` tokens per `period`, and at most `count` at once.
    pub fn per(count: u32, period: Duration) -> Self {
        Self {
            per_second: f64::from(count) / period.as_secs_f64().max(f64::MIN_POSITIVE),
            burst: f64::from(count),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// The tokens the bucket holds at `now`.
    fn level(&self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

/// A token bucket per key, for at most `max_keys` keys.
///
/// A key that is not in the map has a full bucket. When a new key arrives and the map is full,
/// every key whose bucket has refilled is forgotten (that changes no answer); if none has, the
/// key that asked longest ago is. Memory stays bounded however many keys callers make up, and
/// with that many active callers the worst an attacker gains is a fresh allowance for one key.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token from `key`'s bucket at `now`. Without one, it says how long until the
    /// next token.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let rate = self.rate;
        // A poisoned lock only means that another request panicked while holding it; the
        // buckets are numbers that are valid at every step, so they are used as they are.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            buckets.retain(|_, bucket| bucket.level(rate, now) < rate.burst);
            if buckets.len() >= self.max_keys
                && let Some(oldest) = buckets
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.updated)
                    .map(|(key, _)| key.clone())
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            updated: now,
        });
        let level = bucket.level(rate, now);
        bucket.updated = now.max(bucket.updated);
        if level >= 1.0 {
            bucket.tokens = level - 1.0;
            return Ok(());
        }
        bucket.tokens = level;
        let wait = if rate.per_second > 0.0 {
            (1.0 - level) / rate.per_second
        } else {
            f64::from(u32::MAX)
        };
        // A wait that is not a number of seconds cannot occur with a validated rate; should it,
        // the caller waits long rather than the process panicking.
        Err(Duration::try_from_secs_f64(wait.min(f64::from(u32::MAX)))
            .unwrap_or(Duration::from_secs(u64::from(u32::MAX))))
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who a request is counted against by the rate limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// A user of the `--auth` file, named by the token it presented.
    User(String),
    /// A token the coordinator does not check (it runs without `--auth`), by its SHA-256.
    Token(String),
    /// Everyone else, by the address the request came from: an IPv4 address, or the /64
    /// network of an IPv6 address, since one host commonly holds a whole /64.
    Peer(IpAddr),
    /// A request whose peer address is unknown (it did not come over TCP).
    Unknown,
}

impl CallerKey {
    /// The caller of a request from `peer`: IPv6 addresses are counted by their /64.
    pub fn peer(peer: Option<IpAddr>) -> Self {
        match peer {
            Some(IpAddr::V6(address)) => match address.to_ipv4_mapped() {
                Some(v4) => CallerKey::Peer(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(address) & !((1u128 << 64) - 1);
                    CallerKey::Peer(IpAddr::V6(network.into()))
                }
            },
            Some(address) => CallerKey::Peer(address),
            None => CallerKey::Unknown,
        }
    }

    /// The kind of caller, as the metric's `caller` label: `user`, `token` or `peer`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallerKey::User(_) => "user",
            CallerKey::Token(_) => "token",
            CallerKey::Peer(_) | CallerKey::Unknown => "peer",
        }
    }

    /// The caller as a message names it: never a token or its hash.
    pub fn describe(&self) -> String {
        match self {
            CallerKey::User(name) => format!("user {name}"),
            CallerKey::Token(_) => "this token".to_string(),
            CallerKey::Peer(address) => format!("address {address}"),
            CallerKey::Unknown => "this caller".to_string(),
        }
    }
}

/// The rate limit of the admin APIs, per caller (`--rate-limit-per-second`,
/// `--rate-limit-burst`). A rate of 0 turns it off.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Option<KeyedBuckets<CallerKey>>,
}

/// A request over the caller's rate limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Limited {
    /// Whole seconds until the caller may send a request again; at least 1.
    pub retry_after_seconds: u64,
    pub rate: Rate,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        let on = rate.per_second > 0.0 && rate.burst >= 1.0;
        Self {
            buckets: on.then(|| KeyedBuckets::new(rate, MAX_CALLERS)),
        }
    }

    /// A limiter that admits everything.
    pub fn off() -> Self {
        Self { buckets: None }
    }

    pub fn is_on(&self) -> bool {
        self.buckets.is_some()
    }

    /// Counts one request of `caller`, or refuses it with the time to wait.
    pub fn check(&self, caller: &CallerKey, now: Instant) -> Result<(), Limited> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        buckets.take(caller, now).map_err(|wait| Limited {
            // Retry-After takes whole seconds; rounding up never invites a retry too early.
            retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
            rate: buckets.rate(),
        })
    }

    /// How many callers are remembered.
    pub fn callers(&self) -> usize {
        self.buckets.as_ref().map_or(0, KeyedBuckets::len)
    }
}

/// A log line written at most once per interval: the events in between are counted, and the
/// next line says how many there were. A flood of refused requests therefore costs one log
/// line a second, not one per request.
#[derive(Debug)]
pub struct QuietLog {
    interval: Duration,
    state: Mutex<QuietState>,
}

#[derive(Debug)]
struct QuietState {
    last: Option<Instant>,
    suppressed: u64,
}

impl QuietLog {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(QuietState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether to write this event's line now. `Some(n)` means write it, saying that `n`
    /// events since the last line were not written; `None` means count it and stay quiet.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let buckets = KeyedBuckets::new(rate(2.0, 3.0), 10);
        let start = Instant::now();
        let key = "alice".to_string();
        for _ in 0..3 {
            assert_eq!(buckets.take(&key, start), Ok(()));
        }
        let wait = buckets.take(&key, start).expect_err("over the burst");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        assert_eq!(buckets.take(&key, later), Ok(()));
        assert!(buckets.take(&key, later).is_err());
        // Another key has its own bucket.
        assert_eq!(buckets.take(&"bob".to_string(), later), Ok(()));
        // A long pause refills to the burst, never beyond.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(buckets.take(&key, much_later), Ok(()));
        }
        assert!(buckets.take(&key, much_later).is_err());
    }

    #[test]
    fn a_few_per_minute() {
        let buckets = KeyedBuckets::new(Rate::per(5, Duration::from_secs(60)), 10);
        let start = Instant::now();
        let key = "vera".to_string();
        let allowed = (0..1000)
            .filter(|_| buckets.take(&key, start).is_ok())
            .count();
        assert_eq!(allowed, 5);
        assert!(buckets.take(&key, start + Duration::from_secs(11)).is_err());
        assert!(buckets.take(&key, start + Duration::from_secs(12)).is_ok());
    }

    #[test]
    fn the_map_stays_bounded_and_forgets_idle_callers_first() {
        let buckets = KeyedBuckets::new(rate(1.0, 2.0), 3);
        let start = Instant::now();
        // Three callers: a and b use up their allowance, c takes one token.
        for key in ["a", "a", "b", "b", "c"] {
            assert!(buckets.take(&key.to_string(), start).is_ok());
        }
        assert_eq!(buckets.len(), 3);
        // A fourth caller makes room by forgetting the least recently seen: a.
        assert!(buckets.take(&"d".to_string(), start).is_ok());
        assert_eq!(buckets.len(), 3);
        // Three seconds on, every bucket has refilled: all are forgotten for the next newcomer.
        let later = start + Duration::from_secs(3);
        assert!(buckets.take(&"e".to_string(), later).is_ok());
        assert_eq!(buckets.len(), 1);
        // A flood of made-up keys never grows the map past its bound.
        for i in 0..10_000 {
            let _ = buckets.take(&format!("k{i}"), later);
        }
        assert_eq!(buckets.len(), 3);
    }

    #[test]
    fn the_busy_callers_keep_their_state_when_the_map_is_full() {
        let buckets = KeyedBuckets::new(rate(1.0, 2.0), 2);
        let start = Instant::now();
        let busy = "busy".to_string();
        assert!(buckets.take(&busy, start).is_ok());
        assert!(buckets.take(&busy, start).is_ok());
        // A newcomer, x, fills the map. busy asks again (and is refused), so when y arrives x
        // is the caller that asked longest ago, and x is forgotten: busy keeps its empty bucket.
        assert!(buckets.take(&"x".to_string(), start).is_ok());
        let t1 = start + Duration::from_millis(10);
        assert!(buckets.take(&busy, t1).is_err());
        assert!(buckets.take(&"y".to_string(), t1).is_ok());
        assert!(
            buckets.take(&busy, t1).is_err(),
            "busy kept its empty bucket"
        );
    }

    #[test]
    fn the_limiter_rounds_the_wait_up_and_can_be_off() {
        let limiter = RateLimiter::new(rate(0.5, 1.0));
        let caller = CallerKey::User("alice".into());
        let now = Instant::now();
        assert!(limiter.check(&caller, now).is_ok());
        let limited = limiter.check(&caller, now).expect_err("limited");
        assert_eq!(limited.retry_after_seconds, 2);
        assert_eq!(limiter.callers(), 1);
        let fast = RateLimiter::new(rate(100.0, 1.0));
        assert!(fast.check(&caller, now).is_ok());
        assert_eq!(
            fast.check(&caller, now)
                .expect_err("limited")
                .retry_after_seconds,
            1
        );
        for off in [RateLimiter::off(), RateLimiter::new(rate(0.0, 400.0))] {
            assert!(!off.is_on());
            for _ in 0..1000 {
                assert!(off.check(&caller, now).is_ok());
            }
            assert_eq!(off.callers(), 0);
        }
    }

    #[test]
    fn peers_are_counted_by_address_and_ipv6_by_network() {
        let v4 = CallerKey::peer(Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        assert_eq!(v4, CallerKey::Peer("10.1.2.3".parse().expect("ip")));
        let a = CallerKey::peer(Some("2001:db8:1:2::1".parse().expect("ip")));
        let b = CallerKey::peer(Some("2001:db8:1:2:ffff::9".parse().expect("ip")));
        let c = CallerKey::peer(Some("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = CallerKey::peer(Some(IpAddr::V6(
            Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped(),
        )));
        assert_eq!(mapped, v4);
        assert_eq!(CallerKey::peer(None), CallerKey::Unknown);
        assert_eq!(
            CallerKey::peer(Some(Ipv6Addr::LOCALHOST.into())).kind(),
            "peer"
        );
        assert_eq!(CallerKey::Token("ab".into()).describe(), "this token");
        assert_eq!(CallerKey::User("bob".into()).describe(), "user bob");
    }

    #[test]
    fn a_quiet_log_writes_once_per_interval_and_counts_the_rest() {
        let log = QuietLog::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(log.allow(start), Some(0));
        for i in 1..=99 {
            assert_eq!(log.allow(start + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(log.allow(start + Duration::from_secs(1)), Some(99));
        assert_eq!(log.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(log.allow(start + Duration::from_secs(5)), Some(1));
    }
}
