//! The `judge` scenario: how often the health judge rolls back a healthy canary, how fast it
//! catches a bad one, and how often it has too little traffic to judge at all, measured on
//! simulated traffic evaluated the way the coordinator's leader runs the judge.
//!
//! The model. Time is simulated in whole seconds from the canary's start. Each second, each
//! version (the canary, and the baseline: the active version) receives a Poisson number of
//! requests, `rps` in total with `canary_percent` of it on the canary, and each request errs
//! independently with the version's error rate. By Poisson thinning, a second's errors and
//! successes are then two independent Poisson counts with means `λp` and `λ(1 − p)`, which is how
//! they are drawn: exactly that distribution, with no binomial sampler. Every `tick_seconds` the
//! leader sums each version's counts over the last `window_seconds` (the policy's) and calls
//! [`judge`]; both windows start empty, like a new canary's. A run ends at the first `Breach` or
//! after `duration_seconds`.
//!
//! Everything here is a pure function of its arguments and a seed. Each run draws from its own
//! generator, seeded from the seed, the scenario, the traffic and the run's index, but not from
//! the policy: every policy is measured on the same traffic (common random numbers), so the
//! differences between policies are not sampling noise, and no result depends on the number of
//! threads.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use switchboard_proto::Policy;
use switchboard_proto::judge::{Counts, Outcome, Z_THRESHOLD, judge};

mod stats;

pub use stats::*;

/// Below this mean the Poisson sampler multiplies uniforms (Knuth); from it on it uses PTRS.
pub const PTRS_MIN_LAMBDA: f64 = 10.0;

/// The share of windows that must reach `min_requests` for the sizing advice.
pub const SIZING_CONFIDENCE: f64 = 0.99;

/// A pair of error rates to measure the judge on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub canary_error_rate: f64,
    pub baseline_error_rate: f64,
}

/// The scenarios of the default table.
pub const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "false_rollback",
        description: "both versions at 1% errors: every breach is a false rollback",
        canary_error_rate: 0.01,
        baseline_error_rate: 0.01,
    },
    Scenario {
        name: "detection",
        description: "canary at 30% errors, baseline at 1%: every run should breach, fast",
        canary_error_rate: 0.30,
        baseline_error_rate: 0.01,
    },
    Scenario {
        name: "subtle",
        description: "canary at 3% errors, baseline at 1%: under the 5% ceiling, over the 2% one",
        canary_error_rate: 0.03,
        baseline_error_rate: 0.01,
    },
];

/// A policy with the short label the table shows for it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NamedPolicy {
    pub label: String,
    pub policy: Policy,
}

impl NamedPolicy {
    /// Labels a policy `5%/500/60s` (ceiling, min requests, window), prefixed `default ` when it
    /// judges like the default policy.
    pub fn new(policy: Policy) -> NamedPolicy {
        let defaults = Policy::default();
        let is_default = policy.max_error_rate == defaults.max_error_rate
            && policy.min_requests == defaults.min_requests
            && policy.window_seconds == defaults.window_seconds;
        let label = format!(
            "{}{}%/{}/{}s",
            if is_default { "default " } else { "" },
            (policy.max_error_rate * 10_000.0).round() / 100.0,
            policy.min_requests,
            policy.window_seconds
        );
        NamedPolicy { label, policy }
    }
}

/// The default policy and alternatives that trade sample size, window and ceiling.
pub fn default_policies() -> Vec<NamedPolicy> {
    let base = Policy::default();
    [
        base.clone(),
        Policy {
            min_requests: 100,
            window_seconds: 60,
            ..base.clone()
        },
        // The first default, kept for comparison: it starves the judge at low traffic.
        Policy {
            min_requests: 500,
            window_seconds: 60,
            ..base.clone()
        },
        Policy {
            max_error_rate: 0.02,
            ..base.clone()
        },
        Policy {
            max_error_rate: 0.02,
            min_requests: 100,
            window_seconds: 60,
            ..base
        },
    ]
    .into_iter()
    .map(NamedPolicy::new)
    .collect()
}

/// Parses `MAX_ERROR_RATE/MIN_REQUESTS/WINDOW_SECONDS`, e.g. `0.05/500/60`; the bake time
/// keeps its default (the simulation does not use it).
pub fn parse_policy(text: &str) -> Result<NamedPolicy, String> {
    let parts: Vec<&str> = text.split('/').map(str::trim).collect();
    let [rate, min, window] = parts.as_slice() else {
        return Err(format!(
            "policy {text:?} is not MAX_ERROR_RATE/MIN_REQUESTS/WINDOW_SECONDS"
        ));
    };
    let policy = Policy {
        max_error_rate: rate
            .parse()
            .map_err(|e| format!("max error rate {rate:?}: {e}"))?,
        min_requests: min
            .parse()
            .map_err(|e| format!("min requests {min:?}: {e}"))?,
        window_seconds: window
            .parse()
            .map_err(|e| format!("window {window:?}: {e}"))?,
        ..Policy::default()
    };
    policy.validate()?;
    Ok(NamedPolicy::new(policy))
}

/// Total traffic and the canary's share of it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Traffic {
    /// Requests per second over both versions.
    pub rps: f64,
    /// Percent of the requests served by the canary, 0 to 100.
    pub canary_percent: f64,
}

impl Traffic {
    pub fn canary_rps(self) -> f64 {
        self.rps * self.canary_percent / 100.0
    }

    pub fn baseline_rps(self) -> f64 {
        self.rps - self.canary_rps()
    }
}

/// How long a run lasts and how often the leader judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    pub duration_seconds: u64,
    pub tick_seconds: u64,
}

/// What one run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunOutcome {
    /// Seconds from the canary's start to the first `Breach`, if any.
    pub breach_at: Option<u64>,
    /// Seconds from the canary's start to the first verdict other than `Insufficient`.
    pub first_verdict_at: Option<u64>,
}

/// Simulates one canary under `policy` until its first breach or the end of `timing`.
pub fn simulate_run<R: Rng + ?Sized>(
    policy: &Policy,
    traffic: Traffic,
    scenario: &Scenario,
    timing: Timing,
    rng: &mut R,
) -> RunOutcome {
    // Per-second means of [canary ok, canary errors, baseline ok, baseline errors].
    let (canary, baseline) = (traffic.canary_rps(), traffic.baseline_rps());
    let means = [
        canary * (1.0 - scenario.canary_error_rate),
        canary * scenario.canary_error_rate,
        baseline * (1.0 - scenario.baseline_error_rate),
        baseline * scenario.baseline_error_rate,
    ];
    // `Policy::validate` bounds the window to a day.
    let window = policy.window_seconds.clamp(1, 86_400) as usize;
    let tick = timing.tick_seconds.max(1);
    // The last `window` seconds, and their sums.
    let mut ring = vec![[0u64; 4]; window];
    let mut sums = [0u64; 4];
    let mut outcome = RunOutcome::default();
    for t in 1..=timing.duration_seconds {
        let slot = &mut ring[((t - 1) % window as u64) as usize];
        for (i, mean) in means.iter().enumerate() {
            let count = poisson(rng, *mean);
            sums[i] = sums[i] - slot[i] + count;
            slot[i] = count;
        }
        if t % tick != 0 {
            continue;
        }
        let candidate = Counts {
            ok: sums[0],
            errors: sums[1],
        };
        let baseline = Counts {
            ok: sums[2],
            errors: sums[3],
        };
        match judge(policy, candidate, baseline).outcome {
            Outcome::Insufficient => {}
            Outcome::Pass => {
                outcome.first_verdict_at.get_or_insert(t);
            }
            Outcome::Breach => {
                outcome.first_verdict_at.get_or_insert(t);
                outcome.breach_at = Some(t);
                break;
            }
        }
    }
    outcome
}

/// The seed of one run's generator: independent of the policy, so that every policy sees the
/// same traffic.
pub fn run_seed(seed: u64, scenario: &Scenario, traffic: Traffic, run: u64) -> u64 {
    let parts = [
        fnv1a(scenario.name.as_bytes()),
        scenario.canary_error_rate.to_bits(),
        scenario.baseline_error_rate.to_bits(),
        traffic.rps.to_bits(),
        traffic.canary_percent.to_bits(),
        run,
    ];
    parts
        .iter()
        .fold(splitmix64(seed), |state, part| splitmix64(state ^ part))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `runs` independent runs on up to `threads` threads, in run order.
pub fn simulate_runs(
    policy: &Policy,
    traffic: Traffic,
    scenario: &Scenario,
    timing: Timing,
    runs: u64,
    seed: u64,
    threads: usize,
) -> Vec<RunOutcome> {
    let one = |run: u64| {
        let mut rng = StdRng::seed_from_u64(run_seed(seed, scenario, traffic, run));
        simulate_run(policy, traffic, scenario, timing, &mut rng)
    };
    let threads = (threads.max(1) as u64).min(runs.max(1));
    if threads == 1 {
        return (0..runs).map(one).collect();
    }
    let per_thread = runs.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (start, end) = ((i * per_thread).min(runs), ((i + 1) * per_thread).min(runs));
                scope.spawn(move || (start..end).map(one).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The 50th and 99th percentiles (nearest rank) and the maximum, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quantiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Quantiles {
    /// `None` for no values.
    pub fn of(mut values: Vec<u64>) -> Option<Quantiles> {
        values.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[index]
        };
        let max = *values.last()?;
        Some(Quantiles {
            p50: rank(0.50),
            p99: rank(0.99),
            max,
        })
    }
}

/// One row of the table: one policy, one traffic level, one scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measurement {
    pub policy: String,
    pub policy_settings: Policy,
    pub rps: f64,
    pub canary_percent: f64,
    pub scenario: &'static str,
    pub canary_error_rate: f64,
    pub baseline_error_rate: f64,
    pub runs: u64,
    /// Runs with at least one `Breach`.
    pub breaches: u64,
    pub breach_rate: f64,
    /// Wilson score interval of the breach rate, 95%.
    pub breach_rate_ci95: [f64; 2],
    /// Runs whose verdicts were all `Insufficient` throughout the first window: the judge was
    /// starved when a canary is most dangerous.
    pub starved_first_window: u64,
    pub starved_rate: f64,
    /// Runs whose verdicts were all `Insufficient` for the whole run (or until they breached,
    /// which cannot happen without a verdict): the judge never judged.
    pub never_judged: u64,
    pub never_judged_rate: f64,
    /// Seconds from the canary's start to the first verdict other than `Insufficient`.
    pub first_verdict_seconds: Option<Quantiles>,
    /// Seconds from the canary's start to the breach, over the runs that breached.
    pub detection_seconds: Option<Quantiles>,
}

/// Measures one row.
pub fn measure(
    policy: &NamedPolicy,
    traffic: Traffic,
    scenario: &Scenario,
    timing: Timing,
    runs: u64,
    seed: u64,
    threads: usize,
) -> Measurement {
    let outcomes = simulate_runs(
        &policy.policy,
        traffic,
        scenario,
        timing,
        runs,
        seed,
        threads,
    );
    let window = policy.policy.window_seconds;
    let count = |f: &dyn Fn(&RunOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as u64;
    let breaches = count(&|o| o.breach_at.is_some());
    let starved = count(&|o| o.first_verdict_at.is_none_or(|t| t > window));
    let never = count(&|o| o.first_verdict_at.is_none());
    let share = |n: u64| {
        if runs == 0 {
            0.0
        } else {
            n as f64 / runs as f64
        }
    };
    Measurement {
        policy: policy.label.clone(),
        policy_settings: policy.policy.clone(),
        rps: traffic.rps,
        canary_percent: traffic.canary_percent,
        scenario: scenario.name,
        canary_error_rate: scenario.canary_error_rate,
        baseline_error_rate: scenario.baseline_error_rate,
        runs,
        breaches,
        breach_rate: share(breaches),
        breach_rate_ci95: wilson_interval(breaches, runs),
        starved_first_window: starved,
        starved_rate: share(starved),
        never_judged: never,
        never_judged_rate: share(never),
        first_verdict_seconds: Quantiles::of(
            outcomes.iter().filter_map(|o| o.first_verdict_at).collect(),
        ),
        detection_seconds: Quantiles::of(outcomes.iter().filter_map(|o| o.breach_at).collect()),
    }
}

/// Whether a policy's `min_requests` fits its window at a traffic level, from the Poisson
/// distribution of the canary's requests in one full window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sizing {
    pub policy: String,
    pub rps: f64,
    pub canary_rps: f64,
    pub min_requests: u64,
    pub window_seconds: u64,
    /// Mean canary requests in one full window.
    pub expected_per_window: f64,
    /// Probability that one full window holds at least `min_requests` canary requests.
    pub p_window_reaches_min: f64,
    /// The shortest window (s) that reaches `min_requests` with probability
    /// `SIZING_CONFIDENCE`; `None` beyond a day.
    pub window_needed_seconds: Option<u64>,
    /// The largest `min_requests` that the policy's window reaches with probability
    /// `SIZING_CONFIDENCE`.
    pub max_min_requests_for_window: u64,
}

pub fn sizing(policy: &NamedPolicy, traffic: Traffic) -> Sizing {
    let canary_rps = traffic.canary_rps();
    let (min, window) = (policy.policy.min_requests, policy.policy.window_seconds);
    let reaches =
        |seconds: u64| poisson_at_least(canary_rps * seconds as f64, min) >= SIZING_CONFIDENCE;
    const LONGEST: u64 = 86_400;
    let window_needed_seconds = reaches(LONGEST).then(|| {
        let (mut low, mut high) = (0, LONGEST); // reaches(high), and low == 0 or !reaches(low)
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if reaches(middle) {
                high = middle;
            } else {
                low = middle;
            }
        }
        high
    });
    Sizing {
        policy: policy.label.clone(),
        rps: traffic.rps,
        canary_rps,
        min_requests: min,
        window_seconds: window,
        expected_per_window: canary_rps * window as f64,
        p_window_reaches_min: poisson_at_least(canary_rps * window as f64, min),
        window_needed_seconds,
        max_min_requests_for_window: poisson_lower_quantile(
            canary_rps * window as f64,
            1.0 - SIZING_CONFIDENCE,
        ),
    }
}

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct TableConfig {
    pub runs: u64,
    pub seed: u64,
    pub rps: Vec<f64>,
    pub canary_percent: f64,
    pub timing: Timing,
    pub policies: Vec<NamedPolicy>,
    pub scenarios: Vec<Scenario>,
    /// Worker threads; the results do not depend on it.
    pub threads: usize,
}

impl TableConfig {
    /// Checks the ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.runs == 0 {
            return Err("runs must be at least 1".into());
        }
        if self.rps.is_empty() {
            return Err("at least one rps is needed".into());
        }
        if let Some(rps) = self
            .rps
            .iter()
            .find(|rps| !(rps.is_finite() && **rps > 0.0))
        {
            return Err(format!("rps {rps} must be a positive number"));
        }
        if !(self.canary_percent > 0.0 && self.canary_percent <= 100.0) {
            return Err(format!(
                "canary-percent {} must be above 0 and at most 100",
                self.canary_percent
            ));
        }
        if self.timing.tick_seconds == 0 {
            return Err("tick-seconds must be at least 1".into());
        }
        if self.timing.duration_seconds < self.timing.tick_seconds {
            return Err(format!(
                "duration-seconds {} must be at least one tick ({} s)",
                self.timing.duration_seconds, self.timing.tick_seconds
            ));
        }
        for policy in &self.policies {
            policy
                .policy
                .validate()
                .map_err(|e| format!("policy {}: {e}", policy.label))?;
        }
        Ok(())
    }
}

/// The whole measurement, as written to JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub model: &'static str,
    pub seed: u64,
    pub runs: u64,
    pub canary_percent: f64,
    pub duration_seconds: u64,
    pub tick_seconds: u64,
    pub z_threshold: f64,
    pub scenarios: Vec<Scenario>,
    pub rows: Vec<Measurement>,
    pub sizing: Vec<Sizing>,
}

/// Measures every policy at every traffic level in every scenario. `progress` is called before
/// each row with its index and the number of rows.
pub fn run_table(config: &TableConfig, progress: &mut dyn FnMut(usize, usize)) -> Report {
    let total = config.policies.len() * config.rps.len() * config.scenarios.len();
    let mut rows = Vec::with_capacity(total);
    let mut sizings = Vec::new();
    for policy in &config.policies {
        for &rps in &config.rps {
            let traffic = Traffic {
                rps,
                canary_percent: config.canary_percent,
            };
            sizings.push(sizing(policy, traffic));
            for scenario in &config.scenarios {
                progress(rows.len(), total);
                rows.push(measure(
                    policy,
                    traffic,
                    scenario,
                    config.timing,
                    config.runs,
                    config.seed,
                    config.threads,
                ));
            }
        }
    }
    Report {
        scenario: "judge",
        model: "Poisson requests per second per version, independent errors, leader judges \
                the sliding-window sums every tick, windows start empty, a run stops at its \
                first breach",
        seed: config.seed,
        runs: config.runs,
        canary_percent: config.canary_percent,
        duration_seconds: config.timing.duration_seconds,
        tick_seconds: config.timing.tick_seconds,
        z_threshold: Z_THRESHOLD,
        scenarios: config.scenarios.clone(),
        rows,
        sizing: sizings,
    }
}

/// The report as a readable text table.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "judge simulation: seed {}, {} runs per row, canary {}% of traffic, {} s per run, judged every {} s, z > {}",
        report.seed,
        report.runs,
        report.canary_percent,
        report.duration_seconds,
        report.tick_seconds,
        report.z_threshold
    );
    for scenario in &report.scenarios {
        let _ = writeln!(out, "  {:<15} {}", scenario.name, scenario.description);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:>6}  {:<15} {:>5}  {:>7}  {:<15}  {:>7}  {:>8}  {:>11}  {:>10}  {:>6}  {:>6}",
        "policy",
        "rps",
        "scenario",
        "runs",
        "breach",
        "95% CI",
        "starved",
        "unjudged",
        "verdict p50",
        "detect p50",
        "p99",
        "max"
    );
    let mut previous: Option<(&str, f64)> = None;
    for row in &report.rows {
        if previous.is_some_and(|p| p != (row.policy.as_str(), row.rps)) {
            let _ = writeln!(out);
        }
        previous = Some((row.policy.as_str(), row.rps));
        let seconds =
            |value: Option<u64>| value.map_or_else(|| "-".to_string(), |s| format!("{s} s"));
        let detection = row.detection_seconds;
        let _ = writeln!(
            out,
            "{:<20} {:>6}  {:<15} {:>5}  {:>7}  {:<15}  {:>7}  {:>8}  {:>11}  {:>10}  {:>6}  {:>6}",
            row.policy,
            row.rps,
            row.scenario,
            row.runs,
            percent(row.breach_rate),
            format!(
                "{}-{}",
                percent(row.breach_rate_ci95[0]),
                percent(row.breach_rate_ci95[1])
            ),
            percent(row.starved_rate),
            percent(row.never_judged_rate),
            seconds(row.first_verdict_seconds.map(|q| q.p50)),
            seconds(detection.map(|q| q.p50)),
            seconds(detection.map(|q| q.p99)),
            seconds(detection.map(|q| q.max)),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "breach:      runs with any Breach (in false_rollback, every one is a false rollback)\n\
         starved:     runs whose every verdict in the first window was Insufficient\n\
         unjudged:    runs whose every verdict was Insufficient, for the whole run\n\
         verdict p50: time from the canary's start to its first Pass or Breach\n\
         detect:      time from the canary's start to the Breach, over the runs that breached"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "sizing: canary requests in one full window (Poisson); \"window needed\" and \"min_requests fits\" \
         mean reached in {:.0}% of windows",
        SIZING_CONFIDENCE * 100.0
    );
    let _ = writeln!(
        out,
        "{:<20} {:>6}  {:>12}  {:>12}  {:>10}  {:>14}  {:>18}",
        "policy",
        "rps",
        "canary req/s",
        "per window",
        "P(>= min)",
        "window needed",
        "min_requests fits"
    );
    for sizing in &report.sizing {
        let _ = writeln!(
            out,
            "{:<20} {:>6}  {:>12}  {:>12}  {:>10}  {:>14}  {:>18}",
            sizing.policy,
            sizing.rps,
            format!("{:.1}", sizing.canary_rps),
            format!("{:.0}", sizing.expected_per_window),
            percent(sizing.p_window_reaches_min),
            sizing
                .window_needed_seconds
                .map_or_else(|| "> 1 day".to_string(), |s| format!("{s} s")),
            format!(
                "<= {} in {} s",
                sizing.max_min_requests_for_window, sizing.window_seconds
            ),
        );
    }
    let starved: Vec<&Sizing> = report
        .sizing
        .iter()
        .filter(|s| s.p_window_reaches_min < SIZING_CONFIDENCE)
        .collect();
    for sizing in starved {
        let _ = writeln!(
            out,
            "judge starved: {} at {} req/s gives the canary {:.1} req/s, {:.0} per {} s window, short of \
             min_requests {}; it needs a window of {} or min_requests <= {}.",
            sizing.policy,
            sizing.rps,
            sizing.canary_rps,
            sizing.expected_per_window,
            sizing.window_seconds,
            sizing.min_requests,
            sizing
                .window_needed_seconds
                .map_or_else(|| "more than a day".to_string(), |s| format!("{s} s")),
            sizing.max_min_requests_for_window,
        );
    }
    out
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

#[cfg(test)]
mod tests;
