//! The command line: global flags, the commands and their arguments (the sbctl part of the
//! external contract), and the parsers of argument values. A value that does not parse is a
//! clap usage error, which exits with 2. (A namespace name outside the contract is checked
//! before the command runs, and refused with 4 like any other invalid input.)

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

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
    /// The CA of an https:// coordinator (PEM).
    #[arg(long, global = true, env = "SWITCHBOARD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for a coordinator that requires one; with --tls-key.
    #[arg(long, global = true, env = "SWITCHBOARD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "SWITCHBOARD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
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
        /// Substitute ${var} placeholders from environments/NAME.yaml.
        #[arg(long, value_name = "NAME")]
        env: Option<String>,
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
        /// Substitute ${var} placeholders from environments/NAME.yaml.
        #[arg(long, value_name = "NAME")]
        env: Option<String>,
        /// Stage even if the set removes items or fields, changes a type or narrows a list
        /// (see `sbctl plan`).
        #[arg(long)]
        allow_destructive: bool,
    },
    /// Serve the staged slot to PERCENT of consumers (0 to 100, two decimals allowed).
    Canary {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// 0 to 100 with at most two decimals: 10, 12.5, 0.25.
        #[arg(value_parser = parse_percent, allow_negative_numbers = true, value_name = "PERCENT")]
        weight_bp: u32,
        /// Wait until every live sidecar serves the new weight (its epoch).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Send everyone to the staged slot.
    Flip {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// Wait until every live sidecar serves the new epoch (--sync always waits).
        #[arg(long, conflicts_with = "sync")]
        wait: bool,
        /// Synchronized flip: every live sidecar first loads and acknowledges the staged set,
        /// then all switch at one activation point; waits for them and reports the spread.
        #[arg(long)]
        sync: bool,
        /// With --sync: how far after the commit the activation point lies (default 250).
        #[arg(long, value_name = "MS", requires = "sync", value_parser = clap::value_parser!(u64).range(1..=60_000))]
        sync_lead: Option<u64>,
        /// With --sync: how long the sidecars have to acknowledge the staged set (default 10).
        #[arg(long, value_name = "SECONDS", requires = "sync", value_parser = parse_positive_seconds)]
        sync_timeout: Option<Duration>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Send everyone back to the previous slot, or with --to to a retained version.
    Rollback {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// A retained version (`sbctl history`): restaged from etcd into the idle slot when no
        /// slot holds it, then flipped to; approved and gated like a flip.
        #[arg(long = "to", value_name = "VERSION")]
        to_version: Option<String>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Approve VERSION for canaries and flips, when the namespace's policy requires approval.
    /// Whoever staged it may not approve it.
    Approve {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// The version id, as `sbctl status` or `stage` printed it.
        #[arg(value_name = "VERSION")]
        version: String,
        #[command(flatten)]
        why: Why,
    },
    /// The versions ever sealed in a namespace, newest first: who staged each, when, why, where
    /// it is now and who approved it.
    History {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
    },
    /// Preconditions that must hold before a canary above 0% or a flip.
    Gate {
        #[command(subcommand)]
        command: GateCommand,
    },
    /// Self-verifying files of a whole set: save one, or stage one back.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Compare PATH with the active set; exit 1 when they differ (for reconciliation jobs).
    Diff {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// A directory of *.json/*.yaml/*.yml items, or one JSON/YAML file mapping key to value.
        path: PathBuf,
        /// Substitute ${var} placeholders from environments/NAME.yaml.
        #[arg(long, value_name = "NAME")]
        env: Option<String>,
    },
    /// Raise the staged version's canary step by step while the health judge passes, or
    /// pause, resume or abort the rollout under way.
    #[command(group(
        ArgGroup::new("action")
            .required(true)
            .args(["steps", "pause", "resume", "abort"])
    ))]
    Rollout {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// Start a rollout through these canary percentages: strictly ascending, each above 0
        /// and at most 100, two decimals allowed (1,5,25,50,100); 100 ends it with a flip.
        #[arg(long, value_name = "PERCENTS", value_parser = parse_steps, requires = "interval")]
        steps: Option<Steps>,
        /// Whole seconds between steps, at least 1 (required with --steps).
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval, requires = "steps")]
        interval: Option<u64>,
        /// Hold the rollout at its current step.
        #[arg(long)]
        pause: bool,
        /// Let a paused rollout step on again.
        #[arg(long)]
        resume: bool,
        /// Stop the rollout and end its canary: everyone back on the active version.
        #[arg(long)]
        abort: bool,
        #[command(flatten)]
        why: Why,
        /// Start only if routing is still at epoch N (default: the epoch read just before).
        #[arg(long, value_name = "N", conflicts_with_all = ["pause", "resume", "abort"])]
        expect_epoch: Option<u64>,
        /// Roll out only version V: refused if the staged slot holds another (default: the
        /// version it held when read just before).
        #[arg(long, value_name = "V", conflicts_with_all = ["pause", "resume", "abort"])]
        expect_version: Option<String>,
        /// When a gate blocks the start, wait and start as soon as the gates pass.
        #[arg(long, conflicts_with_all = ["pause", "resume", "abort"])]
        wait_for_gates: bool,
        /// How long --wait-for-gates waits.
        #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = parse_seconds)]
        timeout: Duration,
    },
    /// The namespace's contract (schemas and Rego rules every seal checks): show it, set it
    /// from a directory's switchboard.yaml, or approve a proposed one.
    Contract {
        #[command(subcommand)]
        command: ContractCommand,
    },
    /// The health judge's policy of a namespace: show it, or change some of its settings.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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
    /// Bearer tokens for the users of the coordinator's --auth file.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `sbctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh token for NAME (shown once) and the line to add to the --auth file.
    New {
        /// The user: 1 to 64 of A-Z a-z 0-9 . _ @ -
        #[arg(value_name = "NAME", value_parser = crate::token::parse_user_name)]
        name: String,
        /// A role of the user; repeat it or separate roles by commas (default: operator).
        #[arg(long = "role", value_name = "ROLE", value_enum, value_delimiter = ',')]
        roles: Vec<crate::token::Role>,
    },
}

/// `sbctl gate ...`
#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// Add a gate, or replace the one of the same name. Give exactly one of --item, --etcd-key
    /// or --http.
    #[command(group(ArgGroup::new("kind").required(true).args(["item", "etcd_key", "http"])))]
    Set {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// The gate's name: 1 to 64 of A-Z a-z 0-9 . _ -
        #[arg(value_name = "NAME")]
        name: String,
        /// Look at this item of the set that consumers would move to.
        #[arg(long, value_name = "KEY")]
        item: Option<String>,
        /// Look at this etcd key, outside the switchboard's prefix (absent reads as null).
        #[arg(long, value_name = "KEY")]
        etcd_key: Option<String>,
        /// GET this URL: it must answer 2xx (and, with --op, carry the value).
        #[arg(long, value_name = "URL")]
        http: Option<String>,
        /// Compare the field at this JSON pointer (/schema/version) instead of the whole value.
        #[arg(
            long,
            value_name = "POINTER",
            default_value = "",
            hide_default_value = true
        )]
        pointer: String,
        /// ==, !=, >, >=, < or <= (ordering compares numbers, also numbers in strings).
        #[arg(long, value_name = "OP", value_parser = parse_op)]
        op: Option<switchboard_proto::GateOp>,
        /// The value to compare with: JSON (192, true, "done", null) or else a plain string.
        #[arg(long, value_name = "VALUE", value_parser = parse_gate_value, allow_hyphen_values = true)]
        value: Option<serde_json::Value>,
        #[command(flatten)]
        why: Why,
    },
    /// Remove a gate.
    Remove {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        why: Why,
    },
    /// The gates of a namespace.
    List {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
    },
    /// Evaluate every gate now, changing nothing; exit 4 when one blocks.
    Check {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// The version to check against (default: the staged one a canary or flip would serve).
        #[arg(long, value_name = "V")]
        version: Option<String>,
    },
}

/// `sbctl snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write the active set (or a retained version) to FILE, with the hashes that prove it.
    Save {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// Where to write; written whole or not at all.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// A retained version instead of the active one (`sbctl history`).
        #[arg(long, value_name = "V")]
        version: Option<String>,
    },
    /// Verify FILE and stage its set into the idle slot: the same version id comes back.
    Restore {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// What this stage is, recorded with the slot.
        #[arg(
            short = 'm',
            long = "message",
            default_value = "",
            hide_default_value = true
        )]
        message: String,
    },
}

/// `sbctl contract ...`
#[derive(Debug, Subcommand)]
pub enum ContractCommand {
    /// The contract in force, and any proposal waiting for approval.
    Show {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
    },
    /// Set the contract from DIR/switchboard.yaml: its `schemas:` and `rules:` (Rego files).
    /// When the policy requires approval, it waits for another person's `contract approve`.
    Set {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// A directory with a switchboard.yaml (the set's own directory, usually).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        why: Why,
    },
    /// Put the proposed contract HASH (its first 12 hex digits suffice) in force.
    Approve {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        /// The proposal's hash, as `sbctl contract show` prints it.
        #[arg(value_name = "HASH")]
        hash: String,
        #[command(flatten)]
        why: Why,
    },
}

/// `sbctl policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Each setting with its value, and whether it is the default.
    Show {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
    },
    /// Change the settings given and keep the others; at least one is needed.
    Set {
        /// The namespace.
        #[arg(value_name = "NS")]
        namespace: String,
        #[command(flatten)]
        settings: PolicySettings,
        #[command(flatten)]
        why: Why,
    },
}

/// The settings `sbctl policy set` changes; those not given keep their current values.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct PolicySettings {
    /// Highest tolerated error rate of a new version, 0 to 1: a fraction (0.05) or a
    /// percentage (5%).
    #[arg(
        long,
        value_name = "RATE",
        value_parser = parse_rate,
        allow_negative_numbers = true
    )]
    pub max_error_rate: Option<f64>,
    /// Fewest outcomes of the new version in the window before the judge decides (at least 1).
    #[arg(long, value_name = "N")]
    pub min_requests: Option<u64>,
    /// The window the judge sums outcomes over, 1 to 86400 seconds.
    #[arg(long = "window", value_name = "SECONDS")]
    pub window_seconds: Option<u64>,
    /// How long after a flip the previous set stays hot and the judge can flip back, at most 7
    /// days.
    #[arg(long = "bake", value_name = "SECONDS")]
    pub bake_seconds: Option<u64>,
    /// Whether a canary above 0% or a flip needs `sbctl approve` by someone other than the
    /// stager: true or false.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub require_approval: Option<bool>,
    /// Whether a version that makes destructive changes (staged with --allow-destructive)
    /// needs `sbctl approve` by someone other than the stager: true or false.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub destructive_requires_approval: Option<bool>,
    /// Whether sidecars answer preview reads (header `X-Switchboard-Preview: staged`) from the
    /// sealed staged set, for test traffic: true or false.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub preview_reads: Option<bool>,
}

/// The flags of [`PolicySettings`], in the order they are checked and listed.
pub const POLICY_FLAGS: [&str; 7] = [
    "--max-error-rate",
    "--min-requests",
    "--window",
    "--bake",
    "--require-approval",
    "--destructive-requires-approval",
    "--preview-reads",
];

/// The steps of a rollout, in exact basis points, strictly ascending, each in (0, 10000].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steps(pub Vec<u32>);

/// What `sbctl rollout` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    Start {
        steps_bp: Vec<u32>,
        interval_seconds: u64,
    },
    Pause,
    Resume,
    Abort,
}

impl RolloutAction {
    /// The `action` of the `Rollout` RPC.
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutAction::Start { .. } => "start",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
        }
    }

    /// The action of the flags clap accepted (it enforces exactly one of them, and `--interval`
    /// with `--steps`); a combination clap would refuse is a usage error here too.
    pub fn from_flags(
        steps: Option<Steps>,
        interval: Option<u64>,
        pause: bool,
        resume: bool,
        abort: bool,
    ) -> Result<Self, String> {
        let chosen = [steps.is_some(), pause, resume, abort]
            .iter()
            .filter(|&&b| b)
            .count();
        if chosen != 1 {
            return Err(
                "give exactly one of --steps (with --interval), --pause, --resume or --abort"
                    .into(),
            );
        }
        match (steps, interval) {
            (Some(Steps(steps_bp)), Some(interval_seconds)) => Ok(RolloutAction::Start {
                steps_bp,
                interval_seconds,
            }),
            (Some(_), None) => Err("--steps needs --interval SECONDS".into()),
            (None, Some(_)) => Err("--interval goes with --steps".into()),
            (None, None) if pause => Ok(RolloutAction::Pause),
            (None, None) if resume => Ok(RolloutAction::Resume),
            (None, None) => Ok(RolloutAction::Abort),
        }
    }
}

/// Why a change is made: `-m`/`--message` (alias `--reason`), which every command that changes
/// something takes.
#[derive(Clone, Debug, Default, Args)]
pub struct Why {
    /// Why, recorded in the audit trail.
    #[arg(
        short = 'm',
        long = "message",
        visible_alias = "reason",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,
}

/// What every routing change takes besides its target.
#[derive(Clone, Debug, Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub why: Why,
    /// Change only if routing is still at epoch N (default: the epoch read just before).
    #[arg(long, value_name = "N")]
    pub expect_epoch: Option<u64>,
    /// Move consumers only to version V: refused if the staged slot holds another (default: the
    /// version it held when read just before). Ignored by rollback.
    #[arg(long, value_name = "V")]
    pub expect_version: Option<String>,
    /// When a gate blocks the change, wait and make it as soon as the gates pass (checked
    /// every 100 ms); routing changing meanwhile is still a conflict.
    #[arg(long)]
    pub wait_for_gates: bool,
    /// How long --wait and --wait-for-gates wait, each.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub timeout: Duration,
}

impl ChangeArgs {
    /// How long to wait for the gates, when `--wait-for-gates` was given.
    pub fn gate_wait(&self) -> Option<Duration> {
        self.wait_for_gates.then_some(self.timeout)
    }
}

impl Command {
    /// The namespace the command acts on (none for `token`, which talks to nobody).
    pub fn namespace(&self) -> Option<&str> {
        let namespace = match self {
            Command::Plan { namespace, .. }
            | Command::Stage { namespace, .. }
            | Command::Canary { namespace, .. }
            | Command::Flip { namespace, .. }
            | Command::Rollback { namespace, .. }
            | Command::Rollout { namespace, .. }
            | Command::Policy {
                command: PolicyCommand::Show { namespace } | PolicyCommand::Set { namespace, .. },
            }
            | Command::Contract {
                command:
                    ContractCommand::Show { namespace }
                    | ContractCommand::Set { namespace, .. }
                    | ContractCommand::Approve { namespace, .. },
            }
            | Command::Status { namespace }
            | Command::Audit { namespace, .. }
            | Command::Approve { namespace, .. }
            | Command::History { namespace }
            | Command::Diff { namespace, .. }
            | Command::Gate {
                command:
                    GateCommand::Set { namespace, .. }
                    | GateCommand::Remove { namespace, .. }
                    | GateCommand::List { namespace }
                    | GateCommand::Check { namespace, .. },
            }
            | Command::Snapshot {
                command:
                    SnapshotCommand::Save { namespace, .. } | SnapshotCommand::Restore { namespace, .. },
            } => namespace,
            Command::Token { .. } => return None,
        };
        Some(namespace)
    }
}

/// A gate's comparison: ==, !=, >, >=, < or <=.
pub fn parse_op(text: &str) -> Result<switchboard_proto::GateOp, String> {
    switchboard_proto::GateOp::parse(text.trim())
        .ok_or_else(|| format!("{text:?} is not one of ==, !=, >, >=, <, <="))
}

/// A gate's value: JSON when it parses as JSON (192, true, "done"), else the text as a string.
pub fn parse_gate_value(text: &str) -> Result<serde_json::Value, String> {
    Ok(serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string())))
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

/// The steps of a rollout: comma-separated percentages as [`parse_percent`] reads them,
/// strictly ascending, each above 0 and at most 100, in exact basis points.
pub fn parse_steps(text: &str) -> Result<Steps, String> {
    let example = "like 1,5,25,50,100";
    if text.trim().is_empty() {
        return Err(format!(
            "no steps given: list canary percentages separated by commas, {example}"
        ));
    }
    let mut steps: Vec<u32> = Vec::new();
    for item in text.split(',') {
        if item.trim().is_empty() {
            return Err(format!(
                "{text:?} has an empty step: list canary percentages separated by commas, \
                 {example}"
            ));
        }
        let bp = parse_percent(item)?;
        if bp == 0 {
            return Err(format!(
                "step {:?} is 0%: every step must serve the canary to someone",
                item.trim()
            ));
        }
        if let Some(&last) = steps.last() {
            if bp == last {
                return Err(format!(
                    "step {} is given twice: steps must rise strictly, {example}",
                    crate::output::percent(bp)
                ));
            }
            if bp < last {
                return Err(format!(
                    "step {} comes after {}: steps must rise strictly, {example}",
                    crate::output::percent(bp),
                    crate::output::percent(last)
                ));
            }
        }
        steps.push(bp);
    }
    Ok(Steps(steps))
}

/// The interval between rollout steps: whole seconds, at least 1.
pub fn parse_interval(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a whole number of seconds"));
    }
    let seconds: u64 = trimmed
        .parse()
        .map_err(|_| format!("{text:?} is too many seconds"))?;
    if seconds == 0 {
        return Err("the interval between steps must be at least 1 second".into());
    }
    Ok(seconds)
}

/// An error rate: a fraction like `0.05`, or a percentage like `5%` (0.05). Plain decimal
/// notation only; the range (0 to 1) is checked by `Policy::validate`, so that the message
/// names the setting.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let (number, is_percent) = match trimmed.strip_suffix('%') {
        Some(number) => (number.trim_end(), true),
        None => (trimmed, false),
    };
    let unsigned = number.strip_prefix('-').unwrap_or(number);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let plain = !(whole.is_empty() && fraction.is_empty())
        && digits(whole)
        && digits(fraction)
        && !unsigned.ends_with('.');
    if !plain {
        return Err(format!(
            "{text:?} is not an error rate: use a fraction like 0.05 or a percentage like 5%"
        ));
    }
    // Shifting the decimal point in the text keeps `0.3%` exactly the double nearest 0.003.
    let decimal = if is_percent {
        format!("{number}e-2")
    } else {
        number.to_string()
    };
    decimal
        .parse::<f64>()
        .map_err(|_| format!("{text:?} is not an error rate"))
}

/// A positive number of seconds, with decimals allowed.
/// [`parse_seconds`], refusing 0 where 0 would mean nothing sensible.
fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        Duration::ZERO => Err(format!("{text:?}: give more than 0 seconds")),
        duration => Ok(duration),
    }
}

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
    fn a_sync_flip_refuses_options_it_would_ignore() {
        assert!(Cli::try_parse_from(["sbctl", "flip", "cat", "--sync", "--wait"]).is_err());
        assert!(
            Cli::try_parse_from(["sbctl", "flip", "cat", "--sync", "--sync-timeout", "0"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["sbctl", "flip", "cat", "--sync", "--sync-timeout", "0.5"])
                .is_ok()
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
        assert!(
            RolloutAction::from_flags(Some(Steps(vec![100])), None, false, false, false).is_err()
        );
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
        let cli = Cli::try_parse_from(["sbctl", "flip", "cat", "--wait", "--timeout", "5"])
            .expect("parses");
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
}
