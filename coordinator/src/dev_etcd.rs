//! `--dev`: a private etcd child process for trying the switchboard on one machine.
//!
//! The child runs the `etcd` binary on PATH with its data under `.switchboard/dev-etcd`, is
//! stopped with SIGTERM when the coordinator shuts down, and is killed if the coordinator's
//! handle is dropped. Its pid is kept in `.switchboard/dev-etcd.pid`, so that a coordinator
//! that was killed with SIGKILL does not leave an etcd behind that blocks the next start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub struct DevEtcd {
    child: Child,
    pid_file: PathBuf,
}

impl DevEtcd {
    /// Starts etcd serving clients on `client_url` (a loopback `http://127.0.0.1:PORT`), with
    /// its peer port one above, and waits until it answers.
    pub async fn start(state_dir: &Path, client_url: &str) -> anyhow::Result<Self> {
        let port: u16 = client_url
            .strip_prefix("http://127.0.0.1:")
            .or_else(|| client_url.strip_prefix("http://localhost:"))
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| {
                format!("--dev needs --etcd to be one http://127.0.0.1:PORT endpoint, not {client_url:?}")
            })?;
        let data_dir = state_dir.join("dev-etcd");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let pid_file = state_dir.join("dev-etcd.pid");
        stop_leftover(&pid_file);
        let log_path = state_dir.join("dev-etcd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let child = Command::new("etcd")
            .arg("--name=switchboard-dev")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=switchboard-dev={peer}"))
            .stdout(Stdio::null())
            .stderr(log.try_clone()?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start etcd for --dev: is the `etcd` binary on PATH? (Debian: apt-get install etcd-server)")?;
        if let Some(pid) = child.id() {
            std::fs::write(&pid_file, pid.to_string())
                .with_context(|| format!("cannot write {}", pid_file.display()))?;
        }
        let mut dev = DevEtcd { child, pid_file };
        dev.wait_healthy(&client, &log_path).await?;
        tracing::info!(%client, data_dir = %data_dir.display(), "dev etcd started");
        Ok(dev)
    }

    async fn wait_healthy(&mut self, client_url: &str, log_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let options =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "dev etcd exited with {status} at start; its log ({}) ends with:\n{}",
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let probe = async {
                let mut client =
                    etcd_client::Client::connect([client_url], Some(options.clone())).await?;
                client.get("health-probe", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dev etcd did not answer on {client_url} within 20 s; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops etcd with SIGTERM and waits up to five seconds before killing it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!("dev etcd did not stop within 5 s; killing it");
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
        tracing::info!("dev etcd stopped");
    }
}

/// Stops an etcd left behind by a coordinator that died without stopping it.
fn stop_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_etcd = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "etcd");
    if is_etcd {
        tracing::warn!(
            pid,
            "stopping the dev etcd left behind by an earlier coordinator"
        );
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}
