//! The Switchboard stack as real processes for end-to-end tests: coordinators, sidecars, sbctl,
//! and [`TestEnv`], which puts one etcd and one coordinator under a unique key prefix.

mod coordinator;
mod env;
mod sbctl;
mod sidecar;

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

pub use coordinator::Coordinator;
pub use env::TestEnv;
pub use sbctl::{SbctlOutput, SbctlRunner, sbctl};
pub use sidecar::{ItemAnswer, Sidecar};

use crate::ports::free_port;
use crate::process::{CommandSpec, RestartableProcess};
use crate::wait::{give_up, wait_until};

/// How long a coordinator or sidecar may take to answer `/healthz` after it starts.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// The timeout of one HTTP request the harness makes.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Starts that lost a race for a port to another process are tried again this many times.
const START_ATTEMPTS: u32 = 3;

/// A key prefix no other test uses: `/sbtest-<16 hex digits>`.
pub fn unique_prefix() -> String {
    format!("/sbtest-{:016x}", rand::random::<u64>())
}

/// A service started by [`start_service`] and the ports it listens on.
pub(crate) struct Started {
    pub process: RestartableProcess,
    pub http_port: u16,
    pub grpc_port: u16,
}

/// Starts a service that listens on an HTTP and a gRPC port given on its command line, and waits
/// until its `GET /healthz` answers 200. `spec_for(http_port, grpc_port)` makes the command.
pub(crate) async fn start_service(
    name: &str,
    log_path: &Path,
    mut spec_for: impl FnMut(u16, u16) -> CommandSpec,
) -> Result<Started> {
    let mut attempt = 1;
    loop {
        let http_port = free_port()?;
        let grpc_port = free_port()?;
        let process = RestartableProcess::spawn(name, spec_for(http_port, grpc_port), log_path)?;
        match wait_http_ok(&process, &healthz_url(http_port), START_DEADLINE).await {
            Ok(()) => {
                return Ok(Started {
                    process,
                    http_port,
                    grpc_port,
                });
            }
            Err(_) if attempt < START_ATTEMPTS && process.process().lost_port_race() => {
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

pub(crate) fn healthz_url(http_port: u16) -> String {
    format!("http://127.0.0.1:{http_port}/healthz")
}

/// Waits until `GET url` answers 200. Stops at once if the process exits; the error holds the
/// last answer seen and the process's log tail.
pub(crate) async fn wait_http_ok(
    process: &RestartableProcess,
    url: &str,
    deadline: Duration,
) -> Result<()> {
    let http = crate::http::client(Duration::from_secs(1))?;
    let child = process.process();
    let what = format!("{} to answer 200 to GET {url}", child.name());
    let result = wait_until(deadline, &what, async || {
        if let Some(status) = child.exit_status()? {
            return Err(give_up(anyhow!("{} exited ({status})", child.name())));
        }
        let response = http.get(url).send().await?;
        let status = response.status();
        if status.as_u16() == 200 {
            return Ok(true);
        }
        let body = response.text().await.unwrap_or_default();
        bail!("answered {status}: {}", body.trim())
    })
    .await;
    result.map_err(|error| anyhow!("{error:#}\n{}", child.log_report()))
}

/// `GET url`: the status and the body as JSON (a body that is not JSON becomes a JSON string).
pub(crate) async fn get_json(
    http: &reqwest::Client,
    url: &str,
) -> Result<(u16, serde_json::Value)> {
    use anyhow::Context;
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the answer to GET {url}"))?;
    Ok((status, crate::http::json_or_text(text)))
}
