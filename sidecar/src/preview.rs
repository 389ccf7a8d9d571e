//! Preview reads: test traffic reads the sealed staged set, before any canary, with the header
//! `X-Switchboard-Preview: staged` (as Argo Rollouts' header routes send test traffic to a
//! candidate). Only when the namespace's policy allows them (`preview_reads`, off by default;
//! turning it on is a policy change, audited as every one is).
//!
//! Routing does not name the staged set, so the sidecar asks etcd: the policy and the idle
//! slot, at most once a second per namespace, and loads and verifies the staged set as it does
//! every set it serves. Preview reads are test traffic: a sidecar that answers none never asks
//! etcd anything for them.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::Client;
use switchboard_proto::{Keys, Policy, Slot, SlotRef, SlotState};

use crate::loader::{load_set, with_timeout};
use crate::serve::ReadError;
use crate::snapshot::LoadedSet;

/// The header of a preview read, and its only value.
pub const PREVIEW_HEADER: &str = "x-switchboard-preview";
pub const PREVIEW_STAGED: &str = "staged";
/// How long an answer from etcd (the policy, the staged set, or why there is none) is used.
const RECHECK: Duration = Duration::from_secs(1);

/// The staged set of a namespace, as preview reads are served it.
#[derive(Clone)]
pub struct Staged {
    pub slot: Slot,
    pub set: Arc<LoadedSet>,
}

/// What etcd said last, and when.
struct Checked {
    at: Instant,
    /// The active slot it was asked for: the staged set is in the other one.
    active: Slot,
    outcome: Result<Staged, ReadError>,
}

/// One namespace's preview reads: the etcd connection once there is one, and the last answer.
#[derive(Default)]
pub struct PreviewSource {
    etcd: OnceLock<(Client, Keys)>,
    last: tokio::sync::Mutex<Option<Checked>>,
}

impl PreviewSource {
    /// The connection preview reads ask etcd through (the sync loop's).
    pub fn attach(&self, client: Client, keys: Keys) {
        let _ = self.etcd.set((client, keys));
    }

    /// The sealed staged set of `ns`, whose active slot is `active`, if the policy allows
    /// preview reads.
    pub async fn staged(&self, ns: &str, active: Slot) -> Result<Staged, ReadError> {
        // One question to etcd at a time; the others wait for its answer.
        let mut last = self.last.lock().await;
        if let Some(checked) = last.as_ref()
            && checked.active == active
            && checked.at.elapsed() < RECHECK
        {
            return checked.outcome.clone();
        }
        let held = last
            .as_ref()
            .and_then(|checked| checked.outcome.as_ref().ok())
            .map(|staged| staged.set.clone());
        let outcome = self.ask(ns, active, held).await;
        *last = Some(Checked {
            at: Instant::now(),
            active,
            outcome: outcome.clone(),
        });
        outcome
    }

    async fn ask(
        &self,
        ns: &str,
        active: Slot,
        held: Option<Arc<LoadedSet>>,
    ) -> Result<Staged, ReadError> {
        let unavailable = |what: String| ReadError::PreviewUnavailable {
            namespace: ns.to_string(),
            why: what,
        };
        let (client, keys) = self
            .etcd
            .get()
            .ok_or_else(|| unavailable("this sidecar is not connected to etcd yet".into()))?;
        let mut kv = client.kv_client();
        let policy_key = keys.policy(ns);
        let response = with_timeout(kv.get(policy_key.as_str(), None))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let policy: Policy = match response.kvs().first() {
            None => Policy::default(),
            Some(kv) => serde_json::from_slice(kv.value())
                .map_err(|e| unavailable(format!("{policy_key} does not parse: {e}")))?,
        };
        if !policy.preview_reads {
            return Err(ReadError::PreviewOff(ns.to_string()));
        }
        let slot = active.other();
        let slot_key = keys.slot(ns, slot);
        let response = with_timeout(kv.get(slot_key.as_str(), None))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let staged: Option<SlotRef> = match response.kvs().first() {
            None => None,
            Some(kv) => Some(
                serde_json::from_slice(kv.value())
                    .map_err(|e| unavailable(format!("{slot_key} does not parse: {e}")))?,
            ),
        };
        let Some(staged) = staged.filter(|s| s.state == SlotState::Sealed) else {
            return Err(ReadError::NothingStaged(ns.to_string()));
        };
        let set = match held.filter(|set| set.manifest_hash == staged.manifest) {
            Some(set) => set,
            None => Arc::new(
                load_set(client, keys, ns, &staged.manifest)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
        };
        Ok(Staged { slot, set })
    }
}
