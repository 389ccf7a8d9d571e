//! The routing changes: canary, flip (also synchronized), rollback and rollouts, each
//! decided against the epoch and version the caller saw.

use super::*;

/// The epoch a routing change is decided against: `--expect-epoch`, else the current one.
pub(super) async fn expected_epoch(
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
pub(super) async fn expected_epoch_and_version(
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
pub(super) async fn print_change_and_wait(
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
pub(super) async fn flip_request(
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
