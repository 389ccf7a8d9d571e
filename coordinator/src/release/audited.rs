//! Approvals and the audit trail: the head of a namespace's chain, audited denials, records
//! appended in the same transaction as the change they record (invariant 8), and the
//! verification of a chain.

use super::*;

/// Adds the audit record to a transaction: the record under its sequence number, the head
/// moved to it, and the compare that the record's key is still free. That compare is the
/// audit chain's whole guard: every append moves the head and creates the next record in one
/// transaction, so two changes that read the same head race for the same key, and the loser
/// reads again; and a head that fell behind its records (restored from an older copy) makes
/// every change fail instead of overwriting a record. (Comparing the head's revision as well
/// guarded nothing more, and no test could tell it was there: it was removed.)
pub(crate) fn append_audit_record(
    keys: &switchboard_proto::Keys,
    ns: &str,
    record: &AuditRecord,
    compares: &mut Vec<etcd_client::Compare>,
    operations: &mut Vec<TxnOp>,
) {
    let head = AuditHead {
        seq: record.seq,
        hash: record.hash.clone(),
    };
    compares.push(absent(keys.audit(ns, record.seq)));
    operations.push(TxnOp::put(
        keys.audit(ns, record.seq),
        to_json(record),
        None,
    ));
    operations.push(TxnOp::put(keys.audit_head(ns), to_json(&head), None));
}

impl Releases {
    #[allow(clippy::too_many_arguments)]
    /// The head the next audit record follows. A missing head with records present means the
    /// trail was tampered with or half restored: no record may be written until it is repaired,
    /// or the next one would overwrite evidence.
    pub(crate) async fn audit_head(&self, ns: &str, state: &NamespaceState) -> Result<AuditHead> {
        if let Some(head) = &state.audit_head.value {
            return Ok(head.clone());
        }
        if self
            .store
            .has_any(&self.store.keys().audit_prefix(ns))
            .await?
        {
            return Err(CoordinatorError::CorruptRecord {
                key: self.store.keys().audit_head(ns),
                reason: "missing while the audit trail has records; restore it before any change"
                    .into(),
            });
        }
        Ok(AuditHead::default())
    }

    /// Records `actor`'s approval of `version`, which must be in a slot or retained. Whoever
    /// staged it may not approve it. Approving twice is a no-op.
    pub async fn approve(
        &self,
        ns: &str,
        version: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<Approval> {
        check_namespace(ns)?;
        let state = self.store.read_namespace(ns).await?;
        let in_slot = Slot::BOTH
            .iter()
            .filter_map(|slot| state.slot(*slot).value.as_ref())
            .find(|s| s.version == version && s.state == SlotState::Sealed)
            .map(|s| (s.manifest.clone(), s.staged_by.clone()));
        let (manifest, staged_by) = match in_slot {
            Some(found) => found,
            None => {
                let entry = self.history_entry(ns, version).await?;
                (entry.manifest, entry.staged_by)
            }
        };
        if staged_by == actor.name {
            let message = format!(
                "{} staged version {version} of {ns} and may not approve it: another approver must",
                actor.name
            );
            // A self-approval is a denial like any other, and lands in the audit trail within
            // the user's allowance of audited denials.
            self.audit_denial(
                ns,
                &actor.name,
                "Approve",
                &message,
                json!({"rpc": "Approve", "code": "permission_denied", "version": version, "manifest": manifest}),
            )
            .await;
            return Err(CoordinatorError::PermissionDenied(message));
        }
        if let Some((_, existing)) = state
            .approvals
            .iter()
            .find(|(_, a)| a.manifest == manifest && a.approved_by == actor.name)
        {
            return Ok(existing.clone());
        }
        let approval = Approval {
            namespace: ns.to_string(),
            version: version.to_string(),
            manifest: manifest.clone(),
            approved_by: actor.name.clone(),
            staged_by,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        let key = self.store.keys().approval(ns, &manifest, &actor.name);
        self.change_record(ns, "approve", reason, actor, |_| {
            Ok((
                key.clone(),
                0,
                to_json(&approval),
                json!({"version": version, "manifest": manifest, "staged_by": approval.staged_by}),
                approval.clone(),
            ))
        })
        .await
    }

    /// Audits a known user's denial of `rpc` in `ns` (action `denied`), if the namespace
    /// exists and the user has not used up the allowance of
    /// [`AUDITED_DENIALS_PER_USER_PER_MINUTE`]; otherwise it is only counted in
    /// `switchboard_denials_unaudited_total`. The allowance is taken before etcd is read, so
    /// that a user's flood of denials costs etcd a few reads a minute, whatever it names.
    /// Never fails: the denial is answered whatever becomes of its record.
    pub async fn audit_denial(
        &self,
        ns: &str,
        actor: &str,
        rpc: &'static str,
        reason: &str,
        detail: serde_json::Value,
    ) -> DenialAudit {
        let outcome = if validate_namespace(ns).is_err() {
            DenialAudit::Unaudited("unknown_namespace")
        } else if self
            .denials
            .allowance
            .take(&actor.to_string(), Instant::now())
            .is_err()
        {
            DenialAudit::Unaudited("rate_limited")
        } else {
            let write = async {
                if !self.namespace_exists(ns).await? {
                    return Ok(None);
                }
                self.append_audit(ns, actor, "denied", reason, detail)
                    .await
                    .map(Some)
            };
            match tokio::time::timeout(DENIAL_AUDIT_TIMEOUT, write).await {
                Ok(Ok(Some(seq))) => DenialAudit::Audited(seq),
                Ok(Ok(None)) => DenialAudit::Unaudited("unknown_namespace"),
                Ok(Err(error)) => {
                    tracing::error!(ns, rpc, actor, %error, "request denied, but its audit record cannot be written");
                    DenialAudit::Unaudited("etcd_error")
                }
                Err(_) => {
                    tracing::error!(
                        ns,
                        rpc,
                        actor,
                        "request denied, but its audit record was not written within {DENIAL_AUDIT_TIMEOUT:?}"
                    );
                    DenialAudit::Unaudited("etcd_error")
                }
            }
        };
        match outcome {
            DenialAudit::Audited(seq) => {
                tracing::info!(ns, rpc, actor, seq, reason, "request denied and audited");
            }
            DenialAudit::Unaudited(why) => {
                metrics::counter!(telemetry::DENIALS_UNAUDITED, "rpc" => rpc, "reason" => why)
                    .increment(1);
                if let Some(suppressed) = self.denials.unaudited_log.allow(Instant::now()) {
                    tracing::info!(
                        rpc,
                        actor,
                        why,
                        reason,
                        suppressed,
                        "request denied, not audited (switchboard_denials_unaudited_total counts these; `suppressed` is how many such lines were left out since the last)"
                    );
                }
            }
        }
        outcome
    }

    /// Appends an audit record that describes no change (a denied request), through the same
    /// audit-head compare as every change. Returns its seq.
    pub async fn append_audit(
        &self,
        ns: &str,
        actor: &str,
        action: &str,
        reason: &str,
        detail: serde_json::Value,
    ) -> Result<u64> {
        check_namespace(ns)?;
        for _ in 0..MAX_ATTEMPTS {
            let state = self.store.read_namespace(ns).await?;
            let audited = AuditedChange {
                actor,
                action,
                reason,
                detail: detail.clone(),
            };
            if let Some(seq) = self
                .commit_audited(ns, &state, audited, Vec::new(), Vec::new())
                .await?
            {
                return Ok(seq);
            }
        }
        Err(busy(ns))
    }

    /// Commits `operations` under `compares` together with the audit record of `audited`,
    /// which follows the audit head of `state`: the transaction also compares that head and
    /// that the record's key is free, so two changes never fork the chain. `None` when a
    /// compare failed (the caller reads again and retries); the record's seq when committed.
    pub(crate) async fn commit_audited(
        &self,
        ns: &str,
        state: &NamespaceState,
        audited: AuditedChange<'_>,
        mut compares: Vec<etcd_client::Compare>,
        mut operations: Vec<TxnOp>,
    ) -> Result<Option<u64>> {
        let keys = self.store.keys();
        let head = self.audit_head(ns, state).await?;
        let record = audit::next_record(
            &head,
            ns,
            audited.actor,
            audited.action,
            audited.reason,
            audited.detail,
        )?;
        append_audit_record(keys, ns, &record, &mut compares, &mut operations);
        crash::pause_point(crash::AUDITED_PAUSE).await;
        let committed = self
            .store
            .txn(Txn::new().when(compares).and_then(operations))
            .await?
            .succeeded();
        Ok(committed.then_some(record.seq))
    }

    pub async fn audit_trail(&self, ns: &str, verify: bool) -> Result<AuditTrail> {
        check_namespace(ns)?;
        let keys = self.store.keys();
        let raw = self.store.get_prefix(&keys.audit_prefix(ns)).await?;
        let head: Option<AuditHead> = self.store.get_json(&keys.audit_head(ns)).await?;
        let (records, verification) = audit::verify_chain(&raw, head.as_ref());
        Ok(AuditTrail {
            namespace: ns.to_string(),
            records,
            verified: verify.then_some(verification),
        })
    }
}
