//! The upload of a staged set's chunks, apart from the transport that carries them: chunks are
//! checked (a SHA-256 name, one namespace per upload), gathered into batches near etcd's
//! request limit, and verified and written a few batches at a time, so that memory stays
//! bounded however large the set is and the upload does not wait for every etcd commit in turn.
//! Chunks are content-addressed, so the order of the writes does not matter.

use futures::{Stream, StreamExt};
use switchboard_proto::pb;
use switchboard_proto::set::is_sha256_hex;
use tokio::task::{JoinError, JoinSet};

use crate::error::CoordinatorError;
use crate::release::Releases;
use crate::store::MAX_TXN_BYTES;

/// Batches of uploaded chunks verified and written at once by one upload.
const UPLOAD_WRITES_IN_FLIGHT: usize = 4;

/// What one upload wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub chunks_written: u64,
    pub bytes_written: u64,
}

/// Why an upload ended early. The stream's own error comes back as it came, for the transport
/// to answer with.
#[derive(Debug)]
pub enum UploadError<E> {
    /// The stream of chunks failed.
    Stream(E),
    /// A chunk was refused, or etcd refused a batch.
    Refused(CoordinatorError),
    /// A batch write's task ended without an answer.
    Lost(JoinError),
}

impl<E> From<CoordinatorError> for UploadError<E> {
    fn from(error: CoordinatorError) -> Self {
        UploadError::Refused(error)
    }
}

type BatchWrite = Result<crate::error::Result<(u64, u64)>, JoinError>;

impl Releases {
    /// Verifies and writes every chunk `chunks` brings; the first failure ends the upload.
    pub async fn upload_chunks<E>(
        &self,
        mut chunks: impl Stream<Item = Result<pb::ChunkData, E>> + Unpin,
    ) -> Result<Uploaded, UploadError<E>> {
        let mut uploaded = Uploaded::default();
        let mut namespace: Option<String> = None;
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0;
        let mut writes = JoinSet::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(UploadError::Stream)?;
            if !is_sha256_hex(&chunk.hash) {
                return Err(CoordinatorError::InvalidInput(format!(
                    "chunk name {:?} is not a SHA-256",
                    chunk.hash
                ))
                .into());
            }
            match &namespace {
                None => namespace = Some(chunk.namespace.clone()),
                Some(ns) if *ns != chunk.namespace => {
                    return Err(CoordinatorError::InvalidInput(
                        "one upload carries chunks of one namespace only".into(),
                    )
                    .into());
                }
                Some(_) => {}
            }
            batch_bytes += chunk.data.len();
            batch.push((chunk.hash, chunk.data));
            if batch_bytes >= MAX_TXN_BYTES {
                while writes.len() >= UPLOAD_WRITES_IN_FLIGHT {
                    written(&mut uploaded, writes.join_next().await)?;
                }
                let ns = namespace.clone().unwrap_or_default();
                let (releases, batch) = (self.clone(), std::mem::take(&mut batch));
                writes.spawn(async move {
                    let chunks = batch.len() as u64;
                    releases
                        .put_chunks(&ns, batch)
                        .await
                        .map(|bytes| (chunks, bytes))
                });
                batch_bytes = 0;
                // Account for the writes that have finished, so that a failure ends the upload
                // early and the crash point between batches fires while more are to come.
                while let Some(done) = writes.try_join_next() {
                    written(&mut uploaded, Some(done))?;
                }
            }
        }
        if !batch.is_empty() {
            let ns = namespace.as_deref().unwrap_or_default();
            uploaded.chunks_written += batch.len() as u64;
            uploaded.bytes_written += self.put_chunks(ns, batch).await?;
        }
        while !writes.is_empty() {
            written(&mut uploaded, writes.join_next().await)?;
        }
        Ok(uploaded)
    }
}

/// Adds a finished batch write to the upload's totals; the first failure ends the upload.
fn written<E>(uploaded: &mut Uploaded, joined: Option<BatchWrite>) -> Result<(), UploadError<E>> {
    let Some(joined) = joined else {
        return Ok(());
    };
    let (chunks, bytes) = joined.map_err(UploadError::Lost)??;
    uploaded.chunks_written += chunks;
    uploaded.bytes_written += bytes;
    crate::crash::point(crate::crash::STAGE_BETWEEN_BATCHES, "stage");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releases over an etcd that is never reached: these uploads end before any write.
    async fn releases() -> Releases {
        let client = crate::connect_etcd(&["http://127.0.0.1:9".to_string()])
            .await
            .expect("the client connects lazily");
        Releases::new(crate::store::Store::new(
            client,
            switchboard_proto::Keys::new("/upload-test"),
        ))
    }

    fn chunk(namespace: &str, hash: &str) -> Result<pb::ChunkData, String> {
        Ok(pb::ChunkData {
            namespace: namespace.into(),
            hash: hash.into(),
            data: b"{}".to_vec(),
        })
    }

    #[tokio::test]
    async fn bad_chunks_and_a_failed_stream_end_the_upload_before_any_write() {
        let releases = releases().await;
        let good = "ab".repeat(32);
        let refusal = |result: Result<Uploaded, UploadError<String>>| match result {
            Err(UploadError::Refused(CoordinatorError::InvalidInput(message))) => message,
            other => panic!("not refused as invalid: {other:?}"),
        };
        let named = refusal(
            releases
                .upload_chunks(futures::stream::iter([chunk("catalog", "../etc/passwd")]))
                .await,
        );
        assert_eq!(named, r#"chunk name "../etc/passwd" is not a SHA-256"#);
        let mixed = refusal(
            releases
                .upload_chunks(futures::stream::iter([
                    chunk("catalog", &good),
                    chunk("other", &good),
                ]))
                .await,
        );
        assert_eq!(mixed, "one upload carries chunks of one namespace only");
        let failed = releases
            .upload_chunks(futures::stream::iter([Err::<pb::ChunkData, _>(
                "the connection broke".to_string(),
            )]))
            .await;
        assert!(
            matches!(&failed, Err(UploadError::Stream(e)) if e == "the connection broke"),
            "{failed:?}"
        );
        // Nothing at all is an upload of nothing.
        let nothing = releases
            .upload_chunks(futures::stream::iter(
                Vec::<Result<pb::ChunkData, String>>::new(),
            ))
            .await;
        assert!(matches!(
            nothing,
            Ok(Uploaded {
                chunks_written: 0,
                bytes_written: 0
            })
        ));
    }
}
