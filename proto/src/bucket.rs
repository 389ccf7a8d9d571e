//! The canary bucket hash (invariant 4): sticky, monotonic and identical on every sidecar.
//!
//! A consumer's bucket is `xxh3_64_with_seed(consumer_id, seed) mod 10000`. The seed is fixed for
//! a staged version, so raising the canary weight only ever adds consumers to the canary and
//! lowering it only ever removes them. XXH3 is a published algorithm with the same output on
//! every platform, unlike std's `DefaultHasher`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Buckets per consumer population: a weight is expressed in basis points of this.
pub const BUCKETS: u32 = 10_000;

/// A weight in basis points as a percentage: 1250 is 12.5.
pub fn percent(weight_bp: u32) -> f64 {
    f64::from(weight_bp) / 100.0
}

/// The bucket of `consumer` under `seed`, in `0..BUCKETS`.
pub fn bucket(consumer: &str, seed: u64) -> u32 {
    (xxh3_64_with_seed(consumer.as_bytes(), seed) % u64::from(BUCKETS)) as u32
}

/// The bucket seed of a version: the first 8 bytes of its checksum. Every new version gets a
/// new seed, so a different share of consumers sees each new version first; staging the same
/// content again gives the same seed, so re-staging after a crash keeps every assignment.
pub fn seed_for_checksum(checksum: &str) -> u64 {
    checksum
        .get(..16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

/// Whether `consumer` is on a canary of `weight_bp` basis points drawn with `seed`.
pub fn on_canary(consumer: &str, seed: u64, weight_bp: u32) -> bool {
    weight_bp > 0 && bucket(consumer, seed) < weight_bp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the hash: a change here would silently move consumers between versions across a
    /// mixed fleet of old and new sidecars, so these values must never change.
    #[test]
    fn golden_bucket_values() {
        // Computed with the C reference implementation of XXH3 (Python's `xxhash` package:
        // `xxh3_64_intdigest(consumer, seed) % 10000`), not with this crate.
        let golden: &[(&str, u64, u32)] = &[
            ("", 0, 3138),
            ("consumer-1", 0, 3448),
            ("consumer-1", 42, 3848),
            ("app-7f3a", 0x5eed, 3678),
            ("payments-api/instance-12", 12_345_678_901_234_567_890, 7653),
        ];
        for (consumer, seed, expected) in golden {
            assert_eq!(
                bucket(consumer, *seed),
                *expected,
                "bucket({consumer:?}, {seed})"
            );
        }
    }

    #[test]
    fn seeds_come_from_the_checksum() {
        let checksum = "00000000000000ff".to_string() + &"0".repeat(48);
        assert_eq!(seed_for_checksum(&checksum), 255);
        assert_eq!(seed_for_checksum("short"), 0);
    }

    #[test]
    fn raising_the_weight_only_adds_consumers() {
        let seed = 0x5eed;
        for n in 0..2_000 {
            let consumer = format!("consumer-{n}");
            if on_canary(&consumer, seed, 1_000) {
                assert!(
                    on_canary(&consumer, seed, 3_000),
                    "{consumer} left the canary at 30%"
                );
            }
        }
    }

    proptest::proptest! {
        /// Each version draws its own canary population (the seed comes from its checksum):
        /// of the consumers a 10% canary of one version takes, about a tenth are taken first
        /// by another version's too, where one population for every version would be all of
        /// them. Within a version the draw is sticky: raising the weight keeps everyone.
        #[test]
        fn each_version_draws_its_own_canary_population(
            first in "[0-9a-f]{64}",
            second in "[0-9a-f]{64}",
        ) {
            let (seed_first, seed_second) = (seed_for_checksum(&first), seed_for_checksum(&second));
            proptest::prop_assume!(seed_first != seed_second);
            let consumers: Vec<String> = (0..2_000).map(|n| format!("consumer-{n}")).collect();
            let canary_of_first: Vec<&String> = consumers
                .iter()
                .filter(|c| on_canary(c, seed_first, 1_000))
                .collect();
            let in_both = canary_of_first
                .iter()
                .filter(|c| on_canary(c, seed_second, 1_000))
                .count();
            proptest::prop_assert!(
                in_both * 2 < canary_of_first.len(),
                "{in_both} of the {} consumers first on {first} are first on {second} too",
                canary_of_first.len()
            );
            for consumer in &canary_of_first {
                proptest::prop_assert!(on_canary(consumer, seed_first, 3_000));
                proptest::prop_assert!(on_canary(consumer, seed_for_checksum(&first), 1_000));
            }
        }
    }

    #[test]
    fn zero_weight_is_nobody_and_full_weight_is_everybody() {
        for n in 0..1_000 {
            let consumer = format!("c{n}");
            assert!(!on_canary(&consumer, 7, 0));
            assert!(on_canary(&consumer, 7, BUCKETS));
        }
    }
}
