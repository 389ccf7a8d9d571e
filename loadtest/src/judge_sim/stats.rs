//! The statistics of the simulation: Wilson intervals for rates, and Poisson tails, quantiles
//! and draws (Knuth's product of uniforms for small means, Hörmann's PTRS for large ones).

use super::*;

/// The 95% Wilson score interval of `successes` out of `trials`.
pub fn wilson_interval(successes: u64, trials: u64) -> [f64; 2] {
    if trials == 0 {
        return [0.0, 1.0];
    }
    let z = 1.959_963_984_540_054_f64;
    let n = trials as f64;
    let p = successes as f64 / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    // At 0 or n successes the bound is exactly 0 or 1; the arithmetic only rounds near it.
    let low = if successes == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if successes >= trials {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    [low, high]
}

/// P(X ≥ m) for X ~ Poisson(λ). The smaller tail is summed directly, so that a tiny
/// probability is not lost to `1 − almost 1`.
pub fn poisson_at_least(lambda: f64, m: u64) -> f64 {
    if m == 0 {
        return 1.0;
    }
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    let ln_lambda = lambda.ln();
    let pmf = |k: u64| (-lambda + k as f64 * ln_lambda - ln_factorial(k)).exp();
    if m as f64 > lambda {
        // The upper tail: terms fall from k = m on.
        let mut sum = 0.0;
        for k in m.. {
            let term = pmf(k);
            sum += term;
            if term <= sum * 1e-17 || term == 0.0 {
                break;
            }
        }
        sum.min(1.0)
    } else {
        // The lower tail, P(X < m): terms rise up to k = m − 1 ≤ λ.
        let below: f64 = (0..m).map(pmf).sum();
        (1.0 - below).max(0.0)
    }
}

/// The largest m with P(X < m) ≤ `tail` for X ~ Poisson(λ): at least m requests arrive with
/// probability 1 − `tail`.
pub fn poisson_lower_quantile(lambda: f64, tail: f64) -> u64 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 0;
    }
    if lambda > 1e7 {
        // Far beyond any traffic in the table; the normal approximation is exact enough.
        return (lambda - 2.326 * lambda.sqrt()).floor().max(0.0) as u64;
    }
    let ln_lambda = lambda.ln();
    let mut cdf = 0.0;
    let mut k = 0u64;
    loop {
        cdf += (-lambda + k as f64 * ln_lambda - ln_factorial(k)).exp();
        if cdf > tail {
            return k;
        }
        k += 1;
    }
}

/// A Poisson(λ) sample: Knuth's product of uniforms below `PTRS_MIN_LAMBDA`, Hörmann's PTRS
/// (transformed rejection with squeeze, 1993) from it on. Both are exact. 0 for λ ≤ 0 or NaN.
pub fn poisson<R: Rng + ?Sized>(rng: &mut R, lambda: f64) -> u64 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 0;
    }
    if lambda < PTRS_MIN_LAMBDA {
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut product: f64 = rng.random();
        while product > limit {
            k += 1;
            product *= rng.random::<f64>();
        }
        return k;
    }
    let (sqrt_lambda, ln_lambda) = (lambda.sqrt(), lambda.ln());
    let b = 0.931 + 2.53 * sqrt_lambda;
    let a = -0.059 + 0.02483 * b;
    let ln_inv_alpha = (1.1239 + 1.1328 / (b - 3.4)).ln();
    let v_r = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let u = rng.random::<f64>() - 0.5;
        let v: f64 = rng.random();
        let us = 0.5 - u.abs();
        let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
        if us >= 0.07 && v <= v_r && k >= 0.0 {
            return k as u64;
        }
        if k < 0.0 || !k.is_finite() || (us < 0.013 && v > us) {
            continue;
        }
        let k = k as u64;
        // ln(v) is -inf for v == 0, which accepts: as in the published algorithm.
        if v.ln() + ln_inv_alpha - (a / (us * us) + b).ln()
            <= -lambda + k as f64 * ln_lambda - ln_factorial(k)
        {
            return k;
        }
    }
}

/// ln(k!): a direct sum for small k, Stirling's series (error below 1e-12) beyond.
pub fn ln_factorial(k: u64) -> f64 {
    if k < 16 {
        return (2..=k).map(|i| (i as f64).ln()).sum();
    }
    let x = k as f64 + 1.0;
    let (x2, x3) = (x * x, x * x * x);
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x3)
        + 1.0 / (1260.0 * x3 * x2)
}
