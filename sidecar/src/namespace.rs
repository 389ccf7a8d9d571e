//! The per-namespace handle shared by the sync loop (its only writer), the servers and the
//! health publisher.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;
use switchboard_proto::VersionReports;
use tokio::sync::watch;

use crate::reports::{Refused, Reports};
use crate::snapshot::Snapshot;
use crate::telemetry;

/// Where the snapshot being served came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nothing is served yet.
    #[default]
    None,
    /// The last-known-good copy on disk, until etcd answers.
    Disk,
    /// etcd.
    Etcd,
}

/// How the namespace's sync with etcd is going, for `/v1/status` and the health record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncState {
    pub source: Source,
    /// The epoch of the last-known-good copy on disk, once one is written or read.
    pub disk_copy_epoch: Option<u64>,
    /// Why the last-known-good copy found at start was refused.
    pub disk_copy_error: Option<String>,
    pub etcd_reachable: bool,
    /// When the sidecar last had a confirmed view of routing, Unix ms; 0: never.
    pub last_sync_ms: u64,
    pub last_error: Option<String>,
    /// The manifest hash of the set routing asks to prepare, once it is loaded, verified and
    /// held: the acknowledgement of a synchronized flip.
    pub prepared: Option<String>,
    /// A routing loaded and waiting for its activation point: its epoch and the point (Unix ms).
    pub pending_epoch: Option<u64>,
    pub pending_activate_at_ms: Option<u64>,
    /// The epoch of the last routing switched to from etcd, and when (Unix microseconds).
    pub activated_epoch: Option<u64>,
    pub activated_at_us: Option<u64>,
}

pub struct Namespace {
    pub name: String,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    sync: Mutex<SyncState>,
    /// The versions served recently and the outcomes reported for them.
    reports: Mutex<Reports>,
    /// Counts the routings the sync loop applied. A snapshot that waits for its activation
    /// point is published only if no newer routing came meanwhile, checked and published under
    /// this lock so that the newer one's snapshot can never be overtaken by the older one.
    generation: Mutex<u64>,
}

impl Namespace {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            snapshot: watch::Sender::new(None),
            sync: Mutex::new(SyncState::default()),
            reports: Mutex::new(Reports::default()),
            generation: Mutex::new(0),
        })
    }

    /// A newer routing is being applied: a snapshot waiting for its activation point under an
    /// older generation will not be published. Returns the new generation.
    pub fn next_generation(&self) -> u64 {
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *generation = generation.wrapping_add(1);
        *generation
    }

    /// Runs `publish` if no routing was applied since `generation`, holding the generation
    /// lock throughout. Returns whether it ran.
    pub fn publish_if_current(&self, generation: u64, publish: impl FnOnce()) -> bool {
        let current = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current != generation {
            return false;
        }
        publish();
        true
    }

    /// The snapshot served now; `None` before the first load.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshot.subscribe()
    }

    /// Serves `snapshot` from now on, and notes the versions it serves: reports for them are
    /// accepted from now until 10 minutes after they stop being served.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        let versions: Vec<&str> = snapshot
            .served_sets()
            .into_iter()
            .map(|(_, set)| set.version.as_str())
            .collect();
        self.lock_reports().note_served(&versions, Instant::now());
        self.snapshot.send_replace(Some(snapshot));
        metrics::counter!(telemetry::SNAPSHOT_SWAPS, "namespace" => self.name.clone()).increment(1);
    }

    /// Counts outcomes reported for `version`, if reports for it are accepted now. Returns
    /// whether a count changed.
    pub fn report(&self, version: &str, ok: u64, errors: u64) -> Result<bool, Refused> {
        self.lock_reports().add(version, ok, errors, Instant::now())
    }

    /// Cumulative outcomes per version, for the health record.
    pub fn reports(&self) -> Vec<VersionReports> {
        self.lock_reports().published()
    }

    /// Changes whenever `reports()` does.
    pub fn reports_generation(&self) -> u64 {
        self.lock_reports().generation()
    }

    /// The counts stay consistent even if a holder of the lock panicked: every update is a
    /// single saturating addition.
    fn lock_reports(&self) -> MutexGuard<'_, Reports> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn sync_state(&self) -> SyncState {
        self.sync.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn update_sync(&self, update: impl FnOnce(&mut SyncState)) {
        if let Ok(mut state) = self.sync.lock() {
            update(&mut state);
        }
    }
}
