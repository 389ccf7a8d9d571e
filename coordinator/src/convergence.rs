//! The live sidecars of a namespace as their health records say, kept current by one etcd
//! watch: for waits on the fleet (`flip --wait`, a synchronized flip's acknowledgements) that
//! would otherwise read and parse every record again on each change, megabytes at 10,000
//! sidecars.
//!
//! Which sidecars live is etcd's to say (a record lives with its sidecar's lease). Whether one
//! serves an epoch, its record says, and on the leader so does its outcome stream, which a
//! sidecar writes to as soon as it applies a routing: ten thousand records take seconds to
//! reach etcd on a small cluster, the stream's word a fraction of one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use switchboard_proto::HealthRecord;
use switchboard_proto::pb::{EpochWaitProgress, SidecarEpoch};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{CoordinatorError, Result};
use crate::outcomes::Outcomes;
use crate::store::{Store, WatchedRecords, parse_health_record};

/// The longest `WaitForEpoch` a caller may ask for.
pub const MAX_EPOCH_WAIT: Duration = Duration::from_secs(3600);
/// The least time between two progress messages of one wait: a bar on a terminal needs no
/// more, and 10,000 acknowledgements arriving in a burst must not become 10,000 messages.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The least time between two looks at what the streams say of the sidecars still behind: a
/// fleet's flip brings thousands of streamed epochs within a second, and a look for each would
/// go over the whole set behind, under the lock that every stream's messages take, thousands of
/// times (which held a fleet of 5,000 back by seconds).
const STREAMED_EVERY: Duration = Duration::from_millis(50);

/// The health records of one namespace, parsed once each as etcd delivers them.
pub struct HealthView {
    watched: WatchedRecords,
    /// The record under each key; a malformed one is left out (and logged when it arrives).
    records: BTreeMap<String, HealthRecord>,
}

impl HealthView {
    /// Reads the namespace's health records and watches them from the revision read.
    pub async fn open(store: &Store, ns: &str) -> Result<Self> {
        let watched = store
            .watch_records(&store.keys().health_prefix(ns), true)
            .await?;
        let records = watched
            .values()
            .filter_map(|(key, value)| Some((key.to_string(), parse_health_record(key, value)?)))
            .collect();
        Ok(Self { watched, records })
    }

    pub fn records(&self) -> impl Iterator<Item = &HealthRecord> {
        self.records.values()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Waits for the next changes and applies them; returns the keys they touched.
    pub async fn changed(&mut self) -> Result<Vec<String>> {
        let keys = self.watched.changed().await?;
        for key in &keys {
            match self
                .watched
                .get(key)
                .and_then(|value| parse_health_record(key, value))
            {
                Some(record) => {
                    self.records.insert(key.clone(), record);
                }
                None => {
                    self.records.remove(key);
                }
            }
        }
        Ok(keys)
    }
}

/// The live sidecars behind an epoch, counted as changes arrive rather than over the whole
/// fleet on each one.
struct EpochTally {
    epoch: u64,
    /// The keys of the records on an earlier epoch.
    behind: BTreeSet<String>,
}

impl EpochTally {
    fn new(view: &HealthView, epoch: u64, streamed: Option<&HashMap<String, u64>>) -> Self {
        let behind = view
            .records
            .iter()
            .filter(|(_, record)| Self::epoch_of(record, streamed) < epoch)
            .map(|(key, _)| key.clone())
            .collect();
        Self { epoch, behind }
    }

    /// The epoch `record`'s sidecar serves, by its record or, when later, its stream.
    fn epoch_of(record: &HealthRecord, streamed: Option<&HashMap<String, u64>>) -> u64 {
        let said = streamed.and_then(|epochs| epochs.get(&record.id)).copied();
        record.epoch.max(said.unwrap_or(0))
    }

    /// Takes the records under `keys` as they are now.
    fn update(
        &mut self,
        view: &HealthView,
        keys: &[String],
        streamed: Option<&HashMap<String, u64>>,
    ) {
        for key in keys {
            match view.records.get(key) {
                Some(record) if Self::epoch_of(record, streamed) < self.epoch => {
                    self.behind.insert(key.clone());
                }
                _ => {
                    self.behind.remove(key);
                }
            }
        }
    }

    /// Takes what the streams say now, for the sidecars still behind.
    fn update_streamed(&mut self, view: &HealthView, streamed: Option<&HashMap<String, u64>>) {
        let epoch = self.epoch;
        self.behind.retain(|key| {
            view.records
                .get(key)
                .is_some_and(|record| Self::epoch_of(record, streamed) < epoch)
        });
    }

    /// Where the wait stands; when `done`, with the sidecars behind and the epoch each serves
    /// by its record or by `streamed` (read only then).
    fn progress(
        &self,
        ns: &str,
        view: &HealthView,
        done: bool,
        streamed: Option<&HashMap<String, u64>>,
    ) -> EpochWaitProgress {
        let converged = self.behind.is_empty();
        let mut behind: Vec<SidecarEpoch> = if done {
            self.behind
                .iter()
                .filter_map(|key| view.records.get(key))
                .map(|record| SidecarEpoch {
                    id: record.id.clone(),
                    epoch: Self::epoch_of(record, streamed),
                })
                .collect()
        } else {
            Vec::new()
        };
        behind.sort_by(|a, b| a.id.cmp(&b.id));
        EpochWaitProgress {
            namespace: ns.to_string(),
            epoch: self.epoch,
            sidecars: view.len() as u64,
            on_epoch: (view.len() - self.behind.len()) as u64,
            done: done || converged,
            converged,
            behind,
        }
    }
}

/// Refuses a wait longer than [`MAX_EPOCH_WAIT`], before anything is streamed.
pub fn check_timeout(timeout: Duration) -> Result<()> {
    if timeout > MAX_EPOCH_WAIT {
        return Err(CoordinatorError::InvalidInput(format!(
            "a wait of {timeout:?} is longer than the {MAX_EPOCH_WAIT:?} allowed"
        )));
    }
    Ok(())
}

/// Sends where the live sidecars of `ns` are on the way to `epoch` until every one serves it
/// or a later one, by its health record or by its stream to this coordinator (`outcomes`,
/// empty unless it leads), or until `timeout` (checked by [`check_timeout`]): a message at once, one
/// on progress at most every [`PROGRESS_EVERY`], and a last one marked `done`, after which
/// `progress` is dropped. Returns early, without a last message, when the receiver goes
/// away; `stop` (the coordinator's shutdown) ends the wait with an error, so that the caller
/// asks another replica.
pub async fn wait_for_epoch(
    store: &Store,
    outcomes: &Outcomes,
    ns: &str,
    epoch: u64,
    timeout: Duration,
    progress: mpsc::Sender<EpochWaitProgress>,
    stop: &CancellationToken,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // Subscribed before the first look, so that an epoch streamed meanwhile wakes the wait.
    let mut streamed_changed = outcomes.epochs_changed();
    let mut view = HealthView::open(store, ns).await?;
    let mut tally =
        outcomes.with_streamed_epochs(ns, |streamed| EpochTally::new(&view, epoch, streamed));
    let mut last_sent: Option<(u64, u64)> = None;
    let mut next_progress = Instant::now();
    // Streamed epochs not yet looked at, and when they may be.
    let mut streamed_unseen = false;
    let mut next_streamed_look = Instant::now();
    loop {
        if streamed_unseen && Instant::now() >= next_streamed_look {
            outcomes.with_streamed_epochs(ns, |streamed| tally.update_streamed(&view, streamed));
            streamed_unseen = false;
            next_streamed_look = Instant::now() + STREAMED_EVERY;
        }
        let timed_out = Instant::now() >= deadline;
        // Only the last message of a wait that timed out names the sidecars behind, with the
        // epochs the streams say; the others take no lock that the streams' messages take.
        let message = if timed_out {
            outcomes.with_streamed_epochs(ns, |streamed| tally.progress(ns, &view, true, streamed))
        } else {
            tally.progress(ns, &view, false, None)
        };
        let counts = (message.sidecars, message.on_epoch);
        if message.done {
            // The receiver may have gone; there is nothing left to do either way.
            let _ = progress.send(message).await;
            return Ok(());
        }
        if last_sent != Some(counts) && Instant::now() >= next_progress {
            if progress.send(message).await.is_err() {
                return Ok(());
            }
            last_sent = Some(counts);
            next_progress = Instant::now() + PROGRESS_EVERY;
        }
        // Wake for the deadline, for changes, and for progress and streamed epochs held back
        // by their cadences.
        let mut wake = deadline;
        if last_sent != Some(counts) {
            wake = wake.min(next_progress);
        }
        if streamed_unseen {
            wake = wake.min(next_streamed_look);
        }
        tokio::select! {
            keys = view.changed() => {
                let keys = keys?;
                outcomes.with_streamed_epochs(ns, |streamed| tally.update(&view, &keys, streamed));
            }
            Ok(()) = streamed_changed.changed(), if !streamed_unseen => streamed_unseen = true,
            () = tokio::time::sleep_until(wake) => {}
            () = progress.closed() => return Ok(()),
            () = stop.cancelled() => {
                return Err(CoordinatorError::ShuttingDown(
                    "this coordinator is shutting down; wait again through another".into(),
                ));
            }
        }
    }
}
