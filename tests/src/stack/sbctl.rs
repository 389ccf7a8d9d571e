//! Running `sbctl` against a coordinator.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::binaries::{SBCTL, bin_path};
use crate::process::{ChildProcess, CommandSpec, exit_code};

/// How long [`SbctlRunner::run`] lets sbctl run unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// An sbctl runner for the coordinator at `coordinator_url` (the admin gRPC URL,
/// [`super::Coordinator::grpc_url`]).
pub fn sbctl(coordinator_url: &str) -> SbctlRunner {
    SbctlRunner::new(coordinator_url)
}

/// Runs `sbctl` with `SWITCHBOARD_COORDINATOR` set to the coordinator's URL. Nothing else is
/// added to the command line (no `--as`, no `--coordinator`); `SWITCHBOARD_*` variables of the
/// test's own environment are not passed on (set them with [`Self::env`]).
#[derive(Clone, Debug)]
pub struct SbctlRunner {
    coordinator_url: String,
    envs: Vec<(String, String)>,
    timeout: Duration,
    current_dir: Option<PathBuf>,
}

/// What an sbctl run printed and its exit code (128 + the signal if a signal ended it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SbctlOutput {
    /// The command line, for messages.
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl SbctlRunner {
    pub fn new(coordinator_url: &str) -> Self {
        Self {
            coordinator_url: coordinator_url.to_string(),
            envs: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            current_dir: None,
        }
    }

    pub fn coordinator_url(&self) -> &str {
        &self.coordinator_url
    }

    /// Sets an environment variable for every run (for example `SWITCHBOARD_TOKEN`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// How long [`Self::run`] waits before killing sbctl and failing (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The working directory of sbctl (default: the test's).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    fn spec(&self, args: &[&str]) -> Result<CommandSpec> {
        let mut spec = CommandSpec::new(bin_path(SBCTL)?)
            .args(args.iter().copied())
            .env("SWITCHBOARD_COORDINATOR", &self.coordinator_url);
        for (key, value) in &self.envs {
            spec = spec.env(key, value);
        }
        if let Some(dir) = &self.current_dir {
            spec = spec.current_dir(dir);
        }
        Ok(spec)
    }

    /// Runs `sbctl ARGS` to completion (killed, and an error, after the timeout).
    pub async fn run(&self, args: &[&str]) -> Result<SbctlOutput> {
        let spec = self.spec(args)?;
        let command_line = format!("sbctl {}", args.join(" "));
        let mut command = tokio::process::Command::from(spec.to_command());
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {command_line}"))?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{command_line} did not finish within {:?}; killed it",
                    self.timeout
                )
            })?
            .with_context(|| format!("running {command_line}"))?;
        Ok(SbctlOutput {
            command: command_line,
            code: exit_code(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `sbctl --json ARGS`; it must exit 0 and print JSON, which is returned.
    pub async fn run_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push("--json");
        all.extend_from_slice(args);
        self.run(&all).await?.ensure_success()?.json()
    }

    /// Starts `sbctl ARGS` in the background (output in a log file), for tests that kill it
    /// midway. Killed on drop.
    pub fn spawn(&self, args: &[&str]) -> Result<ChildProcess> {
        ChildProcess::spawn("sbctl", self.spec(args)?.to_command())
    }
}

impl SbctlOutput {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// `self` if the exit code is `code`, else an error showing the whole output.
    pub fn ensure_code(self, code: i32) -> Result<Self> {
        if self.code == code {
            Ok(self)
        } else {
            bail!("expected exit code {code}, got {self}")
        }
    }

    /// `self` if the exit code is 0, else an error showing the whole output.
    pub fn ensure_success(self) -> Result<Self> {
        self.ensure_code(0)
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout of `{}` is not JSON:\n{}", self.command, self.stdout))
    }
}

impl fmt::Display for SbctlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}
