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
    let args = switchboard_coordinator::Args::parse();
    // Crash points of the crash-safety tests; inert unless FAILPOINTS names one.
    let _crash_points = switchboard_coordinator::crash::setup();
    let shutdown = CancellationToken::new();
    let _signals = switchboard_coordinator::cancel_on_signal(shutdown.clone());
    match switchboard_coordinator::run(args, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A fatal error is one line with its causes, not a backtrace.
        Err(error) => {
            eprintln!("switchboard-coordinator: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
