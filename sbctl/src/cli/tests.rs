//! The unit tests of `cli`.

use super::*;
use clap::CommandFactory;

#[test]
fn a_sync_flip_refuses_options_it_would_ignore() {
    assert!(Cli::try_parse_from(["sbctl", "flip", "cat", "--sync", "--wait"]).is_err());
    assert!(
        Cli::try_parse_from(["sbctl", "flip", "cat", "--sync", "--sync-timeout", "0"]).is_err()
    );
    assert!(
        Cli::try_parse_from(["sbctl", "flip", "cat", "--sync", "--sync-timeout", "0.5"]).is_ok()
    );
}

#[test]
fn percentages_become_exact_basis_points() {
    let cases = [
        ("0", 0),
        ("0.0", 0),
        ("0.01", 1),
        ("0.25", 25),
        ("1", 100),
        ("10", 1000),
        ("12.5", 1250),
        ("12.34", 1234),
        ("12.50", 1250),
        ("33.33", 3333),
        ("99.99", 9999),
        ("100", 10_000),
        ("100.0", 10_000),
        ("100.00", 10_000),
        ("007", 700),
        ("5%", 500),
        (" 2.5 ", 250),
        ("0.29", 29),
        ("0.57", 57),
        ("1.15", 115),
    ];
    for (text, bp) in cases {
        assert_eq!(parse_percent(text), Ok(bp), "{text:?}");
    }
}

#[test]
fn bad_percentages_are_refused_clearly() {
    for text in [
        "",
        "-1",
        "-0.5",
        "100.01",
        "101",
        "1000",
        "99999999999999999999",
        "1.234",
        "0.001",
        "abc",
        "1e1",
        ".5",
        "5.",
        "1.2.3",
        "+5",
        "nan",
        "inf",
        "1,5",
        "%",
        "12..5",
        "١٠",
    ] {
        let err = parse_percent(text).expect_err(text);
        assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
    }
    assert!(
        parse_percent("1.234")
            .expect_err("3 decimals")
            .contains("two decimals")
    );
    assert!(
        parse_percent("100.5")
            .expect_err("over")
            .contains("over 100")
    );
}

#[test]
fn seconds_parse() {
    assert_eq!(parse_seconds("60"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
    assert!(parse_seconds("-1").is_err());
    assert!(parse_seconds("soon").is_err());
    assert!(parse_seconds("inf").is_err());
}

#[test]
fn steps_become_exact_basis_points() {
    let cases: [(&str, &[u32]); 7] = [
        ("1,5,25,50,100", &[100, 500, 2500, 5000, 10_000]),
        ("100", &[10_000]),
        ("0.01,0.5,12.34,99.99", &[1, 50, 1234, 9999]),
        ("0.29,0.57,1.15", &[29, 57, 115]),
        (" 1 , 5% ,25 ", &[100, 500, 2500]),
        ("2.5,2.51", &[250, 251]),
        ("10", &[1000]),
    ];
    for (text, bp) in cases {
        assert_eq!(parse_steps(text), Ok(Steps(bp.to_vec())), "{text:?}");
    }
}

#[test]
fn bad_steps_are_refused_clearly() {
    let cases = [
        ("", "no steps"),
        (" ", "no steps"),
        ("1,,5", "empty step"),
        ("1,5,", "empty step"),
        (",1", "empty step"),
        ("0,5", "0%"),
        ("0.00,5", "0%"),
        ("5,1", "step 1% comes after 5%"),
        ("1,25,5", "step 5% comes after 25%"),
        ("5,5", "step 5% is given twice"),
        ("5,5.0", "step 5% is given twice"),
        ("1,100.01", "over 100"),
        ("1,101", "over 100"),
        ("1,1.234", "two decimals"),
        ("-1,5", "not a percentage"),
        ("1;5", "not a percentage"),
        ("abc", "not a percentage"),
    ];
    for (text, needle) in cases {
        let err = parse_steps(text).expect_err(text);
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn intervals_are_whole_seconds_from_1() {
    assert_eq!(parse_interval("1"), Ok(1));
    assert_eq!(parse_interval(" 300 "), Ok(300));
    for text in ["0", "", "-1", "1.5", "5s", "abc", "99999999999999999999999"] {
        assert!(parse_interval(text).is_err(), "{text:?}");
    }
    assert!(
        parse_interval("0")
            .expect_err("0")
            .contains("at least 1 second")
    );
}

#[test]
fn error_rates_are_fractions_or_percentages() {
    let cases = [
        ("0.05", 0.05),
        ("5%", 0.05),
        ("5 %", 0.05),
        ("0.3%", 0.003),
        ("12.5%", 0.125),
        ("100%", 1.0),
        ("0", 0.0),
        ("1", 1.0),
        (".5", 0.5),
        // Out of range, but a number: Policy::validate names the flag.
        ("5", 5.0),
        ("-0.1", -0.1),
    ];
    for (text, rate) in cases {
        assert_eq!(parse_rate(text), Ok(rate), "{text:?}");
    }
    for text in [
        "", "%", "abc", "nan", "inf", "1e-2", "5.", "0.05%%", "1,5", "+1",
    ] {
        let err = parse_rate(text).expect_err(text);
        assert!(err.contains("not an error rate"), "{text:?}: {err}");
    }
}

fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("sbctl").chain(args.iter().copied()))
}

#[test]
fn rollout_takes_exactly_one_action() {
    let cli = try_parse(&[
        "rollout",
        "cat",
        "--steps",
        "1,5,25,50,100",
        "--interval",
        "300",
        "-m",
        "go",
        "--expect-epoch",
        "7",
        "--expect-version",
        "abcd",
    ])
    .expect("parses");
    match cli.command {
        Command::Rollout {
            steps,
            interval,
            pause,
            resume,
            abort,
            why,
            expect_epoch,
            expect_version,
            ..
        } => {
            assert_eq!(why.reason, "go");
            assert_eq!(expect_epoch, Some(7));
            assert_eq!(expect_version.as_deref(), Some("abcd"));
            assert_eq!(
                RolloutAction::from_flags(steps, interval, pause, resume, abort),
                Ok(RolloutAction::Start {
                    steps_bp: vec![100, 500, 2500, 5000, 10_000],
                    interval_seconds: 300
                })
            );
        }
        other => panic!("{other:?}"),
    }
    for (flag, action) in [
        ("--pause", RolloutAction::Pause),
        ("--resume", RolloutAction::Resume),
        ("--abort", RolloutAction::Abort),
    ] {
        let cli = try_parse(&["rollout", "cat", flag, "-m", "why"]).expect("parses");
        let Command::Rollout {
            steps,
            interval,
            pause,
            resume,
            abort,
            ..
        } = cli.command
        else {
            panic!("not rollout");
        };
        let parsed = RolloutAction::from_flags(steps, interval, pause, resume, abort);
        assert_eq!(
            parsed.as_ref().map(RolloutAction::as_str),
            Ok(flag.trim_start_matches('-'))
        );
        assert_eq!(parsed, Ok(action));
    }
    for args in [
        &["rollout", "cat"][..],
        &["rollout", "cat", "--steps", "1,5"],
        &["rollout", "cat", "--interval", "5"],
        &["rollout", "cat", "--pause", "--abort"],
        &["rollout", "cat", "--pause", "--resume"],
        &[
            "rollout",
            "cat",
            "--steps",
            "1,5",
            "--interval",
            "5",
            "--abort",
        ],
        &["rollout", "cat", "--steps", "5,1", "--interval", "5"],
        &["rollout", "cat", "--steps", "1,5", "--interval", "0"],
        &["rollout", "cat", "--pause", "--expect-epoch", "3"],
        &["rollout", "cat", "--abort", "--expect-version", "v"],
    ] {
        let err = try_parse(args).expect_err("usage error");
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
    assert!(RolloutAction::from_flags(None, None, false, false, false).is_err());
    assert!(RolloutAction::from_flags(None, None, true, false, true).is_err());
    assert!(RolloutAction::from_flags(None, Some(5), true, false, false).is_err());
    assert!(RolloutAction::from_flags(Some(Steps(vec![100])), None, false, false, false).is_err());
}

#[test]
fn policy_set_reads_each_flag() {
    let cli = try_parse(&[
        "policy",
        "set",
        "cat",
        "--max-error-rate",
        "2.5%",
        "--min-requests",
        "1000",
        "--window",
        "120",
        "--bake",
        "600",
        "-m",
        "stricter",
    ])
    .expect("parses");
    assert_eq!(cli.command.namespace(), Some("cat"));
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Set { settings, why, .. },
        } => {
            assert_eq!(
                settings,
                PolicySettings {
                    max_error_rate: Some(0.025),
                    min_requests: Some(1000),
                    window_seconds: Some(120),
                    bake_seconds: Some(600),
                    require_approval: None,
                    destructive_requires_approval: None,
                    preview_reads: None,
                }
            );
            assert_eq!(why.reason, "stricter");
        }
        other => panic!("{other:?}"),
    }
    let cli = try_parse(&["policy", "show", "cat", "--json"]).expect("parses");
    assert!(cli.json);
    assert_eq!(cli.command.namespace(), Some("cat"));
    for args in [
        &["policy", "set", "cat", "--max-error-rate", "abc"][..],
        &["policy", "set", "cat", "--min-requests", "-1"],
        &["policy", "set", "cat", "--window", "1.5"],
        &["policy", "set", "cat", "--bake", "soon"],
        &["policy", "cat"],
        &["policy", "show"],
    ] {
        let err = try_parse(args).expect_err("usage error");
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
    // A bad form names the flag (clap's message).
    let err = try_parse(&["policy", "set", "cat", "--window", "1.5"]).expect_err("bad");
    assert!(err.to_string().contains("--window"), "{err}");
}

#[test]
fn the_command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn global_flags_go_anywhere_and_usage_errors_exit_2() {
    let cli = Cli::try_parse_from([
        "sbctl", "canary", "cat", "12.5", "--json", "--as", "bob", "-m", "why",
    ])
    .expect("parses");
    assert!(cli.json);
    assert_eq!(cli.actor.as_deref(), Some("bob"));
    match cli.command {
        Command::Canary {
            weight_bp, change, ..
        } => {
            assert_eq!(weight_bp, 1250);
            assert_eq!(change.why.reason, "why");
        }
        other => panic!("{other:?}"),
    }
    for args in [
        &["sbctl", "canary", "cat", "-5"][..],
        &["sbctl", "canary", "cat", "100.5"],
        &["sbctl", "canary", "cat", "1.234"],
        &["sbctl", "flip"],
        &["sbctl", "nonsense"],
    ] {
        let err = Cli::try_parse_from(args).expect_err("usage error");
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
    let cli =
        Cli::try_parse_from(["sbctl", "flip", "cat", "--wait", "--timeout", "5"]).expect("parses");
    match cli.command {
        Command::Flip { wait, change, .. } => {
            assert!(wait);
            assert_eq!(change.timeout, Duration::from_secs(5));
            assert_eq!(change.expect_epoch, None);
            assert!(!change.wait_for_gates);
        }
        other => panic!("{other:?}"),
    }
    let cli = Cli::try_parse_from([
        "sbctl",
        "flip",
        "cat",
        "--sync",
        "--sync-lead",
        "400",
        "--sync-timeout",
        "2.5",
    ])
    .expect("parses");
    match cli.command {
        Command::Flip {
            sync,
            sync_lead,
            sync_timeout,
            ..
        } => {
            assert!(sync);
            assert_eq!(sync_lead, Some(400));
            assert_eq!(sync_timeout, Some(Duration::from_millis(2500)));
        }
        other => panic!("{other:?}"),
    }
    // The tuning of a synchronized flip means nothing without --sync, and a lead is
    // bounded like the coordinator bounds it.
    for args in [
        &["sbctl", "flip", "cat", "--sync-lead", "300"][..],
        &["sbctl", "flip", "cat", "--sync", "--sync-lead", "0"],
        &["sbctl", "flip", "cat", "--sync", "--sync-lead", "60001"],
    ] {
        let err = Cli::try_parse_from(args).expect_err("usage error");
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}
