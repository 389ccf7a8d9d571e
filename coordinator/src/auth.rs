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

/// One user of the auth file, checked.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// Distinct, in the order of [`Role::ALL`].
    pub roles: Vec<Role>,
    /// Lowercase hex.
    token_sha256: String,
}

impl User {
    /// The roles as "viewer, approver".
    pub fn roles_text(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        names.join(", ")
    }
}

/// The users of an auth file.
#[derive(Clone, Debug)]
pub struct Users {
    users: Vec<User>,
}

/// The file as written; every field is optional here so that a missing one is reported with
/// the user it belongs to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    users: Option<Vec<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Option<String>,
    roles: Option<RawRoles>,
    token_sha256: Option<String>,
}

/// `roles: [viewer, approver]`, or one role as `roles: viewer`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoles {
    One(String),
    Many(Vec<String>),
}

impl Users {
    /// Reads and checks an auth file. The error names the file and, where it can, the user.
    pub fn load(path: &Path) -> anyhow::Result<Users> {
        let context = || format!("--auth {}", path.display());
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .with_context(context)?;
        anyhow::ensure!(
            metadata.len() <= MAX_FILE_BYTES,
            "{}: the file is {} bytes, over the limit of {MAX_FILE_BYTES}",
            context(),
            metadata.len()
        );
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .with_context(context)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| anyhow::anyhow!("not UTF-8 text (at byte {})", e.valid_up_to()))
            .with_context(context)?;
        Users::parse(text).map_err(|problem| anyhow::anyhow!("{}: {problem}", context()))
    }

    /// Parses and checks the text of an auth file.
    pub fn parse(text: &str) -> Result<Users, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut options = serde_saphyr::Options::default();
        // A snippet of the file could show a line of it; the location is enough.
        options.with_snippet = false;
        options.strict_booleans = true;
        let raw: Option<RawFile> =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| yaml_problem(&e))?;
        let raw_users = raw
            .and_then(|r| r.users)
            .ok_or("it has no `users:` list; see the README, \"Identities and roles\"")?;
        if raw_users.is_empty() {
            return Err("its `users:` list is empty: nobody could do anything".into());
        }
        let mut users: Vec<User> = Vec::with_capacity(raw_users.len());
        for (index, raw) in raw_users.into_iter().enumerate() {
            let user = check_user(index, raw)?;
            if let Some(other) = users.iter().find(|u| u.name == user.name) {
                return Err(format!("user {} is listed twice", other.name));
            }
            if let Some(other) = users.iter().find(|u| u.token_sha256 == user.token_sha256) {
                return Err(format!(
                    "users {} and {} have the same token_sha256; give each user a token of their own (`sbctl token new NAME`)",
                    other.name, user.name
                ));
            }
            users.push(user);
        }
        Ok(Users { users })
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The user whose token this is. The token's SHA-256 is compared with every user's in
    /// constant time, without stopping at a match, so the answer's timing tells nothing about
    /// the stored hashes.
    pub fn authenticate(&self, token: &str) -> Option<&User> {
        if token.is_empty() {
            return None;
        }
        let presented = sha256_hex(token.as_bytes());
        let mut found = None;
        for user in &self.users {
            let matches: bool = user
                .token_sha256
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .into();
            if matches {
                found = Some(user);
            }
        }
        found
    }
}

fn check_user(index: usize, raw: RawUser) -> Result<User, String> {
    let entry = index + 1;
    let name = raw
        .name
        .ok_or_else(|| format!("user {entry} (counting from 1) has no name"))?;
    validate_user_name(&name).map_err(|e| format!("user {entry} (counting from 1): {e}"))?;
    let raw_roles = match raw.roles {
        None => Vec::new(),
        Some(RawRoles::One(role)) => vec![role],
        Some(RawRoles::Many(roles)) => roles,
    };
    if raw_roles.is_empty() {
        return Err(format!(
            "user {name} has no roles; give one or more of viewer, operator, approver, admin"
        ));
    }
    let mut roles = Vec::with_capacity(raw_roles.len());
    for role in &raw_roles {
        let role = Role::parse(role).ok_or_else(|| {
            format!("user {name}: role {role:?} is not viewer, operator, approver or admin")
        })?;
        roles.push(role);
    }
    roles.sort();
    roles.dedup();
    let hash = raw.token_sha256.ok_or_else(|| {
        format!(
            "user {name} has no token_sha256; `sbctl token new {name}` makes a token and its line"
        )
    })?;
    let hash = hash.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "user {name}: token_sha256 must be 64 hex digits (the SHA-256 of the token), not {} characters{}",
            hash.len(),
            if hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                ""
            } else {
                " with other characters than hex digits"
            }
        ));
    }
    if hash == sha256_hex(b"") {
        return Err(format!(
            "user {name}: token_sha256 is the SHA-256 of an empty token"
        ));
    }
    Ok(User {
        name,
        roles,
        token_sha256: hash,
    })
}

fn yaml_problem(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let first = if first.is_empty() {
        "cannot be parsed"
    } else {
        first
    };
    match error.location().filter(|l| l.line() > 0) {
        Some(location) if !first.contains("line") => {
            format!("line {}: {first}", location.line())
        }
        _ => first.to_string(),
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

/// Every admin request passes here first: it counts the request against its caller's rate
/// limit, then names the actor or refuses the request.
///
/// A refusal of an unknown caller (no token, or a token of nobody) writes nothing anywhere but
/// a counter and, at most once a second, a log line: a stranger must cost nothing that lasts.
/// A known user's refusal is audited in the namespace it names, if that exists, within the
/// user's allowance of audited denials ([`Releases::audit_denial`]).
#[derive(Clone)]
pub struct Admission {
    /// The users in force, replaced whole by a reload of the `--auth` file; `None` while the
    /// admission is open (no `--auth`), which a reload never changes.
    users: Option<Arc<RwLock<Arc<Users>>>>,
    releases: Releases,
    rate_limit: Arc<RateLimiter>,
    unauthenticated_log: Arc<QuietLog>,
    rate_limited_log: Arc<QuietLog>,
}

impl Admission {
    /// An admission for `users`, with the default rate limit; without users (no `--auth`) it is
    /// open: every caller is an anonymous admin, named as it claims.
    pub fn new(users: Option<Users>, releases: Releases) -> Self {
        if let Some(users) = &users {
            metrics::gauge!(telemetry::AUTH_USERS).set(users.users().len() as f64);
        }
        Self {
            users: users.map(|users| Arc::new(RwLock::new(Arc::new(users)))),
            releases,
            rate_limit: Arc::new(RateLimiter::new(Rate {
                per_second: limits::DEFAULT_REQUESTS_PER_SECOND,
                burst: limits::DEFAULT_BURST,
            })),
            unauthenticated_log: Arc::new(QuietLog::new(QUIET_LOG_INTERVAL)),
            rate_limited_log: Arc::new(QuietLog::new(QUIET_LOG_INTERVAL)),
        }
    }

    /// The same admission with another rate limit.
    pub fn with_rate_limit(self, rate_limit: RateLimiter) -> Self {
        Self {
            rate_limit: Arc::new(rate_limit),
            ..self
        }
    }

    /// Whether admission admits everyone (no `--auth`).
    pub fn is_open(&self) -> bool {
        self.users.is_none()
    }

    /// The users in force now. A request works with one set of users from start to end,
    /// even when a reload replaces them meanwhile.
    fn users(&self) -> Option<Arc<Users>> {
        self.users.as_ref().map(|users| {
            // A poisoned lock only means a panic elsewhere while it was held; the Arc in it
            // is always a whole, checked set of users.
            users.read().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Puts `users` in force for every request from now on, and returns the users they
    /// replace. An open admission stays open: it returns `None` and changes nothing.
    pub fn replace_users(&self, users: Users) -> Option<Arc<Users>> {
        let lock = self.users.as_ref()?;
        let mut current = lock.write().unwrap_or_else(PoisonError::into_inner);
        Some(std::mem::replace(&mut *current, Arc::new(users)))
    }

    /// Reads the `--auth` file again and puts its users in force. A file that does not check
    /// changes nothing: the error is logged naming the file and the problem, and counted.
    /// Returns whether the new users are in force.
    pub async fn reload(&self, path: &Path) -> bool {
        if self.is_open() {
            return false;
        }
        let file = path.to_path_buf();
        // The file is small (at most MAX_FILE_BYTES), but reading it is still blocking I/O.
        let loaded = tokio::task::spawn_blocking(move || Users::load(&file))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("reading the file failed: {error}")));
        match loaded {
            Ok(users) => {
                let count = users.users().len();
                let change = self
                    .replace_users(users.clone())
                    .map(|before| describe_change(&before, &users))
                    .unwrap_or_default();
                metrics::counter!(telemetry::AUTH_RELOADS, "result" => "ok").increment(1);
                metrics::gauge!(telemetry::AUTH_USERS).set(count as f64);
                tracing::info!(file = %path.display(), users = count, %change, "auth file reloaded on SIGHUP");
                true
            }
            Err(error) => {
                metrics::counter!(telemetry::AUTH_RELOADS, "result" => "error").increment(1);
                tracing::error!(
                    file = %path.display(),
                    problem = %format!("{error:#}"),
                    "auth file not reloaded on SIGHUP: the previous users stay in force until the file checks and SIGHUP is sent again"
                );
                false
            }
        }
    }

    /// Admission's decision for `rpc` on `ns`, which touches nothing. While admission is open
    /// every caller is admitted, named as it claims.
    pub fn check(&self, credentials: &Credentials, rpc: Rpc, ns: &str) -> Result<Actor, Denial> {
        match self.users() {
            None => Ok(Actor {
                name: credentials
                    .claimed()
                    .unwrap_or_else(|| ANONYMOUS.to_string()),
            }),
            Some(users) => check(&users, credentials, rpc, ns),
        }
    }

    /// Who the rate limit counts this request against: the user its token names; without
    /// `--auth`, the token it presents (by its hash); else the address it came from. With
    /// `--auth` a token of nobody identifies no one (anyone can make up a new one for every
    /// request), so such requests count against their address.
    fn caller(&self, credentials: &Credentials) -> CallerKey {
        let token = credentials.bearer();
        match self.users() {
            Some(users) => match token.and_then(|token| users.authenticate(token)) {
                Some(user) => CallerKey::User(user.name.clone()),
                None => CallerKey::peer(credentials.peer),
            },
            None => match token {
                Some(token) => CallerKey::Token(sha256_hex(token.as_bytes())),
                None => CallerKey::peer(credentials.peer),
            },
        }
    }

    /// Counts a request against its caller's rate limit, or refuses it with the time to wait
    /// (`ResourceExhausted`, HTTP 429). Touches no etcd.
    pub fn limit(&self, credentials: &Credentials, rpc: Rpc) -> Result<()> {
        if !self.rate_limit.is_on() {
            return Ok(());
        }
        // Every sidecar of a fleet streams its outcomes with the one reporter credential, and
        // after a failover thousands open their streams to the new leader at once: counted by
        // the credential they would be one caller, refused for minutes. Each sidecar's address
        // is its own caller instead; the credential can do nothing else.
        let caller = if rpc == Rpc::ReportOutcomes {
            CallerKey::peer(credentials.peer)
        } else {
            self.caller(credentials)
        };
        let now = Instant::now();
        let Err(limited) = self.rate_limit.check(&caller, now) else {
            return Ok(());
        };
        metrics::counter!(telemetry::REQUESTS_RATE_LIMITED, "caller" => caller.kind()).increment(1);
        if let Some(suppressed) = self.rate_limited_log.allow(now) {
            tracing::info!(
                caller = %caller.describe(),
                rpc = rpc.name(),
                suppressed,
                "request over the caller's rate limit (switchboard_requests_rate_limited_total counts these; `suppressed` is how many such lines were left out since the last)"
            );
        }
        Err(CoordinatorError::RateLimited {
            message: format!(
                "rate limited: {} sent more than {} requests a second (bursts of {}); retry after {} s",
                caller.describe(),
                limited.rate.per_second,
                limited.rate.burst,
                limited.retry_after_seconds
            ),
            retry_after_seconds: limited.retry_after_seconds,
        })
    }

    /// Records a denial (see [`Admission`]) and returns its error. The denial is answered whatever
    /// becomes of its record.
    pub async fn refuse(
        &self,
        denial: Denial,
        credentials: &Credentials,
        rpc: Rpc,
        ns: &str,
    ) -> CoordinatorError {
        self.record_denial(&denial, credentials, rpc, ns).await;
        denial.error
    }

    /// Admission's first look at a request, from its headers alone, before its body is read:
    /// with `--auth`, a caller without a known token is refused here (rate limit first, as in
    /// [`Self::admit`]), counted, and its message never read, however large it says it is.
    /// A known caller goes on to [`Self::admit`], which knows the namespace. Returns whether the
    /// caller's roles permit `rpc` (in any namespace; roles are not per namespace; always
    /// without `--auth`), which sizes what the caller may send; nothing is recorded for that.
    pub fn authenticate_first(&self, credentials: &Credentials, rpc: Rpc) -> Result<bool> {
        let Some(users) = self.users() else {
            return Ok(true);
        };
        if let Some(user) = credentials
            .bearer()
            .and_then(|token| users.authenticate(token))
        {
            return Ok(permitted(&user.roles, rpc));
        }
        self.limit(credentials, rpc)?;
        match check(&users, credentials, rpc, "") {
            Err(denial) if denial.is_unauthenticated() => {
                self.count_unauthenticated(&denial, credentials, rpc);
                Err(denial.error)
            }
            _ => Ok(false),
        }
    }

    /// The actor of an allowed request; a request over its caller's rate limit is refused,
    /// and a denied one is recorded and refused.
    pub async fn admit(&self, credentials: &Credentials, rpc: Rpc, ns: &str) -> Result<Actor> {
        self.limit(credentials, rpc)?;
        match self.check(credentials, rpc, ns) {
            Ok(actor) => Ok(actor),
            Err(denial) => Err(self.refuse(denial, credentials, rpc, ns).await),
        }
    }

    /// Counts a denial of a caller without a known token, and logs it now and then. Nothing
    /// that such a caller sends reaches etcd or a log line of its own: the namespace it names,
    /// the name it claims and its token are not even looked at.
    fn count_unauthenticated(&self, denial: &Denial, credentials: &Credentials, rpc: Rpc) {
        metrics::counter!(
            telemetry::REQUESTS_DENIED,
            "rpc" => rpc.name(),
            "code" => denial.code(),
            "reason" => denial.reason
        )
        .increment(1);
        if let Some(suppressed) = self.unauthenticated_log.allow(Instant::now()) {
            tracing::info!(
                rpc = rpc.name(),
                reason = denial.reason,
                peer = ?credentials.peer,
                suppressed,
                "request denied: missing or unknown token (switchboard_requests_denied_total counts these; `suppressed` is how many such lines were left out since the last)"
            );
        }
    }

    async fn record_denial(&self, denial: &Denial, credentials: &Credentials, rpc: Rpc, ns: &str) {
        if denial.is_unauthenticated() {
            self.count_unauthenticated(denial, credentials, rpc);
            return;
        }
        let code = denial.code();
        metrics::counter!(
            telemetry::REQUESTS_DENIED,
            "rpc" => rpc.name(),
            "code" => code,
            "reason" => denial.reason
        )
        .increment(1);
        let detail = json!({
            "rpc": rpc.name(),
            "code": code,
            "roles": denial.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        self.releases
            .audit_denial(
                ns,
                &denial.actor,
                rpc.name(),
                &denial.error.to_string(),
                detail,
            )
            .await;
    }
}

/// How often admission's quiet log lines may be written at most.
const QUIET_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// The most user names a reload's log line lists in each of added, removed and changed.
const NAMES_LISTED: usize = 20;

/// What a reload changed, as "added carol; removed bob; changed alice" (a user changes when
/// their roles or token do), or "no change".
fn describe_change(before: &Users, after: &Users) -> String {
    let find = |users: &Users, name: &str| users.users().iter().find(|u| u.name == name).cloned();
    let added: Vec<&str> = after
        .users()
        .iter()
        .filter(|u| find(before, &u.name).is_none())
        .map(|u| u.name.as_str())
        .collect();
    let removed: Vec<&str> = before
        .users()
        .iter()
        .filter(|u| find(after, &u.name).is_none())
        .map(|u| u.name.as_str())
        .collect();
    let changed: Vec<&str> = after
        .users()
        .iter()
        .filter(|u| {
            find(before, &u.name)
                .is_some_and(|old| old.roles != u.roles || old.token_sha256 != u.token_sha256)
        })
        .map(|u| u.name.as_str())
        .collect();
    let list = |names: &[&str]| {
        let mut text = names
            .iter()
            .take(NAMES_LISTED)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > NAMES_LISTED {
            text.push_str(&format!(" and {} more", names.len() - NAMES_LISTED));
        }
        text
    };
    let parts: Vec<String> = [
        ("added", &added),
        ("removed", &removed),
        ("changed", &changed),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| format!("{what} {}", list(names)))
    .collect();
    if parts.is_empty() {
        "no change".to_string()
    } else {
        parts.join("; ")
    }
}

/// Reloads the `--auth` file on every SIGHUP until `shutdown` (see [`Admission::reload`]). A
/// coordinator without `--auth` has no file to reload; it logs that and carries on, rather
/// than ending as a process does on a SIGHUP it does not handle. `hangups` is set up by the
/// caller before the listeners open, so that no SIGHUP arrives before it is handled.
pub async fn reload_on_hangup(
    admission: Admission,
    file: Option<PathBuf>,
    mut hangups: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
            }
        }
        match &file {
            Some(file) => {
                admission.reload(file).await;
            }
            None => tracing::warn!(
                "SIGHUP ignored: the coordinator runs without --auth, so there is no auth file to reload"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
