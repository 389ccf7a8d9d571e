//! Switchboard's sidecar: watches etcd read-only, holds the verified metadata sets of its
//! namespaces in memory and serves them to the application on localhost, over HTTP and gRPC.
//!
//! Tasks and their owner: [`run`] starts one sync loop per namespace, the health publisher and
//! the two servers, all stopped by one `CancellationToken`; each sync loop owns the switches it
//! schedules for an activation point. Shutdown order: the servers stop accepting and drain (at
//! most `SHUTDOWN_GRACE`), then the sync loops stop with their scheduled switches, then the
//! health publisher revokes its lease so that `status` drops this sidecar at once.

pub mod backoff;
pub mod cache;
pub mod changes;
pub mod grpc;
pub mod health;
pub mod http;
pub mod loader;
pub mod namespace;
pub mod ofrep;
pub mod outcomes;
pub mod preview;
pub mod reports;
pub mod serve;
pub mod snapshot;
pub mod sse;
pub mod sync;
pub mod telemetry;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use switchboard_proto::Keys;
use switchboard_proto::keys::validate_namespace;
use switchboard_runtime::connections::{GuardedListener, incoming};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long reads in flight may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Switchboard sidecar: serves verified metadata sets from etcd on localhost.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// A namespace to serve; repeat for more.
    #[arg(long = "namespace", required = true)]
    pub namespaces: Vec<String>,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// Address of the HTTP read API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub http: SocketAddr,
    /// Address of the gRPC read API.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub grpc: SocketAddr,
    #[command(flatten)]
    pub hosts: switchboard_runtime::host::HostArgs,
    /// How to connect to etcd: as which user, with which TLS.
    #[command(flatten)]
    pub etcd_connection: switchboard_runtime::EtcdArgs,
    /// A bearer token that reads, reports and /v1/status need (the probes and /metrics stay
    /// open). Set it in the environment, not on the command line.
    #[arg(
        long,
        env = "SWITCHBOARD_SIDECAR_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,
    /// This sidecar's id; the host name by default.
    #[arg(long)]
    pub id: Option<String>,
    /// The bearer token with which outcomes are streamed to the leader, when the coordinator
    /// runs with `--auth`: a user with the `reporter` role (`sbctl token new NAME --role
    /// reporter`). Set it in the environment, not on the command line.
    #[arg(
        long,
        env = "SWITCHBOARD_REPORT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub report_token: Option<String>,
    /// The PEM CA certificate that signed the coordinator's, for a leader reached over https.
    #[arg(long, env = "SWITCHBOARD_COORDINATOR_CA", value_name = "FILE")]
    pub coordinator_ca: Option<PathBuf>,
    /// The name the coordinator's certificate is checked against, when the leader's advertised
    /// URL names an address its certificate does not (a pod's IP address, and a certificate
    /// for the Service's name).
    #[arg(long, env = "SWITCHBOARD_COORDINATOR_TLS_NAME", value_name = "NAME")]
    pub coordinator_tls_name: Option<String>,
    /// Directory for the verified last-known-good copy of every namespace, served at start
    /// until etcd answers; `.switchboard/sidecar-<id>` by default.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Prefix of every etcd key.
    #[arg(long, default_value = "/switchboard")]
    pub prefix: String,
    /// How long a set stays in memory after it stops being served, for reads pinned to its
    /// version (X-Switchboard-Version) and for the keys a change feed reports.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub keep_replaced_seconds: u64,
    /// The time to live of the health record's lease: how long a sidecar that died stays in
    /// `status` and holds up `flip --wait`. Keep-alives go every third of it, so a longer
    /// lease costs etcd less per sidecar (3 to 600).
    #[arg(long, default_value_t = health::LEASE_TTL_SECONDS, value_name = "SECONDS", value_parser = clap::value_parser!(i64).range(3..=600))]
    pub health_lease_seconds: i64,
    /// How long a namespace's watch may stay quiet before the sidecar asks etcd whether it is
    /// still current (a progress request; 15 to 20 s by default, spread so that a fleet does
    /// not ask at one instant). It bounds the staleness gauge, not the detection of a dead
    /// connection, which the connection's keep-alive pings do. Each request costs etcd one
    /// message per namespace: 10,000 sidecars ask 500 a second at 20 s (1 to 300).
    #[arg(long, default_value_t = sync::PROGRESS_EVERY.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=300))]
    pub etcd_progress_seconds: u64,
}

impl Args {
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "sidecar".to_string())
        })
    }
}

/// Checks `--id` ([`switchboard_proto::keys::validate_sidecar_id`]). Two sidecars must not
/// share one, or they overwrite each other's record; give each a distinct `--id` when several
/// run on one host.
pub fn validate_sidecar_id(id: &str) -> anyhow::Result<()> {
    switchboard_proto::keys::validate_sidecar_id(id).map_err(|e| anyhow::anyhow!("--id {e}"))
}

pub use switchboard_runtime::{cancel_on_signal, connect_etcd};

/// Binds both listeners, so that a port in use is reported before anything starts.
pub async fn bind(args: &Args) -> anyhow::Result<(TcpListener, TcpListener)> {
    let http = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {} (--http)", args.http))?;
    let grpc = TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc)", args.grpc))?;
    Ok((http, grpc))
}

/// Runs the sidecar on pre-bound listeners until `shutdown` is cancelled.
pub async fn run(
    args: Args,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for ns in &args.namespaces {
        validate_namespace(ns).map_err(|e| anyhow::anyhow!("--namespace: {e}"))?;
    }
    let id = args.id();
    validate_sidecar_id(&id)?;
    // The origin of the report counts in the health records: a new value tells the judge that
    // this sidecar's counts started again from zero.
    let started_at_ms = switchboard_proto::time::now_ms();
    let keys = Keys::new(&args.prefix);
    let etcd_options = args.etcd_connection.options()?;
    let namespaces: HashMap<String, Arc<namespace::Namespace>> = args
        .namespaces
        .iter()
        .map(|name| {
            let keep = Duration::from_secs(args.keep_replaced_seconds);
            let namespace = namespace::Namespace::keeping_replaced_sets(name, keep);
            (name.clone(), namespace)
        })
        .collect();
    let health_dirty = Arc::new(Notify::new());
    let reports_changed = Arc::new(Notify::new());
    let cache = cache::DiskCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!(".switchboard/sidecar-{id}"))),
    );
    for namespace in namespaces.values() {
        serve_last_known_good(&cache, namespace).await;
    }

    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    if let Some(handle) = &metrics {
        tasks.spawn(telemetry::keep_up(handle.clone(), background.clone()));
    }
    {
        // Replaced sets are let go once their time is up, even when nothing else happens.
        let (namespaces, background) = (namespaces.clone(), background.clone());
        tasks.spawn(async move {
            let mut every = switchboard_runtime::Every::new(Duration::from_secs(5));
            while every.tick(&background).await {
                for namespace in namespaces.values() {
                    namespace.release_replaced_sets();
                }
            }
        });
    }
    for namespace in namespaces.values() {
        tasks.spawn(cache::keep_written(
            cache.clone(),
            namespace.clone(),
            background.clone(),
        ));
    }
    // The etcd connection is made in the background: with an etcd user, connecting needs etcd
    // to answer, and the last-known-good copies must be served meanwhile (invariant 5). Once
    // connected, the sync loops start on the same tracker, and the health publisher gets the
    // client.
    let (client_ready, client_for_health) = tokio::sync::oneshot::channel();
    {
        let (tasks, background, keys) = (tasks.clone(), background.clone(), keys.clone());
        let (endpoints, health_dirty) = (args.etcd.clone(), health_dirty.clone());
        let syncing: Vec<_> = namespaces.values().cloned().collect();
        let progress_every = Duration::from_secs(args.etcd_progress_seconds);
        tasks.clone().spawn(async move {
            let client = match switchboard_runtime::connect_etcd_as(
                &endpoints,
                &etcd_options,
                &background,
            )
            .await
            {
                Ok(Some(client)) => client,
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "cannot connect to etcd; serving the last-known-good copies only");
                    return;
                }
            };
            tasks.spawn(switchboard_runtime::keep_endpoints_answering(
                client.clone(),
                endpoints,
                etcd_options,
                background.clone(),
            ));
            for namespace in syncing {
                let sync = sync::NamespaceSync::new(
                    client.clone(),
                    keys.clone(),
                    namespace,
                    health_dirty.clone(),
                )
                .with_progress_every(progress_every);
                tasks.spawn(sync.run(background.clone()));
            }
            let _ = client_ready.send(client);
        });
    }
    // The health publisher stops last, after the sync loops, so it is not on their tracker.
    // This function owns it through its handle, which aborts it should the function end
    // without waiting for it.
    let health_stop = CancellationToken::new();
    let access = outcomes::CoordinatorAccess {
        token: args.report_token.clone(),
        ca_pem: match &args.coordinator_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read --coordinator-ca {}", path.display()))?,
            ),
            None => None,
        },
        tls_name: args.coordinator_tls_name.clone(),
    };
    let health_task = {
        let health_stop = health_stop.clone();
        let (keys, id, reports_changed) = (keys.clone(), id.clone(), reports_changed.clone());
        let namespaces: Vec<_> = namespaces.values().cloned().collect();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            // Without a connection (shutdown before one was made) there is nothing to publish.
            let Ok(client) = client_for_health.await else {
                return;
            };
            let streamer = outcomes::OutcomeStreamer {
                client: client.clone(),
                keys: keys.clone(),
                id: id.clone(),
                namespaces: namespaces.clone(),
                started_at_ms,
                access,
                reports_changed,
                channel: None,
            };
            let health = health::HealthPublisher {
                client,
                keys,
                id,
                namespaces,
                started_at_ms,
                dirty: health_dirty,
                lease_ttl_seconds: args.health_lease_seconds,
            };
            // The outcome stream and the health record end together, last.
            tokio::join!(streamer.run(health_stop.clone()), health.run(health_stop));
        }))
    };

    let api_token_sha256 = args.api_token.as_deref().map(|token| {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).to_vec()
    });
    let served = Arc::new(serve::Served {
        api_token_sha256,
        id: id.clone(),
        namespaces,
        started_at_ms,
        reports_changed,
        metrics,
        shutdown: shutdown.clone(),
    });
    tracing::info!(%id, http = %args.http, grpc = %args.grpc, etcd = %args.etcd.join(","), prefix = %args.prefix, namespaces = ?args.namespaces, "sidecar serving");

    let allowlist = args.hosts.allowlist();
    switchboard_runtime::connections::describe_metrics();
    // The two listeners share the descriptors that the process may open.
    let limits = switchboard_runtime::connections::limits_for_this_process(
        2,
        switchboard_runtime::connections::MAX_CONNECTIONS,
    );
    let http_listener = GuardedListener::new(http_listener, limits, "http");
    let http = axum::serve(http_listener, http::router(served.clone(), allowlist))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    // Without TCP_NODELAY every answer waits for the client's delayed ACK (about 40 ms).
    let grpc_listener = grpc_listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Keep-alive pings keep an application's quiet `WatchVersions` stream alive past the
    // listener's idle timeout, and find a peer that is gone.
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(grpc::MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(grpc::ReaderService::new(served))
        .serve_with_incoming_shutdown(
            incoming(GuardedListener::new(grpc_listener, limits, "grpc")),
            shutdown.clone().cancelled_owned(),
        );
    let servers = async {
        let (http, grpc) = tokio::join!(http, grpc);
        http.context("HTTP server failed")?;
        grpc.context("gRPC server failed")?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::pin!(servers);
    let result = tokio::select! {
        result = &mut servers => result,
        () = shutdown.cancelled() => {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("reads still in flight after {SHUTDOWN_GRACE:?}; closing them");
                    Ok(())
                }
            }
        }
    };
    background.cancel();
    tasks.close();
    tasks.wait().await;
    health_stop.cancel();
    let _ = health_task.await;
    tracing::info!("sidecar stopped");
    result
}

/// Publishes the verified last-known-good copy of a namespace, if there is one, so that reads
/// are answered before etcd is (invariant 5). A copy that does not verify is refused: the
/// namespace answers 503 until etcd provides a snapshot.
async fn serve_last_known_good(cache: &cache::DiskCache, namespace: &Arc<namespace::Namespace>) {
    let (reader, name) = (cache.clone(), namespace.name.clone());
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || reader.read(&name)).await {
        Ok(Ok(Some(snapshot))) => {
            let epoch = snapshot.routing.epoch;
            namespace.publish(Arc::new(snapshot));
            namespace.update_sync(|s| {
                s.source = namespace::Source::Disk;
                s.disk_copy_epoch = Some(epoch);
            });
            tracing::info!(ns = %namespace.name, epoch, path = %cache.path(&namespace.name).display(), seconds = started.elapsed().as_secs_f64(), "serving the last-known-good copy until etcd answers");
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => {
            tracing::error!(ns = %namespace.name, %error, "refusing the last-known-good copy");
            namespace.update_sync(|s| s.disk_copy_error = Some(error.to_string()));
        }
        Err(error) => {
            tracing::error!(ns = %namespace.name, %error, "reading the last-known-good copy failed")
        }
    }
}
