//! The health judge's decision, as a pure function of counts: the coordinator applies it to
//! what sidecars report, and the load test runs it on simulated traffic to measure its false
//! and missed rollbacks.
//!
//! A canary breaches when, over the window, it has at least `min_requests` outcomes, its error
//! rate is above the policy's `max_error_rate`, and it is significantly above the baseline's
//! (one-sided two-proportion z-test, z > `Z_THRESHOLD`, so that noise on a healthy canary
//! almost never breaches). Too little data is never a pass.

use serde::{Deserialize, Serialize};

use crate::types::Policy;

/// One-sided z above which the canary is significantly worse than the baseline (p < 0.0014).
pub const Z_THRESHOLD: f64 = 3.0;

/// Outcomes counted over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub errors: u64,
}

impl Counts {
    pub fn requests(self) -> u64 {
        self.ok.saturating_add(self.errors)
    }

    /// The error rate; 0 with no requests.
    pub fn error_rate(self) -> f64 {
        match self.requests() {
            0 => 0.0,
            n => self.errors as f64 / n as f64,
        }
    }

    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            ok: self.ok.saturating_add(other.ok),
            errors: self.errors.saturating_add(other.errors),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Fewer outcomes than the policy needs: hold, never advance.
    Insufficient,
    Pass,
    Breach,
}

/// A verdict with its evidence, recorded in the audit trail for automatic actions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub candidate: Counts,
    pub candidate_error_rate: f64,
    pub baseline: Counts,
    pub baseline_error_rate: f64,
    /// The z score of candidate against baseline; `None` when the baseline has too little data.
    pub z: Option<f64>,
    pub reason: String,
}

/// Judges a candidate version (the canary, or the newly active version during the bake time)
/// against a baseline (the active version during a canary, or the previous one's last window).
pub fn judge(policy: &Policy, candidate: Counts, baseline: Counts) -> Verdict {
    let rate = candidate.error_rate();
    let baseline_rate = baseline.error_rate();
    let verdict = |outcome, z, reason: String| Verdict {
        outcome,
        candidate,
        candidate_error_rate: rate,
        baseline,
        baseline_error_rate: baseline_rate,
        z,
        reason,
    };
    if candidate.requests() < policy.min_requests {
        return verdict(
            Outcome::Insufficient,
            None,
            format!(
                "{} outcomes of the candidate in the window, {} needed",
                candidate.requests(),
                policy.min_requests
            ),
        );
    }
    let z = (baseline.requests() >= policy.min_requests).then(|| z_score(candidate, baseline));
    if rate <= policy.max_error_rate {
        return verdict(
            Outcome::Pass,
            z,
            format!(
                "error rate {} is within the policy's {}",
                pct(rate),
                pct(policy.max_error_rate)
            ),
        );
    }
    match z {
        Some(z) if z <= Z_THRESHOLD => verdict(
            Outcome::Pass,
            Some(z),
            format!(
                "error rate {} is over {} but not significantly above the baseline's {} (z {z:.2})",
                pct(rate),
                pct(policy.max_error_rate),
                pct(baseline_rate)
            ),
        ),
        Some(z) => verdict(
            Outcome::Breach,
            Some(z),
            format!(
                "error rate {} is over {} and significantly above the baseline's {} (z {z:.2})",
                pct(rate),
                pct(policy.max_error_rate),
                pct(baseline_rate)
            ),
        ),
        None => verdict(
            Outcome::Breach,
            None,
            format!(
                "error rate {} is over {} (the baseline has too little data to compare)",
                pct(rate),
                pct(policy.max_error_rate)
            ),
        ),
    }
}

/// One-sided two-proportion z score of `candidate` being worse than `baseline`.
fn z_score(candidate: Counts, baseline: Counts) -> f64 {
    let (n1, n2) = (candidate.requests() as f64, baseline.requests() as f64);
    let pooled = (candidate.errors as f64 + baseline.errors as f64) / (n1 + n2);
    let spread = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let difference = candidate.error_rate() - baseline.error_rate();
    if spread == 0.0 {
        return if difference > 0.0 { f64::INFINITY } else { 0.0 };
    }
    difference / spread
}

fn pct(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_error_rate: 0.05,
            min_requests: 100,
            window_seconds: 10,
            bake_seconds: 60,
            ..Policy::default()
        }
    }

    fn counts(ok: u64, errors: u64) -> Counts {
        Counts { ok, errors }
    }

    #[test]
    fn too_little_data_is_never_a_pass() {
        let verdict = judge(&policy(), counts(99, 0), counts(10_000, 0));
        assert_eq!(verdict.outcome, Outcome::Insufficient);
        let verdict = judge(&policy(), counts(0, 99), counts(10_000, 0));
        assert_eq!(verdict.outcome, Outcome::Insufficient);
    }

    #[test]
    fn a_clear_regression_breaches() {
        let verdict = judge(&policy(), counts(70, 30), counts(1_000, 0));
        assert_eq!(verdict.outcome, Outcome::Breach, "{verdict:?}");
        assert!(verdict.z.is_some_and(|z| z > Z_THRESHOLD));
    }

    #[test]
    fn a_healthy_canary_passes_even_when_noisy() {
        assert_eq!(
            judge(&policy(), counts(990, 10), counts(990, 10)).outcome,
            Outcome::Pass
        );
        // Over the ceiling, but no worse than a baseline that suffers the same outage.
        assert_eq!(
            judge(&policy(), counts(900, 100), counts(9_000, 1_000)).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn without_a_baseline_the_ceiling_decides() {
        assert_eq!(
            judge(&policy(), counts(80, 20), counts(0, 0)).outcome,
            Outcome::Breach
        );
        assert_eq!(
            judge(&policy(), counts(98, 2), counts(0, 0)).outcome,
            Outcome::Pass
        );
    }
}
