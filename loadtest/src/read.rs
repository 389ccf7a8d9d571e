//! The `read` scenario: reads of one item through a sidecar over HTTP and gRPC, beside the same
//! bytes served by nginx from a static file (the ceiling of an HTTP server on this machine) and
//! read straight from etcd (what an application would do without a sidecar), with the same
//! client in the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use switchboard_tests::{ChildProcess, TestEnv, free_port, wait_until};

use crate::load::{self, Connect, RunResult};
use crate::{catalog, stats};

pub const NAMESPACE: &str = "bench";

#[derive(Clone, Debug)]
pub struct ReadConfig {
    /// Items in the served set.
    pub items: usize,
    /// Length of each measured run.
    pub seconds: f64,
    /// Client connections per run.
    pub connections: usize,
    /// The offered rate of the light-load runs.
    pub light_rate: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadReport {
    pub items: usize,
    pub answer_bytes: usize,
    pub connections: usize,
    pub seconds_per_run: f64,
    /// The offered rate of the common fixed-rate runs: half of the sidecar's HTTP saturation.
    pub common_rate: f64,
    pub light_rate: f64,
    pub targets: Vec<TargetResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetResult {
    pub name: String,
    pub saturation: RunResult,
    /// At half of this target's own saturation throughput.
    pub half_saturation: RunResult,
    /// At the common rate, when this target sustains it (saturation above it).
    pub common_rate: Option<RunResult>,
    /// At the light rate: the latency of a read when the machine has room.
    pub light: RunResult,
}

impl ReadReport {
    pub fn target(&self, name: &str) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.name == name)
    }
}

pub const NGINX: &str = "nginx, static file";
pub const SIDECAR_HTTP: &str = "sidecar, HTTP";
pub const SIDECAR_GRPC: &str = "sidecar, gRPC";
pub const ETCD: &str = "etcd, direct get";

pub async fn run(config: &ReadConfig, work: &Path) -> Result<ReadReport> {
    let env = TestEnv::start(&[NAMESPACE]).await?;
    let set = work.join("read-set.json");
    catalog::write(&set, config.items, None)?;
    catalog::stage(&env.sbctl(), NAMESPACE, &set, "read benchmark").await?;
    env.sbctl()
        .run(&["flip", NAMESPACE])
        .await?
        .ensure_success()?;
    let sidecar = env.start_sidecar("bench-read").await?;
    sidecar.wait_ready(Duration::from_secs(60)).await?;

    let key = catalog::key(config.items / 2);
    let path = format!("/v1/ns/{NAMESPACE}/items/{key}");
    let answer = fetch(sidecar.http_addr(), &path).await?;

    // nginx serves the sidecar's exact answer bytes from a file at the same path.
    let root = work.join("nginx-root");
    let file = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().context("the item path has a parent")?)?;
    std::fs::write(&file, &answer)?;
    let nginx = Nginx::start(work, &root).await?;

    let direct_key = format!("{}/bench-direct/{key}", env.prefix());
    let mut client = env.etcd_client().await?;
    client
        .put(direct_key.as_str(), answer.clone(), None)
        .await?;

    let targets: Vec<(&str, Connect)> = vec![
        (NGINX, load::http_get(nginx.addr, &path)),
        (SIDECAR_HTTP, load::http_get(sidecar.http_addr(), &path)),
        (
            SIDECAR_GRPC,
            load::grpc_get(&sidecar.grpc_url(), NAMESPACE, &key),
        ),
        (ETCD, load::etcd_get(&env.etcd_endpoints(), &direct_key)),
    ];
    let duration = Duration::from_secs_f64(config.seconds);
    let warmup = Duration::from_secs_f64((config.seconds / 5.0).max(0.5));
    let mut results = Vec::new();
    for (name, connect) in &targets {
        eprintln!("read: {name}: saturation");
        load::saturate(connect, config.connections, warmup).await?;
        let saturation = load::saturate(connect, config.connections, duration).await?;
        check_errors(name, &saturation)?;
        eprintln!(
            "read: {name}: {:.0}/s at saturation; half of it",
            saturation.achieved_rps
        );
        let half_saturation = load::fixed_rate(
            connect,
            config.connections,
            saturation.achieved_rps / 2.0,
            duration,
        )
        .await?;
        check_errors(name, &half_saturation)?;
        let light =
            load::fixed_rate(connect, config.connections, config.light_rate, duration).await?;
        check_errors(name, &light)?;
        results.push(TargetResult {
            name: name.to_string(),
            saturation,
            half_saturation,
            common_rate: None,
            light,
        });
    }
    let common_rate = results
        .iter()
        .find(|t| t.name == SIDECAR_HTTP)
        .map_or(0.0, |t| t.saturation.achieved_rps / 2.0);
    for ((name, connect), result) in targets.iter().zip(results.iter_mut()) {
        if *name == SIDECAR_HTTP {
            result.common_rate = Some(result.half_saturation.clone());
        } else if result.saturation.achieved_rps > common_rate {
            eprintln!("read: {name}: at the common rate {common_rate:.0}/s");
            let run = load::fixed_rate(connect, config.connections, common_rate, duration).await?;
            check_errors(name, &run)?;
            result.common_rate = Some(run);
        }
    }
    nginx.stop().await?;
    Ok(ReadReport {
        items: config.items,
        answer_bytes: answer.len(),
        connections: config.connections,
        seconds_per_run: config.seconds,
        common_rate,
        light_rate: config.light_rate,
        targets: results,
    })
}

fn check_errors(name: &str, run: &RunResult) -> Result<()> {
    if run.errors > 0 {
        bail!(
            "{name}: {} of {} requests failed",
            run.errors,
            run.errors + run.completed
        );
    }
    Ok(())
}

/// One GET, for the answer's bytes.
async fn fetch(addr: SocketAddr, path: &str) -> Result<Vec<u8>> {
    let url = format!("http://{addr}{path}");
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    Ok(response.bytes().await?.to_vec())
}

/// nginx on a free loopback port, serving `root`, with as many workers as cores and no access
/// log, as one would configure it to serve static files fast.
struct Nginx {
    addr: SocketAddr,
    process: ChildProcess,
}

impl Nginx {
    async fn start(work: &Path, root: &Path) -> Result<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .context("nginx is not installed (Debian: apt-get install nginx-light); `make bench` installs it")?;
        let port = free_port()?;
        let dir = work.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("nginx.conf");
        // Workers of a root master would switch to `nobody`, who may not read the temp dir;
        // without root, nginx ignores the directive with a warning.
        let user = "user root;\n";
        std::fs::write(
            &config,
            format!(
                "{user}worker_processes auto;\ndaemon off;\npid {pid};\nerror_log {log} warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n\
                 keepalive_requests 10000000;\n  default_type application/json;\n  open_file_cache max=16;\n\
                 server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                log = dir.join("error.log").display(),
                tmp = dir.display(),
                root = root.display(),
            ),
        )?;
        let mut command = std::process::Command::new(binary);
        command.arg("-c").arg(&config).arg("-p").arg(&dir);
        let process = ChildProcess::spawn_logged("nginx", command, &dir.join("stderr.log"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(Duration::from_secs(10), "nginx to listen", async || {
            Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
        })
        .await
        .with_context(|| process.log_tail(20))?;
        Ok(Self { addr, process })
    }

    /// Stops nginx with SIGTERM, which its master passes on to the workers. A SIGKILL (what
    /// dropping the process does) would leave the workers running.
    async fn stop(self) -> Result<()> {
        self.process.terminate(Duration::from_secs(10)).await?;
        Ok(())
    }
}

/// The table of a report, for the terminal and the markdown.
pub fn render(report: &ReadReport) -> String {
    let mut out = format!(
        "read: one item of {} bytes from a set of {} items; {} connections, {:.0} s per run; \
         common rate {:.0}/s (half of the sidecar's HTTP saturation), light load {:.0}/s\n\n\
         | target | saturation req/s | vs nginx | p50 / p99 / p99.9 ms at half own saturation | p50 / p99 / p99.9 ms at the common rate | p50 / p99 / p99.9 ms at light load |\n\
         |---|---:|---:|---|---|---|\n",
        report.answer_bytes,
        report.items,
        report.connections,
        report.seconds_per_run,
        report.common_rate,
        report.light_rate
    );
    let nginx = report
        .target(NGINX)
        .map_or(0.0, |t| t.saturation.achieved_rps);
    for target in &report.targets {
        let triple = |run: &RunResult| {
            format!(
                "{:.3} / {:.3} / {:.3}",
                run.latency.p50_ms(),
                run.latency.p99_ms(),
                run.latency.p999_ms()
            )
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0}% | {} | {} | {} |\n",
            target.name,
            target.saturation.achieved_rps,
            stats::percent(target.saturation.achieved_rps, nginx),
            triple(&target.half_saturation),
            target
                .common_rate
                .as_ref()
                .map_or_else(|| "cannot sustain it".to_string(), triple),
            triple(&target.light),
        ));
    }
    out
}
