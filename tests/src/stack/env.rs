//! [`TestEnv`]: one etcd, one coordinator and a unique key prefix, to which tests add sidecars.

use anyhow::Result;
use switchboard_proto::Keys;

use super::{Coordinator, SbctlRunner, Sidecar, unique_prefix};
use crate::etcd::EtcdServer;

/// One etcd, one coordinator on a unique prefix `/sbtest-<hex>`, and the namespaces the test
/// uses. The fields are public so a test can take them apart; dropping it kills everything
/// (the coordinator first).
#[derive(Debug)]
pub struct TestEnv {
    pub coordinator: Coordinator,
    pub etcd: EtcdServer,
    prefix: String,
    namespaces: Vec<String>,
}

impl TestEnv {
    /// Starts etcd and a coordinator. `namespaces` are the ones [`Self::start_sidecar`] serves.
    pub async fn start(namespaces: &[&str]) -> Result<Self> {
        Self::start_with_coordinator_env(namespaces, &[]).await
    }

    /// [`Self::start`] with environment variables for the coordinator (`FAILPOINTS`).
    pub async fn start_with_coordinator_env(
        namespaces: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with_coordinator(namespaces, &[], env).await
    }

    /// [`Self::start`] with extra arguments (`--gc-interval`) and environment variables for
    /// the coordinator.
    pub async fn start_with_coordinator(
        namespaces: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let etcd = EtcdServer::start().await?;
        let prefix = unique_prefix();
        let coordinator = Coordinator::start_with_env(&etcd.endpoint(), &prefix, args, env).await?;
        Ok(Self {
            coordinator,
            etcd,
            prefix,
            namespaces: namespaces.iter().map(|ns| ns.to_string()).collect(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The etcd endpoint, as `--etcd` takes it.
    pub fn etcd_endpoints(&self) -> String {
        self.etcd.endpoint()
    }

    /// The key layout under this environment's prefix.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    pub async fn etcd_client(&self) -> Result<etcd_client::Client> {
        self.etcd.client().await
    }

    /// sbctl pointed at the coordinator.
    pub fn sbctl(&self) -> SbctlRunner {
        self.coordinator.sbctl()
    }

    /// Starts a sidecar for all of the environment's namespaces (waits for `/healthz`, not for
    /// readiness).
    pub async fn start_sidecar(&self, id: &str) -> Result<Sidecar> {
        let namespaces: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
        self.start_sidecar_for(id, &namespaces).await
    }

    /// Starts a sidecar for `namespaces`.
    pub async fn start_sidecar_for(&self, id: &str, namespaces: &[&str]) -> Result<Sidecar> {
        Sidecar::start(&self.etcd_endpoints(), &self.prefix, id, namespaces).await
    }

    /// Starts a sidecar for `namespaces` with extra arguments.
    pub async fn start_sidecar_with(
        &self,
        id: &str,
        namespaces: &[&str],
        extra_args: &[&str],
    ) -> Result<Sidecar> {
        Sidecar::start_with(
            &self.etcd_endpoints(),
            &self.prefix,
            id,
            namespaces,
            extra_args,
        )
        .await
    }

    /// Starts another coordinator replica on the same etcd and prefix.
    pub async fn start_coordinator(&self) -> Result<Coordinator> {
        Coordinator::start(&self.etcd_endpoints(), &self.prefix).await
    }
}
