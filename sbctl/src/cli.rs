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
mod tests;
