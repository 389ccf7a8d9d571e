//! Placeholder for Switchboard's load test; the scenarios arrive with the benchmark work.

use clap::Parser;

/// Switchboard's load test. The scenarios (read, propagation, stage, rollback, judge) are not
/// built yet; this binary only reserves the name of the contract.
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!("no load-test scenario is implemented yet")
}
