//! Identities and roles: the `--auth` file, the permission table, and the [`Admission`] every admin
//! request passes before it does anything.
//!
//! The file names users, each with roles and the SHA-256 of a bearer token (never the token):
//!
//! ```yaml
//! users:
//!   - {name: "alice", roles: [operator], token_sha256: "<64 hex digits>"}
//!   - {name: "bob", roles: [viewer, approver], token_sha256: "<64 hex digits>"}
//! ```
//!
//! A request presents `authorization: Bearer <token>`. Admission hashes the token and compares
//! the hash with every user's in constant time. No token, or one that names nobody, is
//! `Unauthenticated`; a user whose roles do not allow the request is `PermissionDenied` (sbctl
//! exits 5 for both). A request without a known token writes nothing: it is counted in
//! `/metrics` and logged at most once a second. A known user's denial is written to the audit
//! trail of the namespace it names (action `denied`, through the same hash chain as every
//! change) if that namespace exists, for at most a few denials per user per minute; the rest
//! are counted. The actor recorded for an allowed request is the user's name from the file:
//! what the caller claims is ignored.
//!
//! Before any of that, admission counts the request against its caller's rate limit
//! ([`crate::limits`]). The file is read again on SIGHUP ([`reload_on_hangup`]): a file that
//! checks replaces the users whole, and one that does not changes nothing.
//!
//! Without `--auth` admission is open: every caller acts as an anonymous admin, and the name it
//! claims (`x-switchboard-actor`) is recorded as given.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use switchboard_proto::keys::validate_namespace;
use switchboard_proto::set::sha256_hex;

use tokio_util::sync::CancellationToken;

use crate::error::{CoordinatorError, Result};
use crate::limits::{self, CallerKey, QuietLog, Rate, RateLimiter};
use crate::release::{Actor, Releases};
use crate::telemetry;

pub use switchboard_proto::keys::{UNAUTHENTICATED, validate_user_name};

mod admission;
mod users;

pub use admission::*;
pub use users::*;

/// The actor of a request without a claimed name while the coordinator runs open.
pub const ANONYMOUS: &str = "anonymous";

/// The longest user name.
pub const MAX_NAME_LEN: usize = switchboard_proto::keys::MAX_USER_NAME_LEN;

/// The largest auth file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
pub use crate::release::DENIAL_AUDIT_TIMEOUT;

/// The message of every `Unauthenticated` answer. It does not say which of the two it was.
pub const UNKNOWN_TOKEN: &str =
    "missing or unknown token (sbctl sends the one given by --token or SWITCHBOARD_TOKEN)";

/// What a user may do is the union of what their roles allow ([`role_permits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: status, manifests, chunks (for `plan`), the audit trail, the policy.
    Viewer,
    /// A viewer who also stages, sets canaries, flips, rolls back and runs rollouts.
    Operator,
    /// A viewer who also approves releases (the approval RPC comes with gates).
    Approver,
    /// Everything, including the health judge's policy.
    Admin,
    /// A sidecar: it streams its applications' outcomes to the leader's judge, and may do
    /// nothing else.
    Reporter,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Reporter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Reporter => "reporter",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The admin API's RPCs, as the permission table knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Status,
    GetManifest,
    GetChunks,
    Audit,
    GetPolicy,
    BeginStage,
    UploadChunks,
    Seal,
    SetCanary,
    Flip,
    Rollback,
    Rollout,
    SetPolicy,
    Approve,
    History,
    CheckGates,
    GetContract,
    SetContract,
    ApproveContract,
    ReportOutcomes,
    WaitForEpoch,
}

impl Rpc {
    pub const ALL: [Rpc; 21] = [
        Rpc::Status,
        Rpc::GetManifest,
        Rpc::GetChunks,
        Rpc::Audit,
        Rpc::GetPolicy,
        Rpc::BeginStage,
        Rpc::UploadChunks,
        Rpc::Seal,
        Rpc::SetCanary,
        Rpc::Flip,
        Rpc::Rollback,
        Rpc::Rollout,
        Rpc::SetPolicy,
        Rpc::Approve,
        Rpc::History,
        Rpc::CheckGates,
        Rpc::GetContract,
        Rpc::SetContract,
        Rpc::ApproveContract,
        Rpc::ReportOutcomes,
        Rpc::WaitForEpoch,
    ];

    /// The RPC's name in `switchboard.proto`, as the audit trail records it.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Status => "Status",
            Rpc::GetManifest => "GetManifest",
            Rpc::GetChunks => "GetChunks",
            Rpc::Audit => "Audit",
            Rpc::GetPolicy => "GetPolicy",
            Rpc::BeginStage => "BeginStage",
            Rpc::UploadChunks => "UploadChunks",
            Rpc::Seal => "Seal",
            Rpc::SetCanary => "SetCanary",
            Rpc::Flip => "Flip",
            Rpc::Rollback => "Rollback",
            Rpc::Rollout => "Rollout",
            Rpc::SetPolicy => "SetPolicy",
            Rpc::Approve => "Approve",
            Rpc::History => "History",
            Rpc::CheckGates => "CheckGates",
            Rpc::GetContract => "GetContract",
            Rpc::SetContract => "SetContract",
            Rpc::ApproveContract => "ApproveContract",
            Rpc::ReportOutcomes => "ReportOutcomes",
            Rpc::WaitForEpoch => "WaitForEpoch",
        }
    }

    /// What the RPC does to `ns`, to complete "alice (viewer) may not ...".
    fn what(self, ns: &str) -> String {
        match self {
            Rpc::Status => format!("read the status of {ns}"),
            Rpc::GetManifest => format!("read the manifests of {ns}"),
            Rpc::GetChunks => format!("read the chunks of {ns}"),
            Rpc::Audit => format!("read the audit trail of {ns}"),
            Rpc::GetPolicy => format!("read the policy of {ns}"),
            Rpc::BeginStage | Rpc::UploadChunks | Rpc::Seal => format!("stage into {ns}"),
            Rpc::SetCanary => format!("set the canary of {ns}"),
            Rpc::Flip => format!("flip {ns}"),
            Rpc::Rollback => format!("roll back {ns}"),
            Rpc::Rollout => format!("run a rollout of {ns}"),
            Rpc::SetPolicy => format!("set the policy of {ns}"),
            Rpc::Approve => format!("approve releases of {ns}"),
            Rpc::History => format!("read the history of {ns}"),
            Rpc::CheckGates => format!("check the gates of {ns}"),
            Rpc::GetContract => format!("read the contract of {ns}"),
            Rpc::SetContract => format!("set the contract of {ns}"),
            Rpc::ApproveContract => format!("approve contracts of {ns}"),
            Rpc::ReportOutcomes => "report the outcomes of a sidecar's applications".into(),
            Rpc::WaitForEpoch => format!("wait for the sidecars of {ns}"),
        }
    }
}

/// The permission table, and the one place that gives roles their meaning.
pub fn role_permits(role: Role, rpc: Rpc) -> bool {
    use Rpc::*;
    let read = matches!(
        rpc,
        Status
            | GetManifest
            | GetChunks
            | Audit
            | GetPolicy
            | History
            | CheckGates
            | GetContract
            | WaitForEpoch
    );
    match role {
        Role::Viewer => read,
        Role::Operator => {
            read || matches!(
                rpc,
                BeginStage | UploadChunks | Seal | SetCanary | Flip | Rollback | Rollout
            )
        }
        Role::Approver => read || matches!(rpc, Approve | ApproveContract),
        Role::Admin => true,
        // A sidecar's credential: it feeds the judge and nothing else, and reads nothing.
        Role::Reporter => rpc == ReportOutcomes,
    }
}

/// Whether a user with `roles` may call `rpc`.
pub fn permitted(roles: &[Role], rpc: Rpc) -> bool {
    roles.iter().any(|role| role_permits(*role, rpc))
}

/// The roles that allow `rpc`, as "operator or admin".
fn roles_that_permit(rpc: Rpc) -> String {
    let names: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|role| role_permits(*role, rpc))
        .map(Role::as_str)
        .collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "no role".to_string(),
    }
}

/// What a request presents: the `authorization` value, the name it claims, and the address
/// it came from (for the rate limit of callers without a known token).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub authorization: Option<String>,
    pub claimed_actor: Option<String>,
    pub peer: Option<IpAddr>,
}

impl Credentials {
    /// The bearer token, if the authorization value is `Bearer <token>`.
    fn bearer(&self) -> Option<&str> {
        let value = self.authorization.as_deref()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The claimed name, without control characters and at most 64 characters long.
    fn claimed(&self) -> Option<String> {
        self.claimed_actor
            .as_deref()
            .map(|s| {
                s.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_NAME_LEN)
                    .collect::<String>()
            })
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// The namespace as a message shows it: a name outside the contract is quoted and cut short,
/// so that nothing a caller sends reaches a message or a log unescaped.
fn shown_namespace(ns: &str) -> String {
    if ns.is_empty() {
        return "a namespace".to_string();
    }
    if validate_namespace(ns).is_ok() {
        return ns.to_string();
    }
    format!("{:?}", ns.chars().take(64).collect::<String>())
}

/// A request refused by admission.
#[derive(Debug)]
pub struct Denial {
    /// The user, or [`UNAUTHENTICATED`].
    pub actor: String,
    pub error: CoordinatorError,
    /// The user's roles (none for an unknown caller).
    pub roles: Vec<Role>,
    /// Why, as the metric's `reason` label: `missing_token`, `unknown_token` or `role`.
    pub reason: &'static str,
}

impl Denial {
    /// Whether the caller presented no known token (rather than being a user without the
    /// role).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self.error, CoordinatorError::Unauthenticated(_))
    }

    /// The metric's `code` label: `unauthenticated` or `permission_denied`.
    pub fn code(&self) -> &'static str {
        if self.is_unauthenticated() {
            "unauthenticated"
        } else {
            "permission_denied"
        }
    }
}

/// Admission's decision for `rpc` on `ns`, which touches nothing.
pub fn check(
    users: &Users,
    credentials: &Credentials,
    rpc: Rpc,
    ns: &str,
) -> Result<Actor, Denial> {
    let token = credentials.bearer();
    let Some(user) = token.and_then(|t| users.authenticate(t)) else {
        return Err(Denial {
            actor: UNAUTHENTICATED.to_string(),
            error: CoordinatorError::Unauthenticated(UNKNOWN_TOKEN.to_string()),
            roles: Vec::new(),
            reason: if token.is_some() {
                "unknown_token"
            } else {
                "missing_token"
            },
        });
    };
    if permitted(&user.roles, rpc) {
        return Ok(Actor {
            name: user.name.clone(),
        });
    }
    Err(Denial {
        actor: user.name.clone(),
        error: CoordinatorError::PermissionDenied(format!(
            "{} ({}) may not {}: it needs {}",
            user.name,
            user.roles_text(),
            rpc.what(&shown_namespace(ns)),
            roles_that_permit(rpc)
        )),
        roles: user.roles.clone(),
        reason: "role",
    })
}

#[cfg(test)]
mod tests;
