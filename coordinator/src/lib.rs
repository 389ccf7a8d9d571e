//! Switchboard's coordinator: the admin API through which sbctl stages metadata sets into
//! etcd and changes routing. It keeps no state that etcd does not have: every decision is read
//! from etcd and every change is one etcd transaction.
//!
//! Start-up wires the parts together in [`run`]; shutdown drains in the reverse order: stop
//! accepting requests, let the ones in flight finish (at most `SHUTDOWN_GRACE`) and the tasks
//! they started stop, then stop the leader's loops and the other background tasks, then the
//! `--dev` etcd. Every task has an owner that stops it and waits for it.

pub mod audit;
pub mod auth;
pub mod capacity;
pub mod contract;
pub mod convergence;
pub mod crash;
pub mod dashboard;
pub mod dev_etcd;
pub mod error;
pub mod gates;
pub mod grpc;
pub mod http;
pub mod janitor;
pub mod judge;
pub mod leader;
pub mod limits;
pub mod outcomes;
pub mod release;
pub mod routing;
pub mod rule_worker;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchboard_proto::Keys;
use switchboard_runtime::connections::{ConnectionLimits, GuardedListener};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long requests in flight may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Switchboard coordinator: stages metadata sets into etcd and changes routing.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// Address of the admin gRPC API.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Address of the JSON API, the dashboard (at /), /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub hosts: switchboard_runtime::host::HostArgs,
    /// Prefix of every etcd key.
    #[arg(long, default_value = "/switchboard")]
    pub prefix: String,
    /// Start a private etcd child process (the `etcd` on PATH) and use it.
    #[arg(long)]
    pub dev: bool,
    /// Where --dev keeps its etcd data.
    #[arg(long, default_value = ".switchboard")]
    pub state_dir: PathBuf,
    /// This replica's name in leader elections and in status; host name and port by default.
    #[arg(long)]
    pub id: Option<String>,
    /// The URL at which sidecars reach this replica's gRPC API to stream their applications'
    /// outcomes when it leads (published in etcd under the election). By default the --listen
    /// address (http, or https with --tls-cert), with the host name for an unspecified address.
    #[arg(long, env = "SWITCHBOARD_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// Users, their roles and the SHA-256 of their bearer tokens (YAML; see the README,
    /// "Identities and roles"). Read again on SIGHUP; a file that does not check then keeps
    /// the users in force. Without it the coordinator is open: every caller acts as an
    /// anonymous admin.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Requests a second that one caller may make of the admin gRPC and JSON APIs together,
    /// on average; 0 turns the limit off. A caller is a user (by their token), else the
    /// address a request comes from.
    #[arg(long, default_value_t = limits::DEFAULT_REQUESTS_PER_SECOND, value_name = "N", value_parser = non_negative_rate)]
    pub rate_limit_per_second: f64,
    /// Requests one caller may make at once above that rate (at least 1).
    #[arg(long, default_value_t = limits::DEFAULT_BURST, value_name = "N", value_parser = burst)]
    pub rate_limit_burst: f64,
    /// The most connections each listener (gRPC, HTTP) holds at once; fewer when the
    /// descriptor limit does not allow as many. The leader holds one per sidecar (its outcome
    /// stream): raise it, with the descriptor limit, for a fleet of more than 4,096 sidecars.
    #[arg(long, default_value_t = switchboard_runtime::connections::MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,
    /// The time to live of the leader's election lease: a leader that dies is replaced after
    /// at most this long, and a leader whose keep-alives etcd does not answer for this long
    /// (less half a second) stops acting. An etcd that stalls for seconds under a large fleet's
    /// bursts (a cold flip of 10,000 sidecars on a small etcd) ends short terms, and each new
    /// term waits for every outcome stream to find it: lengthen it there (2 to 60).
    #[arg(long, default_value_t = leader::LEASE_TTL_SECONDS, value_name = "SECONDS", value_parser = clap::value_parser!(i64).range(2..=60))]
    pub election_lease_seconds: i64,
    /// The health-record writes a second that acknowledge a routing change, which the leader
    /// asks a fleet to keep etcd to: with more sidecars streaming to it than this, they spread
    /// their writes over a second per this many (at most 30 s). `flip --wait` hears the
    /// sidecars through their streams at once; `status`, which reads the records, shows a new
    /// epoch up to that late.
    #[arg(long, default_value_t = routing::ACKNOWLEDGEMENTS_PER_SECOND, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub acknowledgements_per_second: u64,
    /// etcd's `--quota-backend-bytes`, against which stages are checked before anything is
    /// written (etcd 3.6 reports its quota itself, and then that wins).
    #[arg(long, env = "SWITCHBOARD_ETCD_QUOTA_BYTES", default_value_t = capacity::DEFAULT_QUOTA_BYTES, value_name = "BYTES")]
    pub etcd_quota_bytes: u64,
    /// Seconds between the leader's housekeeping rounds (collection of unneeded manifests and
    /// chunks, compaction of old revisions).
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub gc_interval: u64,
    /// Versions of each namespace's history kept in etcd besides those routing and the slots
    /// name, for `rollback --to` and `snapshot save --version`.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub retain_versions: usize,
    /// Seconds after which etcd's old revisions are compacted.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub compact_after: u64,
    /// How to connect to etcd: as which user, with which TLS.
    #[command(flatten)]
    pub etcd_connection: switchboard_runtime::EtcdArgs,
    /// A PEM certificate (chain) for TLS on the gRPC and HTTP listeners; with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A PEM CA: clients must present a certificate it signed (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Wall-clock limit, in milliseconds, of one evaluation of a namespace's Rego rules at seal.
    #[arg(long, default_value_t = rule_worker::DEFAULT_TIME_LIMIT.as_millis() as u64, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub rule_time_limit_ms: u64,
    /// Address-space limit, in MiB, of the child process that evaluates Rego rules.
    #[arg(long, default_value_t = rule_worker::DEFAULT_MEMORY_MB, value_name = "MIB", value_parser = clap::value_parser!(u64).range(64..=65_536))]
    pub rule_memory_mb: u64,
    /// Configuration file (reserved; no settings are read from it yet).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub use switchboard_runtime::{cancel_on_signal, connect_etcd};

/// The largest rate or burst the flags take: far beyond what one coordinator serves, and small
/// enough that every computation with it stays exact.
const MAX_RATE: f64 = 1_000_000_000.0;

fn rate_number(text: &str) -> Result<f64, String> {
    let number: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !number.is_finite() || !(0.0..=MAX_RATE).contains(&number) {
        return Err(format!("{text} must be 0 to {MAX_RATE}"));
    }
    Ok(number)
}

/// `--rate-limit-per-second`: 0 (off) or a positive number of requests a second.
fn non_negative_rate(text: &str) -> Result<f64, String> {
    rate_number(text)
}

/// `--rate-limit-burst`: at least one request, or no request could ever pass.
fn burst(text: &str) -> Result<f64, String> {
    let number = rate_number(text)?;
    if number < 1.0 {
        return Err(format!(
            "{text} is under 1: no request could pass (turn the limit off with --rate-limit-per-second 0)"
        ));
    }
    Ok(number)
}

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(config) = &args.config {
        anyhow::ensure!(
            config.exists(),
            "--config {} does not exist",
            config.display()
        );
    }
    // A bad auth file stops the start, before anything else is started.
    let users = args.auth.as_deref().map(auth::Users::load).transpose()?;
    let dev_etcd = if args.dev {
        let endpoint = args.etcd.first().cloned().unwrap_or_default();
        Some(dev_etcd::DevEtcd::start(&args.state_dir, &endpoint).await?)
    } else {
        None
    };
    let result = serve(&args, users, shutdown).await;
    if let Some(dev_etcd) = dev_etcd {
        dev_etcd.stop().await;
    }
    result
}

async fn serve(
    args: &Args,
    users: Option<auth::Users>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    telemetry::describe();
    telemetry::register();
    switchboard_runtime::connections::describe_metrics();
    let etcd_options = args.etcd_connection.options()?;
    let Some(client) =
        switchboard_runtime::connect_etcd_as(&args.etcd, &etcd_options, &shutdown).await?
    else {
        return Ok(());
    };
    let keys = Keys::new(&args.prefix);
    let releases = release::Releases::new(store::Store::new(client.clone(), keys.clone()))
        .with_capacity(capacity::Capacity {
            quota_bytes: args.etcd_quota_bytes,
        })
        .with_acknowledgements_per_second(args.acknowledgements_per_second)
        .with_rule_runner(
            rule_worker::RuleRunner::worker(
                Duration::from_millis(args.rule_time_limit_ms),
                args.rule_memory_mb,
            )
            .context("cannot find this binary to evaluate rules with")?,
        );
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}:{}", host.trim(), args.listen.port())
    });

    let advertise = args.advertise.clone().unwrap_or_else(|| {
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let host = if args.listen.ip().is_unspecified() {
            let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            name.trim().to_string()
        } else {
            args.listen.ip().to_string()
        };
        format!("{scheme}://{host}:{}", args.listen.port())
    });

    let grpc_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let http_listener = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {} (--http)", args.http))?;
    tracing::info!(grpc = %args.listen, http = %args.http, etcd = %args.etcd.join(","), prefix = %args.prefix, "coordinator serving");
    // The two listeners share the descriptors that the process may open.
    let limits = switchboard_runtime::connections::limits_for_this_process(2, args.max_connections);
    match (&users, &args.auth) {
        (Some(users), Some(path)) => tracing::info!(
            users = users.users().len(),
            file = %path.display(),
            "authentication on: every request needs a bearer token of a user in the --auth file"
        ),
        _ => tracing::warn!(
            "no --auth: the coordinator is open; every caller acts as an anonymous admin, and the audit trail records the names callers claim"
        ),
    }
    let rate_limit = limits::RateLimiter::new(limits::Rate {
        per_second: args.rate_limit_per_second,
        burst: args.rate_limit_burst,
    });
    if rate_limit.is_on() {
        tracing::info!(
            per_second = args.rate_limit_per_second,
            burst = args.rate_limit_burst,
            "rate limit per caller on the admin gRPC and JSON APIs"
        );
    } else {
        tracing::warn!("--rate-limit-per-second 0: no rate limit on the admin APIs");
    }
    let admission = auth::Admission::new(users, releases.clone()).with_rate_limit(rate_limit);
    // SIGHUP is handled from here on, before the listeners serve: a SIGHUP that found no
    // handler would end the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let reloader = tokio::spawn(auth::reload_on_hangup(
        admission.clone(),
        args.auth.clone(),
        hangups,
        shutdown.clone(),
    ));
    let tls = tls::TlsSettings::from_flags(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_client_ca.as_deref(),
    )?;
    let tls_config = tls.as_ref().map(tls::TlsSettings::rustls).transpose()?;
    match &tls {
        Some(tls) => tracing::info!(
            cert = %tls.cert.display(),
            client_certificates = tls.client_ca.is_some(),
            "TLS on the gRPC and HTTP listeners"
        ),
        None => tracing::warn!(
            "no --tls-cert: the listeners speak plain text; keep them on a network you trust"
        ),
    }

    // The leader's loops stop after the servers: a change accepted before shutdown is still
    // judged, and the lease is revoked last so another replica takes over at once.
    let loops = CancellationToken::new();
    // The background tasks belong to this function: a JoinSet aborts whatever is left of them
    // if it ends early, and they are waited for below.
    let mut background = tokio::task::JoinSet::new();
    background.spawn(switchboard_runtime::keep_endpoints_answering(
        client.clone(),
        args.etcd.clone(),
        etcd_options,
        loops.clone(),
    ));
    let janitor = janitor::JanitorSettings {
        interval: Duration::from_secs(args.gc_interval),
        retain_versions: args.retain_versions,
        compact_after: Duration::from_secs(args.compact_after),
    };
    background.spawn(leader::run(
        client,
        keys,
        leader::Replica {
            id: id.clone(),
            advertise,
            lease_ttl_seconds: args.election_lease_seconds,
        },
        releases.clone(),
        janitor,
        loops.clone(),
    ));
    tracing::info!(%id, "campaigning for leadership");
    // Every replica samples error rates for its own dashboard, leader or not.
    let samples = dashboard::ErrorSamples::default();
    background.spawn(dashboard::samples::sample(
        releases.clone(),
        samples.clone(),
        loops.clone(),
    ));
    let grpc = serve_grpc(
        grpc_listener,
        tls_config.clone(),
        limits,
        releases.clone(),
        admission.clone(),
        shutdown.clone(),
    );
    let router = http::router(releases, admission, metrics, samples)
        .layer(axum::middleware::from_fn(
            switchboard_runtime::json_errors::json_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(args.hosts.allowlist()),
            switchboard_runtime::host::refuse_other_hosts,
        ));
    let http = async {
        match tls_config {
            Some(config) => {
                let listener = tls::TlsListener::new(http_listener, config, "HTTP");
                serve_http(
                    GuardedListener::new(listener, limits, "http"),
                    router,
                    shutdown.clone(),
                )
                .await
            }
            None => {
                serve_http(
                    GuardedListener::new(http_listener, limits, "http"),
                    router,
                    shutdown.clone(),
                )
                .await
            }
        }
    };
    let (grpc, http) = tokio::join!(grpc, http);
    loops.cancel();
    while background.join_next().await.is_some() {}
    // The reloader stops on the shutdown token, which is cancelled by now.
    let _ = reloader.await;
    grpc.context("admin gRPC server failed")?;
    http.context("HTTP server failed")?;
    Ok(())
}

/// Serves the admin API on a bound listener until `shutdown`, then drains for `SHUTDOWN_GRACE`.
/// Its connections live under `limits` ([`GuardedListener`]), above TLS when `tls` is given.
pub async fn serve_grpc(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    releases: release::Releases,
    admission: auth::Admission,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    use switchboard_runtime::connections::incoming;
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config, "gRPC");
            let connections = incoming(GuardedListener::new(listener, limits, "grpc"));
            serve_grpc_connections(connections, releases, admission, shutdown).await
        }
        None => {
            // Without TCP_NODELAY, a reply written in two segments waits for the client's
            // delayed ACK (about 40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let connections = incoming(GuardedListener::new(listener, limits, "grpc"));
            serve_grpc_connections(connections, releases, admission, shutdown).await
        }
    }
}

/// Serves the admin API on `connections` until `shutdown`, then drains for `SHUTDOWN_GRACE`.
async fn serve_grpc_connections<IO>(
    connections: impl futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    releases: release::Releases,
    admission: auth::Admission,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    IO: tonic::transport::server::Connected
        + tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let builder = tonic::transport::Server::builder();
    let service = grpc::AdminService::new(releases, admission.clone(), shutdown.clone());
    let tasks = service.tasks();
    let in_flight = grpc::InFlight::default();
    // Streams per connection are bounded (h2 would allow hundreds), and a caller without a
    // known token is refused from its headers, before its message is read.
    let server = builder
        .max_concurrent_streams(Some(grpc::MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(grpc::AuthenticateFirstLayer::new(
            admission,
            in_flight.clone(),
        ))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(connections, shutdown.clone().cancelled_owned());
    let result = drain_requests(server, shutdown, in_flight).await;
    // The tasks the handlers started stop on the same shutdown (a synchronized flip withdraws
    // its preparation first); a handler that was closed after the grace may have left its task
    // running, and the server does not end before it.
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks of the admin API still running {SHUTDOWN_GRACE:?} after its requests; leaving them"
        );
    }
    result
}

/// Serves HTTP on a bound listener until `shutdown`, then drains for `SHUTDOWN_GRACE`. Each
/// request carries the address of its connection ([`http::PeerAddr`]) for the rate limit.
pub async fn serve_http<L>(
    listener: L,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    http::PeerAddr:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let service = router.into_make_service_with_connect_info::<http::PeerAddr>();
    let server = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    drain(
        async { server.await.map_err(anyhow::Error::from) },
        shutdown,
    )
    .await
}

/// [`drain`] for the admin gRPC API, which also ends once no request is in flight: its
/// connections include sidecars' outcome streams and idle connections, which HTTP/2's graceful
/// close would wait for as long as their client is stopped. The last response gets a moment to
/// leave.
async fn drain_requests<E: Into<anyhow::Error>>(
    server: impl Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
    in_flight: grpc::InFlight,
) -> anyhow::Result<()> {
    tokio::pin!(server);
    let drained = drain(&mut server, shutdown.clone());
    tokio::pin!(drained);
    tokio::select! {
        result = &mut drained => return result,
        () = async { shutdown.cancelled().await; in_flight.idle().await } => {}
    }
    let _ = tokio::time::timeout(LAST_RESPONSE_GRACE, drained).await;
    Ok(())
}

/// How long the last responses have to leave once no request is in flight.
const LAST_RESPONSE_GRACE: Duration = Duration::from_millis(200);

async fn drain<E: Into<anyhow::Error>>(
    server: impl Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(Into::into),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; closing them");
            Ok(())
        }
    }
}
