//! Commands about versions rather than routing: `approve`, `history`, and `diff` (drift of a
//! directory from the active set).

use std::path::Path;

use switchboard_proto::pb::ApproveRequest;

use crate::commands::{Context, SourceOptions};
use crate::exit::CliError;
use crate::{output, pipeline};

/// `sbctl approve NS VERSION [-m REASON]`
pub async fn approve(
    ctx: &Context,
    namespace: &str,
    version: &str,
    reason: &str,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator
        .approve(ApproveRequest {
            namespace: namespace.to_string(),
            version: version.to_string(),
            reason: reason.to_string(),
        })
        .await?;
    ctx.print(&reply, output::render_approval)
}

/// `sbctl history NS`
pub async fn history(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.history(namespace).await?;
    ctx.print(&reply, output::render_history)
}

/// `sbctl diff NS PATH [--env NAME]`: the plan of PATH against the active set, and exit 1 when
/// they differ, so that a scheduled job notices drift between the repository and what serves.
pub async fn diff(
    ctx: &Context,
    namespace: &str,
    path: &Path,
    options: &SourceOptions,
) -> Result<(), CliError> {
    let prepared = pipeline::prepare(path, options.env.as_deref())?;
    let (manifest, _) = prepared.set.to_chunks();
    let mut coordinator = ctx.coordinator().await?;
    let report = pipeline::plan_report(&mut coordinator, namespace, &manifest, &prepared).await?;
    let identical = report.active_version.as_deref() == Some(report.new_version.as_str());
    if ctx.json {
        let mut document = serde_json::to_value(&report)
            .map_err(|e| CliError::Failed(format!("cannot write the diff as JSON: {e}")))?;
        if let Some(object) = document.as_object_mut() {
            object.insert("identical".into(), identical.into());
        }
        output::print_json(&document)?;
    } else {
        output::print_text(&output::render_diff(&report))?;
    }
    if identical {
        return Ok(());
    }
    Err(CliError::Failed(match &report.active_version {
        None => format!(
            "{} differs: nothing is active in {namespace}",
            crate::escape::path(path)
        ),
        Some(active) => format!(
            "{} differs from the active set of {namespace} (version {active}): {} added, {} changed, {} removed",
            crate::escape::path(path),
            report.added.len(),
            report.changed.len(),
            report.removed.len()
        ),
    }))
}
