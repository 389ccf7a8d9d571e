//! What the coordinator and the sidecar both run: the etcd connection, batched reads of many
//! keys, periodic loops that stop on a token, and shutdown on SIGINT or SIGTERM.
//!
//! etcd-client balances requests over every endpoint it is given (tower's power-of-two-choices
//! over tonic connections), and a member that refuses or drops connections fails the requests
//! sent its way instead of being skipped (etcd-client issue #39). With one member of three
//! down, the coordinator would fail its requests while the cluster itself is healthy. So
//! [`keep_endpoints_answering`] probes each member on its own connection and takes a member
//! that does not answer out of the balanced client, and puts it back once it answers again.

pub mod connections;
pub mod host;
pub mod json_errors;

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// How long a member may take to answer a probe before it is taken out of service.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often each member is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

fn options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true)
}

/// Connects to etcd. The connection is lazy: the process starts while etcd is down and its
/// requests fail until etcd is back. Requests that need a leader fail instead of hanging on a
/// member cut off from the cluster.
pub async fn connect_etcd(endpoints: &[String]) -> anyhow::Result<etcd_client::Client> {
    etcd_client::Client::connect(endpoints, Some(options()))
        .await
        .with_context(|| format!("cannot set up the etcd client for {}", endpoints.join(",")))
}

/// An etcd user (`--etcd-user`, with the password from `SWITCHBOARD_ETCD_PASSWORD`). The
/// password is never printed: `Debug` leaves it out.
#[derive(Clone)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The environment variable that holds the password of `--etcd-user`.
pub const ETCD_PASSWORD_ENV: &str = "SWITCHBOARD_ETCD_PASSWORD";

impl EtcdUser {
    /// The user named by `--etcd-user`, with its password from the environment.
    pub fn from_flag(name: Option<&str>) -> anyhow::Result<Option<Self>> {
        let Some(name) = name else { return Ok(None) };
        let password = std::env::var(ETCD_PASSWORD_ENV).map_err(|_| {
            anyhow::anyhow!("--etcd-user {name} needs its password in {ETCD_PASSWORD_ENV}")
        })?;
        Ok(Some(Self {
            name: name.to_string(),
            password,
        }))
    }
}

/// TLS to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`), read once at start.
#[derive(Clone)]
pub struct EtcdTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// The settings of the flags: none, or a CA with, maybe, a client certificate and key.
    pub fn from_flags(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Self>> {
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(cert, "--etcd-cert")?, read(key, "--etcd-key")?)),
            (None, None) => None,
            _ => anyhow::bail!("--etcd-cert and --etcd-key go together"),
        };
        match ca {
            Some(ca) => Ok(Some(Self {
                ca: read(ca, "--etcd-ca")?,
                identity,
            })),
            None if identity.is_some() => anyhow::bail!("--etcd-cert needs --etcd-ca"),
            None => Ok(None),
        }
    }
}

/// The command-line flags of an etcd connection, shared by the coordinator and the sidecar.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EtcdArgs {
    /// The etcd user to connect as (see deploy/etcd/setup-auth.sh); its password comes from
    /// SWITCHBOARD_ETCD_PASSWORD.
    #[arg(long, value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// The CA (PEM) of an etcd that speaks TLS (https:// endpoints).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for an etcd that requires one; with --etcd-key.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
}

impl EtcdArgs {
    /// The connection these flags describe, with the password read from the environment and
    /// the TLS files read now, so that a bad one stops the start.
    pub fn options(&self) -> anyhow::Result<EtcdOptions> {
        Ok(EtcdOptions {
            user: EtcdUser::from_flag(self.etcd_user.as_deref())?,
            tls: EtcdTls::from_flags(
                self.etcd_ca.as_deref(),
                self.etcd_cert.as_deref(),
                self.etcd_key.as_deref(),
            )?,
        })
    }
}

/// How to connect to etcd: as whom, and with which TLS.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub user: Option<EtcdUser>,
    pub tls: Option<EtcdTls>,
}

impl EtcdOptions {
    fn connect_options(&self) -> etcd_client::ConnectOptions {
        let mut options = options();
        if let Some(user) = &self.user {
            options = options.with_user(user.name.clone(), user.password.clone());
        }
        if let Some(tls) = &self.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        options
    }
}

/// Connects to etcd with `options`. Authenticating needs etcd, so with a user this tries
/// again (every second, logging why) until etcd answers or `shutdown`; `None` then. Without
/// a user the connection is lazy.
pub async fn connect_etcd_as(
    endpoints: &[String],
    options: &EtcdOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<etcd_client::Client>> {
    let Some(user) = &options.user else {
        return etcd_client::Client::connect(endpoints, Some(options.connect_options()))
            .await
            .map(Some)
            .with_context(|| format!("cannot set up the etcd client for {}", endpoints.join(",")));
    };
    loop {
        match etcd_client::Client::connect(endpoints, Some(options.connect_options())).await {
            Ok(client) => return Ok(Some(client)),
            // Authentication refused is not going to change by trying again.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("authentication failed") =>
            {
                anyhow::bail!(
                    "etcd refused the user {} (--etcd-user): {}",
                    user.name,
                    status.message()
                );
            }
            Err(error) => {
                tracing::warn!(user = %user.name, %error, "cannot authenticate to etcd yet; trying again in 1 s");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One batch of [`get_in_batches`]: its range of the keys, and each key's value (`None` where
/// etcd holds none).
pub type Batch = (std::ops::Range<usize>, Vec<Option<Vec<u8>>>);

/// The values of `keys`, read in the transactions that [`read_batches`] cuts from the values'
/// expected `sizes` (within etcd's operation limit and gRPC's message limit), `in_flight`
/// transactions at once, and handed over batch by batch in order: the batch's range of `keys`
/// and each key's value, `None` where etcd holds none. `txn` sends one transaction, so that the
/// caller keeps its own timeout and error type.
///
/// [`read_batches`]: switchboard_proto::set::read_batches
pub fn get_in_batches<'a, E, Fut>(
    keys: &'a [String],
    sizes: &[u64],
    in_flight: usize,
    txn: impl Fn(etcd_client::Txn) -> Fut + 'a,
) -> impl futures::Stream<Item = Result<Batch, E>> + 'a
where
    Fut: Future<Output = Result<etcd_client::TxnResponse, E>> + 'a,
    E: 'a,
{
    use etcd_client::{Txn, TxnOp, TxnOpResponse};
    use futures::StreamExt;

    let batches = switchboard_proto::set::read_batches(sizes);
    futures::stream::iter(batches)
        .map(move |range| {
            let reads: Vec<TxnOp> = keys[range.clone()]
                .iter()
                .map(|key| TxnOp::get(key.as_str(), None))
                .collect();
            let response = txn(Txn::new().and_then(reads));
            async move {
                let response = response.await?;
                let mut values: Vec<Option<Vec<u8>>> = response
                    .op_responses()
                    .into_iter()
                    .map(|op| match op {
                        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                        _ => None,
                    })
                    .collect();
                // An answer short of operations leaves the rest absent, never misaligned.
                values.resize(range.len(), None);
                Ok((range, values))
            }
        })
        .buffered(in_flight.max(1))
}

/// The clock of a periodic loop that stops on a token: `while every.tick(&token).await { .. }`.
/// The first tick is at once; a round that runs late is followed by a whole period, never by
/// a burst of rounds catching up.
pub struct Every {
    interval: tokio::time::Interval,
}

impl Every {
    pub fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval }
    }

    /// Waits for the next tick: true then, false once `token` is cancelled.
    pub async fn tick(&mut self, token: &CancellationToken) -> bool {
        tokio::select! {
            () = token.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// Keeps `client`'s endpoints to the members that answer, until `shutdown`. Does nothing for a
/// single endpoint, which is never taken out: its errors must stay visible. At least one
/// endpoint always stays in service for the same reason.
pub async fn keep_endpoints_answering(
    client: etcd_client::Client,
    endpoints: Vec<String>,
    options: EtcdOptions,
    shutdown: CancellationToken,
) {
    if endpoints.len() < 2 {
        return;
    }
    let mut probes: Vec<Option<etcd_client::Client>> = vec![None; endpoints.len()];
    let mut in_service = vec![true; endpoints.len()];
    let mut every = Every::new(PROBE_EVERY);
    while every.tick(&shutdown).await {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let answers = probe(&mut probes[i], endpoint, &options).await;
            if answers == in_service[i] {
                continue;
            }
            let serving = in_service.iter().filter(|s| **s).count();
            if !answers && serving <= 1 {
                continue;
            }
            let changed = if answers {
                client.add_endpoint(endpoint).await
            } else {
                client.remove_endpoint(endpoint).await
            };
            match changed {
                Ok(()) => {
                    in_service[i] = answers;
                    if answers {
                        tracing::info!(%endpoint, "etcd member answers again; back in service");
                    } else {
                        tracing::warn!(%endpoint, "etcd member does not answer; out of service until it does");
                    }
                    metrics::gauge!("switchboard_etcd_endpoints_in_service")
                        .set(in_service.iter().filter(|s| **s).count() as f64);
                }
                Err(error) => {
                    tracing::warn!(%endpoint, %error, "cannot change the etcd client's endpoints")
                }
            }
        }
    }
}

/// Whether the member at `endpoint` answers a status request within [`PROBE_TIMEOUT`], on a
/// connection of its own.
async fn probe(
    slot: &mut Option<etcd_client::Client>,
    endpoint: &str,
    options: &EtcdOptions,
) -> bool {
    if slot.is_none() {
        let options = options
            .connect_options()
            .with_connect_timeout(PROBE_TIMEOUT);
        match tokio::time::timeout(
            PROBE_TIMEOUT,
            etcd_client::Client::connect([endpoint], Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => *slot = Some(client),
            _ => return false,
        }
    }
    let Some(client) = slot.as_mut() else {
        return false;
    };
    let answered = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, client.status()).await,
        Ok(Ok(_))
    );
    if !answered {
        // A fresh connection next time: a connection to a paused member can hang.
        *slot = None;
    }
    answered
}

/// Cancels `token` on SIGINT or SIGTERM. The listening task belongs to the caller: it is
/// aborted when the returned handle is dropped, so hold the handle for as long as signals
/// should stop the process.
#[must_use = "the signal listener is aborted when its handle is dropped"]
pub fn cancel_on_signal(token: CancellationToken) -> tokio_util::task::AbortOnDropHandle<()> {
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    }))
}
