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
use crate::upload::UploadError;

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

mod layer;
pub use layer::*;

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
        match self.releases.upload_chunks(stream).await {
            Ok(uploaded) => Ok(Response::new(pb::UploadChunksReply {
                chunks_written: uploaded.chunks_written,
                bytes_written: uploaded.bytes_written,
            })),
            Err(UploadError::Stream(status)) => Err(status),
            Err(UploadError::Refused(error)) => Err(error.into()),
            Err(UploadError::Lost(error)) => {
                Err(Status::internal(format!("a chunk write failed: {error}")))
            }
        }
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

#[cfg(test)]
mod tests;
