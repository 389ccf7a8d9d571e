//! The stage protocol (begin, upload only the chunks etcd lacks, seal) and `plan`, which
//! asks the coordinator what a stage would do without doing it.

use super::*;

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
pub(super) fn progress_bar(total_bytes: u64) -> ProgressBar {
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
