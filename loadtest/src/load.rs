//! A small load generator: closed-loop saturation and open-loop fixed-rate runs over any kind
//! of connection (HTTP/1.1, gRPC, etcd), with the same scheduling and clock for every target.
//!
//! The fixed-rate run releases requests from one pacing thread as they fall due (to within
//! about 0.1 ms) to whichever connection is free, and measures each from the instant it fell
//! due, not from the instant it was sent: a stall shows up in every request it delayed (no
//! coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use switchboard_proto::pb::GetRequest;
use switchboard_proto::pb::reader_client::ReaderClient;

use crate::stats::Latency;

/// One connection that can repeat one request.
pub trait Conn: Send {
    /// Sends the request and reads the whole answer; an error counts as a failed request.
    fn call(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// Opens a new connection to the target.
pub type Connect = Arc<dyn Fn() -> BoxFuture<'static, Result<Box<dyn Conn>>> + Send + Sync>;

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub connections: usize,
    /// The offered rate of a fixed-rate run; `None` for a saturation run.
    pub offered_rps: Option<f64>,
    pub completed: u64,
    pub errors: u64,
    pub seconds: f64,
    pub achieved_rps: f64,
    pub latency: Latency,
}

/// Closed loop: every connection sends its next request as soon as the last one is answered,
/// for `duration`. The throughput is the target's at saturation with that many connections.
pub async fn saturate(
    connect: &Connect,
    connections: usize,
    duration: Duration,
) -> Result<RunResult> {
    run(connect, connections, duration, None).await
}

/// Open loop at `rate` requests per second over all connections, for `duration`.
pub async fn fixed_rate(
    connect: &Connect,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> Result<RunResult> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("the offered rate must be a positive number, not {rate}");
    }
    run(connect, connections, duration, Some(rate)).await
}

async fn run(
    connect: &Connect,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result<RunResult> {
    let mut opened = Vec::with_capacity(connections);
    for index in 0..connections {
        opened.push(
            connect()
                .await
                .with_context(|| format!("opening connection {index}"))?,
        );
    }
    let started = Instant::now();
    let end = started + duration;
    // The fixed rate is paced by one thread that releases a permit for every request as it
    // falls due, checking every 100 µs: tokio's timer rounds every sleep up to a whole
    // millisecond, which at tens of thousands of requests a second would turn the schedule
    // into bursts and charge the client's own lateness to the server.
    let pacer = rate.map(|rate| Pacer::start(rate, started, end));
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in opened {
        let pacer = pacer.clone();
        workers.spawn(async move {
            let mut samples = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            loop {
                let measured_from = match &pacer {
                    // Measured from when the request fell due, not from when a connection
                    // was free to send it: waiting for the server counts.
                    Some(pacer) => match pacer.next_due().await {
                        Some(due) => due,
                        None => break,
                    },
                    None => Instant::now(),
                };
                if measured_from >= end {
                    break;
                }
                match conn.call().await {
                    Ok(()) => samples.push(measured_from.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        });
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(joined) = workers.join_next().await {
        let (mut worker_samples, worker_errors) = joined.context("a load worker panicked")?;
        samples.append(&mut worker_samples);
        errors += worker_errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let completed = samples.len() as u64;
    Ok(RunResult {
        connections,
        offered_rps: rate,
        completed,
        errors,
        seconds,
        achieved_rps: completed as f64 / seconds,
        latency: Latency::from_samples(&mut samples),
    })
}

/// Releases requests at a fixed rate to whichever connection is free.
#[derive(Clone)]
struct Pacer {
    permits: Arc<tokio::sync::Semaphore>,
    taken: Arc<std::sync::atomic::AtomicU64>,
    started: Instant,
    rate: f64,
}

impl Pacer {
    /// Starts the pacing thread, which stops (and closes the permits) at `end`.
    fn start(rate: f64, started: Instant, end: Instant) -> Self {
        let pacer = Self {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            taken: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            started,
            rate,
        };
        let permits = pacer.permits.clone();
        std::thread::spawn(move || {
            let mut released = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    permits.close();
                    return;
                }
                // Request k (from 0) falls due at k / rate.
                let due = ((now - started).as_secs_f64() * rate) as u64 + 1;
                if due > released {
                    permits.add_permits(usize::try_from(due - released).unwrap_or(usize::MAX));
                    released = due;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        pacer
    }

    /// Waits for the next request to fall due and returns when it did; `None` at the end.
    async fn next_due(&self) -> Option<Instant> {
        self.permits.acquire().await.ok()?.forget();
        // Permits are released only once due, so the k-th one taken was due at k / rate.
        let k = self
            .taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(self.started + Duration::from_secs_f64(k as f64 / self.rate))
    }
}

/// HTTP/1.1 GETs of one path over keep-alive connections, with hyper's own client connection
/// (no pool, no extra layers), so that the client costs as little as it can.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Connect {
    http_request(addr, path, None)
}

/// HTTP/1.1 POSTs of one JSON body to one path, as [`http_get`] does GETs.
pub fn http_post_json(addr: std::net::SocketAddr, path: &str, body: &str) -> Connect {
    http_request(addr, path, Some(Bytes::from(body.to_string())))
}

fn http_request(addr: std::net::SocketAddr, path: &str, body: Option<Bytes>) -> Connect {
    let path = path.to_string();
    Arc::new(move || {
        let (path, body) = (path.clone(), body.clone());
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let conn: Box<dyn Conn> = Box::new(HttpConn {
                sender,
                path,
                host: addr.to_string(),
                body,
            });
            Ok(conn)
        })
    })
}

struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: String,
    host: String,
    /// A POST's body; `None` for a GET.
    body: Option<Bytes>,
}

impl Conn for HttpConn {
    fn call(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let request = match &self.body {
                None => hyper::Request::get(self.path.as_str())
                    .header(hyper::header::HOST, self.host.as_str())
                    .body(Full::new(Bytes::new()))?,
                Some(body) => hyper::Request::post(self.path.as_str())
                    .header(hyper::header::HOST, self.host.as_str())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))?,
            };
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if !status.is_success() || body.is_empty() {
                bail!("HTTP {status}");
            }
            Ok(())
        })
    }
}

/// gRPC `Reader.Get` of one key; each connection is its own HTTP/2 channel.
pub fn grpc_get(url: &str, namespace: &str, key: &str) -> Connect {
    let (url, namespace, key) = (url.to_string(), namespace.to_string(), key.to_string());
    Arc::new(move || {
        let (url, namespace, key) = (url.clone(), namespace.clone(), key.clone());
        Box::pin(async move {
            let client = ReaderClient::connect(url.clone())
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let conn: Box<dyn Conn> = Box::new(GrpcConn {
                client,
                namespace,
                key,
            });
            Ok(conn)
        })
    })
}

struct GrpcConn {
    client: ReaderClient<tonic::transport::Channel>,
    namespace: String,
    key: String,
}

impl Conn for GrpcConn {
    fn call(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let reply = self
                .client
                .get(GetRequest {
                    namespace: self.namespace.clone(),
                    key: self.key.clone(),
                    consumer: String::new(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if reply.value_json.is_empty() {
                bail!("empty answer");
            }
            Ok(())
        })
    }
}

/// A range read of one etcd key: what an application without a sidecar would do.
pub fn etcd_get(endpoint: &str, key: &str) -> Connect {
    let (endpoint, key) = (endpoint.to_string(), key.to_string());
    Arc::new(move || {
        let (endpoint, key) = (endpoint.clone(), key.clone());
        Box::pin(async move {
            let client = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .with_context(|| format!("connecting to etcd at {endpoint}"))?;
            let conn: Box<dyn Conn> = Box::new(EtcdConn {
                kv: client.kv_client(),
                key,
            });
            Ok(conn)
        })
    })
}

struct EtcdConn {
    kv: etcd_client::KvClient,
    key: String,
}

impl Conn for EtcdConn {
    fn call(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let response = self.kv.get(self.key.as_str(), None).await?;
            if response.kvs().is_empty() {
                bail!("key {} is missing", self.key);
            }
            Ok(())
        })
    }
}
