//! The contract between Switchboard's parts: the gRPC services, the etcd key layout, the
//! documents stored in etcd, the canary bucket hash and the content-addressed chunk format.
//!
//! Nothing here performs I/O. The coordinator, the sidecar and sbctl all depend on this crate
//! and on nothing of each other, so anything two of them must agree on lives here.

pub mod bucket;
pub mod gate;
pub mod judge;
pub mod keys;
pub mod paged;
pub mod set;
pub mod time;
pub mod types;

/// Code generated from `proto/switchboard.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("switchboard.v1");
}

pub use bucket::{BUCKETS, bucket};
pub use gate::{Gate, GateCheck, GateOp, GateOutcome, GateReport};
pub use keys::Keys;
pub use paged::{ManifestHead, Page, PageRef};
pub use set::{ContractError, ItemSet};
pub use types::*;
