//! The commands, one function each: what each asks the coordinator and what it prints.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use switchboard_proto::pb::{
    BeginStageRequest, ChunkData, FlipRequest, RollbackRequest, SealRequest, SetCanaryRequest,
};
use switchboard_proto::{AuditTrail, NamespaceStatus, RoutingChange, Slot};
use tonic::Code;

use crate::cli::ChangeArgs;
use crate::client::{ConnectOptions, Coordinator, Reply};
use crate::exit::CliError;
use crate::output::{self, PlanReport, StageReport};
use crate::{plan, source};

/// How often `flip --wait` reads the status.
pub const WAIT_POLL: Duration = Duration::from_millis(200);

/// What every command needs: how to reach the coordinator and how to print.
#[derive(Clone, Debug)]
pub struct Context {
    pub connect: ConnectOptions,
    pub json: bool,
}

impl Context {
    async fn coordinator(&self) -> Result<Coordinator, CliError> {
        Coordinator::connect(&self.connect).await
    }

    /// Prints a reply's document: as it came with `--json`, else as `human` renders it.
    fn print<T>(&self, reply: &Reply<T>, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
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
    ctx.print(&reply, output::render_status)
}

/// `sbctl stage NS PATH [-m MESSAGE]`
pub async fn stage(
    ctx: &Context,
    namespace: &str,
    path: &Path,
    message: &str,
) -> Result<(), CliError> {
    let set = source::load(path)?;
    let (manifest, chunks) = set.to_chunks();
    let manifest_hash = manifest.hash();
    let manifest_json = String::from_utf8(manifest.to_canonical_json())
        .map_err(|e| CliError::Failed(format!("the manifest is not UTF-8: {e}")))?;

    let mut coordinator = ctx.coordinator().await?;
    let begun = coordinator
        .begin_stage(BeginStageRequest {
            namespace: namespace.to_string(),
            manifest_json,
            message: message.to_string(),
        })
        .await?;
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
        replaced_version: Some(begun.replaced_version.clone()).filter(|v| !v.is_empty()),
    };
    if let Some(replaced) = &report.replaced_version {
        output::note(&format!(
            "note: staging into slot {slot} replaces the sealed version {replaced} it held; \
             after this, `sbctl rollback {namespace}` cannot return to {replaced}"
        ));
    }
    match begun.outcome.as_str() {
        "already_active" | "already_staged" => return print_stage(ctx, &report),
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
    print_stage(ctx, &report)
}

fn print_stage(ctx: &Context, report: &StageReport) -> Result<(), CliError> {
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

/// `sbctl plan NS PATH`
pub async fn plan(ctx: &Context, namespace: &str, path: &Path) -> Result<(), CliError> {
    let set = source::load(path)?;
    let (manifest, _) = set.to_chunks();
    let mut coordinator = ctx.coordinator().await?;
    let active = coordinator.get_manifest(namespace, "").await?;
    let diff = match &active {
        None => plan::diff(&manifest, &set, None),
        Some(active) => {
            let wanted = plan::chunks_to_fetch(&manifest, active);
            let fetched = if wanted.is_empty() {
                Vec::new()
            } else {
                coordinator.get_chunks(namespace, &wanted).await?
            };
            let active_only =
                plan::decode_fetched(active, &wanted, fetched).map_err(|problem| {
                    CliError::BadReply {
                        rpc: "GetChunks",
                        problem,
                    }
                })?;
            plan::diff(&manifest, &set, Some((active, &active_only)))
        }
    };
    let report = PlanReport {
        namespace: namespace.to_string(),
        active_version: active.map(|m| m.version),
        new_version: manifest.version,
        added: diff.added,
        changed: diff.changed,
        removed: diff.removed,
        unchanged: diff.unchanged,
    };
    if ctx.json {
        return output::print_json(&report);
    }
    output::print_text(&output::render_plan(&report))?;
    if !report.removed.is_empty() {
        output::note(&format!(
            "note: staging this set removes {} item(s) that the active set has",
            report.removed.len()
        ));
    }
    Ok(())
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

/// `sbctl canary NS PERCENT [-m REASON] [--expect-epoch N]`
pub async fn canary(
    ctx: &Context,
    namespace: &str,
    weight_bp: u32,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let (expected_epoch, expected_version) =
        expected_epoch_and_version(&mut coordinator, namespace, change).await?;
    let reply = coordinator
        .set_canary(SetCanaryRequest {
            namespace: namespace.to_string(),
            weight_bp,
            expected_epoch,
            reason: change.reason.clone(),
            expected_version,
        })
        .await?;
    ctx.print(&reply, output::render_routing_change)
}

/// `sbctl flip NS [--wait] [--timeout SECONDS] [-m REASON] [--expect-epoch N]`
pub async fn flip(
    ctx: &Context,
    namespace: &str,
    wait: Option<Duration>,
    change: &ChangeArgs,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let (expected_epoch, expected_version) =
        expected_epoch_and_version(&mut coordinator, namespace, change).await?;
    let reply = coordinator
        .flip(FlipRequest {
            namespace: namespace.to_string(),
            expected_epoch,
            reason: change.reason.clone(),
            expected_version,
        })
        .await?;
    ctx.print(&reply, output::render_routing_change)?;
    match wait {
        Some(timeout) => {
            wait_for_epoch(
                &mut coordinator,
                namespace,
                reply.document.routing.epoch,
                timeout,
            )
            .await
        }
        None => Ok(()),
    }
}

/// Polls the status until every live sidecar serves `epoch` or later.
async fn wait_for_epoch(
    coordinator: &mut Coordinator,
    namespace: &str,
    epoch: u64,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let mut last_progress = None;
    loop {
        match coordinator.status(namespace).await {
            Ok(reply) => {
                let progress = epoch_progress(&reply.document, epoch);
                if progress.total == 0 {
                    output::note(&format!(
                        "no live sidecars in {namespace}: nothing to wait for"
                    ));
                    return Ok(());
                }
                if last_progress != Some((progress.on_epoch, progress.total)) {
                    output::note(&format!(
                        "{}/{} sidecars on epoch {epoch}",
                        progress.on_epoch, progress.total
                    ));
                    last_progress = Some((progress.on_epoch, progress.total));
                }
                if progress.behind.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(CliError::Failed(format!(
                        "timed out after {} waiting for the sidecars of {namespace} to serve \
                         epoch {epoch}; not yet: {}",
                        seconds(timeout),
                        progress.behind.join(", ")
                    )));
                }
            }
            // The coordinator may be failing over; keep trying until the deadline.
            Err(e) if e.grpc_code() == Some(Code::Unavailable) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

/// How far the live sidecars are from serving an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochProgress {
    pub on_epoch: usize,
    pub total: usize,
    /// The sidecars not there yet, as `id (epoch N)`.
    pub behind: Vec<String>,
}

/// Which live sidecars of a status serve `epoch` or a later one.
pub fn epoch_progress(status: &NamespaceStatus, epoch: u64) -> EpochProgress {
    let behind: Vec<String> = status
        .sidecars
        .iter()
        .filter(|s| s.epoch < epoch)
        .map(|s| format!("{} (epoch {})", s.id, s.epoch))
        .collect();
    EpochProgress {
        on_epoch: status.sidecars.len() - behind.len(),
        total: status.sidecars.len(),
        behind,
    }
}

/// `sbctl rollback NS [-m REASON] [--expect-epoch N]`
pub async fn rollback(ctx: &Context, namespace: &str, change: &ChangeArgs) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let expected_epoch = expected_epoch(&mut coordinator, namespace, change).await?;
    let reply: Reply<RoutingChange> = coordinator
        .rollback(RollbackRequest {
            namespace: namespace.to_string(),
            expected_epoch,
            reason: change.reason.clone(),
        })
        .await?;
    ctx.print(&reply, output::render_routing_change)
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
    use switchboard_proto::{AuditRecord, AuditVerification, StatusSidecar, StatusSlots};

    fn status_with(epochs: &[(&str, u64)]) -> NamespaceStatus {
        NamespaceStatus {
            namespace: "cat".into(),
            epoch: 5,
            active: None,
            canary: None,
            previous: None,
            slots: StatusSlots {
                blue: None,
                green: None,
            },
            sidecars: epochs
                .iter()
                .map(|(id, epoch)| StatusSidecar {
                    id: id.to_string(),
                    epoch: *epoch,
                    serving: vec![],
                    etcd_reachable: true,
                    at_ms: 0,
                })
                .collect(),
            last_change: None,
        }
    }

    #[test]
    fn epoch_progress_names_the_sidecars_behind() {
        let p = epoch_progress(&status_with(&[("a", 5), ("b", 4), ("c", 6)]), 5);
        assert_eq!(
            p,
            EpochProgress {
                on_epoch: 2,
                total: 3,
                behind: vec!["b (epoch 4)".into()]
            }
        );
        let none = epoch_progress(&status_with(&[]), 5);
        assert_eq!(none.total, 0);
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
