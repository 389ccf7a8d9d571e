//! Child processes whose stdout and stderr go to a log file, with signals, deadline-bound waits
//! and kill on drop; and [`RestartableProcess`], which can start the same command again.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How many log lines error messages quote.
pub const LOG_TAIL_LINES: usize = 40;

/// A program with its arguments and environment, from which a fresh [`Command`] can be built as
/// often as needed (a process started again gets exactly the same command line).
#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(OsString, OsString)>,
    pub current_dir: Option<PathBuf>,
}

impl CommandSpec {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The command, with stdin closed. Every `SWITCHBOARD_*` and `ETCD_*` variable of the test's
    /// own environment is removed (tests are hermetic; set what a test needs with [`Self::env`]), and
    /// `RUST_BACKTRACE=1` is set unless the environment sets it, so a panic in a child shows where.
    pub fn to_command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("SWITCHBOARD_") || key_text.starts_with("ETCD_") {
                command.env_remove(&key);
            }
        }
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            command.env("RUST_BACKTRACE", "1");
        }
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

/// A running (or finished) child process. Its stdout and stderr both go to one log file; it is
/// killed (SIGKILL) and reaped when the handle is dropped. Every method takes `&self`.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    log_path: PathBuf,
    /// Where this run's part of the log starts (the log may hold earlier runs).
    log_start: u64,
    // Dropped last: the log outlives the process.
    _log_dir: Option<TempDir>,
}

impl ChildProcess {
    /// Starts `command` with its output in `<new temp dir>/<name>.log`.
    pub fn spawn(name: &str, command: Command) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sbtest-{name}-"))
            .tempdir()
            .context("creating a temp dir for a process log")?;
        let log_path = dir.path().join(format!("{name}.log"));
        let mut process = Self::spawn_logged(name, command, &log_path)?;
        process._log_dir = Some(dir);
        Ok(process)
    }

    /// Starts `command` with its output appended to `log_path` (created if needed), after a line
    /// that marks the start, so that one log can hold several runs of a restarted process.
    pub fn spawn_logged(name: &str, mut command: Command, log_path: &Path) -> Result<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening the log file {}", log_path.display()))?;
        let log_start = log
            .metadata()
            .with_context(|| format!("reading the size of {}", log_path.display()))?
            .len();
        let line = format!("{:?}", command);
        writeln!(log, "===== harness: starting {name}: {line}")
            .with_context(|| format!("writing to {}", log_path.display()))?;
        let stderr: File = log.try_clone().context("duplicating a log file handle")?;
        command.stdout(log).stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {line}"))?;
        Ok(Self {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            log_path: log_path.to_path_buf(),
            log_start,
            _log_dir: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log (stdout and stderr interleaved), lossily decoded.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("(cannot read the log {}: {error})", self.log_path.display()),
        }
    }

    /// This run's part of the log (a log shared by several runs of a restarted process holds
    /// theirs before it).
    pub fn own_log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => {
                let start = usize::try_from(self.log_start)
                    .unwrap_or(0)
                    .min(bytes.len());
                String::from_utf8_lossy(&bytes[start..]).into_owned()
            }
            Err(error) => format!("(cannot read the log {}: {error})", self.log_path.display()),
        }
    }

    /// Whether the process has exited and its log says a port was taken: it lost a race for a
    /// port from `free_port` to another process, and starting it on other ports may work.
    pub fn lost_port_race(&self) -> bool {
        !self.is_running()
            && self
                .own_log()
                .to_lowercase()
                .contains("address already in use")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// The log tail formatted for an error message.
    pub fn log_report(&self) -> String {
        format!(
            "last {LOG_TAIL_LINES} lines of {} ({}):\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The exit status if the process has exited (it is then reaped), `None` while it runs.
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        self.lock()
            .try_wait()
            .with_context(|| format!("checking whether {} exited", self.name))
    }

    /// Whether the process is still running (a stopped process counts as running).
    pub fn is_running(&self) -> bool {
        matches!(self.exit_status(), Ok(None))
    }

    /// Sends `signal` to the process; an error if it has already exited (a reaped pid may belong
    /// to another process by now, so nothing is sent).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let mut child = self.lock();
        if let Some(status) = child.try_wait().context("checking the child's state")? {
            bail!(
                "cannot send {signal} to {}: it already exited ({status})",
                self.name
            );
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        signal::kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {} (pid {})", self.name, self.pid))
    }

    /// SIGKILL, then reaps the process. Does nothing if it already exited.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.lock();
        if child
            .try_wait()
            .context("checking the child's state")?
            .is_some()
        {
            return Ok(());
        }
        child
            .kill()
            .with_context(|| format!("killing {} (pid {})", self.name, self.pid))?;
        child
            .wait()
            .with_context(|| format!("reaping {} (pid {})", self.name, self.pid))?;
        Ok(())
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM (and SIGCONT, in case it is paused), then waits for the exit for at most
    /// `deadline`. A process still running at the deadline is killed and an error returned.
    /// Returns the exit status at once if the process had already exited.
    pub async fn terminate(&self, deadline: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        // Ignore a failure here: the process may have exited between the two signals.
        let _ = self.signal(Signal::SIGCONT);
        match self.wait(deadline).await {
            Ok(status) => Ok(status),
            Err(error) => {
                self.kill()?;
                Err(error.context(format!("{} ignored SIGTERM, so it was killed", self.name)))
            }
        }
    }

    /// Waits for the process to exit by itself, for at most `deadline`.
    pub async fn wait(&self, deadline: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(anyhow!(
                    "{} (pid {}) still running after {deadline:?}\n{}",
                    self.name,
                    self.pid,
                    self.log_report()
                ));
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL.min(remaining)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The exit code of a status as a shell reports it: the code, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A process that can be started again with the same command line and the same log file (the
/// log keeps every run). The current process is behind an [`Arc`]; methods take `&self`.
#[derive(Debug)]
pub struct RestartableProcess {
    name: String,
    spec: CommandSpec,
    log_path: PathBuf,
    current: Mutex<Arc<ChildProcess>>,
}

impl RestartableProcess {
    pub fn spawn(name: &str, spec: CommandSpec, log_path: &Path) -> Result<Self> {
        let child = ChildProcess::spawn_logged(name, spec.to_command(), log_path)?;
        Ok(Self {
            name: name.to_string(),
            spec,
            log_path: log_path.to_path_buf(),
            current: Mutex::new(Arc::new(child)),
        })
    }

    /// The current process.
    pub fn process(&self) -> Arc<ChildProcess> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Kills the current process if it still runs, then starts the command again.
    pub fn respawn(&self) -> Result<()> {
        self.process().kill()?;
        let child = ChildProcess::spawn_logged(&self.name, self.spec.to_command(), &self.log_path)?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(child);
        Ok(())
    }

    pub fn spec(&self) -> &CommandSpec {
        &self.spec
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process().log_tail(lines)
    }

    pub fn log_report(&self) -> String {
        self.process().log_report()
    }
}
