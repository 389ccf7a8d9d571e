//! An example application that reads its metadata through a Switchboard sidecar and reports
//! what it saw with each version, the way a real service would.
//!
//! It reads one item as many consumers in turn (so that a canary share of them lands on the
//! new version), counts each read as a success or an error by the version that served it, and
//! every second reports the counts to the sidecar (`POST /v1/ns/{ns}/report`). Told to fail on
//! a version (`--fail-on-version`), it counts reads served by that version as errors, as an
//! application would that cannot use a broken schema. The coordinator's judge then sees the
//! errors and flips the version back, which this program shows as the version it is served
//! changing back.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// The example application's settings.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "switchboard-example-client",
    about = "Reads an item through a Switchboard sidecar as many consumers, reports outcomes per version, and can be told to fail on a version."
)]
pub struct Config {
    /// The sidecar's HTTP address.
    #[arg(
        long,
        env = "SWITCHBOARD_SIDECAR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub sidecar: String,
    /// The namespace to read.
    #[arg(long, default_value = "catalog")]
    pub namespace: String,
    /// The item to read.
    #[arg(long, default_value = "schema_version")]
    pub key: String,
    /// How many consumers to read as, in turn (`app-0`, `app-1`, ...).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub consumers: u32,
    /// Reads per second.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// Count the reads that this version serves as errors.
    #[arg(long, value_name = "VERSION")]
    pub fail_on_version: Option<String>,
    /// The share of reads of `--fail-on-version` that fail, from 0 to 1.
    #[arg(long, default_value_t = 1.0, value_parser = share)]
    pub error_rate: f64,
    /// Stop after this many seconds; without it, run until Ctrl-C.
    #[arg(long)]
    pub seconds: Option<u64>,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// Successes and errors seen with one version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub ok: u64,
    pub errors: u64,
}

/// What a run saw: outcomes per version, and reads the sidecar could not answer.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub by_version: BTreeMap<String, Outcomes>,
    pub unavailable: u64,
}

impl Totals {
    /// One line per version and the unanswered reads.
    pub fn summary(&self) -> String {
        let mut text = String::from("totals:");
        for (version, o) in &self.by_version {
            text.push_str(&format!(
                "\n  version {version}: {} ok, {} errors",
                o.ok, o.errors
            ));
        }
        text.push_str(&format!("\n  unanswered reads: {}", self.unavailable));
        text
    }
}

/// Reads and reports until `stop` is cancelled or `config.seconds` have passed, writing one
/// line per second to `out`; returns what it saw.
pub async fn run(config: &Config, stop: CancellationToken, out: &mut impl Write) -> Result<Totals> {
    let base = config.sidecar.trim_end_matches('/');
    if !base.starts_with("http://") {
        bail!(
            "--sidecar {:?} must be an http:// address: the sidecar listens on localhost without TLS",
            config.sidecar
        );
    }
    let item_url = format!("{base}/v1/ns/{}/items/{}", config.namespace, config.key);
    let report_url = format!("{base}/v1/ns/{}/report", config.namespace);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    let deadline = config
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut reads = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(config.rate)));
    reads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports = tokio::time::interval(Duration::from_secs(1));
    reports.tick().await;
    let started = Instant::now();
    let mut totals = Totals::default();
    // Counts not yet reported; kept when a report fails, so nothing is lost.
    let mut pending: BTreeMap<String, Outcomes> = BTreeMap::new();
    let mut second = Totals::default();
    let mut consumer = 0u32;
    loop {
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = until_deadline => break,
            _ = reports.tick() => {
                report(&client, &report_url, &mut pending, out).await;
                writeln!(out, "{:>4}s {}", started.elapsed().as_secs(), line(&second))?;
                second = Totals::default();
            }
            _ = reads.tick() => {
                let name = format!("app-{consumer}");
                consumer = (consumer + 1) % config.consumers;
                match read(&client, &item_url, &name).await {
                    Ok(version) => {
                        let failed = config.fail_on_version.as_deref() == Some(version.as_str())
                            && rand::rng().random_bool(config.error_rate);
                        for counts in [&mut totals.by_version, &mut pending, &mut second.by_version] {
                            let entry = counts.entry(version.clone()).or_default();
                            if failed { entry.errors += 1 } else { entry.ok += 1 }
                        }
                    }
                    Err(_) => {
                        totals.unavailable += 1;
                        second.unavailable += 1;
                    }
                }
            }
        }
    }
    report(&client, &report_url, &mut pending, out).await;
    Ok(totals)
}

/// One read as `consumer`; the version that served it.
async fn read(client: &reqwest::Client, url: &str, consumer: &str) -> Result<String> {
    let response = client
        .get(url)
        .header("X-Switchboard-Consumer", consumer)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the sidecar answered {}", response.status());
    }
    let version = response
        .headers()
        .get("X-Switchboard-Version")
        .and_then(|v| v.to_str().ok())
        .context("the answer names no version")?
        .to_string();
    // The body is read as the application would read it, so a broken answer counts.
    response.bytes().await?;
    Ok(version)
}

/// Reports the pending counts of each version; what the sidecar does not accept stays pending.
async fn report(
    client: &reqwest::Client,
    url: &str,
    pending: &mut BTreeMap<String, Outcomes>,
    out: &mut impl Write,
) {
    let mut kept = BTreeMap::new();
    for (version, outcomes) in std::mem::take(pending) {
        let body =
            serde_json::json!({"version": version, "ok": outcomes.ok, "errors": outcomes.errors});
        let accepted = client
            .post(url)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED);
        if !accepted {
            // Best effort: the line tells the reader, and the counts go with the next report.
            let _ = writeln!(
                out,
                "      report of version {version} not accepted; kept for the next one"
            );
            kept.insert(version, outcomes);
        }
    }
    *pending = kept;
}

fn line(second: &Totals) -> String {
    let mut parts: Vec<String> = second
        .by_version
        .iter()
        .map(|(version, o)| format!("version {version}: {} ok, {} errors", o.ok, o.errors))
        .collect();
    if second.unavailable > 0 {
        parts.push(format!("{} unanswered", second.unavailable));
    }
    if parts.is_empty() {
        return "no reads".into();
    }
    parts.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_rate_must_be_a_share() {
        assert_eq!(share("0.3"), Ok(0.3));
        assert!(share("1.5").is_err());
        assert!(share("x").is_err());
    }

    #[test]
    fn a_second_prints_each_version_and_the_unanswered_reads() {
        let mut second = Totals::default();
        second
            .by_version
            .insert("aaa".into(), Outcomes { ok: 9, errors: 0 });
        second
            .by_version
            .insert("bbb".into(), Outcomes { ok: 0, errors: 2 });
        second.unavailable = 1;
        assert_eq!(
            line(&second),
            "version aaa: 9 ok, 0 errors | version bbb: 0 ok, 2 errors | 1 unanswered"
        );
        assert_eq!(line(&Totals::default()), "no reads");
    }
}
