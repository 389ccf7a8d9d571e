//! The transport in front of the admin service: the credentials a request presents, and the
//! tower layer that asks admission from the headers alone and bounds each RPC's messages by
//! their announced length, before tonic reads a body; and the count of requests in flight,
//! for the shutdown to wait on.

use super::*;

/// What the caller presents: its bearer token, the name sbctl claims for it (recorded only
/// while the coordinator runs without `--auth`), and the address it connects from (with TLS
/// too: tonic records it for both).
pub(super) fn credentials<T>(request: &Request<T>) -> Credentials {
    credentials_from(
        |name| request.metadata().get(name).and_then(|v| v.to_str().ok()),
        request.remote_addr(),
    )
}

/// The credentials of a request whose header `name` is `header(name)`, from `peer`: the one
/// place that names the headers, for the handlers and for [`AuthenticateFirst`].
pub(super) fn credentials_from<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    peer: Option<std::net::SocketAddr>,
) -> Credentials {
    Credentials {
        authorization: header("authorization").map(str::to_string),
        claimed_actor: header("x-switchboard-actor").map(str::to_string),
        peer: peer.map(|address| address.ip()),
    }
}

/// The RPC of the admin service a request path names (`/switchboard.v1.Admin/<Method>`).
pub(super) fn rpc_of_path(path: &str) -> Option<Rpc> {
    let method = path.strip_prefix("/switchboard.v1.Admin/")?;
    Rpc::ALL.into_iter().find(|rpc| rpc.name() == method)
}

/// The largest message that `rpc` takes from a caller, who may call it or not (by its roles;
/// anyone may, without `--auth`). A caller who may not gets the small limit whatever the RPC,
/// so that the handler can still read its request and refuse (and audit) it.
pub fn message_limit(rpc: Rpc, may_call: bool) -> usize {
    if !may_call {
        return SMALL_MESSAGE_BYTES;
    }
    match rpc {
        Rpc::BeginStage | Rpc::UploadChunks => MAX_MESSAGE_BYTES,
        Rpc::SetContract => {
            switchboard_contract::document::MAX_CONTRACT_BYTES + SMALL_MESSAGE_BYTES
        }
        // Each hash is 64 hex digits and 2 bytes of framing.
        Rpc::GetChunks => MAX_CHUNKS_PER_READ * 66 + SMALL_MESSAGE_BYTES,
        _ => SMALL_MESSAGE_BYTES,
    }
}

/// A layer in front of the admin service that authenticates each request from its headers
/// before its body is read ([`Admission::authenticate_first`]): a caller without a known token
/// gets `UNAUTHENTICATED` at once, and the message it announced, however large, is never
/// buffered. The body of an admitted request is read under its RPC's [`message_limit`]: a
/// message that announces more is refused by its announced length, before any of it is
/// buffered.
///
/// It also counts the requests in flight ([`InFlight`]), but for outcome streams, which last as
/// long as their sidecar: a shutdown waits for requests, not for such streams or for idle
/// connections (a stopped client's connection would hold HTTP/2's graceful close forever).
#[derive(Clone)]
pub struct AuthenticateFirstLayer {
    admission: Admission,
    in_flight: InFlight,
}

impl AuthenticateFirstLayer {
    pub fn new(admission: Admission, in_flight: InFlight) -> Self {
        Self {
            admission,
            in_flight,
        }
    }
}

impl<S> tower::Layer<S> for AuthenticateFirstLayer {
    type Service = AuthenticateFirst<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthenticateFirst {
            inner,
            admission: self.admission.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthenticateFirst<S> {
    inner: S,
    admission: Admission,
    in_flight: InFlight,
}

/// The admin requests being answered, from their arrival until their response's body is done
/// with. The shutdown waits until there are none (or its grace ends), then closes what is left.
#[derive(Clone, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Returns once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request in flight, until dropped.
pub(super) struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that holds its request's place in [`InFlight`] until it is dropped.
pub(super) struct CountedBody {
    inner: tonic::body::Body,
    _in_flight: InFlightGuard,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tower::Service<axum::http::Request<B>> for AuthenticateFirst<S>
where
    S: tower::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        if let Some(rpc) = rpc_of_path(request.uri().path()) {
            let extensions = request.extensions();
            let peer = extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
                .or_else(|| {
                    extensions
                        .get::<tonic::transport::server::TlsConnectInfo<
                            tonic::transport::server::TcpConnectInfo,
                        >>()
                        .and_then(|info| info.get_ref().remote_addr())
                });
            let credentials = credentials_from(
                |name| request.headers().get(name).and_then(|v| v.to_str().ok()),
                peer,
            );
            let may_call = match self.admission.authenticate_first(&credentials, rpc) {
                Ok(may_call) => may_call,
                Err(error) => {
                    let status = Status::from(error);
                    return Box::pin(futures::future::ready(Ok(status.into_http())));
                }
            };
            let limit = message_limit(rpc, may_call);
            let request =
                request.map(|body| tonic::body::Body::new(LimitedMessages::new(body, rpc, limit)));
            if rpc == Rpc::ReportOutcomes {
                return Box::pin(self.inner.call(request));
            }
            let guard = self.in_flight.enter();
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await?;
                Ok(response.map(|inner| {
                    tonic::body::Body::new(CountedBody {
                        inner,
                        _in_flight: guard,
                    })
                }))
            });
        }
        Box::pin(self.inner.call(request.map(tonic::body::Body::new)))
    }
}

/// A gRPC request body whose messages may not announce more than `limit` bytes. It reads the
/// 5-byte prefix of each message (a compression flag and the length) as the data goes by, and
/// fails the body at the prefix of a message that is too large, so that the decoder never
/// sees the prefix and reserves nothing for it.
pub(super) struct LimitedMessages<B> {
    inner: B,
    rpc: Rpc,
    limit: usize,
    prefix: [u8; 5],
    prefix_filled: usize,
    message_left: usize,
}

impl<B> LimitedMessages<B> {
    pub(super) fn new(inner: B, rpc: Rpc, limit: usize) -> Self {
        Self {
            inner,
            rpc,
            limit,
            prefix: [0; 5],
            prefix_filled: 0,
            message_left: 0,
        }
    }

    /// Follows the messages through `data`; the refusal of one that announces too much.
    pub(super) fn read(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.message_left > 0 {
                let skipped = self.message_left.min(data.len());
                self.message_left -= skipped;
                data = &data[skipped..];
                continue;
            }
            let wanted = (self.prefix.len() - self.prefix_filled).min(data.len());
            self.prefix[self.prefix_filled..self.prefix_filled + wanted]
                .copy_from_slice(&data[..wanted]);
            self.prefix_filled += wanted;
            data = &data[wanted..];
            if self.prefix_filled < self.prefix.len() {
                return Ok(());
            }
            self.prefix_filled = 0;
            let [_, l0, l1, l2, l3] = self.prefix;
            let announced = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
            if announced > self.limit {
                return Err(Status::resource_exhausted(format!(
                    "{} takes messages of up to {} bytes from this caller; this one announces {announced} bytes",
                    self.rpc.name(),
                    self.limit
                )));
            }
            self.message_left = announced;
        }
        Ok(())
    }
}

impl<B> http_body::Body for LimitedMessages<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = bytes::Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return std::task::Poll::Ready(Some(Err(error.into()))),
            None => return std::task::Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = this.read(data)
        {
            return std::task::Poll::Ready(Some(Err(Box::new(status))));
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
