//! Rego rules run in a child process. regorus checks a time limit as it works, but a rule that
//! builds an unbounded value (a comprehension over a huge range) can take all of memory before
//! any clock looks, and an allocation failure aborts the process. So the coordinator starts
//! its own binary with [`WORKER_FLAG`]: the child limits its own address space
//! (`RLIMIT_AS`) and CPU time, reads the rules and their input on stdin, evaluates them with
//! the same code as sbctl's preview (`switchboard_contract::rules`), and writes the outcome on
//! stdout. The parent kills it when the wall-clock limit passes. Whatever a rule does, the
//! coordinator loses one child process and refuses the seal with a clear message.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_contract::rules::{RuleError, RuleOutcome, RuleSet};
use tokio::io::AsyncWriteExt;

/// The first argument that makes the coordinator binary a rule worker.
pub const WORKER_FLAG: &str = "--rule-worker";
/// The default wall-clock limit of one evaluation of a namespace's rules.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(10);
/// The default address-space limit of the worker.
pub const DEFAULT_MEMORY_MB: u64 = 2048;
/// How long past the time limit the parent waits before it kills the child: the child's own
/// timer should fire first and name the rule.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How the coordinator evaluates rules.
#[derive(Clone, Debug)]
pub enum RuleRunner {
    /// In a child process of this binary, under limits of time and memory.
    Worker {
        executable: PathBuf,
        time_limit: Duration,
        memory_mb: u64,
    },
    /// In this process, under the time limit only (tests of the library, which have no
    /// coordinator binary at hand).
    InProcess { time_limit: Duration },
}

impl Default for RuleRunner {
    fn default() -> Self {
        RuleRunner::InProcess {
            time_limit: DEFAULT_TIME_LIMIT,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WorkerRequest {
    rules: BTreeMap<String, String>,
    time_limit_ms: u64,
    input: Value,
}

impl RuleRunner {
    /// The worker runner for this coordinator binary.
    pub fn worker(time_limit: Duration, memory_mb: u64) -> std::io::Result<Self> {
        Ok(RuleRunner::Worker {
            executable: std::env::current_exe()?,
            time_limit,
            memory_mb,
        })
    }

    /// Evaluates `rules` against `input`.
    pub async fn evaluate(&self, rules: &RuleSet, input: &Value) -> Result<RuleOutcome, RuleError> {
        match self {
            RuleRunner::InProcess { time_limit } => {
                let (rules, input, time_limit) = (rules.clone(), input.clone(), *time_limit);
                tokio::task::spawn_blocking(move || rules.evaluate(&input, time_limit))
                    .await
                    .map_err(|e| RuleError::Worker(format!("the evaluation ended: {e}")))?
            }
            RuleRunner::Worker {
                executable,
                time_limit,
                memory_mb,
            } => evaluate_in_worker(executable, *time_limit, *memory_mb, rules, input).await,
        }
    }
}

async fn evaluate_in_worker(
    executable: &PathBuf,
    time_limit: Duration,
    memory_mb: u64,
    rules: &RuleSet,
    input: &Value,
) -> Result<RuleOutcome, RuleError> {
    let worker_error = |what: String| RuleError::Worker(what);
    let request = serde_json::to_vec(&WorkerRequest {
        rules: rules.sources(),
        time_limit_ms: time_limit.as_millis() as u64,
        input: input.clone(),
    })
    .map_err(|e| worker_error(format!("cannot encode the input: {e}")))?;
    let mut child = tokio::process::Command::new(executable)
        .arg(WORKER_FLAG)
        .arg(memory_mb.to_string())
        .arg(time_limit.as_secs().saturating_add(1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| worker_error(format!("cannot start {}: {e}", executable.display())))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A child that died early closes its end; what it said is read below.
            let _ = stdin.write_all(&request).await;
            drop(stdin);
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(time_limit + KILL_GRACE, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(worker_error(format!("the rule worker failed: {e}"))),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => {
            return Err(RuleError::TimeLimit {
                rule: "(the rules together)".into(),
                limit_ms: time_limit.as_millis() as u64,
            });
        }
    };
    if output.status.success() {
        return serde_json::from_slice::<Result<RuleOutcome, RuleError>>(&output.stdout)
            .map_err(|e| worker_error(format!("the rule worker answered badly: {e}")))?;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("memory allocation") || stderr.contains("out of memory") {
        return Err(RuleError::MemoryLimit {
            limit_mb: memory_mb,
        });
    }
    if stderr.contains("CPU time limit") {
        return Err(RuleError::TimeLimit {
            rule: "(the rules together)".into(),
            limit_ms: time_limit.as_millis() as u64,
        });
    }
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(worker_error(format!(
        "the rule worker ended with {}: {}",
        output.status,
        first.chars().take(300).collect::<String>()
    )))
}

/// The child's side: limits itself, evaluates, answers. `args` are the arguments after
/// [`WORKER_FLAG`]: the memory limit in MiB and the CPU limit in seconds.
pub fn run_worker(args: &[String]) -> std::process::ExitCode {
    let number = |i: usize, default: u64| {
        args.get(i)
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let memory_bytes = number(0, DEFAULT_MEMORY_MB).saturating_mul(1024 * 1024);
    let cpu_seconds = number(1, DEFAULT_TIME_LIMIT.as_secs() + 1);
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_AS, memory_bytes, memory_bytes) {
        eprintln!("cannot limit the rule worker's memory: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // A second line of defence behind the wall clock: the kernel stops a worker that spins.
    let _ = setrlimit(
        Resource::RLIMIT_CPU,
        cpu_seconds,
        cpu_seconds.saturating_add(1),
    );
    let mut request = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut request) {
        eprintln!("cannot read the rules' input: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let answer: Result<RuleOutcome, RuleError> =
        match serde_json::from_slice::<WorkerRequest>(&request) {
            Err(e) => Err(RuleError::Worker(format!("bad request: {e}"))),
            Ok(request) => match RuleSet::parse(&request.rules) {
                Err(e) => Err(RuleError::Failed {
                    rule: "(parse)".into(),
                    reason: e.to_string(),
                }),
                Ok(rules) => {
                    rules.evaluate(&request.input, Duration::from_millis(request.time_limit_ms))
                }
            },
        };
    let encoded = serde_json::to_vec(&answer).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&encoded)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
