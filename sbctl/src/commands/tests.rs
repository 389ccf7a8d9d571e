//! The pure parts of the commands: policy merges, the audit verdict, flag checks.

use super::*;
use serde_json::json;
use switchboard_proto::{AuditRecord, AuditVerification};

fn settings() -> PolicySettings {
    PolicySettings::default()
}

fn usage_message(result: Result<(), CliError>) -> String {
    let err = result.expect_err("usage error");
    assert_eq!(err.exit_code(), crate::exit::USAGE, "{err}");
    err.to_string()
}

#[test]
fn policy_set_needs_a_setting() {
    let message = usage_message(check_policy_settings(&settings()));
    for flag in POLICY_FLAGS {
        assert!(message.contains(flag), "{message}");
    }
    let err = merge_policy(&Policy::default(), &settings()).expect_err("no flag");
    assert_eq!(err.exit_code(), crate::exit::USAGE);
}

#[test]
fn policy_set_changes_only_the_settings_given() {
    let current = Policy {
        max_error_rate: 0.02,
        min_requests: 1000,
        window_seconds: 120,
        bake_seconds: 600,
        ..Policy::default()
    };
    let cases = [
        (
            PolicySettings {
                max_error_rate: Some(0.1),
                ..settings()
            },
            Policy {
                max_error_rate: 0.1,
                ..current.clone()
            },
        ),
        (
            PolicySettings {
                min_requests: Some(1),
                ..settings()
            },
            Policy {
                min_requests: 1,
                ..current.clone()
            },
        ),
        (
            PolicySettings {
                window_seconds: Some(86_400),
                ..settings()
            },
            Policy {
                window_seconds: 86_400,
                ..current.clone()
            },
        ),
        (
            PolicySettings {
                bake_seconds: Some(0),
                ..settings()
            },
            Policy {
                bake_seconds: 0,
                ..current.clone()
            },
        ),
        (
            PolicySettings {
                max_error_rate: Some(0.0),
                min_requests: Some(50),
                window_seconds: Some(1),
                bake_seconds: Some(7 * 86_400),
                require_approval: None,
                destructive_requires_approval: None,
                preview_reads: None,
            },
            Policy {
                max_error_rate: 0.0,
                min_requests: 50,
                window_seconds: 1,
                bake_seconds: 7 * 86_400,
                ..Policy::default()
            },
        ),
    ];
    for (given, expected) in cases {
        assert_eq!(
            merge_policy(&current, &given).expect("valid"),
            expected,
            "{given:?}"
        );
    }
}

#[test]
fn the_percent_form_is_the_same_rate() {
    let rate = crate::cli::parse_rate("5%").expect("parses");
    let given = PolicySettings {
        max_error_rate: Some(rate),
        ..settings()
    };
    let merged = merge_policy(&Policy::default(), &given).expect("valid");
    assert_eq!(merged.max_error_rate, 0.05);
    assert_eq!(merged, Policy::default());
}

#[test]
fn invalid_values_name_their_flag() {
    let cases = [
        (
            PolicySettings {
                max_error_rate: Some(1.5),
                ..settings()
            },
            "--max-error-rate",
        ),
        (
            PolicySettings {
                max_error_rate: Some(-0.01),
                ..settings()
            },
            "--max-error-rate",
        ),
        (
            PolicySettings {
                max_error_rate: Some(f64::NAN),
                ..settings()
            },
            "--max-error-rate",
        ),
        (
            PolicySettings {
                min_requests: Some(0),
                ..settings()
            },
            "--min-requests",
        ),
        (
            PolicySettings {
                window_seconds: Some(0),
                ..settings()
            },
            "--window",
        ),
        (
            PolicySettings {
                window_seconds: Some(86_401),
                ..settings()
            },
            "--window",
        ),
        (
            PolicySettings {
                bake_seconds: Some(7 * 86_400 + 1),
                ..settings()
            },
            "--bake",
        ),
        // Valid settings beside a bad one: the bad one is named.
        (
            PolicySettings {
                max_error_rate: Some(0.1),
                min_requests: Some(10),
                window_seconds: Some(30),
                bake_seconds: Some(u64::MAX),
                require_approval: None,
                destructive_requires_approval: None,
                preview_reads: None,
            },
            "--bake",
        ),
    ];
    for (given, flag) in cases {
        let message = usage_message(check_policy_settings(&given));
        assert!(
            message.starts_with(&format!("{flag}: ")),
            "{given:?}: {message}"
        );
        let others = POLICY_FLAGS.iter().filter(|f| **f != flag);
        for other in others {
            assert!(!message.contains(other), "{given:?}: {message}");
        }
        let err = merge_policy(&Policy::default(), &given).expect_err("invalid");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
    }
    let message = usage_message(check_policy_settings(&PolicySettings {
        max_error_rate: Some(5.0),
        ..settings()
    }));
    assert!(message.contains("write 5%"), "{message}");
}

#[test]
fn a_bad_stored_setting_is_the_coordinators_fault() {
    let stored = Policy {
        window_seconds: 0,
        ..Policy::default()
    };
    let given = PolicySettings {
        bake_seconds: Some(60),
        ..settings()
    };
    let err = merge_policy(&stored, &given).expect_err("stored policy invalid");
    assert_eq!(err.exit_code(), crate::exit::FAILED);
    assert!(err.to_string().contains("give --window"), "{err}");
    let fixed = PolicySettings {
        window_seconds: Some(60),
        ..given
    };
    assert!(merge_policy(&stored, &fixed).is_ok());
}

fn record(seq: u64, prev: &str, hash: &str) -> AuditRecord {
    AuditRecord {
        seq,
        at_ms: 0,
        namespace: "cat".into(),
        actor: "a".into(),
        action: "flip".into(),
        reason: String::new(),
        detail: json!({}),
        prev_hash: prev.into(),
        hash: hash.into(),
    }
}

fn trail(records: Vec<AuditRecord>, verified: Option<AuditVerification>) -> AuditTrail {
    AuditTrail {
        namespace: "cat".into(),
        records,
        verified,
    }
}

#[test]
fn audit_verdicts() {
    let intact = Some(AuditVerification {
        intact: true,
        first_bad_seq: None,
        problem: None,
    });
    let good = trail(
        vec![record(1, "", "h1"), record(2, "h1", "h2")],
        intact.clone(),
    );
    assert_eq!(verdict(&good).expect("verified"), Ok(2));

    let broken = trail(
        vec![record(1, "", "h1")],
        Some(AuditVerification {
            intact: false,
            first_bad_seq: Some(1),
            problem: Some("hash mismatch".into()),
        }),
    );
    assert_eq!(
        verdict(&broken).expect("verified"),
        Err("audit chain broken at record 1: hash mismatch".into())
    );

    let unlinked = trail(
        vec![record(1, "", "h1"), record(2, "hX", "h2")],
        intact.clone(),
    );
    let v = verdict(&unlinked).expect("verified");
    assert!(
        v.expect_err("broken")
            .starts_with("audit chain broken at record 2")
    );

    let gap = trail(vec![record(1, "", "h1"), record(3, "h1", "h3")], intact);
    assert!(verdict(&gap).expect("verified").is_err());

    assert!(verdict(&trail(vec![], None)).is_err());
}
