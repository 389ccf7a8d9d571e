//! A `switchboard-sidecar` process and its HTTP API.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;

use super::{HTTP_TIMEOUT, START_DEADLINE, get_json, healthz_url, start_service, wait_http_ok};
use crate::binaries::{SIDECAR, bin_path};
use crate::process::{ChildProcess, CommandSpec, RestartableProcess};
use crate::wait::{give_up, wait_for};

pub const CONSUMER_HEADER: &str = "X-Switchboard-Consumer";
pub const SLOT_HEADER: &str = "X-Switchboard-Slot";
pub const VERSION_HEADER: &str = "X-Switchboard-Version";
pub const EPOCH_HEADER: &str = "X-Switchboard-Epoch";

/// The answer to `GET /v1/ns/{ns}/items/{key}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemAnswer {
    pub status: u16,
    /// `X-Switchboard-Slot`.
    pub slot: Option<String>,
    /// `X-Switchboard-Version`.
    pub version: Option<String>,
    /// `X-Switchboard-Epoch`.
    pub epoch: Option<u64>,
    /// The body as JSON; a body that is not JSON is a JSON string holding the raw text.
    pub body: Value,
}

/// A running `switchboard-sidecar`: `--namespace NS ... --etcd E --http 127.0.0.1:<free> --grpc
/// 127.0.0.1:<free> --id ID --cache-dir <temp dir>/cache --prefix P`, working directory and log
/// in the same temp dir. Killed on drop; [`Self::restart`] keeps the ports and the cache dir.
#[derive(Debug)]
pub struct Sidecar {
    id: String,
    namespaces: Vec<String>,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    http: reqwest::Client,
    process: RestartableProcess,
    dir: TempDir,
}

impl Sidecar {
    /// Starts a sidecar and waits (20 s) until `GET /healthz` answers 200 (not `/readyz`: see
    /// [`Self::wait_ready`]). On a timeout or an early exit the error holds the log tail.
    pub async fn start(
        etcd_endpoints: &str,
        prefix: &str,
        id: &str,
        namespaces: &[&str],
    ) -> Result<Self> {
        Self::start_with(etcd_endpoints, prefix, id, namespaces, &[]).await
    }

    /// [`Self::start`] with extra arguments after the standard ones (kept for restarts).
    pub async fn start_with(
        etcd_endpoints: &str,
        prefix: &str,
        id: &str,
        namespaces: &[&str],
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(etcd_endpoints, prefix, id, namespaces, extra_args, &[]).await
    }

    /// [`Self::start_with`] with environment variables (an etcd password).
    pub async fn start_with_env(
        etcd_endpoints: &str,
        prefix: &str,
        id: &str,
        namespaces: &[&str],
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let program = bin_path(SIDECAR)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("sbtest-sidecar-{id}-"))
            .tempdir()
            .context("creating a temp dir for a sidecar")?;
        let log_path = dir.path().join("sidecar.log");
        let work_dir = dir.path().to_path_buf();
        let cache_dir = dir.path().join("cache");
        let started = start_service(
            &format!("sidecar {id}"),
            &log_path,
            |http_port, grpc_port| {
                let mut spec = CommandSpec::new(&program);
                for ns in namespaces {
                    spec = spec.args(["--namespace", ns]);
                }
                for (key, value) in env {
                    spec = spec.env(*key, *value);
                }
                spec.args(["--etcd", etcd_endpoints])
                    .args(["--http", &format!("127.0.0.1:{http_port}")])
                    .args(["--grpc", &format!("127.0.0.1:{grpc_port}")])
                    .args(["--id", id])
                    .arg("--cache-dir")
                    .arg(&cache_dir)
                    .args(["--prefix", prefix])
                    .args(extra_args.iter().copied())
                    .current_dir(&work_dir)
            },
        )
        .await
        .with_context(|| format!("starting switchboard-sidecar {id}"))?;
        Ok(Self {
            id: id.to_string(),
            namespaces: namespaces.iter().map(|ns| ns.to_string()).collect(),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, started.http_port)),
            grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, started.grpc_port)),
            http: crate::http::client(HTTP_TIMEOUT)?,
            process: started.process,
            dir,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// `http://127.0.0.1:<HTTP port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://127.0.0.1:<gRPC port>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The `--cache-dir` (created by the sidecar, kept across restarts).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The current process (replaced by [`Self::restart`]).
    pub fn process(&self) -> Arc<ChildProcess> {
        self.process.process()
    }

    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    pub fn kill(&self) -> Result<()> {
        self.process().kill()
    }

    pub fn pause(&self) -> Result<()> {
        self.process().pause()
    }

    pub fn resume(&self) -> Result<()> {
        self.process().resume()
    }

    /// SIGTERM, then waits up to `deadline` for the exit (killed and an error after it).
    pub async fn terminate(&self, deadline: Duration) -> Result<ExitStatus> {
        self.process().terminate(deadline).await
    }

    /// Kills the process if it runs, starts it again with the same command line (same ports,
    /// same cache dir), and waits (20 s) until `/healthz` answers 200.
    pub async fn restart(&self) -> Result<()> {
        self.process.respawn()?;
        wait_http_ok(
            &self.process,
            &healthz_url(self.http_addr.port()),
            START_DEADLINE,
        )
        .await
        .with_context(|| format!("restarting switchboard-sidecar {}", self.id))
    }

    /// The last `lines` lines of the log (all runs).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Waits until `GET /readyz` answers 200 (every namespace loaded).
    pub async fn wait_ready(&self, deadline: Duration) -> Result<()> {
        let url = format!("{}/readyz", self.http_url());
        wait_http_ok(&self.process, &url, deadline).await
    }

    /// `GET <http_url><path>`: status and JSON body (a body that is not JSON becomes a string).
    pub async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        get_json(&self.http, &format!("{}{path}", self.http_url())).await
    }

    /// `GET /v1/status`, which must answer 200 with JSON.
    pub async fn status(&self) -> Result<Value> {
        let (status, body) = self.get_json("/v1/status").await?;
        if status != 200 {
            bail!(
                "sidecar {}: GET /v1/status answered {status}: {body}",
                self.id
            );
        }
        if !body.is_object() {
            bail!(
                "sidecar {}: GET /v1/status answered a body that is not a JSON object: {body}",
                self.id
            );
        }
        Ok(body)
    }

    /// The epoch `/v1/status` reports for `ns` (`namespaces.<ns>.epoch`).
    pub async fn epoch(&self, ns: &str) -> Result<u64> {
        let status = self.status().await?;
        status
            .pointer(&format!("/namespaces/{}/epoch", json_pointer_escape(ns)))
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("no namespaces.{ns}.epoch in /v1/status: {status}"))
    }

    /// `GET /v1/ns/{ns}/items/{key}`, as consumer `consumer` (header `X-Switchboard-Consumer`)
    /// if given. The key goes into the path as it is.
    pub async fn get_item(
        &self,
        ns: &str,
        key: &str,
        consumer: Option<&str>,
    ) -> Result<ItemAnswer> {
        let url = format!("{}/v1/ns/{ns}/items/{key}", self.http_url());
        let mut request = self.http.get(&url);
        if let Some(consumer) = consumer {
            request = request.header(CONSUMER_HEADER, consumer);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to GET {url}"))?;
        Ok(ItemAnswer {
            status,
            slot: header(&headers, SLOT_HEADER)?,
            version: header(&headers, VERSION_HEADER)?,
            epoch: header(&headers, EPOCH_HEADER)?
                .map(|epoch| {
                    epoch.parse::<u64>().with_context(|| {
                        format!("GET {url}: header {EPOCH_HEADER} {epoch:?} is not a number")
                    })
                })
                .transpose()?,
            body: crate::http::json_or_text(text),
        })
    }

    /// `GET /v1/ns/{ns}/items?prefix=P`, as consumer `consumer` if given: status and JSON body.
    pub async fn list_items(
        &self,
        ns: &str,
        prefix: &str,
        consumer: Option<&str>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}/v1/ns/{ns}/items", self.http_url());
        let mut request = self.http.get(&url).query(&[("prefix", prefix)]);
        if let Some(consumer) = consumer {
            request = request.header(CONSUMER_HEADER, consumer);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {url}?prefix={prefix}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to GET {url}"))?;
        Ok((status, crate::http::json_or_text(text)))
    }

    /// `POST /v1/ns/{ns}/report` with `{"version", "ok", "errors"}`: the status and JSON body.
    pub async fn report(
        &self,
        ns: &str,
        version: &str,
        ok: u64,
        errors: u64,
    ) -> Result<(u16, Value)> {
        let url = format!("{}/v1/ns/{ns}/report", self.http_url());
        let body = serde_json::json!({ "version": version, "ok": ok, "errors": errors });
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to POST {url}"))?;
        Ok((status, crate::http::json_or_text(text)))
    }

    /// Polls `/v1/status` until `namespaces.<ns>.epoch` is at least `epoch`, for at most
    /// `deadline`; returns the epoch seen. Stops at once if the process exits.
    pub async fn wait_for_epoch(&self, ns: &str, epoch: u64, deadline: Duration) -> Result<u64> {
        let process = self.process();
        let what = format!("sidecar {} to serve epoch >= {epoch} of {ns}", self.id);
        wait_for(deadline, &what, async || {
            if let Some(status) = process.exit_status()? {
                return Err(give_up(anyhow!("sidecar {} exited ({status})", self.id)));
            }
            let seen = self.epoch(ns).await?;
            if seen >= epoch {
                Ok(seen)
            } else {
                bail!("epoch is {seen}")
            }
        })
        .await
        .map_err(|error| anyhow!("{error:#}\n{}", process.log_report()))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Result<Option<String>> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map(str::to_string)
                .with_context(|| format!("header {name} is not visible ASCII: {value:?}"))
        })
        .transpose()
}

/// Escapes a JSON object key for a JSON pointer (RFC 6901).
fn json_pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
