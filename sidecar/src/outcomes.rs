//! The sidecar's side of the outcome stream (`ReportOutcomes`): the outcomes applications
//! report go to the leader's health judge over gRPC, not into etcd, so that etcd's write rate
//! does not grow with traffic (the health record in etcd says only what the sidecar serves).
//!
//! When reports arrive, the cumulative counters of each namespace and version are sampled, at
//! most every [`SAMPLE_EVERY`], and each change is kept with its time for [`HISTORY`]. A stream
//! to the leader starts with that history, so that a new leader has the recent window whole,
//! and then carries each new sample. The leader is found through etcd: the election names it,
//! and its replica key gives its URL. When the stream ends (the leader died, or its term ended
//! and it ended the stream), the sidecar looks the leader up again after [`RETRY_FIRST`],
//! and after longer pauses while it fails.
//! Every message also names the epoch each namespace is served from, and a routing applied
//! sends one at once: the leader's `flip --wait` then sees the flip applied without waiting
//! for this sidecar's health record to reach etcd (it still does; the record is the durable
//! acknowledgement, the stream the fast one).
//! Reads never wait for any of this: a sidecar without any coordinator serves as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use switchboard_proto::Keys;
use switchboard_proto::pb::{self, admin_client::AdminClient};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::loader::with_timeout;
use crate::namespace::Namespace;

/// Least time between two samples, and so between two messages of a stream.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long samples are kept for a new leader: the longest judge window a new leader sees
/// whole. (A longer window is whole again this long after a failover.)
pub const HISTORY: Duration = Duration::from_secs(300);
/// Pause before looking the leader up again after a stream ended or could not start: 1 to 2 s
/// the first time, doubling with each failure in a row up to 4 to 8 s, so that a fleet finds a
/// new leader within seconds and does not ask etcd every second while there is none.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MOST: Duration = Duration::from_secs(8);
/// Messages a stream may have queued before it is given up as too slow.
const QUEUED_MESSAGES: usize = 8;
/// Samples per series in one message: the history is split over messages this size.
const SAMPLES_PER_MESSAGE: usize = 1_024;

/// How the sidecar reaches the leader: the bearer token of a user with the `reporter` role when
/// the coordinator runs with `--auth`, and the CA that signed its certificate for https.
#[derive(Clone, Default)]
pub struct CoordinatorAccess {
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    /// The name to check the leader's certificate against, instead of its URL's host.
    pub tls_name: Option<String>,
}

/// One version's counters: each change (when, ok, errors), oldest first.
type Points = VecDeque<(Instant, u64, u64)>;

/// The sampled counters of every namespace and version, each change with its time.
#[derive(Default)]
pub struct History {
    /// Per (namespace, version).
    series: HashMap<(String, String), Points>,
}

impl History {
    /// Samples the counters at `now`. A version seen for the first time gets a zero point at
    /// `previous` (the sample before, or the start), when its counters were zero at the latest.
    pub fn sample(&mut self, namespaces: &[Arc<Namespace>], previous: Instant, now: Instant) {
        let mut reported = HashSet::new();
        for namespace in namespaces {
            for report in namespace.reports() {
                let key = (namespace.name.clone(), report.version.clone());
                let points = self
                    .series
                    .entry(key.clone())
                    .or_insert_with(|| VecDeque::from([(previous, 0, 0)]));
                if points
                    .back()
                    .is_some_and(|&(_, ok, errors)| (ok, errors) != (report.ok, report.errors))
                {
                    points.push_back((now, report.ok, report.errors));
                }
                reported.insert(key);
            }
        }
        // A version the namespace no longer counts goes. Of the others, older points go, but
        // the newest one before the horizon stays: it is the base of the oldest window the
        // history serves, and the counters' value since (they are cumulative).
        self.series.retain(|key, _| reported.contains(key));
        let horizon = now.checked_sub(HISTORY).unwrap_or(previous);
        for points in self.series.values_mut() {
            while points.len() > 1 && points.get(1).is_some_and(|(at, _, _)| *at <= horizon) {
                points.pop_front();
            }
        }
    }

    /// The messages that carry every point after `after` (all of them for `None`), with their
    /// ages at `now`.
    pub fn messages(
        &self,
        head: &pb::OutcomeReport,
        after: Option<Instant>,
        now: Instant,
    ) -> Vec<pb::OutcomeReport> {
        let mut messages = Vec::new();
        let mut current = head.clone();
        for ((namespace, version), points) in &self.series {
            let fresh: Vec<pb::OutcomeSample> = points
                .iter()
                .filter(|(at, _, _)| after.is_none_or(|after| *at > after))
                .map(|&(at, ok, errors)| pb::OutcomeSample {
                    age_ms: now.saturating_duration_since(at).as_millis() as u64,
                    ok,
                    errors,
                })
                .collect();
            for samples in fresh.chunks(SAMPLES_PER_MESSAGE) {
                if current.series.len() >= 64 {
                    messages.push(std::mem::replace(&mut current, head.clone()));
                }
                current.series.push(pb::OutcomeSeries {
                    namespace: namespace.clone(),
                    version: version.clone(),
                    samples: samples.to_vec(),
                });
            }
        }
        if !current.series.is_empty() {
            messages.push(current);
        }
        messages
    }
}

pub struct OutcomeStreamer {
    pub client: Client,
    pub keys: Keys,
    pub id: String,
    pub namespaces: Vec<Arc<Namespace>>,
    /// When this sidecar started, Unix ms: identifies its counters.
    pub started_at_ms: u64,
    pub access: CoordinatorAccess,
    /// Told when an application's report changed a count.
    pub reports_changed: Arc<Notify>,
    /// A connection to the leader to stream over, instead of one to the URL the leader
    /// publishes: for simulated fleets, whose sidecars share connections (the loadtest).
    pub channel: Option<tonic::transport::Channel>,
}

impl OutcomeStreamer {
    /// Samples and streams until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let started = Instant::now();
        let mut sampler = Sampler {
            history: History::default(),
            last: started,
        };
        let mut backoff = Backoff::new(&self.id, RETRY_FIRST, RETRY_MOST);
        while !shutdown.is_cancelled() {
            let attempted = Instant::now();
            match self.stream_once(&mut sampler, started, &shutdown).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::debug!(error = %format!("{error:#}"), "outcome stream ended; looking up the leader again")
                }
            }
            let pause = tokio::time::sleep(backoff.after(attempted.elapsed()));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut pause => break,
                    () = self.reports_changed.notified() => sampler.take(&self.namespaces).await,
                }
            }
        }
    }

    /// One stream to the leader, from its lookup to its end.
    async fn stream_once(
        &self,
        sampler: &mut Sampler,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let url = self.leader_url().await?;
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => self.connect(&url).await?,
        };
        let mut admin = AdminClient::new(channel);
        let (sender, receiver) = mpsc::channel(QUEUED_MESSAGES);
        // Subscribed before the first message is built, so that a routing applied meanwhile
        // is sent after it.
        let mut routings = futures::stream::select_all(self.namespaces.iter().map(|namespace| {
            tokio_stream::wrappers::WatchStream::from_changes(namespace.subscribe())
        }));
        let head = |now: Instant| pb::OutcomeReport {
            sidecar: self.id.clone(),
            started_at_ms: self.started_at_ms,
            uptime_ms: now.saturating_duration_since(started).as_millis() as u64,
            series: Vec::new(),
            epochs: self.epochs(),
        };
        // The whole history first (at least one message, so that the leader knows the stream
        // at once), then what each sample adds.
        let now = Instant::now();
        let mut sent_up_to = now;
        let mut first = sampler.history.messages(&head(now), None, now);
        if first.is_empty() {
            first.push(head(now));
        }
        let mut epochs_sent = first.last().map(|m| m.epochs.clone()).unwrap_or_default();
        let mut epochs_owed = false;
        for message in first {
            sender.try_send(message)?;
        }
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        if let Some(token) = &self.access.token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let call = admin.report_outcomes(request);
        tokio::pin!(call);
        tracing::info!(leader = %url, "streaming outcomes to the leader");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some(_) = futures::StreamExt::next(&mut routings) => {
                    epochs_owed = self.epochs() != epochs_sent;
                }
                // A new epoch goes as soon as the queue has room. Unlike samples it has no
                // later message to ride on when applications report nothing, and a leader
                // busy with a fleet's flip is not a reason to give up the stream.
                Ok(permit) = sender.reserve(), if epochs_owed => {
                    let message = head(Instant::now());
                    epochs_sent = message.epochs.clone();
                    epochs_owed = false;
                    permit.send(message);
                }
                ended = &mut call => {
                    return match ended {
                        Ok(_) => Ok(()),
                        Err(status) => Err(anyhow::anyhow!("{}: {}", status.code(), status.message())),
                    };
                }
                () = self.reports_changed.notified() => {
                    sampler.take(&self.namespaces).await;
                    let now = Instant::now();
                    let messages = sampler.history.messages(&head(now), Some(sent_up_to), now);
                    // A leader that does not keep up gets these samples with the next ones,
                    // once its queue has room: nothing is lost, no queue grows, and a busy
                    // leader is not sent the whole history again.
                    if sender.capacity() < messages.len() {
                        continue;
                    }
                    // These carry the epochs as they are now (a routing applied since wakes
                    // the routings branch again).
                    if let Some(last) = messages.last() {
                        epochs_sent = last.epochs.clone();
                        epochs_owed = false;
                    }
                    for message in messages {
                        sender.try_send(message)?;
                    }
                    sent_up_to = sampler.last;
                }
            }
        }
    }

    /// The epoch of the routing each namespace is served from now.
    fn epochs(&self) -> Vec<pb::NamespaceEpoch> {
        self.namespaces
            .iter()
            .filter_map(|namespace| {
                Some(pb::NamespaceEpoch {
                    namespace: namespace.name.clone(),
                    epoch: namespace.current()?.routing.epoch,
                })
            })
            .collect()
    }

    /// A connection to the leader at `url`, over TLS when a CA is given.
    async fn connect(&self, url: &str) -> anyhow::Result<tonic::transport::Channel> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // A leader whose host vanished without a word is noticed within seconds.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(ca) = &self.access.ca_pem {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            if let Some(name) = &self.access.tls_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint.connect().await?)
    }

    /// The leader's URL: the election names it, its replica key says where it is.
    async fn leader_url(&self) -> anyhow::Result<String> {
        let mut client = self.client.clone();
        let leader = with_timeout(client.leader(self.keys.leader())).await?;
        let id = leader
            .kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .ok_or_else(|| anyhow::anyhow!("no coordinator leads"))?;
        let response = with_timeout(client.get(self.keys.replica(&id), None)).await?;
        let url = response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .ok_or_else(|| anyhow::anyhow!("the leader {id} published no address"))?;
        Ok(url)
    }
}

/// The history and when it was last sampled.
struct Sampler {
    history: History,
    last: Instant,
}

impl Sampler {
    /// Samples now, or once [`SAMPLE_EVERY`] has passed since the last sample: a burst of
    /// reports makes one sample.
    async fn take(&mut self, namespaces: &[Arc<Namespace>]) {
        let due = self.last + SAMPLE_EVERY;
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        self.history.sample(namespaces, self.last, now);
        self.last = now;
    }
}
