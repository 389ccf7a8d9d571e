//! What the HTTP and gRPC read servers share: the namespaces served, lookups, and reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::namespace::Namespace;
use crate::snapshot::Snapshot;

/// Why a read could not be answered; the servers map it to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("namespace {0:?} is not served by this sidecar")]
    UnknownNamespace(String),
    #[error("namespace {0:?} has not been loaded yet")]
    NotLoaded(String),
    #[error("no item {key:?} in namespace {namespace:?}")]
    UnknownKey { namespace: String, key: String },
    #[error("{0}")]
    BadRequest(String),
}

/// Outcome counts that applications reported, per namespace and version.
#[derive(Default)]
pub struct Reports {
    counts: Mutex<BTreeMap<(String, String), (u64, u64)>>,
}

impl Reports {
    pub fn add(&self, namespace: &str, version: &str, ok: u64, errors: u64) {
        if let Ok(mut counts) = self.counts.lock() {
            let entry = counts
                .entry((namespace.to_string(), version.to_string()))
                .or_default();
            entry.0 = entry.0.saturating_add(ok);
            entry.1 = entry.1.saturating_add(errors);
        }
        metrics::counter!("switchboard_sidecar_reports_ok_total", "namespace" => namespace.to_string(), "version" => version.to_string()).increment(ok);
        metrics::counter!("switchboard_sidecar_reports_errors_total", "namespace" => namespace.to_string(), "version" => version.to_string()).increment(errors);
    }

    pub fn snapshot(&self) -> BTreeMap<(String, String), (u64, u64)> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// The state both servers read.
pub struct Served {
    pub id: String,
    pub namespaces: HashMap<String, Arc<Namespace>>,
    pub reports: Reports,
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled at shutdown; ends the streams that would otherwise outlive the servers.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Served {
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

    /// The consumer a read is for: the one named, else this sidecar's id.
    pub fn consumer<'a>(&'a self, named: Option<&'a str>) -> &'a str {
        // An empty name counts as no name.
        named.filter(|c| !c.is_empty()).unwrap_or(&self.id)
    }

    pub fn report(
        &self,
        namespace: &str,
        version: &str,
        ok: u64,
        errors: u64,
    ) -> Result<(), ReadError> {
        self.namespace(namespace)?;
        if version.is_empty() || version.len() > 64 {
            return Err(ReadError::BadRequest(
                "version must be 1 to 64 characters".into(),
            ));
        }
        self.reports.add(namespace, version, ok, errors);
        Ok(())
    }
}
