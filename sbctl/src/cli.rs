//! The command line: global flags, the commands and their arguments (the sbctl part of the
//! external contract), and the parsers of argument values. A value that does not parse is a
//! clap usage error, which exits with 2. (A namespace name outside the contract is checked
//! before the command runs, and refused with 4 like any other invalid input.)

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::DEFAULT_COORDINATOR;

const EXIT_CODES: &str = "Exit codes: 0 done; 1 failed; 2 usage error; 3 conflict (routing \
    changed underneath: read status and retry); 4 refused by validation, a gate or policy; 5 not \
    permitted.";

/// sbctl: the release manager's command line for Switchboard.
#[derive(Debug, Parser)]
#[command(name = "sbctl", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// The coordinator's admin gRPC API.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL"
    )]
    pub coordinator: String,
    /// Bearer token sent to the coordinator.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_TOKEN",
        hide_env_values = true,
        value_name = "T"
    )]
    pub token: Option<String>,
    /// Machine-readable output (JSON) on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Act as NAME (default: $USER, else $LOGNAME).
    #[arg(long = "as", global = true, value_name = "NAME")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Diff PATH against the active set and validate it; changes nothing.
    Plan {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// A directory of *.json/*.yaml/*.yml items, or one JSON/YAML file mapping key to value.
        path: PathBuf,
    },
    /// Stage PATH into the idle slot and seal it; prints the version id last.
    Stage {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// A directory of *.json/*.yaml/*.yml items, or one JSON/YAML file mapping key to value.
        path: PathBuf,
        /// What this version is, recorded with the slot.
        #[arg(
            short = 'm',
            long = "message",
            default_value = "",
            hide_default_value = true
        )]
        message: String,
    },
    /// Serve the staged slot to PERCENT of consumers (0 to 100, two decimals allowed).
    Canary {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// 0 to 100 with at most two decimals: 10, 12.5, 0.25.
        #[arg(value_parser = parse_percent, allow_negative_numbers = true, value_name = "PERCENT")]
        weight_bp: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Send everyone to the staged slot.
    Flip {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// Wait until every live sidecar serves the new epoch.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
        timeout: Duration,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Send everyone back to the previous slot.
    Rollback {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Routing, epoch, both slots with their versions, live sidecars with their epochs.
    Status {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
    },
    /// The audit trail of a namespace.
    Audit {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// Check the hash chain; exit 1 if it is broken.
        #[arg(long)]
        verify: bool,
    },
}

/// What every routing change takes besides its target.
#[derive(Clone, Debug, Args)]
pub struct ChangeArgs {
    /// Why, recorded in the audit trail.
    #[arg(
        short = 'm',
        long = "message",
        visible_alias = "reason",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,
    /// Change only if routing is still at epoch N (default: the epoch read just before).
    #[arg(long, value_name = "N")]
    pub expect_epoch: Option<u64>,
    /// Move consumers only to version V: refused if the staged slot holds another (default: the
    /// version it held when read just before). Ignored by rollback.
    #[arg(long, value_name = "V")]
    pub expect_version: Option<String>,
}

impl Command {
    /// The namespace the command acts on.
    pub fn namespace(&self) -> &str {
        match self {
            Command::Plan { namespace, .. }
            | Command::Stage { namespace, .. }
            | Command::Canary { namespace, .. }
            | Command::Flip { namespace, .. }
            | Command::Rollback { namespace, .. }
            | Command::Status { namespace }
            | Command::Audit { namespace, .. } => namespace,
        }
    }
}

/// A canary percentage, 0 to 100 with at most two decimals, in exact basis points: "12.34" is
/// 1234. A trailing `%` is allowed.
pub fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text.trim();
    let number = number.strip_suffix('%').unwrap_or(number);
    let malformed = || {
        format!(
            "{text:?} is not a percentage: use a number from 0 to 100 with at most two \
             decimals, like 10, 12.5 or 0.25"
        )
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return Err(malformed()),
        None => (number, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) {
        return Err(malformed());
    }
    if fraction.len() > 2 {
        return Err(format!(
            "{text:?} has more than two decimals; the finest step is 0.01"
        ));
    }
    let over = || format!("{text:?} is over 100 percent");
    let whole = whole.trim_start_matches('0');
    if whole.len() > 3 {
        return Err(over());
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| malformed())?
    };
    let hundredths: u32 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<u32>().map_err(|_| malformed())? * 10,
        _ => fraction.parse().map_err(|_| malformed())?,
    };
    let basis_points = whole * 100 + hundredths;
    if basis_points > 10_000 {
        return Err(over());
    }
    Ok(basis_points)
}

/// A positive number of seconds, with decimals allowed.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!(
            "{text:?} is not a number of seconds from 0 up to a year"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
                assert_eq!(change.reason, "why");
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
        let cli = Cli::try_parse_from(["sbctl", "flip", "cat", "--wait", "--timeout", "5"])
            .expect("parses");
        match cli.command {
            Command::Flip {
                wait,
                timeout,
                change,
                ..
            } => {
                assert!(wait);
                assert_eq!(timeout, Duration::from_secs(5));
                assert_eq!(change.expect_epoch, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
