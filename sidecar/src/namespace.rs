//! The per-namespace handle shared by the sync loop (its only writer), the servers and the
//! health publisher.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use switchboard_proto::{Routing, Slot, VersionReports};
use tokio::sync::watch;

use crate::changes::{SetDiff, diff_sets};
use crate::reports::{Refused, Reports};
use crate::snapshot::{LoadedSet, Snapshot};
use crate::telemetry;

/// How long a set that stops being served stays held by default, for reads pinned to its
/// version and for the keys a change feed reports.
pub const KEEP_REPLACED: Duration = Duration::from_secs(60);
/// The routings applied that the change log keeps, for feeds that resume or fall behind.
const CHANGE_LOG_LEN: usize = 256;
/// The diffs between two sets kept, newest first out.
const DIFFS_KEPT: usize = 64;

/// A routing this sidecar applied: the change log's entry, from which each consumer's change
/// feed works out what it was served.
#[derive(Debug)]
pub struct Applied {
    /// Counts the routings applied, from 0.
    pub seq: u64,
    pub routing: Routing,
    /// When it was applied, Unix microseconds.
    pub applied_at_us: u64,
}

/// The last [`CHANGE_LOG_LEN`] routings applied.
#[derive(Default)]
struct ChangeLog {
    entries: VecDeque<Arc<Applied>>,
    next_seq: u64,
}

/// A set that is no longer served, held until `until`.
struct Replaced {
    slot: Slot,
    set: Arc<LoadedSet>,
    until: Instant,
}

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
    /// The routings applied lately, and the count of all applied so far (sent on every new
    /// one).
    changes: Mutex<ChangeLog>,
    changes_applied: watch::Sender<u64>,
    /// Sets served until lately, held for pinned reads and change feeds.
    replaced: Mutex<Vec<Replaced>>,
    keep_replaced: Duration,
    /// The diffs between sets worked out lately.
    diffs: Mutex<VecDeque<Arc<SetDiff>>>,
    /// Preview reads of the staged set.
    pub preview: crate::preview::PreviewSource,
}

impl Namespace {
    pub fn new(name: &str) -> Arc<Self> {
        Self::keeping_replaced_sets(name, KEEP_REPLACED)
    }

    /// A namespace that holds a set it stops serving for `keep_replaced` more.
    pub fn keeping_replaced_sets(name: &str, keep_replaced: Duration) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            snapshot: watch::Sender::new(None),
            sync: Mutex::new(SyncState::default()),
            reports: Mutex::new(Reports::default()),
            generation: Mutex::new(0),
            changes: Mutex::new(ChangeLog::default()),
            changes_applied: watch::Sender::new(0),
            replaced: Mutex::new(Vec::new()),
            keep_replaced,
            diffs: Mutex::new(VecDeque::new()),
            preview: crate::preview::PreviewSource::default(),
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
    /// accepted from now until 10 minutes after they stop being served. Once reads see it, the
    /// sets it no longer holds are kept for a while, the keys that changed for its consumers
    /// are worked out, and the change feeds are told.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        let versions: Vec<&str> = snapshot
            .served_sets()
            .into_iter()
            .map(|(_, set)| set.version.as_str())
            .collect();
        self.lock_reports().note_served(&versions, Instant::now());
        // The sets this snapshot lets go are kept before reads can see it, so that no read
        // pinned to one of them finds it neither in the snapshot nor among the replaced sets.
        if let Some(before) = self.current() {
            self.keep_replaced_sets(&before, &snapshot);
        }
        let before = self.snapshot.send_replace(Some(snapshot.clone()));
        metrics::counter!(telemetry::SNAPSHOT_SWAPS, "namespace" => self.name.clone()).increment(1);
        self.after_publish(before.as_deref(), &snapshot);
    }

    /// Keeps the sets `before` holds and `after` does not, for a while.
    fn keep_replaced_sets(&self, before: &Snapshot, after: &Snapshot) {
        let until = Instant::now() + self.keep_replaced;
        let mut replaced = lock(&self.replaced);
        for (slot, set) in before.held_sets() {
            let kept = replaced.iter().any(|r| r.set.version == set.version);
            if after.held(&set.version).is_none() && !kept {
                replaced.push(Replaced {
                    slot,
                    set: set.clone(),
                    until,
                });
            }
        }
    }

    fn after_publish(&self, before: Option<&Snapshot>, after: &Snapshot) {
        let now = Instant::now();
        // Sets served again, and those whose time is up, leave the replaced ones (now that
        // reads see the snapshot that holds them).
        lock(&self.replaced).retain(|r| r.until > now && after.held(&r.set.version).is_none());
        if let Some(before) = before {
            // The keys that changed for the consumers who moved, while both sets are at hand:
            // a feed then finds them ready.
            for (_, from) in before.served_sets() {
                for (_, to) in after.served_sets() {
                    if from.version != to.version {
                        self.remember_diff(from, to);
                    }
                }
            }
        }
        let mut log = lock(&self.changes);
        let unchanged = log
            .entries
            .back()
            .is_some_and(|last| last.routing == after.routing);
        if !unchanged {
            let seq = log.next_seq;
            log.entries.push_back(Arc::new(Applied {
                seq,
                routing: after.routing.clone(),
                applied_at_us: switchboard_proto::time::now_us(),
            }));
            if log.entries.len() > CHANGE_LOG_LEN {
                log.entries.pop_front();
            }
            log.next_seq = seq + 1;
            drop(log);
            self.changes_applied.send_replace(seq + 1);
        }
    }

    /// Lets go of the replaced sets whose time is up.
    pub fn release_replaced_sets(&self) {
        let now = Instant::now();
        lock(&self.replaced).retain(|r| r.until > now);
    }

    /// The set of `version` if this sidecar holds it: served now, held for the bake time, or
    /// replaced lately. With its slot.
    ///
    /// The snapshot is read under the lock of the replaced sets, and both looks are made before
    /// it is let go. [`Self::publish`] keeps the outgoing sets (under that lock) before the swap
    /// and lets go of the incoming ones (under it again) after, so a look made under the lock
    /// finds a set on its way out in the snapshot or among the replaced, and a set on its way
    /// back in (a rollback to it) likewise. Two looks each on its own, with swaps between them,
    /// could miss it in both: a pinned read answered 409 during a rollback.
    pub fn held_set(&self, version: &str) -> Option<(Slot, Arc<LoadedSet>)> {
        let replaced = lock(&self.replaced);
        let snapshot = self.current();
        if let Some((slot, set)) = snapshot.as_deref().and_then(|s| s.held(version)) {
            return Some((slot, set.clone()));
        }
        let now = Instant::now();
        replaced
            .iter()
            .find(|r| r.set.version == version && r.until > now)
            .map(|r| (r.slot, r.set.clone()))
    }

    /// The keys that differ from version `from` to version `to`, if both sets are held now or
    /// their diff was worked out while they were.
    pub fn diff(&self, from: &str, to: &str) -> Option<Arc<SetDiff>> {
        if let Some(diff) = lock(&self.diffs)
            .iter()
            .find(|d| d.from == from && d.to == to)
        {
            return Some(diff.clone());
        }
        let (_, from) = self.held_set(from)?;
        let (_, to) = self.held_set(to)?;
        Some(self.remember_diff(&from, &to))
    }

    fn remember_diff(&self, from: &LoadedSet, to: &LoadedSet) -> Arc<SetDiff> {
        if let Some(diff) = lock(&self.diffs)
            .iter()
            .find(|d| d.from == from.version && d.to == to.version)
        {
            return diff.clone();
        }
        let diff = Arc::new(diff_sets(from, to));
        let mut diffs = lock(&self.diffs);
        diffs.push_back(diff.clone());
        if diffs.len() > DIFFS_KEPT {
            diffs.pop_front();
        }
        diff
    }

    /// Told the count of routings applied, each time one is.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes_applied.subscribe()
    }

    /// The routings applied from `seq` on, oldest first; `lagged` when some of them are no
    /// longer in the log.
    pub fn changes_since(&self, seq: u64) -> (Vec<Arc<Applied>>, bool) {
        let log = lock(&self.changes);
        let first = log.entries.front().map_or(log.next_seq, |e| e.seq);
        // The log's sequence numbers are consecutive, so the entries from `seq` on start
        // `seq - first` into it: every feed asks on every flip, and the log holds 256.
        let skip = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
        let entries = log.entries.iter().skip(skip).cloned().collect();
        (entries, seq < first)
    }

    /// The last routing applied, if any.
    pub fn last_applied(&self) -> Option<Arc<Applied>> {
        lock(&self.changes).entries.back().cloned()
    }

    /// Where a feed that last saw epoch `epoch` resumes: the sequence number of the first
    /// routing applied after it, when the log still reaches back to it.
    pub fn resume_after_epoch(&self, epoch: u64) -> Option<u64> {
        let log = lock(&self.changes);
        let first = log.entries.front()?;
        if first.routing.epoch > epoch {
            return None;
        }
        Some(
            log.entries
                .iter()
                .find(|e| e.routing.epoch > epoch)
                .map_or(log.next_seq, |e| e.seq),
        )
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

    /// Whether any feed is waiting for changes (for the metrics).
    pub fn feeds(&self) -> usize {
        self.changes_applied.receiver_count()
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

/// A lock whose data stays consistent even if a holder panicked: each update is whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
