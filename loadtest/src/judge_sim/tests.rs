//! The unit tests of `judge_sim`.

use super::*;

fn mean_and_variance(lambda: f64, draws: usize, seed: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let samples: Vec<f64> = (0..draws)
        .map(|_| poisson(&mut rng, lambda) as f64)
        .collect();
    let mean = samples.iter().sum::<f64>() / draws as f64;
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (draws as f64 - 1.0);
    (mean, variance)
}

#[test]
fn poisson_mean_and_variance_match_lambda() {
    let draws = 200_000;
    for (i, lambda) in [0.05, 0.5, 3.0, 9.9, 10.0, 45.0, 450.0, 5_000.0]
        .into_iter()
        .enumerate()
    {
        let (mean, variance) = mean_and_variance(lambda, draws, 7 + i as u64);
        // Standard error of the mean is sqrt(λ/n); of the variance about sqrt((2λ² + λ)/n).
        let mean_error = (lambda / draws as f64).sqrt();
        let variance_error = ((2.0 * lambda * lambda + lambda) / draws as f64).sqrt();
        assert!(
            (mean - lambda).abs() < 5.0 * mean_error,
            "λ {lambda}: mean {mean}"
        );
        assert!(
            (variance - lambda).abs() < 5.0 * variance_error,
            "λ {lambda}: variance {variance}"
        );
    }
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(poisson(&mut rng, 0.0), 0);
    assert_eq!(poisson(&mut rng, -1.0), 0);
    assert_eq!(poisson(&mut rng, f64::NAN), 0);
}

#[test]
fn poisson_frequencies_match_the_distribution_on_both_samplers() {
    // The mean and variance can be right while the shape is wrong; compare each frequency
    // around the mode with the probability mass function.
    let draws = 400_000u64;
    for (lambda, seed) in [(4.0, 11), (15.0, 12), (120.0, 13)] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut histogram = std::collections::HashMap::new();
        for _ in 0..draws {
            *histogram.entry(poisson(&mut rng, lambda)).or_insert(0u64) += 1;
        }
        let spread = lambda.sqrt() * 2.0;
        let (low, high) = ((lambda - spread).max(0.0) as u64, (lambda + spread) as u64);
        for k in low..=high {
            let p = (-lambda + k as f64 * lambda.ln() - ln_factorial(k)).exp();
            let observed = *histogram.get(&k).unwrap_or(&0) as f64 / draws as f64;
            let error = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (observed - p).abs() < 5.0 * error,
                "λ {lambda}, k {k}: {observed} vs {p}"
            );
        }
    }
}

#[test]
fn ln_factorial_matches_the_direct_sum() {
    for k in [0u64, 1, 2, 15, 16, 17, 50, 1_000] {
        let direct: f64 = (2..=k).map(|i| (i as f64).ln()).sum();
        assert!(
            (ln_factorial(k) - direct).abs() < 1e-9 * direct.max(1.0),
            "k {k}"
        );
    }
}

fn timing(duration_seconds: u64) -> Timing {
    Timing {
        duration_seconds,
        tick_seconds: 1,
    }
}

/// 500 outcomes in 60 s: more than a 10% canary of 50 req/s ever gathers.
fn starving_policy() -> Policy {
    Policy {
        min_requests: 500,
        window_seconds: 60,
        ..Policy::default()
    }
}

#[test]
fn a_canary_that_always_fails_breaches_within_a_window() {
    let policy = starving_policy();
    let scenario = Scenario {
        name: "broken",
        description: "",
        canary_error_rate: 1.0,
        baseline_error_rate: 0.01,
    };
    let traffic = Traffic {
        rps: 20_000.0,
        canary_percent: 10.0,
    };
    let outcomes = simulate_runs(&policy, traffic, &scenario, timing(600), 200, 3, 2);
    assert_eq!(outcomes.len(), 200);
    for outcome in outcomes {
        let at = outcome.breach_at.expect("every run breaches");
        assert!(at <= policy.window_seconds, "breached only at {at} s");
    }
    // With the default 50 rps and a 10% canary, the default policy never gets its 500
    // outcomes: even a canary that always fails is never rolled back.
    let starved = measure(
        &NamedPolicy::new(policy),
        Traffic {
            rps: 50.0,
            canary_percent: 10.0,
        },
        &scenario,
        timing(300),
        50,
        3,
        1,
    );
    assert_eq!((starved.breaches, starved.never_judged), (0, 50));
}

#[test]
fn versions_without_errors_never_breach() {
    let scenario = Scenario {
        name: "clean",
        description: "",
        canary_error_rate: 0.0,
        baseline_error_rate: 0.0,
    };
    let traffic = Traffic {
        rps: 2_000.0,
        canary_percent: 10.0,
    };
    let policy = NamedPolicy::new(Policy {
        max_error_rate: 0.0,
        min_requests: 100,
        ..Policy::default()
    });
    let row = measure(&policy, traffic, &scenario, timing(300), 100, 5, 2);
    assert_eq!(row.breaches, 0);
    assert_eq!(
        row.starved_first_window, 0,
        "the judge had enough traffic to pass"
    );
    assert!(row.first_verdict_seconds.is_some_and(|q| q.max <= 2));
}

#[test]
fn the_same_seed_gives_the_same_results_on_any_thread_count() {
    let config = TableConfig {
        runs: 60,
        seed: 42,
        rps: vec![50.0, 500.0],
        canary_percent: 10.0,
        timing: Timing {
            duration_seconds: 240,
            tick_seconds: 1,
        },
        policies: default_policies(),
        scenarios: SCENARIOS.to_vec(),
        threads: 1,
    };
    let first = run_table(&config, &mut |_, _| {});
    let again = run_table(
        &TableConfig {
            threads: 3,
            ..config.clone()
        },
        &mut |_, _| {},
    );
    assert_eq!(first, again);
    let other = run_table(&TableConfig { seed: 43, ..config }, &mut |_, _| {});
    assert_ne!(first.rows, other.rows);
}

#[test]
fn policies_see_the_same_traffic() {
    // Common random numbers: a run's arrivals do not depend on the policy, so a policy that
    // can only judge later never breaches earlier on the same run.
    let scenario = SCENARIOS[1];
    let traffic = Traffic {
        rps: 500.0,
        canary_percent: 10.0,
    };
    let quick = Policy {
        min_requests: 100,
        ..Policy::default()
    };
    let slow = Policy {
        min_requests: 400,
        ..Policy::default()
    };
    let a = simulate_runs(&quick, traffic, &scenario, timing(300), 50, 9, 1);
    let b = simulate_runs(&slow, traffic, &scenario, timing(300), 50, 9, 1);
    for (a, b) in a.iter().zip(&b) {
        assert!(a.breach_at <= b.breach_at, "{a:?} {b:?}");
    }
}

#[test]
fn sizing_matches_the_poisson_quantiles() {
    let default = NamedPolicy::new(starving_policy());
    let low = sizing(
        &default,
        Traffic {
            rps: 50.0,
            canary_percent: 10.0,
        },
    );
    assert_eq!(low.expected_per_window, 300.0);
    assert!(low.p_window_reaches_min < 1e-20);
    // 5 req/s: 500 in 99% of windows needs about (500 + 2.33·√500) / 5 ≈ 110 s.
    let needed = low.window_needed_seconds.expect("reachable within a day");
    assert!((106..=116).contains(&needed), "{needed}");
    // 300 per window: the 1% quantile is about 300 − 2.33·√300 ≈ 260.
    assert!(
        (255..=265).contains(&low.max_min_requests_for_window),
        "{}",
        low.max_min_requests_for_window
    );
    let high = sizing(
        &default,
        Traffic {
            rps: 500.0,
            canary_percent: 10.0,
        },
    );
    assert!(high.p_window_reaches_min > 0.999_999);
    assert!(1.0 - poisson_at_least(3000.0, 500) < 1e-12);
    assert!(poisson_at_least(300.0, 500) > 0.0);
    assert_eq!(poisson_at_least(0.0, 1), 0.0);
    assert_eq!(poisson_at_least(0.0, 0), 1.0);
    // Both tails agree with a direct sum around the mean.
    let direct: f64 = (0..40)
        .map(|k| (-20.0f64 + k as f64 * 20f64.ln() - ln_factorial(k)).exp())
        .sum();
    assert!((poisson_at_least(20.0, 40) - (1.0 - direct)).abs() < 1e-9);
    assert!(
        (poisson_at_least(20.0, 10)
            + (0..10)
                .map(|k| (-20.0f64 + k as f64 * 20f64.ln() - ln_factorial(k)).exp())
                .sum::<f64>()
            - 1.0)
            .abs()
            < 1e-12
    );
}

#[test]
fn quantiles_use_the_nearest_rank() {
    assert_eq!(Quantiles::of(vec![]), None);
    let values: Vec<u64> = (1..=100).rev().collect();
    assert_eq!(
        Quantiles::of(values),
        Some(Quantiles {
            p50: 50,
            p99: 99,
            max: 100
        })
    );
    assert_eq!(
        Quantiles::of(vec![7]),
        Some(Quantiles {
            p50: 7,
            p99: 7,
            max: 7
        })
    );
}

#[test]
fn policies_parse_and_are_labelled() {
    let policy = parse_policy("0.02/100/60").expect("valid");
    assert_eq!(policy.label, "2%/100/60s");
    assert_eq!(
        (policy.policy.min_requests, policy.policy.window_seconds),
        (100, 60)
    );
    assert_eq!(
        NamedPolicy::new(Policy::default()).label,
        "default 5%/200/120s"
    );
    assert!(parse_policy("0.05/500").is_err());
    assert!(parse_policy("1.5/500/60").is_err());
    assert!(parse_policy("0.05/0/60").is_err());
}

#[test]
fn wilson_interval_brackets_the_rate() {
    let [low, high] = wilson_interval(0, 2000);
    assert_eq!(low, 0.0);
    assert!(high > 0.001 && high < 0.003);
    let [low, high] = wilson_interval(20, 2000);
    assert!(low < 0.01 && high > 0.01);
}
