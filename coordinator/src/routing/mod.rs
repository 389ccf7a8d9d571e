//! Routing changes: canary, flip, rollback, rollouts, the judge policy, and the leader's
//! automatic actions (flip-back on a breach, rollout steps, the end of the bake time).
//!
//! Every change is one etcd transaction (invariant 2). It compares, against the state it was
//! decided on, the routing key, the slots it moves consumers to, the rollout record and the
//! audit head, and that the next audit record's key does not exist yet. It writes the new
//! routing, the rollout record and the audit record together (invariant 8). Changes made by
//! the leader also compare the leader's election key, so a deposed leader's queued writes fail.
//!
//! Each operation hands the commit engine a decision: a pure function of the namespace's state
//! at one revision and the request (`decide.rs`, with a unit tier that needs no etcd). The
//! files, by responsibility: `changes.rs` (what people ask for: canary, flip, rollback,
//! policy), `rollout.rs` (rollouts), `sync_flip.rs` (the synchronized flip), `automatic.rs`
//! (the leader's flip-back and the end of the bake time), `commit.rs` (reading, checking
//! approvals and gates, and the one transaction).

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::json;
use switchboard_proto::bucket::percent;
use switchboard_proto::judge::Verdict;
use switchboard_proto::time::{now_ms, rfc3339_ms};
use switchboard_proto::{
    BUCKETS, Canary, HealthRecord, Policy, Rollout, RolloutState, Routing, RoutingChange, Slot,
    SlotRef, SlotState, SlotVersion, SyncPrepared,
};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::convergence::HealthView;
use crate::crash;
use crate::error::{CoordinatorError, Result};
use crate::release::{
    Actor, AuditedChange, BeginStage, MAX_ATTEMPTS, Releases, append_audit_record, busy,
    check_namespace, to_json, unique,
};
use crate::store::{NamespaceState, parse_record, unchanged};

/// The leader's claim: its key under the election name, and the revision that created it. A
/// leader whose lease expired has lost that key, and every write fenced with it fails.
#[derive(Clone, Debug)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
}

impl Fence {
    pub(crate) fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }
}

/// Who changes what, decided against which epoch.
#[derive(Clone, Copy)]
pub struct ChangeRequest<'a> {
    pub ns: &'a str,
    pub expected_epoch: u64,
    pub action: &'a str,
    pub reason: &'a str,
    pub actor: &'a Actor,
    pub fence: Option<&'a Fence>,
}

impl<'a> ChangeRequest<'a> {
    /// A change asked for by a person (through sbctl or the dashboard): no leader's fence.
    pub fn by_person(
        ns: &'a str,
        expected_epoch: u64,
        action: &'a str,
        reason: &'a str,
        actor: &'a Actor,
    ) -> Self {
        Self {
            ns,
            expected_epoch,
            action,
            reason,
            actor,
            fence: None,
        }
    }
}

/// What happens to the rollout record with a routing change.
enum RolloutAfter {
    /// A change made by hand ends a running or paused rollout: people and automation must not
    /// fight over the canary weight.
    EndActive,
    /// The change does not concern the rollout (the end of the bake time).
    Keep,
    Put(Rollout),
}

/// The longest activation lead a synchronized flip accepts.
pub const MAX_SYNC_LEAD_MS: u64 = 60_000;
/// The longest a synchronized flip waits for its sidecars' acknowledgements.
pub const MAX_SYNC_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The defaults when the request leaves them at 0.
pub const DEFAULT_SYNC_LEAD_MS: u64 = 250;
/// How old a synchronized flip's preparation is when the leader withdraws it: no coordinator
/// waits for acknowledgements longer than [`MAX_SYNC_ACK_TIMEOUT`], so an older one was left by
/// a coordinator that died between the preparation and the commit.
pub const STALE_PREPARATION_MS: u64 = MAX_SYNC_ACK_TIMEOUT.as_secs() * 1000 + 10_000;
pub const DEFAULT_SYNC_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a routing change does with the fields of a synchronized flip.
#[derive(Clone, Copy, Debug)]
enum SyncStep {
    /// Not a step of a synchronized flip: both fields are cleared.
    None,
    /// The preparation: the decision's `prepare` is written, `activate_at_ms` cleared.
    Prepare,
    /// The commit: `prepare` is cleared, and sidecars switch `lead_ms` after the commit.
    Activate { lead_ms: u64 },
}

/// A routing change decided on one consistent read.
struct Decision {
    routing: Routing,
    compare_slots: Vec<Slot>,
    detail: serde_json::Value,
    rollout: RolloutAfter,
    /// The set the change moves consumers to, when it moves any there (a canary above 0% or
    /// a flip): the namespace's gates must hold for it, and its approval when required.
    target: Option<Target>,
}

/// What a change moves consumers to, and whether it needs an approval when the policy asks
/// for one. Rollout steps taken by the leader do not: the rollout's start needed it.
struct Target {
    slot_ref: SlotRef,
    needs_approval: bool,
}

impl Target {
    fn approved(slot_ref: &SlotRef) -> Option<Target> {
        Some(Target {
            slot_ref: slot_ref.clone(),
            needs_approval: true,
        })
    }
}

mod automatic;
mod changes;
mod commit;
mod decide;
mod rollout;
mod sync_flip;

pub use decide::ACKNOWLEDGEMENTS_PER_SECOND;
use decide::*;
