//! The `propagation` scenario: N sidecars in this process, each with its own etcd connection and
//! watch (the sidecar's real sync loop, without its servers), and repeated flips; the time from
//! the routing commit to each sidecar serving it. Beside it, in the same run and over the same
//! connections, the raw etcd watch delivery latency to the same number of watchers.
//!
//! Flip latency is measured from the routing's `at_ms`, which the coordinator stamps just before
//! its transaction, to the instant a sidecar's new snapshot is published; the raw watch from just
//! before the put to the delivery. `at_ms` has millisecond resolution, so flip latencies read up
//! to 1 ms high.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use switchboard_proto::Keys;
use switchboard_proto::time::{now_ms, now_us};
use switchboard_sidecar::namespace::Namespace;
use switchboard_sidecar::sync::NamespaceSync;
use switchboard_tests::{TestEnv, wait_until};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::stats::Latency;

pub const NAMESPACE: &str = "bench";
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct PropagationConfig {
    pub sidecar_counts: Vec<usize>,
    pub flips: usize,
    pub items: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PropagationReport {
    pub items: usize,
    pub flips: usize,
    pub rows: Vec<PropagationRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PropagationRow {
    pub sidecars: usize,
    /// Commit to serving, one sample per sidecar and flip, with both sets held.
    pub flip: Latency,
    /// The first flip to the newly staged set, which every sidecar loads from etcd first. Only
    /// in the first row: the sidecars of later rows start while the previous set bakes, and
    /// load it at start.
    pub first_flip: Option<Latency>,
    /// Per flip, the last sidecar's time minus the first's.
    pub flip_spread: Latency,
    /// Put to delivery, one sample per watcher and put.
    pub raw_watch: Latency,
    pub raw_watch_spread: Latency,
    /// Seconds until every sidecar had loaded and served the first routing.
    pub initial_load_seconds: f64,
}

/// When each sidecar first served each epoch, in µs since the Unix epoch.
type Served = mpsc::UnboundedSender<(usize, u64, u64)>;

pub async fn run(config: &PropagationConfig, work: &std::path::Path) -> Result<PropagationReport> {
    let env = TestEnv::start(&[NAMESPACE]).await?;
    let sbctl = env.sbctl();
    for (name, revision) in [("v1", None), ("v2", Some(()))] {
        let path = work.join(format!("propagation-{name}.json"));
        let changed = revision.map(|()| vec![true; config.items]);
        catalog::write(&path, config.items, changed.as_deref())?;
        catalog::stage(&sbctl, NAMESPACE, &path, "propagation").await?;
        if name == "v1" {
            sbctl.run(&["flip", NAMESPACE]).await?.ensure_success()?;
        }
    }
    let mut rows = Vec::new();
    for &count in &config.sidecar_counts {
        eprintln!("propagation: {count} sidecars");
        rows.push(measure(&env, config, count, rows.is_empty()).await?);
    }
    Ok(PropagationReport {
        items: config.items,
        flips: config.flips,
        rows,
    })
}

async fn measure(
    env: &TestEnv,
    config: &PropagationConfig,
    count: usize,
    first_row: bool,
) -> Result<PropagationRow> {
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let (served_tx, mut served_rx) = mpsc::unbounded_channel();
    let keys = Keys::new(env.prefix());
    let endpoint = env.etcd_endpoints();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(count);
    for index in 0..count {
        let client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .with_context(|| format!("connecting sidecar {index} to etcd"))?;
        clients.push(client.clone());
        start_sidecar(index, client, keys.clone(), served_tx.clone(), &stop);
    }
    drop(served_tx);
    let mut latest: HashMap<usize, u64> = HashMap::new();
    let current = catalog::epoch(&env.sbctl(), NAMESPACE).await?;
    wait_until(
        DEADLINE,
        "every sidecar to serve the current routing",
        async || {
            while let Ok((sidecar, epoch, _)) = served_rx.try_recv() {
                latest.insert(sidecar, epoch);
            }
            Ok(latest.values().filter(|&&e| e >= current).count() == count)
        },
    )
    .await?;
    let initial_load_seconds = started.elapsed().as_secs_f64();

    // The first flip makes every sidecar load the other set from etcd; later ones find both
    // sets held (the previous one stays loaded during the bake time), as after a preload.
    let mut first_flip = Vec::new();
    let mut flip_samples = Vec::new();
    let mut flip_spreads = Vec::new();
    for flip in 0..=config.flips {
        let change = env.sbctl().run_json(&["flip", NAMESPACE]).await?;
        let epoch = change["routing"]["epoch"]
            .as_u64()
            .context("flip answered without routing.epoch")?;
        let at_us = change["routing"]["at_ms"]
            .as_u64()
            .context("flip answered without routing.at_ms")?
            * 1000;
        let mut first_seen: HashMap<usize, u64> = HashMap::new();
        wait_until(DEADLINE, "every sidecar to serve the flip", async || {
            while let Ok((sidecar, served_epoch, at)) = served_rx.try_recv() {
                if served_epoch >= epoch {
                    first_seen.entry(sidecar).or_insert(at);
                }
            }
            Ok(first_seen.len() == count)
        })
        .await?;
        let times: Vec<u64> = first_seen.values().copied().collect();
        let latencies = times.iter().map(|&t| t.saturating_sub(at_us));
        if flip == 0 {
            first_flip.extend(latencies);
        } else {
            flip_samples.extend(latencies);
            flip_spreads.push(spread(&times));
        }
    }

    let raw = raw_watch(env, &clients, config.flips).await?;
    stop.cancel();
    Ok(PropagationRow {
        sidecars: count,
        flip: Latency::from_samples(&mut flip_samples),
        first_flip: first_row.then(|| Latency::from_samples(&mut first_flip)),
        flip_spread: Latency::from_samples(&mut flip_spreads),
        raw_watch: raw.0,
        raw_watch_spread: raw.1,
        initial_load_seconds,
    })
}

fn spread(times: &[u64]) -> u64 {
    let (min, max) = times
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    max.saturating_sub(min)
}

/// One sidecar's sync loop, and a task that notes when each snapshot is published.
fn start_sidecar(
    index: usize,
    client: etcd_client::Client,
    keys: Keys,
    served: Served,
    stop: &CancellationToken,
) {
    let namespace = Namespace::new(NAMESPACE);
    let mut snapshots = namespace.subscribe();
    let sync = NamespaceSync::new(client, keys, namespace, Arc::new(Notify::new()));
    tokio::spawn(sync.run(stop.clone()));
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
            }
            let at = now_us();
            let epoch = snapshots
                .borrow_and_update()
                .as_ref()
                .map_or(0, |s| s.routing.epoch);
            if served.send((index, epoch, at)).is_err() {
                return;
            }
        }
    });
}

/// Puts a key `puts` times while every client watches it: put-to-delivery latency and spread.
async fn raw_watch(
    env: &TestEnv,
    clients: &[etcd_client::Client],
    puts: usize,
) -> Result<(Latency, Latency)> {
    let key = format!("{}/bench-raw-watch/{}", env.prefix(), now_ms());
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, u64)>();
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let mut ready = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        let (key, tx, stop) = (key.clone(), tx.clone(), stop.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tokio::spawn(async move {
            let Ok(mut stream) = client.watch(key.as_str(), None).await else {
                return;
            };
            let _ = ready_tx.send(());
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    message = stream.message() => message,
                };
                let Ok(Some(message)) = message else { return };
                let at = now_us();
                for event in message.events() {
                    let sequence = event
                        .kv()
                        .and_then(|kv| std::str::from_utf8(kv.value()).ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if let Some(sequence) = sequence {
                        let _ = tx.send((index, sequence, at));
                    }
                }
            }
        });
    }
    drop(tx);
    for (index, ready) in ready.into_iter().enumerate() {
        if ready.await.is_err() {
            bail!("raw watcher {index} could not start its watch");
        }
    }
    let mut writer = env.etcd_client().await?;
    let mut samples = Vec::new();
    let mut spreads = Vec::new();
    for sequence in 0..puts as u64 {
        let before = now_us();
        writer.put(key.as_str(), sequence.to_string(), None).await?;
        let mut seen: HashMap<usize, u64> = HashMap::new();
        wait_until(DEADLINE, "every watcher to see the put", async || {
            while let Ok((watcher, got, at)) = rx.try_recv() {
                if got == sequence {
                    seen.entry(watcher).or_insert(at);
                }
            }
            Ok(seen.len() == clients.len())
        })
        .await?;
        let times: Vec<u64> = seen.values().copied().collect();
        samples.extend(times.iter().map(|&t| t.saturating_sub(before)));
        spreads.push(spread(&times));
    }
    Ok((
        Latency::from_samples(&mut samples),
        Latency::from_samples(&mut spreads),
    ))
}

pub fn render(report: &PropagationReport) -> String {
    let mut out = format!(
        "propagation: {} flips per row after a first one, sets of {} items; commit to serving per sidecar, beside raw etcd watch delivery to as many watchers. \
         The first flip to a newly staged set includes every sidecar loading it from etcd (first row only: later rows start while the previous set bakes, so their sidecars hold it from the start); later flips find both sets held.\n\n\
         | sidecars | flip p50 / p99 / max ms | raw watch p50 / p99 / max ms | flip p99 / raw p99 | flip spread p50 / max ms | first flip (loads the set) p50 / max ms | initial load s |\n\
         |---:|---|---|---:|---|---|---:|\n",
        report.flips, report.items
    );
    for row in &report.rows {
        out.push_str(&format!(
            "| {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.2}x | {:.1} / {:.1} | {} | {:.1} |\n",
            row.sidecars,
            row.flip.p50_ms(),
            row.flip.p99_ms(),
            row.flip.max_ms(),
            row.raw_watch.p50_ms(),
            row.raw_watch.p99_ms(),
            row.raw_watch.max_ms(),
            row.flip.p99_us as f64 / row.raw_watch.p99_us.max(1) as f64,
            row.flip_spread.p50_ms(),
            row.flip_spread.max_ms(),
            row.first_flip.as_ref().map_or_else(
                || "held already".to_string(),
                |first| format!("{:.1} / {:.1}", first.p50_ms(), first.max_ms())
            ),
            row.initial_load_seconds,
        ));
    }
    out
}
