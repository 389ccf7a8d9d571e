//! Real etcd servers for tests: one member, or a cluster of several on loopback, each in its own
//! temp dir on free ports, with kill, stop, pause, resume and restart for fault tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{ChildProcess, CommandSpec, RestartableProcess};
use crate::wait::{give_up, wait_for};

/// How long a start or restart may take until etcd answers.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long [`EtcdServer::stop`] waits after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Starts that lost a race for a port to another process are tried again this many times.
const START_ATTEMPTS: u32 = 3;

/// The `etcd` binary on PATH.
pub fn etcd_binary() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("etcd");
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    bail!("etcd not found on PATH: install etcd-server (make test does)")
}

/// The options of every client the harness connects: a 2 s connect timeout and a 10 s timeout
/// per request, so a test against an unreachable etcd fails instead of hanging.
pub fn client_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10))
}

/// Connects a client to `endpoints` with [`client_options`].
pub async fn connect(endpoints: &[String]) -> Result<Client> {
    Client::connect(endpoints, Some(client_options()))
        .await
        .with_context(|| format!("connecting an etcd client to {}", endpoints.join(",")))
}

/// One etcd member: a single-member server from [`EtcdServer::start`], or a member of an
/// [`EtcdCluster`]. Its data dir and log live in a temp dir removed on drop; the process is
/// killed on drop. Every method takes `&self`.
#[derive(Debug)]
pub struct EtcdServer {
    name: String,
    client_port: u16,
    peer_port: u16,
    // Declared before `dir`: the process dies before its data dir is removed.
    process: RestartableProcess,
    dir: TempDir,
}

impl EtcdServer {
    /// Starts a single-member etcd and waits (20 s) until it answers `/health`.
    pub async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`Self::start`] with extra etcd flags (for example `--quota-backend-bytes=...`), which are
    /// kept for restarts.
    pub async fn start_with(extra_args: &[&str]) -> Result<Self> {
        let etcd = etcd_binary()?;
        let mut attempt = 1;
        loop {
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let initial_cluster = format!("m0={}", loopback_url(peer_port));
            let token = cluster_token();
            let server = Self::spawn(
                &etcd,
                "m0",
                client_port,
                peer_port,
                &initial_cluster,
                &token,
                extra_args,
            )?;
            match server.wait_healthy(START_DEADLINE).await {
                Ok(()) => return Ok(server),
                Err(_) if attempt < START_ATTEMPTS && server.lost_port_race() => attempt += 1,
                Err(error) => return Err(error.context("starting etcd")),
            }
        }
    }

    fn spawn(
        etcd: &Path,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        token: &str,
        extra_args: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sbtest-etcd-{name}-"))
            .tempdir()
            .context("creating a temp dir for etcd")?;
        let client_url = loopback_url(client_port);
        let peer_url = loopback_url(peer_port);
        let spec = CommandSpec::new(etcd)
            .args(["--name", name, "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(extra_args.iter().copied());
        let log_path = dir.path().join("etcd.log");
        let process = RestartableProcess::spawn(&format!("etcd {name}"), spec, &log_path)?;
        Ok(Self {
            name: name.to_string(),
            client_port,
            peer_port,
            process,
            dir,
        })
    }

    /// The member name (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        loopback_url(self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// `http://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        loopback_url(self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The last `lines` lines of the etcd log (all runs of this member).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// The current etcd process.
    pub fn process(&self) -> Arc<ChildProcess> {
        self.process.process()
    }

    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    /// A client connected to this member only (see [`client_options`]).
    pub async fn client(&self) -> Result<Client> {
        connect(&[self.endpoint()]).await
    }

    /// SIGKILL (and reap). Nothing happens if it already exited.
    pub fn kill(&self) -> Result<()> {
        self.process().kill()
    }

    /// SIGTERM, and waits up to 10 s for the exit.
    pub async fn stop(&self) -> Result<()> {
        self.process().terminate(STOP_DEADLINE).await.map(drop)
    }

    /// SIGSTOP: etcd freezes with its sockets open; requests hang.
    pub fn pause(&self) -> Result<()> {
        self.process().pause()
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        self.process().resume()
    }

    /// Kills the process if it still runs, starts it again on the same ports with the same data
    /// dir, and waits (20 s) until it answers `/health` (for a cluster member: until it has
    /// rejoined a cluster with a leader, so a quorum must be up).
    pub async fn restart(&self) -> Result<()> {
        self.respawn()?;
        self.wait_healthy(START_DEADLINE)
            .await
            .context("restarting etcd")
    }

    /// Like [`Self::restart`] without waiting for health (for a member that cannot become
    /// healthy alone, while the cluster has no quorum).
    pub fn respawn(&self) -> Result<()> {
        self.process.respawn()
    }

    /// Waits until `GET /health` answers `{"health":"true"}`. Stops at once, with the log tail,
    /// if the process exits.
    pub async fn wait_healthy(&self, deadline: Duration) -> Result<()> {
        let http = crate::http::client(Duration::from_secs(1))?;
        let process = self.process();
        let what = format!("etcd {} at {} to be healthy", self.name, self.endpoint());
        let result = wait_for(deadline, &what, async || {
            if let Some(status) = process.exit_status()? {
                return Err(give_up(anyhow!("etcd {} exited ({status})", self.name)));
            }
            self.check_health(&http).await
        })
        .await;
        result.map_err(|error| anyhow!("{error:#}\n{}", process.log_report()))
    }

    async fn check_health(&self, http: &reqwest::Client) -> Result<()> {
        let url = format!("{}/health", self.endpoint());
        let response = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("reading GET {url}"))?;
        let healthy = serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|v| v.get("health").and_then(|h| h.as_str()) == Some("true"));
        if status.is_success() && healthy {
            Ok(())
        } else {
            bail!("GET {url} answered {status}: {}", body.trim())
        }
    }

    /// Whether the process exited because another process took one of its ports.
    fn lost_port_race(&self) -> bool {
        self.process().lost_port_race()
    }
}

/// Several etcd members on loopback forming one cluster (`m0`, `m1`, ...).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `size` members in one new cluster and waits (20 s) until every member answers
    /// `/health` and a linearizable read through a client of all endpoints succeeds (the cluster
    /// has a leader).
    pub async fn start(size: usize) -> Result<Self> {
        Self::start_with(size, &[]).await
    }

    /// [`Self::start`] with extra etcd flags for every member.
    pub async fn start_with(size: usize, extra_args: &[&str]) -> Result<Self> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let etcd = etcd_binary()?;
        let mut attempt = 1;
        loop {
            let mut ports = Vec::with_capacity(size);
            for _ in 0..size {
                ports.push((free_port()?, free_port()?));
            }
            let initial_cluster = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("m{i}={}", loopback_url(*peer)))
                .collect::<Vec<_>>()
                .join(",");
            let token = cluster_token();
            let mut members = Vec::with_capacity(size);
            for (i, (client_port, peer_port)) in ports.into_iter().enumerate() {
                members.push(EtcdServer::spawn(
                    &etcd,
                    &format!("m{i}"),
                    client_port,
                    peer_port,
                    &initial_cluster,
                    &token,
                    extra_args,
                )?);
            }
            let cluster = Self { members };
            match cluster.wait_started(START_DEADLINE).await {
                Ok(()) => return Ok(cluster),
                Err(_)
                    if attempt < START_ATTEMPTS
                        && cluster.members.iter().any(EtcdServer::lost_port_race) =>
                {
                    attempt += 1
                }
                Err(error) => {
                    return Err(error.context(format!("starting a {size}-member etcd cluster")));
                }
            }
        }
    }

    async fn wait_started(&self, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        for member in &self.members {
            member
                .wait_healthy(deadline.saturating_sub(start.elapsed()))
                .await?;
        }
        self.wait_for_leader(deadline.saturating_sub(start.elapsed()))
            .await
    }

    /// Waits until a linearizable read through a client of all endpoints succeeds, which needs a
    /// leader and a quorum.
    pub async fn wait_for_leader(&self, deadline: Duration) -> Result<()> {
        let mut client = self.client().await?;
        wait_for(deadline, "the etcd cluster to have a leader", async || {
            let read = client.get("/sbtest-harness/leader-check", None);
            tokio::time::timeout(Duration::from_secs(2), read)
                .await
                .context("a linearizable read took over 2 s")?
                .context("a linearizable read failed")
        })
        .await
        .map(drop)
    }

    /// The index of the member that is the raft leader now. A member that does not answer
    /// (killed, paused, or restarted and not yet listening) is not it; asks again for up to
    /// 10 s while no member answering is the leader.
    pub async fn leader_index(&self) -> Result<usize> {
        crate::wait::wait_for(
            Duration::from_secs(10),
            "the leader's member index",
            async || {
                let mut client = self.client().await?;
                let leader = client.status().await?.leader();
                for (i, member) in self.members().iter().enumerate() {
                    let Ok(mut member_client) = member.client().await else {
                        continue;
                    };
                    let Ok(status) = member_client.status().await else {
                        continue;
                    };
                    if status.header().map(|h| h.member_id()) == Some(leader) {
                        return Ok(i);
                    }
                }
                anyhow::bail!("no member answering has the leader's id {leader:x}")
            },
        )
        .await
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// The client URLs joined by commas, as `--etcd` takes them.
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// Member `i` (`m<i>`). Panics if the cluster has no member `i`.
    pub fn member(&self, i: usize) -> &EtcdServer {
        let size = self.members.len();
        self.members
            .get(i)
            .unwrap_or_else(|| panic!("the etcd cluster has {size} members, it has no member {i}"))
    }

    pub fn members(&self) -> &[EtcdServer] {
        &self.members
    }

    /// A client of all endpoints (see [`client_options`]).
    pub async fn client(&self) -> Result<Client> {
        connect(&self.endpoints()).await
    }
}

fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A token unique to one cluster, so that members of different clusters never talk to each other
/// even if a port is reused.
fn cluster_token() -> String {
    format!("sbtest-{:016x}", rand::random::<u64>())
}
