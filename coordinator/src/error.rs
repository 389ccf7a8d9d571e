//! The coordinator's errors, and the one place that maps them to gRPC and HTTP status.
//!
//! sbctl maps gRPC codes to its exit codes: `Aborted` is a conflict (3), `FailedPrecondition`
//! and `InvalidArgument` a refusal (4), `Unauthenticated` and `PermissionDenied` not permitted
//! (5). A request over the caller's rate limit is `ResourceExhausted` with the metadata
//! [`RETRY_AFTER_METADATA`] over gRPC, and 429 with a `Retry-After` header over HTTP; sbctl
//! tells it from etcd's NOSPACE (also `ResourceExhausted`) by that metadata and exits 1.

/// The gRPC metadata key that marks a refusal by a gate (value `gate`), so that sbctl can wait
/// for gates without parsing messages.
pub const REFUSAL_METADATA: &str = "x-switchboard-refusal";
/// The gRPC metadata key of a rate-limited answer: whole seconds until the caller may retry,
/// as HTTP's `Retry-After` header gives them.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// An operation that failed, with a message a release manager can act on.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Routing or a slot changed underneath the caller: read status and retry.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but the current state does not allow it.
    #[error("{0}")]
    Refused(String),
    /// A gate of the namespace does not hold: the message names the gate and what it saw.
    /// sbctl's `--wait-for-gates` retries exactly these.
    #[error("{0}")]
    GateBlocked(String),
    /// The request itself is invalid: bad namespace, weight, manifest or chunk.
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    /// No bearer token, or one that names no user of the `--auth` file.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known user whose roles do not allow the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller sent more requests than its rate limit allows; it may send the next one
    /// after `retry_after_seconds`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_seconds: u64,
    },
    /// A record in etcd that does not parse or does not verify.
    #[error("corrupt record {key} in etcd: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    EtcdTimeout(std::time::Duration),
    /// This replica is shutting down: ask another.
    #[error("{0}")]
    ShuttingDown(String),
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

impl CoordinatorError {
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CoordinatorError::Conflict(_) => Code::Aborted,
            CoordinatorError::Refused(_) | CoordinatorError::GateBlocked(_) => {
                Code::FailedPrecondition
            }
            CoordinatorError::InvalidInput(_) => Code::InvalidArgument,
            CoordinatorError::NotFound(_) => Code::NotFound,
            CoordinatorError::Unauthenticated(_) => Code::Unauthenticated,
            CoordinatorError::PermissionDenied(_) => Code::PermissionDenied,
            CoordinatorError::RateLimited { .. } => Code::ResourceExhausted,
            CoordinatorError::CorruptRecord { .. } => Code::DataLoss,
            CoordinatorError::Etcd(etcd_client::Error::GRpcStatus(status))
                if status.code() == Code::ResourceExhausted =>
            {
                Code::ResourceExhausted
            }
            // etcd refused the request itself (too large, too many operations): retrying the
            // same request cannot help, so it is a refusal and not an outage.
            CoordinatorError::Etcd(etcd_client::Error::GRpcStatus(status))
                if status.code() == Code::InvalidArgument =>
            {
                Code::InvalidArgument
            }
            CoordinatorError::Etcd(_)
            | CoordinatorError::EtcdTimeout(_)
            | CoordinatorError::ShuttingDown(_) => Code::Unavailable,
        }
    }

    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        // Both a rate limit and etcd's full quota are ResourceExhausted in gRPC; over HTTP the
        // first is the caller's to wait out (429), the second the server's (507).
        if matches!(self, CoordinatorError::RateLimited { .. }) {
            return StatusCode::TOO_MANY_REQUESTS;
        }
        match self.grpc_code() {
            tonic::Code::Aborted => StatusCode::CONFLICT,
            tonic::Code::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whole seconds until a rate-limited caller may retry.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            CoordinatorError::RateLimited {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            _ => None,
        }
    }

    /// Whether the gate decided this error, and logged it there at most once a second: a
    /// flood of refused requests must not become a flood of log lines.
    pub fn logged_by_the_gate(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Unauthenticated(_)
                | CoordinatorError::PermissionDenied(_)
                | CoordinatorError::RateLimited { .. }
        )
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        // Errors are logged here, where they are handled, and not where they are passed up.
        match error.grpc_code() {
            _ if matches!(error, CoordinatorError::ShuttingDown(_)) => {
                tracing::info!(%error, "request ended by the shutdown")
            }
            tonic::Code::Unavailable | tonic::Code::DataLoss | tonic::Code::Internal => {
                tracing::error!(%error, "request failed")
            }
            _ if error.logged_by_the_gate() => {}
            _ => tracing::info!(%error, "request refused"),
        }
        let message = match error.grpc_code() {
            // sbctl tells the coordinator being down from the coordinator's etcd being down
            // by this wording.
            tonic::Code::Unavailable => format!("the coordinator cannot reach etcd: {error}"),
            _ => error.to_string(),
        };
        let mut status = tonic::Status::new(error.grpc_code(), message);
        if matches!(error, CoordinatorError::GateBlocked(_)) {
            status.metadata_mut().insert(
                REFUSAL_METADATA,
                tonic::metadata::MetadataValue::from_static("gate"),
            );
        }
        if let Some(seconds) = error.retry_after_seconds() {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_METADATA, seconds.into());
        }
        status
    }
}
