//! The synchronized flip: the preparation every sidecar acknowledges, the commit with an
//! activation point, and the withdrawal of a preparation its coordinator left behind.

use super::*;

impl Releases {
    /// A synchronized flip: the sidecars load and acknowledge the target first, then the flip
    /// commits with an activation point `lead` ahead, at which every sidecar switches.
    ///
    /// 1. The preparation is a routing change of its own (action `prepare`, audited), made only
    ///    if the flip itself could be made now: the same target, expected version, approval and
    ///    gates. It names the target in `prepare` and serves nothing new.
    /// 2. Every live sidecar (every health record) must acknowledge it within `ack_timeout`.
    ///    Otherwise the preparation is withdrawn (action `prepare-cancel`) and the flip refused,
    ///    naming the sidecars that did not acknowledge.
    /// 3. The flip commits exactly as a plain flip does, compared against the preparation's
    ///    epoch, so that any change in between makes it a conflict.
    pub async fn sync_flip(
        &self,
        request: ChangeRequest<'_>,
        expected_version: &str,
        lead: std::time::Duration,
        ack_timeout: std::time::Duration,
        stop: &CancellationToken,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        check_namespace(ns)?;
        let lead_ms = u64::try_from(lead.as_millis()).unwrap_or(u64::MAX);
        if lead_ms == 0 || lead_ms > MAX_SYNC_LEAD_MS {
            return Err(CoordinatorError::InvalidInput(format!(
                "a synchronized flip's lead of {lead_ms} ms must be 1 to {MAX_SYNC_LEAD_MS} ms"
            )));
        }
        if ack_timeout.is_zero() || ack_timeout > MAX_SYNC_ACK_TIMEOUT {
            return Err(CoordinatorError::InvalidInput(format!(
                "a synchronized flip's acknowledgement timeout of {ack_timeout:?} must be above 0 and at most {MAX_SYNC_ACK_TIMEOUT:?}"
            )));
        }
        let prepare_request = ChangeRequest {
            action: "prepare",
            ..request
        };
        let prepared = self
            .change_routing_with(prepare_request, SyncStep::Prepare, |state, routing| {
                let routing = routing.ok_or_else(|| {
                    CoordinatorError::Refused(format!(
                        "nothing is active in {ns} yet, so no sidecar serves anything to switch from: make the first flip without --sync"
                    ))
                })?;
                let flip = flip_decision(ns, state, routing, expected_version)?;
                let target = flip.routing.active.clone();
                Ok(Decision {
                    detail: json!({
                        "prepare": {"slot": target.slot, "version": target.version},
                        "lead_ms": lead_ms,
                    }),
                    routing: Routing {
                        prepare: Some(target),
                        ..routing.clone()
                    },
                    compare_slots: flip.compare_slots,
                    // Preparing moves nobody: a running rollout goes on until the commit.
                    rollout: RolloutAfter::Keep,
                    target: flip.target,
                })
            })
            .await?;
        let prepare_epoch = prepared.routing.epoch;
        let target =
            prepared
                .routing
                .prepare
                .clone()
                .ok_or_else(|| CoordinatorError::CorruptRecord {
                    key: self.store().keys().routing(ns),
                    reason: "the preparation was written without its target".into(),
                })?;
        let started = std::time::Instant::now();
        let acknowledged = match self
            .await_acknowledgements(ns, prepare_epoch, &target, ack_timeout, stop)
            .await
        {
            Ok(acknowledged) => acknowledged,
            Err(error) => {
                self.cancel_prepare(&request, prepare_epoch, &error).await;
                return Err(error);
            }
        };
        let ack_wait_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let sync_detail = json!({
            "prepare_epoch": prepare_epoch,
            "acknowledged": acknowledged.len(),
            "ack_wait_ms": ack_wait_ms,
            "lead_ms": lead_ms,
        });
        let commit_request = ChangeRequest {
            expected_epoch: prepare_epoch,
            ..request
        };
        let committed = self
            .change_routing_with(
                commit_request,
                SyncStep::Activate { lead_ms },
                |state, routing| {
                    let routing = routing.ok_or_else(|| nothing_active(ns))?;
                    let mut decision = flip_decision(ns, state, routing, &target.version)?;
                    if let Some(detail) = decision.detail.as_object_mut() {
                        detail.insert("sync".into(), sync_detail.clone());
                    }
                    Ok(decision)
                },
            )
            .await;
        match committed {
            Ok(mut change) => {
                let activate_at_ms = change
                    .routing
                    .activate_at_ms
                    .unwrap_or(change.routing.at_ms);
                change.sync = Some(SyncPrepared {
                    prepare_epoch,
                    acknowledged,
                    ack_wait_ms,
                    lead_ms,
                    activate_at_ms,
                });
                Ok(change)
            }
            Err(error) => {
                self.cancel_prepare(&request, prepare_epoch, &error).await;
                Err(error)
            }
        }
    }

    /// Waits until every live sidecar of `ns` holds the prepared set: its health record is on
    /// the preparation's epoch or later and names the prepared manifest. Returns their ids, or
    /// a refusal naming those that did not acknowledge in time. A routing change meanwhile is
    /// a conflict at once, since the sidecars then drop the preparation. `stop` (the
    /// coordinator's shutdown) ends the wait with a refusal, so that the preparation is
    /// withdrawn before the coordinator exits rather than left in routing.
    pub(super) async fn await_acknowledgements(
        &self,
        ns: &str,
        prepare_epoch: u64,
        target: &SlotVersion,
        timeout: std::time::Duration,
        stop: &CancellationToken,
    ) -> Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Watched, not polled: each acknowledgement wakes the wait as etcd delivers it, and
        // etcd is not asked for every health record again and again while a fleet loads.
        let keys = self.store().keys();
        let mut health = HealthView::open(self.store(), ns).await?;
        let mut routing_key = self.store().watch_records(&keys.routing(ns), false).await?;
        let acknowledged = |record: &HealthRecord| {
            record.epoch >= prepare_epoch
                && record.prepared.as_deref() == Some(target.manifest.as_str())
        };
        loop {
            let waiting = health.records().filter(|r| !acknowledged(r)).count();
            if waiting == 0 {
                let mut ids: Vec<String> = health.records().map(|r| r.id.clone()).collect();
                ids.sort();
                return Ok(ids);
            }
            let live = health.len();
            let routing: Option<Routing> = routing_key
                .values()
                .next()
                .map(|(key, value)| parse_record(key, value))
                .transpose()?;
            let epoch = routing.as_ref().map_or(0, |r| r.epoch);
            if epoch != prepare_epoch {
                return Err(conflict(ns, prepare_epoch, routing.as_ref()));
            }
            let timed_out = tokio::select! {
                changed = health.changed() => { changed?; false }
                changed = routing_key.changed() => { changed?; false }
                () = tokio::time::sleep_until(deadline) => true,
                () = stop.cancelled() => {
                    return Err(CoordinatorError::Refused(format!(
                        "the synchronized flip of {ns} to version {} is stopped: this coordinator is shutting down while {waiting} of {live} live sidecars have not acknowledged the prepared set; the preparation was withdrawn and nobody was moved; flip again through another coordinator",
                        target.version,
                    )));
                }
            };
            if timed_out {
                let mut names: Vec<(&str, u64)> = health
                    .records()
                    .filter(|r| !acknowledged(r))
                    .map(|r| (r.id.as_str(), r.epoch))
                    .collect();
                names.sort();
                let names: Vec<String> = names
                    .iter()
                    .map(|(id, epoch)| format!("{id} (epoch {epoch})"))
                    .collect();
                return Err(CoordinatorError::Refused(format!(
                    "the synchronized flip of {ns} to version {} is refused: {waiting} of {live} live sidecars did not acknowledge the prepared set within {timeout:?}: {}; the preparation was withdrawn and nobody was moved",
                    target.version,
                    names.join(", ")
                )));
            }
        }
    }

    /// Withdraws a preparation that will not be committed, so that sidecars stop holding the
    /// set. A routing change made meanwhile has cleared it already (every change but a
    /// synchronized flip's clears it), so a conflict here is not a failure; any failure is
    /// logged and the flip's own error is what the caller gets.
    pub(super) async fn cancel_prepare(
        &self,
        request: &ChangeRequest<'_>,
        prepare_epoch: u64,
        why: &CoordinatorError,
    ) {
        let ns = request.ns;
        let reason = format!("synchronized flip not made: {why}");
        let cancel = ChangeRequest {
            ns,
            expected_epoch: prepare_epoch,
            action: "prepare-cancel",
            reason: &reason,
            actor: request.actor,
            fence: request.fence,
        };
        let cancelled = self
            .change_routing(cancel, |_, routing| {
                let routing = routing.ok_or_else(|| nothing_active(ns))?;
                let prepare = routing.prepare.as_ref().ok_or_else(|| {
                    CoordinatorError::Conflict(format!("{ns} has no preparation to withdraw"))
                })?;
                Ok(Decision {
                    detail: json!({"prepare": {"slot": prepare.slot, "version": prepare.version}}),
                    routing: routing.clone(),
                    compare_slots: vec![],
                    rollout: RolloutAfter::Keep,
                    target: None,
                })
            })
            .await;
        match cancelled {
            Ok(change) => {
                tracing::info!(
                    ns,
                    epoch = change.routing.epoch,
                    "synchronized flip's preparation withdrawn"
                )
            }
            Err(CoordinatorError::Conflict(message)) => {
                tracing::info!(ns, %message, "synchronized flip's preparation already superseded")
            }
            Err(error) => {
                tracing::error!(ns, %error, "synchronized flip's preparation could not be withdrawn; the next routing change clears it")
            }
        }
    }

    /// Withdraws a preparation older than [`STALE_PREPARATION_MS`], so that sidecars stop
    /// holding a set that no synchronized flip will commit.
    pub async fn withdraw_stale_preparation(
        &self,
        request: ChangeRequest<'_>,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        self.change_routing(request, |_, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let prepare = routing.prepare.as_ref().ok_or_else(|| {
                CoordinatorError::Conflict(format!("{ns} has no preparation to withdraw"))
            })?;
            if now_ms() < routing.at_ms.saturating_add(STALE_PREPARATION_MS) {
                return Err(CoordinatorError::Conflict(format!(
                    "the preparation of {ns} may still be committed"
                )));
            }
            // Any routing change but a synchronized flip's clears the preparation.
            Ok(Decision {
                detail: json!({
                    "prepare": {"slot": prepare.slot, "version": prepare.version},
                    "prepared_at": rfc3339_ms(routing.at_ms),
                }),
                routing: routing.clone(),
                compare_slots: vec![],
                rollout: RolloutAfter::Keep,
                target: None,
            })
        })
        .await
    }
}
