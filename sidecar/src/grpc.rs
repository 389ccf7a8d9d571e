//! The sidecar's gRPC read API on localhost: the same reads as HTTP, a stream that announces
//! version changes, and reports.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use switchboard_proto::pb::{self, reader_server::Reader};
use tonic::{Request, Response, Status};

use crate::changes::{Feed, LastEventId};
use crate::serve::{ReadError, Reading, Served, item_etag, items_etag};
use crate::snapshot::{Choice, Snapshot};

pub struct ReaderService {
    served: Arc<Served>,
}

/// Largest request the read API takes: each names a namespace, a key, a consumer or a few
/// counts, so a larger one is a mistake or an attack, refused by its announced length.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most concurrent streams on one connection (a `WatchVersions` per namespace, reads beside).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

impl ReaderService {
    pub fn new(served: Arc<Served>) -> pb::reader_server::ReaderServer<Self> {
        pb::reader_server::ReaderServer::new(Self { served })
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// The service itself, without the tonic server around it, for calling its methods directly.
    #[cfg(test)]
    pub(crate) fn unwrapped(served: Arc<Served>) -> Self {
        Self { served }
    }
}

impl From<ReadError> for Status {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::UnknownNamespace(_) | ReadError::UnknownKey { .. } => {
                Status::not_found(error.to_string())
            }
            ReadError::NotLoaded(_) => Status::unavailable(error.to_string()),
            ReadError::BadRequest(_) => Status::invalid_argument(error.to_string()),
            ReadError::UnknownVersion { .. } => Status::failed_precondition(error.to_string()),
            ReadError::CountsFull { .. } => Status::unavailable(error.to_string()),
            ReadError::PreviewOff(_) => Status::permission_denied(error.to_string()),
            ReadError::NothingStaged(_) => Status::not_found(error.to_string()),
            ReadError::PreviewUnavailable { .. } => Status::unavailable(error.to_string()),
            // The version it would serve now travels in the metadata, as in the HTTP
            // answer's headers.
            ReadError::VersionNotHeld { ref current, .. } => {
                let mut status = Status::failed_precondition(error.to_string());
                if let Ok(current) = current.parse() {
                    status
                        .metadata_mut()
                        .insert("x-switchboard-version", current);
                }
                status
            }
        }
    }
}

fn served_of_reading(namespace: &str, reading: &Reading) -> pb::Served {
    pb::Served {
        namespace: namespace.to_string(),
        slot: reading.slot.to_string(),
        version: reading.set.version.clone(),
        epoch: reading.epoch,
    }
}

fn served_of(namespace: &str, choice: &Choice<'_>) -> pb::Served {
    pb::Served {
        namespace: namespace.to_string(),
        slot: choice.slot.to_string(),
        version: choice.set.version.clone(),
        epoch: choice.epoch,
    }
}

fn json_text(value: &[u8]) -> String {
    // Values were verified as JSON text when they were staged.
    String::from_utf8_lossy(value).into_owned()
}

type ServedStream = Pin<Box<dyn Stream<Item = Result<pb::Served, Status>> + Send>>;
type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::Change, Status>> + Send>>;

/// A pinned version from a request: empty is none.
fn pinned(version: &str) -> Option<&str> {
    Some(version).filter(|v| !v.is_empty())
}

impl ReaderService {
    /// The set a read is served from: the staged one for a preview, else the pinned version's
    /// or the consumer's.
    async fn reading_of(
        &self,
        namespace: &str,
        consumer: &str,
        version: &str,
        preview: bool,
    ) -> Result<Reading, Status> {
        if preview && pinned(version).is_some() {
            return Err(Status::invalid_argument(
                "a read is either pinned (version) or a preview, not both",
            ));
        }
        let reading = if preview {
            self.served.preview_reading(namespace).await?
        } else {
            let consumer = self.served.consumer(Some(consumer));
            self.served.reading(namespace, consumer, pinned(version))?
        };
        Ok(reading)
    }

    /// Refuses a call without the bearer token, when the sidecar has one.
    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if self.served.authorized(authorization) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "this sidecar needs its bearer token: authorization: Bearer <token>",
            ))
        }
    }
}

#[tonic::async_trait]
impl Reader for ReaderService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetReply>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        let reading = self
            .reading_of(&r.namespace, &r.consumer, &r.version, r.preview)
            .await?;
        let value = reading
            .set
            .items
            .get(&r.key)
            .ok_or_else(|| ReadError::UnknownKey {
                namespace: r.namespace.clone(),
                key: r.key.clone(),
            })?;
        Ok(Response::new(pb::GetReply {
            served: Some(served_of_reading(&r.namespace, &reading)),
            value_json: json_text(value),
            etag: item_etag(value),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        let reading = self
            .reading_of(&r.namespace, &r.consumer, &r.version, r.preview)
            .await?;
        let items = reading
            .set
            .items
            .with_prefix(&r.prefix)
            .map(|(key, value)| pb::Item {
                key: key.clone(),
                value_json: json_text(value),
            })
            .collect();
        Ok(Response::new(pb::ListReply {
            served: Some(served_of_reading(&r.namespace, &reading)),
            items,
            etag: items_etag(reading.set.items.with_prefix(&r.prefix)),
        }))
    }

    type WatchVersionsStream = ServedStream;

    async fn watch_versions(
        &self,
        request: Request<pb::WatchVersionsRequest>,
    ) -> Result<Response<Self::WatchVersionsStream>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        let namespace = self.served.namespace(&r.namespace)?.clone();
        let consumer = self.served.consumer(Some(&r.consumer)).to_string();
        let watch = VersionWatch {
            updates: namespace.subscribe(),
            name: r.namespace,
            consumer,
            last: None,
            shutdown: self.served.shutdown.clone(),
        };
        // The stream is the response itself, not fed by a task: tonic drops it when the client
        // goes away, and it ends at shutdown, so nothing outlives the request.
        let stream = futures::stream::unfold(watch, |mut watch| async move {
            let served = watch.next_change().await?;
            Some((Ok(served), watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        let namespace = self.served.namespace(&r.namespace)?.clone();
        let consumer = self.served.consumer(Some(&r.consumer)).to_string();
        let resume = pinned(r.last_event_id.trim())
            .map(LastEventId::parse)
            .transpose()?;
        let feed = Feed::new(namespace, consumer, resume, self.served.shutdown.clone());
        // As WatchVersions: the stream is the response, dropped when the client goes away.
        let stream = futures::stream::unfold(feed, |mut feed| async move {
            let change = feed.next().await?;
            Some((Ok(change.to_proto()), feed))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        self.served
            .report(&r.namespace, &r.version, r.ok, r.errors)?;
        Ok(Response::new(pb::ReportReply { accepted: true }))
    }
}

/// One `WatchVersions` stream's state: what it announced last, and where changes come from.
struct VersionWatch {
    updates: tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>,
    name: String,
    consumer: String,
    last: Option<pb::Served>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl VersionWatch {
    /// The next version this consumer is served that differs from the last one announced (the
    /// current one first); `None` once the namespace is gone or the sidecar shuts down.
    async fn next_change(&mut self) -> Option<pb::Served> {
        loop {
            let snapshot: Option<Arc<Snapshot>> = self.updates.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                let served = served_of(&self.name, &snapshot.choose(&self.consumer));
                if self.last.as_ref() != Some(&served) {
                    self.last = Some(served.clone());
                    return Some(served);
                }
            }
            tokio::select! {
                changed = self.updates.changed() => changed.ok()?,
                () = self.shutdown.cancelled() => return None,
            }
        }
    }
}
