//! What the HTTP and gRPC read servers share: the namespaces served, lookups, and reports.

use std::collections::HashMap;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

use switchboard_proto::Slot;

use crate::namespace::Namespace;
use crate::reports::{MAX_REPORT_COUNT, Refused};
use crate::snapshot::{LoadedSet, Snapshot};
use crate::telemetry;

/// Longest version a report may name.
pub const MAX_VERSION_LEN: usize = 64;

/// Why a read could not be answered; the servers map it to a status code.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    #[error("namespace {0:?} is not served by this sidecar")]
    UnknownNamespace(String),
    #[error("namespace {0:?} has not been loaded yet")]
    NotLoaded(String),
    /// A preview read of a namespace whose policy does not allow them.
    #[error(
        "preview reads of namespace {0:?} are off; an admin turns them on with `sbctl policy set {0} --preview-reads true` (the change is audited)"
    )]
    PreviewOff(String),
    #[error("namespace {0:?} has no sealed staged set to preview; stage one with `sbctl stage`")]
    NothingStaged(String),
    #[error("preview reads of namespace {namespace:?} cannot be answered now: {why}")]
    PreviewUnavailable { namespace: String, why: String },
    /// A read pinned to a version this sidecar no longer holds.
    #[error(
        "version {version:?} of namespace {namespace:?} is no longer held by this sidecar; it serves {current:?} to this consumer now: read again without the pinned version (X-Switchboard-Version) to move to it"
    )]
    VersionNotHeld {
        namespace: String,
        version: String,
        /// What the consumer would be served now.
        current: String,
        slot: Slot,
        epoch: u64,
    },
    #[error("no item {key:?} in namespace {namespace:?}")]
    UnknownKey { namespace: String, key: String },
    #[error("{0}")]
    BadRequest(String),
    /// A report for a version this sidecar neither serves nor served in the last 10 minutes.
    #[error(
        "version {version:?} is not served by this sidecar in namespace {namespace:?}, nor was it in the last 10 minutes; {}",
        accepted_list(.accepted)
    )]
    UnknownVersion {
        namespace: String,
        version: String,
        accepted: Vec<String>,
    },
    /// Counting the report would carry a count past its limit (never in practice: see
    /// [`crate::reports::MAX_REPORT_COUNT`]); restarting the sidecar starts the counts again.
    #[error(
        "the counts of version {version:?} in namespace {namespace:?} are full; restart this sidecar"
    )]
    CountsFull { namespace: String, version: String },
}

fn accepted_list(accepted: &[String]) -> String {
    if accepted.is_empty() {
        "no version is accepted yet".to_string()
    } else {
        format!("reports are accepted for {}", accepted.join(", "))
    }
}

/// What one read is served from: a set, where it came from, and the routing's epoch.
pub struct Reading {
    pub slot: Slot,
    pub epoch: u64,
    pub canary: bool,
    pub set: Arc<LoadedSet>,
    /// A preview read, served the staged set.
    pub preview: bool,
}

/// The ETag of an item: its canonical JSON's 128-bit XXH3, so every sidecar gives the same
/// item the same tag, whichever version it comes from.
pub fn item_etag(value: &[u8]) -> String {
    format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(value))
}

/// The ETag of a list of items: the XXH3 of their keys and values in order. Weak, because the
/// answer also names the version and epoch it came from, which the tag leaves out: two answers
/// with the same items are the same to a cache.
pub fn items_etag<'a>(items: impl Iterator<Item = (&'a String, &'a Arc<[u8]>)>) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hash_items(&mut hasher, items);
    format!("W/\"{:032x}\"", hasher.digest128())
}

/// Feeds the keys and values of `items` to `hasher`, each with its length, in order: what a tag
/// over several items covers.
pub fn hash_items<'a>(
    hasher: &mut xxhash_rust::xxh3::Xxh3,
    items: impl Iterator<Item = (&'a String, &'a Arc<[u8]>)>,
) {
    for (key, value) in items {
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks of
/// `If-None-Match`; `*` names any).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    let wanted = opaque(etag);
    if_none_match
        .split(',')
        .any(|tag| tag.trim() == "*" || opaque(tag) == wanted)
}

/// The state both servers read.
pub struct Served {
    pub id: String,
    pub namespaces: HashMap<String, Arc<Namespace>>,
    /// When this sidecar started, Unix ms.
    pub started_at_ms: u64,
    /// Told whenever an accepted report changed a count; the health publisher writes the new
    /// counts soon after.
    pub reports_changed: Arc<Notify>,
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled at shutdown; ends the streams that would otherwise outlive the servers.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The SHA-256 of the bearer token reads and reports need, when one is set
    /// (`SWITCHBOARD_SIDECAR_TOKEN`); the health, readiness and metrics endpoints stay open.
    pub api_token_sha256: Option<Vec<u8>>,
}

impl Served {
    /// Whether an `Authorization` header value is what the API needs: anything when no token
    /// is set, else `Bearer <token>`, the scheme in any case (RFC 9110 says schemes are
    /// case-insensitive, and the coordinator reads them so).
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        use sha2::Digest;
        let Some(wanted) = &self.api_token_sha256 else {
            return true;
        };
        let token = authorization.and_then(|value| {
            let (scheme, token) = value.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"Bearer ").then_some(token)
        });
        let Some(token) = token else {
            return false;
        };
        // Digests are compared, so the comparison's timing says nothing about the token.
        sha2::Sha256::digest(token).as_slice() == wanted.as_slice()
    }

    pub fn namespace(&self, name: &str) -> Result<&Arc<Namespace>, ReadError> {
        self.namespaces
            .get(name)
            .ok_or_else(|| ReadError::UnknownNamespace(name.to_string()))
    }

    /// The snapshot a read of `name` uses; one per request.
    pub fn snapshot(&self, name: &str) -> Result<Arc<Snapshot>, ReadError> {
        self.namespace(name)?
            .current()
            .ok_or_else(|| ReadError::NotLoaded(name.to_string()))
    }

    /// The set a read of `name` is served from: `pinned`'s while this sidecar holds it, else
    /// the consumer's by routing.
    pub fn reading(
        &self,
        name: &str,
        consumer: &str,
        pinned: Option<&str>,
    ) -> Result<Reading, ReadError> {
        let snapshot = self.snapshot(name)?;
        let choice = snapshot.choose(consumer);
        let Some(pinned) = pinned.filter(|v| *v != choice.set.version) else {
            return Ok(Reading {
                slot: choice.slot,
                epoch: choice.epoch,
                canary: choice.canary,
                set: choice.set.clone(),
                preview: false,
            });
        };
        match self.namespace(name)?.held_set(pinned) {
            Some((slot, set)) => Ok(Reading {
                slot,
                epoch: snapshot.routing.epoch,
                canary: snapshot
                    .routing
                    .live_canary()
                    .is_some_and(|c| c.version == set.version),
                set,
                preview: false,
            }),
            None => Err(ReadError::VersionNotHeld {
                namespace: name.to_string(),
                version: pinned.to_string(),
                current: choice.set.version.clone(),
                slot: choice.slot,
                epoch: choice.epoch,
            }),
        }
    }

    /// The set a preview read of `name` is served from: the sealed staged set, when the
    /// namespace's policy allows preview reads (see [`crate::preview`]).
    pub async fn preview_reading(&self, name: &str) -> Result<Reading, ReadError> {
        let snapshot = self.snapshot(name)?;
        let staged = self
            .namespace(name)?
            .preview
            .staged(name, snapshot.routing.active.slot)
            .await?;
        Ok(Reading {
            slot: staged.slot,
            epoch: snapshot.routing.epoch,
            canary: false,
            set: staged.set,
            preview: true,
        })
    }

    /// The consumer a read is for: the one named, else this sidecar's id.
    pub fn consumer<'a>(&'a self, named: Option<&'a str>) -> &'a str {
        // An empty name counts as no name.
        named.filter(|c| !c.is_empty()).unwrap_or(&self.id)
    }

    /// Counts outcomes an application saw with `version`, which this sidecar must serve now or
    /// have served in the last 10 minutes.
    pub fn report(
        &self,
        namespace: &str,
        version: &str,
        ok: u64,
        errors: u64,
    ) -> Result<(), ReadError> {
        let ns = self.namespace(namespace)?;
        if version.is_empty() || version.len() > MAX_VERSION_LEN {
            return Err(ReadError::BadRequest(format!(
                "version must be 1 to {MAX_VERSION_LEN} characters"
            )));
        }
        for (field, count) in [("ok", ok), ("errors", errors)] {
            if count > MAX_REPORT_COUNT {
                return Err(ReadError::BadRequest(format!(
                    "{field} is {count}, more than one report may carry ({MAX_REPORT_COUNT}); report outcomes as they happen"
                )));
            }
        }
        let changed = ns
            .report(version, ok, errors)
            .map_err(|refused| match refused {
                Refused::UnknownVersion { accepted } => ReadError::UnknownVersion {
                    namespace: namespace.to_string(),
                    version: version.to_string(),
                    accepted,
                },
                Refused::CountsFull => ReadError::CountsFull {
                    namespace: namespace.to_string(),
                    version: version.to_string(),
                },
            })?;
        telemetry::record_report(namespace, version, ok, errors);
        if changed {
            self.reports_changed.notify_one();
        }
        Ok(())
    }
}
