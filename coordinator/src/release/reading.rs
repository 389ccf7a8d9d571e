//! What the release operations read and report: status, manifests, the history of versions,
//! and the drift of a sidecar from routing.

use super::*;

/// Where a version of the history is now: "active", "canary", "previous" (kept for a
/// rollback), "staged" (sealed in the idle slot) or "".
pub(super) fn role_of(
    state: &NamespaceState,
    routing: Option<&Routing>,
    entry: &HistoryEntry,
) -> String {
    let role = match routing {
        Some(r) if r.active.manifest == entry.manifest => "active",
        Some(r)
            if r.live_canary()
                .is_some_and(|c| c.manifest == entry.manifest) =>
        {
            "canary"
        }
        Some(r)
            if r.previous
                .as_ref()
                .is_some_and(|p| p.manifest == entry.manifest) =>
        {
            "previous"
        }
        _ if Slot::BOTH.iter().any(|slot| {
            state
                .slot(*slot)
                .value
                .as_ref()
                .is_some_and(|s| s.manifest == entry.manifest && s.state == SlotState::Sealed)
        }) =>
        {
            "staged"
        }
        _ => "",
    };
    role.to_string()
}

/// What a sidecar on the current epoch serves that routing does not say it should, in words;
/// `None` when it matches, and for a sidecar on another epoch (still converging, which the
/// epoch column shows).
pub(crate) fn drift(
    state: &NamespaceState,
    routing: &Routing,
    epoch: u64,
    serving: &[switchboard_proto::ServedSet],
) -> Option<String> {
    if epoch != routing.epoch {
        return None;
    }
    let mut expected = routing.in_service();
    let required = expected.len();
    expected.extend(routing.baking().cloned());
    let checksum_of = |set: &SlotVersion| {
        state
            .slot(set.slot)
            .value
            .as_ref()
            .filter(|s| s.manifest == set.manifest)
            .map(|s| s.checksum.clone())
    };
    let mut problems = Vec::new();
    for served in serving {
        match expected
            .iter()
            .find(|e| e.slot == served.slot && e.version == served.version)
        {
            None => problems.push(format!(
                "serves version {} from slot {}, which routing does not put in service",
                served.version, served.slot
            )),
            Some(set) => {
                if let Some(checksum) = checksum_of(set)
                    && checksum != served.checksum
                {
                    problems.push(format!(
                        "serves version {} with checksum {}, but slot {} holds checksum {}",
                        served.version,
                        short(&served.checksum),
                        served.slot,
                        short(&checksum)
                    ));
                }
            }
        }
    }
    for set in &expected[..required] {
        if !serving
            .iter()
            .any(|s| s.slot == set.slot && s.version == set.version)
        {
            problems.push(format!(
                "does not serve version {} from slot {}",
                set.version, set.slot
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

pub(super) fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

impl Releases {
    pub async fn status(&self, ns: &str) -> Result<NamespaceStatus> {
        check_namespace(ns)?;
        let state = self.store.read_namespace(ns).await?;
        let health = self.store.health_records(ns).await?;
        let routing = state.routing.value.as_ref();
        // The leader holds the counts; a replica that does not lead has none.
        let mut reports = self.outcomes.reports_by_sidecar(ns);
        let mut sidecars: Vec<StatusSidecar> = health
            .into_iter()
            .map(|h| StatusSidecar {
                drift: routing.and_then(|r| drift(&state, r, h.epoch, &h.serving)),
                reports: reports.remove(&h.id).unwrap_or_default(),
                id: h.id,
                epoch: h.epoch,
                serving: h.serving,
                etcd_reachable: h.etcd_reachable,
                at_ms: h.at_ms,
                prepared: h.prepared,
                activated_epoch: h.activated_epoch,
                activated_at_us: h.activated_at_us,
            })
            .collect();
        let slot_manifests: Vec<&str> = Slot::BOTH
            .iter()
            .filter_map(|slot| state.slot(*slot).value.as_ref())
            .map(|s| s.manifest.as_str())
            .collect();
        let approvals: Vec<Approval> = state
            .approvals
            .iter()
            .filter(|(_, a)| slot_manifests.contains(&a.manifest.as_str()))
            .map(|(_, a)| a.clone())
            .collect();
        sidecars.sort_by(|a, b| a.id.cmp(&b.id));
        let slot_version = |sv: &SlotVersion| StatusSlotVersion {
            slot: sv.slot,
            version: sv.version.clone(),
        };
        Ok(NamespaceStatus {
            namespace: ns.to_string(),
            epoch: state.epoch(),
            active: routing.map(|r| slot_version(&r.active)),
            canary: routing
                .and_then(|r| r.canary.as_ref())
                .map(|c| StatusCanary {
                    slot: c.slot,
                    version: c.version.clone(),
                    percent: percent(c.weight_bp),
                    weight_bp: c.weight_bp,
                }),
            previous: routing.and_then(|r| r.previous.as_ref()).map(slot_version),
            slots: StatusSlots {
                blue: state.slot(Slot::Blue).value.clone(),
                green: state.slot(Slot::Green).value.clone(),
            },
            sidecars,
            last_change: routing.map(|r| StatusChange {
                action: r.action.clone(),
                by: r.by.clone(),
                reason: r.reason.clone(),
                at_ms: r.at_ms,
            }),
            bake_until_ms: routing.and_then(|r| r.bake_until_ms),
            policy: state.policy(),
            rollout: state.rollout.value.clone(),
            leader: self.store.leader_name().await,
            approvals,
        })
    }

    /// The manifest of the active set, of one slot, or of a retained version.
    pub async fn manifest(
        &self,
        ns: &str,
        slot: Option<Slot>,
        version: Option<&str>,
    ) -> Result<Manifest> {
        check_namespace(ns)?;
        let hash = match version {
            Some(version) => self.history_entry(ns, version).await?.manifest,
            None => {
                let state = self.store.read_namespace(ns).await?;
                let hash = match slot {
                    None => state.routing.value.map(|r| r.active.manifest),
                    Some(slot) => state.slot(slot).value.clone().map(|s| s.manifest),
                };
                hash.ok_or_else(|| match slot {
                    None => CoordinatorError::NotFound(format!("nothing is active in {ns} yet")),
                    Some(slot) => {
                        CoordinatorError::NotFound(format!("slot {slot} of {ns} is empty"))
                    }
                })?
            }
        };
        self.store
            .read_manifest(ns, &hash)
            .await?
            .ok_or_else(|| match version {
                Some(version) => CoordinatorError::Refused(format!(
                    "version {version} of {ns} is no longer retained: its manifest was collected"
                )),
                None => CoordinatorError::CorruptRecord {
                    key: self.store.keys().manifest(ns, &hash),
                    reason: "missing".into(),
                },
            })
    }

    /// The history record of `version`: NotFound when it was never sealed in `ns`.
    pub async fn history_entry(&self, ns: &str, version: &str) -> Result<HistoryEntry> {
        if version.is_empty()
            || version.len() > 128
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(CoordinatorError::InvalidInput(format!(
                "{version:?} is not a version id"
            )));
        }
        self.store
            .get_json(&self.store.keys().history(ns, version))
            .await?
            .ok_or_else(|| {
                CoordinatorError::Refused(format!(
                    "version {version} was never staged in {ns}; `sbctl history {ns}` lists the versions"
                ))
            })
    }

    /// Every version ever sealed in `ns`, newest first, with where it is now and whether it
    /// is retained.
    pub async fn history(&self, ns: &str) -> Result<History> {
        check_namespace(ns)?;
        let keys = self.store.keys();
        let state = self.store.read_namespace(ns).await?;
        let raw = self.store.get_prefix(&keys.history_prefix(ns)).await?;
        let manifests: HashSet<String> = self
            .store
            .keys_under(&keys.manifests_prefix(ns))
            .await?
            .into_iter()
            .filter_map(|key| key.rsplit('/').next().map(str::to_string))
            .collect();
        let routing = state.routing.value.as_ref();
        let mut versions = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let entry: HistoryEntry = crate::store::parse_record(&key, &value)?;
            let role = role_of(&state, routing, &entry);
            let approved_by = state
                .approvals
                .iter()
                .filter(|(_, a)| a.manifest == entry.manifest)
                .map(|(_, a)| a.approved_by.clone())
                .collect();
            versions.push(HistoryVersion {
                retained: manifests.contains(&entry.manifest),
                entry,
                role,
                approved_by,
            });
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.entry.at_ms));
        Ok(History {
            namespace: ns.to_string(),
            versions,
        })
    }

    /// Whether `ns` exists: something was staged into it (its marker), or something was
    /// recorded in it (its audit head, such as a policy set before the first stage). Two reads
    /// of one key each at most; nothing is written.
    pub async fn namespace_exists(&self, ns: &str) -> Result<bool> {
        check_namespace(ns)?;
        let keys = self.store.keys();
        if self
            .store
            .get_raw(&keys.namespace_marker(ns))
            .await?
            .is_some()
        {
            return Ok(true);
        }
        Ok(self.store.get_raw(&keys.audit_head(ns)).await?.is_some())
    }
}
