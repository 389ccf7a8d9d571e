//! TLS on the coordinator's listeners, with rustls (ring): the admin gRPC API and the HTTP API
//! both through a listener that completes each handshake before the server sees the
//! connection, many handshakes at once so that a silent client stalls nobody. With
//! `--tls-client-ca`, both require a client certificate signed by that CA; a client without
//! one never gets past the handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use crate::telemetry;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes under way at once on one listener. Handshakes run side by side, so
/// a client that opens a connection and says nothing holds one of these for at most
/// [`HANDSHAKE_TIMEOUT`], not the listener; past the cap, new connections are closed at once
/// (and counted) until handshakes finish.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// The settings of the flags: none, or a certificate with its key (and maybe a client CA).
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (None, None) => {
                anyhow::ensure!(
                    client_ca.is_none(),
                    "--tls-client-ca needs --tls-cert and --tls-key"
                );
                Ok(None)
            }
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: client_ca.map(Path::to_path_buf),
            })),
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
    }

    /// rustls's server configuration for both APIs: ALPN offers HTTP/2 (which gRPC needs)
    /// and HTTP/1.1.
    pub fn rustls(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect())
            .with_context(|| {
                format!(
                    "--tls-cert {} holds no valid PEM certificate",
                    self.cert.display()
                )
            })?;
        let key = PrivateKeyDer::from_pem_file(&self.key).with_context(|| {
            format!(
                "--tls-key {} holds no valid PEM private key",
                self.key.display()
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version is available")?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read --tls-client-ca {}", ca.display()))?
                {
                    let cert = cert.with_context(|| {
                        format!(
                            "--tls-client-ca {} holds an invalid certificate",
                            ca.display()
                        )
                    })?;
                    roots.add(cert).with_context(|| {
                        format!(
                            "--tls-client-ca {} holds an unusable certificate",
                            ca.display()
                        )
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .context("cannot build the client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .context("--tls-cert and --tls-key do not make a usable identity")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A listener that hands the server only connections whose TLS handshake completed.
/// Handshakes run concurrently, each under its own timeout, in tasks the listener owns:
/// dropping the listener (at shutdown) aborts those still under way.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    /// The API it serves, for the logs: `HTTP` or `gRPC`.
    api: &'static str,
}

impl TlsListener {
    /// A listener of the API named `api` (for the logs).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>, api: &'static str) -> Self {
        Self {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            api,
        }
    }
}

/// One handshake under its timeout; `None` when it failed or timed out (logged here, where it
/// is handled).
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    address: SocketAddr,
    api: &'static str,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, address)),
        Ok(Err(error)) => {
            tracing::info!(%address, %error, "TLS handshake refused on the {api} listener");
            metrics::counter!(telemetry::TLS_HANDSHAKES_FAILED, "reason" => "refused").increment(1);
            None
        }
        Err(_) => {
            tracing::info!(%address, "TLS handshake timed out on the {api} listener");
            metrics::counter!(telemetry::TLS_HANDSHAKES_FAILED, "reason" => "timeout").increment(1);
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, address)) => {
                        // Without TCP_NODELAY, a reply written in two segments waits for
                        // the client's delayed ACK (about 40 ms).
                        let _ = stream.set_nodelay(true);
                        if self.handshakes.len() >= MAX_PENDING_HANDSHAKES {
                            metrics::counter!(telemetry::TLS_HANDSHAKES_FAILED, "reason" => "too_many")
                                .increment(1);
                            drop(stream);
                            continue;
                        }
                        self.handshakes
                            .spawn(handshake(self.acceptor.clone(), stream, address, self.api));
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: wait a little instead of
                        // spinning.
                        tracing::warn!(%error, api = self.api, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
