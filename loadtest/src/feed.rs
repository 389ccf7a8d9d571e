//! The `feed` scenario: how fast applications hear of a change through their sidecar, and
//! what OFREP costs beside a plain read.
//!
//! - **Fan-out**: one sidecar process with S subscribers of its change feed (SSE, one
//!   connection and one consumer each) and P long polls of one item, and repeated flips. Each
//!   subscriber's latency runs from the instant the sidecar applied the flip (the event's
//!   `applied_at_us`, stamped by the sidecar) to the instant the subscriber read the event; each
//!   long poll's from the same instant to its answer. Beside it, in the same run, one
//!   subscriber alone.
//! - **End to end**: N sidecar processes with one subscriber each, and repeated flips: from the
//!   routing commit (`at_ms`, which the coordinator stamps just before its transaction; 1 ms
//!   resolution) to each subscriber reading the event, beside commit to applied for the same
//!   flips and sidecars.
//! - **OFREP**: single flag evaluations (`POST /ofrep/v1/evaluate/flags/{key}`) against plain
//!   GETs of the same item at saturation, same connections, same run.
//!
//! Every process shares this machine's two cores with the subscribers, which a fleet of
//! applications on their own hosts does not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use switchboard_proto::time::now_us;
use switchboard_tests::{Sidecar, TestEnv, wait_until};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::load::{self, RunResult};
use crate::stats::Latency;

pub const NAMESPACE: &str = "bench";
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// Subscribers of one sidecar's feed.
    pub subscribers: usize,
    /// Long polls on the same sidecar.
    pub long_polls: usize,
    /// Sidecar processes of the end-to-end run.
    pub sidecars: usize,
    pub flips: usize,
    /// Items in each of the two sets.
    pub items: usize,
    /// Seconds of each OFREP and GET run.
    pub seconds: f64,
    pub connections: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedReport {
    pub items: usize,
    pub flips: usize,
    /// Applied to notified, one subscriber alone.
    pub one_subscriber: Latency,
    pub subscribers: usize,
    /// Applied to notified, each of `subscribers` on one sidecar.
    pub fan_out: Latency,
    pub long_polls: usize,
    /// Applied to answered, each long poll.
    pub long_poll: Latency,
    pub sidecars: usize,
    /// Commit to applied, each sidecar of the end-to-end run.
    pub commit_to_applied: Latency,
    /// Commit to notified, each sidecar's subscriber.
    pub end_to_end: Latency,
    pub item_get: RunResult,
    pub ofrep: RunResult,
}

/// A subscriber read the event of `epoch`, which its sidecar applied at `applied_at_us`, at
/// `at_us`.
#[derive(Clone, Copy, Debug)]
struct Notified {
    subscriber: usize,
    epoch: u64,
    applied_at_us: u64,
    at_us: u64,
}

#[derive(Deserialize)]
struct EventHead {
    epoch: u64,
    applied_at_us: u64,
    initial: bool,
}

/// Subscribes to `addr`'s change feed as consumer `app-{index}` on a connection of its own;
/// sends every event after the first to `notified`. Ends with `stop`.
fn subscribe(
    addr: SocketAddr,
    index: usize,
    notified: mpsc::UnboundedSender<Notified>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("/v1/ns/{NAMESPACE}/events"))
            .header(hyper::header::HOST, addr.to_string())
            .header("x-switchboard-consumer", format!("app-{index}"))
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("subscriber {index}: HTTP {}", response.status());
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        loop {
            let frame = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                frame = body.frame() => frame,
            };
            let Some(frame) = frame else {
                bail!("subscriber {index}: the feed ended");
            };
            let at_us = now_us();
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let Some(json) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue;
                };
                let head: EventHead = serde_json::from_str(json.trim())
                    .with_context(|| format!("subscriber {index}: an event that does not parse"))?;
                if !head.initial {
                    let _ = notified.send(Notified {
                        subscriber: index,
                        epoch: head.epoch,
                        applied_at_us: head.applied_at_us,
                        at_us,
                    });
                }
            }
        }
    })
}

/// Long-polls one item of `addr` as consumer `poll-{index}`: each answer (a new version) is
/// sent to `answered` with the epoch it names, and the next poll waits for the one after.
fn long_poll(
    addr: SocketAddr,
    index: usize,
    answered: mpsc::UnboundedSender<Notified>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let path = format!("/v1/ns/{NAMESPACE}/items/{}?wait=30", catalog::key(0));
        let mut etag = String::from("\"none\"");
        loop {
            let request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, addr.to_string())
                .header(hyper::header::IF_NONE_MATCH, etag.as_str())
                .body(Empty::<Bytes>::new())?;
            let response = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                response = sender.send_request(request) => response?,
            };
            let at_us = now_us();
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let (new_etag, epoch) = (header("etag"), header("x-switchboard-epoch"));
            response.into_body().collect().await?;
            if status == hyper::StatusCode::OK {
                // The first answer only gives the poll its tag.
                if etag != "\"none\"" {
                    let _ = answered.send(Notified {
                        subscriber: index,
                        epoch: epoch.parse().unwrap_or(0),
                        applied_at_us: 0,
                        at_us,
                    });
                }
                etag = new_etag;
            } else if status != hyper::StatusCode::NOT_MODIFIED {
                bail!("long poll {index}: HTTP {status}");
            }
        }
    })
}

/// Flips once and returns the new epoch and its commit time (µs).
async fn flip(env: &TestEnv) -> Result<(u64, u64)> {
    let change = env.sbctl().run_json(&["flip", NAMESPACE]).await?;
    let epoch = change["routing"]["epoch"]
        .as_u64()
        .context("flip answered without routing.epoch")?;
    let at_ms = change["routing"]["at_ms"]
        .as_u64()
        .context("flip answered without routing.at_ms")?;
    Ok((epoch, at_ms * 1000))
}

/// Waits until `count` distinct listeners have reported `epoch`; returns their reports.
async fn heard(
    rx: &mut mpsc::UnboundedReceiver<Notified>,
    epoch: u64,
    count: usize,
    what: &str,
) -> Result<Vec<Notified>> {
    let mut seen: HashMap<usize, Notified> = HashMap::new();
    wait_until(DEADLINE, what, async || {
        while let Ok(notified) = rx.try_recv() {
            if notified.epoch == epoch {
                seen.entry(notified.subscriber).or_insert(notified);
            }
        }
        Ok(seen.len() >= count)
    })
    .await?;
    Ok(seen.into_values().collect())
}

/// Starts `count` subscribers of `sidecar` numbered from `first`, and waits until each has
/// its first event (so the flips that follow find every one of them listening).
async fn subscribers(
    sidecar: SocketAddr,
    first: usize,
    count: usize,
    stop: &CancellationToken,
) -> Result<(
    mpsc::UnboundedReceiver<Notified>,
    Vec<tokio::task::JoinHandle<Result<()>>>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = (first..first + count)
        .map(|index| subscribe(sidecar, index, tx.clone(), stop.clone()))
        .collect();
    Ok((rx, tasks))
}

/// Flips `flips` times and measures, for every flip, applied to notified for every listener
/// on `rx` (`count` of them).
async fn measure_fan_out(
    env: &TestEnv,
    rx: &mut mpsc::UnboundedReceiver<Notified>,
    count: usize,
    flips: usize,
    mut polls: Option<(&mut mpsc::UnboundedReceiver<Notified>, usize, &mut Vec<u64>)>,
) -> Result<Latency> {
    let mut samples = Vec::new();
    for _ in 0..flips {
        let (epoch, _) = flip(env).await?;
        let notified = heard(rx, epoch, count, "every subscriber to hear of the flip").await?;
        let applied = notified.first().map_or(0, |n| n.applied_at_us);
        samples.extend(
            notified
                .iter()
                .map(|n| n.at_us.saturating_sub(n.applied_at_us)),
        );
        if let Some((poll_rx, polls, poll_samples)) = polls.as_mut() {
            let answered = heard(poll_rx, epoch, *polls, "every long poll to answer").await?;
            poll_samples.extend(answered.iter().map(|n| n.at_us.saturating_sub(applied)));
        }
    }
    Ok(Latency::from_samples(&mut samples))
}

pub async fn run(config: &FeedConfig, work: &std::path::Path) -> Result<FeedReport> {
    raise_descriptor_limit(config.subscribers + config.long_polls + 1_000)?;
    let env = TestEnv::start(&[NAMESPACE]).await?;
    let sbctl = env.sbctl();
    for (name, changed) in [("v1", false), ("v2", true)] {
        let path = work.join(format!("feed-{name}.json"));
        let changed = changed.then(|| vec![true; config.items]);
        catalog::write(&path, config.items, changed.as_deref())?;
        catalog::stage(&sbctl, NAMESPACE, &path, "feed benchmark").await?;
        if name == "v1" {
            sbctl.run(&["flip", NAMESPACE]).await?.ensure_success()?;
        }
    }
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();

    // Fan-out on one sidecar: one subscriber first, then all of them with the long polls.
    let sidecar = env.start_sidecar("bench-feed").await?;
    sidecar.wait_ready(DEADLINE).await?;
    eprintln!("feed: one subscriber, {} flips", config.flips);
    let (mut rx, _one) = subscribers(sidecar.http_addr(), 0, 1, &stop).await?;
    // A first flip makes sure it listens before anything is measured.
    let (epoch, _) = flip(&env).await?;
    heard(&mut rx, epoch, 1, "the subscriber to listen").await?;
    let one_subscriber = measure_fan_out(&env, &mut rx, 1, config.flips, None).await?;

    eprintln!(
        "feed: {} subscribers and {} long polls, {} flips",
        config.subscribers, config.long_polls, config.flips
    );
    let (mut rx, _many) = subscribers(sidecar.http_addr(), 1, config.subscribers, &stop).await?;
    let (poll_tx, mut poll_rx) = mpsc::unbounded_channel();
    let _polls: Vec<_> = (0..config.long_polls)
        .map(|index| long_poll(sidecar.http_addr(), index, poll_tx.clone(), stop.clone()))
        .collect();
    let (epoch, _) = flip(&env).await?;
    heard(
        &mut rx,
        epoch,
        config.subscribers,
        "every subscriber to listen",
    )
    .await?;
    heard(
        &mut poll_rx,
        epoch,
        config.long_polls,
        "every long poll to wait",
    )
    .await?;
    let mut poll_samples = Vec::new();
    let fan_out = measure_fan_out(
        &env,
        &mut rx,
        config.subscribers,
        config.flips,
        Some((&mut poll_rx, config.long_polls, &mut poll_samples)),
    )
    .await?;
    let long_poll = Latency::from_samples(&mut poll_samples);

    // OFREP beside plain GETs of the same item, on the same sidecar.
    eprintln!("feed: OFREP single evaluations beside item GETs");
    let key = catalog::key(config.items / 2);
    let get = load::http_get(
        sidecar.http_addr(),
        &format!("/v1/ns/{NAMESPACE}/items/{key}"),
    );
    let ofrep = load::http_post_json(
        sidecar.http_addr(),
        &format!("/ofrep/v1/evaluate/flags/{key}"),
        r#"{"context":{"targetingKey":"app-1"}}"#,
    );
    let duration = Duration::from_secs_f64(config.seconds);
    let warmup = Duration::from_secs_f64((config.seconds / 5.0).max(0.5));
    load::saturate(&get, config.connections, warmup).await?;
    let item_get = load::saturate(&get, config.connections, duration).await?;
    load::saturate(&ofrep, config.connections, warmup).await?;
    let ofrep = load::saturate(&ofrep, config.connections, duration).await?;
    for (name, run) in [("GET", &item_get), ("OFREP", &ofrep)] {
        if run.errors > 0 {
            bail!(
                "{name}: {} of {} requests failed",
                run.errors,
                run.errors + run.completed
            );
        }
    }
    stop.cancel();
    drop(sidecar);

    // End to end across many sidecars, one subscriber each.
    eprintln!("feed: {} sidecars, one subscriber each", config.sidecars);
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let mut sidecars: Vec<Sidecar> = Vec::new();
    for index in 0..config.sidecars {
        sidecars.push(env.start_sidecar(&format!("bench-feed-{index:04}")).await?);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut listening = Vec::with_capacity(sidecars.len());
    for (index, sidecar) in sidecars.iter().enumerate() {
        sidecar.wait_ready(DEADLINE).await?;
        listening.push(subscribe(
            sidecar.http_addr(),
            index,
            tx.clone(),
            stop.clone(),
        ));
    }
    let (epoch, _) = flip(&env).await?;
    heard(
        &mut rx,
        epoch,
        config.sidecars,
        "every sidecar's subscriber to listen",
    )
    .await?;
    let (mut applied, mut notified) = (Vec::new(), Vec::new());
    for _ in 0..config.flips {
        let (epoch, at_us) = flip(&env).await?;
        let heard = heard(
            &mut rx,
            epoch,
            config.sidecars,
            "every subscriber to hear of the flip",
        )
        .await?;
        applied.extend(heard.iter().map(|n| n.applied_at_us.saturating_sub(at_us)));
        notified.extend(heard.iter().map(|n| n.at_us.saturating_sub(at_us)));
    }
    stop.cancel();
    Ok(FeedReport {
        items: config.items,
        flips: config.flips,
        one_subscriber,
        subscribers: config.subscribers,
        fan_out,
        long_polls: config.long_polls,
        long_poll,
        sidecars: config.sidecars,
        commit_to_applied: Latency::from_samples(&mut applied),
        end_to_end: Latency::from_samples(&mut notified),
        item_get,
        ofrep,
    })
}

/// Raises this process's descriptor limit to its hard limit, which must allow `needed`.
fn raise_descriptor_limit(needed: usize) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    if (hard as usize) < needed {
        bail!("the feed scenario needs {needed} file descriptors; the hard limit is {hard}");
    }
    Ok(())
}

pub fn render(report: &FeedReport) -> String {
    let row = |name: String, latency: &Latency, baseline: &str| {
        format!(
            "| {name} | {:.1} / {:.1} / {:.1} / {:.1} | {} | {baseline} |\n",
            latency.p50_ms(),
            latency.p99_ms(),
            latency.p999_ms(),
            latency.max_ms(),
            latency.count,
        )
    };
    let mut out = format!(
        "feed: {} flips per row between two sets of {} items, every item changed. Fan-out and long polls are measured from the instant the sidecar applied the flip; end to end from the routing commit (1 ms resolution).\n\n\
         | listeners | p50 / p99 / p99.9 / max ms | samples | baseline in the same run |\n|---|---|---:|---|\n",
        report.flips, report.items
    );
    out.push_str(&row(
        "1 subscriber, one sidecar (applied to notified)".into(),
        &report.one_subscriber,
        "",
    ));
    out.push_str(&row(
        format!(
            "{} subscribers, one sidecar (applied to notified)",
            report.subscribers
        ),
        &report.fan_out,
        &format!("1 subscriber: p99 {:.1} ms", report.one_subscriber.p99_ms()),
    ));
    out.push_str(&row(
        format!(
            "{} long polls, same sidecar (applied to answered)",
            report.long_polls
        ),
        &report.long_poll,
        &format!("subscribers: p99 {:.1} ms", report.fan_out.p99_ms()),
    ));
    out.push_str(&row(
        format!("{} sidecars, commit to applied", report.sidecars),
        &report.commit_to_applied,
        "",
    ));
    out.push_str(&row(
        format!(
            "{} sidecars, commit to notified (one subscriber each)",
            report.sidecars
        ),
        &report.end_to_end,
        &format!(
            "commit to applied: p99 {:.1} ms",
            report.commit_to_applied.p99_ms()
        ),
    ));
    out.push_str(&format!(
        "\n| read of one item, {} connections, saturation | requests/s | p50 / p99 ms |\n|---|---:|---|\n\
         | `GET /v1/ns/{NAMESPACE}/items/KEY` (baseline) | {:.0} | {:.2} / {:.2} |\n\
         | `POST /ofrep/v1/evaluate/flags/KEY` | {:.0} ({:.0}% of GET) | {:.2} / {:.2} |\n",
        report.item_get.connections,
        report.item_get.achieved_rps,
        report.item_get.latency.p50_ms(),
        report.item_get.latency.p99_ms(),
        report.ofrep.achieved_rps,
        100.0 * report.ofrep.achieved_rps / report.item_get.achieved_rps.max(1.0),
        report.ofrep.latency.p50_ms(),
        report.ofrep.latency.p99_ms(),
    ));
    out
}
