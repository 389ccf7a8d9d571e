//! The etcd key layout. Every key the switchboard reads or writes is built here.
//!
//! ```text
//! <prefix>/ns/<ns>/routing             Routing (the only key sidecars watch)
//! <prefix>/ns/<ns>/slots/<blue|green>  SlotRef
//! <prefix>/ns/<ns>/manifests/<sha256>  Manifest head (paged), content-addressed
//! <prefix>/ns/<ns>/pages/<sha256>      page of a manifest's chunk references, content-addressed
//! <prefix>/ns/<ns>/chunks/<sha256>     chunk of consecutive items, content-addressed
//! <prefix>/ns/<ns>/health/<sidecar-id> HealthRecord, bound to the sidecar's lease
//! <prefix>/ns/<ns>/audit/<seq>         AuditRecord, hash-chained, seq zero-padded to 20 digits
//! <prefix>/ns/<ns>/audit-head          AuditHead: the last seq and hash, compared in every audited txn
//! <prefix>/ns/<ns>/policy              Policy: the judge's settings, approval, gates
//! <prefix>/ns/<ns>/approvals/<manifest>/<approver>  Approval of one exact version
//! <prefix>/ns/<ns>/history/<version>   HistoryEntry, written when the version is sealed
//! <prefix>/ns/<ns>/rollout             Rollout: the steps of an automatic canary
//! <prefix>/namespaces/<ns>             marks a namespace that exists, for the leader's loops
//! <prefix>/coordinator/leader          leader election
//! ```

use crate::types::Slot;

/// Builds keys under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` is used as given, without a trailing `/` (`/switchboard`, `/sbtest-1234`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn ns(&self, ns: &str) -> String {
        format!("{}/ns/{ns}", self.prefix)
    }

    pub fn routing(&self, ns: &str) -> String {
        format!("{}/routing", self.ns(ns))
    }

    pub fn slot(&self, ns: &str, slot: Slot) -> String {
        format!("{}/slots/{}", self.ns(ns), slot.as_str())
    }

    pub fn manifest(&self, ns: &str, hash: &str) -> String {
        format!("{}/manifests/{hash}", self.ns(ns))
    }

    pub fn chunk(&self, ns: &str, hash: &str) -> String {
        format!("{}/chunks/{hash}", self.ns(ns))
    }

    /// A page of a manifest's chunk references; `page(ns, "")` is the prefix of all of them.
    pub fn page(&self, ns: &str, hash: &str) -> String {
        format!("{}/pages/{hash}", self.ns(ns))
    }

    pub fn health(&self, ns: &str, sidecar_id: &str) -> String {
        format!("{}/health/{sidecar_id}", self.ns(ns))
    }

    pub fn health_prefix(&self, ns: &str) -> String {
        format!("{}/health/", self.ns(ns))
    }

    pub fn audit(&self, ns: &str, seq: u64) -> String {
        format!("{}/audit/{seq:020}", self.ns(ns))
    }

    pub fn audit_prefix(&self, ns: &str) -> String {
        format!("{}/audit/", self.ns(ns))
    }

    pub fn audit_head(&self, ns: &str) -> String {
        format!("{}/audit-head", self.ns(ns))
    }

    pub fn policy(&self, ns: &str) -> String {
        format!("{}/policy", self.ns(ns))
    }

    /// The contract in force (`switchboard_contract::ContractRecord`): schemas and rules that
    /// every seal checks.
    pub fn contract(&self, ns: &str) -> String {
        format!("{}/contract", self.ns(ns))
    }

    /// A contract waiting for a second person's approval, when the policy requires approval.
    pub fn contract_proposal(&self, ns: &str) -> String {
        format!("{}/contract-proposal", self.ns(ns))
    }

    /// An approver's approval of one manifest.
    pub fn approval(&self, ns: &str, manifest: &str, approver: &str) -> String {
        format!("{}/approvals/{manifest}/{approver}", self.ns(ns))
    }

    pub fn approvals_prefix(&self, ns: &str) -> String {
        format!("{}/approvals/", self.ns(ns))
    }

    /// The record of a sealed version, for `sbctl history` and `rollback --to`.
    pub fn history(&self, ns: &str, version: &str) -> String {
        format!("{}/history/{version}", self.ns(ns))
    }

    pub fn history_prefix(&self, ns: &str) -> String {
        format!("{}/history/", self.ns(ns))
    }

    pub fn manifests_prefix(&self, ns: &str) -> String {
        format!("{}/manifests/", self.ns(ns))
    }

    pub fn rollout(&self, ns: &str) -> String {
        format!("{}/rollout", self.ns(ns))
    }

    /// The registry of namespaces, so the leader's loops find them without a scan of chunks.
    pub fn namespace_marker(&self, ns: &str) -> String {
        format!("{}/namespaces/{ns}", self.prefix)
    }

    pub fn namespaces_prefix(&self) -> String {
        format!("{}/namespaces/", self.prefix)
    }

    /// The election name; candidates' keys live under it.
    pub fn leader(&self) -> String {
        format!("{}/coordinator/leader", self.prefix)
    }

    /// Where a coordinator replica's gRPC API is reached (its advertised URL), under its
    /// election lease: sidecars find the leader's here by the id the election names.
    pub fn replica(&self, id: &str) -> String {
        format!("{}/coordinator/replicas/{id}", self.prefix)
    }
}

/// The actor named in the audit record of a request that presented no known token; no user
/// may be called so.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The longest user name.
pub const MAX_USER_NAME_LEN: usize = 64;

/// Checks a user name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, and not [`UNAUTHENTICATED`]. The
/// coordinator checks its `--auth` file with it and `sbctl token new` its argument; a user
/// name is also part of an approval's key.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_NAME_LEN {
        return Err(format!(
            "user name {name:?} must be 1 to {MAX_USER_NAME_LEN} characters long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@-".contains(*c)))
    {
        return Err(format!(
            "user name {name:?} has the character {bad:?}; use A-Z a-z 0-9 . _ @ -"
        ));
    }
    if name == UNAUTHENTICATED {
        return Err(format!(
            "user name {name:?} is reserved for callers without a known token in the audit trail"
        ));
    }
    Ok(())
}

/// Checks a sidecar id, which names its health record in etcd and its outcome stream: 1 to 128
/// of `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn validate_sidecar_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1 to 128 of A-Z a-z 0-9 . _ - (not starting with '.')"
        ))
    }
}

/// Checks a namespace name: 1 to 64 of `a-z 0-9 - _ .`, not starting with a dot.
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() || ns.len() > 64 {
        return Err(format!("namespace {ns:?} must be 1 to 64 characters long"));
    }
    if ns.starts_with('.') {
        return Err(format!("namespace {ns:?} must not start with '.'"));
    }
    if let Some(bad) = ns
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c)))
    {
        return Err(format!(
            "namespace {ns:?} has the character {bad:?}; use a-z 0-9 - _ ."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        let keys = Keys::new("/sb/");
        assert_eq!(keys.routing("cat"), "/sb/ns/cat/routing");
        assert_eq!(keys.slot("cat", Slot::Green), "/sb/ns/cat/slots/green");
        assert_eq!(
            keys.audit("cat", 7),
            "/sb/ns/cat/audit/00000000000000000007"
        );
        assert_eq!(keys.leader(), "/sb/coordinator/leader");
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("catalog-prod").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("Cat").is_err());
        assert!(validate_namespace("a/b").is_err());
        assert!(validate_namespace(".x").is_err());
    }
}
