//! The commands, one function each: what each asks the coordinator and what it prints.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use switchboard_proto::pb::EpochWaitProgress;
use switchboard_proto::pb::{
    BeginStageRequest, ChunkData, FlipRequest, RollbackRequest, RolloutRequest, SealRequest,
    SetCanaryRequest,
};
use switchboard_proto::set::{Chunk, MAX_WHOLE_MANIFEST_BYTES};
use switchboard_proto::time::now_ms;
use switchboard_proto::{AuditTrail, Manifest, Policy, RoutingChange, Slot};
use tonic::Code;

use crate::cli::{ChangeArgs, POLICY_FLAGS, PolicySettings, RolloutAction};
use crate::client::{ConnectOptions, Coordinator, Reply};
use crate::exit::CliError;
use crate::gates::gated;
use crate::output::{self, StageReport, WaitReport};
use crate::pipeline;

/// How often `flip --wait` reads the status.
pub const WAIT_POLL: Duration = Duration::from_millis(200);
/// How often `flip --sync` reads the status while the sidecars switch: the activation point is
/// usually a fraction of a second away.
const SYNC_WAIT_POLL: Duration = Duration::from_millis(50);
/// How long after the activation point sidecars put off reporting their switch.
const SYNC_SETTLE_MS: u64 = 100;

/// What every command needs: how to reach the coordinator and how to print.
#[derive(Clone, Debug)]
pub struct Context {
    pub connect: ConnectOptions,
    pub json: bool,
}

impl Context {
    pub(crate) async fn coordinator(&self) -> Result<Coordinator, CliError> {
        Coordinator::connect(&self.connect).await
    }

    /// Prints a reply's document: as it came with `--json`, else as `human` renders it.
    pub(crate) fn print<T>(
        &self,
        reply: &Reply<T>,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        if self.json {
            output::print_json(&reply.json)
        } else {
            output::print_text(&human(&reply.document))
        }
    }
}

/// `sbctl status NS`
pub async fn status(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.status(namespace).await?;
    let now = now_ms();
    ctx.print(&reply, |status| output::render_status(status, now))
}

/// How `plan` and `stage` read PATH: `--env NAME`, and for stage `--allow-destructive`.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    pub env: Option<String>,
    pub allow_destructive: bool,
}

/// `sbctl stage NS PATH [-m MESSAGE] [--env NAME] [--allow-destructive]`
pub async fn stage(
    ctx: &Context,
    namespace: &str,
    path: &Path,
    message: &str,
    options: &SourceOptions,
) -> Result<(), CliError> {
    let prepared = pipeline::prepare(path, options.env.as_deref())?;
    let (manifest, chunks) = prepared.set.to_chunks();
    let mut coordinator = ctx.coordinator().await?;
    pipeline::check_destructive(
        &mut coordinator,
        namespace,
        path,
        &manifest,
        &prepared,
        options.allow_destructive,
    )
    .await?;
    let report = stage_manifest(
        &mut coordinator,
        namespace,
        &manifest,
        chunks,
        message,
        options.allow_destructive,
    )
    .await?;
    print_stage(ctx, &report)
}

/// Stages a set given as its manifest and chunks: begins the stage, uploads the chunks etcd
/// lacks (with a progress bar), seals. `stage` and `snapshot restore` both end here.
pub async fn stage_manifest(
    coordinator: &mut Coordinator,
    namespace: &str,
    manifest: &Manifest,
    chunks: Vec<Chunk>,
    message: &str,
    allow_destructive: bool,
) -> Result<StageReport, CliError> {
    let whole = manifest.to_canonical_json().len();
    if whole > MAX_WHOLE_MANIFEST_BYTES {
        return Err(CliError::Refused(format!(
            "the set has {} chunks, and its manifest of {} bytes is over the {MAX_WHOLE_MANIFEST_BYTES} that plan, diff and snapshots can fetch; split it over more namespaces",
            manifest.chunks.len(),
            whole
        )));
    }
    let (head, pages) = manifest.to_pages();
    let manifest_hash = head.hash();
    let head_json = String::from_utf8(head.to_canonical_json())
        .map_err(|e| CliError::Failed(format!("the manifest is not UTF-8: {e}")))?;
    let begin = |pages: Vec<Vec<u8>>| BeginStageRequest {
        namespace: namespace.to_string(),
        manifest_json: head_json.clone(),
        message: message.to_string(),
        pages,
    };
    let mut manifest_bytes_uploaded = head_json.len() as u64;
    let mut pages_uploaded = 0;
    let mut begun = coordinator.begin_stage(begin(Vec::new())).await?;
    if begun.outcome == "pages_needed" {
        // Etcd lacks some pages of the chunk list: send those, and only those, with the head.
        let wanted: HashSet<&str> = begun.missing_pages.iter().map(String::as_str).collect();
        let known: HashSet<&str> = pages.iter().map(|p| p.hash.as_str()).collect();
        if let Some(stranger) = wanted.iter().find(|h| !known.contains(*h)) {
            return Err(CliError::BadReply {
                rpc: "BeginStage",
                problem: format!("it asks for page {stranger}, which the manifest does not have"),
            });
        }
        let to_send: Vec<Vec<u8>> = pages
            .iter()
            .filter(|p| wanted.contains(p.hash.as_str()))
            .map(|p| p.data.clone())
            .collect();
        pages_uploaded = to_send.len() as u64;
        manifest_bytes_uploaded +=
            head_json.len() as u64 + to_send.iter().map(|p| p.len() as u64).sum::<u64>();
        begun = coordinator.begin_stage(begin(to_send)).await?;
        if begun.outcome == "pages_needed" {
            // Pages that etcd held a moment ago were collected meanwhile (a dropped version's).
            return Err(CliError::Failed(format!(
                "{} pages of the manifest vanished from etcd while staging began; run sbctl stage again",
                begun.missing_pages.len()
            )));
        }
    }
    let bad_reply = |problem: String| CliError::BadReply {
        rpc: "BeginStage",
        problem,
    };
    let slot: Slot = begun.slot.parse().map_err(bad_reply)?;
    if begun.version != manifest.version {
        return Err(bad_reply(format!(
            "it names version {:?}, but the set is version {}",
            begun.version, manifest.version
        )));
    }
    let mut report = StageReport {
        namespace: namespace.to_string(),
        slot,
        version: manifest.version.clone(),
        outcome: begun.outcome.clone(),
        items: manifest.item_count,
        bytes: manifest.bytes,
        chunks_total: manifest.chunks.len() as u64,
        chunks_uploaded: 0,
        chunk_bytes_total: chunks.iter().map(|c| c.data.len() as u64).sum(),
        chunk_bytes_uploaded: 0,
        pages_total: pages.len() as u64,
        pages_uploaded,
        manifest_bytes_uploaded,
        replaced_version: Some(begun.replaced_version.clone()).filter(|v| !v.is_empty()),
        warnings: Vec::new(),
        approval_reasons: Vec::new(),
        seal_timings: None,
    };
    if let Some(replaced) = &report.replaced_version {
        output::note(&format!(
            "note: staging into slot {slot} replaces the sealed version {replaced} it held; \
             after this, `sbctl rollback {namespace}` cannot return to {replaced}"
        ));
    }
    match begun.outcome.as_str() {
        "already_active" | "already_staged" => return Ok(report),
        "staging" => {}
        other => return Err(bad_reply(format!("unknown outcome {other:?}"))),
    }

    let missing: HashSet<&str> = begun.missing_chunks.iter().map(String::as_str).collect();
    let known: HashSet<&str> = manifest.chunks.iter().map(|c| c.hash.as_str()).collect();
    if let Some(stranger) = missing.iter().find(|h| !known.contains(*h)) {
        return Err(bad_reply(format!(
            "it asks for chunk {stranger}, which the set does not have"
        )));
    }
    let to_send: Vec<_> = chunks
        .into_iter()
        .filter(|c| missing.contains(c.hash.as_str()))
        .collect();
    report.chunks_uploaded = to_send.len() as u64;
    if !to_send.is_empty() {
        let total: u64 = to_send.iter().map(|c| c.data.len() as u64).sum();
        report.chunk_bytes_uploaded = total;
        let bar = progress_bar(total);
        let counter = bar.clone();
        let ns = namespace.to_string();
        let stream = futures::stream::iter(to_send.into_iter().map(move |chunk| {
            counter.inc(chunk.data.len() as u64);
            ChunkData {
                namespace: ns.clone(),
                hash: chunk.hash,
                data: chunk.data,
            }
        }));
        let uploaded = coordinator.upload_chunks(stream).await;
        bar.finish_and_clear();
        uploaded?;
    }

    let sealed = coordinator
        .seal(SealRequest {
            namespace: namespace.to_string(),
            slot: slot.as_str().to_string(),
            manifest_hash,
            slot_revision: begun.slot_revision,
            allow_destructive,
        })
        .await?;
    if sealed.document.version != manifest.version {
        return Err(CliError::BadReply {
            rpc: "Seal",
            problem: format!(
                "it sealed version {:?}, but the set is version {}",
                sealed.document.version, manifest.version
            ),
        });
    }
    report.slot = sealed.document.slot;
    report.outcome = "staged".to_string();
    report.warnings = sealed.document.warnings;
    report.approval_reasons = sealed.document.approval_reasons;
    report.seal_timings = sealed.document.timings;
    Ok(report)
}

pub(crate) fn print_stage(ctx: &Context, report: &StageReport) -> Result<(), CliError> {
    if ctx.json {
        output::print_json(report)
    } else {
        output::print_text(&output::render_stage(report))
    }
}

/// A byte progress bar on stderr; hidden (and silent) when stderr is not a terminal.
fn progress_bar(total_bytes: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "uploading {bar:40} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// `sbctl plan NS PATH [--env NAME]`
pub async fn plan(
    ctx: &Context,
    namespace: &str,
    path: &Path,
    options: &SourceOptions,
) -> Result<(), CliError> {
    let prepared = pipeline::prepare(path, options.env.as_deref())?;
    let (manifest, chunks) = prepared.set.to_chunks();
    let mut coordinator = ctx.coordinator().await?;
    let report = pipeline::plan_with_contract(
        &mut coordinator,
        namespace,
        (&manifest, &chunks),
        &prepared,
        &ctx.connect.actor,
    )
    .await?;
    if ctx.json {
        output::print_json(&report)?;
    } else {
        output::print_text(&output::render_plan(&report))?;
        if let Some(preview) = &report.contract {
            output::print_text(&output::render_contract_preview(namespace, preview))?;
        }
        if report.classes.destructive > 0 {
            output::note(&format!(
                "note: this set makes {} destructive change(s): `sbctl stage` refuses it without \
                 --allow-destructive",
                report.classes.destructive
            ));
        }
    }
    // The plan exits as the seal would answer: a set the contract refuses is exit 4, with the
    // coordinator's words.
    match report.contract.and_then(|preview| preview.refusal) {
        Some(refusal) => Err(CliError::Refused(refusal)),
        None => Ok(()),
    }
}

/// The epoch a routing change is decided against: `--expect-epoch`, else the current one.
async fn expected_epoch(
    coordinator: &mut Coordinator,
    namespace: &str,
    change: &ChangeArgs,
) -> Result<u64, CliError> {
    match change.expect_epoch {
        Some(epoch) => Ok(epoch),
        None => Ok(coordinator.status(namespace).await?.document.epoch),
    }
}

/// The epoch and the target version a canary or flip is decided against: what the caller
/// pinned, else what status shows now. The target is the slot that is not active; before the
/// first flip nothing is pinned, since nobody is served yet.
async fn expected_epoch_and_version(
    coordinator: &mut Coordinator,
    namespace: &str,
    change: &ChangeArgs,
) -> Result<(u64, String), CliError> {
    if let (Some(epoch), Some(version)) = (change.expect_epoch, &change.expect_version) {
        return Ok((epoch, version.clone()));
    }
    let status = coordinator.status(namespace).await?.document;
    let staged = status.active.as_ref().and_then(|active| {
        let target = match active.slot.other() {
            Slot::Blue => status.slots.blue.as_ref(),
            Slot::Green => status.slots.green.as_ref(),
        };
        target.map(|slot| slot.version.clone())
    });
    Ok((
        change.expect_epoch.unwrap_or(status.epoch),
        change.expect_version.clone().or(staged).unwrap_or_default(),
    ))
}

/// `sbctl canary NS PERCENT [--wait] [-m REASON] [--expect-epoch N]`
///
/// With `--wait`, as `flip --wait`: the change, then a progress bar of the sidecars on its
/// epoch, so that a read made after the command sees the new weight.
pub async fn canary(
    ctx: &Context,
    namespace: &str,
    weight_bp: u32,
    wait: Option<Duration>,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let (expected_epoch, expected_version) =
        expected_epoch_and_version(&mut coordinator, namespace, change).await?;
    let request = SetCanaryRequest {
        namespace: namespace.to_string(),
        weight_bp,
        expected_epoch,
        reason: change.why.reason.clone(),
        expected_version,
    };
    let reply = gated(&mut coordinator, request, change.gate_wait(), |c, r| {
        Box::pin(c.set_canary(r))
    })
    .await?;
    print_change_and_wait(ctx, &mut coordinator, namespace, &reply, wait).await
}

/// `sbctl flip NS [--wait] [--timeout SECONDS] [-m REASON] [--expect-epoch N]`
///
/// With `--wait`, the human text of the change comes first, then a progress bar of the
/// sidecars on the new epoch; `--json` prints one document at the end, the change plus
/// `"wait"`, also when the wait fails (the flip was made either way).
pub async fn flip(
    ctx: &Context,
    namespace: &str,
    wait: Option<Duration>,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let request = flip_request(&mut coordinator, namespace, change).await?;
    let reply = gated(&mut coordinator, request, change.gate_wait(), |c, r| {
        Box::pin(c.flip(r))
    })
    .await?;
    print_change_and_wait(ctx, &mut coordinator, namespace, &reply, wait).await
}

/// Prints a routing change; with `wait`, then waits (up to it) until every live sidecar
/// serves its epoch. `--json` prints one document at the end, the change plus `"wait"`, also
/// when the wait fails (the change was made either way).
async fn print_change_and_wait(
    ctx: &Context,
    coordinator: &mut Coordinator,
    namespace: &str,
    reply: &Reply<RoutingChange>,
    wait: Option<Duration>,
) -> Result<(), CliError> {
    let Some(timeout) = wait else {
        return ctx.print(reply, output::render_routing_change);
    };
    if !ctx.json {
        output::print_text(&output::render_routing_change(&reply.document))?;
    }
    let epoch = reply.document.routing.epoch;
    let (report, waited) = wait_for_epoch(coordinator, namespace, epoch, timeout).await;
    if ctx.json {
        output::print_json(&output::flip_wait_document(&reply.json, &report))?;
    } else if waited.is_ok() {
        output::print_text(&output::render_wait(&report))?;
    }
    waited
}

/// The request of a flip of `namespace` as `change` describes it: the epoch and version it
/// was decided on, and why.
async fn flip_request(
    coordinator: &mut Coordinator,
    namespace: &str,
    change: &ChangeArgs,
) -> Result<FlipRequest, CliError> {
    let (expected_epoch, expected_version) =
        expected_epoch_and_version(coordinator, namespace, change).await?;
    Ok(FlipRequest {
        namespace: namespace.to_string(),
        expected_epoch,
        reason: change.why.reason.clone(),
        expected_version,
        ..FlipRequest::default()
    })
}

/// The tuning of `flip --sync`; 0 leaves each to the coordinator's default.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub lead_ms: u64,
    pub ack_timeout: Duration,
}

/// `sbctl flip NS --sync [--sync-lead MS] [--sync-timeout SECONDS] [--timeout SECONDS]`
///
/// The coordinator prepares, waits for every live sidecar's acknowledgement and commits with an
/// activation point. Then this waits (up to `--timeout`) until every sidecar that acknowledged
/// reports when it switched, and reports the spread of those times and the latest one's
/// lateness. `--json` prints one document: the change, with the measurements added to `sync`.
pub async fn sync_flip(
    ctx: &Context,
    namespace: &str,
    options: &SyncOptions,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let request = FlipRequest {
        sync: true,
        sync_lead_ms: options.lead_ms,
        sync_ack_timeout_ms: u64::try_from(options.ack_timeout.as_millis()).unwrap_or(u64::MAX),
        ..flip_request(&mut coordinator, namespace, change).await?
    };
    let reply = gated(&mut coordinator, request, change.gate_wait(), |c, r| {
        Box::pin(c.flip(r))
    })
    .await?;
    let Some(prepared) = reply.document.sync.clone() else {
        return Err(CliError::Failed(format!(
            "the coordinator flipped {namespace} without synchronizing it: it does not know synchronized flips (an older version?); the flip was made at once"
        )));
    };
    if !ctx.json {
        output::print_text(&output::render_routing_change(&reply.document))?;
    }
    let epoch = reply.document.routing.epoch;
    let deadline = Instant::now() + change.timeout;
    // The sidecars report their switch only after the activation point and the time they
    // leave each other to switch (100 ms): reading the status before that only takes the CPU
    // that sidecars sharing this host need at the instant.
    let quiet = Duration::from_millis(
        prepared
            .activate_at_ms
            .saturating_add(SYNC_SETTLE_MS)
            .saturating_sub(now_ms()),
    );
    tokio::time::sleep(quiet.min(change.timeout)).await;
    let (report, waited) = loop {
        match coordinator.status(namespace).await {
            Ok(status) => {
                let report = output::SyncReport::measure(&status.document, epoch, &prepared);
                if report.converged {
                    break (report, Ok(()));
                }
                if Instant::now() >= deadline {
                    let error = CliError::Failed(format!(
                        "timed out after {} waiting for the sidecars of {namespace} to switch to epoch {epoch}; not yet: {}",
                        seconds(change.timeout),
                        report.behind.join(", ")
                    ));
                    break (report, Err(error));
                }
            }
            // The coordinator may be failing over; keep trying until the deadline.
            Err(e) if e.grpc_code() == Some(Code::Unavailable) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(SYNC_WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    };
    if ctx.json {
        output::print_json(&output::sync_flip_document(&reply.json, &report))?;
    } else {
        output::print_text(&output::render_sync_report(&report))?;
    }
    waited
}

/// Waits until every live sidecar serves `epoch` or later, showing a progress bar on stderr
/// (hidden, and silent, when stderr is not a terminal). Returns where the wait ended, and the
/// error if it did not converge. The coordinator watches the sidecars for us and streams what
/// it sees (`WaitForEpoch`): sbctl computes no convergence of its own and reads no status. A
/// coordinator that predates the stream is refused as older than this sbctl (exit.rs); a
/// stream cut short (a failover) is followed again after [`WAIT_POLL`], until the deadline.
async fn wait_for_epoch(
    coordinator: &mut Coordinator,
    namespace: &str,
    epoch: u64,
    timeout: Duration,
) -> (WaitReport, Result<(), CliError>) {
    let deadline = Instant::now() + timeout;
    let bar = epoch_bar(epoch);
    let mut report = WaitReport {
        epoch,
        converged: false,
        sidecars: 0,
        behind: Vec::new(),
    };
    let result = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match follow_epoch_wait(coordinator, namespace, epoch, remaining, &bar, &mut report).await {
            Ok(Some(last)) if last.converged => break Ok(()),
            Ok(Some(last)) => {
                let behind = last.behind.iter().map(|b| (b.id.as_str(), b.epoch));
                break Err(timed_out(namespace, epoch, timeout, behind));
            }
            // The stream ended without its last message: the coordinator went away.
            Ok(None) if Instant::now() < deadline => {}
            // The coordinator may be failing over; keep trying until the deadline.
            Err(e) if e.grpc_code() == Some(Code::Unavailable) && Instant::now() < deadline => {}
            Ok(None) => {
                break Err(CliError::Failed(format!(
                    "the coordinator ended the wait for the sidecars of {namespace} before \
                     they served epoch {epoch}"
                )));
            }
            Err(e) => break Err(e),
        }
        tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    };
    bar.finish_and_clear();
    (report, result)
}

/// Follows one `WaitForEpoch` stream into `report` and the bar: its last message, or `None` if
/// it ended before that.
async fn follow_epoch_wait(
    coordinator: &mut Coordinator,
    namespace: &str,
    epoch: u64,
    timeout: Duration,
    bar: &ProgressBar,
    report: &mut WaitReport,
) -> Result<Option<EpochWaitProgress>, CliError> {
    let mut stream = coordinator
        .wait_for_epoch(namespace, epoch, timeout)
        .await?;
    while let Some(progress) = stream.next().await? {
        report.sidecars = usize::try_from(progress.sidecars).unwrap_or(usize::MAX);
        report.converged = progress.converged;
        bar.set_length(progress.sidecars);
        bar.set_position(progress.on_epoch);
        if progress.done {
            report.behind = progress.behind.iter().map(|b| b.id.clone()).collect();
            return Ok(Some(progress));
        }
    }
    Ok(None)
}

/// The error of a wait that ended with live sidecars (`(id, epoch)`) not on `epoch` yet.
fn timed_out<'a>(
    namespace: &str,
    epoch: u64,
    timeout: Duration,
    behind: impl Iterator<Item = (&'a str, u64)>,
) -> CliError {
    let behind: Vec<String> = behind
        .map(|(id, epoch)| format!("{id} (epoch {epoch})"))
        .collect();
    CliError::Failed(format!(
        "timed out after {} waiting for the sidecars of {namespace} to serve epoch {epoch}; \
         not yet: {}",
        seconds(timeout),
        behind.join(", ")
    ))
}

/// A `k/n` bar of the sidecars on `epoch`, on stderr; hidden when stderr is not a terminal.
fn epoch_bar(epoch: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("sidecars on epoch {prefix} {bar:40} {pos}/{len}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(epoch.to_string());
    bar
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

/// `sbctl rollback NS [--to VERSION] [-m REASON] [--expect-epoch N] [--wait-for-gates]`
pub async fn rollback(
    ctx: &Context,
    namespace: &str,
    to_version: Option<&str>,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let expected_epoch = expected_epoch(&mut coordinator, namespace, change).await?;
    let request = RollbackRequest {
        namespace: namespace.to_string(),
        expected_epoch,
        reason: change.why.reason.clone(),
        to_version: to_version.unwrap_or_default().to_string(),
    };
    let reply: Reply<RoutingChange> =
        gated(&mut coordinator, request, change.gate_wait(), |c, r| {
            Box::pin(c.rollback(r))
        })
        .await?;
    ctx.print(&reply, output::render_routing_change)
}

/// `sbctl contract show NS`
pub async fn contract_show(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.get_contract(namespace).await?;
    ctx.print(&reply, output::render_contract)
}

/// `sbctl contract set NS DIR`: reads DIR/switchboard.yaml with its schemas and rules, checks
/// that the contract compiles (the coordinator checks again), and sends it.
pub async fn contract_set(
    ctx: &Context,
    namespace: &str,
    dir: &Path,
    reason: &str,
) -> Result<(), CliError> {
    if !dir.join(crate::source::CONFIG_FILE).is_file() {
        return Err(CliError::Usage(format!(
            "{} has no {}: the contract is written there (schemas: and rules:)",
            crate::escape::path(dir),
            crate::source::CONFIG_FILE
        )));
    }
    let invalid = |problems| {
        CliError::Source(crate::source::SourceError::Invalid {
            path: dir.to_path_buf(),
            problems,
        })
    };
    let config = crate::validate::load_config(dir).map_err(invalid)?;
    let contract = crate::validate::read_contract(dir, &config).map_err(invalid)?;
    contract
        .compile()
        .map_err(|e| CliError::Refused(format!("the contract is refused: {e}")))?;
    let mut coordinator = ctx.coordinator().await?;
    let current = coordinator.get_contract(namespace).await?.document;
    let expected = current.active.as_ref().map_or("", |r| r.hash.as_str());
    let reply = coordinator
        .set_contract(namespace, &contract, expected, reason)
        .await?;
    ctx.print(&reply, output::render_contract)
}

/// `sbctl contract approve NS HASH`
pub async fn contract_approve(
    ctx: &Context,
    namespace: &str,
    hash: &str,
    reason: &str,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator
        .approve_contract(namespace, hash, reason)
        .await?;
    ctx.print(&reply, output::render_contract)
}

/// `sbctl policy show NS`
pub async fn policy_show(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.get_policy(namespace).await?;
    ctx.print(&reply, |policy| {
        output::render_policy(namespace, policy, None)
    })
}

/// `sbctl policy set NS [--max-error-rate F] [--min-requests N] [--window SECONDS] [--bake
/// SECONDS] [-m REASON]`: reads the current policy, changes only the settings given, and
/// stores the result.
pub async fn policy_set(
    ctx: &Context,
    namespace: &str,
    settings: &PolicySettings,
    reason: &str,
) -> Result<(), CliError> {
    check_policy_settings(settings)?;
    let mut coordinator = ctx.coordinator().await?;
    let current = coordinator.get_policy(namespace).await?.document;
    let policy = merge_policy(&current, settings)?;
    let reply = coordinator
        .set_policy(namespace, &current, &policy, reason)
        .await?;
    ctx.print(&reply, |stored| {
        output::render_policy(namespace, stored, Some(&current))
    })
}

/// The settings given on the command line, applied to `base`.
fn apply_settings(base: &Policy, settings: &PolicySettings) -> Policy {
    Policy {
        max_error_rate: settings.max_error_rate.unwrap_or(base.max_error_rate),
        min_requests: settings.min_requests.unwrap_or(base.min_requests),
        window_seconds: settings.window_seconds.unwrap_or(base.window_seconds),
        bake_seconds: settings.bake_seconds.unwrap_or(base.bake_seconds),
        require_approval: settings.require_approval.unwrap_or(base.require_approval),
        destructive_requires_approval: settings
            .destructive_requires_approval
            .unwrap_or(base.destructive_requires_approval),
        preview_reads: settings.preview_reads.unwrap_or(base.preview_reads),
        gates: base.gates.clone(),
    }
}

/// `base` with the one setting of `flag` taken from `from`.
fn with_setting(base: &Policy, from: &Policy, flag: &str) -> Policy {
    let mut policy = base.clone();
    match flag {
        "--max-error-rate" => policy.max_error_rate = from.max_error_rate,
        "--min-requests" => policy.min_requests = from.min_requests,
        "--window" => policy.window_seconds = from.window_seconds,
        "--require-approval" => policy.require_approval = from.require_approval,
        "--destructive-requires-approval" => {
            policy.destructive_requires_approval = from.destructive_requires_approval
        }
        "--preview-reads" => policy.preview_reads = from.preview_reads,
        _ => policy.bake_seconds = from.bake_seconds,
    }
    policy
}

/// The flags of the settings given.
fn given_flags(settings: &PolicySettings) -> Vec<&'static str> {
    let given = [
        settings.max_error_rate.is_some(),
        settings.min_requests.is_some(),
        settings.window_seconds.is_some(),
        settings.bake_seconds.is_some(),
        settings.require_approval.is_some(),
        settings.destructive_requires_approval.is_some(),
        settings.preview_reads.is_some(),
    ];
    POLICY_FLAGS
        .iter()
        .zip(given)
        .filter(|(_, given)| *given)
        .map(|(flag, _)| *flag)
        .collect()
}

/// Checks the command line of `policy set` before anything is asked: at least one setting,
/// and each value valid (`Policy::validate`). Either failure is a usage error naming the flag.
pub fn check_policy_settings(settings: &PolicySettings) -> Result<(), CliError> {
    let given = given_flags(settings);
    if given.is_empty() {
        return Err(CliError::Usage(format!(
            "policy set needs at least one setting to change: {}",
            POLICY_FLAGS.join(", ")
        )));
    }
    let defaults = Policy::default();
    let wanted = apply_settings(&defaults, settings);
    for flag in given {
        // Each setting alone among the defaults, so that the error belongs to this flag.
        if let Err(problem) = with_setting(&defaults, &wanted, flag).validate() {
            let hint = match settings.max_error_rate {
                Some(r) if flag == "--max-error-rate" && r > 1.0 && r <= 100.0 => {
                    format!(" (for a percentage, write {r}%)")
                }
                _ => String::new(),
            };
            return Err(CliError::Usage(format!("{flag}: {problem}{hint}")));
        }
    }
    Ok(())
}

/// The current policy with the settings given changed, checked whole. A setting that was
/// not given and is out of range in the stored policy is the coordinator's fault, named
/// with the flag that replaces it.
pub fn merge_policy(current: &Policy, settings: &PolicySettings) -> Result<Policy, CliError> {
    check_policy_settings(settings)?;
    let merged = apply_settings(current, settings);
    if let Err(problem) = merged.validate() {
        let defaults = Policy::default();
        let flag = POLICY_FLAGS
            .iter()
            .find(|flag| with_setting(&defaults, &merged, flag).validate().is_err());
        let fix = match flag {
            Some(flag) => format!("; give {flag} as well to replace it"),
            None => String::new(),
        };
        return Err(CliError::BadReply {
            rpc: "GetPolicy",
            problem: format!("the current policy is not valid: {problem}{fix}"),
        });
    }
    Ok(merged)
}

/// `sbctl rollout NS --steps P,P,... --interval SECONDS [-m REASON] [--expect-epoch N]
/// [--expect-version V]`, or `sbctl rollout NS --pause | --resume | --abort [-m REASON]`.
pub async fn rollout(
    ctx: &Context,
    namespace: &str,
    action: &RolloutAction,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let request = match action {
        RolloutAction::Start {
            steps_bp,
            interval_seconds,
        } => {
            let (expected_epoch, expected_version) =
                expected_epoch_and_version(&mut coordinator, namespace, change).await?;
            RolloutRequest {
                namespace: namespace.to_string(),
                action: action.as_str().to_string(),
                steps_bp: steps_bp.clone(),
                interval_seconds: *interval_seconds,
                expected_epoch,
                expected_version,
                reason: change.why.reason.clone(),
            }
        }
        RolloutAction::Pause | RolloutAction::Resume | RolloutAction::Abort => RolloutRequest {
            namespace: namespace.to_string(),
            action: action.as_str().to_string(),
            reason: change.why.reason.clone(),
            ..RolloutRequest::default()
        },
    };
    let reply = gated(&mut coordinator, request, change.gate_wait(), |c, r| {
        Box::pin(c.rollout(r))
    })
    .await?;
    let now = now_ms();
    ctx.print(&reply, |rollout| {
        output::render_rollout(namespace, rollout, now)
    })
}

/// `sbctl audit NS [--verify]`
pub async fn audit(ctx: &Context, namespace: &str, verify: bool) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.audit(namespace, verify).await?;
    let verdict = if verify {
        Some(verdict(&reply.document)?)
    } else {
        None
    };
    if ctx.json {
        output::print_json(&reply.json)?;
    } else {
        let mut text = output::render_audit(&reply.document);
        if let Some(verdict) = &verdict {
            text.push_str(&match verdict {
                Ok(n) => format!("audit chain intact ({n} records)\n"),
                Err(problem) => format!("{problem}\n"),
            });
        }
        output::print_text(&text)?;
    }
    match verdict {
        Some(Err(problem)) => Err(CliError::Failed(problem)),
        _ => Ok(()),
    }
}

/// The result of `--verify`: the number of records when the chain is intact, else the
/// sentence saying where it breaks. The coordinator's verification is authoritative; the links
/// between the records sent (each `prev_hash` naming the hash before it, sequence numbers
/// rising by one) are checked here as well.
pub fn verdict(trail: &AuditTrail) -> Result<Result<usize, String>, CliError> {
    let verified = trail.verified.as_ref().ok_or_else(|| CliError::BadReply {
        rpc: "Audit",
        problem: "it does not say whether the chain is intact".into(),
    })?;
    if !verified.intact {
        let at = verified
            .first_bad_seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into());
        let problem = verified.problem.as_deref().unwrap_or("does not match");
        return Ok(Err(format!("audit chain broken at record {at}: {problem}")));
    }
    for pair in trail.records.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.seq != before.seq + 1 {
            return Ok(Err(format!(
                "audit chain broken at record {}: it follows record {}",
                after.seq, before.seq
            )));
        }
        if after.prev_hash != before.hash {
            return Ok(Err(format!(
                "audit chain broken at record {}: its previous hash is not record {}'s hash",
                after.seq, before.seq
            )));
        }
    }
    Ok(Ok(trail.records.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_proto::{AuditRecord, AuditVerification};

    fn settings() -> PolicySettings {
        PolicySettings::default()
    }

    fn usage_message(result: Result<(), CliError>) -> String {
        let err = result.expect_err("usage error");
        assert_eq!(err.exit_code(), crate::exit::USAGE, "{err}");
        err.to_string()
    }

    #[test]
    fn policy_set_needs_a_setting() {
        let message = usage_message(check_policy_settings(&settings()));
        for flag in POLICY_FLAGS {
            assert!(message.contains(flag), "{message}");
        }
        let err = merge_policy(&Policy::default(), &settings()).expect_err("no flag");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
    }

    #[test]
    fn policy_set_changes_only_the_settings_given() {
        let current = Policy {
            max_error_rate: 0.02,
            min_requests: 1000,
            window_seconds: 120,
            bake_seconds: 600,
            ..Policy::default()
        };
        let cases = [
            (
                PolicySettings {
                    max_error_rate: Some(0.1),
                    ..settings()
                },
                Policy {
                    max_error_rate: 0.1,
                    ..current.clone()
                },
            ),
            (
                PolicySettings {
                    min_requests: Some(1),
                    ..settings()
                },
                Policy {
                    min_requests: 1,
                    ..current.clone()
                },
            ),
            (
                PolicySettings {
                    window_seconds: Some(86_400),
                    ..settings()
                },
                Policy {
                    window_seconds: 86_400,
                    ..current.clone()
                },
            ),
            (
                PolicySettings {
                    bake_seconds: Some(0),
                    ..settings()
                },
                Policy {
                    bake_seconds: 0,
                    ..current.clone()
                },
            ),
            (
                PolicySettings {
                    max_error_rate: Some(0.0),
                    min_requests: Some(50),
                    window_seconds: Some(1),
                    bake_seconds: Some(7 * 86_400),
                    require_approval: None,
                    destructive_requires_approval: None,
                    preview_reads: None,
                },
                Policy {
                    max_error_rate: 0.0,
                    min_requests: 50,
                    window_seconds: 1,
                    bake_seconds: 7 * 86_400,
                    ..Policy::default()
                },
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(
                merge_policy(&current, &given).expect("valid"),
                expected,
                "{given:?}"
            );
        }
    }

    #[test]
    fn the_percent_form_is_the_same_rate() {
        let rate = crate::cli::parse_rate("5%").expect("parses");
        let given = PolicySettings {
            max_error_rate: Some(rate),
            ..settings()
        };
        let merged = merge_policy(&Policy::default(), &given).expect("valid");
        assert_eq!(merged.max_error_rate, 0.05);
        assert_eq!(merged, Policy::default());
    }

    #[test]
    fn invalid_values_name_their_flag() {
        let cases = [
            (
                PolicySettings {
                    max_error_rate: Some(1.5),
                    ..settings()
                },
                "--max-error-rate",
            ),
            (
                PolicySettings {
                    max_error_rate: Some(-0.01),
                    ..settings()
                },
                "--max-error-rate",
            ),
            (
                PolicySettings {
                    max_error_rate: Some(f64::NAN),
                    ..settings()
                },
                "--max-error-rate",
            ),
            (
                PolicySettings {
                    min_requests: Some(0),
                    ..settings()
                },
                "--min-requests",
            ),
            (
                PolicySettings {
                    window_seconds: Some(0),
                    ..settings()
                },
                "--window",
            ),
            (
                PolicySettings {
                    window_seconds: Some(86_401),
                    ..settings()
                },
                "--window",
            ),
            (
                PolicySettings {
                    bake_seconds: Some(7 * 86_400 + 1),
                    ..settings()
                },
                "--bake",
            ),
            // Valid settings beside a bad one: the bad one is named.
            (
                PolicySettings {
                    max_error_rate: Some(0.1),
                    min_requests: Some(10),
                    window_seconds: Some(30),
                    bake_seconds: Some(u64::MAX),
                    require_approval: None,
                    destructive_requires_approval: None,
                    preview_reads: None,
                },
                "--bake",
            ),
        ];
        for (given, flag) in cases {
            let message = usage_message(check_policy_settings(&given));
            assert!(
                message.starts_with(&format!("{flag}: ")),
                "{given:?}: {message}"
            );
            let others = POLICY_FLAGS.iter().filter(|f| **f != flag);
            for other in others {
                assert!(!message.contains(other), "{given:?}: {message}");
            }
            let err = merge_policy(&Policy::default(), &given).expect_err("invalid");
            assert_eq!(err.exit_code(), crate::exit::USAGE);
        }
        let message = usage_message(check_policy_settings(&PolicySettings {
            max_error_rate: Some(5.0),
            ..settings()
        }));
        assert!(message.contains("write 5%"), "{message}");
    }

    #[test]
    fn a_bad_stored_setting_is_the_coordinators_fault() {
        let stored = Policy {
            window_seconds: 0,
            ..Policy::default()
        };
        let given = PolicySettings {
            bake_seconds: Some(60),
            ..settings()
        };
        let err = merge_policy(&stored, &given).expect_err("stored policy invalid");
        assert_eq!(err.exit_code(), crate::exit::FAILED);
        assert!(err.to_string().contains("give --window"), "{err}");
        let fixed = PolicySettings {
            window_seconds: Some(60),
            ..given
        };
        assert!(merge_policy(&stored, &fixed).is_ok());
    }

    fn record(seq: u64, prev: &str, hash: &str) -> AuditRecord {
        AuditRecord {
            seq,
            at_ms: 0,
            namespace: "cat".into(),
            actor: "a".into(),
            action: "flip".into(),
            reason: String::new(),
            detail: json!({}),
            prev_hash: prev.into(),
            hash: hash.into(),
        }
    }

    fn trail(records: Vec<AuditRecord>, verified: Option<AuditVerification>) -> AuditTrail {
        AuditTrail {
            namespace: "cat".into(),
            records,
            verified,
        }
    }

    #[test]
    fn audit_verdicts() {
        let intact = Some(AuditVerification {
            intact: true,
            first_bad_seq: None,
            problem: None,
        });
        let good = trail(
            vec![record(1, "", "h1"), record(2, "h1", "h2")],
            intact.clone(),
        );
        assert_eq!(verdict(&good).expect("verified"), Ok(2));

        let broken = trail(
            vec![record(1, "", "h1")],
            Some(AuditVerification {
                intact: false,
                first_bad_seq: Some(1),
                problem: Some("hash mismatch".into()),
            }),
        );
        assert_eq!(
            verdict(&broken).expect("verified"),
            Err("audit chain broken at record 1: hash mismatch".into())
        );

        let unlinked = trail(
            vec![record(1, "", "h1"), record(2, "hX", "h2")],
            intact.clone(),
        );
        let v = verdict(&unlinked).expect("verified");
        assert!(
            v.expect_err("broken")
                .starts_with("audit chain broken at record 2")
        );

        let gap = trail(vec![record(1, "", "h1"), record(3, "h1", "h3")], intact);
        assert!(verdict(&gap).expect("verified").is_err());

        assert!(verdict(&trail(vec![], None)).is_err());
    }
}
