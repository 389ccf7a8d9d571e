//! The outcomes that sidecars stream to the leader (`ReportOutcomes`), as the health judge
//! reads them: per namespace, per sidecar and version, cumulative counters placed on the
//! leader's clock, summed over any window.
//!
//! Nothing here is written to etcd, so etcd's write rate does not grow with traffic. A new
//! leader starts empty and receives each sidecar's counters again, with their recent history,
//! when the sidecar reconnects to it: the counters are cumulative, so nothing is lost and
//! nothing is counted twice. A sample carries its age when it was sent, not a time by the
//! sidecar's clock, so the two clocks need not agree.
//!
//! Each message also says which epoch each namespace of the sidecar is served from, and a
//! sidecar sends one as soon as it applies a routing: the leader's `WaitForEpoch` counts a
//! sidecar as on the epoch when either its stream or its health record says so, so a fleet's
//! flip is seen applied before ten thousand records reach etcd.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use switchboard_proto::VersionReports;
use switchboard_proto::judge::Counts;
use switchboard_proto::pb;
use tokio::sync::watch;

/// Most series (sidecar and version) the leader keeps in all: 10,000 sidecars with 8
/// versions each in 2 namespaces. A stream that would add more is refused.
pub const MAX_SERIES: usize = 160_000;
/// Most series one message may carry, and most samples per series.
pub const MAX_SERIES_PER_MESSAGE: usize = 256;
pub const MAX_SAMPLES_PER_SERIES: usize = 4_096;
/// Oldest sample a message may carry: a day.
pub const MAX_AGE_MS: u64 = 24 * 60 * 60 * 1000;
/// How long the series of a sidecar whose stream ended are kept, for the windows that reach
/// back before it ended (a sidecar that restarts or moves to a new leader streams again).
pub const KEEP_ENDED_MS: u64 = 15 * 60 * 1000;
/// Longest version id a sample may name (as the history's keys allow).
const MAX_VERSION_LEN: usize = 128;

/// One sidecar's cumulative counters for one version, as observed over time.
#[derive(Default)]
struct Series {
    /// The sidecar process the counters belong to (its `started_at_ms`).
    incarnation: u64,
    /// When that process started, on the leader's clock.
    began_ms: u64,
    /// (at, ok, errors) on the leader's clock, oldest first.
    points: VecDeque<(u64, u64, u64)>,
}

impl Series {
    /// Takes one sample. A new incarnation starts the series again; a sample that is not newer
    /// than the newest point, or whose counts are lower (one sent again, placed a little later
    /// by the network's jitter), is already reflected and is skipped.
    fn observe(&mut self, incarnation: u64, began_ms: u64, at_ms: u64, ok: u64, errors: u64) {
        if incarnation != self.incarnation {
            self.incarnation = incarnation;
            self.began_ms = began_ms;
            self.points.clear();
        }
        if let Some(&(last_at, last_ok, last_errors)) = self.points.back()
            && (at_ms <= last_at || ok < last_ok || errors < last_errors)
        {
            return;
        }
        self.points.push_back((at_ms, ok, errors));
    }

    /// Outcomes counted since `since_ms`: the newest point minus a base. The base is the newest
    /// point at or before `since_ms`; failing that, zero if the sidecar started inside the
    /// window (its counters were zero then), else the oldest point, so that outcomes from
    /// before the window are never counted in it.
    fn since(&self, since_ms: u64) -> Counts {
        let Some(&(_, ok, errors)) = self.points.back() else {
            return Counts::default();
        };
        let base = match self.points.iter().rev().find(|(at, _, _)| *at <= since_ms) {
            Some(&(_, base_ok, base_errors)) => (base_ok, base_errors),
            None if self.began_ms >= since_ms => (0, 0),
            None => self
                .points
                .front()
                .map_or((ok, errors), |&(_, o, e)| (o, e)),
        };
        Counts {
            ok: ok.saturating_sub(base.0),
            errors: errors.saturating_sub(base.1),
        }
    }

    /// Drops points that no window will need again, keeping one at or before the window.
    fn prune(&mut self, since_ms: u64) {
        while self.points.len() > 1 && self.points.get(1).is_some_and(|(at, _, _)| *at <= since_ms)
        {
            self.points.pop_front();
        }
    }

    fn newest(&self) -> Option<(u64, u64, u64)> {
        self.points.back().copied()
    }
}

/// A sidecar whose stream the leader has seen.
struct Sidecar {
    /// Its streams now open (a reconnect may overlap the end of the stream before it).
    open_streams: usize,
    /// When its last stream ended, on the leader's clock.
    ended_ms: u64,
}

#[derive(Default)]
struct Inner {
    /// Per namespace, per (sidecar, version).
    series: HashMap<String, HashMap<(String, String), Series>>,
    sidecars: HashMap<String, Sidecar>,
    series_count: usize,
    /// Per namespace, the epoch each sidecar with an open stream says it is served from.
    epochs: HashMap<String, HashMap<String, u64>>,
}

/// The outcomes this coordinator received, shared by the `ReportOutcomes` handler, the judge,
/// `status` and the dashboard. Cloning shares them.
#[derive(Clone)]
pub struct Outcomes {
    inner: Arc<Mutex<Inner>>,
    leading: watch::Sender<bool>,
    /// Bumped each time a sidecar's streamed epoch changes, for the waits that count them.
    epochs_changed: watch::Sender<u64>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Self::new()
    }
}

impl Outcomes {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            leading: watch::Sender::new(false),
            epochs_changed: watch::Sender::new(0),
        }
    }

    /// Whether this coordinator leads. A term's start takes streams; its end forgets what it
    /// received (the next term receives it again) and ends the open streams, so that their
    /// sidecars go to the new leader.
    pub fn set_leading(&self, leading: bool) {
        if !leading {
            let mut inner = self.lock();
            inner.series.clear();
            inner.series_count = 0;
            inner.epochs.clear();
        }
        self.leading.send_replace(leading);
    }

    /// Follows whether this coordinator leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// A stream of `sidecar` opened.
    pub fn opened(&self, sidecar: &str) {
        let mut inner = self.lock();
        inner
            .sidecars
            .entry(sidecar.to_string())
            .or_insert(Sidecar {
                open_streams: 0,
                ended_ms: 0,
            })
            .open_streams += 1;
    }

    /// A stream of `sidecar` ended at `now_ms`. Once none is open, what the sidecar said of
    /// its epochs is forgotten: it might move on without telling anyone here.
    pub fn closed(&self, sidecar: &str, now_ms: u64) {
        let mut inner = self.lock();
        let mut silent = false;
        if let Some(entry) = inner.sidecars.get_mut(sidecar) {
            entry.open_streams = entry.open_streams.saturating_sub(1);
            entry.ended_ms = now_ms;
            silent = entry.open_streams == 0;
        }
        if silent {
            for epochs in inner.epochs.values_mut() {
                epochs.remove(sidecar);
            }
        }
    }

    /// How many sidecars with an open stream have said which epoch of `ns` they serve.
    pub fn streaming_sidecars(&self, ns: &str) -> usize {
        self.lock().epochs.get(ns).map_or(0, HashMap::len)
    }

    /// Told each time a sidecar's streamed epoch changes.
    pub fn epochs_changed(&self) -> watch::Receiver<u64> {
        self.epochs_changed.subscribe()
    }

    /// Calls `f` with the epoch each streaming sidecar of `ns` says it is served from, by
    /// sidecar id (`None` when none has said), under the lock: a wait over 10,000 sidecars
    /// looks up the ones it waits for without copying the others.
    pub fn with_streamed_epochs<R>(
        &self,
        ns: &str,
        f: impl FnOnce(Option<&HashMap<String, u64>>) -> R,
    ) -> R {
        f(self.lock().epochs.get(ns))
    }

    /// Takes one message of a stream, received at `now_ms`. Refuses it whole, naming what is
    /// wrong, when it is malformed or would grow the series past [`MAX_SERIES`].
    pub fn observe(&self, report: &pb::OutcomeReport, now_ms: u64) -> Result<(), String> {
        check(report)?;
        let began_ms = now_ms.saturating_sub(report.uptime_ms);
        let mut inner = self.lock();
        let Inner {
            series,
            series_count,
            epochs,
            ..
        } = &mut *inner;
        let new = report
            .series
            .iter()
            .filter(|s| {
                !series.get(&s.namespace).is_some_and(|namespace| {
                    namespace.contains_key(&(report.sidecar.clone(), s.version.clone()))
                })
            })
            .count();
        if *series_count + new > MAX_SERIES {
            return Err(format!(
                "the leader holds {series_count} series of outcomes, its most; sidecar {} adds {new}",
                report.sidecar
            ));
        }
        let mut epochs_changed = false;
        for said in &report.epochs {
            let previous = epochs
                .entry(said.namespace.clone())
                .or_default()
                .insert(report.sidecar.clone(), said.epoch);
            epochs_changed |= previous != Some(said.epoch);
        }
        for reported in &report.series {
            let entry = series
                .entry(reported.namespace.clone())
                .or_default()
                .entry((report.sidecar.clone(), reported.version.clone()))
                .or_insert_with(|| {
                    *series_count += 1;
                    Series::default()
                });
            for sample in &reported.samples {
                let at_ms = now_ms.saturating_sub(sample.age_ms);
                entry.observe(
                    report.started_at_ms,
                    began_ms,
                    at_ms,
                    sample.ok,
                    sample.errors,
                );
            }
        }
        drop(inner);
        if epochs_changed {
            self.epochs_changed.send_modify(|count| *count += 1);
        }
        Ok(())
    }

    /// The outcomes of `version` in `ns` since `since_ms`, summed over the sidecars. Prunes
    /// what no window from `since_ms` on needs, and forgets the series of sidecars whose
    /// stream ended [`KEEP_ENDED_MS`] ago.
    pub fn window(&self, ns: &str, version: &str, since_ms: u64, now_ms: u64) -> Counts {
        let mut inner = self.lock();
        let Inner {
            series,
            sidecars,
            series_count,
            ..
        } = &mut *inner;
        let Some(namespace) = series.get_mut(ns) else {
            return Counts::default();
        };
        let ended_long_ago = |id: &str| {
            sidecars.get(id).is_some_and(|s| {
                s.open_streams == 0 && now_ms.saturating_sub(s.ended_ms) > KEEP_ENDED_MS
            })
        };
        let before = namespace.len();
        namespace.retain(|(sidecar, _), _| !ended_long_ago(sidecar));
        *series_count -= before - namespace.len();
        let mut total = Counts::default();
        for ((_, v), entry) in namespace.iter_mut() {
            entry.prune(since_ms);
            if v == version {
                total = total.plus(entry.since(since_ms));
            }
        }
        sidecars.retain(|_, s| {
            s.open_streams > 0 || now_ms.saturating_sub(s.ended_ms) <= KEEP_ENDED_MS
        });
        total
    }

    /// The newest cumulative counts of each version each sidecar reported in `ns`, by sidecar,
    /// for `status` and the dashboard: one pass over the namespace's series.
    pub fn reports_by_sidecar(&self, ns: &str) -> HashMap<String, Vec<VersionReports>> {
        let inner = self.lock();
        let mut reports: HashMap<String, Vec<VersionReports>> = HashMap::new();
        let Some(namespace) = inner.series.get(ns) else {
            return reports;
        };
        for ((sidecar, version), entry) in namespace {
            if let Some((_, ok, errors)) = entry.newest() {
                reports
                    .entry(sidecar.clone())
                    .or_default()
                    .push(VersionReports {
                        version: version.clone(),
                        ok,
                        errors,
                    });
            }
        }
        for versions in reports.values_mut() {
            versions.sort_by(|a, b| a.version.cmp(&b.version));
        }
        reports
    }

    /// The series held now, for the gauge and the tests.
    pub fn series_count(&self) -> usize {
        self.lock().series_count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves counters that are still counters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a message from the network before any of it is taken.
fn check(report: &pb::OutcomeReport) -> Result<(), String> {
    switchboard_proto::keys::validate_sidecar_id(&report.sidecar)
        .map_err(|e| format!("sidecar {e}"))?;
    if report.series.len() > MAX_SERIES_PER_MESSAGE {
        return Err(format!(
            "{} series in one message; at most {MAX_SERIES_PER_MESSAGE}",
            report.series.len()
        ));
    }
    for series in &report.series {
        switchboard_proto::keys::validate_namespace(&series.namespace)?;
        if series.version.is_empty()
            || series.version.len() > MAX_VERSION_LEN
            || !series
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "version {:?} of namespace {} is not a version id",
                series.version, series.namespace
            ));
        }
        if series.samples.len() > MAX_SAMPLES_PER_SERIES {
            return Err(format!(
                "{} samples of version {} in one message; at most {MAX_SAMPLES_PER_SERIES}",
                series.samples.len(),
                series.version
            ));
        }
        if let Some(sample) = series.samples.iter().find(|s| s.age_ms > MAX_AGE_MS) {
            return Err(format!(
                "a sample of version {} is {} ms old; at most {MAX_AGE_MS}",
                series.version, sample.age_ms
            ));
        }
    }
    if report.epochs.len() > MAX_SERIES_PER_MESSAGE {
        return Err(format!(
            "epochs of {} namespaces in one message; at most {MAX_SERIES_PER_MESSAGE}",
            report.epochs.len()
        ));
    }
    for said in &report.epochs {
        switchboard_proto::keys::validate_namespace(&said.namespace)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(age_ms: u64, ok: u64, errors: u64) -> pb::OutcomeSample {
        pb::OutcomeSample { age_ms, ok, errors }
    }

    fn report(
        sidecar: &str,
        started: u64,
        uptime_ms: u64,
        series: &[(&str, Vec<pb::OutcomeSample>)],
    ) -> pb::OutcomeReport {
        pb::OutcomeReport {
            sidecar: sidecar.into(),
            started_at_ms: started,
            uptime_ms,
            series: series
                .iter()
                .map(|(version, samples)| pb::OutcomeSeries {
                    namespace: "ns".into(),
                    version: (*version).into(),
                    samples: samples.clone(),
                })
                .collect(),
            epochs: Vec::new(),
        }
    }

    #[test]
    fn a_window_counts_only_what_happened_inside_it() {
        let mut series = Series::default();
        series.observe(1, 1_000, 10_000, 100, 1);
        series.observe(1, 1_000, 20_000, 150, 2);
        series.observe(1, 1_000, 30_000, 400, 10);
        assert_eq!(series.since(20_000), Counts { ok: 250, errors: 8 });
        assert_eq!(series.since(25_000), Counts { ok: 250, errors: 8 });
        // The sidecar started inside the window: everything it counted is in the window.
        assert_eq!(
            series.since(500),
            Counts {
                ok: 400,
                errors: 10
            }
        );
    }

    #[test]
    fn outcomes_from_before_the_window_are_never_counted() {
        // A new leader first hears of a sidecar that started long ago with 500 outcomes.
        let mut series = Series::default();
        series.observe(1, 1_000, 100_000, 500, 50);
        series.observe(1, 1_000, 101_000, 510, 51);
        assert_eq!(series.since(90_000), Counts { ok: 10, errors: 1 });
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero() {
        let mut series = Series::default();
        series.observe(1, 1_000, 10_000, 500, 50);
        series.observe(2, 9_000, 12_000, 20, 5);
        assert_eq!(series.since(5_000), Counts { ok: 20, errors: 5 });
    }

    #[test]
    fn pruning_keeps_the_base_of_the_window() {
        let mut series = Series::default();
        for second in 1..=100u64 {
            series.observe(1, 0, second * 1_000, second * 10, second);
        }
        series.prune(90_000);
        assert_eq!(
            series.since(90_000),
            Counts {
                ok: 100,
                errors: 10
            }
        );
        assert!(series.points.len() <= 11);
    }

    /// A sidecar that moves to a new leader sends its history again: the new leader counts the
    /// whole window, and the samples it already had are not counted twice.
    #[test]
    fn a_history_sent_again_is_counted_once() {
        let outcomes = Outcomes::new();
        // At 100 s: the sidecar (up 60 s) had 0 outcomes of v2 20 s ago, 100 (10 errors) 10 s
        // ago and 300 (30 errors) now.
        let history = vec![
            sample(20_000, 0, 0),
            sample(10_000, 90, 10),
            sample(0, 270, 30),
        ];
        let message = report("s1", 7, 60_000, &[("v2", history)]);
        outcomes.observe(&message, 100_000).expect("valid");
        let window = outcomes.window("ns", "v2", 85_000, 100_000);
        assert_eq!(
            window,
            Counts {
                ok: 270,
                errors: 30
            }
        );
        // The same history again a little later, with one new sample: 30 more outcomes.
        let mut again = message.clone();
        again.uptime_ms += 1_000;
        for sample in &mut again.series[0].samples {
            sample.age_ms += 1_003;
        }
        again.series[0].samples.push(sample(0, 300, 30));
        outcomes.observe(&again, 101_000).expect("valid");
        let window = outcomes.window("ns", "v2", 85_000, 101_000);
        assert_eq!(
            window,
            Counts {
                ok: 300,
                errors: 30
            }
        );
        // Only the part inside a shorter window counts.
        let recent = outcomes.window("ns", "v2", 95_000, 101_000);
        assert_eq!(
            recent,
            Counts {
                ok: 210,
                errors: 20
            }
        );
    }

    #[test]
    fn the_end_of_a_term_forgets_and_the_streams_are_told() {
        let outcomes = Outcomes::new();
        outcomes.set_leading(true);
        let leading = outcomes.leading();
        let message = report("s1", 7, 60_000, &[("v2", vec![sample(0, 10, 1)])]);
        outcomes.observe(&message, 100_000).expect("valid");
        assert_eq!(outcomes.series_count(), 1);
        outcomes.set_leading(false);
        assert!(!*leading.borrow());
        assert_eq!(outcomes.series_count(), 0);
        assert_eq!(outcomes.window("ns", "v2", 0, 100_000), Counts::default());
    }

    #[test]
    fn bad_messages_are_refused_whole_and_named() {
        let outcomes = Outcomes::new();
        let cases = [
            (report("", 1, 1, &[]), "must be 1 to 128"),
            (
                report("s1", 1, 1, &[("bad version!", vec![])]),
                "is not a version id",
            ),
            (
                report("s1", 1, 1, &[("v2", vec![sample(MAX_AGE_MS + 1, 1, 1)])]),
                "ms old",
            ),
        ];
        for (message, expected) in cases {
            let error = outcomes.observe(&message, 100_000).expect_err("refused");
            assert!(error.contains(expected), "{error}");
        }
        assert_eq!(outcomes.series_count(), 0);
    }

    #[test]
    fn a_sidecar_whose_stream_ended_long_ago_is_forgotten() {
        let outcomes = Outcomes::new();
        outcomes.opened("s1");
        let message = report("s1", 7, 60_000, &[("v2", vec![sample(0, 10, 1)])]);
        outcomes.observe(&message, 100_000).expect("valid");
        outcomes.closed("s1", 100_000);
        let soon = outcomes.window("ns", "v2", 0, 100_000 + KEEP_ENDED_MS);
        assert_eq!(soon, Counts { ok: 10, errors: 1 });
        let later = outcomes.window("ns", "v2", 0, 100_001 + KEEP_ENDED_MS);
        assert_eq!(later, Counts::default());
        assert_eq!(outcomes.series_count(), 0);
    }

    #[test]
    fn a_streamed_epoch_lasts_while_a_stream_of_its_sidecar_is_open() {
        let outcomes = Outcomes::new();
        let said = |sidecar: &str| {
            outcomes
                .with_streamed_epochs("ns", |epochs| epochs.and_then(|e| e.get(sidecar)).copied())
        };
        let mut changed = outcomes.epochs_changed();
        let mut message = report("s1", 1, 1, &[]);
        message.epochs = vec![pb::NamespaceEpoch {
            namespace: "ns".into(),
            epoch: 7,
        }];
        outcomes.opened("s1");
        outcomes.opened("s1");
        outcomes.observe(&message, 1_000).expect("accepted");
        assert_eq!(said("s1"), Some(7));
        assert!(changed.has_changed().expect("open"), "the waits are told");
        changed.borrow_and_update();
        // The same epoch again tells nobody.
        outcomes.observe(&message, 1_500).expect("accepted");
        assert!(!changed.has_changed().expect("open"));
        // One of two overlapping streams ends: the other still speaks for the sidecar.
        outcomes.closed("s1", 2_000);
        assert_eq!(said("s1"), Some(7));
        outcomes.closed("s1", 2_000);
        assert_eq!(said("s1"), None, "forgotten once no stream is open");

        outcomes.opened("s1");
        outcomes.observe(&message, 3_000).expect("accepted");
        outcomes.set_leading(false);
        assert_eq!(said("s1"), None, "forgotten at the end of the term");

        message.epochs[0].namespace = "../ns".into();
        assert!(outcomes.observe(&message, 4_000).is_err());
        assert_eq!(said("s1"), None, "a refused message says nothing");
    }
}
