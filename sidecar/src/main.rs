use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = switchboard_sidecar::Args::parse();
    match serve(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A fatal error is one line with its causes, not a backtrace.
        Err(error) => {
            eprintln!("switchboard-sidecar: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: switchboard_sidecar::Args) -> anyhow::Result<()> {
    // Real Prometheus histograms for the latencies, with buckets from 50 µs for reads.
    let metrics = switchboard_sidecar::telemetry::prometheus_builder()?.install_recorder()?;
    switchboard_sidecar::telemetry::describe();
    let (http, grpc) = switchboard_sidecar::bind(&args).await?;
    let shutdown = CancellationToken::new();
    let _signals = switchboard_sidecar::cancel_on_signal(shutdown.clone());
    switchboard_sidecar::run(args, http, grpc, Some(metrics), shutdown).await
}
