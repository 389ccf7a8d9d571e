//! Pauses before a sidecar asks etcd or the leader again after a failure: longer with each
//! failure in a row, and spread by a hash of the sidecar's id. A fleet that lost etcd at once
//! then does not come back at once, and an etcd too busy to answer in time is asked less, not
//! more: at 10,000 sidecars, retrying every second made a slow etcd let leases expire, whose
//! renewal wrote more, until it answered nobody (BENCHMARKS.md, "fleet").

use std::time::Duration;

/// The failures in a row of one retry loop, and the pause before its next attempt.
pub struct Backoff {
    id: String,
    first: Duration,
    most: Duration,
    failures: u32,
}

impl Backoff {
    /// The backoff of the sidecar `id`: pauses from `first` (spread over its second half) up to
    /// `most`.
    pub fn new(id: &str, first: Duration, most: Duration) -> Self {
        Self {
            id: id.to_string(),
            first,
            most,
            failures: 0,
        }
    }

    /// The pause after an attempt that ended having lasted `lasted`. One that held for twice
    /// the longest pause was a success that ended (a failover, etcd restarted), and the count
    /// of failures starts over.
    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted >= self.most * 2 {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        retry_delay(&self.id, self.failures, self.first, self.most)
    }
}

/// The pause after `failures` failures in a row (1 for the first): between half of and the
/// whole of `first` doubled for each failure after the first, at most `most`.
fn retry_delay(id: &str, failures: u32, first: Duration, most: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = first.saturating_mul(1 << doublings).min(most);
    let half = ceiling / 2;
    let spread_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), u64::from(failures));
    half + Duration::from_millis(hash % spread_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(2);
    const MOST: Duration = Duration::from_secs(8);

    #[test]
    fn the_pause_grows_with_failures_up_to_the_most() {
        for failures in 1..40 {
            let ceiling = FIRST.saturating_mul(1 << (failures - 1).min(16)).min(MOST);
            let delay = retry_delay("sidecar-1", failures, FIRST, MOST);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
    }

    #[test]
    fn an_attempt_that_held_starts_the_count_over() {
        let mut backoff = Backoff::new("sidecar-1", FIRST, MOST);
        let short = Duration::from_millis(10);
        assert!(backoff.after(short) <= FIRST);
        assert!(backoff.after(short) > FIRST);
        assert!(backoff.after(short) >= MOST / 2);
        assert!(backoff.after(MOST * 2) <= FIRST);
    }

    #[test]
    fn a_fleet_is_spread_over_the_pause() {
        let delays: std::collections::HashSet<Duration> = (0..1000)
            .map(|n| retry_delay(&format!("sidecar-{n}"), 3, FIRST, MOST))
            .collect();
        // Pauses between 4 and 8 s, at millisecond steps: a thousand sidecars land on hundreds
        // of distinct instants, not on one.
        assert!(delays.len() > 500, "{}", delays.len());
        assert!(delays.iter().all(|d| *d >= Duration::from_secs(4)));
    }
}
