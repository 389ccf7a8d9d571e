//! The coordinator's errors, and the one place that maps them to gRPC and HTTP status.
//!
//! sbctl maps gRPC codes to its exit codes: `Aborted` is a conflict (3), `FailedPrecondition`
//! and `InvalidArgument` a refusal (4), `Unauthenticated` and `PermissionDenied` not permitted
//! (5).

/// The gRPC metadata key that marks a refusal by a gate (value `gate`), so that sbctl can wait
/// for gates without parsing messages.
pub const REFUSAL_METADATA: &str = "x-switchboard-refusal";

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
    /// A record in etcd that does not parse or does not verify.
    #[error("corrupt record {key} in etcd: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    EtcdTimeout(std::time::Duration),
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
            CoordinatorError::Etcd(_) | CoordinatorError::EtcdTimeout(_) => Code::Unavailable,
        }
    }

    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
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
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        // Errors are logged here, where they are handled, and not where they are passed up.
        match error.grpc_code() {
            tonic::Code::Unavailable | tonic::Code::DataLoss | tonic::Code::Internal => {
                tracing::error!(%error, "request failed")
            }
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
        status
    }
}
