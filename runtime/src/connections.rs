//! Connections to the HTTP and gRPC APIs that cannot starve each other. A client that opens
//! connections and never finishes a request (half-sent headers, or nothing at all) would
//! otherwise hold them, and their file descriptors, forever: a few hundred took down every
//! listener of a process. [`GuardedListener`] wraps a listener so that:
//!
//! - a connection must make its first request within the header timeout of being accepted,
//!   however slowly it trickles bytes; after that, it is closed once it has been idle (nothing
//!   read or written) for the idle timeout;
//! - at most `max_connections` are open at once; at the cap, a new connection evicts the
//!   oldest one that has not been answered yet (a slow or silent client), so that a flood of
//!   half-sent requests cannot lock out a client that asks and goes; when every open
//!   connection has been answered, the new one is closed at once.
//!
//! The limits apply to the byte stream under HTTP (above TLS), so they hold for HTTP/1.1 and
//! HTTP/2 alike. What "made its first request" means is read from the bytes: an HTTP/2
//! connection (it opens with the HTTP/2 preface) has made it once a whole header block has
//! arrived, because an HTTP/2 server writes its settings before the client says anything; an
//! HTTP/1.1 connection, once the server has answered it. A long response keeps its connection
//! alive by writing, HTTP/2 keep-alive pings keep an idle gRPC connection alive, and the APIs
//! have no request that waits silently for longer than the idle timeout.

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
/// The most HTTP connections of one listener by default, whatever the descriptor limit allows
/// (the coordinator's `--max-connections` changes it).
pub const MAX_CONNECTIONS: usize = 4096;

/// Counted in `switchboard_http_connections_closed_total{listener, reason}`.
pub const CONNECTIONS_CLOSED: &str = "switchboard_http_connections_closed_total";
/// Why the listener closes a connection: `header_timeout`, `idle`, `evicted` (for a newer
/// one, at the cap) and `full` (at the cap, with every connection answered).
pub const CLOSE_REASONS: [&str; 4] = ["header_timeout", "idle", "evicted", "full"];

/// The `# HELP` line of the listeners' counter (the recorder installed); each
/// [`GuardedListener`] sets its own zero values.
pub fn describe_metrics() {
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections an HTTP or gRPC listener closed, by listener and reason: header_timeout (no first request in time), idle, evicted (the oldest one without a request, for a newer connection at the cap), full (at the cap, every connection in use)."
    );
}

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// How many listeners share the process's descriptors (each gets its part of them).
    pub listeners: u64,
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
    /// The limits for a listener of a process whose descriptor limit is `descriptors`: at
    /// most `most` connections, and fewer when the descriptors, less [`DESCRIPTOR_HEADROOM`]
    /// and split between `listeners`, do not allow as many.
    pub fn for_descriptors(descriptors: u64, listeners: u64, most: usize) -> Self {
        let usable = descriptors.saturating_sub(DESCRIPTOR_HEADROOM) / listeners.max(1);
        let most = most.max(16);
        ConnectionLimits {
            max_connections: usize::try_from(usable).unwrap_or(most).clamp(16, most),
            listeners: listeners.max(1),
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// The first bytes of an HTTP/2 connection.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far a connection is on the way to its first request, read from its bytes.
#[derive(Debug)]
enum FirstRequest {
    /// Nothing read yet, or only the first `matched` bytes of the HTTP/2 preface.
    Undecided { matched: usize },
    /// HTTP/1.1: it has made its request once the server answers.
    Http1,
    /// HTTP/2: it has made its request once a whole header block has arrived.
    Http2(FrameScanner),
}

impl FirstRequest {
    /// Reads `bytes` from the client; true once they complete an HTTP/2 request's head.
    fn read(&mut self, mut bytes: &[u8]) -> bool {
        if let FirstRequest::Undecided { matched } = self {
            while *matched < HTTP2_PREFACE.len() {
                let Some((&byte, rest)) = bytes.split_first() else {
                    return false;
                };
                if byte != HTTP2_PREFACE[*matched] {
                    *self = FirstRequest::Http1;
                    return false;
                }
                *matched += 1;
                bytes = rest;
            }
            *self = FirstRequest::Http2(FrameScanner::default());
        }
        match self {
            FirstRequest::Http2(scanner) => scanner.read(bytes),
            _ => false,
        }
    }
}

/// Follows HTTP/2 frames by their 9-byte headers until a header block ends (a HEADERS or
/// CONTINUATION frame with END_HEADERS, and its payload), without decoding anything.
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; 9],
    header_filled: usize,
    payload_left: usize,
    payload_ends_a_head: bool,
}

impl FrameScanner {
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const END_HEADERS: u8 = 0x4;

    /// Reads `bytes`; true once a header block has ended within them.
    fn read(&mut self, mut bytes: &[u8]) -> bool {
        loop {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(bytes.len());
                self.payload_left -= skipped;
                bytes = &bytes[skipped..];
                if self.payload_left > 0 {
                    return false;
                }
                if self.payload_ends_a_head {
                    return true;
                }
            }
            if bytes.is_empty() {
                return false;
            }
            let wanted = (self.header.len() - self.header_filled).min(bytes.len());
            self.header[self.header_filled..self.header_filled + wanted]
                .copy_from_slice(&bytes[..wanted]);
            self.header_filled += wanted;
            bytes = &bytes[wanted..];
            if self.header_filled < self.header.len() {
                return false;
            }
            self.header_filled = 0;
            let [l0, l1, l2, kind, flags, ..] = self.header;
            self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            self.payload_ends_a_head = matches!(kind, Self::HEADERS | Self::CONTINUATION)
                && flags & Self::END_HEADERS != 0;
            if self.payload_left == 0 && self.payload_ends_a_head {
                return true;
            }
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
    /// The `listener` label of its metrics: `http` or `grpc`.
    name: &'static str,
    registry: Arc<Mutex<Registry>>,
    next_id: AtomicU64,
}

impl<L> GuardedListener<L> {
    /// Guards `inner`, whose connections are counted in the metrics as listener `name`.
    pub fn new(inner: L, limits: ConnectionLimits, name: &'static str) -> Self {
        for reason in CLOSE_REASONS {
            metrics::counter!(CONNECTIONS_CLOSED, "listener" => name, "reason" => reason)
                .increment(0);
        }
        GuardedListener {
            inner,
            limits,
            name,
            registry: Arc::new(Mutex::new(Registry::default())),
            next_id: AtomicU64::new(0),
        }
    }

    /// The cap now: the configured one, or less when the descriptor limit was lowered since
    /// the start (`prlimit`), keeping [`DESCRIPTOR_HEADROOM`] free and sharing the rest.
    fn cap(&self) -> usize {
        use nix::sys::resource::{Resource, getrlimit};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, _)) => {
                let usable = soft.saturating_sub(DESCRIPTOR_HEADROOM) / self.limits.listeners;
                let usable = usize::try_from(usable).unwrap_or(usize::MAX);
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
            metrics::counter!(CONNECTIONS_CLOSED, "listener" => self.name, "reason" => "evicted")
                .increment(1);
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
                        listener: self.name,
                        first_request: FirstRequest::Undecided { matched: 0 },
                        answered: false,
                        deadline: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
                    };
                    return (io, address);
                }
                None => {
                    metrics::counter!(CONNECTIONS_CLOSED, "listener" => self.name, "reason" => "full")
                        .increment(1);
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
    listener: &'static str,
    first_request: FirstRequest,
    /// Whether the connection has made its first request (see the module's notes): from then
    /// on, the idle timeout applies instead of the header timeout, and it is not evicted.
    answered: bool,
    deadline: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    /// Notes that the connection has made its first request.
    fn now_answered(&mut self) {
        if !self.answered {
            self.answered = true;
            let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
            registry.unanswered.remove(&self.id);
        }
    }

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
            metrics::counter!(CONNECTIONS_CLOSED, "listener" => self.listener, "reason" => reason)
                .increment(1);
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
                    if !self.answered && self.first_request.read(&buf.filled()[before..]) {
                        self.now_answered();
                    }
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
            // An HTTP/2 server writes before the client's request (its settings, a ping), so
            // only an HTTP/1.1 answer counts.
            if matches!(self.first_request, FirstRequest::Http1) {
                self.now_answered();
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

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for GuardedIo<T> {
    type ConnectInfo = T::ConnectInfo;

    /// The connection's own information (its address, its TLS peer), so that a gRPC handler
    /// sees the same as without the guard.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connections of `listener` as the stream of incoming connections that tonic serves.
pub fn incoming<L>(
    listener: GuardedListener<L>,
) -> impl futures::Stream<Item = io::Result<GuardedIo<L::Io>>>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    futures::stream::unfold(listener, |mut listener| async move {
        let (io, _) = axum::serve::Listener::accept(&mut listener).await;
        Some((Ok(io), listener))
    })
}

/// Raises the descriptor limit as far as it goes, logs it, and returns the limits of each of
/// this process's `listeners`, with at most `most` connections each.
pub fn limits_for_this_process(listeners: u64, most: usize) -> ConnectionLimits {
    match raise_descriptor_limit() {
        Ok(descriptors) => {
            let limits = ConnectionLimits::for_descriptors(descriptors.now, listeners, most);
            tracing::info!(
                descriptors_before = descriptors.before,
                descriptors = descriptors.now,
                max_connections_per_listener = limits.max_connections,
                "file descriptor limit"
            );
            limits
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the file descriptor limit; assuming 1024");
            ConnectionLimits::for_descriptors(1024, listeners, most)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_headroom_for_everything_else() {
        let cap = |descriptors, listeners, most| {
            ConnectionLimits::for_descriptors(descriptors, listeners, most).max_connections
        };
        assert_eq!(cap(1024, 1, MAX_CONNECTIONS), 768);
        assert_eq!(cap(1024, 2, MAX_CONNECTIONS), 384);
        assert_eq!(cap(1_048_576, 1, MAX_CONNECTIONS), MAX_CONNECTIONS);
        // A fleet's leader may take more, as far as its descriptors allow.
        assert_eq!(cap(1_048_576, 2, 20_000), 20_000);
        assert_eq!(cap(30_256, 2, 20_000), 15_000);
        // A limit below the headroom still lets a few connections in.
        assert_eq!(cap(100, 1, MAX_CONNECTIONS), 16);
        assert_eq!(cap(1_048_576, 1, 0), 16);
    }

    /// Feeds `bytes` to a new connection's reader in pieces of `piece` bytes; the offset just
    /// after the piece at which it saw the first request's head, if it did.
    fn first_request_seen(bytes: &[u8], piece: usize) -> Option<usize> {
        let mut first_request = FirstRequest::Undecided { matched: 0 };
        let mut offset = 0;
        for chunk in bytes.chunks(piece) {
            offset += chunk.len();
            if first_request.read(chunk) {
                return Some(offset);
            }
        }
        None
    }

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let length = u32::try_from(payload).expect("a small frame").to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 1];
        frame.resize(9 + payload, 0xAB);
        frame
    }

    #[test]
    fn an_http2_request_is_seen_when_its_header_block_ends() {
        let settings = frame(0x4, 0, 12);
        let data = frame(0x0, 0, 40);
        let headers_open = frame(0x1, 0, 30);
        let continuation_end = frame(0x9, 0x4, 7);
        let mut bytes = HTTP2_PREFACE.to_vec();
        bytes.extend(&settings);
        bytes.extend(&data);
        bytes.extend(&headers_open);
        bytes.extend(&continuation_end);
        bytes.extend(frame(0x0, 0x1, 5));
        let end_of_head = bytes.len() - 14;
        for piece in [1, 2, 7, 9, 10, 64, bytes.len()] {
            let seen = first_request_seen(&bytes, piece).expect("a request");
            assert!(
                seen >= end_of_head && seen < end_of_head + piece,
                "in pieces of {piece}: seen at {seen}, the head ends at {end_of_head}"
            );
        }
        // A header block that has not ended yet, or its last bytes missing, is no request.
        assert_eq!(first_request_seen(&bytes[..end_of_head - 1], 3), None);
        let mut unended = HTTP2_PREFACE.to_vec();
        unended.extend(&settings);
        unended.extend(&headers_open);
        unended.extend(&data);
        assert_eq!(first_request_seen(&unended, 5), None);
        // An empty header block with END_HEADERS is one.
        let mut empty = HTTP2_PREFACE.to_vec();
        empty.extend(frame(0x1, 0x5, 0));
        assert_eq!(first_request_seen(&empty, 4), Some(empty.len()));
    }

    #[test]
    fn http1_is_told_from_http2_by_the_preface() {
        let mut first_request = FirstRequest::Undecided { matched: 0 };
        assert!(!first_request.read(b"PRI * HTTP/2"));
        assert!(matches!(
            first_request,
            FirstRequest::Undecided { matched: 12 }
        ));
        assert!(!first_request.read(b"POST / HTTP/1.1\r\n"));
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /v1",
            b"PRI * HTTP/1.1\r\n",
        ] {
            let mut first_request = FirstRequest::Undecided { matched: 0 };
            assert!(!first_request.read(start));
            assert!(
                matches!(first_request, FirstRequest::Http1),
                "{start:?} is HTTP/1.1"
            );
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_unanswered_connection_makes_room() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("an address");
        let limits = ConnectionLimits {
            max_connections: 2,
            listeners: 1,
            header_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
        };
        let mut guarded = GuardedListener::new(listener, limits, "test");
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
