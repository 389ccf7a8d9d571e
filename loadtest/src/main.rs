//! `switchboard-loadtest`: Switchboard's load tests and simulations, one subcommand each.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchboard_loadtest::judge_sim::{self, NamedPolicy, SCENARIOS, TableConfig, Timing};

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
    /// Read throughput and latency of sidecars (not implemented yet).
    Read,
    /// Time from a routing change until every sidecar serves it (not implemented yet).
    Propagation,
    /// Staging and sealing throughput (not implemented yet).
    Stage,
    /// Time to roll back under load (not implemented yet).
    Rollback,
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
        Scenario::Read => ("read", Err(not_implemented())),
        Scenario::Propagation => ("propagation", Err(not_implemented())),
        Scenario::Stage => ("stage", Err(not_implemented())),
        Scenario::Rollback => ("rollback", Err(not_implemented())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard-loadtest {name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn not_implemented() -> anyhow::Error {
    anyhow::anyhow!("not implemented yet")
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
        println!("\nJSON report: {}", args.out);
    }
    Ok(())
}
