//! The example application's command line: see the library for what it does.

use anyhow::Result;
use clap::Parser;
use switchboard_example_client::{Config, run};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let config = Config::parse();
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        // Ctrl-C ends the run; the last counts are still reported.
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let totals = run(&config, stop, &mut std::io::stdout()).await?;
    println!("{}", totals.summary());
    Ok(())
}
