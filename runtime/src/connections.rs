//! Connections to the HTTP APIs that cannot starve each other. A client that opens connections
//! and never finishes a request (half-sent headers, or nothing at all) would otherwise hold
//! them, and their file descriptors, forever: a few hundred took down every listener of a
//! process. [`GuardedListener`] wraps a listener so that:
//!
//! - a connection must finish its first request's head within the header timeout of being
//!   accepted, however slowly it trickles bytes; after its first answer, it is closed once it
//!   has been idle (nothing read or written) for the idle timeout;
//! - at most `max_connections` are open at once; at the cap, a new connection evicts the
//!   oldest one that has not been answered yet (a slow or silent client), so that a flood of
//!   half-sent requests cannot lock out a client that asks and goes; when every open
//!   connection has been answered, the new one is closed at once.
//!
//! The limits apply to the byte stream under HTTP, whatever the protocol: a long response
//! keeps its connection alive by writing, and the APIs have no request that waits silently
//! for longer than the idle timeout.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a connection may take to send its first request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answered connection may stay idle.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors kept free of HTTP connections: etcd, the other listeners, logs, the rule
/// worker's pipes.
pub const DESCRIPTOR_HEADROOM: u64 = 256;
/// The most HTTP connections of one listener, whatever the descriptor limit allows.
pub const MAX_CONNECTIONS: usize = 4096;

/// Counted in `switchboard_http_connections_closed_total{reason}`.
pub const CONNECTIONS_CLOSED: &str = "switchboard_http_connections_closed_total";
/// Why the listener closes a connection: `header_timeout`, `idle`, `evicted` (for a newer
/// one, at the cap) and `full` (at the cap, with every connection answered).
pub const CLOSE_REASONS: [&str; 4] = ["header_timeout", "idle", "evicted", "full"];

/// The `# HELP` line and the zero values of the listener's counter (the recorder installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        "HTTP connections the server closed, by reason: header_timeout (no whole request head in time), idle, evicted (the oldest unanswered one, for a newer connection at the cap), full (at the cap, every connection answered)."
    );
    for reason in CLOSE_REASONS {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(0);
    }
}

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The descriptor limit at start, after raising the soft limit to the hard one.
#[derive(Clone, Copy, Debug)]
pub struct DescriptorLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises this process's descriptor limit to its hard limit, so that connections are capped
/// by [`ConnectionLimits`] rather than by `EMFILE`. Returns the limit before and after (the
/// same when it could not be raised).
pub fn raise_descriptor_limit() -> io::Result<DescriptorLimit> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(DescriptorLimit {
            before: soft,
            now: hard,
        });
    }
    Ok(DescriptorLimit {
        before: soft,
        now: soft,
    })
}

impl ConnectionLimits {
    /// The limits for a listener of a process whose descriptor limit is `descriptors`: the
    /// cap leaves [`DESCRIPTOR_HEADROOM`] free, split between `listeners`.
    pub fn for_descriptors(descriptors: u64, listeners: u64) -> Self {
        let usable = descriptors.saturating_sub(DESCRIPTOR_HEADROOM) / listeners.max(1);
        ConnectionLimits {
            max_connections: usize::try_from(usable)
                .unwrap_or(MAX_CONNECTIONS)
                .clamp(16, MAX_CONNECTIONS),
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// What the listener knows of one open connection.
#[derive(Default)]
struct Shared {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

/// The open connections of one listener: all of them counted, the unanswered ones by age.
#[derive(Default)]
struct Registry {
    open: usize,
    unanswered: BTreeMap<u64, Arc<Shared>>,
}

/// A listener whose connections live under [`ConnectionLimits`].
pub struct GuardedListener<L> {
    inner: L,
    limits: ConnectionLimits,
    registry: Arc<Mutex<Registry>>,
    next_id: AtomicU64,
}

impl<L> GuardedListener<L> {
    pub fn new(inner: L, limits: ConnectionLimits) -> Self {
        GuardedListener {
            inner,
            limits,
            registry: Arc::new(Mutex::new(Registry::default())),
            next_id: AtomicU64::new(0),
        }
    }

    /// The cap now: the configured one, or less when the descriptor limit was lowered since
    /// the start (`prlimit`), keeping [`DESCRIPTOR_HEADROOM`] free.
    fn cap(&self) -> usize {
        use nix::sys::resource::{Resource, getrlimit};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, _)) => {
                let usable =
                    usize::try_from(soft.saturating_sub(DESCRIPTOR_HEADROOM)).unwrap_or(usize::MAX);
                self.limits.max_connections.min(usable.max(16))
            }
            Err(_) => self.limits.max_connections,
        }
    }

    /// Admits a new connection: under the cap, or by evicting the oldest unanswered one.
    fn admit(&self) -> Option<(u64, Arc<Shared>)> {
        let cap = self.cap();
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.open >= cap {
            let (_, oldest) = registry.unanswered.pop_first()?;
            oldest.evicted.store(true, Ordering::SeqCst);
            oldest.waker.wake();
            metrics::counter!(CONNECTIONS_CLOSED, "reason" => "evicted").increment(1);
            // The evicted one still counts until it is dropped; the new one is admitted now.
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::default());
        registry.open += 1;
        registry.unanswered.insert(id, shared.clone());
        Some((id, shared))
    }
}

impl<L> axum::serve::Listener for GuardedListener<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, address) = self.inner.accept().await;
            match self.admit() {
                Some((id, shared)) => {
                    let io = GuardedIo {
                        inner: io,
                        id,
                        shared,
                        registry: self.registry.clone(),
                        limits: self.limits,
                        answered: false,
                        deadline: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
                    };
                    return (io, address);
                }
                None => {
                    metrics::counter!(CONNECTIONS_CLOSED, "reason" => "full").increment(1);
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection under [`ConnectionLimits`]; dropping it frees its place.
pub struct GuardedIo<T> {
    inner: T,
    id: u64,
    shared: Arc<Shared>,
    registry: Arc<Mutex<Registry>>,
    limits: ConnectionLimits,
    /// Whether anything was written: the first request was answered.
    answered: bool,
    deadline: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    /// Notes activity: the deadline moves, once the connection has been answered.
    fn active(&mut self) {
        if self.answered {
            let next = Instant::now() + self.limits.idle_timeout;
            self.deadline.as_mut().reset(next);
        }
    }

    /// The error that ends a connection past its deadline or evicted, if it is.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.shared.waker.register(cx.waker());
        if self.shared.evicted.load(Ordering::SeqCst) {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "closed for a newer connection",
            ));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let reason = if self.answered {
                "idle"
            } else {
                "header_timeout"
            };
            metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
            return Some(io::Error::new(io::ErrorKind::TimedOut, reason));
        }
        None
    }
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.open = registry.open.saturating_sub(1);
        registry.unanswered.remove(&self.id);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.expired(cx) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            if !self.answered {
                self.answered = true;
                let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
                registry.unanswered.remove(&self.id);
            }
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the descriptor limit as far as it goes, logs it, and returns the limits of one HTTP
/// listener of this process.
pub fn limits_for_this_process() -> ConnectionLimits {
    match raise_descriptor_limit() {
        Ok(descriptors) => {
            let limits = ConnectionLimits::for_descriptors(descriptors.now, 1);
            tracing::info!(
                descriptors_before = descriptors.before,
                descriptors = descriptors.now,
                max_http_connections = limits.max_connections,
                "file descriptor limit"
            );
            limits
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the file descriptor limit; assuming 1024");
            ConnectionLimits::for_descriptors(1024, 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_headroom_for_everything_else() {
        assert_eq!(
            ConnectionLimits::for_descriptors(1024, 1).max_connections,
            768
        );
        assert_eq!(
            ConnectionLimits::for_descriptors(1024, 2).max_connections,
            384
        );
        assert_eq!(
            ConnectionLimits::for_descriptors(1_048_576, 1).max_connections,
            MAX_CONNECTIONS
        );
        // A limit below the headroom still lets a few connections in.
        assert_eq!(
            ConnectionLimits::for_descriptors(100, 1).max_connections,
            16
        );
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_unanswered_connection_makes_room() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("an address");
        let limits = ConnectionLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
        };
        let mut guarded = GuardedListener::new(listener, limits);
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            clients.push(
                tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connects"),
            );
            let (io, _) = axum::serve::Listener::accept(&mut guarded).await;
            accepted.push(io);
        }
        // The first was evicted for the third; the second was not.
        assert!(accepted[0].shared.evicted.load(Ordering::SeqCst));
        assert!(!accepted[1].shared.evicted.load(Ordering::SeqCst));
        assert!(!accepted[2].shared.evicted.load(Ordering::SeqCst));
        let mut buffer = [0u8; 8];
        let mut first = ReadBuf::new(&mut buffer);
        let read =
            std::future::poll_fn(|cx| Pin::new(&mut accepted[0]).poll_read(cx, &mut first)).await;
        assert_eq!(read.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
    }
}
