//! The admin gRPC service: decodes requests, passes each through the [`Admission`] (which names the
//! actor or refuses), delegates to `release`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use switchboard_proto::pb::{self, admin_server::Admin};
use switchboard_proto::set::{MAX_CHUNK_BYTES, is_sha256_hex};
use switchboard_proto::time::now_ms;
use switchboard_proto::{Policy, Slot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Admission, Credentials, Rpc};
use crate::release::{Actor, BeginStage, Releases};
use crate::routing::ChangeRequest;
use crate::store::MAX_TXN_BYTES;

/// Largest gRPC message accepted or sent: the chunks of an upload, or a manifest's pages
/// (up to 15 MiB) with its head. Only the RPCs that carry them take messages this large, and
/// only from callers who may call them ([`message_limit`]).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest message of every other RPC: names, a policy, a reason.
pub const SMALL_MESSAGE_BYTES: usize = 256 * 1024;
/// Most concurrent streams on one connection to the admin API.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;
/// Most chunks one GetChunks request may ask for.
pub const MAX_CHUNKS_PER_READ: usize = 10_000;
/// Chunks read from etcd before they are sent on.
const CHUNKS_PER_BATCH: usize = 4;
/// How long a denied upload is read for the namespace its denial is audited in.
const DENIED_UPLOAD_READ: Duration = Duration::from_secs(2);

pub struct AdminService {
    releases: Releases,
    admission: Admission,
    /// The tasks that handlers start (a synchronized flip, a chunk stream's reader): the
    /// server owns them, and shutdown waits for them.
    tasks: TaskTracker,
    /// The server's shutdown, on which those tasks stop.
    shutdown: CancellationToken,
}

impl AdminService {
    /// The service of a server that stops on `shutdown`.
    pub fn new(releases: Releases, admission: Admission, shutdown: CancellationToken) -> Self {
        Self {
            releases,
            admission,
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// The tracker of the tasks the handlers start, for the server to wait for at shutdown
    /// (after closing it).
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    pub fn into_server(self) -> pb::admin_server::AdminServer<Self> {
        pb::admin_server::AdminServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// What the caller presents: its bearer token, the name sbctl claims for it (recorded only
/// while the coordinator runs without `--auth`), and the address it connects from (with TLS
/// too: tonic records it for both).
fn credentials<T>(request: &Request<T>) -> Credentials {
    credentials_from(
        |name| request.metadata().get(name).and_then(|v| v.to_str().ok()),
        request.remote_addr(),
    )
}

/// The credentials of a request whose header `name` is `header(name)`, from `peer`: the one
/// place that names the headers, for the handlers and for [`AuthenticateFirst`].
fn credentials_from<'a>(
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
fn rpc_of_path(path: &str) -> Option<Rpc> {
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
struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that holds its request's place in [`InFlight`] until it is dropped.
struct CountedBody {
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
struct LimitedMessages<B> {
    inner: B,
    rpc: Rpc,
    limit: usize,
    prefix: [u8; 5],
    prefix_filled: usize,
    message_left: usize,
}

impl<B> LimitedMessages<B> {
    fn new(inner: B, rpc: Rpc, limit: usize) -> Self {
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
    fn read(&mut self, mut data: &[u8]) -> Result<(), Status> {
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

impl AdminService {
    /// The actor of `request` if it may call `rpc` on `ns` and is within its caller's rate
    /// limit; a denial is recorded and answered.
    async fn admit<T>(&self, request: &Request<T>, rpc: Rpc, ns: &str) -> Result<Actor, Status> {
        let credentials = credentials(request);
        Ok(self.admission.admit(&credentials, rpc, ns).await?)
    }
}

fn json_reply<T: serde::Serialize>(value: &T) -> Result<Response<pb::JsonReply>, Status> {
    let json = serde_json::to_string(value)
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))?;
    Ok(Response::new(pb::JsonReply { json }))
}

fn parse_slot(slot: &str) -> Result<Slot, Status> {
    slot.parse()
        .map_err(|e: String| Status::invalid_argument(e))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;
type EpochWaitStream = Pin<Box<dyn Stream<Item = Result<pb::EpochWaitProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::Status, &request.get_ref().namespace)
            .await?;
        let status = self.releases.status(&request.get_ref().namespace).await?;
        json_reply(&status)
    }

    async fn begin_stage(
        &self,
        request: Request<pb::BeginStageRequest>,
    ) -> Result<Response<pb::BeginStageReply>, Status> {
        let actor = self
            .admit(&request, Rpc::BeginStage, &request.get_ref().namespace)
            .await?;
        let request = request.into_inner();
        let outcome = self
            .releases
            .begin_stage(
                &request.namespace,
                request.manifest_json.as_bytes(),
                request.pages,
                &request.message,
                &actor,
            )
            .await?;
        let reply = match outcome {
            BeginStage::Staging {
                slot,
                version,
                missing_chunks,
                slot_revision,
                replaced_version,
            } => pb::BeginStageReply {
                outcome: "staging".into(),
                slot: slot.to_string(),
                version,
                missing_chunks,
                slot_revision,
                replaced_version: replaced_version.unwrap_or_default(),
                missing_pages: Vec::new(),
            },
            BeginStage::AlreadyStaged { slot, version } => pb::BeginStageReply {
                outcome: "already_staged".into(),
                slot: slot.to_string(),
                version,
                ..Default::default()
            },
            BeginStage::AlreadyActive { slot, version } => pb::BeginStageReply {
                outcome: "already_active".into(),
                slot: slot.to_string(),
                version,
                ..Default::default()
            },
            BeginStage::PagesNeeded {
                version,
                missing_pages,
            } => pb::BeginStageReply {
                outcome: "pages_needed".into(),
                version,
                missing_pages,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn upload_chunks(
        &self,
        request: Request<Streaming<pb::ChunkData>>,
    ) -> Result<Response<pb::UploadChunksReply>, Status> {
        let credentials = credentials(&request);
        let mut stream = request.into_inner();
        self.admission.limit(&credentials, Rpc::UploadChunks)?;
        // The namespace comes with the chunks, so admission decides before reading any. A known
        // user's denial is audited in the namespace of the first chunk, if one arrives soon;
        // nothing of an unknown caller's stream is read at all.
        if let Err(denial) = self.admission.check(&credentials, Rpc::UploadChunks, "") {
            let ns = if denial.is_unauthenticated() {
                String::new()
            } else {
                match tokio::time::timeout(DENIED_UPLOAD_READ, stream.next()).await {
                    Ok(Some(Ok(chunk))) => chunk.namespace,
                    _ => String::new(),
                }
            };
            let denial = self
                .admission
                .check(&credentials, Rpc::UploadChunks, &ns)
                .err()
                .unwrap_or(denial);
            return Err(self
                .admission
                .refuse(denial, &credentials, Rpc::UploadChunks, &ns)
                .await
                .into());
        }
        let mut reply = pb::UploadChunksReply::default();
        let mut namespace: Option<String> = None;
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0;
        // Batches are verified and written while the next ones arrive, a few at a time: with
        // one write at a time the upload waits for every etcd commit in turn. Chunks are
        // content-addressed, so the order of the writes does not matter.
        let mut writes = tokio::task::JoinSet::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if !is_sha256_hex(&chunk.hash) {
                return Err(Status::invalid_argument(format!(
                    "chunk name {:?} is not a SHA-256",
                    chunk.hash
                )));
            }
            match &namespace {
                None => namespace = Some(chunk.namespace.clone()),
                Some(ns) if *ns != chunk.namespace => {
                    return Err(Status::invalid_argument(
                        "one upload carries chunks of one namespace only",
                    ));
                }
                Some(_) => {}
            }
            batch_bytes += chunk.data.len();
            batch.push((chunk.hash, chunk.data));
            // Verify and write in batches near etcd's request limit, so that memory stays
            // bounded however large the set is.
            if batch_bytes >= MAX_TXN_BYTES {
                while writes.len() >= UPLOAD_WRITES_IN_FLIGHT {
                    written(&mut reply, writes.join_next().await)?;
                }
                let ns = namespace.clone().unwrap_or_default();
                let (releases, batch) = (self.releases.clone(), std::mem::take(&mut batch));
                writes.spawn(async move {
                    let chunks = batch.len() as u64;
                    releases
                        .put_chunks(&ns, batch)
                        .await
                        .map(|bytes| (chunks, bytes))
                });
                batch_bytes = 0;
                // Account for the writes that have finished, so that a failure ends the upload
                // early and the crash point between batches fires while more are to come.
                while let Some(done) = writes.try_join_next() {
                    written(&mut reply, Some(done))?;
                }
            }
        }
        if !batch.is_empty() {
            let ns = namespace.as_deref().unwrap_or_default();
            reply.chunks_written += batch.len() as u64;
            reply.bytes_written += self.releases.put_chunks(ns, batch).await?;
        }
        while !writes.is_empty() {
            written(&mut reply, writes.join_next().await)?;
        }
        Ok(Response::new(reply))
    }

    async fn seal(
        &self,
        request: Request<pb::SealRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::Seal, &request.get_ref().namespace)
            .await?;
        let request = request.into_inner();
        let slot = parse_slot(&request.slot)?;
        let outcome = self
            .releases
            .seal(
                &request.namespace,
                slot,
                &request.manifest_hash,
                request.slot_revision,
                request.allow_destructive,
                &actor,
            )
            .await?;
        json_reply(&outcome)
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::GetManifest, &request.get_ref().namespace)
            .await?;
        let request = request.into_inner();
        let slot = match request.slot.as_str() {
            "" => None,
            other => Some(parse_slot(other)?),
        };
        let version = Some(request.version.as_str()).filter(|v| !v.is_empty());
        if slot.is_some() && version.is_some() {
            return Err(Status::invalid_argument(
                "ask for the manifest of a slot or of a version, not both",
            ));
        }
        let manifest = self
            .releases
            .manifest(&request.namespace, slot, version)
            .await?;
        json_reply(&manifest)
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        request: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        self.admit(&request, Rpc::GetChunks, &request.get_ref().namespace)
            .await?;
        let request = request.into_inner();
        let ns = request.namespace;
        switchboard_proto::keys::validate_namespace(&ns).map_err(Status::invalid_argument)?;
        if let Some(bad) = request.hashes.iter().find(|h| !is_sha256_hex(h)) {
            return Err(Status::invalid_argument(format!(
                "chunk name {bad:?} is not a SHA-256"
            )));
        }
        if request.hashes.len() > MAX_CHUNKS_PER_READ {
            return Err(Status::invalid_argument(format!(
                "{} chunks asked for in one request; at most {MAX_CHUNKS_PER_READ}",
                request.hashes.len()
            )));
        }
        let store = self.releases.store().clone();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<pb::ChunkData, Status>>(4);
        // Reads a few chunks at a time and sends them before reading more, so that memory
        // stays bounded; the task ends when the chunks are sent, the client goes away or the
        // server shuts down.
        let shutdown = self.shutdown.clone();
        let read_and_send = async move {
            for batch in request.hashes.chunks(CHUNKS_PER_BATCH) {
                let sized: Vec<(String, u64)> = batch
                    .iter()
                    .map(|h| (h.clone(), MAX_CHUNK_BYTES as u64))
                    .collect();
                let mut chunks = Vec::with_capacity(batch.len());
                let result = store
                    .for_each_chunk(&ns, &sized, |hash, data| {
                        chunks.push(pb::ChunkData {
                            namespace: ns.clone(),
                            hash: hash.to_string(),
                            data: data.to_vec(),
                        });
                        Ok(())
                    })
                    .await;
                if let Err(error) = result {
                    let _ = sender.send(Err(Status::from(error))).await;
                    return;
                }
                for chunk in chunks {
                    if sender.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        };
        self.tasks.spawn(async move {
            tokio::select! {
                () = read_and_send => {}
                () = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn set_canary(
        &self,
        request: Request<pb::SetCanaryRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::SetCanary, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let change = self
            .releases
            .set_canary(
                ChangeRequest::by_person(
                    &r.namespace,
                    r.expected_epoch,
                    "canary",
                    &r.reason,
                    &actor,
                ),
                r.weight_bp,
                &r.expected_version,
            )
            .await?;
        json_reply(&change)
    }

    async fn flip(
        &self,
        request: Request<pb::FlipRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::Flip, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let change = if r.sync {
            let lead_ms = match r.sync_lead_ms {
                0 => crate::routing::DEFAULT_SYNC_LEAD_MS,
                ms => ms,
            };
            let ack_timeout = match r.sync_ack_timeout_ms {
                0 => crate::routing::DEFAULT_SYNC_ACK_TIMEOUT,
                ms => Duration::from_millis(ms),
            };
            // The synchronized flip runs on a task of its own: if sbctl goes away while the
            // sidecars acknowledge, the preparation is still committed or withdrawn, not left
            // in routing until the next change. The server owns the task: at shutdown the
            // flip stops waiting for acknowledgements and withdraws the preparation, and the
            // server waits for that.
            let releases = self.releases.clone();
            let (ns, reason, version) = (r.namespace.clone(), r.reason.clone(), r.expected_version);
            let (expected_epoch, actor) = (r.expected_epoch, actor.clone());
            let lead = Duration::from_millis(lead_ms);
            let shutdown = self.shutdown.clone();
            self.tasks
                .spawn(async move {
                    let request =
                        ChangeRequest::by_person(&ns, expected_epoch, "flip", &reason, &actor);
                    releases
                        .sync_flip(request, &version, lead, ack_timeout, &shutdown)
                        .await
                })
                .await
                .map_err(|error| {
                    Status::internal(format!("the synchronized flip's task failed: {error}"))
                })??
        } else {
            let request =
                ChangeRequest::by_person(&r.namespace, r.expected_epoch, "flip", &r.reason, &actor);
            self.releases.flip(request, &r.expected_version).await?
        };
        json_reply(&change)
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::Rollback, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let change = ChangeRequest::by_person(
            &r.namespace,
            r.expected_epoch,
            "rollback",
            &r.reason,
            &actor,
        );
        let change = if r.to_version.is_empty() {
            self.releases.rollback(change).await?
        } else {
            self.releases.rollback_to(change, &r.to_version).await?
        };
        json_reply(&change)
    }

    async fn get_contract(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::GetContract, &request.get_ref().namespace)
            .await?;
        let view = self
            .releases
            .contract_view(&request.get_ref().namespace)
            .await?;
        json_reply(&view)
    }

    async fn set_contract(
        &self,
        request: Request<pb::SetContractRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::SetContract, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let contract = switchboard_contract::Contract::from_json(r.contract_json.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("contract_json: {e}")))?;
        let expected = (!r.expected_hash.is_empty()).then_some(r.expected_hash.as_str());
        let view = self
            .releases
            .set_contract(&r.namespace, contract, expected, &r.reason, &actor)
            .await?;
        json_reply(&view)
    }

    async fn approve_contract(
        &self,
        request: Request<pb::ApproveContractRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::ApproveContract, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let view = self
            .releases
            .approve_contract(&r.namespace, &r.hash, &r.reason, &actor)
            .await?;
        json_reply(&view)
    }

    async fn get_policy(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::GetPolicy, &request.get_ref().namespace)
            .await?;
        let policy = self.releases.policy(&request.get_ref().namespace).await?;
        json_reply(&policy)
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::SetPolicy, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let policy: Policy = serde_json::from_str(&r.policy_json)
            .map_err(|e| Status::invalid_argument(format!("policy_json is not a policy: {e}")))?;
        // Without the policy it was decided on, a write would silently drop settings the
        // caller did not know of (gates, the approval requirement): it is refused.
        if r.expected_policy_json.is_empty() {
            return Err(Status::invalid_argument(
                "expected_policy_json is required: read the policy, change it, and send both",
            ));
        }
        let expected: Option<Policy> =
            Some(serde_json::from_str(&r.expected_policy_json).map_err(|e| {
                Status::invalid_argument(format!("expected_policy_json is not a policy: {e}"))
            })?);
        let stored = self
            .releases
            .set_policy(&r.namespace, policy, expected.as_ref(), &r.reason, &actor)
            .await?;
        json_reply(&stored)
    }

    async fn rollout(
        &self,
        request: Request<pb::RolloutRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::Rollout, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let releases = &self.releases;
        let change = |action| {
            ChangeRequest::by_person(&r.namespace, r.expected_epoch, action, &r.reason, &actor)
        };
        let rollout = match r.action.as_str() {
            "start" => {
                releases
                    .start_rollout(
                        change("rollout"),
                        &r.steps_bp,
                        r.interval_seconds,
                        &r.expected_version,
                    )
                    .await?;
                releases.current_rollout(&r.namespace).await?
            }
            "abort" => {
                // Abort decides on the current epoch: aborting is always safe to apply.
                let epoch = releases.status(&r.namespace).await?.epoch;
                let abort = ChangeRequest::by_person(
                    &r.namespace,
                    epoch,
                    "rollout-abort",
                    &r.reason,
                    &actor,
                );
                releases.abort_rollout(abort).await?;
                releases.current_rollout(&r.namespace).await?
            }
            "pause" => {
                releases
                    .pause_rollout(&r.namespace, true, &r.reason, &actor)
                    .await?
            }
            "resume" => {
                releases
                    .pause_rollout(&r.namespace, false, &r.reason, &actor)
                    .await?
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "rollout action {other:?} is not start, pause, resume or abort"
                )));
            }
        };
        json_reply(&rollout)
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::Audit, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let trail = self.releases.audit_trail(&r.namespace, r.verify).await?;
        json_reply(&trail)
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let actor = self
            .admit(&request, Rpc::Approve, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let approval = self
            .releases
            .approve(&r.namespace, &r.version, &r.reason, &actor)
            .await?;
        json_reply(&approval)
    }

    async fn history(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::History, &request.get_ref().namespace)
            .await?;
        let history = self.releases.history(&request.get_ref().namespace).await?;
        json_reply(&history)
    }

    async fn check_gates(
        &self,
        request: Request<pb::CheckGatesRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        self.admit(&request, Rpc::CheckGates, &request.get_ref().namespace)
            .await?;
        let r = request.into_inner();
        let version = Some(r.version.as_str()).filter(|v| !v.is_empty());
        let report = self.releases.check_gates(&r.namespace, version).await?;
        json_reply(&report)
    }

    async fn report_outcomes(
        &self,
        request: Request<Streaming<pb::OutcomeReport>>,
    ) -> Result<Response<pb::OutcomeReportReply>, Status> {
        let credentials = credentials(&request);
        self.admission.limit(&credentials, Rpc::ReportOutcomes)?;
        if let Err(denial) = self.admission.check(&credentials, Rpc::ReportOutcomes, "") {
            return Err(self
                .admission
                .refuse(denial, &credentials, Rpc::ReportOutcomes, "")
                .await
                .into());
        }
        let outcomes = self.releases.outcomes().clone();
        let mut leading = outcomes.leading();
        if !*leading.borrow_and_update() {
            return Err(Status::failed_precondition(NOT_LEADING));
        }
        let mut stream = request.into_inner();
        let mut sidecar: Option<String> = None;
        let ended = loop {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        break Err(Status::failed_precondition(NOT_LEADING));
                    }
                }
                () = self.shutdown.cancelled() => {
                    break Err(Status::unavailable("the coordinator is shutting down"));
                }
                message = stream.next() => match message {
                    None => break Ok(Response::new(pb::OutcomeReportReply {})),
                    Some(Err(status)) => break Err(status),
                    Some(Ok(report)) => {
                        if sidecar.as_ref().is_some_and(|id| *id != report.sidecar) {
                            break Err(Status::invalid_argument(
                                "a stream carries the outcomes of one sidecar",
                            ));
                        }
                        if let Err(reason) = outcomes.observe(&report, now_ms()) {
                            break Err(Status::invalid_argument(format!(
                                "outcome report refused: {reason}"
                            )));
                        }
                        if sidecar.is_none() {
                            outcomes.opened(&report.sidecar);
                            metrics::gauge!(crate::telemetry::OUTCOME_STREAMS).increment(1.0);
                            sidecar = Some(report.sidecar);
                        }
                    }
                },
            }
        };
        if let Some(id) = sidecar {
            outcomes.closed(&id, now_ms());
            metrics::gauge!(crate::telemetry::OUTCOME_STREAMS).decrement(1.0);
        }
        ended
    }

    type WaitForEpochStream = EpochWaitStream;

    async fn wait_for_epoch(
        &self,
        request: Request<pb::WaitForEpochRequest>,
    ) -> Result<Response<Self::WaitForEpochStream>, Status> {
        self.admit(&request, Rpc::WaitForEpoch, &request.get_ref().namespace)
            .await?;
        let request = request.into_inner();
        let ns = request.namespace;
        switchboard_proto::keys::validate_namespace(&ns).map_err(Status::invalid_argument)?;
        let timeout = Duration::from_millis(request.timeout_ms);
        crate::convergence::check_timeout(timeout)?;
        let (progress, progressed) = tokio::sync::mpsc::channel::<pb::EpochWaitProgress>(4);
        let (failed, failure) = tokio::sync::oneshot::channel::<Status>();
        let store = self.releases.store().clone();
        let outcomes = self.releases.outcomes().clone();
        let shutdown = self.shutdown.clone();
        // The wait ends when every live sidecar is on the epoch, at the timeout, when the
        // client goes away (the response stream drops `progressed`) or when the server shuts
        // down; an error follows the progress as the stream's last item.
        self.tasks.spawn(async move {
            let waited = crate::convergence::wait_for_epoch(
                &store,
                &outcomes,
                &ns,
                request.epoch,
                timeout,
                progress,
                &shutdown,
            )
            .await;
            if let Err(error) = waited {
                let _ = failed.send(Status::from(error));
            }
        });
        let messages = tokio_stream::wrappers::ReceiverStream::new(progressed).map(Ok);
        let failure = futures::stream::once(failure)
            .filter_map(|failure| async move { failure.ok().map(Err) });
        Ok(Response::new(Box::pin(messages.chain(failure))))
    }
}

/// Why a replica that does not lead refuses or ends an outcome stream: the sidecar looks up
/// the leader again.
const NOT_LEADING: &str = "this coordinator does not lead; outcomes go to the leader";

/// Batches of uploaded chunks verified and written at once by one upload.
const UPLOAD_WRITES_IN_FLIGHT: usize = 4;

/// Adds a finished batch write to the upload's reply; the first failure ends the upload.
fn written(
    reply: &mut pb::UploadChunksReply,
    joined: Option<Result<crate::error::Result<(u64, u64)>, tokio::task::JoinError>>,
) -> Result<(), Status> {
    let Some(joined) = joined else {
        return Ok(());
    };
    let (chunks, bytes) =
        joined.map_err(|error| Status::internal(format!("a chunk write failed: {error}")))??;
    reply.chunks_written += chunks;
    reply.bytes_written += bytes;
    crate::crash::point(crate::crash::STAGE_BETWEEN_BATCHES, "stage");
    Ok(())
}

#[cfg(test)]
mod tests;
