//! The per-namespace handle shared by the sync loop (its only writer) and the servers.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use crate::snapshot::Snapshot;

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
}

pub struct Namespace {
    pub name: String,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    sync: Mutex<SyncState>,
}

impl Namespace {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            snapshot: watch::Sender::new(None),
            sync: Mutex::new(SyncState::default()),
        })
    }

    /// The snapshot served now; `None` before the first load.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshot.subscribe()
    }

    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.send_replace(Some(snapshot));
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
