//! A `switchboard-coordinator` process.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use super::{
    HTTP_TIMEOUT, START_DEADLINE, SbctlRunner, get_json, healthz_url, start_service, wait_http_ok,
};
use crate::binaries::{COORDINATOR, bin_path};
use crate::process::{ChildProcess, CommandSpec, RestartableProcess};

/// A running `switchboard-coordinator`: `--etcd E --listen 127.0.0.1:<free> --http
/// 127.0.0.1:<free> --prefix P`, working directory and log in a temp dir. Killed on drop.
#[derive(Debug)]
pub struct Coordinator {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    etcd_endpoints: String,
    prefix: String,
    http: reqwest::Client,
    process: RestartableProcess,
    dir: TempDir,
}

impl Coordinator {
    /// Starts a coordinator and waits (20 s) until `GET /healthz` answers 200. On a timeout or
    /// an early exit the error holds the log tail.
    pub async fn start(etcd_endpoints: &str, prefix: &str) -> Result<Self> {
        Self::start_with(etcd_endpoints, prefix, &[]).await
    }

    /// [`Self::start`] with extra arguments after the standard ones (kept for restarts).
    pub async fn start_with(
        etcd_endpoints: &str,
        prefix: &str,
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(etcd_endpoints, prefix, extra_args, &[]).await
    }

    /// [`Self::start_with`] with environment variables (`FAILPOINTS` for crash tests).
    pub async fn start_with_env(
        etcd_endpoints: &str,
        prefix: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let program = bin_path(COORDINATOR)?;
        let dir = tempfile::Builder::new()
            .prefix("sbtest-coordinator-")
            .tempdir()
            .context("creating a temp dir for a coordinator")?;
        let log_path = dir.path().join("coordinator.log");
        let work_dir = dir.path().to_path_buf();
        let started = start_service("coordinator", &log_path, |http_port, grpc_port| {
            let mut spec = CommandSpec::new(&program)
                .args(["--etcd", etcd_endpoints])
                .args(["--listen", &format!("127.0.0.1:{grpc_port}")])
                .args(["--http", &format!("127.0.0.1:{http_port}")])
                .args(["--prefix", prefix])
                .args(extra_args.iter().copied())
                .current_dir(&work_dir);
            for (key, value) in env {
                spec = spec.env(*key, *value);
            }
            spec
        })
        .await
        .context("starting switchboard-coordinator")?;
        Ok(Self {
            grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, started.grpc_port)),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, started.http_port)),
            etcd_endpoints: etcd_endpoints.to_string(),
            prefix: prefix.to_string(),
            http: crate::http::client(HTTP_TIMEOUT)?,
            process: started.process,
            dir,
        })
    }

    /// `http://127.0.0.1:<admin gRPC port>`: what sbctl's `--coordinator` takes.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `http://127.0.0.1:<HTTP port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn etcd_endpoints(&self) -> &str {
        &self.etcd_endpoints
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The coordinator's working directory (a temp dir).
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
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

    /// Kills the process if it runs, starts it again with the same command line (same ports),
    /// and waits (20 s) until `/healthz` answers 200.
    pub async fn restart(&self) -> Result<()> {
        self.process.respawn()?;
        self.wait_healthy(START_DEADLINE)
            .await
            .context("restarting switchboard-coordinator")
    }

    /// Waits until `GET /healthz` answers 200.
    pub async fn wait_healthy(&self, deadline: Duration) -> Result<()> {
        wait_http_ok(&self.process, &healthz_url(self.http_addr.port()), deadline).await
    }

    /// The last `lines` lines of the log (all runs).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// `GET <http_url><path>`: status and JSON body (a body that is not JSON becomes a string).
    pub async fn get_json(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        get_json(&self.http, &format!("{}{path}", self.http_url())).await
    }

    /// An sbctl runner pointed at this coordinator.
    pub fn sbctl(&self) -> SbctlRunner {
        SbctlRunner::new(&self.grpc_url())
    }
}
