//! The `feed` scenario: how fast applications hear of a change through their sidecar, and
//! what OFREP costs beside a plain read.
//!
//! - **Fan-out**: one sidecar process with S subscribers of its change feed (SSE, one
//!   connection and one consumer each), and repeated flips. Each subscriber's latency runs from
//!   the instant the sidecar applied the flip (the event's `applied_at_us`, stamped by the
//!   sidecar) to the instant the subscriber read the event. Beside it, in the same run, one
//!   subscriber alone.
//! - **Long polls**: then P long polls of one item join the S subscribers on the same sidecar,
//!   for more flips: each poll's latency runs from the same instant to its answer, and the
//!   subscribers are measured again beside them (a long poll's answer and the next poll it
//!   sends cost the sidecar more than an event).
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
    /// Between flips, as between releases: a flip's background work on every sidecar (its
    /// health record and disk copy, put off until 100 ms after the commit) would otherwise land
    /// on the next flip.
    pub pause: Duration,
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
    /// Applied to notified, each of `subscribers`, while the long polls wait beside them.
    #[serde(default)]
    pub fan_out_beside_long_polls: Option<Latency>,
    /// Applied to answered, each long poll.
    pub long_poll: Latency,
    pub sidecars: usize,
    /// Between flips, in ms.
    #[serde(default)]
    pub pause_ms: u64,
    /// Commit to applied, each sidecar of the end-to-end run.
    pub commit_to_applied: Latency,
    /// Commit to notified, each sidecar's subscriber.
    pub end_to_end: Latency,
    /// Per flip, in order: commit to the last subscriber notified, in ms.
    #[serde(default)]
    pub last_notified_per_flip_ms: Vec<f64>,
    /// The same for the two flips before the measured ones, on which every sidecar loads the
    /// other set from etcd.
    #[serde(default)]
    pub warmup_last_notified_ms: Vec<f64>,
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
    /// The feed's first event: the subscriber listens from now on.
    initial: bool,
}

/// The fields of an event that the subscribers measure by.
struct EventHead {
    epoch: u64,
    applied_at_us: u64,
    initial: bool,
}

impl EventHead {
    /// Reads the fields from the start of the event's JSON (the envelope comes before the key
    /// lists) without parsing the rest: a thousand subscribers share this machine's cores with
    /// the sidecar they measure.
    fn read(json: &[u8]) -> Option<Self> {
        let envelope = &json[..json.len().min(512)];
        let number = |name: &[u8]| -> Option<u64> {
            let start = find(envelope, name)? + name.len();
            let digits = envelope[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
            Some(digits)
        };
        Some(Self {
            epoch: number(b"\"epoch\":")?,
            applied_at_us: number(b"\"applied_at_us\":")?,
            initial: find(envelope, b"\"initial\":true").is_some(),
        })
    }
}

/// Subscribes to `addr`'s change feed as consumer `app-{index}` on a connection of its own;
/// sends every event to `notified`. Ends with `stop`.
///
/// The subscriber reads the raw bytes of the response itself, with one task and one buffer:
/// a thousand of them share the sidecar's two cores, and an HTTP client's per-connection task
/// and body channel would double the wake-ups the measurement pays for. Each event is one
/// chunk of the chunked body, so the chunk-size lines fall between events, never inside one.
fn subscribe(
    addr: SocketAddr,
    index: usize,
    notified: mpsc::UnboundedSender<Notified>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET /v1/ns/{NAMESPACE}/events HTTP/1.1\r\nHost: {addr}\r\nX-Switchboard-Consumer: app-{index}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut head_read = false;
        loop {
            let read = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                read = stream.read_buf(&mut buffer) => read?,
            };
            if read == 0 {
                bail!("subscriber {index}: the feed ended");
            }
            let at_us = now_us();
            if !head_read {
                let Some(end) = find(&buffer, b"\r\n\r\n") else {
                    continue;
                };
                if !buffer.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "subscriber {index}: {}",
                        String::from_utf8_lossy(&buffer[..end])
                    );
                }
                buffer.drain(..end + 4);
                head_read = true;
            }
            let mut consumed = 0;
            while let Some(end) = find_event_end(&buffer[consumed..]) {
                let event = &buffer[consumed..consumed + end];
                consumed += end + 2;
                let Some(data) = find(event, b"data: ") else {
                    continue;
                };
                let head = EventHead::read(&event[data + 6..])
                    .with_context(|| format!("subscriber {index}: an event without its epoch"))?;
                let _ = notified.send(Notified {
                    subscriber: index,
                    epoch: head.epoch,
                    applied_at_us: head.applied_at_us,
                    at_us,
                    initial: head.initial,
                });
            }
            buffer.drain(..consumed);
        }
    })
}

/// Where `needle` first occurs in `haystack`: for the short slices (a response head, an
/// event's envelope) where building a searcher would cost more than the search.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where the first event of `buffer` ends (its blank line), with a SIMD searcher built once:
/// a thousand subscribers scan every event, of kilobytes, on the cores of the sidecar they
/// measure.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    static EVENT_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));
    EVENT_END.find(buffer)
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
                        initial: false,
                    });
                } else {
                    // The first answer: the poll waits for changes from now on.
                    let _ = answered.send(Notified {
                        subscriber: index,
                        epoch: 0,
                        applied_at_us: 0,
                        at_us,
                        initial: true,
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

/// Waits until `count` distinct listeners have reported a change to `epoch`; returns their
/// reports.
async fn heard(
    rx: &mut mpsc::UnboundedReceiver<Notified>,
    epoch: u64,
    count: usize,
    what: &str,
) -> Result<Vec<Notified>> {
    let mut seen: HashMap<usize, Notified> = HashMap::new();
    wait_until(DEADLINE, what, async || {
        while let Ok(notified) = rx.try_recv() {
            if notified.epoch == epoch && !notified.initial {
                seen.entry(notified.subscriber).or_insert(notified);
            }
        }
        Ok(seen.len() >= count)
    })
    .await?;
    Ok(seen.into_values().collect())
}

/// Waits until `count` distinct listeners listen (their feed's first event, a poll's first
/// answer), so that the next flip finds every one of them listening.
async fn listening(
    rx: &mut mpsc::UnboundedReceiver<Notified>,
    count: usize,
    what: &str,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    wait_until(DEADLINE, what, async || {
        while let Ok(notified) = rx.try_recv() {
            if notified.initial {
                seen.insert(notified.subscriber);
            }
        }
        Ok(seen.len() >= count)
    })
    .await
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks = (first..first + count)
        .map(|index| subscribe(sidecar, index, tx.clone(), stop.clone()))
        .collect();
    listening(&mut rx, count, "every subscriber to listen").await?;
    Ok((rx, tasks))
}

/// Flips `flips` times and measures, for every flip, applied to notified for every listener
/// on `rx` (`count` of them).
async fn measure_fan_out(
    env: &TestEnv,
    rx: &mut mpsc::UnboundedReceiver<Notified>,
    count: usize,
    (flips, pause): (usize, Duration),
    mut polls: Option<(&mut mpsc::UnboundedReceiver<Notified>, usize, &mut Vec<u64>)>,
) -> Result<Latency> {
    let mut samples = Vec::new();
    for _ in 0..flips {
        tokio::time::sleep(pause).await;
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
    let one_subscriber =
        measure_fan_out(&env, &mut rx, 1, (config.flips, config.pause), None).await?;

    eprintln!(
        "feed: {} subscribers, {} flips",
        config.subscribers, config.flips
    );
    let (mut rx, _many) = subscribers(sidecar.http_addr(), 1, config.subscribers, &stop).await?;
    let fan_out = measure_fan_out(
        &env,
        &mut rx,
        config.subscribers,
        (config.flips, config.pause),
        None,
    )
    .await?;

    eprintln!(
        "feed: {} long polls beside the {} subscribers, {} flips",
        config.long_polls, config.subscribers, config.flips
    );
    let (poll_tx, mut poll_rx) = mpsc::unbounded_channel();
    let _polls: Vec<_> = (0..config.long_polls)
        .map(|index| long_poll(sidecar.http_addr(), index, poll_tx.clone(), stop.clone()))
        .collect();
    listening(&mut poll_rx, config.long_polls, "every long poll to wait").await?;
    let mut poll_samples = Vec::new();
    let fan_out_beside_long_polls = measure_fan_out(
        &env,
        &mut rx,
        config.subscribers,
        (config.flips, config.pause),
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
    let mut subscriptions = Vec::with_capacity(sidecars.len());
    for (index, sidecar) in sidecars.iter().enumerate() {
        sidecar.wait_ready(DEADLINE).await?;
        subscriptions.push(subscribe(
            sidecar.http_addr(),
            index,
            tx.clone(),
            stop.clone(),
        ));
    }
    listening(
        &mut rx,
        config.sidecars,
        "every sidecar's subscriber to listen",
    )
    .await?;
    // Two flips first, unmeasured: on each, every sidecar loads the other set from etcd (the
    // propagation scenario reports that as its first flip); later flips find both sets held.
    let mut warmup_last_notified_ms = Vec::new();
    for _ in 0..2 {
        let heard = flip_and_hear(&env, &mut rx, config.sidecars).await?;
        warmup_last_notified_ms.push(heard.last_notified_ms);
    }
    let (mut applied, mut notified, mut last_per_flip) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..config.flips {
        tokio::time::sleep(config.pause).await;
        let heard = flip_and_hear(&env, &mut rx, config.sidecars).await?;
        applied.extend(heard.applied);
        notified.extend(heard.notified);
        last_per_flip.push(heard.last_notified_ms);
    }
    stop.cancel();
    Ok(FeedReport {
        items: config.items,
        flips: config.flips,
        one_subscriber,
        subscribers: config.subscribers,
        fan_out,
        long_polls: config.long_polls,
        fan_out_beside_long_polls: Some(fan_out_beside_long_polls),
        long_poll,
        sidecars: config.sidecars,
        pause_ms: u64::try_from(config.pause.as_millis()).unwrap_or(u64::MAX),
        commit_to_applied: Latency::from_samples(&mut applied),
        end_to_end: Latency::from_samples(&mut notified),
        last_notified_per_flip_ms: last_per_flip,
        warmup_last_notified_ms,
        item_get,
        ofrep,
    })
}

/// What one flip measured end to end, from its commit: each subscriber's sidecar applying it,
/// each subscriber notified, and the last of them.
struct EndToEnd {
    applied: Vec<u64>,
    notified: Vec<u64>,
    last_notified_ms: f64,
}

/// Flips once and waits until all `count` subscribers on `rx` have heard of it.
async fn flip_and_hear(
    env: &TestEnv,
    rx: &mut mpsc::UnboundedReceiver<Notified>,
    count: usize,
) -> Result<EndToEnd> {
    let (epoch, at_us) = flip(env).await?;
    let heard = heard(rx, epoch, count, "every subscriber to hear of the flip").await?;
    let notified: Vec<u64> = heard
        .iter()
        .map(|n| n.at_us.saturating_sub(at_us))
        .collect();
    Ok(EndToEnd {
        applied: heard
            .iter()
            .map(|n| n.applied_at_us.saturating_sub(at_us))
            .collect(),
        last_notified_ms: notified.iter().copied().max().unwrap_or(0) as f64 / 1000.0,
        notified,
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
    if let Some(beside) = &report.fan_out_beside_long_polls {
        out.push_str(&row(
            format!(
                "{} subscribers beside {} long polls (applied to notified)",
                report.subscribers, report.long_polls
            ),
            beside,
            &format!("alone: p99 {:.1} ms", report.fan_out.p99_ms()),
        ));
    }
    out.push_str(&row(
        format!(
            "{} long polls beside them (applied to answered)",
            report.long_polls
        ),
        &report.long_poll,
        &format!(
            "subscribers: p99 {:.1} ms",
            report
                .fan_out_beside_long_polls
                .as_ref()
                .unwrap_or(&report.fan_out)
                .p99_ms()
        ),
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
    let per_flip: Vec<String> = report
        .last_notified_per_flip_ms
        .iter()
        .map(|ms| format!("{ms:.0}"))
        .collect();
    let warmup: Vec<String> = report
        .warmup_last_notified_ms
        .iter()
        .map(|ms| format!("{ms:.0}"))
        .collect();
    out.push_str(&format!(
        "\nFlips {} ms apart. End to end, the last of the {} subscribers notified, flip by flip (ms): {}. The two flips before them, unmeasured, on which every sidecar loads the other set from etcd: {}.\n",
        report.pause_ms,
        report.sidecars,
        per_flip.join(", "),
        warmup.join(", ")
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
