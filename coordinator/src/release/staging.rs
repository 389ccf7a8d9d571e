//! Staging into the idle slot and sealing it: the manifest checked against etcd's quota, the
//! chunks written (by `upload.rs`), every chunk verified from etcd itself, the contract judged,
//! the slot sealed.

use super::*;

impl Releases {
    /// Announces a set by the head of its paged manifest: picks the idle slot, marks it staging
    /// with this manifest, writes the pages the request brings, and returns the chunks that
    /// etcd does not hold yet. When etcd lacks pages that the request does not bring, nothing
    /// is written and the reply names them.
    ///
    /// The pages are written after the slot names the manifest, never before: an unreferenced
    /// page could be collected by the janitor between its write and the slot's. A page read
    /// here and collected before the slot's write (a page of a version that was just dropped)
    /// makes the seal fail, naming it, and the next stage sends it.
    pub async fn begin_stage(
        &self,
        ns: &str,
        head_json: &[u8],
        pages: Vec<Vec<u8>>,
        message: &str,
        actor: &Actor,
    ) -> Result<BeginStage> {
        check_namespace(ns)?;
        let head = ManifestHead::from_json(head_json)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let manifest_hash = head.hash();
        let listed: HashSet<&str> = head.pages.iter().map(|p| p.hash.as_str()).collect();
        let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
        for data in pages {
            let hash = sha256_hex(&data);
            if !listed.contains(hash.as_str()) {
                return Err(CoordinatorError::InvalidInput(format!(
                    "page {hash} is not one of the pages the manifest lists"
                )));
            }
            sent.insert(hash, data);
        }
        let unsent: Vec<PageRef> = head
            .pages
            .iter()
            .filter(|p| !sent.contains_key(&p.hash))
            .cloned()
            .collect();
        let fetched = self.store.read_pages(ns, &unsent).await?;
        let mut stored: HashMap<&str, Vec<u8>> = HashMap::new();
        let mut missing_pages = Vec::new();
        for (page_ref, data) in unsent.iter().zip(fetched) {
            match data {
                Some(data) => {
                    stored.insert(page_ref.hash.as_str(), data);
                }
                None if !missing_pages.contains(&page_ref.hash) => {
                    missing_pages.push(page_ref.hash.clone());
                }
                None => {}
            }
        }
        if !missing_pages.is_empty() {
            return Ok(BeginStage::PagesNeeded {
                version: head.version,
                missing_pages,
            });
        }
        let page_data = head.pages.iter().map(|p| {
            sent.get(&p.hash)
                .or_else(|| stored.get(p.hash.as_str()))
                .map_or(&[][..], Vec::as_slice)
        });
        let manifest = head
            .assemble(page_data)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let sent: Vec<(String, Vec<u8>)> = sent.into_iter().collect();
        let record_bytes =
            head_json.len() as u64 + sent.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        let keys = self.store.keys().clone();
        for _ in 0..MAX_ATTEMPTS {
            let state = self.store.read_namespace(ns).await?;
            let slot = match &state.routing.value {
                Some(routing) => {
                    if routing.active.manifest == manifest_hash {
                        return Ok(BeginStage::AlreadyActive {
                            slot: routing.active.slot,
                            version: manifest.version,
                        });
                    }
                    let idle = routing.active.slot.other();
                    if let Some(canary) = routing.live_canary() {
                        if canary.manifest == manifest_hash {
                            return Ok(BeginStage::AlreadyStaged {
                                slot: idle,
                                version: manifest.version,
                            });
                        }
                        return Err(CoordinatorError::Refused(format!(
                            "slot {idle} of {ns} serves a {}% canary of version {}; set the canary to 0 or flip before staging",
                            percent(canary.weight_bp),
                            canary.version
                        )));
                    }
                    if let (Some(previous), Some(until)) = (routing.baking(), routing.bake_until_ms)
                        && previous.slot == idle
                    {
                        return Err(CoordinatorError::Refused(format!(
                            "slot {idle} of {ns} holds version {}, kept hot for an automatic flip-back until the bake time ends at {}; stage after that, or end it now with `sbctl rollback {ns}` or a shorter `sbctl policy set {ns} --bake`",
                            previous.version,
                            rfc3339_ms(until)
                        )));
                    }
                    idle
                }
                // Nothing serves yet: blue is the first slot.
                None => Slot::Blue,
            };
            let current = state.slot(slot);
            if let Some(slot_ref) = &current.value
                && slot_ref.manifest == manifest_hash
                && slot_ref.state == SlotState::Sealed
            {
                return Ok(BeginStage::AlreadyStaged {
                    slot,
                    version: manifest.version,
                });
            }
            let slot_ref = SlotRef {
                version: manifest.version.clone(),
                manifest: manifest_hash.clone(),
                state: SlotState::Staging,
                item_count: manifest.item_count,
                bytes: manifest.bytes,
                checksum: manifest.checksum.clone(),
                seed: switchboard_proto::bucket::seed_for_checksum(&manifest.checksum),
                staged_by: actor.name.clone(),
                message: message.to_string(),
                at_ms: now_ms(),
                contract: None,
                approval_reasons: Vec::new(),
            };
            // Refuse before anything is written when etcd would not hold the new chunks.
            self.check_capacity(ns, &manifest, record_bytes).await?;
            // The slot must still be idle (routing unchanged) and nobody else may have begun
            // staging into it since we read it.
            let txn = Txn::new()
                .when(vec![
                    unchanged(keys.routing(ns), state.routing.mod_revision),
                    unchanged(keys.slot(ns, slot), current.mod_revision),
                ])
                .and_then(vec![
                    TxnOp::put(keys.manifest(ns, &manifest_hash), head_json.to_vec(), None),
                    TxnOp::put(keys.slot(ns, slot), to_json(&slot_ref), None),
                    // Registers the namespace for the leader's loops.
                    TxnOp::put(keys.namespace_marker(ns), Vec::new(), None),
                ]);
            crash::pause_point(crash::STAGE_PAUSE).await;
            let response = self.store.txn(txn).await?;
            if !response.succeeded() {
                continue;
            }
            let slot_revision = response.header().map_or(0, |h| h.revision());
            self.store.put_pages(ns, &sent).await?;
            let hashes: Vec<String> = unique(manifest.chunks.iter().map(|c| c.hash.clone()));
            let missing_chunks = self.store.missing_chunks(ns, &hashes).await?;
            tracing::info!(ns, %slot, version = %manifest.version, missing = missing_chunks.len(), total = hashes.len(), "staging begun");
            let replaced_version = current
                .value
                .as_ref()
                .filter(|s| s.state == SlotState::Sealed)
                .map(|s| s.version.clone());
            return Ok(BeginStage::Staging {
                slot,
                version: manifest.version,
                missing_chunks,
                slot_revision,
                replaced_version,
            });
        }
        Err(busy(ns))
    }

    /// Refuses a stage whose chunks that etcd lacks would not fit in etcd's quota.
    pub(super) async fn check_capacity(
        &self,
        ns: &str,
        manifest: &Manifest,
        record_bytes: u64,
    ) -> Result<()> {
        let hashes: Vec<String> = unique(manifest.chunks.iter().map(|c| c.hash.clone()));
        let missing: HashSet<String> = self
            .store
            .missing_chunks(ns, &hashes)
            .await?
            .into_iter()
            .collect();
        let mut counted = HashSet::new();
        let chunk_bytes: u64 = manifest
            .chunks
            .iter()
            .filter(|c| missing.contains(&c.hash) && counted.insert(c.hash.as_str()))
            .map(|c| c.stored_len())
            .sum();
        if chunk_bytes == 0 {
            return Ok(());
        }
        self.capacity
            .check_stage(
                &self.store,
                ns,
                &manifest.version,
                chunk_bytes + record_bytes,
            )
            .await
    }

    /// Verifies and writes uploaded chunks. Each must hash to its name and decode cleanly.
    pub async fn put_chunks(&self, ns: &str, chunks: Vec<(String, Vec<u8>)>) -> Result<u64> {
        check_namespace(ns)?;
        let mut bytes = 0;
        for (hash, data) in &chunks {
            if data.len() > MAX_CHUNK_BYTES {
                return Err(CoordinatorError::InvalidInput(format!(
                    "chunk {hash} is {} bytes, over the limit of {MAX_CHUNK_BYTES}",
                    data.len()
                )));
            }
            decode_chunk(hash, data).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
            bytes += data.len() as u64;
        }
        self.store.put_chunks(ns, &chunks).await?;
        metrics::counter!("switchboard_chunks_uploaded_total").increment(chunks.len() as u64);
        metrics::counter!("switchboard_chunk_bytes_uploaded_total").increment(bytes);
        Ok(bytes)
    }

    /// Reads the whole set back from etcd, verifies it against its manifest, and seals the
    /// slot together with its audit record.
    pub async fn seal(
        &self,
        ns: &str,
        slot: Slot,
        manifest_hash: &str,
        slot_revision: i64,
        allow_destructive: bool,
        actor: &Actor,
    ) -> Result<SealOutcome> {
        check_namespace(ns)?;
        let keys = self.store.keys().clone();
        let manifest = self
            .store
            .read_manifest(ns, manifest_hash)
            .await?
            .ok_or_else(|| {
                CoordinatorError::Refused(format!("manifest {manifest_hash} is not staged in {ns}"))
            })?;
        // The set is verified against its manifest and judged against the namespace's
        // contract before anything is written: a refusal leaves the slot staging, which no
        // sidecar ever reads.
        let judgement = self
            .judge_set(ns, &manifest, actor, allow_destructive)
            .await?;
        tracing::info!(
            ns,
            %slot,
            version = %manifest.version,
            contract = judgement.contract.as_deref().unwrap_or("none"),
            destructive = judgement.destructive.len(),
            warnings = judgement.warnings.len(),
            judge_ms = judgement.timings.judge_ms as u64,
            check_ms = judgement.timings.check_ms as u64,
            rules_ms = judgement.timings.rules_ms as u64,
            "staged set checked against the contract"
        );
        crash::delay_point(crash::SEAL_AFTER_CHECK).await;

        for _ in 0..MAX_ATTEMPTS {
            let state = self.store.read_namespace(ns).await?;
            let current = state.slot(slot);
            let Some(slot_ref) = current.value.clone() else {
                return Err(CoordinatorError::Conflict(format!(
                    "slot {slot} of {ns} holds nothing to seal; run sbctl stage again"
                )));
            };
            if current.mod_revision != slot_revision {
                return Err(CoordinatorError::Conflict(format!(
                    "slot {slot} of {ns} changed while staging: it now holds version {} ({:?}, staged by {} at {}); run sbctl stage again",
                    slot_ref.version,
                    slot_ref.state,
                    slot_ref.staged_by,
                    rfc3339_ms(slot_ref.at_ms)
                )));
            }
            if slot_ref.manifest != manifest_hash {
                return Err(CoordinatorError::Conflict(format!(
                    "slot {slot} of {ns} is staging another manifest; run sbctl stage again"
                )));
            }
            if let Some(routing) = &state.routing.value
                && serves(routing, slot)
            {
                return Err(CoordinatorError::Refused(format!(
                    "slot {slot} of {ns} serves traffic and cannot be sealed"
                )));
            }
            let sealed = SlotRef {
                state: SlotState::Sealed,
                at_ms: now_ms(),
                contract: judgement.contract.clone(),
                approval_reasons: judgement.approval_reasons.clone(),
                ..slot_ref
            };
            let head = self.audit_head(ns, &state).await?;
            let record = audit::next_record(
                &head,
                ns,
                &actor.name,
                "stage",
                &sealed.message,
                json!({
                    "slot": slot,
                    "version": sealed.version,
                    "manifest": manifest_hash,
                    "checksum": sealed.checksum,
                    "items": sealed.item_count,
                    "bytes": sealed.bytes,
                    "allow_destructive": allow_destructive,
                    "judgement": judgement.audit_detail(),
                }),
            )?;
            let history = HistoryEntry::of_sealed(&sealed);
            let mut compares = vec![
                unchanged(keys.routing(ns), state.routing.mod_revision),
                unchanged(keys.slot(ns, slot), current.mod_revision),
                // The contract that judged the set is still the one in force.
                unchanged(keys.contract(ns), judgement.contract_revision),
            ];
            let mut operations = vec![
                TxnOp::put(keys.slot(ns, slot), to_json(&sealed), None),
                TxnOp::put(keys.history(ns, &sealed.version), to_json(&history), None),
            ];
            append_audit_record(&keys, ns, &record, &mut compares, &mut operations);
            let txn = Txn::new().when(compares).and_then(operations);
            crash::pause_point(crash::SEAL_PAUSE).await;
            crash::point(crash::SEAL_BEFORE_TXN, "stage");
            let committed = self.store.txn(txn).await?.succeeded();
            crash::point(crash::SEAL_AFTER_TXN, "stage");
            if committed {
                tracing::info!(ns, %slot, version = %sealed.version, actor = %actor.name, "slot sealed");
                metrics::counter!("switchboard_stages_sealed_total").increment(1);
                return Ok(SealOutcome {
                    namespace: ns.to_string(),
                    slot,
                    version: sealed.version,
                    item_count: sealed.item_count,
                    bytes: sealed.bytes,
                    contract: judgement.contract,
                    destructive: judgement.destructive,
                    warnings: judgement.warnings,
                    approval_reasons: judgement.approval_reasons,
                    timings: Some(judgement.timings),
                });
            }
            // A contract changed since the check will not be the one that judged this set
            // however often the seal is retried.
            let contract_now = self
                .store
                .get_versioned::<serde_json::Value>(&keys.contract(ns))
                .await?;
            if contract_now.mod_revision != judgement.contract_revision {
                return Err(CoordinatorError::Conflict(format!(
                    "the contract of {ns} changed while the staged set was being checked; run sbctl stage again"
                )));
            }
        }
        Err(busy(ns))
    }
}
