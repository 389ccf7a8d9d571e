//! `switchboard-loadtest`: Switchboard's load tests and simulations, one subcommand each.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Instant;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use switchboard_loadtest::judge_sim::{self, NamedPolicy, SCENARIOS, TableConfig, Timing};
use switchboard_loadtest::{feed, fleet, propagation, read, report, rollback, stage, sync_flip};

/// Switchboard's load tests and simulations.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Simulate the health judge on Poisson traffic: false rollbacks, detection time, and how
    /// often it has too little data to judge. Needs no cluster.
    Judge(JudgeArgs),
    /// Reads through a sidecar (HTTP, gRPC) beside nginx serving the same bytes and etcd read
    /// directly: throughput at saturation, latency at a fixed rate.
    Read(ReadArgs),
    /// N in-process sidecars, each with its own etcd watch, and repeated flips: commit to
    /// serving per sidecar, beside raw etcd watch delivery to as many watchers.
    Propagation(PropagationArgs),
    /// Synchronized flips (`sbctl flip --sync`) across N sidecar processes: the activation
    /// spread, the lateness after the activation point, the acknowledgement wait.
    Sync(SyncArgs),
    /// The change feed: 1,000 subscribers and long polls of one sidecar, and N sidecars end
    /// to end, across flips; OFREP evaluations beside plain item reads.
    Feed(FeedArgs),
    /// A large set staged beside raw etcd puts of the same bytes; bytes re-uploaded after a
    /// 1% change; a sidecar's cold load time and memory.
    Stage(StageArgs),
    /// Time from the first bad report to every sidecar back on the baseline.
    Rollback(RollbackArgs),
    /// N sidecars in this process whose applications report at a fixed rate: etcd writes and
    /// growth, the coordinator's CPU and memory, the judge's verdict time, `flip --wait`.
    Fleet(FleetArgs),
    /// Collects the results in a directory into markdown with SVG charts.
    Report(ReportArgs),
}

#[derive(Args)]
struct Output {
    /// Where to write the JSON report; the markdown table goes beside it (`.md`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ReadArgs {
    /// Items in the served set.
    #[arg(long, default_value_t = 1000)]
    items: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Client connections per run.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests per second of the light-load runs.
    #[arg(long, default_value_t = 1000.0)]
    light_rate: f64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct PropagationArgs {
    /// Numbers of sidecars; repeat or separate with commas.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
    sidecars: Vec<usize>,
    /// Flips per number of sidecars.
    #[arg(long, default_value_t = 20)]
    flips: usize,
    /// Items in each of the two sets.
    #[arg(long, default_value_t = 100)]
    items: usize,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct SyncArgs {
    /// Sidecar processes.
    #[arg(long, default_value_t = 100)]
    sidecars: usize,
    /// Synchronized flips.
    #[arg(long, default_value_t = 20)]
    flips: usize,
    /// Milliseconds from the commit to the activation point.
    #[arg(long, default_value_t = 250)]
    lead_ms: u64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct FeedArgs {
    /// Subscribers of one sidecar's change feed.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Long polls of one item on the same sidecar.
    #[arg(long, default_value_t = 100)]
    long_polls: usize,
    /// Sidecar processes of the end-to-end run, one subscriber each.
    #[arg(long, default_value_t = 100)]
    sidecars: usize,
    /// Flips per run.
    #[arg(long, default_value_t = 20)]
    flips: usize,
    /// Items in each of the two sets.
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Seconds of each OFREP and GET run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Client connections of the OFREP and GET runs.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Milliseconds between flips.
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct StageArgs {
    /// Items of about 1 KB each.
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    /// Percent of the items that the second and third versions change.
    #[arg(long, default_value_t = 1.0)]
    change_percent: f64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct FleetArgs {
    /// Numbers of sidecars; repeat or separate with commas. 10,000 on a 2-core machine that
    /// runs etcd beside them need `--health-lease-seconds 30` (BENCHMARKS.md, "fleet").
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    sidecars: Vec<usize>,
    /// Reports each sidecar's application makes a second.
    #[arg(long, default_value_t = 20.0)]
    reports_per_second: f64,
    /// Seconds of steady state measured.
    #[arg(long, default_value_t = 30)]
    steady_seconds: u64,
    /// The judge's window.
    #[arg(long, default_value_t = 10)]
    window_seconds: u64,
    /// The judge's least number of the canary's outcomes in its window.
    #[arg(long, default_value_t = 200)]
    min_requests: u64,
    /// Each sidecar's `--health-lease-seconds`.
    #[arg(long, default_value_t = switchboard_sidecar::health::LEASE_TTL_SECONDS)]
    health_lease_seconds: i64,
    /// The coordinator's `--election-lease-seconds`.
    #[arg(long, default_value_t = switchboard_coordinator::leader::LEASE_TTL_SECONDS)]
    election_lease_seconds: i64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct RollbackArgs {
    /// Sidecar processes.
    #[arg(long, default_value_t = 5)]
    sidecars: usize,
    /// Flips to a bad version, each rolled back automatically.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The judge's window.
    #[arg(long, default_value_t = 5)]
    window_seconds: u64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct ReportArgs {
    /// The directory holding `<scenario>.json` and `<scenario>.md`; the charts are written
    /// there and the markdown to stdout.
    dir: PathBuf,
}

#[derive(Args)]
struct JudgeArgs {
    /// Independent runs per policy, traffic level and scenario.
    #[arg(long, default_value_t = 2000)]
    runs: u64,
    /// Seed of the random generators; the same seed and build reproduce the same table.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests per second over both versions; repeat or separate with commas to measure several.
    #[arg(long, value_delimiter = ',', default_values_t = [50.0, 500.0])]
    rps: Vec<f64>,
    /// Percent of the requests that the canary serves.
    #[arg(long, default_value_t = 10.0)]
    canary_percent: f64,
    /// Simulated length of one run, unless it breaches first.
    #[arg(long, default_value_t = 1800)]
    duration_seconds: u64,
    /// How often the leader judges the window.
    #[arg(long, default_value_t = 1)]
    tick_seconds: u64,
    /// A policy as MAX_ERROR_RATE/MIN_REQUESTS/WINDOW_SECONDS, e.g. 0.05/500/60; repeatable.
    /// Default: the default policy and four alternatives.
    #[arg(long = "policy", value_name = "POLICY", value_parser = judge_sim::parse_policy)]
    policies: Vec<NamedPolicy>,
    /// Where to write the JSON report; `-` writes it to stdout and the table to stderr.
    #[arg(long, default_value = "loadtest-judge.json")]
    out: String,
    /// Worker threads (default: the available cores); the results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let (name, result) = match Cli::parse().scenario {
        Scenario::Judge(args) => ("judge", judge(args)),
        Scenario::Read(args) => (
            "read",
            measured(&args.output, async |work| {
                let config = read::ReadConfig {
                    items: args.items,
                    seconds: args.seconds,
                    connections: args.connections,
                    light_rate: args.light_rate,
                };
                let report = read::run(&config, work).await?;
                Ok((read::render(&report), report))
            }),
        ),
        Scenario::Propagation(args) => (
            "propagation",
            measured(&args.output, async |work| {
                let config = propagation::PropagationConfig {
                    sidecar_counts: args.sidecars.clone(),
                    flips: args.flips,
                    items: args.items,
                };
                let report = propagation::run(&config, work).await?;
                Ok((propagation::render(&report), report))
            }),
        ),
        Scenario::Sync(args) => (
            "sync",
            measured(&args.output, async |work| {
                let config = sync_flip::SyncConfig {
                    sidecars: args.sidecars,
                    flips: args.flips,
                    lead_ms: args.lead_ms,
                };
                let report = sync_flip::run(&config, work).await?;
                Ok((sync_flip::render(&report), report))
            }),
        ),
        Scenario::Feed(args) => (
            "feed",
            measured(&args.output, async |work| {
                let config = feed::FeedConfig {
                    subscribers: args.subscribers,
                    long_polls: args.long_polls,
                    sidecars: args.sidecars,
                    flips: args.flips,
                    items: args.items,
                    seconds: args.seconds,
                    connections: args.connections,
                    pause: std::time::Duration::from_millis(args.pause_ms),
                };
                let report = feed::run(&config, work).await?;
                Ok((feed::render(&report), report))
            }),
        ),
        Scenario::Stage(args) => (
            "stage",
            measured(&args.output, async |work| {
                let config = stage::StageConfig {
                    items: args.items,
                    change_percent: args.change_percent,
                };
                let report = stage::run(&config, work).await?;
                Ok((stage::render(&report), report))
            }),
        ),
        Scenario::Rollback(args) => (
            "rollback",
            measured(&args.output, async |work| {
                let config = rollback::RollbackConfig {
                    sidecars: args.sidecars,
                    rounds: args.rounds,
                    window_seconds: args.window_seconds,
                };
                let report = rollback::run(&config, work).await?;
                Ok((rollback::render(&report), report))
            }),
        ),
        Scenario::Fleet(args) => (
            "fleet",
            measured(&args.output, async |work| {
                let config = fleet::FleetConfig {
                    sidecar_counts: args.sidecars.clone(),
                    reports_per_second: args.reports_per_second,
                    steady_seconds: args.steady_seconds,
                    window_seconds: args.window_seconds,
                    min_requests: args.min_requests,
                    health_lease_seconds: args.health_lease_seconds,
                    election_lease_seconds: args.election_lease_seconds,
                };
                let report = fleet::run(&config, work).await?;
                Ok((fleet::render(&report), report))
            }),
        ),
        Scenario::Report(args) => (
            "report",
            report::write(&args.dir).map(|markdown| print!("{markdown}")),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard-loadtest {name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a scenario on a tokio runtime with a scratch directory, prints its table and writes its
/// JSON (and the table beside it) to `--out`.
fn measured<R: Serialize>(
    output: &Output,
    scenario: impl AsyncFnOnce(&Path) -> anyhow::Result<(String, R)>,
) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("switchboard-loadtest-")
        .tempdir()
        .context("creating a scratch directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (table, report) = runtime.block_on(scenario(work.path()))?;
    print!("{table}");
    if let Some(out) = &output.out {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
        let markdown = out.with_extension("md");
        std::fs::write(&markdown, &table)
            .with_context(|| format!("writing {}", markdown.display()))?;
        println!("\nJSON report: {}", out.display());
    }
    Ok(())
}

fn judge(args: JudgeArgs) -> anyhow::Result<()> {
    let config = TableConfig {
        runs: args.runs,
        seed: args.seed,
        rps: args.rps,
        canary_percent: args.canary_percent,
        timing: Timing {
            duration_seconds: args.duration_seconds,
            tick_seconds: args.tick_seconds,
        },
        policies: if args.policies.is_empty() {
            judge_sim::default_policies()
        } else {
            args.policies
        },
        scenarios: SCENARIOS.to_vec(),
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let report = judge_sim::run_table(&config, &mut |row, rows| {
        if terminal {
            eprint!("\rmeasuring row {}/{rows}", row + 1);
        }
    });
    eprintln!(
        "{}{} rows measured in {:.1} s on {} threads",
        if terminal { "\r" } else { "" },
        report.rows.len(),
        started.elapsed().as_secs_f64(),
        config.threads
    );
    let table = judge_sim::render(&report);
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    if args.out == "-" {
        eprint!("{table}");
        println!("{json}");
    } else {
        print!("{table}");
        std::fs::write(&args.out, json + "\n").with_context(|| format!("writing {}", args.out))?;
        let markdown = Path::new(&args.out).with_extension("md");
        std::fs::write(&markdown, &table)
            .with_context(|| format!("writing {}", markdown.display()))?;
        println!("\nJSON report: {}", args.out);
    }
    Ok(())
}
