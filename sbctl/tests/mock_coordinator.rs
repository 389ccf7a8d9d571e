//! The `sbctl` binary against a mock coordinator: what the policy, rollout and `flip --wait`
//! commands send, what they print with `--json`, and their exit codes. The mock answers the
//! way the coordinator's contract says and records every request.

use std::pin::Pin;
use std::process::Output;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use serde_json::{Value, json};
use switchboard_proto::Policy;
use switchboard_proto::pb::admin_server::{Admin, AdminServer};
use switchboard_proto::pb::{
    ApproveRequest, AuditRequest, BeginStageReply, BeginStageRequest, CheckGatesRequest, ChunkData,
    FlipRequest, GetChunksRequest, GetManifestRequest, JsonReply, RollbackRequest, RolloutRequest,
    SealRequest, SetCanaryRequest, SetPolicyRequest, StatusRequest, UploadChunksReply,
};
use tonic::{Request, Response, Status, Streaming};

const NS: &str = "catalog";

/// What the mock answers and what it was asked.
#[derive(Default)]
struct State {
    policy: Value,
    /// The epoch each sidecar serves, per `Status` call: the last entry repeats.
    sidecar_epochs: Vec<Vec<(&'static str, u64)>>,
    status_calls: usize,
    /// Answer `WaitForEpoch` as a coordinator from before it did.
    wait_unimplemented: bool,
    /// The error `Rollout` answers with, if any.
    rollout_error: Option<Status>,
    set_policy: Vec<SetPolicyRequest>,
    rollouts: Vec<RolloutRequest>,
    flips: Vec<FlipRequest>,
}

#[derive(Clone, Default)]
struct Mock(Arc<Mutex<State>>);

impl Mock {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn reply(document: &Value) -> Result<Response<JsonReply>, Status> {
    Ok(Response::new(JsonReply {
        json: document.to_string(),
    }))
}

fn status_document(epoch: u64, sidecars: &[(&str, u64)]) -> Value {
    let slot = |version: &str| {
        json!({
            "version": version, "manifest": "m", "state": "sealed", "item_count": 1,
            "bytes": 1, "checksum": "c", "seed": 1, "staged_by": "alice", "message": "",
            "at_ms": 1
        })
    };
    json!({
        "namespace": NS,
        "epoch": epoch,
        "active": {"slot": "blue", "version": "aaaa"},
        "canary": null,
        "previous": null,
        "slots": {"blue": slot("aaaa"), "green": slot("bbbb")},
        "sidecars": sidecars.iter().map(|(id, epoch)| json!({
            "id": id, "epoch": epoch, "serving": [], "etcd_reachable": true, "at_ms": 1
        })).collect::<Vec<_>>(),
        "last_change": null,
    })
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the mock"))
}

#[tonic::async_trait]
impl Admin for Mock {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<JsonReply>, Status> {
        let mut state = self.state();
        let call = state.status_calls;
        state.status_calls += 1;
        let sidecars = state
            .sidecar_epochs
            .get(call)
            .or(state.sidecar_epochs.last())
            .cloned()
            .unwrap_or_default();
        let epoch = if state.flips.is_empty() { 7 } else { 8 };
        reply(&status_document(epoch, &sidecars))
    }

    async fn begin_stage(
        &self,
        _: Request<BeginStageRequest>,
    ) -> Result<Response<BeginStageReply>, Status> {
        unimplemented()
    }

    async fn upload_chunks(
        &self,
        _: Request<Streaming<ChunkData>>,
    ) -> Result<Response<UploadChunksReply>, Status> {
        unimplemented()
    }

    async fn seal(&self, _: Request<SealRequest>) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn get_manifest(
        &self,
        _: Request<GetManifestRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    type GetChunksStream = Pin<Box<dyn Stream<Item = Result<ChunkData, Status>> + Send>>;

    async fn get_chunks(
        &self,
        _: Request<GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        unimplemented()
    }

    async fn set_canary(
        &self,
        _: Request<SetCanaryRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn flip(&self, request: Request<FlipRequest>) -> Result<Response<JsonReply>, Status> {
        self.state().flips.push(request.into_inner());
        reply(&json!({
            "namespace": NS,
            "routing": {
                "epoch": 8,
                "active": {"slot": "green", "version": "bbbb", "manifest": "n"},
                "canary": null,
                "previous": {"slot": "blue", "version": "aaaa", "manifest": "m"},
                "bake_until_ms": 1_795_000_300_000u64,
                "action": "flip", "by": "alice", "reason": "", "at_ms": 1_795_000_000_000u64
            },
            "audit_seq": 12,
        }))
    }

    async fn approve(&self, _: Request<ApproveRequest>) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn history(&self, _: Request<StatusRequest>) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn get_contract(&self, _: Request<StatusRequest>) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn set_contract(
        &self,
        _: Request<switchboard_proto::pb::SetContractRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn approve_contract(
        &self,
        _: Request<switchboard_proto::pb::ApproveContractRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn check_gates(
        &self,
        _: Request<CheckGatesRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn rollback(&self, _: Request<RollbackRequest>) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn report_outcomes(
        &self,
        _: Request<Streaming<switchboard_proto::pb::OutcomeReport>>,
    ) -> Result<Response<switchboard_proto::pb::OutcomeReportReply>, Status> {
        Err(Status::unimplemented("not part of the mock"))
    }

    type WaitForEpochStream = Pin<
        Box<dyn Stream<Item = Result<switchboard_proto::pb::EpochWaitProgress, Status>> + Send>,
    >;

    /// Streams the scripted sidecar epochs as the coordinator sees them change, one message
    /// for each, and a last one: converged at the first state where every sidecar serves the
    /// epoch, else at the request's timeout, naming the sidecars behind in the last state.
    async fn wait_for_epoch(
        &self,
        request: Request<switchboard_proto::pb::WaitForEpochRequest>,
    ) -> Result<Response<Self::WaitForEpochStream>, Status> {
        use switchboard_proto::pb::{EpochWaitProgress, SidecarEpoch};
        let request = request.into_inner();
        if self.state().wait_unimplemented {
            return unimplemented();
        }
        let states = self.state().sidecar_epochs.clone();
        let progress = |sidecars: &[(&str, u64)], done: bool| {
            let behind: Vec<SidecarEpoch> = sidecars
                .iter()
                .filter(|(_, epoch)| *epoch < request.epoch)
                .map(|(id, epoch)| SidecarEpoch {
                    id: id.to_string(),
                    epoch: *epoch,
                })
                .collect();
            EpochWaitProgress {
                namespace: request.namespace.clone(),
                epoch: request.epoch,
                sidecars: sidecars.len() as u64,
                on_epoch: (sidecars.len() - behind.len()) as u64,
                done: done || behind.is_empty(),
                converged: behind.is_empty(),
                behind: if done { behind } else { Vec::new() },
            }
        };
        let mut messages = Vec::new();
        for sidecars in &states {
            let message = progress(sidecars, false);
            let converged = message.converged;
            messages.push(Ok(message));
            if converged {
                return Ok(Response::new(Box::pin(futures::stream::iter(messages))));
            }
        }
        let last = progress(states.last().map_or(&[][..], Vec::as_slice), true);
        let timeout = std::time::Duration::from_millis(request.timeout_ms);
        let at_the_timeout = futures::stream::once(async move {
            tokio::time::sleep(timeout).await;
            Ok(last)
        });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            futures::stream::iter(messages),
            at_the_timeout,
        ))))
    }

    async fn audit(&self, _: Request<AuditRequest>) -> Result<Response<JsonReply>, Status> {
        unimplemented()
    }

    async fn get_policy(&self, _: Request<StatusRequest>) -> Result<Response<JsonReply>, Status> {
        let policy = self.state().policy.clone();
        reply(&policy)
    }

    async fn set_policy(
        &self,
        request: Request<SetPolicyRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let request = request.into_inner();
        let policy: Policy = serde_json::from_str(&request.policy_json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        policy.validate().map_err(Status::invalid_argument)?;
        let stored = serde_json::to_value(&policy).map_err(|e| Status::internal(e.to_string()))?;
        let mut state = self.state();
        state.set_policy.push(request);
        state.policy = stored.clone();
        reply(&stored)
    }

    async fn rollout(
        &self,
        request: Request<RolloutRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        if let Some(error) = state.rollout_error.clone() {
            return Err(error);
        }
        let document = json!({
            "slot": "green",
            "version": "bbbb",
            "steps_bp": if request.steps_bp.is_empty() { vec![100, 10_000] } else { request.steps_bp.clone() },
            "interval_seconds": request.interval_seconds.max(60),
            "step": 0,
            "state": if request.action == "pause" { "paused" } else { "running" },
            "started_by": "alice",
            "started_at_ms": 1_795_000_000_000u64,
            "step_at_ms": 1_795_000_000_000u64,
            "note": "step 1% applied",
        });
        state.rollouts.push(request);
        reply(&document)
    }
}

/// Serves the mock on a free loopback port; the server ends with the test's runtime.
async fn serve(mock: Mock) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(mock))
            .serve_with_incoming(incoming),
    );
    format!("http://{address}")
}

async fn sbctl(coordinator: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sbctl"))
        .arg("--coordinator")
        .arg(coordinator)
        .args(["--as", "alice"])
        .args(args)
        .env_remove("SWITCHBOARD_TOKEN")
        .output()
        .await
        .expect("sbctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// stdout must be exactly one JSON document.
fn one_document(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            stdout(output),
            stderr(output)
        )
    })
}

fn stored_policy() -> Value {
    json!({"max_error_rate": 0.02, "min_requests": 1000, "window_seconds": 60, "bake_seconds": 300})
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_set_changes_only_the_given_settings() {
    let mock = Mock::default();
    mock.state().policy = stored_policy();
    let url = serve(mock.clone()).await;

    let out = sbctl(
        &url,
        &[
            "--json",
            "policy",
            "set",
            NS,
            "--window",
            "180",
            "--max-error-rate",
            "2.5%",
            "-m",
            "slower window",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        one_document(&out),
        json!({"max_error_rate": 0.025, "min_requests": 1000, "window_seconds": 180, "bake_seconds": 300, "require_approval": false, "gates": []})
    );
    {
        let state = mock.state();
        let [sent] = state.set_policy.as_slice() else {
            panic!("{:?}", state.set_policy);
        };
        assert_eq!(sent.namespace, NS);
        assert_eq!(sent.reason, "slower window");
        let policy: Policy = serde_json::from_str(&sent.policy_json).expect("a policy");
        assert_eq!(
            policy,
            Policy {
                max_error_rate: 0.025,
                min_requests: 1000,
                window_seconds: 180,
                bake_seconds: 300,
                ..Policy::default()
            }
        );
    }

    let out = sbctl(&url, &["policy", "show", NS]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("window                         180s (3m)     not the default (120s (2m))"),
        "{text}"
    );
    assert!(
        text.contains("bake                           300s (5m)     default"),
        "{text}"
    );

    // Usage errors exit 2 and send nothing.
    for args in [
        &["policy", "set", NS][..],
        &["policy", "set", NS, "--min-requests", "0"],
    ] {
        let out = sbctl(&url, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = sbctl(&url, &["policy", "set", NS, "--min-requests", "0"]).await;
    assert!(stderr(&out).contains("--min-requests"), "{}", stderr(&out));
    assert_eq!(mock.state().set_policy.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_start_pins_the_epoch_and_the_staged_version() {
    let mock = Mock::default();
    let url = serve(mock.clone()).await;

    let out = sbctl(
        &url,
        &[
            "rollout",
            NS,
            "--steps",
            "1,5,25,50,100",
            "--interval",
            "300",
            "-m",
            "go",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("rollout of catalog: running\n"), "{text}");
    assert!(
        text.contains("step       1/5: [1%]  5%  25%  50%  100%"),
        "{text}"
    );
    assert!(
        text.contains("next       5% due 2026-11-18T11:11:40.000Z"),
        "{text}"
    );

    let out = sbctl(&url, &["--json", "rollout", NS, "--pause", "-m", "hold"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(one_document(&out)["state"], "paused");

    let out = sbctl(
        &url,
        &[
            "rollout",
            NS,
            "--steps",
            "0.5,100",
            "--interval",
            "60",
            "--expect-epoch",
            "9",
            "--expect-version",
            "cccc",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let state = mock.state();
    let [start, pause, pinned] = state.rollouts.as_slice() else {
        panic!("{:?}", state.rollouts);
    };
    assert_eq!(start.namespace, NS);
    assert_eq!(start.action, "start");
    assert_eq!(start.steps_bp, vec![100, 500, 2500, 5000, 10_000]);
    assert_eq!(start.interval_seconds, 300);
    assert_eq!(start.expected_epoch, 7);
    assert_eq!(start.expected_version, "bbbb");
    assert_eq!(start.reason, "go");
    assert_eq!(pause.action, "pause");
    assert_eq!(pause.reason, "hold");
    assert!(pause.steps_bp.is_empty());
    assert_eq!(pause.expected_epoch, 0);
    assert_eq!(pinned.steps_bp, vec![50, 10_000]);
    assert_eq!(pinned.expected_epoch, 9);
    assert_eq!(pinned.expected_version, "cccc");
    // Only the unpinned start read the status.
    assert_eq!(state.status_calls, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_refusals_and_conflicts_have_their_exit_codes() {
    let mock = Mock::default();
    let url = serve(mock.clone()).await;
    for (status, code) in [
        (
            Status::failed_precondition("a rollout is already running in catalog"),
            4,
        ),
        (Status::aborted("Routing changed: epoch is 8, not 7."), 3),
        (Status::invalid_argument("steps must rise"), 4),
    ] {
        let message = status.message().to_string();
        mock.state().rollout_error = Some(status);
        let out = sbctl(&url, &["rollout", NS, "--abort"]).await;
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert!(stderr(&out).contains(&message), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flip_wait_json_prints_one_document_at_the_end() {
    let mock = Mock::default();
    mock.state().sidecar_epochs = vec![
        vec![("host-a", 7), ("host-b", 7)],
        vec![("host-a", 8), ("host-b", 7)],
        vec![("host-a", 8), ("host-b", 8)],
    ];
    let url = serve(mock.clone()).await;
    let out = sbctl(&url, &["--json", "flip", NS, "--wait", "--timeout", "10"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let document = one_document(&out);
    assert_eq!(document["routing"]["epoch"], 8);
    assert_eq!(document["audit_seq"], 12);
    assert_eq!(
        document["wait"],
        json!({"epoch": 8, "converged": true, "sidecars": 2, "behind": []})
    );
    // Not a terminal: no progress on stderr.
    assert_eq!(stderr(&out), "");
}

/// sbctl computes no convergence of its own: against a coordinator that does not stream it,
/// `flip --wait` says the coordinator is older than sbctl, and reads no status after the flip.
#[tokio::test(flavor = "multi_thread")]
async fn flip_wait_against_a_coordinator_without_the_stream_says_so_and_polls_nothing() {
    let mock = Mock::default();
    mock.state().sidecar_epochs = vec![vec![("host-a", 8)]];
    mock.state().wait_unimplemented = true;
    let url = serve(mock.clone()).await;
    let out = sbctl(&url, &["flip", NS, "--wait", "--timeout", "2"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not implement WaitForEpoch")
            && stderr(&out).contains("older than this sbctl"),
        "{}",
        stderr(&out)
    );
    let state = mock.state();
    assert_eq!(state.flips.len(), 1);
    // The one status read is the flip's own, for the epoch it expects.
    assert_eq!(state.status_calls, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn flip_wait_that_times_out_names_the_sidecars_behind() {
    let mock = Mock::default();
    mock.state().sidecar_epochs = vec![vec![("host-a", 8), ("host-b", 7)]];
    let url = serve(mock.clone()).await;

    let out = sbctl(&url, &["--json", "flip", NS, "--wait", "--timeout", "0.5"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let document = one_document(&out);
    assert_eq!(
        document["wait"],
        json!({"epoch": 8, "converged": false, "sidecars": 2, "behind": ["host-b"]})
    );
    assert!(
        stderr(&out).contains("not yet: host-b (epoch 7)"),
        "{}",
        stderr(&out)
    );

    let out = sbctl(&url, &["flip", NS, "--wait", "--timeout", "0.5"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("flip done in catalog: now at epoch 8"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        stderr(&out).trim_end(),
        "error: timed out after 0.5s waiting for the sidecars of catalog to serve epoch 8; not \
         yet: host-b (epoch 7)"
    );
}
