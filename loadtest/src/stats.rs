//! Latency samples and their percentiles, as every scenario reports them.

use serde::{Deserialize, Serialize};

/// The percentiles a latency curve is drawn through: from the median to the maximum.
pub const CURVE_QUANTILES: [f64; 10] = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0];

/// A distribution of latencies in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// `(quantile, microseconds)` at [`CURVE_QUANTILES`], for charts.
    pub curve: Vec<(f64, u64)>,
}

impl Latency {
    /// Summarises `samples` (microseconds); sorts them in place.
    pub fn from_samples(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        if samples.is_empty() {
            return Self::default();
        }
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len() as u64,
            mean_us: sum as f64 / samples.len() as f64,
            p50_us: percentile(samples, 0.5),
            p99_us: percentile(samples, 0.99),
            p999_us: percentile(samples, 0.999),
            max_us: percentile(samples, 1.0),
            curve: CURVE_QUANTILES
                .iter()
                .map(|&q| (q, percentile(samples, q)))
                .collect(),
        }
    }

    pub fn p50_ms(&self) -> f64 {
        self.p50_us as f64 / 1000.0
    }

    pub fn p99_ms(&self) -> f64 {
        self.p99_us as f64 / 1000.0
    }

    pub fn p999_ms(&self) -> f64 {
        self.p999_us as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with at least `q` of the
/// samples at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `part / whole` in percent, 0 when `whole` is 0.
pub fn percent(part: f64, whole: f64) -> f64 {
    if whole == 0.0 {
        0.0
    } else {
        100.0 * part / whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        let latency = Latency::from_samples(&mut samples);
        assert_eq!(latency.count, 1000);
        assert_eq!(latency.p50_us, 500);
        assert_eq!(latency.p99_us, 990);
        assert_eq!(latency.p999_us, 999);
        assert_eq!(latency.max_us, 1000);
        assert_eq!(latency.curve.first(), Some(&(0.0, 1)));
        assert!((latency.mean_us - 500.5).abs() < 1e-9);
    }

    #[test]
    fn no_samples_give_zeros() {
        assert_eq!(Latency::from_samples(&mut []), Latency::default());
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.0), 7);
    }
}
