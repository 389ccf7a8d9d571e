//! The connection to the coordinator's admin gRPC API: one method per RPC, each carrying the
//! actor and the bearer token as metadata and turning replies into the `switchboard_proto`
//! documents they hold.

use std::time::Duration;

use futures::Stream;
use serde::de::DeserializeOwned;
use switchboard_proto::pb::admin_client::AdminClient;
use switchboard_proto::pb::{
    ApproveRequest, AuditRequest, BeginStageReply, BeginStageRequest, CheckGatesRequest, ChunkData,
    EpochWaitProgress, FlipRequest, GetChunksRequest, GetManifestRequest, JsonReply,
    RollbackRequest, RolloutRequest, SealRequest, SetCanaryRequest, SetPolicyRequest,
    StatusRequest, UploadChunksReply, WaitForEpochRequest,
};
use switchboard_proto::{
    Approval, AuditTrail, GateReport, History, Manifest, NamespaceStatus, Policy, Rollout,
    RoutingChange, SealOutcome,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::exit::CliError;

/// Where the coordinator listens unless `--coordinator` or `SWITCHBOARD_COORDINATOR` says.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7100";
/// How long to try to connect before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest gRPC message sent or received: chunks are at most ~1 MiB, status and audit replies
/// can be larger than tonic's default of 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Metadata naming who asks.
pub const ACTOR_HEADER: &str = "x-switchboard-actor";
/// How many chunk hashes one `GetChunks` request names.
const HASHES_PER_REQUEST: usize = 256;

/// How to reach the coordinator and who is asking.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub coordinator: String,
    pub token: Option<String>,
    pub actor: String,
    /// TLS to an `https://` coordinator: its CA, and a client certificate when it wants one.
    pub tls: Option<ClientTls>,
}

/// `--tls-ca`, `--tls-cert`, `--tls-key`.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// tonic's client TLS; a file that cannot be read is a usage error naming its flag.
    fn config(&self) -> Result<tonic::transport::ClientTlsConfig, CliError> {
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", crate::escape::path(path))))
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(
                ca, "--tls-ca",
            )?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(tonic::transport::Identity::from_pem(
                    read(cert, "--tls-cert")?,
                    read(key, "--tls-key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        }
        Ok(config)
    }
}

/// The acting user: `--as NAME` if given, else `$USER`, else `$LOGNAME`, else "unknown".
pub fn actor_name(as_name: Option<&str>) -> String {
    let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    as_name
        .map(str::to_string)
        .or_else(|| from_env("USER"))
        .or_else(|| from_env("LOGNAME"))
        .or_else(login_name_of_this_process)
        .unwrap_or_else(|| "unknown".to_string())
}

/// The account name of this process's real uid, from `/proc/self/status` and `/etc/passwd`,
/// for shells and CI jobs that set neither `USER` nor `LOGNAME`.
fn login_name_of_this_process() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?;
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_string())
    })
}

/// The coordinator URL with a scheme: `host:port` is taken as `http://host:port`, and an
/// empty one (an empty `SWITCHBOARD_COORDINATOR`) as the default.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    if url.is_empty() {
        DEFAULT_COORDINATOR.to_string()
    } else if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// A connected admin client.
pub struct Coordinator {
    client: AdminClient<Channel>,
    url: String,
    actor: AsciiMetadataValue,
    authorization: Option<AsciiMetadataValue>,
}

impl Coordinator {
    /// Checks the options and connects (waiting at most [`CONNECT_TIMEOUT`]).
    pub async fn connect(options: &ConnectOptions) -> Result<Self, CliError> {
        let (endpoint, url, actor, authorization) = prepare(options)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                coordinator: url.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Self::with_channel(channel, url, actor, authorization))
    }

    /// Checks the options and returns a client that connects on its first request (which then
    /// fails with `Unavailable` if the coordinator cannot be reached).
    pub fn connect_lazy(options: &ConnectOptions) -> Result<Self, CliError> {
        let (endpoint, url, actor, authorization) = prepare(options)?;
        Ok(Self::with_channel(
            endpoint.connect_lazy(),
            url,
            actor,
            authorization,
        ))
    }

    fn with_channel(
        channel: Channel,
        url: String,
        actor: AsciiMetadataValue,
        authorization: Option<AsciiMetadataValue>,
    ) -> Self {
        let client = AdminClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self {
            client,
            url,
            actor,
            authorization,
        }
    }

    /// The coordinator's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Wraps a message (or a stream of them) with the actor and authorization metadata.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(ACTOR_HEADER, self.actor.clone());
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        request
    }

    fn error(&self, rpc: &'static str, status: tonic::Status) -> CliError {
        CliError::rpc(rpc, &self.url, status)
    }

    pub async fn status(&mut self, namespace: &str) -> Result<Reply<NamespaceStatus>, CliError> {
        let request = self.request(StatusRequest {
            namespace: namespace.to_string(),
        });
        let reply = self
            .client
            .status(request)
            .await
            .map_err(|s| self.error("Status", s))?;
        Reply::decode("Status", reply.into_inner())
    }

    /// `WaitForEpoch`: where the live sidecars of `namespace` are on the way to `epoch`, as
    /// the coordinator sends it, until a message marked `done`.
    pub async fn wait_for_epoch(
        &mut self,
        namespace: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<EpochWaitStream, CliError> {
        let request = self.request(WaitForEpochRequest {
            namespace: namespace.to_string(),
            epoch,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        let stream = self
            .client
            .wait_for_epoch(request)
            .await
            .map_err(|s| self.error("WaitForEpoch", s))?
            .into_inner();
        Ok(EpochWaitStream {
            stream,
            url: self.url.clone(),
        })
    }

    pub async fn begin_stage(
        &mut self,
        request: BeginStageRequest,
    ) -> Result<BeginStageReply, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .begin_stage(request)
            .await
            .map_err(|s| self.error("BeginStage", s))?;
        Ok(reply.into_inner())
    }

    pub async fn upload_chunks(
        &mut self,
        chunks: impl Stream<Item = ChunkData> + Send + 'static,
    ) -> Result<UploadChunksReply, CliError> {
        let request = self.request(chunks);
        let reply = self
            .client
            .upload_chunks(request)
            .await
            .map_err(|s| self.error("UploadChunks", s))?;
        Ok(reply.into_inner())
    }

    pub async fn seal(&mut self, request: SealRequest) -> Result<Reply<SealOutcome>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .seal(request)
            .await
            .map_err(|s| self.error("Seal", s))?;
        Reply::decode("Seal", reply.into_inner())
    }

    /// The manifest of `slot`, or of the active set when `slot` is empty; `None` when there is
    /// none (gRPC `NotFound`).
    pub async fn get_manifest(
        &mut self,
        namespace: &str,
        slot: &str,
    ) -> Result<Option<Manifest>, CliError> {
        self.manifest_of(namespace, slot, "").await
    }

    /// The manifest of a retained version; `None` when it was never staged or is no longer
    /// retained (gRPC `NotFound`).
    pub async fn get_version_manifest(
        &mut self,
        namespace: &str,
        version: &str,
    ) -> Result<Option<Manifest>, CliError> {
        self.manifest_of(namespace, "", version).await
    }

    async fn manifest_of(
        &mut self,
        namespace: &str,
        slot: &str,
        version: &str,
    ) -> Result<Option<Manifest>, CliError> {
        let request = self.request(GetManifestRequest {
            namespace: namespace.to_string(),
            slot: slot.to_string(),
            version: version.to_string(),
        });
        match self.client.get_manifest(request).await {
            Ok(reply) => {
                let json = reply.into_inner().json;
                let manifest =
                    Manifest::from_json(json.as_bytes()).map_err(|e| CliError::BadReply {
                        rpc: "GetManifest",
                        problem: e.to_string(),
                    })?;
                Ok(Some(manifest))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.error("GetManifest", status)),
        }
    }

    /// The chunks named by `hashes`, as (hash, bytes), in the order they arrive. Unverified:
    /// the caller decodes them with `decode_chunk`, which checks each hash.
    pub async fn get_chunks(
        &mut self,
        namespace: &str,
        hashes: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>, CliError> {
        let mut chunks = Vec::with_capacity(hashes.len());
        for batch in hashes.chunks(HASHES_PER_REQUEST) {
            let request = self.request(GetChunksRequest {
                namespace: namespace.to_string(),
                hashes: batch.to_vec(),
            });
            let mut stream = self
                .client
                .get_chunks(request)
                .await
                .map_err(|s| self.error("GetChunks", s))?
                .into_inner();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| self.error("GetChunks", s))?
            {
                chunks.push((chunk.hash, chunk.data));
            }
        }
        Ok(chunks)
    }

    pub async fn set_canary(
        &mut self,
        request: SetCanaryRequest,
    ) -> Result<Reply<RoutingChange>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .set_canary(request)
            .await
            .map_err(|s| self.error("SetCanary", s))?;
        Reply::decode("SetCanary", reply.into_inner())
    }

    pub async fn flip(&mut self, request: FlipRequest) -> Result<Reply<RoutingChange>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .flip(request)
            .await
            .map_err(|s| self.error("Flip", s))?;
        Reply::decode("Flip", reply.into_inner())
    }

    pub async fn rollback(
        &mut self,
        request: RollbackRequest,
    ) -> Result<Reply<RoutingChange>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .rollback(request)
            .await
            .map_err(|s| self.error("Rollback", s))?;
        Reply::decode("Rollback", reply.into_inner())
    }

    pub async fn approve(&mut self, request: ApproveRequest) -> Result<Reply<Approval>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .approve(request)
            .await
            .map_err(|s| self.error("Approve", s))?;
        Reply::decode("Approve", reply.into_inner())
    }

    /// The namespace's contract in force and any proposal.
    pub async fn get_contract(
        &mut self,
        namespace: &str,
    ) -> Result<Reply<switchboard_contract::ContractView>, CliError> {
        let request = self.request(StatusRequest {
            namespace: namespace.to_string(),
        });
        let reply = self
            .client
            .get_contract(request)
            .await
            .map_err(|s| self.error("GetContract", s))?;
        Reply::decode("GetContract", reply.into_inner())
    }

    /// Sets (or, when approval is required, proposes) `contract`, if the contract in force is
    /// still the one whose hash is `expected_hash` (empty: none).
    pub async fn set_contract(
        &mut self,
        namespace: &str,
        contract: &switchboard_contract::Contract,
        expected_hash: &str,
        reason: &str,
    ) -> Result<Reply<switchboard_contract::ContractView>, CliError> {
        let contract_json = String::from_utf8(contract.canonical())
            .map_err(|e| CliError::Failed(format!("cannot write the contract as JSON: {e}")))?;
        let request = self.request(switchboard_proto::pb::SetContractRequest {
            namespace: namespace.to_string(),
            contract_json,
            reason: reason.to_string(),
            expected_hash: expected_hash.to_string(),
        });
        let reply = self
            .client
            .set_contract(request)
            .await
            .map_err(|s| self.error("SetContract", s))?;
        Reply::decode("SetContract", reply.into_inner())
    }

    /// Puts the proposed contract `hash` in force.
    pub async fn approve_contract(
        &mut self,
        namespace: &str,
        hash: &str,
        reason: &str,
    ) -> Result<Reply<switchboard_contract::ContractView>, CliError> {
        let request = self.request(switchboard_proto::pb::ApproveContractRequest {
            namespace: namespace.to_string(),
            hash: hash.to_string(),
            reason: reason.to_string(),
        });
        let reply = self
            .client
            .approve_contract(request)
            .await
            .map_err(|s| self.error("ApproveContract", s))?;
        Reply::decode("ApproveContract", reply.into_inner())
    }

    pub async fn history(&mut self, namespace: &str) -> Result<Reply<History>, CliError> {
        let request = self.request(StatusRequest {
            namespace: namespace.to_string(),
        });
        let reply = self
            .client
            .history(request)
            .await
            .map_err(|s| self.error("History", s))?;
        Reply::decode("History", reply.into_inner())
    }

    pub async fn check_gates(
        &mut self,
        request: CheckGatesRequest,
    ) -> Result<Reply<GateReport>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .check_gates(request)
            .await
            .map_err(|s| self.error("CheckGates", s))?;
        Reply::decode("CheckGates", reply.into_inner())
    }

    /// The health judge's policy of a namespace.
    pub async fn get_policy(&mut self, namespace: &str) -> Result<Reply<Policy>, CliError> {
        let request = self.request(StatusRequest {
            namespace: namespace.to_string(),
        });
        let reply = self
            .client
            .get_policy(request)
            .await
            .map_err(|s| self.error("GetPolicy", s))?;
        Reply::decode("GetPolicy", reply.into_inner())
    }

    /// Replaces the policy `current`, as read, with `policy`; the reply is the policy as
    /// stored. The change is made only if the policy is still `current`, so that two people
    /// changing it at once never lose one of the changes.
    pub async fn set_policy(
        &mut self,
        namespace: &str,
        current: &Policy,
        policy: &Policy,
        reason: &str,
    ) -> Result<Reply<Policy>, CliError> {
        let as_json = |policy: &Policy| {
            serde_json::to_string(policy)
                .map_err(|e| CliError::Failed(format!("cannot write the policy as JSON: {e}")))
        };
        let request = self.request(SetPolicyRequest {
            namespace: namespace.to_string(),
            policy_json: as_json(policy)?,
            reason: reason.to_string(),
            expected_policy_json: as_json(current)?,
        });
        let reply = self
            .client
            .set_policy(request)
            .await
            .map_err(|s| self.error("SetPolicy", s))?;
        Reply::decode("SetPolicy", reply.into_inner())
    }

    /// Starts, pauses, resumes or aborts a rollout; the reply is the rollout as it now is.
    pub async fn rollout(&mut self, request: RolloutRequest) -> Result<Reply<Rollout>, CliError> {
        let request = self.request(request);
        let reply = self
            .client
            .rollout(request)
            .await
            .map_err(|s| self.error("Rollout", s))?;
        Reply::decode("Rollout", reply.into_inner())
    }

    pub async fn audit(
        &mut self,
        namespace: &str,
        verify: bool,
    ) -> Result<Reply<AuditTrail>, CliError> {
        let request = self.request(AuditRequest {
            namespace: namespace.to_string(),
            verify,
        });
        let reply = self
            .client
            .audit(request)
            .await
            .map_err(|s| self.error("Audit", s))?;
        Reply::decode("Audit", reply.into_inner())
    }
}

/// The endpoint, URL, actor and authorization metadata of the options, or a usage error.
fn prepare(
    options: &ConnectOptions,
) -> Result<
    (
        Endpoint,
        String,
        AsciiMetadataValue,
        Option<AsciiMetadataValue>,
    ),
    CliError,
> {
    let url = normalize_url(&options.coordinator);
    let actor = printable_ascii(&options.actor).map_err(|_| {
        CliError::Usage(format!(
            "the actor name {:?} cannot be sent; use --as NAME with printable ASCII",
            options.actor
        ))
    })?;
    let authorization = match options.token.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(token) => {
            let mut value = printable_ascii(&format!("Bearer {token}")).map_err(|_| {
                CliError::Usage("the token (--token) must be printable ASCII".into())
            })?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::Usage(format!("--coordinator {url:?} is not a valid URL: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    match (&options.tls, url.starts_with("https://")) {
        (Some(tls), true) => {
            endpoint = endpoint.tls_config(tls.config()?).map_err(|e| {
                CliError::Usage(format!("cannot set up TLS to {url}: {}", error_chain(&e)))
            })?;
        }
        (None, true) => {
            return Err(CliError::Usage(format!(
                "{url} is https: give the coordinator's CA with --tls-ca (and --tls-cert/--tls-key if it asks for a client certificate)"
            )));
        }
        (Some(_), false) => {
            return Err(CliError::Usage(format!(
                "--tls-ca/--tls-cert/--tls-key need an https:// coordinator, not {url}"
            )));
        }
        (None, false) => {}
    }
    Ok((endpoint, url, actor, authorization))
}

/// A metadata value of printable ASCII only: HTTP would carry other bytes, but the coordinator
/// could not read them as text.
fn printable_ascii(text: &str) -> Result<AsciiMetadataValue, ()> {
    if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(());
    }
    AsciiMetadataValue::try_from(text).map_err(|_| ())
}

/// A `JsonReply` decoded into its document, keeping the JSON as sent so that `--json` prints
/// it as is, fields this version of sbctl does not know included.
#[derive(Clone, Debug)]
pub struct Reply<T> {
    pub document: T,
    pub json: serde_json::Value,
}

/// The messages of one `WaitForEpoch`.
pub struct EpochWaitStream {
    stream: tonic::Streaming<EpochWaitProgress>,
    url: String,
}

impl EpochWaitStream {
    /// The next progress; `None` when the coordinator ended the stream.
    pub async fn next(&mut self) -> Result<Option<EpochWaitProgress>, CliError> {
        self.stream
            .message()
            .await
            .map_err(|status| CliError::rpc("WaitForEpoch", &self.url, status))
    }
}

impl<T: DeserializeOwned> Reply<T> {
    /// Parses the JSON of a reply to `rpc`; a reply that does not parse is an error naming it.
    pub fn decode(rpc: &'static str, reply: JsonReply) -> Result<Self, CliError> {
        Self::from_json(rpc, &reply.json)
    }

    pub fn from_json(rpc: &'static str, json: &str) -> Result<Self, CliError> {
        let bad = |e: serde_json::Error| CliError::BadReply {
            rpc,
            problem: e.to_string(),
        };
        let json: serde_json::Value = serde_json::from_str(json).map_err(bad)?;
        let document = T::deserialize(&json).map_err(bad)?;
        Ok(Self { document, json })
    }
}

/// An error with its causes, `outer: inner: innermost`, for errors (like tonic's transport
/// error) whose own message says little.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:7100"), "http://127.0.0.1:7100");
        assert_eq!(normalize_url("http://c:7100"), "http://c:7100");
        assert_eq!(normalize_url(" https://c "), "https://c");
        assert_eq!(normalize_url(""), DEFAULT_COORDINATOR);
    }

    #[test]
    fn the_actor_prefers_the_flag() {
        assert_eq!(actor_name(Some("alice")), "alice");
        assert!(!actor_name(None).is_empty());
    }

    #[test]
    fn replies_that_do_not_parse_name_the_rpc() {
        let err = Reply::<NamespaceStatus>::from_json("Status", "{\"namespace\": 1}")
            .expect_err("not a status");
        assert!(err.to_string().contains("Status"), "{err}");
        assert_eq!(err.exit_code(), crate::exit::FAILED);
        let err = Reply::<RoutingChange>::from_json("Flip", "not json").expect_err("not json");
        assert!(err.to_string().contains("Flip"), "{err}");
    }

    #[tokio::test]
    async fn requests_carry_the_actor_and_token() {
        let options = ConnectOptions {
            coordinator: "127.0.0.1:7100".into(),
            token: Some("s3cret".into()),
            actor: "alice".into(),
            tls: None,
        };
        let coordinator = Coordinator::connect_lazy(&options).expect("valid options");
        assert_eq!(coordinator.url(), "http://127.0.0.1:7100");
        let request = coordinator.request(StatusRequest {
            namespace: "cat".into(),
        });
        let metadata = request.metadata();
        assert_eq!(
            metadata.get(ACTOR_HEADER).and_then(|v| v.to_str().ok()),
            Some("alice")
        );
        assert_eq!(
            metadata.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret")
        );

        let anonymous = ConnectOptions {
            token: None,
            ..options.clone()
        };
        let coordinator = Coordinator::connect_lazy(&anonymous).expect("valid options");
        let request = coordinator.request(StatusRequest {
            namespace: "cat".into(),
        });
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn bad_options_are_usage_errors() {
        let options = ConnectOptions {
            coordinator: "http://127.0.0.1:7100".into(),
            token: None,
            actor: "alice".into(),
            tls: None,
        };
        let bad_actor = ConnectOptions {
            actor: "al\nice".into(),
            tls: None,
            ..options.clone()
        };
        let err = Coordinator::connect_lazy(&bad_actor)
            .err()
            .expect("bad actor");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        let bad_token = ConnectOptions {
            token: Some("a\u{e9}".into()),
            ..options.clone()
        };
        let err = Coordinator::connect_lazy(&bad_token)
            .err()
            .expect("bad token");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        let bad_url = ConnectOptions {
            coordinator: "http://bad url".into(),
            ..options
        };
        let err = Coordinator::connect_lazy(&bad_url).err().expect("bad url");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
    }
}
