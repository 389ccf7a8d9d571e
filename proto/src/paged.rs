//! Paged manifests: how a manifest is stored in etcd, as a small head and content-addressed
//! pages of chunk references.
//!
//! A set is described by its [`Manifest`]: counts, checksum and the ordered list of its chunks.
//! With small chunks (which keep a scattered change from re-uploading most of a set) that list
//! outgrows one etcd key, so it is stored in pages. A page holds consecutive chunk references
//! and is named by the SHA-256 of its bytes, like a chunk; the head holds the counts, the
//! checksum and the ordered page references, and the SHA-256 of the head's canonical JSON is
//! the manifest's name. The name therefore covers every page and, through them, every chunk.
//!
//! Page boundaries depend on the chunk hashes alone (a page ends after a chunk whose hash
//! starts with `0`, or at [`MAX_PAGE_REFS`]), so that a change that replaces a few chunks only
//! replaces the pages that list them, and the same manifest always gives the same pages.
//!
//! Page bytes: the magic `SBP1`, then per chunk its 32-byte SHA-256, `u32 LE` item count and
//! `u32 LE` item bytes.

use serde::{Deserialize, Serialize};

use crate::set::{
    ContractError, MANIFEST_FORMAT, MAX_MANIFEST_BYTES, canonical_json, is_sha256_hex, sha256_hex,
};
use crate::types::{ChunkRef, Manifest};

/// Version of the head document, the stored form of a manifest.
pub const HEAD_FORMAT: u32 = 2;
/// Most chunk references one page holds.
pub const MAX_PAGE_REFS: usize = 256;
const PAGE_MAGIC: &[u8; 4] = b"SBP1";
const PAGE_REF_BYTES: usize = 32 + 4 + 4;

/// The stored form of a manifest (at `manifests/<name>`): everything but the chunk list, which
/// its pages hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHead {
    pub format: u32,
    pub version: String,
    pub item_count: u64,
    pub bytes: u64,
    pub checksum: String,
    pub pages: Vec<PageRef>,
}

/// One page of a manifest: its name and how many chunk references it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    pub hash: String,
    pub chunks: u64,
}

/// One page: its bytes and the SHA-256 that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub hash: String,
    pub data: Vec<u8>,
}

impl Page {
    /// The page's size in etcd for a given number of chunk references.
    pub fn stored_len(chunks: u64) -> u64 {
        (PAGE_MAGIC.len() as u64).saturating_add(chunks.saturating_mul(PAGE_REF_BYTES as u64))
    }
}

impl Manifest {
    /// The head and the pages this manifest is stored as. A pure function of the manifest.
    pub fn to_pages(&self) -> (ManifestHead, Vec<Page>) {
        let mut pages = Vec::new();
        let mut refs = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let mut count = 0u64;
        let mut finish = |data: &mut Vec<u8>, count: &mut u64| {
            let page = Page {
                hash: sha256_hex(data),
                data: std::mem::take(data),
            };
            refs.push(PageRef {
                hash: page.hash.clone(),
                chunks: *count,
            });
            pages.push(page);
            *count = 0;
        };
        for chunk in &self.chunks {
            if data.is_empty() {
                data.extend_from_slice(PAGE_MAGIC);
            }
            // A manifest that passed `check` has valid hashes and bounded counts; one
            // built by `ItemSet::to_chunks` always does.
            let mut raw = [0u8; 32];
            hex::decode_to_slice(&chunk.hash, &mut raw).unwrap_or_default();
            data.extend_from_slice(&raw);
            data.extend_from_slice(&(chunk.items as u32).to_le_bytes());
            data.extend_from_slice(&(chunk.bytes as u32).to_le_bytes());
            count += 1;
            if chunk.hash.starts_with('0') || count as usize == MAX_PAGE_REFS {
                finish(&mut data, &mut count);
            }
        }
        if count > 0 {
            finish(&mut data, &mut count);
        }
        let head = ManifestHead {
            format: HEAD_FORMAT,
            version: self.version.clone(),
            item_count: self.item_count,
            bytes: self.bytes,
            checksum: self.checksum.clone(),
            pages: refs,
        };
        (head, pages)
    }

    /// The SHA-256 of the canonical JSON of the manifest's head: its name in etcd and in
    /// routing. It covers the pages, and through them the chunks.
    pub fn hash(&self) -> String {
        self.to_pages().0.hash()
    }
}

impl ManifestHead {
    pub fn hash(&self) -> String {
        sha256_hex(&self.to_canonical_json())
    }

    pub fn to_canonical_json(&self) -> Vec<u8> {
        // A head is plain data; serialising it to a Value cannot fail.
        canonical_json(&serde_json::to_value(self).unwrap_or_default())
    }

    /// Parses a stored head and checks its shape: format, checksum, page names, and that it
    /// fits one etcd key.
    pub fn from_json(data: &[u8]) -> Result<Self, ContractError> {
        let bad = |m: String| Err(ContractError::InvalidManifest(m));
        if data.len() > MAX_MANIFEST_BYTES {
            return bad(format!(
                "head of {} bytes, over the limit of {MAX_MANIFEST_BYTES}",
                data.len()
            ));
        }
        let head: ManifestHead = match serde_json::from_slice(data) {
            Ok(head) => head,
            Err(e) => {
                // A format-1 manifest, from before pages, holds the chunk list itself.
                if serde_json::from_slice::<serde_json::Value>(data)
                    .is_ok_and(|v| v.get("format").and_then(|f| f.as_u64()) == Some(1))
                {
                    return bad(
                        "format 1 (unpaged) comes from an older Switchboard: upgrade sbctl, or stage the set again"
                            .into(),
                    );
                }
                return bad(format!("not a manifest head: {e}"));
            }
        };
        if head.format != HEAD_FORMAT {
            return bad(format!("head format {} is not {HEAD_FORMAT}", head.format));
        }
        if head.pages.is_empty() {
            return bad("the head lists no page".into());
        }
        for page in &head.pages {
            if !is_sha256_hex(&page.hash) {
                return bad(format!("page hash {:?} is not a SHA-256", page.hash));
            }
            if page.chunks == 0 || page.chunks > MAX_PAGE_REFS as u64 {
                return bad(format!(
                    "page {} claims {} chunks; a page holds 1 to {MAX_PAGE_REFS}",
                    page.hash, page.chunks
                ));
            }
        }
        Ok(head)
    }

    /// Rebuilds the manifest from its pages, given in the head's order, and checks that each
    /// page hashes to its name and that the manifest pages back into exactly this head.
    pub fn assemble<'a>(
        &self,
        pages: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Manifest, ContractError> {
        let mismatch = |m: String| Err(ContractError::ManifestMismatch(m));
        let mut pages = pages.into_iter();
        let mut chunks = Vec::new();
        for page_ref in &self.pages {
            let Some(data) = pages.next() else {
                return mismatch(format!("page {} is missing", page_ref.hash));
            };
            if sha256_hex(data) != page_ref.hash {
                return mismatch(format!("page {} does not match its hash", page_ref.hash));
            }
            if data.len() as u64 != Page::stored_len(page_ref.chunks) {
                return mismatch(format!(
                    "page {} is {} bytes, which does not hold {} chunk references",
                    page_ref.hash,
                    data.len(),
                    page_ref.chunks
                ));
            }
            let Some(body) = data.strip_prefix(PAGE_MAGIC) else {
                return mismatch(format!("page {} lacks the magic SBP1", page_ref.hash));
            };
            for record in body.chunks_exact(PAGE_REF_BYTES) {
                let (hash, counts) = record.split_at(32);
                let (items, bytes) = counts.split_at(4);
                // Both slices are exactly 4 bytes long by construction.
                let number = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
                chunks.push(ChunkRef {
                    hash: hex::encode(hash),
                    items: u64::from(number(items)),
                    bytes: u64::from(number(bytes)),
                });
            }
        }
        if pages.next().is_some() {
            return mismatch("more pages than the head lists".into());
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            version: self.version.clone(),
            item_count: self.item_count,
            bytes: self.bytes,
            checksum: self.checksum.clone(),
            chunks,
        };
        manifest.check()?;
        // Page boundaries are a function of the chunk list; a head that cuts the same list
        // differently is not one that Switchboard wrote.
        if &manifest.to_pages().0 != self {
            return mismatch("the pages are not cut where the chunk hashes place them".into());
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ItemSet;
    use serde_json::json;

    fn manifest(n: usize) -> Manifest {
        let mut set = ItemSet::new();
        for i in 0..n {
            let value = json!({"id": i, "pad": "x".repeat(1000)});
            set.insert_value(&format!("t/{i:06}"), &value)
                .expect("valid item");
        }
        set.to_chunks().0
    }

    fn page_data(pages: &[Page]) -> Vec<&[u8]> {
        pages.iter().map(|p| p.data.as_slice()).collect()
    }

    #[test]
    fn a_manifest_pages_and_assembles_back_to_itself() {
        let manifest = manifest(3000);
        let (head, pages) = manifest.to_pages();
        assert!(pages.len() > 10, "{} pages", pages.len());
        assert_eq!(head.pages.len(), pages.len());
        for (page_ref, page) in head.pages.iter().zip(&pages) {
            assert_eq!(page_ref.hash, sha256_hex(&page.data));
            assert!(page_ref.chunks as usize <= MAX_PAGE_REFS);
        }
        let parsed = ManifestHead::from_json(&head.to_canonical_json()).expect("parses");
        assert_eq!(parsed, head);
        assert_eq!(
            parsed.assemble(page_data(&pages)).expect("assembles"),
            manifest
        );
        assert_eq!(manifest.hash(), head.hash());
    }

    #[test]
    fn pages_are_cut_by_chunk_hashes_so_one_changed_chunk_changes_one_page() {
        let before = manifest(3000);
        let mut after = before.clone();
        after.chunks[1000].hash = "f".repeat(64);
        let (_, old_pages) = before.to_pages();
        let (_, new_pages) = after.to_pages();
        let old: std::collections::HashSet<_> = old_pages.iter().map(|p| &p.hash).collect();
        let changed = new_pages.iter().filter(|p| !old.contains(&p.hash)).count();
        assert!(changed <= 2, "{changed} pages changed for one chunk");
    }

    #[test]
    fn a_tampered_page_or_head_does_not_assemble() {
        let manifest = manifest(1000);
        let (head, pages) = manifest.to_pages();
        let mut data: Vec<Vec<u8>> = pages.iter().map(|p| p.data.clone()).collect();
        data[0][10] ^= 1;
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let error = head.assemble(refs).expect_err("tampered page");
        assert!(
            error.to_string().contains("does not match its hash"),
            "{error}"
        );

        let error = head
            .assemble(page_data(&pages[..pages.len() - 1]))
            .expect_err("a page short");
        assert!(error.to_string().contains("is missing"), "{error}");

        let mut lying = head.clone();
        lying.item_count += 1;
        let error = lying.assemble(page_data(&pages)).expect_err("wrong count");
        assert!(error.to_string().contains("items"), "{error}");
    }

    #[test]
    fn a_head_cut_differently_from_its_chunk_hashes_is_refused() {
        let manifest = manifest(200);
        let (_, pages) = manifest.to_pages();
        assert!(pages.len() > 1, "the sample spans pages");
        // One page holding every chunk reference: valid bytes, wrong boundaries.
        let mut data = PAGE_MAGIC.to_vec();
        for page in &pages {
            data.extend_from_slice(&page.data[PAGE_MAGIC.len()..]);
        }
        let head = ManifestHead {
            format: HEAD_FORMAT,
            version: manifest.version.clone(),
            item_count: manifest.item_count,
            bytes: manifest.bytes,
            checksum: manifest.checksum.clone(),
            pages: vec![PageRef {
                hash: sha256_hex(&data),
                chunks: manifest.chunks.len() as u64,
            }],
        };
        assert!(
            manifest.chunks.len() <= MAX_PAGE_REFS,
            "the sample fits one page"
        );
        let error = head.assemble([data.as_slice()]).expect_err("wrong cut");
        assert!(error.to_string().contains("not cut"), "{error}");
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 4] = [
            (b"{", "not a manifest head"),
            (br#"{"format":1,"chunks":[]}"#, "older Switchboard"),
            (
                br#"{"format":2,"version":"v","item_count":1,"bytes":2,"checksum":"c","pages":[]}"#,
                "no page",
            ),
            (
                br#"{"format":2,"version":"v","item_count":1,"bytes":2,"checksum":"c","pages":[{"hash":"zz","chunks":1}]}"#,
                "not a SHA-256",
            ),
        ];
        for (raw, expected) in cases {
            let error = ManifestHead::from_json(raw).expect_err("bad head");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
