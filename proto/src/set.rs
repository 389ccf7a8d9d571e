//! Metadata sets: item keys, canonical JSON, the content-addressed chunk format, manifests and
//! their verification.
//!
//! A set is a sorted map from key to canonical JSON value. It is cut into chunks of consecutive
//! items; a chunk is named by the SHA-256 of its bytes, so unchanged chunks are shared between
//! versions and never uploaded twice. The checksum of a set is the SHA-256 of the item records
//! of all its chunks in order, so verifying a set is one pass over its chunks.
//!
//! Chunk bytes: the magic `SBC1`, then per item `u32 LE key length, key, u32 LE value length,
//! value`. Chunk boundaries are chosen by a hash of each key, so inserting or removing an item
//! only changes the chunk that holds it, not every chunk after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64;

use crate::types::{ChunkRef, Manifest};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes of canonical JSON.
pub const MAX_ITEM_BYTES: usize = 1024 * 1024;
/// Average chunk size the boundaries aim at. Small, so that a change scattered over a few items
/// replaces few bytes: with items of 1 KB a chunk holds about two, and a change of 1% of the
/// items scattered at random re-uploads about 3% of the bytes. The chunk list this makes is
/// long, which is why manifests are stored paged (`crate::paged`).
pub const TARGET_CHUNK_BYTES: usize = 2 * 1024;
/// No chunk grows past this unless a single item needs it; with one item of `MAX_ITEM_BYTES`
/// a chunk stays under etcd's 1.5 MiB request limit.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024 + 4096;
/// Most chunks read in one etcd transaction (etcd allows 128 operations).
pub const MAX_READS_PER_TXN: usize = 100;
/// Most chunk bytes asked for in one etcd transaction, under the 4 MiB gRPC message limit.
pub const MAX_READ_BYTES: u64 = 3 * 1024 * 1024;
/// Largest stored manifest head (`crate::paged`): it must fit in one etcd request with room to
/// spare.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Largest whole manifest, with every chunk listed, as a snapshot file or a gRPC answer holds
/// it: about 150,000 chunks, under the gRPC message limit of 16 MiB.
pub const MAX_WHOLE_MANIFEST_BYTES: usize = 15 * 1024 * 1024;
/// Version of the manifest document format.
pub const MANIFEST_FORMAT: u32 = 1;
const CHUNK_MAGIC: &[u8; 4] = b"SBC1";

/// What is wrong with a key, an item, a chunk or a set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("item {key:?} is {bytes} bytes of JSON, over the limit of {MAX_ITEM_BYTES}")]
    ItemTooLarge { key: String, bytes: usize },
    #[error("chunk {hash}: {reason}")]
    CorruptChunk { hash: String, reason: String },
    #[error("set does not match its manifest: {0}")]
    ManifestMismatch(String),
    #[error("manifest: {0}")]
    InvalidManifest(String),
}

/// Checks a key against the contract: 1 to 512 bytes of `A-Z a-z 0-9 . _ - /`, no empty path
/// segment and no `.` or `..` segment.
pub fn validate_key(key: &str) -> Result<(), ContractError> {
    let invalid = |reason: String| ContractError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "is {} bytes long, over {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(invalid(format!(
            "has the character {bad:?}; keys use A-Z a-z 0-9 . _ - /"
        )));
    }
    if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(invalid("has an empty, '.' or '..' path segment".into()));
    }
    Ok(())
}

/// The canonical JSON of a value: object keys sorted, no white space. Independent of whether
/// serde_json keeps insertion order, so every build of every part agrees.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    // Keys and scalars are written straight into `out` by serde_json's compact serializer
    // (the same bytes `to_string` gives), without a String for each: this runs for every
    // value of every item staged.
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // serde_json's map is usually sorted already; sorting keeps the bytes canonical if
            // a dependency turns on its `preserve_order` feature.
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string or a scalar into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// A complete set in memory: keys in order, each with its canonical JSON value. Values are
/// shared `Arc<[u8]>` so that serving one is a reference count, not a copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemSet {
    items: BTreeMap<String, Arc<[u8]>>,
    bytes: u64,
}

impl ItemSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an item from a parsed value, checking its key and size.
    pub fn insert_value(
        &mut self,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), ContractError> {
        validate_key(key)?;
        let json = canonical_json(value);
        if json.len() > MAX_ITEM_BYTES {
            return Err(ContractError::ItemTooLarge {
                key: key.to_string(),
                bytes: json.len(),
            });
        }
        self.insert_raw(key.to_string(), json.into());
        Ok(())
    }

    fn insert_raw(&mut self, key: String, value: Arc<[u8]>) {
        self.bytes += (key.len() + value.len()) as u64;
        if let Some(old) = self.items.insert(key.clone(), value) {
            self.bytes -= (key.len() + old.len()) as u64;
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.items.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Arc<[u8]>> {
        self.items.get(key)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<[u8]>)> {
        self.items.iter()
    }

    /// Items whose key starts with `prefix`, in key order.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Arc<[u8]>)> + 'a {
        self.items
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Cuts the set into chunks and describes it in a manifest.
    pub fn to_chunks(&self) -> (Manifest, Vec<Chunk>) {
        let mut chunks = Vec::new();
        let manifest = self.for_each_chunk(|chunk| {
            chunks.push(chunk);
            Ok::<(), std::convert::Infallible>(())
        });
        match manifest {
            Ok(manifest) => (manifest, chunks),
            Err(never) => match never {},
        }
    }

    /// Cuts the set into chunks one at a time, handing each to `each` as soon as it is cut, so
    /// that a caller that writes them out never holds more than one; returns the manifest.
    pub fn for_each_chunk<E>(
        &self,
        mut each: impl FnMut(Chunk) -> Result<(), E>,
    ) -> Result<Manifest, E> {
        let mut refs = Vec::new();
        let mut checksum = Sha256::new();
        let mut current = ChunkBuilder::default();
        let mut emit = |chunk: Chunk, refs: &mut Vec<ChunkRef>| {
            refs.push(chunk.to_ref());
            each(chunk)
        };
        for (key, value) in &self.items {
            let record_len = 8 + key.len() + value.len();
            if current.items > 0 && current.body.len() + record_len > MAX_CHUNK_BYTES {
                emit(current.finish(), &mut refs)?;
            }
            let record = current.push(key, value);
            checksum.update(record);
            if is_boundary(key, record_len) {
                emit(current.finish(), &mut refs)?;
            }
        }
        if current.items > 0 {
            emit(current.finish(), &mut refs)?;
        }
        let checksum = hex::encode(checksum.finalize());
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            version: version_from_checksum(&checksum),
            item_count: self.items.len() as u64,
            bytes: self.bytes,
            checksum,
            chunks: refs,
        })
    }
}

/// A chunk boundary falls after an item with a probability proportional to its size, decided
/// by the hash of its key alone, so boundaries do not move when other items change.
fn is_boundary(key: &str, record_len: usize) -> bool {
    let threshold = (u64::MAX / TARGET_CHUNK_BYTES as u64).saturating_mul(record_len as u64);
    xxh3_64(key.as_bytes()) < threshold
}

/// The version id of a set: the first 16 hex digits of its checksum.
pub fn version_from_checksum(checksum: &str) -> String {
    checksum.chars().take(16).collect()
}

#[derive(Default)]
struct ChunkBuilder {
    body: Vec<u8>,
    items: u64,
    item_bytes: u64,
}

impl ChunkBuilder {
    /// Appends one item and returns its record, which is what the set checksum covers.
    fn push(&mut self, key: &str, value: &[u8]) -> &[u8] {
        if self.body.is_empty() {
            self.body.extend_from_slice(CHUNK_MAGIC);
        }
        let start = self.body.len();
        self.body
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.body.extend_from_slice(key.as_bytes());
        self.body
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.body.extend_from_slice(value);
        self.items += 1;
        self.item_bytes += (key.len() + value.len()) as u64;
        &self.body[start..]
    }

    fn finish(&mut self) -> Chunk {
        let builder = std::mem::take(self);
        Chunk::from_parts(builder.body, builder.items, builder.item_bytes)
    }
}

/// One chunk: its bytes and the SHA-256 that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub hash: String,
    pub data: Vec<u8>,
    pub items: u64,
    pub item_bytes: u64,
}

impl Chunk {
    fn from_parts(data: Vec<u8>, items: u64, item_bytes: u64) -> Self {
        Self {
            hash: sha256_hex(&data),
            data,
            items,
            item_bytes,
        }
    }

    pub fn to_ref(&self) -> ChunkRef {
        ChunkRef {
            hash: self.hash.clone(),
            items: self.items,
            bytes: self.item_bytes,
        }
    }
}

/// A writer that passes everything on to `inner` and keeps the SHA-256 and the count of what
/// passed: the sidecar's disk copy and sbctl's snapshot files end with that hash.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the SHA-256 of everything written and how many bytes that was.
    pub fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hasher.finalize().into(), self.written)
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One item: its key and its canonical JSON value.
pub type Item = (String, Arc<[u8]>);

/// Decodes a chunk that claims to be `expected_hash`, checking its hash, its framing, its keys
/// and that its keys ascend. Returns the items in order.
pub fn decode_chunk(expected_hash: &str, data: &[u8]) -> Result<Vec<Item>, ContractError> {
    let corrupt = |reason: String| ContractError::CorruptChunk {
        hash: expected_hash.to_string(),
        reason,
    };
    let actual = sha256_hex(data);
    if actual != expected_hash {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    let body = data
        .strip_prefix(CHUNK_MAGIC)
        .ok_or_else(|| corrupt("bad magic".into()))?;
    let mut items = Vec::new();
    let mut rest = body;
    let mut previous: Option<&str> = None;
    while !rest.is_empty() {
        let (key_bytes, after_key) =
            take_field(rest).ok_or_else(|| corrupt("truncated key".into()))?;
        let (value, after_value) =
            take_field(after_key).ok_or_else(|| corrupt("truncated value".into()))?;
        let key = std::str::from_utf8(key_bytes)
            .map_err(|_| corrupt(format!("item {} has a key that is not UTF-8", items.len())))?;
        validate_key(key).map_err(|e| corrupt(e.to_string()))?;
        if value.len() > MAX_ITEM_BYTES {
            return Err(corrupt(format!(
                "item {key:?} is over {MAX_ITEM_BYTES} bytes"
            )));
        }
        if previous.is_some_and(|p| p >= key) {
            return Err(corrupt(format!("keys out of order at {key:?}")));
        }
        previous = Some(key);
        items.push((key.to_string(), Arc::from(value)));
        rest = after_value;
    }
    if items.is_empty() {
        return Err(corrupt("holds no item".into()));
    }
    Ok(items)
}

fn take_field(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = input.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

impl Manifest {
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // A manifest is plain data; serialising it to a Value cannot fail.
        canonical_json(&serde_json::to_value(self).unwrap_or_default())
    }

    /// Parses a whole manifest (from a snapshot file or a coordinator's answer) and checks that
    /// it is internally consistent. In etcd a manifest is stored paged (`crate::paged`).
    pub fn from_json(data: &[u8]) -> Result<Self, ContractError> {
        if data.len() > MAX_WHOLE_MANIFEST_BYTES {
            return Err(ContractError::InvalidManifest(format!(
                "{} bytes, over the limit of {MAX_WHOLE_MANIFEST_BYTES}",
                data.len()
            )));
        }
        let manifest: Manifest = serde_json::from_slice(data)
            .map_err(|e| ContractError::InvalidManifest(format!("not a manifest: {e}")))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks that the manifest is internally consistent: format, hashes, and counts that add
    /// up without overflow.
    pub(crate) fn check(&self) -> Result<(), ContractError> {
        let bad = |m: String| Err(ContractError::InvalidManifest(m));
        if self.format != MANIFEST_FORMAT {
            return bad(format!("format {} is not {MANIFEST_FORMAT}", self.format));
        }
        if !is_sha256_hex(&self.checksum) {
            return bad(format!("checksum {:?} is not a SHA-256", self.checksum));
        }
        if self.version != version_from_checksum(&self.checksum) {
            return bad(format!(
                "version {:?} does not match the checksum",
                self.version
            ));
        }
        // Every number here comes from outside: bound each chunk, then add with checks, so
        // that no later arithmetic on them can overflow.
        let (mut items, mut bytes) = (0u64, 0u64);
        for c in &self.chunks {
            if !is_sha256_hex(&c.hash) {
                return bad(format!("chunk hash {:?} is not a SHA-256", c.hash));
            }
            let smallest = c.items.checked_mul(2);
            if c.items == 0
                || smallest.is_none_or(|min| c.bytes < min)
                || c.bytes > MAX_CHUNK_BYTES as u64
            {
                return bad(format!(
                    "chunk {} claims {} items in {} bytes, which no valid chunk holds",
                    c.hash, c.items, c.bytes
                ));
            }
            items = items
                .checked_add(c.items)
                .ok_or_else(|| overflow("item count"))?;
            bytes = bytes
                .checked_add(c.bytes)
                .ok_or_else(|| overflow("byte count"))?;
        }
        if items != self.item_count {
            return bad(format!(
                "chunks hold {items} items, manifest says {}",
                self.item_count
            ));
        }
        if bytes != self.bytes {
            return bad(format!(
                "chunks hold {bytes} bytes, manifest says {}",
                self.bytes
            ));
        }
        if self.item_count == 0 {
            return bad("the set is empty".into());
        }
        Ok(())
    }
}

fn overflow(what: &str) -> ContractError {
    ContractError::InvalidManifest(format!("the {what} overflows"))
}

impl ChunkRef {
    /// The chunk's size in etcd: the magic, and per item two length fields, its key and value.
    /// Exact for a chunk that verifies; bounded for any manifest that passed `from_json`.
    pub fn stored_len(&self) -> u64 {
        (CHUNK_MAGIC.len() as u64)
            .saturating_add(self.bytes)
            .saturating_add(self.items.saturating_mul(8))
    }
}

/// Splits chunks of the given stored sizes, in order, into consecutive ranges that one etcd
/// transaction can read: at most `MAX_READS_PER_TXN` chunks and `MAX_READ_BYTES` bytes, except
/// that a single chunk always forms a batch of its own however large it is.
pub fn read_batches(sizes: &[u64]) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < sizes.len()
            && end - start < MAX_READS_PER_TXN
            && (end == start || bytes.saturating_add(sizes[end]) <= MAX_READ_BYTES)
        {
            bytes = bytes.saturating_add(sizes[end]);
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Rebuilds a set from its chunks, in manifest order, and verifies item count, byte count and
/// checksum (invariant 1). `chunk_data` yields each chunk's bytes in the manifest's order.
pub fn assemble_verified<'a>(
    manifest: &Manifest,
    chunk_data: impl IntoIterator<Item = &'a [u8]>,
) -> Result<ItemSet, ContractError> {
    let mut verifier = SetVerifier::new(manifest);
    let mut chunk_data = chunk_data.into_iter();
    for chunk_ref in &manifest.chunks {
        let data = chunk_data.next().ok_or_else(|| {
            ContractError::ManifestMismatch(format!("chunk {} is missing", chunk_ref.hash))
        })?;
        verifier.add_chunk(data)?;
    }
    verifier.finish()
}

/// Verifies a set chunk by chunk, in manifest order, so that a caller can stream chunks in.
pub struct SetVerifier<'m> {
    manifest: &'m Manifest,
    next_chunk: usize,
    checksum: Sha256,
    set: ItemSet,
    /// Item and byte counts, kept also when the items themselves are not.
    counted: (u64, u64),
    keep_items: bool,
    last_key: Option<String>,
}

impl<'m> SetVerifier<'m> {
    /// A verifier that assembles the set.
    pub fn new(manifest: &'m Manifest) -> Self {
        Self {
            manifest,
            next_chunk: 0,
            checksum: Sha256::new(),
            set: ItemSet::new(),
            counted: (0, 0),
            keep_items: true,
            last_key: None,
        }
    }

    /// A verifier that checks the set without keeping it, so memory stays at one chunk.
    pub fn verify_only(manifest: &'m Manifest) -> Self {
        Self {
            keep_items: false,
            ..Self::new(manifest)
        }
    }

    /// Adds the next chunk in manifest order.
    pub fn add_chunk(&mut self, data: &[u8]) -> Result<(), ContractError> {
        let items = self.add_chunk_items(data)?;
        if self.keep_items {
            for (key, value) in items {
                self.set.insert_raw(key, value);
            }
        }
        Ok(())
    }

    /// Adds the next chunk in manifest order and returns its items, verified, for a caller
    /// that looks at each item as it streams by (the coordinator's seal-time checks).
    pub fn add_chunk_items(&mut self, data: &[u8]) -> Result<Vec<Item>, ContractError> {
        let chunk_ref = self.manifest.chunks.get(self.next_chunk).ok_or_else(|| {
            ContractError::ManifestMismatch("more chunks than the manifest lists".into())
        })?;
        if data.len() as u64 != chunk_ref.stored_len() {
            return Err(ContractError::ManifestMismatch(format!(
                "chunk {} is {} bytes, the manifest says {}",
                chunk_ref.hash,
                data.len(),
                chunk_ref.stored_len()
            )));
        }
        let items = decode_chunk(&chunk_ref.hash, data)?;
        if items.len() as u64 != chunk_ref.items {
            return Err(ContractError::ManifestMismatch(format!(
                "chunk {} holds {} items, the manifest says {}",
                chunk_ref.hash,
                items.len(),
                chunk_ref.items
            )));
        }
        if let (Some(last), Some((first, _))) = (&self.last_key, items.first())
            && last >= first
        {
            return Err(ContractError::ManifestMismatch(format!(
                "chunk {} starts at {first:?}, not after {last:?}",
                chunk_ref.hash
            )));
        }
        // Values are served as JSON text without parsing, so each must be JSON (invariant 7).
        for (key, value) in &items {
            serde_json::from_slice::<serde::de::IgnoredAny>(value).map_err(|e| {
                ContractError::CorruptChunk {
                    hash: chunk_ref.hash.clone(),
                    reason: format!("item {key:?} is not valid JSON: {e}"),
                }
            })?;
        }
        self.checksum.update(&data[CHUNK_MAGIC.len()..]);
        self.last_key = items.last().map(|(k, _)| k.clone());
        for (key, value) in &items {
            self.counted.0 += 1;
            self.counted.1 += (key.len() + value.len()) as u64;
        }
        self.next_chunk += 1;
        Ok(items)
    }

    /// Checks the totals against the manifest and returns the verified set (empty for a
    /// `verify_only` verifier).
    pub fn finish(self) -> Result<ItemSet, ContractError> {
        let mismatch = |m: String| Err(ContractError::ManifestMismatch(m));
        if self.next_chunk != self.manifest.chunks.len() {
            return mismatch(format!(
                "{} of {} chunks were read",
                self.next_chunk,
                self.manifest.chunks.len()
            ));
        }
        let (items, bytes) = self.counted;
        if items != self.manifest.item_count {
            return mismatch(format!(
                "{items} items, manifest says {}",
                self.manifest.item_count
            ));
        }
        if bytes != self.manifest.bytes {
            return mismatch(format!(
                "{bytes} bytes, manifest says {}",
                self.manifest.bytes
            ));
        }
        let checksum = hex::encode(self.checksum.finalize());
        if checksum != self.manifest.checksum {
            return mismatch(format!(
                "checksum {checksum}, manifest says {}",
                self.manifest.checksum
            ));
        }
        Ok(self.set)
    }
}

#[cfg(test)]
mod tests;
