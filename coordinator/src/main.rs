use clap::Parser;
use switchboard_coordinator::rule_worker;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    // The coordinator starts itself as a child to evaluate Rego rules under limits of time and
    // memory; that child runs no runtime and no server.
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.get(1).map(String::as_str) == Some(rule_worker::WORKER_FLAG) {
        return rule_worker::run_worker(&arguments[2..]);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard-coordinator: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

async fn serve() -> std::process::ExitCode {
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
