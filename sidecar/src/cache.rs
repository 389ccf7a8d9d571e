//! The last-known-good copy on disk (invariant 5): every verified snapshot is written to the
//! cache directory, and a sidecar that starts serves it, after verifying it, until etcd
//! answers. The data plane does not depend on the control plane being up.
//!
//! Only the sets consumers are served are stored: not the previous set a snapshot holds during
//! the bake time after a flip. A copy whose routing names a bake is read back without it, and
//! the sync loop loads it from etcd once etcd answers.
//!
//! One file per namespace, `<cache-dir>/<ns>.lkg`: `SBLKG2\n`, each set's chunks as u32 LE
//! length and bytes, a JSON header (routing, and per set the manifest hash named by routing and
//! the manifest of its chunks), the header's u32 LE length, then the SHA-256 of everything
//! before it. The header comes last so the file is written in one streaming pass, one chunk in
//! memory at a time: a set is as large as 2 GiB, and the copy must not double the sidecar's
//! memory. Files are written to a temporary name, synced and renamed, with mode 0600, so a
//! crash leaves the old copy or the new one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_proto::set::{HashingWriter, MAX_CHUNK_BYTES, SetVerifier};
use switchboard_proto::{Manifest, Routing};
use tokio_util::sync::CancellationToken;

use crate::namespace::Namespace;
use crate::snapshot::{LoadedSet, Snapshot};

const MAGIC: &[u8] = b"SBLKG2\n";
const TRAILER_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct Header {
    namespace: String,
    routing: Routing,
    sets: Vec<CachedSet>,
}

#[derive(Serialize, Deserialize)]
struct CachedSet {
    /// The manifest hash routing names for this set.
    manifest_hash: String,
    /// The manifest of the chunks stored here. Chunks are cut again from the set in memory,
    /// so this may differ from the original manifest in its chunk list but never in its
    /// version or checksum.
    manifest: Manifest,
}

/// The cache directory of one sidecar.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path(&self, namespace: &str) -> PathBuf {
        self.dir.join(format!("{namespace}.lkg"))
    }

    /// Writes a snapshot atomically: temp file, fsync, rename, fsync of the directory.
    pub fn write(&self, namespace: &str, snapshot: &Snapshot) -> Result<u64, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;

        let final_path = self.path(namespace);
        let temp_path = self.dir.join(format!(".{namespace}.lkg.tmp"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(io(&temp_path))?;
        let mut out = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
        out.write_all(MAGIC).map_err(io(&temp_path))?;
        let mut sets = Vec::new();
        for (_, set) in snapshot.served_sets() {
            let manifest = set
                .items
                .for_each_chunk(|chunk| {
                    out.write_all(&(chunk.data.len() as u32).to_le_bytes())?;
                    out.write_all(&chunk.data)
                })
                .map_err(io(&temp_path))?;
            sets.push(CachedSet {
                manifest_hash: set.manifest_hash.clone(),
                manifest,
            });
        }
        let header = Header {
            namespace: namespace.to_string(),
            routing: snapshot.routing.clone(),
            sets,
        };
        let header = serde_json::to_vec(&header).map_err(|e| CacheError::Corrupt {
            path: final_path.clone(),
            reason: format!("cannot encode the header: {e}"),
        })?;
        out.write_all(&header).map_err(io(&temp_path))?;
        out.write_all(&(header.len() as u32).to_le_bytes())
            .map_err(io(&temp_path))?;
        let (mut writer, digest, written) = out.finish();
        writer.write_all(&digest).map_err(io(&temp_path))?;
        let file = writer.into_inner().map_err(|e| CacheError::Io {
            path: temp_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&temp_path))?;
        drop(file);
        std::fs::rename(&temp_path, &final_path).map_err(io(&final_path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(written + TRAILER_BYTES as u64)
    }

    /// Reads and verifies the copy of `namespace`; `Ok(None)` when there is none.
    pub fn read(&self, namespace: &str) -> Result<Option<Snapshot>, CacheError> {
        let path = self.path(namespace);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        decode(namespace, &data)
            .map(Some)
            .map_err(|reason| CacheError::Corrupt { path, reason })
    }
}

/// Decodes and verifies the bytes of a disk copy of `namespace`; the error says what is wrong.
pub fn decode(namespace: &str, data: &[u8]) -> Result<Snapshot, String> {
    if data.len() < MAGIC.len() + 4 + TRAILER_BYTES || !data.starts_with(MAGIC) {
        return Err("not a last-known-good file".into());
    }
    let (content, trailer) = data.split_at(data.len() - TRAILER_BYTES);
    if Sha256::digest(content).as_slice() != trailer {
        return Err("its content does not match its SHA-256 (truncated or modified)".into());
    }
    // The header and its length close the content; the chunks lie between the magic and it.
    let (before_len, len) = content.split_at(content.len() - 4);
    let header_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if header_len > before_len.len() - MAGIC.len() {
        return Err(format!(
            "the header claims {header_len} bytes, more than the file holds"
        ));
    }
    let (chunks_region, header_bytes) = before_len.split_at(before_len.len() - header_len);
    let mut rest = &chunks_region[MAGIC.len()..];
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| format!("header does not parse: {e}"))?;
    if header.namespace != namespace {
        return Err(format!(
            "it holds namespace {:?}, not {namespace:?}",
            header.namespace
        ));
    }
    let mut sets = Vec::new();
    for cached in &header.sets {
        let mut verifier = SetVerifier::new(&cached.manifest);
        for _ in &cached.manifest.chunks {
            let chunk = take(&mut rest, "chunk")?;
            verifier.add_chunk(chunk).map_err(|e| e.to_string())?;
        }
        let items = verifier.finish().map_err(|e| e.to_string())?;
        sets.push(Arc::new(LoadedSet {
            manifest_hash: cached.manifest_hash.clone(),
            version: cached.manifest.version.clone(),
            checksum: cached.manifest.checksum.clone(),
            items,
        }));
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the last chunk", rest.len()));
    }
    let find = |manifest: &str, version: &str| {
        sets.iter()
            .find(|s| s.manifest_hash == manifest && s.version == version)
            .cloned()
            .ok_or_else(|| format!("routing names set {version}, which the file does not hold"))
    };
    let routing = header.routing;
    let active = find(&routing.active.manifest, &routing.active.version)?;
    let canary = match routing.live_canary() {
        Some(canary) => Some(find(&canary.manifest, &canary.version)?),
        None => None,
    };
    Ok(Snapshot {
        routing,
        active,
        canary,
        // Not stored: see the module documentation.
        previous: None,
    })
}

/// Takes one length-prefixed field off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let (len, after) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("truncated {what}"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > after.len() || (what == "chunk" && len > MAX_CHUNK_BYTES + 64 * 1024) {
        return Err(format!(
            "a {what} claims {len} bytes, more than the file holds"
        ));
    }
    let (field, after) = after.split_at(len);
    *rest = after;
    Ok(field)
}

/// Writes every new snapshot of `namespace` to the cache until `shutdown`. Writing happens on
/// a blocking thread; a snapshot that arrives while one is written replaces it, so only the
/// latest is written.
pub async fn keep_written(
    cache: DiskCache,
    namespace: Arc<Namespace>,
    shutdown: CancellationToken,
) {
    let mut updates = namespace.subscribe();
    // The snapshot present at start came from this very cache (or there is none).
    updates.borrow_and_update();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = updates.changed() => if changed.is_err() { return },
        }
        let settle = updates
            .borrow()
            .as_ref()
            .and_then(|snapshot| crate::sync::settle_delay(&snapshot.routing));
        if let Some(delay) = settle {
            // Right after a synchronized switch, other sidecars on this host are switching:
            // the copy is written once they are done.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let Some(snapshot) = updates.borrow_and_update().clone() else {
            continue;
        };
        let (cache, name) = (cache.clone(), namespace.name.clone());
        let epoch = snapshot.routing.epoch;
        let written = tokio::task::spawn_blocking(move || cache.write(&name, &snapshot)).await;
        match written {
            Ok(Ok(bytes)) => {
                namespace.update_sync(|s| s.disk_copy_epoch = Some(epoch));
                tracing::debug!(ns = %namespace.name, epoch, bytes, "last-known-good copy written")
            }
            Ok(Err(error)) => {
                tracing::error!(ns = %namespace.name, %error, "cannot write the last-known-good copy")
            }
            Err(error) => tracing::error!(ns = %namespace.name, %error, "cache writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::{Canary, ItemSet, Slot, SlotVersion};

    fn loaded(generation: &str) -> Arc<LoadedSet> {
        let mut items = ItemSet::new();
        for i in 0..500 {
            let value =
                serde_json::json!({"generation": generation, "i": i, "pad": "x".repeat(300)});
            items
                .insert_value(&format!("items/k{i:04}"), &value)
                .expect("valid");
        }
        let (manifest, _) = items.to_chunks();
        Arc::new(LoadedSet {
            manifest_hash: manifest.hash(),
            version: manifest.version,
            checksum: manifest.checksum,
            items,
        })
    }

    fn snapshot() -> Snapshot {
        let (active, canary) = (loaded("a"), loaded("b"));
        let routing = Routing {
            epoch: 9,
            active: SlotVersion {
                slot: Slot::Blue,
                version: active.version.clone(),
                manifest: active.manifest_hash.clone(),
            },
            canary: Some(Canary {
                slot: Slot::Green,
                version: canary.version.clone(),
                manifest: canary.manifest_hash.clone(),
                weight_bp: 2_500,
                seed: 7,
            }),
            previous: None,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: "canary".into(),
            by: "test".into(),
            reason: String::new(),
            at_ms: 0,
        };
        Snapshot {
            routing,
            active,
            canary: Some(canary),
            previous: None,
        }
    }

    #[test]
    fn a_written_copy_reads_back_verified() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = DiskCache::new(dir.path().join("cache"));
        let original = snapshot();
        cache.write("catalog", &original).expect("written");
        let mode = std::fs::metadata(cache.path("catalog")).expect("metadata");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let back = cache.read("catalog").expect("reads").expect("present");
        assert_eq!(back.routing, original.routing);
        assert_eq!(back.active.items, original.active.items);
        assert_eq!(
            back.canary.as_ref().map(|c| &c.items),
            original.canary.as_ref().map(|c| &c.items)
        );
        assert!(cache.read("other").expect("no error").is_none());
    }

    #[test]
    fn any_changed_or_missing_byte_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = DiskCache::new(dir.path().to_path_buf());
        cache.write("catalog", &snapshot()).expect("written");
        let path = cache.path("catalog");
        let good = std::fs::read(&path).expect("read");
        for position in [0, 10, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[position] ^= 0x20;
            std::fs::write(&path, &bad).expect("write");
            let error = cache.read("catalog").expect_err("corrupt");
            assert!(
                matches!(error, CacheError::Corrupt { .. }),
                "byte {position}: {error}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 100]).expect("write");
        assert!(
            cache.read("catalog").is_err(),
            "a truncated copy must be refused"
        );
        std::fs::write(&path, &good).expect("write");
        assert!(cache.read("catalog").is_ok());
        assert!(cache.read("catalog").expect("ok").is_some());
    }

    #[test]
    fn a_baking_snapshot_is_stored_without_its_previous_set_and_reads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = DiskCache::new(dir.path().to_path_buf());
        let (active, previous) = (loaded("new"), loaded("old"));
        let routing = Routing {
            epoch: 12,
            active: SlotVersion {
                slot: Slot::Green,
                version: active.version.clone(),
                manifest: active.manifest_hash.clone(),
            },
            canary: None,
            previous: Some(SlotVersion {
                slot: Slot::Blue,
                version: previous.version.clone(),
                manifest: previous.manifest_hash.clone(),
            }),
            bake_until_ms: Some(1_800_000_000_000),
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: "flip".into(),
            by: "test".into(),
            reason: String::new(),
            at_ms: 0,
        };
        let original = Snapshot {
            routing,
            active,
            canary: None,
            previous: Some(previous),
        };
        let bytes = cache.write("catalog", &original).expect("written");
        // The file holds one set, not two.
        let single = Snapshot {
            previous: None,
            routing: original.routing.clone(),
            active: original.active.clone(),
            canary: None,
        };
        let other = DiskCache::new(dir.path().join("single"));
        assert_eq!(other.write("catalog", &single).expect("written"), bytes);

        let back = cache.read("catalog").expect("reads").expect("present");
        assert_eq!(back.routing, original.routing);
        assert!(back.routing.baking().is_some());
        assert_eq!(back.active.items, original.active.items);
        assert!(back.previous.is_none());
        assert!(back.canary.is_none());
    }

    #[test]
    fn garbage_never_panics() {
        for garbage in [
            &b""[..],
            b"SBLKG1\n",
            b"SBLKG1\n\xff\xff\xff\xff",
            &[0u8; 100],
        ] {
            assert!(decode("catalog", garbage).is_err());
        }
    }
}
