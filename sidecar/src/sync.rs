//! The per-namespace sync loop, in the linkerd style: initial load, watch, back off and
//! recover, and publish a whole new snapshot only once every set it needs is verified.
//!
//! Only the routing key is watched: routing names the exact manifest of every set in service,
//! and it only ever names sealed, verified manifests. Chunk uploads, other sidecars' health
//! records and audit records never reach a sidecar's watch.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use switchboard_proto::time::{now_ms, now_us};
use switchboard_proto::{Keys, Routing};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::loader::{LoadError, SetCache, with_timeout};
use crate::namespace::Namespace;
use crate::snapshot::{LoadedSet, Snapshot};
use crate::telemetry;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long after an activation point a sidecar puts off the work a switch causes (its health
/// record, its disk copy). Many sidecars on one host switch within the same millisecond; work
/// that one of them does right after its switch takes the CPU from those that have not switched
/// yet, which measured 60 to 110 ms of spread across 100 sidecars on 2 cores.
pub(crate) const SETTLE_AFTER_ACTIVATION: Duration = Duration::from_millis(100);

/// How long work caused by switching to `routing` should wait: until
/// [`SETTLE_AFTER_ACTIVATION`] after its activation point, or, for a change without one (a
/// flip, a rollback, a canary step), after its commit: every sidecar of a host receives such a
/// change within milliseconds of the others too, and with 100 sidecar processes on 2 cores the
/// disk copies and health records written right away held the last sidecars back by 200 ms at
/// p99. The applications are told at once (reads, change feeds); only this work waits. A
/// routing that asks sidecars to prepare is acknowledged at once: a synchronized flip waits for
/// the acknowledgements. `None` when that time has passed.
pub(crate) fn settle_delay(routing: &Routing) -> Option<Duration> {
    let point_ms = match routing.activate_at_ms {
        Some(point_ms) => point_ms,
        None if routing.prepare.is_some() => return None,
        None => routing.at_ms,
    };
    let point_us = point_ms.saturating_mul(1000);
    let settle_us = u64::try_from(SETTLE_AFTER_ACTIVATION.as_micros()).unwrap_or(u64::MAX);
    let wait_us = point_us.saturating_add(settle_us).saturating_sub(now_us());
    (wait_us > 0).then(|| Duration::from_micros(wait_us).min(SETTLE_AFTER_ACTIVATION))
}

/// The longest a sidecar puts off the health record that acknowledges a routing, whatever
/// routing asks: routing comes from etcd, and a record that never came would hold `flip
/// --wait` and `status` back for good.
const MOST_ACKNOWLEDGEMENT_DELAY: Duration = Duration::from_secs(60);

/// How much longer than the rest of a switch the health record that acknowledges `routing`
/// waits: a random part of `acknowledge_within_ms`, so that a large fleet's records reach etcd
/// spread out rather than at one instant. `None` when routing asks for no spread, or asks
/// sidecars to prepare, which the coordinator waits for.
fn acknowledgement_delay(routing: &Routing) -> Option<Duration> {
    let within_ms = routing
        .acknowledge_within_ms
        .filter(|&ms| ms > 0 && routing.prepare.is_none())?;
    let within = Duration::from_millis(within_ms).min(MOST_ACKNOWLEDGEMENT_DELAY);
    Some(within.mul_f64(rand::random::<f64>()))
}

/// How much of the wait for an activation point is a blocking, precise sleep (see
/// `NamespaceSync::schedule`).
const FINAL_SLEEP: Duration = Duration::from_millis(2);

/// After about this long without a watch message, the sync loop asks etcd for a progress
/// report (`--etcd-progress-seconds`). etcd's own progress notifications come every 10 minutes
/// by default, so without asking, a quiet routing key would leave the sidecar unable to tell a
/// healthy watch from one that stopped, and its staleness gauge
/// (`telemetry::LAST_ETCD_EVENT_AGE`) would climb on every healthy sidecar. A dead connection
/// needs no request to be found: the HTTP/2 keep-alive pings of the etcd connection (every
/// 5 s, one per connection, not per watch) close it within 8 s, and `require_leader` cancels
/// the watch of a member cut off from its leader. So the requests bound only the gauge, which
/// alerts at 60 s, and 20 s is plenty. Every 5 s, as before, they were two thirds of what a
/// fleet of 10,000 asked of etcd in steady state (2,000 a second beside 1,000 lease
/// keep-alives; BENCHMARKS.md, "fleet").
pub const PROGRESS_EVERY: Duration = Duration::from_secs(20);

/// The quiet period before a progress request, spread between three quarters of `every` and
/// all of it: after a flip every sidecar of a fleet hears its watch at the same instant, and
/// without the spread all of them would ask etcd at the same instant again, at every period.
fn next_progress_after(every: Duration) -> Duration {
    every.mul_f64(rand::random_range(0.75..=1.0))
}

/// After this many progress periods without a watch message although progress was asked for,
/// the sync loop reads the routing key's count instead. etcd's gRPC proxy (3.4) does not answer
/// progress requests, so behind the proxy tier this read is what shows etcd still answers: one
/// small read per namespace every 30 s by default, which keeps the staleness gauge under 40 s,
/// below the alert's 60 s. A read that fails ends the connected period, as a broken watch does,
/// and the loop reconnects with back-off while the last snapshot keeps serving.
fn read_after_quiet(every: Duration) -> Duration {
    every.mul_f64(1.5)
}

/// The furthest ahead an activation point is waited for; the coordinator sets at most 60 s.
const MAX_ACTIVATION_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch stream ended")]
    WatchEnded,
    #[error("the watch was cancelled: {0}")]
    WatchCancelled(String),
    #[error("the watch fell behind compaction at revision {0}; reloading")]
    Compacted(i64),
}

/// Everything one namespace's sync loop needs.
pub struct NamespaceSync {
    pub client: Client,
    pub keys: Keys,
    pub namespace: Arc<Namespace>,
    /// Told whenever what this sidecar serves or its reachability changes.
    pub health_dirty: Arc<Notify>,
    /// The quiet period after which the loop asks etcd for progress ([`PROGRESS_EVERY`]).
    progress_every: Duration,
    /// The tasks this loop starts: switches scheduled for an activation point, and the reports
    /// that follow a switch. They end when the loop does.
    switches: SwitchTasks,
}

/// The tasks of one sync loop, and how they are stopped. A scheduled switch waits for its
/// activation point on a task of its own (see [`NamespaceSync::schedule`]), but it belongs to
/// the loop: it must not switch, nor hold its sets in memory, after the loop has ended.
#[derive(Default)]
struct SwitchTasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// A loop that is dropped without finishing (its task aborted) stops its tasks too.
impl Drop for SwitchTasks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SwitchTasks {
    /// Runs `task` until it ends or the tasks are stopped, whichever comes first. A task stops
    /// only where it waits: a switch that has begun is completed.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Stops every task and waits until they have ended.
    async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl NamespaceSync {
    pub fn new(
        client: Client,
        keys: Keys,
        namespace: Arc<Namespace>,
        health_dirty: Arc<Notify>,
    ) -> Self {
        // Preview reads ask etcd through the same connection.
        namespace.preview.attach(client.clone(), keys.clone());
        Self {
            client,
            keys,
            namespace,
            health_dirty,
            progress_every: PROGRESS_EVERY,
            switches: SwitchTasks::default(),
        }
    }

    /// The same loop, asking etcd for progress after `every` of quiet instead of
    /// [`PROGRESS_EVERY`].
    #[must_use]
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }

    /// Runs until `shutdown`. Never returns an error: every failure is logged here, where it
    /// is handled, and followed by a backed-off retry while the last snapshot keeps serving.
    /// A switch still waiting for its activation point is dropped, and waited for, before it
    /// returns.
    pub async fn run(self, shutdown: CancellationToken) {
        self.follow(&shutdown).await;
        self.stop_switches().await;
    }

    /// Stops the switches scheduled for an activation point, and the reports that follow a
    /// switch, and waits until their tasks have ended.
    pub(crate) async fn stop_switches(&self) {
        self.switches.stop().await;
    }

    /// The tracker of this loop's switch tasks, to see from outside that they ended.
    #[cfg(test)]
    pub(crate) fn switch_tasks(&self) -> TaskTracker {
        self.switches.tracker.clone()
    }

    /// The sync loop proper: connect, follow, back off, until `shutdown`.
    async fn follow(&self, shutdown: &CancellationToken) {
        let mut cache = SetCache::default();
        let mut backoff = BACKOFF_START;
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = self.sync(&mut cache, &mut backoff) => result,
            };
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            let ns = &self.namespace.name;
            match &error {
                SyncError::Compacted(_) => tracing::info!(ns, %error, "watch restarting"),
                _ => {
                    tracing::warn!(ns, %error, retry_in = ?backoff, "etcd sync failed; serving the last verified snapshot")
                }
            }
            let reachable = matches!(error, SyncError::Compacted(_));
            self.namespace.update_sync(|s| {
                s.etcd_reachable = reachable;
                s.last_error = Some(error.to_string());
            });
            self.health_dirty.notify_one();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connected period: read routing, load it, then follow the watch from the next
    /// revision until something breaks.
    async fn sync(&self, cache: &mut SetCache, backoff: &mut Duration) -> Result<(), SyncError> {
        let mut client = self.client.clone();
        let key = self.keys.routing(&self.namespace.name);
        let response = with_timeout(client.get(key.as_str(), None)).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        self.mark_synced();
        match response.kvs().first() {
            Some(kv) => self.apply(cache, kv.value()).await?,
            None => {
                tracing::info!(ns = %self.namespace.name, "no routing yet; waiting for the first flip")
            }
        }

        let options = WatchOptions::new()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let mut stream = client.watch(key.as_str(), Some(options)).await?;
        *backoff = BACKOFF_START;
        // The last watch message or confirming read.
        let mut heard_at = tokio::time::Instant::now();
        loop {
            // Reading a message is cancel-safe (tonic buffers a partial one in the stream), so
            // the timer may win without losing anything.
            let received = tokio::select! {
                received = stream.message() => received?,
                () = tokio::time::sleep(next_progress_after(self.progress_every)) => {
                    if heard_at.elapsed() < read_after_quiet(self.progress_every) {
                        // The answer arrives as a watch message without events, which marks
                        // the namespace synced below. Sending must not block the loop: a
                        // connection that does not answer is caught by the read that follows.
                        let _ = tokio::time::timeout(self.progress_every, stream.request_progress()).await;
                    } else {
                        let count_only = etcd_client::GetOptions::new().with_count_only();
                        with_timeout(client.get(key.as_str(), Some(count_only))).await?;
                        self.mark_synced();
                        heard_at = tokio::time::Instant::now();
                    }
                    continue;
                }
            };
            heard_at = tokio::time::Instant::now();
            let Some(message) = received else {
                return Err(SyncError::WatchEnded);
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    return Err(SyncError::Compacted(message.compact_revision()));
                }
                return Err(SyncError::WatchCancelled(
                    message.cancel_reason().to_string(),
                ));
            }
            self.mark_synced();
            // Only the newest routing matters: a sidecar that was busy loading skips straight
            // to the latest state.
            match message.events().last() {
                Some(event) if event.event_type() == EventType::Put => {
                    if let Some(kv) = event.kv() {
                        self.apply(cache, kv.value()).await?;
                    }
                }
                Some(_) => {
                    tracing::warn!(ns = %self.namespace.name, "routing was deleted; serving the last snapshot")
                }
                None => {}
            }
        }
    }

    fn mark_synced(&self) {
        let was_reachable = self.namespace.sync_state().etcd_reachable;
        self.namespace.update_sync(|s| {
            s.etcd_reachable = true;
            s.last_sync_ms = now_ms();
        });
        if !was_reachable {
            self.health_dirty.notify_one();
        }
    }

    /// Loads every set that `raw` routing needs and publishes the new snapshot. Routing or a
    /// set that does not verify is logged and skipped: the last snapshot keeps serving until
    /// routing names something valid. Only etcd failures are returned, to reconnect.
    ///
    /// During the bake time after a flip the previous set is loaded too and held, not served,
    /// so that a flip back needs no load. It is not needed to serve: if it does not verify the
    /// new snapshot goes out without it, and if etcd fails while loading it the snapshot goes
    /// out first and the reconnect tries again.
    pub(crate) async fn apply(&self, cache: &mut SetCache, raw: &[u8]) -> Result<(), SyncError> {
        let ns = &self.namespace.name;
        let routing: Routing = match serde_json::from_slice(raw) {
            Ok(routing) => routing,
            Err(error) => {
                let message = format!("routing of {ns} in etcd does not parse: {error}");
                tracing::error!(ns, %error, "routing does not parse; serving the last snapshot");
                self.namespace.update_sync(|s| s.last_error = Some(message));
                return Ok(());
            }
        };
        // A newer routing wins over one still waiting for its activation point.
        let generation = self.namespace.next_generation();
        self.namespace.update_sync(|s| {
            s.pending_epoch = None;
            s.pending_activate_at_ms = None;
        });
        let prepare_held = routing
            .prepare
            .as_ref()
            .is_none_or(|p| self.namespace.sync_state().prepared.as_deref() == Some(&p.manifest));
        if let Some(current) = self.namespace.current()
            && current.routing == routing
            && prepare_held
        {
            // Same routing names the same verified manifests: what is served (perhaps from the
            // disk copy) is exactly what etcd has.
            self.namespace
                .update_sync(|s| s.source = crate::namespace::Source::Etcd);
            if routing.baking().is_none() || current.previous.is_some() {
                return Ok(());
            }
            // The served sets are right, but the baking set is not held yet: the disk copy does
            // not keep it, or an earlier load of it failed.
            return match self.load_previous(cache, &routing).await {
                Ok(Some(previous)) => {
                    let prepared = routing
                        .prepare
                        .as_ref()
                        .and_then(|p| cache.get(&p.manifest));
                    let keep: Vec<&Arc<LoadedSet>> = std::iter::once(&current.active)
                        .chain(current.canary.as_ref())
                        .chain(Some(&previous))
                        .chain(prepared.as_ref())
                        .collect();
                    retain(cache, &keep);
                    self.swap(Snapshot {
                        routing,
                        active: current.active.clone(),
                        canary: current.canary.clone(),
                        previous: Some(previous),
                    });
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(error) => self.previous_not_held(
                    routing.epoch,
                    routing.baking().map(|p| p.version.as_str()),
                    error,
                ),
            };
        }
        let load = async {
            let active = cache
                .get_or_load(&self.client, &self.keys, ns, &routing.active.manifest)
                .await?;
            let canary = match routing.live_canary() {
                Some(canary) => Some(
                    cache
                        .get_or_load(&self.client, &self.keys, ns, &canary.manifest)
                        .await?,
                ),
                None => None,
            };
            Ok::<_, LoadError>((active, canary))
        };
        let (active, canary) = match load.await {
            Ok(sets) => sets,
            Err(error @ LoadError::Invalid { .. }) | Err(error @ LoadError::Missing { .. }) => {
                tracing::error!(ns, epoch = routing.epoch, %error, "routing names a set that does not verify; serving the last snapshot");
                self.namespace
                    .update_sync(|s| s.last_error = Some(error.to_string()));
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        let previous = self.load_previous(cache, &routing).await;
        let held = previous.as_ref().ok().cloned().flatten();
        let (epoch, baking) = (routing.epoch, routing.baking().map(|p| p.version.clone()));
        let prepared = self.load_prepare(cache, &routing).await;
        let prepared_set = prepared.as_ref().ok().cloned().flatten();
        let mut keep: Vec<&Arc<LoadedSet>> = std::iter::once(&active)
            .chain(canary.as_ref())
            .chain(held.as_ref())
            .chain(prepared_set.as_ref())
            .collect();
        let snapshot = Snapshot {
            routing,
            active: active.clone(),
            canary: canary.clone(),
            previous: held.clone(),
        };
        match self.activation_delay(&snapshot.routing) {
            Some(delay) => {
                // The sets served now stay in memory until the activation point: a newer
                // routing that goes back to them needs no load.
                let current = self.namespace.current();
                if let Some(current) = &current {
                    keep.extend(current.served_sets().into_iter().map(|(_, set)| set));
                }
                retain(cache, &keep);
                self.schedule(snapshot, delay, generation);
            }
            None => {
                retain(cache, &keep);
                self.namespace.update_sync(|s| {
                    s.prepared = prepared_set.as_ref().map(|set| set.manifest_hash.clone())
                });
                self.swap(snapshot);
            }
        }
        match (previous, prepared) {
            (Ok(_), Ok(_)) => Ok(()),
            // Serving the new routing did not wait for the baking set.
            (Err(error), _) => self.previous_not_held(epoch, baking.as_deref(), error),
            (Ok(_), Err(error)) => self.prepare_not_held(epoch, error),
        }
    }

    /// Loads the set routing asks to prepare for a synchronized flip, if it names one.
    async fn load_prepare(
        &self,
        cache: &mut SetCache,
        routing: &Routing,
    ) -> Result<Option<Arc<LoadedSet>>, LoadError> {
        match &routing.prepare {
            Some(prepare) => cache
                .get_or_load(
                    &self.client,
                    &self.keys,
                    &self.namespace.name,
                    &prepare.manifest,
                )
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Handles a failed load of the set to prepare. The sidecar then does not acknowledge it,
    /// so the synchronized flip is refused when its wait times out: a set that does not verify
    /// is never served (invariant 1). An etcd failure reconnects, and the reconnect tries again.
    fn prepare_not_held(&self, epoch: u64, error: LoadError) -> Result<(), SyncError> {
        let ns = &self.namespace.name;
        self.namespace.update_sync(|s| s.prepared = None);
        match error {
            LoadError::Invalid { .. } | LoadError::Missing { .. } => {
                tracing::error!(ns, epoch, %error, "the set to prepare does not verify; not acknowledging it");
                self.namespace
                    .update_sync(|s| s.last_error = Some(error.to_string()));
                self.health_dirty.notify_one();
                Ok(())
            }
            error => {
                tracing::warn!(ns, epoch, %error, "the set to prepare could not be loaded; retrying when etcd answers");
                Err(error.into())
            }
        }
    }

    /// How long to wait before serving `routing`: until its activation point, by this host's
    /// clock. `None` means at once: no point, a point already passed, or nothing served yet (a
    /// sidecar with nothing to serve serves the new routing rather than answer 503).
    fn activation_delay(&self, routing: &Routing) -> Option<Duration> {
        let activate_at_ms = routing.activate_at_ms?;
        self.namespace.current()?;
        let wait_us = activate_at_ms.saturating_mul(1000).saturating_sub(now_us());
        if wait_us == 0 {
            return None;
        }
        let wait = Duration::from_micros(wait_us);
        if wait > MAX_ACTIVATION_WAIT {
            // The coordinator never sets a point this far ahead: this host's clock is behind.
            // Waiting would freeze the sidecar on the old routing, so it switches at once and
            // says why; its lateness shows the skew in the flip's spread.
            tracing::warn!(ns = %self.namespace.name, epoch = routing.epoch, activate_at_ms, ?wait, "activation point too far ahead; is this host's clock behind? switching at once");
            return None;
        }
        Some(wait)
    }

    /// Publishes `snapshot` after `delay`, unless a newer routing is applied first or the loop
    /// ends. A task of its own does the waiting, so that the switch happens on time even while
    /// the sync loop loads, reconnects or backs off; the loop owns that task.
    fn schedule(&self, snapshot: Snapshot, delay: Duration, generation: u64) {
        let epoch = snapshot.routing.epoch;
        let activate_at_ms = snapshot.routing.activate_at_ms;
        tracing::info!(ns = %self.namespace.name, epoch, ?activate_at_ms, ?delay, "routing loaded; switching at its activation point");
        self.namespace.update_sync(|s| {
            s.prepared = None;
            s.pending_epoch = Some(epoch);
            s.pending_activate_at_ms = activate_at_ms;
        });
        self.health_dirty.notify_one();
        let due = std::time::Instant::now() + delay;
        let namespace = self.namespace.clone();
        let health_dirty = self.health_dirty.clone();
        self.switches.spawn(async move {
            // tokio's timer rounds up to whole milliseconds, from a different origin in every
            // process, which adds up to a millisecond to the spread. So it wakes this task
            // shortly before the point, and the kernel's high-resolution sleep covers the rest
            // on this worker thread (at most FINAL_SLEEP, once per synchronized flip). Doing
            // the switch right here, rather than on a thread of its own, wakes no other thread
            // at the instant, when every sidecar of the host needs the CPU (measured: a thread
            // of its own doubled the spread of 100 sidecars on 2 cores).
            let early = due.checked_sub(FINAL_SLEEP).unwrap_or(due);
            tokio::time::sleep_until(early.into()).await;
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            let mut report = None;
            let published = namespace.publish_if_current(generation, || {
                namespace.update_sync(|s| {
                    s.pending_epoch = None;
                    s.pending_activate_at_ms = None;
                });
                report = Some((
                    settle_delay(&snapshot.routing),
                    switch(&namespace, snapshot),
                ));
            });
            match report {
                Some((settle, report)) => {
                    if let Some(settle) = settle {
                        tokio::time::sleep(settle).await;
                    }
                    health_dirty.notify_one();
                    report();
                }
                None if !published => {
                    tracing::info!(ns = %namespace.name, epoch, "a newer routing came before the activation point; not switching to this one");
                }
                None => {}
            }
        });
    }

    /// Publishes a whole new snapshot, and records when this sidecar switched to its epoch. The
    /// rest of what a switch causes (the health record, the metric, the log line) follows once
    /// the other sidecars of this host have switched too (`settle_delay`), from a task of this
    /// loop's.
    ///
    /// In a fleet large enough that the leader asks for its acknowledgements to be spread
    /// (`Routing::acknowledge_within_ms`), the health record waits a random part of that
    /// longer: the leader has heard the new epoch through the outcome stream already.
    fn swap(&self, snapshot: Snapshot) {
        let settle = settle_delay(&snapshot.routing);
        let spread = acknowledgement_delay(&snapshot.routing);
        let report = switch(&self.namespace, snapshot);
        let health_dirty = self.health_dirty.clone();
        if settle.is_none() && spread.is_none() {
            health_dirty.notify_one();
            report();
            return;
        }
        self.switches.spawn(async move {
            tokio::time::sleep(settle.unwrap_or_default()).await;
            report();
            tokio::time::sleep(spread.unwrap_or_default()).await;
            health_dirty.notify_one();
        });
    }

    /// Loads the previous set while routing names a bake.
    async fn load_previous(
        &self,
        cache: &mut SetCache,
        routing: &Routing,
    ) -> Result<Option<Arc<LoadedSet>>, LoadError> {
        match routing.baking() {
            Some(previous) => cache
                .get_or_load(
                    &self.client,
                    &self.keys,
                    &self.namespace.name,
                    &previous.manifest,
                )
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Handles a failed load of the previous set, after the snapshot went out without it. A set
    /// that does not verify is logged and left out (the flip back would load it, and refuse it,
    /// like any other set); an etcd failure reconnects, and the reconnect tries again.
    fn previous_not_held(
        &self,
        epoch: u64,
        version: Option<&str>,
        error: LoadError,
    ) -> Result<(), SyncError> {
        let ns = &self.namespace.name;
        let version = version.unwrap_or_default();
        match error {
            LoadError::Invalid { .. } | LoadError::Missing { .. } => {
                tracing::warn!(ns, epoch, version, %error, "the previous set does not verify; it is not held for a flip back");
                self.namespace
                    .update_sync(|s| s.last_error = Some(error.to_string()));
                Ok(())
            }
            error => {
                tracing::warn!(ns, epoch, version, %error, "the previous set could not be loaded; serving the new routing without it until etcd answers again");
                Err(error.into())
            }
        }
    }
}

/// Drops from memory every set not in `keep`.
fn retain(cache: &mut SetCache, keep: &[&Arc<LoadedSet>]) {
    let keep: Vec<&str> = keep.iter().map(|set| set.manifest_hash.as_str()).collect();
    cache.retain(&keep);
}

/// Publishes `snapshot` and records the switch; returns what reports it (the metric and the log
/// line), for the caller to run when it suits. The caller tells the health publisher, whose
/// record may wait longer (`acknowledgement_delay`).
fn switch(namespace: &Arc<Namespace>, snapshot: Snapshot) -> impl FnOnce() + Send + 'static {
    let epoch = snapshot.routing.epoch;
    let baking = snapshot.previous.as_ref().map(|p| p.version.clone());
    let activate_at_ms = snapshot.routing.activate_at_ms;
    namespace.publish(Arc::new(snapshot));
    // Taken right after the new snapshot became visible to readers.
    let switched_at_us = now_us();
    namespace.update_sync(|s| {
        s.last_error = None;
        s.source = crate::namespace::Source::Etcd;
        s.activated_epoch = Some(epoch);
        s.activated_at_us = Some(switched_at_us);
    });
    let namespace = namespace.clone();
    move || {
        let ns = &namespace.name;
        metrics::gauge!(telemetry::EPOCH, "namespace" => ns.clone()).set(epoch as f64);
        match activate_at_ms {
            Some(point) => {
                let late_us = i128::from(switched_at_us) - i128::from(point) * 1000;
                tracing::info!(ns, epoch, holding_previous = ?baking, activate_at_ms = point, late_us, "serving new routing from its activation point")
            }
            None => {
                tracing::info!(ns, epoch, holding_previous = ?baking, "serving new routing")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(acknowledge_within_ms: Option<u64>, preparing: bool) -> Routing {
        let set = switchboard_proto::SlotVersion {
            slot: switchboard_proto::Slot::Blue,
            version: "v1".into(),
            manifest: "m".into(),
        };
        Routing {
            epoch: 2,
            active: set.clone(),
            canary: None,
            previous: None,
            bake_until_ms: None,
            prepare: preparing.then_some(set),
            activate_at_ms: None,
            acknowledge_within_ms,
            action: "flip".into(),
            by: "test".into(),
            reason: String::new(),
            at_ms: 0,
        }
    }

    #[test]
    fn an_acknowledgement_waits_a_part_of_the_spread_routing_asks_for() {
        assert_eq!(acknowledgement_delay(&routing(None, false)), None);
        assert_eq!(acknowledgement_delay(&routing(Some(0), false)), None);
        // A preparation is waited for by the coordinator: acknowledged at once.
        assert_eq!(acknowledgement_delay(&routing(Some(10_000), true)), None);
        let delays: Vec<Duration> = (0..200)
            .map(|_| acknowledgement_delay(&routing(Some(10_000), false)).unwrap_or_default())
            .collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        // Spread, not one delay for all: over 200 draws, some in each half.
        assert!(delays.iter().any(|d| *d < Duration::from_secs(5)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(5)));
        // Routing from etcd that asks for an hour gets the most a sidecar waits.
        let capped = acknowledgement_delay(&routing(Some(3_600_000), false)).unwrap_or_default();
        assert!(capped <= MOST_ACKNOWLEDGEMENT_DELAY);
    }

    #[test]
    fn progress_is_asked_between_three_quarters_of_the_period_and_all_of_it() {
        for _ in 0..200 {
            let after = next_progress_after(PROGRESS_EVERY);
            assert!(after >= PROGRESS_EVERY.mul_f64(0.75) && after <= PROGRESS_EVERY);
        }
        // Behind the gRPC proxy the read comes after the first unanswered request, well before
        // the staleness alert's 60 s.
        assert!(read_after_quiet(PROGRESS_EVERY) + PROGRESS_EVERY < Duration::from_secs(60));
    }
}
