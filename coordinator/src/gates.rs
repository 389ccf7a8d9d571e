//! Evaluates a namespace's gates against the version a change would move consumers to.
//!
//! An item gate reads one item of the target set (a binary search over its chunks, which hold
//! the items in key order), an etcd gate reads a key and hands back a comparison of that key's
//! revision for the change's own transaction, and an HTTP gate asks a URL. What a gate saw
//! goes into the refusal message and into the audit record of the change it let through.

use std::time::Duration;

use etcd_client::Compare;
use switchboard_proto::gate::{self, Gate, GateCheck, GateOutcome};
use switchboard_proto::set::decode_chunk;
use switchboard_proto::{Manifest, SlotRef};

use crate::error::{CoordinatorError, Result};
use crate::store::{Store, unchanged, with_timeout};

/// How long an HTTP gate's URL may take to answer before the gate counts as blocked.
pub const HTTP_GATE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest HTTP gate answer read; a larger one blocks the gate.
const HTTP_GATE_MAX_BYTES: usize = 1024 * 1024;

/// Every gate's outcome, and the comparisons the change's transaction must carry so that
/// what an etcd gate saw still holds when the change is written.
#[derive(Debug, Default)]
pub struct Evaluation {
    pub outcomes: Vec<GateOutcome>,
    pub compares: Vec<Compare>,
}

impl Evaluation {
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.passed)
    }

    /// The gates that do not hold, in words (`gate::blocking`).
    pub fn blocking(&self) -> String {
        gate::blocking(&self.outcomes)
    }
}

/// Evaluates gates; holds the HTTP client that HTTP gates share.
#[derive(Clone)]
pub struct GateChecker {
    http: reqwest::Client,
}

impl Default for GateChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl GateChecker {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(HTTP_GATE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self { http }
    }

    /// Evaluates every gate against `target`, the set in `ns` that consumers would move to.
    /// Errors only when the switchboard's own records cannot be read; a gate that cannot read
    /// what it looks at (a URL that does not answer) is blocked, not an error.
    pub async fn evaluate(
        &self,
        store: &Store,
        ns: &str,
        gates: &[Gate],
        target: &SlotRef,
    ) -> Result<Evaluation> {
        let mut evaluation = Evaluation::default();
        let mut manifest: Option<Manifest> = None;
        for gate in gates {
            let (passed, saw) = match &gate.check {
                GateCheck::Item {
                    key,
                    pointer,
                    op,
                    value,
                } => {
                    if manifest.is_none() {
                        manifest = Some(read_manifest(store, ns, &target.manifest).await?);
                    }
                    let item = match &manifest {
                        Some(manifest) => find_item(store, ns, manifest, key).await?,
                        None => None,
                    };
                    match item {
                        None => (
                            false,
                            format!("no item {key} in version {}", target.version),
                        ),
                        Some(document) => {
                            let seen = gate::select(&document, pointer);
                            (gate::compare(seen, *op, value), gate::shown(seen))
                        }
                    }
                }
                GateCheck::Etcd {
                    key,
                    pointer,
                    op,
                    value,
                } => {
                    let mut client = store.client().clone();
                    let response = with_timeout(client.get(key.as_str(), None)).await?;
                    let kv = response.kvs().first();
                    evaluation
                        .compares
                        .push(unchanged(key.clone(), kv.map_or(0, |kv| kv.mod_revision())));
                    let document = gate::etcd_value(kv.map(|kv| kv.value()));
                    let seen = gate::select(&document, pointer);
                    (gate::compare(seen, *op, value), gate::shown(seen))
                }
                GateCheck::Http {
                    url,
                    pointer,
                    op,
                    value,
                } => self.http_gate(url, pointer, *op, value).await,
            };
            evaluation.outcomes.push(GateOutcome {
                name: gate.name.clone(),
                passed,
                saw,
                wanted: gate.wanted(),
                target: gate.target(),
            });
        }
        Ok(evaluation)
    }

    async fn http_gate(
        &self,
        url: &str,
        pointer: &str,
        op: Option<gate::GateOp>,
        value: &serde_json::Value,
    ) -> (bool, String) {
        let response = match self.http.get(url).send().await {
            Ok(response) => response,
            Err(error) => return (false, format!("no answer ({})", error_text(&error))),
        };
        let status = response.status();
        if !status.is_success() {
            return (false, format!("HTTP {}", status.as_u16()));
        }
        let Some(op) = op else {
            return (true, format!("HTTP {}", status.as_u16()));
        };
        if response
            .content_length()
            .is_some_and(|n| n > HTTP_GATE_MAX_BYTES as u64)
        {
            return (false, format!("an answer over {HTTP_GATE_MAX_BYTES} bytes"));
        }
        let body = match response.bytes().await {
            Ok(body) if body.len() <= HTTP_GATE_MAX_BYTES => body,
            Ok(_) => return (false, format!("an answer over {HTTP_GATE_MAX_BYTES} bytes")),
            Err(error) => return (false, format!("a broken answer ({})", error_text(&error))),
        };
        let document: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(document) => document,
            Err(error) => return (false, format!("an answer that is not JSON ({error})")),
        };
        let seen = gate::select(&document, pointer);
        (gate::compare(seen, op, value), gate::shown(seen))
    }
}

/// reqwest's error with its causes, which say what actually went wrong (refused, timed out).
fn error_text(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_manifest(store: &Store, ns: &str, hash: &str) -> Result<Manifest> {
    store.read_manifest(ns, hash).await?.ok_or_else(|| {
        CoordinatorError::Refused(format!(
            "the manifest {hash} of {ns} is no longer retained, so its items cannot be checked"
        ))
    })
}

/// The value of `key` in the set of `manifest`, found by a binary search over its chunks,
/// which hold the items in ascending key order: about log2(chunks) chunk reads.
pub async fn find_item(
    store: &Store,
    ns: &str,
    manifest: &Manifest,
    key: &str,
) -> Result<Option<serde_json::Value>> {
    let (mut low, mut high) = (0, manifest.chunks.len());
    while low < high {
        let middle = low + (high - low) / 2;
        let hash = &manifest.chunks[middle].hash;
        let chunk_key = store.keys().chunk(ns, hash);
        let corrupt = |reason: String| CoordinatorError::CorruptRecord {
            key: chunk_key.clone(),
            reason,
        };
        let data = store
            .get_raw(&chunk_key)
            .await?
            .ok_or_else(|| corrupt("missing".into()))?;
        let items = decode_chunk(hash, &data).map_err(|e| corrupt(e.to_string()))?;
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return Err(corrupt("holds no item".into()));
        };
        if key < first.0.as_str() {
            high = middle;
        } else if key > last.0.as_str() {
            low = middle + 1;
        } else {
            let Ok(index) = items.binary_search_by(|(k, _)| k.as_str().cmp(key)) else {
                return Ok(None);
            };
            let value = &items[index].1;
            return serde_json::from_slice(value)
                .map(Some)
                .map_err(|e| corrupt(format!("item {key} is not JSON: {e}")));
        }
    }
    Ok(None)
}
