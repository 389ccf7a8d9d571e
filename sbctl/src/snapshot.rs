//! Snapshots: a whole set in one self-verifying file. `save` writes the active set (or a
//! retained version) with its manifest; `restore` checks every hash and stages it, so the same
//! version id and checksum come back.
//!
//! The file, all of it covered by the SHA-256 on its last line:
//!
//! ```text
//! SWITCHBOARD-SNAPSHOT 1
//! {"namespace":…,"version":…,"checksum":…,"manifest":<hash>,"items":…,"bytes":…,"saved_at":…}
//! <the manifest, canonical JSON>
//! chunk <sha256> <length>
//! <length bytes of the chunk>
//! …one chunk record per chunk, in the manifest's order…
//! sha256 <hex of every byte before this line>
//! ```

use std::collections::HashMap;
use std::io::{BufRead as _, Read as _, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchboard_proto::Manifest;
use switchboard_proto::set::{
    Chunk, HashingWriter, MAX_WHOLE_MANIFEST_BYTES, SetVerifier, sha256_hex,
};
use switchboard_proto::time::{now_ms, rfc3339_ms};

use crate::commands::{Context, print_stage, stage_manifest};
use crate::exit::CliError;
use crate::output;

const MAGIC: &[u8] = b"SWITCHBOARD-SNAPSHOT 1\n";
/// Chunks asked for at once while saving: bounds memory to about this many chunks.
const CHUNKS_PER_FETCH: usize = 32;

/// The second line of a snapshot: what it holds, readable without parsing the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub namespace: String,
    pub version: String,
    pub checksum: String,
    pub manifest: String,
    pub items: u64,
    pub bytes: u64,
    pub saved_at: String,
}

impl SnapshotHeader {
    /// The header of a snapshot of `manifest`'s set from `namespace`, saved at `saved_at_ms`.
    pub fn of(namespace: &str, manifest: &Manifest, saved_at_ms: u64) -> Self {
        Self {
            namespace: namespace.to_string(),
            version: manifest.version.clone(),
            checksum: manifest.checksum.clone(),
            manifest: manifest.hash(),
            items: manifest.item_count,
            bytes: manifest.bytes,
            saved_at: rfc3339_ms(saved_at_ms),
        }
    }
}

/// What `snapshot save` reports.
#[derive(Clone, Debug, Serialize)]
pub struct SaveReport {
    #[serde(flatten)]
    pub header: SnapshotHeader,
    pub file: PathBuf,
    pub file_bytes: u64,
    pub sha256: String,
}

/// `sbctl snapshot save NS FILE [--version V]`
pub async fn save(
    ctx: &Context,
    namespace: &str,
    file: &Path,
    version: Option<&str>,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let manifest = match version {
        Some(version) => coordinator
            .get_version_manifest(namespace, version)
            .await?
            .ok_or_else(|| {
                CliError::Refused(format!(
                    "version {version} of {namespace} is not retained; `sbctl history {namespace}` lists what is"
                ))
            })?,
        None => coordinator.get_manifest(namespace, "").await?.ok_or_else(|| {
            CliError::Refused(format!("nothing is active in {namespace} to save"))
        })?,
    };
    let header = SnapshotHeader::of(namespace, &manifest, now_ms());
    let partial = partial_path(file);
    let written = write_snapshot(&mut coordinator, namespace, &manifest, &header, &partial).await;
    let (file_bytes, sha256) = match written {
        Ok(done) => done,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    if let Err(error) = std::fs::rename(&partial, file) {
        let _ = std::fs::remove_file(&partial);
        return Err(io_error(file, "cannot be written", error));
    }
    let report = SaveReport {
        header,
        file: file.to_path_buf(),
        file_bytes,
        sha256,
    };
    if ctx.json {
        return output::print_json(&report);
    }
    output::print_text(&format!(
        "saved version {} of {namespace} ({} items, {} bytes, checksum {}) to {} ({} bytes, sha256 {})\n",
        report.header.version,
        report.header.items,
        report.header.bytes,
        report.header.checksum,
        crate::escape::path(file),
        report.file_bytes,
        report.sha256
    ))
}

/// Writes the snapshot to `path`, fetching chunks a few at a time and verifying the set as it
/// goes, so that a snapshot is never written of a set that does not verify. Returns the file's
/// size and trailer hash.
async fn write_snapshot(
    coordinator: &mut crate::client::Coordinator,
    namespace: &str,
    manifest: &Manifest,
    header: &SnapshotHeader,
    path: &Path,
) -> Result<(u64, String), CliError> {
    let file = std::fs::File::create(path).map_err(|e| io_error(path, "cannot be created", e))?;
    let io = |e: std::io::Error| io_error(path, "cannot be written", e);
    let mut writer =
        SnapshotWriter::new(std::io::BufWriter::new(file), header, manifest).map_err(io)?;
    let mut verifier = SetVerifier::verify_only(manifest);
    let bad = |problem: String| CliError::BadReply {
        rpc: "GetChunks",
        problem,
    };
    for batch in manifest.chunks.chunks(CHUNKS_PER_FETCH) {
        let hashes: Vec<String> = batch.iter().map(|c| c.hash.clone()).collect();
        let fetched: HashMap<String, Vec<u8>> = coordinator
            .get_chunks(namespace, &hashes)
            .await?
            .into_iter()
            .collect();
        for chunk in batch {
            let data = fetched
                .get(&chunk.hash)
                .ok_or_else(|| bad(format!("chunk {} did not arrive", chunk.hash)))?;
            verifier
                .add_chunk(data)
                .map_err(|e| bad(format!("the set does not verify: {e}")))?;
            writer.add_chunk(&chunk.hash, data).map_err(io)?;
        }
    }
    verifier
        .finish()
        .map_err(|e| bad(format!("the set does not verify: {e}")))?;
    let (out, bytes, sha256) = writer.finish().map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all()
        .map_err(|e| io_error(path, "cannot be synced", e))?;
    Ok((bytes, sha256))
}

/// Writes the snapshot format, one chunk at a time, hashing as it goes.
pub struct SnapshotWriter<W: Write> {
    out: HashingWriter<W>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the magic line, the header and the manifest.
    pub fn new(out: W, header: &SnapshotHeader, manifest: &Manifest) -> std::io::Result<Self> {
        let mut out = HashingWriter::new(out);
        out.write_all(MAGIC)?;
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        out.write_all(&manifest.to_canonical_json())?;
        out.write_all(b"\n")?;
        Ok(Self { out })
    }

    /// Writes the next chunk of the manifest's order.
    pub fn add_chunk(&mut self, hash: &str, data: &[u8]) -> std::io::Result<()> {
        self.out
            .write_all(format!("chunk {hash} {}\n", data.len()).as_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(b"\n")
    }

    /// Writes the trailer; returns the writer, the file's size and the trailer's hash.
    pub fn finish(self) -> std::io::Result<(W, u64, String)> {
        let (mut out, digest, written) = self.out.finish();
        let sha256 = hex::encode(digest);
        let trailer = format!("sha256 {sha256}\n");
        out.write_all(trailer.as_bytes())?;
        out.flush()?;
        Ok((out, written + trailer.len() as u64, sha256))
    }
}

/// `sbctl snapshot restore NS FILE [-m MESSAGE]`
pub async fn restore(
    ctx: &Context,
    namespace: &str,
    file: &Path,
    message: &str,
) -> Result<(), CliError> {
    let data = read_file(file)?;
    let snapshot = parse(&data).map_err(|problem| refused(file, &problem))?;
    if snapshot.header.namespace != namespace {
        output::note(&format!(
            "note: {} was saved from {}; restoring it into {namespace}",
            crate::escape::path(file),
            crate::escape::name(&snapshot.header.namespace)
        ));
    }
    let message = if message.is_empty() {
        format!(
            "restored from a snapshot of {} saved at {}",
            snapshot.header.namespace, snapshot.header.saved_at
        )
    } else {
        message.to_string()
    };
    let mut coordinator = ctx.coordinator().await?;
    let report = stage_manifest(
        &mut coordinator,
        namespace,
        &snapshot.manifest,
        snapshot.chunks,
        &message,
        // A restore brings back a version on purpose, whatever it removes; the coordinator
        // still checks it against the namespace's contract.
        true,
    )
    .await?;
    print_stage(ctx, &report)
}

/// The largest snapshot file `restore` reads: 8 GiB, etcd's largest recommended
/// `--quota-backend-bytes`. A set in a larger file could not be stored by any coordinator.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// The most read of a snapshot to find its header line; a real header is a few hundred bytes.
const MAX_HEADER_READ: u64 = 64 * 1024;
/// What one item can add to a snapshot besides its key and value: its two length fields (8),
/// and at most a chunk of its own, with the chunk's magic (4), its record line (`chunk `, 64
/// hex digits, a space, up to 20 digits and a line end: 92) and the line end after its data.
const MAX_FRAMING_PER_ITEM: u64 = 8 + 4 + 92 + 1;
/// The trailer line: `sha256 `, 64 hex digits and a line end.
const TRAILER_BYTES: u64 = 72;

/// The largest file a snapshot whose header line is `header_line` bytes long and announces
/// `header.items` items of `header.bytes` bytes can be: the magic, the header, the largest
/// manifest, the items with all their framing, and the trailer.
pub fn max_file_bytes(header_line: u64, header: &SnapshotHeader) -> u64 {
    (MAGIC.len() as u64)
        .saturating_add(header_line)
        .saturating_add(1)
        .saturating_add(MAX_WHOLE_MANIFEST_BYTES as u64 + 1)
        .saturating_add(header.bytes)
        .saturating_add(header.items.saturating_mul(MAX_FRAMING_PER_ITEM))
        .saturating_add(TRAILER_BYTES)
}

fn refused(file: &Path, problem: &str) -> CliError {
    CliError::Refused(format!(
        "{}: {problem}; nothing was staged",
        crate::escape::path(file)
    ))
}

/// Reads a snapshot file for `restore`, its size checked before the bulk of it is read: a file
/// over [`MAX_SNAPSHOT_BYTES`] is refused from its metadata; otherwise the first line and the
/// header are read (at most [`MAX_HEADER_READ`] bytes), and a file larger than what that header
/// announces can take ([`max_file_bytes`]) is refused too. So a large file that is not a
/// snapshot, or one padded past its content, costs no memory. The rest is read only up to the
/// bound, should the file grow meanwhile. Every hash is checked afterwards by [`parse`].
pub fn read_file(file: &Path) -> Result<Vec<u8>, CliError> {
    let handle = std::fs::File::open(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            CliError::Usage(format!("{}: no such file", crate::escape::path(file)))
        }
        _ => io_error(file, "cannot be read", e),
    })?;
    let meta = handle
        .metadata()
        .map_err(|e| io_error(file, "cannot be read", e))?;
    // A FIFO or a device would block the read or never end.
    if !meta.is_file() {
        return Err(refused(file, "it is not a regular file"));
    }
    let len = meta.len();
    if len > MAX_SNAPSHOT_BYTES {
        return Err(refused(
            file,
            &format!(
                "it is {len} bytes, over the limit of {MAX_SNAPSHOT_BYTES} bytes for a snapshot"
            ),
        ));
    }
    let mut reader = std::io::BufReader::new(handle);
    let mut data = Vec::new();
    let read_error = |e| io_error(file, "cannot be read", e);
    (&mut reader)
        .take(MAGIC.len() as u64)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if data != MAGIC {
        return Err(refused(
            file,
            "not a switchboard snapshot (its first line is not SWITCHBOARD-SNAPSHOT 1)",
        ));
    }
    (&mut reader)
        .take(MAX_HEADER_READ)
        .read_until(b'\n', &mut data)
        .map_err(read_error)?;
    let header_line = data[MAGIC.len()..]
        .strip_suffix(b"\n")
        .ok_or_else(|| refused(file, "the header line is missing"))?;
    let header: SnapshotHeader = serde_json::from_slice(header_line)
        .map_err(|e| refused(file, &format!("the header is not valid: {e}")))?;
    let bound = max_file_bytes(header_line.len() as u64, &header);
    if len > bound {
        return Err(refused(
            file,
            &format!(
                "it is {len} bytes, more than a snapshot of {} items and {} bytes can be ({bound} bytes)",
                header.items, header.bytes
            ),
        ));
    }
    data.reserve(usize::try_from(len).unwrap_or(0).saturating_sub(data.len()));
    let rest = bound.saturating_sub(data.len() as u64).saturating_add(1);
    reader
        .take(rest)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if data.len() as u64 > bound {
        return Err(refused(
            file,
            &format!("it grew while it was read, past the {bound} bytes its header allows"),
        ));
    }
    Ok(data)
}

/// A snapshot read back and verified.
#[derive(Debug)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    pub manifest: Manifest,
    pub chunks: Vec<Chunk>,
}

/// Parses and verifies a snapshot file: the trailer hash over the whole file, the manifest's
/// hash, every chunk's hash, and the set's items, bytes and checksum. The error says what does
/// not match.
pub fn parse(data: &[u8]) -> Result<Snapshot, String> {
    let body = data
        .strip_prefix(MAGIC)
        .ok_or("not a switchboard snapshot (its first line is not SWITCHBOARD-SNAPSHOT 1)")?;
    let trailer_at = data
        .strip_suffix(b"\n")
        .and_then(|d| d.iter().rposition(|b| *b == b'\n'))
        .map(|i| i + 1)
        .ok_or("it has no sha256 trailer: it is truncated")?;
    let trailer = std::str::from_utf8(&data[trailer_at..])
        .ok()
        .and_then(|t| t.strip_prefix("sha256 "))
        .map(str::trim_end)
        .ok_or("it has no sha256 trailer: it is truncated")?;
    let actual = sha256_hex(&data[..trailer_at]);
    if actual != trailer {
        return Err(format!(
            "its content hashes to {actual}, not to the {trailer} its last line records: the file is damaged or was changed"
        ));
    }
    let body = &body[..trailer_at - MAGIC.len()];
    let (header_line, rest) = split_line(body).ok_or("the header line is missing")?;
    let header: SnapshotHeader =
        serde_json::from_slice(header_line).map_err(|e| format!("the header is not valid: {e}"))?;
    let (manifest_line, mut rest) = split_line(rest).ok_or("the manifest line is missing")?;
    let manifest = Manifest::from_json(manifest_line)
        .map_err(|e| format!("the manifest is not valid: {e}"))?;
    if manifest.hash() != header.manifest
        || manifest.version != header.version
        || manifest.item_count != header.items
        || manifest.bytes != header.bytes
    {
        return Err("the manifest does not match the header".into());
    }
    let mut verifier = SetVerifier::verify_only(&manifest);
    let mut chunks = Vec::with_capacity(manifest.chunks.len());
    for chunk_ref in &manifest.chunks {
        let (line, after) =
            split_line(rest).ok_or_else(|| format!("chunk {} is missing", chunk_ref.hash))?;
        let line = std::str::from_utf8(line).unwrap_or_default();
        let mut fields = line.split(' ');
        let (Some("chunk"), Some(hash), Some(length), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("a chunk record line is not valid: {line:?}"));
        };
        let length: usize = length
            .parse()
            .map_err(|_| format!("chunk {hash} has no valid length"))?;
        if hash != chunk_ref.hash {
            return Err(format!(
                "chunk {hash} is out of order: the manifest lists {} here",
                chunk_ref.hash
            ));
        }
        let chunk_data = after
            .get(..length)
            .ok_or_else(|| format!("chunk {hash} is truncated"))?;
        rest = after
            .get(length..)
            .and_then(|r| r.strip_prefix(b"\n"))
            .ok_or_else(|| format!("chunk {hash} is not followed by a line end"))?;
        verifier
            .add_chunk(chunk_data)
            .map_err(|e| format!("the set does not verify: {e}"))?;
        chunks.push(Chunk {
            hash: chunk_ref.hash.clone(),
            data: chunk_data.to_vec(),
            items: chunk_ref.items,
            item_bytes: chunk_ref.bytes,
        });
    }
    if !rest.is_empty() {
        return Err("it holds more than its manifest lists".into());
    }
    verifier
        .finish()
        .map_err(|e| format!("the set does not verify: {e}"))?;
    if manifest.checksum != header.checksum {
        return Err("the checksum does not match the header".into());
    }
    Ok(Snapshot {
        header,
        manifest,
        chunks,
    })
}

fn split_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.iter().position(|b| *b == b'\n')?;
    Some((&data[..end], &data[end + 1..]))
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    file.with_file_name(name)
}

fn io_error(path: &Path, what: &str, error: std::io::Error) -> CliError {
    CliError::Failed(format!("{} {what}: {error}", crate::escape::path(path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::ItemSet;

    fn snapshot_of(set: &ItemSet) -> Vec<u8> {
        let (manifest, chunks) = set.to_chunks();
        let header = SnapshotHeader::of("catalog", &manifest, 0);
        let mut writer = SnapshotWriter::new(Vec::new(), &header, &manifest).expect("header");
        for chunk in &chunks {
            writer.add_chunk(&chunk.hash, &chunk.data).expect("chunk");
        }
        let (out, bytes, _) = writer.finish().expect("trailer");
        assert_eq!(bytes, out.len() as u64);
        out
    }

    fn sample() -> ItemSet {
        let mut set = ItemSet::new();
        for i in 0..2000 {
            set.insert_value(
                &format!("tables/t{i:04}"),
                &serde_json::json!({"id": i, "pad": "x".repeat(100)}),
            )
            .expect("insert");
        }
        set
    }

    #[test]
    fn a_snapshot_reads_back_to_the_same_version() {
        let set = sample();
        let (manifest, _) = set.to_chunks();
        let snapshot = parse(&snapshot_of(&set)).expect("parses");
        assert_eq!(snapshot.manifest, manifest);
        assert_eq!(snapshot.header.version, manifest.version);
        assert!(snapshot.chunks.len() > 1, "the sample spans chunks");
    }

    #[test]
    fn any_changed_byte_is_caught() {
        let data = snapshot_of(&sample());
        for at in [0, 30, data.len() / 2, data.len() - 80, data.len() - 2] {
            let mut changed = data.clone();
            changed[at] ^= 0x01;
            assert!(parse(&changed).is_err(), "a flipped byte at {at} passed");
        }
        assert!(parse(&data[..data.len() - 10]).is_err(), "truncated");
        assert!(parse(b"").is_err());
    }

    fn refusal(result: Result<Vec<u8>, CliError>) -> String {
        match result {
            Err(error @ CliError::Refused(_)) => error.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_snapshot_file_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = snapshot_of(&sample());
        let file = dir.path().join("catalog.snapshot");
        std::fs::write(&file, &data).expect("write");
        assert_eq!(read_file(&file).expect("reads"), data);
        let header_line = data[MAGIC.len()..]
            .split(|b| *b == b'\n')
            .next()
            .expect("header");
        let header: SnapshotHeader = serde_json::from_slice(header_line).expect("header");
        assert!(data.len() as u64 <= max_file_bytes(header_line.len() as u64, &header));
    }

    #[test]
    fn a_file_over_the_snapshot_limit_is_refused_from_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("huge.snapshot");
        let mut handle = std::fs::File::create(&file).expect("create");
        handle.write_all(&snapshot_of(&sample())).expect("write");
        handle.set_len(MAX_SNAPSHOT_BYTES + 1).expect("sparse");
        let message = refusal(read_file(&file));
        assert!(
            message.contains("huge.snapshot") && message.contains("over the limit"),
            "{message}"
        );
    }

    #[test]
    fn a_snapshot_padded_past_its_header_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("padded.snapshot");
        let mut handle = std::fs::File::create(&file).expect("create");
        handle.write_all(&snapshot_of(&sample())).expect("write");
        // Sparse: a gigabyte on paper that a restore must not read.
        handle.set_len(1 << 30).expect("sparse");
        let message = refusal(read_file(&file));
        assert!(
            message.contains("it is 1073741824 bytes, more than a snapshot of 2000 items"),
            "refused from its size, not after reading: {message}"
        );
        assert!(message.contains("nothing was staged"), "{message}");

        let other = dir.path().join("zeros.snapshot");
        std::fs::File::create(&other)
            .and_then(|f| f.set_len(1 << 30))
            .expect("sparse");
        let message = refusal(read_file(&other));
        assert!(message.contains("not a switchboard snapshot"), "{message}");
    }

    #[test]
    fn a_consistent_forgery_still_fails_the_set_checksum() {
        // Re-hash the trailer after changing a chunk: the chunk's own hash catches it.
        let mut data = snapshot_of(&sample());
        let trailer_at = data.len() - 72;
        data.truncate(trailer_at);
        let middle = data.len() / 2;
        data[middle] ^= 0x01;
        let sha = sha256_hex(&data);
        data.extend(format!("sha256 {sha}\n").as_bytes());
        let problem = parse(&data).expect_err("forged");
        assert!(
            problem.contains("hashes to") || problem.contains("does not verify"),
            "caught by a chunk's hash or the set's checksum, not by the framing: {problem}"
        );
    }
}
