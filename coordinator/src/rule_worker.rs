//! Rego rules run in a child process. regorus checks a time limit as it works, but a rule that
//! builds an unbounded value (a comprehension over a huge range) can take all of memory before
//! any clock looks, and an allocation failure aborts the process. So the coordinator starts
//! its own binary with [`WORKER_FLAG`]: the child limits its own address space
//! (`RLIMIT_AS`) and CPU time, reads the rules and their input on stdin, evaluates them with
//! the same code as sbctl's preview (`switchboard_contract::rules`), and writes the outcome on
//! stdout. The parent kills it when the wall-clock limit passes. Whatever a rule does, the
//! coordinator loses one child process and refuses the seal with a clear message.
//!
//! An evaluation is a [`RuleSession`]: the worker starts before the seal reads the set back,
//! and parses items while the rest are still coming from etcd, so that a seal whose rules see
//! every item waits after the read only for the evaluation itself.
//!
//! On the worker's stdin a request is a sequence of records, each a tag byte and
//! length-prefixed frames: `H` and the head (rules, time limit) as JSON; `I`, a key and the
//! item's JSON text, any number of times; `C` and the rest of the input (namespace, plan, ...)
//! as JSON, last.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_contract::rules::{
    ITEMS_PER_PARSER, RegoValue, RuleError, RuleInput, RuleOutcome, RuleSet, input_value,
    parse_items,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc as async_mpsc;

/// The first argument that makes the coordinator binary a rule worker.
pub const WORKER_FLAG: &str = "--rule-worker";
/// The default wall-clock limit of one evaluation of a namespace's rules.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(10);
/// The default address-space limit of the worker.
pub const DEFAULT_MEMORY_MB: u64 = 2048;
/// How long past the time limit the parent waits before it kills the child: the child's own
/// timer should fire first and name the rule.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the worker may still be parsing items it was sent when the last one is sent, on
/// top of the rules' time limit. Parsing is bounded by the set (and the memory limit); this
/// only bounds how long the seal waits for a worker that stopped answering.
const PARSE_ALLOWANCE: Duration = Duration::from_secs(30);
/// The CPU seconds a worker may spend parsing its input before the rules run (a second line
/// of defence: the parent's clock stops a worker first).
const PARSE_CPU_SECONDS: u64 = 600;

const TAG_HEAD: u8 = b'H';
const TAG_ITEM: u8 = b'I';
const TAG_CONTEXT: u8 = b'C';

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

/// The head of a request to the worker.
#[derive(Serialize, Deserialize)]
struct WorkerHead {
    rules: BTreeMap<String, String>,
    time_limit_ms: u64,
}

/// The worker's answer.
#[derive(Serialize, Deserialize)]
struct WorkerAnswer {
    result: Result<RuleOutcome, RuleError>,
    /// How long the rules themselves took, the input parsed.
    evaluate_ms: f64,
}

/// The rules' outcome, and how long their evaluation took (without parsing the input, where
/// that is measured apart).
#[derive(Debug)]
pub struct Evaluated {
    pub outcome: RuleOutcome,
    pub evaluate: Duration,
}

/// What the session's writer task sends to the worker.
enum Record {
    Item(String, Arc<[u8]>),
    /// The rest of the input; the request ends with it.
    Context(serde_json::Map<String, serde_json::Value>),
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

    /// Starts an evaluation of `rules`, to which items are added as they are read.
    pub fn start(&self, rules: &RuleSet) -> Result<RuleSession, RuleError> {
        match self {
            RuleRunner::InProcess { time_limit } => Ok(RuleSession(Session::InProcess {
                rules: rules.clone(),
                time_limit: *time_limit,
                items: Vec::new(),
            })),
            RuleRunner::Worker {
                executable,
                time_limit,
                memory_mb,
            } => start_worker(executable, *time_limit, *memory_mb, rules),
        }
    }

    /// Evaluates `rules` against the whole of `input`.
    pub async fn evaluate(
        &self,
        rules: &RuleSet,
        input: &RuleInput,
    ) -> Result<RuleOutcome, RuleError> {
        let evaluated = self
            .start(rules)?
            .finish(&input.context, &input.items)
            .await?;
        Ok(evaluated.outcome)
    }
}

/// One evaluation under way. Dropping it stops it: the worker is killed and the task that
/// feeds it ends with its channel.
pub struct RuleSession(Session);

enum Session {
    InProcess {
        rules: RuleSet,
        time_limit: Duration,
        items: Vec<(String, Arc<[u8]>)>,
    },
    Worker {
        child: tokio::process::Child,
        records: async_mpsc::UnboundedSender<Record>,
        writer: tokio::task::JoinHandle<std::io::Result<()>>,
        time_limit: Duration,
        memory_mb: u64,
    },
}

fn start_worker(
    executable: &PathBuf,
    time_limit: Duration,
    memory_mb: u64,
    rules: &RuleSet,
) -> Result<RuleSession, RuleError> {
    let mut child = tokio::process::Command::new(executable)
        .arg(WORKER_FLAG)
        .arg(memory_mb.to_string())
        .arg(time_limit.as_secs().saturating_add(1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RuleError::Worker(format!("cannot start {}: {e}", executable.display())))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| RuleError::Worker("the rule worker has no stdin".into()))?;
    let head = WorkerHead {
        rules: rules.sources(),
        time_limit_ms: time_limit.as_millis() as u64,
    };
    let (records, receiver) = async_mpsc::unbounded_channel();
    let writer = tokio::spawn(write_records(stdin, head, receiver));
    Ok(RuleSession(Session::Worker {
        child,
        records,
        writer,
        time_limit,
        memory_mb,
    }))
}

impl RuleSession {
    /// Adds one item the rules see. Never blocks: items queue for the worker in the order
    /// they were added.
    pub fn add_item(&mut self, key: &str, value: &Arc<[u8]>) {
        match &mut self.0 {
            Session::InProcess { items, .. } => items.push((key.to_string(), value.clone())),
            Session::Worker { records, .. } => {
                // A worker that ended early says why when the session finishes.
                let _ = records.send(Record::Item(key.to_string(), value.clone()));
            }
        }
    }

    /// Adds `items` and the rest of the input, and waits for the outcome.
    pub async fn finish(
        mut self,
        context: &serde_json::Map<String, serde_json::Value>,
        items: &[(String, Arc<[u8]>)],
    ) -> Result<Evaluated, RuleError> {
        for (key, value) in items {
            self.add_item(key, value);
        }
        match self.0 {
            Session::InProcess {
                rules,
                time_limit,
                items,
            } => {
                let input = RuleInput {
                    context: context.clone(),
                    items,
                };
                let started = std::time::Instant::now();
                let outcome =
                    tokio::task::spawn_blocking(move || rules.evaluate(&input, time_limit))
                        .await
                        .map_err(|e| RuleError::Worker(format!("the evaluation ended: {e}")))??;
                Ok(Evaluated {
                    outcome,
                    evaluate: started.elapsed(),
                })
            }
            Session::Worker {
                child,
                records,
                writer,
                time_limit,
                memory_mb,
            } => {
                let _ = records.send(Record::Context(context.clone()));
                drop(records);
                finish_worker(child, writer, time_limit, memory_mb).await
            }
        }
    }
}

async fn finish_worker(
    child: tokio::process::Child,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    time_limit: Duration,
    memory_mb: u64,
) -> Result<Evaluated, RuleError> {
    let worker_error = |what: String| RuleError::Worker(what);
    let time_limit_error = || RuleError::TimeLimit {
        rule: "(the rules together)".into(),
        limit_ms: time_limit.as_millis() as u64,
    };
    let run = async {
        // A child that died early closes its end, and the writer stops; what the child said
        // is read below.
        let _ = writer.await;
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(time_limit + KILL_GRACE + PARSE_ALLOWANCE, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(worker_error(format!("the rule worker failed: {e}"))),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => return Err(time_limit_error()),
    };
    if output.status.success() {
        let answer = serde_json::from_slice::<WorkerAnswer>(&output.stdout)
            .map_err(|e| worker_error(format!("the rule worker answered badly: {e}")))?;
        return answer.result.map(|outcome| Evaluated {
            outcome,
            evaluate: Duration::from_secs_f64(answer.evaluate_ms.max(0.0) / 1000.0),
        });
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("memory allocation") || stderr.contains("out of memory") {
        return Err(RuleError::MemoryLimit {
            limit_mb: memory_mb,
        });
    }
    if stderr.contains("CPU time limit") {
        return Err(time_limit_error());
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

/// The session's writer task: the head, then every record as it comes, until the context.
async fn write_records(
    to: impl tokio::io::AsyncWrite + Unpin,
    head: WorkerHead,
    mut records: async_mpsc::UnboundedReceiver<Record>,
) -> std::io::Result<()> {
    let mut to = tokio::io::BufWriter::with_capacity(1 << 16, to);
    to.write_all(&[TAG_HEAD]).await?;
    write_frame(&mut to, &serde_json::to_vec(&head)?).await?;
    while let Some(record) = records.recv().await {
        match record {
            Record::Item(key, value) => {
                to.write_all(&[TAG_ITEM]).await?;
                write_frame(&mut to, key.as_bytes()).await?;
                write_frame(&mut to, &value).await?;
            }
            Record::Context(context) => {
                to.write_all(&[TAG_CONTEXT]).await?;
                write_frame(&mut to, &serde_json::to_vec(&context)?).await?;
                break;
            }
        }
    }
    to.flush().await
}

async fn write_frame(
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::other("a frame of the rules' input is over 4 GiB"))?;
    to.write_all(&len.to_le_bytes()).await?;
    to.write_all(bytes).await
}

/// Reads one record's tag; `None` at the end of the input.
fn read_tag(from: &mut impl BufRead) -> Result<Option<u8>, String> {
    let mut tag = [0u8; 1];
    match from.read(&mut tag) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(tag[0])),
        Err(e) => Err(format!("cannot read the request: {e}")),
    }
}

fn read_frame(from: &mut impl BufRead, what: &str) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len)
        .map_err(|e| format!("the request ends inside the length of {what}: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    let mut frame = Vec::new();
    from.by_ref()
        .take(len as u64)
        .read_to_end(&mut frame)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if frame.len() < len {
        return Err(format!("the request ends inside {what}"));
    }
    Ok(frame)
}

/// A request as the worker reads it: the head, and the input with its items parsed on every
/// core while the rest are still arriving. Every problem is named: a worker answers a bad
/// request with an error, never a panic.
fn read_request(from: &mut impl BufRead) -> Result<(WorkerHead, RegoValue), RuleError> {
    let bad = |what: String| RuleError::Worker(format!("bad request: {what}"));
    if read_tag(from).map_err(bad)? != Some(TAG_HEAD) {
        return Err(bad("it does not start with its head".into()));
    }
    let head = read_frame(from, "its head").map_err(bad)?;
    let head: WorkerHead =
        serde_json::from_slice(&head).map_err(|e| bad(format!("its head is not valid: {e}")))?;

    type Batch = Vec<(String, Vec<u8>)>;
    type Parsed = Result<Vec<(RegoValue, RegoValue)>, RuleError>;
    let (batches, batch_receiver) = mpsc::sync_channel::<Batch>(4);
    let batch_receiver = Arc::new(Mutex::new(batch_receiver));
    let (parsed_sender, parsed) = mpsc::channel::<Parsed>();
    let parsers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let context = std::thread::scope(|scope| {
        for _ in 0..parsers {
            let receiver = batch_receiver.clone();
            let sender = parsed_sender.clone();
            scope.spawn(move || {
                loop {
                    let batch = match receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => return,
                    };
                    let Ok(batch) = batch else { return };
                    if sender.send(parse_items(&batch)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(parsed_sender);
        let mut batch: Batch = Vec::with_capacity(ITEMS_PER_PARSER);
        let context = loop {
            match read_tag(from).map_err(bad)? {
                Some(TAG_ITEM) => {
                    let key = read_frame(from, "an item's key").map_err(bad)?;
                    let key = String::from_utf8(key)
                        .map_err(|e| bad(format!("an item's key is not UTF-8: {e}")))?;
                    let value = read_frame(from, &format!("item {key:?}")).map_err(bad)?;
                    batch.push((key, value));
                    if batch.len() == ITEMS_PER_PARSER {
                        let full =
                            std::mem::replace(&mut batch, Vec::with_capacity(ITEMS_PER_PARSER));
                        batches
                            .send(full)
                            .map_err(|_| bad("the parsers stopped".into()))?;
                    }
                }
                Some(TAG_CONTEXT) => {
                    let context = read_frame(from, "the input's context").map_err(bad)?;
                    break serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
                        &context,
                    )
                    .map_err(|e| bad(format!("the input's context is not valid: {e}")))?;
                }
                Some(other) => return Err(bad(format!("unknown record tag {other}"))),
                None => return Err(bad("it ends before the input's context".into())),
            }
        };
        if !batch.is_empty() {
            batches
                .send(batch)
                .map_err(|_| bad("the parsers stopped".into()))?;
        }
        drop(batches);
        Ok::<_, RuleError>(context)
    });
    // The scope has joined the parsers; on an early error the dropped channel stopped them.
    let context = context?;
    let mut items = BTreeMap::new();
    for part in parsed.try_iter() {
        items.extend(part?);
    }
    let input = input_value(&context, items)?;
    Ok((head, input))
}

/// The child's side: limits itself, evaluates, answers. `args` are the arguments after
/// [`WORKER_FLAG`]: the memory limit in MiB and the CPU limit of the rules in seconds.
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
    // Parsing gets its own allowance; the rules' share is set once the input is read.
    limit_cpu(PARSE_CPU_SECONDS);
    let mut evaluate = Duration::ZERO;
    let result = answer(
        &mut BufReader::with_capacity(1 << 16, std::io::stdin().lock()),
        cpu_seconds,
        &mut evaluate,
    );
    let answer = WorkerAnswer {
        result,
        evaluate_ms: evaluate.as_secs_f64() * 1000.0,
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

/// Evaluates a request. The input's values are not dropped: the worker exits right after it
/// answers, and freeing a large set value by value would only delay the answer.
fn answer(
    from: &mut impl BufRead,
    cpu_seconds: u64,
    evaluate: &mut Duration,
) -> Result<RuleOutcome, RuleError> {
    let (head, input) = read_request(from)?;
    let rules = RuleSet::parse(&head.rules).map_err(|e| RuleError::Failed {
        rule: "(parse)".into(),
        reason: e.to_string(),
    })?;
    limit_cpu(cpu_used_seconds().saturating_add(cpu_seconds));
    let started = std::time::Instant::now();
    let outcome = rules.evaluate_value(&input, Duration::from_millis(head.time_limit_ms));
    *evaluate = started.elapsed();
    std::mem::forget(input);
    outcome
}

fn limit_cpu(seconds: u64) {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(Resource::RLIMIT_CPU, seconds, seconds.saturating_add(1));
}

/// The CPU time this process has used, in whole seconds, rounded up.
fn cpu_used_seconds() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let total = usage.user_time().tv_sec() + usage.system_time().tv_sec() + 1;
            u64::try_from(total).unwrap_or(0)
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> WorkerHead {
        WorkerHead {
            rules: BTreeMap::from([("rules/a.rego".to_string(), "package a".to_string())]),
            time_limit_ms: 1234,
        }
    }

    async fn request(items: &[(&str, &str)]) -> Vec<u8> {
        let (sender, receiver) = async_mpsc::unbounded_channel();
        for (key, value) in items {
            let _ = sender.send(Record::Item(
                key.to_string(),
                Arc::from(value.as_bytes().to_vec()),
            ));
        }
        let mut context = serde_json::Map::new();
        context.insert("namespace".into(), serde_json::json!("catalog"));
        let _ = sender.send(Record::Context(context));
        let mut bytes = Vec::new();
        write_records(&mut bytes, head(), receiver)
            .await
            .expect("writes");
        bytes
    }

    #[tokio::test]
    async fn a_request_reads_back_as_written() {
        let items: Vec<(String, String)> = (0..ITEMS_PER_PARSER * 2 + 3)
            .map(|i| {
                (
                    format!("tables/t{i:06}"),
                    format!("{{\"owner\":\"team-{i}\"}}"),
                )
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = items
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let bytes = request(&borrowed).await;
        let (head, input) = read_request(&mut &bytes[..]).expect("reads");
        assert_eq!(head.rules, self::head().rules);
        assert_eq!(head.time_limit_ms, 1234);
        assert_eq!(input["namespace"], RegoValue::from("catalog"));
        let read = input["items"].as_object().expect("items");
        assert_eq!(read.len(), items.len());
        let last = read
            .get(&RegoValue::from("tables/t008194"))
            .expect("the last item");
        assert_eq!(last["owner"], RegoValue::from("team-8194"));
    }

    #[tokio::test]
    async fn a_cut_or_bad_request_is_named_not_a_panic() {
        let bytes = request(&[("tables/a", "{\"owner\":\"x\"}"), ("tables/b", "[]")]).await;
        for len in 0..bytes.len() {
            let error = read_request(&mut &bytes[..len]).err().expect("refused");
            assert!(
                error.to_string().contains("bad request"),
                "cut at {len}: {error}"
            );
        }
        let bad_item = request(&[("tables/a", "{not json")]).await;
        let error = read_request(&mut &bad_item[..]).err().expect("refused");
        assert!(error.to_string().contains("\"tables/a\""), "{error}");
    }
}
