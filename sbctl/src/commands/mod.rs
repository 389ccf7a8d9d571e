//! The commands, one function each: what each asks the coordinator and what it prints.
//!
//! Here: the context every command runs in, and the reading commands (status, contract, audit).
//! By subject: `stage.rs` (the stage protocol and `plan`), `changes.rs` (canary, flip,
//! rollback, rollouts), `wait.rs` (the streamed wait for the sidecars), `policy.rs`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use switchboard_proto::pb::EpochWaitProgress;
use switchboard_proto::pb::{
    BeginStageRequest, ChunkData, FlipRequest, RollbackRequest, RolloutRequest, SealRequest,
    SetCanaryRequest,
};
use switchboard_proto::set::{Chunk, MAX_WHOLE_MANIFEST_BYTES};
use switchboard_proto::time::now_ms;
use switchboard_proto::{AuditTrail, Manifest, Policy, RoutingChange, Slot};
use tonic::Code;

use crate::cli::{ChangeArgs, POLICY_FLAGS, PolicySettings, RolloutAction};
use crate::client::{ConnectOptions, Coordinator, Reply};
use crate::exit::CliError;
use crate::gates::gated;
use crate::output::{self, StageReport, WaitReport};
use crate::pipeline;

mod changes;
mod policy;
mod stage;
#[cfg(test)]
mod tests;
mod wait;

pub use changes::*;
pub use policy::*;
pub use stage::*;
use wait::*;

/// The pause before the epoch wait follows the coordinator's stream again after it ended
/// early (a failover).
pub const WAIT_RETRY: Duration = Duration::from_millis(200);

/// How often `flip --sync` reads the status while the sidecars switch: the activation point is
/// usually a fraction of a second away.
const SYNC_WAIT_POLL: Duration = Duration::from_millis(50);

/// How long after the activation point sidecars put off reporting their switch.
const SYNC_SETTLE_MS: u64 = 100;

/// What every command needs: how to reach the coordinator and how to print.
#[derive(Clone, Debug)]
pub struct Context {
    pub connect: ConnectOptions,
    pub json: bool,
}

impl Context {
    pub(crate) async fn coordinator(&self) -> Result<Coordinator, CliError> {
        Coordinator::connect(&self.connect).await
    }

    /// Prints a reply's document: as it came with `--json`, else as `human` renders it.
    pub(crate) fn print<T>(
        &self,
        reply: &Reply<T>,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        if self.json {
            output::print_json(&reply.json)
        } else {
            output::print_text(&human(&reply.document))
        }
    }
}

/// `sbctl status NS`
pub async fn status(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.status(namespace).await?;
    let now = now_ms();
    ctx.print(&reply, |status| output::render_status(status, now))
}

/// `sbctl contract show NS`
pub async fn contract_show(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.get_contract(namespace).await?;
    ctx.print(&reply, output::render_contract)
}

/// `sbctl contract set NS DIR`: reads DIR/switchboard.yaml with its schemas and rules, checks
/// that the contract compiles (the coordinator checks again), and sends it.
pub async fn contract_set(
    ctx: &Context,
    namespace: &str,
    dir: &Path,
    reason: &str,
) -> Result<(), CliError> {
    if !dir.join(crate::source::CONFIG_FILE).is_file() {
        return Err(CliError::Usage(format!(
            "{} has no {}: the contract is written there (schemas: and rules:)",
            crate::escape::path(dir),
            crate::source::CONFIG_FILE
        )));
    }
    let invalid = |problems| {
        CliError::Source(crate::source::SourceError::Invalid {
            path: dir.to_path_buf(),
            problems,
        })
    };
    let config = crate::validate::load_config(dir).map_err(invalid)?;
    let contract = crate::validate::read_contract(dir, &config).map_err(invalid)?;
    contract
        .compile()
        .map_err(|e| CliError::Refused(format!("the contract is refused: {e}")))?;
    let mut coordinator = ctx.coordinator().await?;
    let current = coordinator.get_contract(namespace).await?.document;
    let expected = current.active.as_ref().map_or("", |r| r.hash.as_str());
    let reply = coordinator
        .set_contract(namespace, &contract, expected, reason)
        .await?;
    ctx.print(&reply, output::render_contract)
}

/// `sbctl contract approve NS HASH`
pub async fn contract_approve(
    ctx: &Context,
    namespace: &str,
    hash: &str,
    reason: &str,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator
        .approve_contract(namespace, hash, reason)
        .await?;
    ctx.print(&reply, output::render_contract)
}

/// `sbctl audit NS [--verify]`
pub async fn audit(ctx: &Context, namespace: &str, verify: bool) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.audit(namespace, verify).await?;
    let verdict = if verify {
        Some(verdict(&reply.document)?)
    } else {
        None
    };
    if ctx.json {
        output::print_json(&reply.json)?;
    } else {
        let mut text = output::render_audit(&reply.document);
        if let Some(verdict) = &verdict {
            text.push_str(&match verdict {
                Ok(n) => format!("audit chain intact ({n} records)\n"),
                Err(problem) => format!("{problem}\n"),
            });
        }
        output::print_text(&text)?;
    }
    match verdict {
        Some(Err(problem)) => Err(CliError::Failed(problem)),
        _ => Ok(()),
    }
}

/// The result of `--verify`: the number of records when the chain is intact, else the
/// sentence saying where it breaks. The coordinator's verification is authoritative; the links
/// between the records sent (each `prev_hash` naming the hash before it, sequence numbers
/// rising by one) are checked here as well.
pub fn verdict(trail: &AuditTrail) -> Result<Result<usize, String>, CliError> {
    let verified = trail.verified.as_ref().ok_or_else(|| CliError::BadReply {
        rpc: "Audit",
        problem: "it does not say whether the chain is intact".into(),
    })?;
    if !verified.intact {
        let at = verified
            .first_bad_seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into());
        let problem = verified.problem.as_deref().unwrap_or("does not match");
        return Ok(Err(format!("audit chain broken at record {at}: {problem}")));
    }
    for pair in trail.records.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.seq != before.seq + 1 {
            return Ok(Err(format!(
                "audit chain broken at record {}: it follows record {}",
                after.seq, before.seq
            )));
        }
        if after.prev_hash != before.hash {
            return Ok(Err(format!(
                "audit chain broken at record {}: its previous hash is not record {}'s hash",
                after.seq, before.seq
            )));
        }
    }
    Ok(Ok(trail.records.len()))
}
