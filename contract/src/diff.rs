//! The plan diff: what staging a local set would add, change and remove compared with the
//! active set, computed from the two manifests so that only the chunks that differ are fetched.
//!
//! A chunk is named by the SHA-256 of its bytes, so a chunk whose hash is in both manifests
//! holds the same items on both sides and is skipped. Keys are unique within a set, so a key in
//! a shared chunk is in no other chunk of either side: every difference lies in the chunks that
//! only one side has. The local side's items are at hand; the active side's are fetched for the
//! active-only chunks alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use switchboard_proto::set::decode_chunk;
use switchboard_proto::{ItemSet, Manifest};

/// Items of the active set's chunks that the local set does not share, by key.
pub type ActiveOnlyItems = BTreeMap<String, Arc<[u8]>>;

/// What staging the local set would change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Keys only the local set has, in key order.
    pub added: Vec<String>,
    /// Keys both sets have with different values, in key order.
    pub changed: Vec<String>,
    /// Keys only the active set has, in key order.
    pub removed: Vec<String>,
    /// Items the same on both sides.
    pub unchanged: u64,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The hashes of the active manifest's chunks that the local manifest lacks, in the active
/// manifest's order: the only chunks the diff needs to fetch.
pub fn chunks_to_fetch(local: &Manifest, active: &Manifest) -> Vec<String> {
    let local_hashes: HashSet<&str> = local.chunks.iter().map(|c| c.hash.as_str()).collect();
    let mut seen = HashSet::new();
    active
        .chunks
        .iter()
        .map(|c| c.hash.as_str())
        .filter(|h| !local_hashes.contains(h) && seen.insert(*h))
        .map(str::to_string)
        .collect()
}

/// Decodes the chunks fetched for [`chunks_to_fetch`], verifying each against its hash and its
/// item count in the active manifest, and that every wanted chunk came exactly once.
pub fn decode_fetched(
    active: &Manifest,
    wanted: &[String],
    fetched: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<ActiveOnlyItems, String> {
    let counts: HashMap<&str, u64> = active
        .chunks
        .iter()
        .map(|c| (c.hash.as_str(), c.items))
        .collect();
    let mut pending: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let mut items = ActiveOnlyItems::new();
    for (hash, data) in fetched {
        if !pending.remove(hash.as_str()) {
            return Err(format!("chunk {hash} was not asked for, or came twice"));
        }
        let decoded = decode_chunk(&hash, &data).map_err(|e| e.to_string())?;
        let expected = counts.get(hash.as_str()).copied().unwrap_or_default();
        if decoded.len() as u64 != expected {
            return Err(format!(
                "chunk {hash} holds {} items, the active manifest says {expected}",
                decoded.len()
            ));
        }
        for (key, value) in decoded {
            if items.insert(key.clone(), value).is_some() {
                return Err(format!(
                    "the key {key:?} is in two chunks of the active set"
                ));
            }
        }
    }
    if let Some(missing) = wanted.iter().find(|h| pending.contains(h.as_str())) {
        return Err(format!("chunk {missing} is missing from the reply"));
    }
    Ok(items)
}

/// Compares the local set (with its manifest, from [`ItemSet::to_chunks`]) with the active set,
/// given as its manifest and the items of its chunks that the local manifest does not share
/// ([`decode_fetched`]). `None` means nothing is active: everything is added.
pub fn diff(
    local_manifest: &Manifest,
    local: &ItemSet,
    active: Option<(&Manifest, &ActiveOnlyItems)>,
) -> Diff {
    let mut result = Diff::default();
    let Some((active_manifest, active_only)) = active else {
        result.added = local.iter().map(|(k, _)| k.clone()).collect();
        return result;
    };
    let shared: HashSet<&str> = active_manifest
        .chunks
        .iter()
        .map(|c| c.hash.as_str())
        .collect();

    // The local manifest's chunks hold the local items in key order, `items` at a time.
    let mut items = local.iter();
    let classify_local =
        |key: &String, value: &Arc<[u8]>, result: &mut Diff| match active_only.get(key) {
            Some(old) if old == value => result.unchanged += 1,
            Some(_) => result.changed.push(key.clone()),
            None => result.added.push(key.clone()),
        };
    for chunk in &local_manifest.chunks {
        let in_shared_chunk = shared.contains(chunk.hash.as_str());
        for (key, value) in items.by_ref().take(chunk.items as usize) {
            if in_shared_chunk {
                result.unchanged += 1;
            } else {
                classify_local(key, value, &mut result);
            }
        }
    }
    // Only if the manifest does not describe the set: compare what is left item by item.
    for (key, value) in items {
        classify_local(key, value, &mut result);
    }
    result.removed = active_only
        .keys()
        .filter(|k| !local.contains_key(k))
        .cloned()
        .collect();
    result
}

/// The diff from what each side holds that the other does not: `new_only` are the new set's
/// items in chunks the active set does not share, `shared_items` the number of items in the
/// chunks both share, and `active_only` the active set's items in chunks the new set does not
/// share ([`decode_fetched`]). A key in a shared chunk is in no other chunk of either side, so
/// every difference lies in these two maps. This is the coordinator's form of [`diff`], for a
/// set it reads chunk by chunk and never holds whole.
pub fn diff_unshared(
    new_only: &BTreeMap<String, Arc<[u8]>>,
    shared_items: u64,
    active_only: &ActiveOnlyItems,
) -> Diff {
    let mut result = Diff {
        unchanged: shared_items,
        ..Diff::default()
    };
    for (key, value) in new_only {
        match active_only.get(key) {
            Some(old) if old == value => result.unchanged += 1,
            Some(_) => result.changed.push(key.clone()),
            None => result.added.push(key.clone()),
        }
    }
    result.removed = active_only
        .keys()
        .filter(|k| !new_only.contains_key(*k))
        .cloned()
        .collect();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_proto::set::Chunk;

    fn item(i: usize, flavour: &str) -> serde_json::Value {
        json!({"id": i, "flavour": flavour, "pad": "x".repeat(1000)})
    }

    fn base(n: usize) -> ItemSet {
        let mut set = ItemSet::new();
        for i in 0..n {
            set.insert_value(&format!("tables/t{i:05}"), &item(i, "v1"))
                .expect("valid");
        }
        set
    }

    /// What the diff must find, computed the slow way: item by item.
    fn naive(local: &ItemSet, active: &ItemSet) -> Diff {
        let mut d = Diff::default();
        for (k, v) in local.iter() {
            match active.get(k) {
                Some(old) if old == v => d.unchanged += 1,
                Some(_) => d.changed.push(k.clone()),
                None => d.added.push(k.clone()),
            }
        }
        d.removed = active
            .iter()
            .filter(|(k, _)| !local.contains_key(k))
            .map(|(k, _)| k.clone())
            .collect();
        d
    }

    /// Runs the diff as the plan command does: fetches only the active-only chunks.
    fn diff_via_chunks(local: &ItemSet, active: &ItemSet) -> (Diff, usize, usize) {
        let (local_manifest, _) = local.to_chunks();
        let (active_manifest, active_chunks) = active.to_chunks();
        let wanted = chunks_to_fetch(&local_manifest, &active_manifest);
        let by_hash: HashMap<&str, &Chunk> =
            active_chunks.iter().map(|c| (c.hash.as_str(), c)).collect();
        let fetched = wanted
            .iter()
            .map(|h| (h.clone(), by_hash[h.as_str()].data.clone()));
        let active_only = decode_fetched(&active_manifest, &wanted, fetched).expect("decodes");
        let d = diff(
            &local_manifest,
            local,
            Some((&active_manifest, &active_only)),
        );
        (d, wanted.len(), active_manifest.chunks.len())
    }

    #[test]
    fn identical_sets_fetch_nothing() {
        let set = base(500);
        let (d, fetched, _) = diff_via_chunks(&set, &set);
        assert!(d.is_empty());
        assert_eq!(d.unchanged, 500);
        assert_eq!(fetched, 0);
    }

    #[test]
    fn nothing_active_means_everything_is_added() {
        let set = base(10);
        let (manifest, _) = set.to_chunks();
        let d = diff(&manifest, &set, None);
        assert_eq!(d.added.len(), 10);
        assert_eq!(d.unchanged, 0);
        assert!(d.changed.is_empty() && d.removed.is_empty());
    }

    #[test]
    fn changes_across_many_chunks_are_found_exactly() {
        let active = base(3_000);
        let mut local = ItemSet::new();
        let mut expect_changed = Vec::new();
        let mut expect_removed = Vec::new();
        for i in 0..3_000 {
            let key = format!("tables/t{i:05}");
            if i % 397 == 5 {
                expect_removed.push(key);
                continue;
            }
            let flavour = if i % 211 == 7 { "v2" } else { "v1" };
            if flavour == "v2" {
                expect_changed.push(key.clone());
            }
            local.insert_value(&key, &item(i, flavour)).expect("valid");
        }
        // Added keys in the middle of existing chunks, at the start and at the end.
        let expect_added: Vec<String> = [
            "tables/a-first",
            "tables/t01500a",
            "tables/t02222x",
            "zzz/last",
        ]
        .map(String::from)
        .to_vec();
        for key in &expect_added {
            local
                .insert_value(key, &json!({"new": key}))
                .expect("valid");
        }

        let (d, fetched, total) = diff_via_chunks(&local, &active);
        assert!(total > 20, "want many chunks, got {total}");
        assert!(fetched < total / 2, "fetched {fetched} of {total} chunks");
        assert_eq!(d, naive(&local, &active));
        assert_eq!(d.added, expect_added);
        assert_eq!(d.changed, expect_changed);
        assert_eq!(d.removed, expect_removed);
        let expected_unchanged = 3_000 - expect_changed.len() as u64 - expect_removed.len() as u64;
        assert_eq!(d.unchanged, expected_unchanged);
    }

    #[test]
    fn a_whole_new_content_is_all_changed() {
        let active = base(2_000);
        let mut local = ItemSet::new();
        for i in 0..2_000 {
            local
                .insert_value(&format!("tables/t{i:05}"), &item(i, "v2"))
                .expect("valid");
        }
        local
            .insert_value("tables/t99999", &item(99_999, "v2"))
            .expect("valid");
        let (d, _, _) = diff_via_chunks(&local, &active);
        assert_eq!(d.changed.len(), 2_000);
        assert_eq!(d.added, ["tables/t99999"]);
        assert!(d.removed.is_empty());
        assert_eq!(d.unchanged, 0);
    }

    #[test]
    fn removing_most_items_is_found() {
        let active = base(2_000);
        let mut local = ItemSet::new();
        local
            .insert_value("tables/t00010", &item(10, "v1"))
            .expect("valid");
        let (d, _, _) = diff_via_chunks(&local, &active);
        assert_eq!(d, naive(&local, &active));
        assert_eq!(d.removed.len(), 1_999);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn fetched_chunks_are_checked() {
        let local = base(5);
        let active = base(300);
        let (local_manifest, _) = local.to_chunks();
        let (active_manifest, chunks) = active.to_chunks();
        let wanted = chunks_to_fetch(&local_manifest, &active_manifest);
        assert!(!wanted.is_empty());

        let none = decode_fetched(&active_manifest, &wanted, Vec::new());
        assert!(none.expect_err("missing").contains("missing"));

        let mut tampered: Vec<_> = chunks
            .iter()
            .filter(|c| wanted.contains(&c.hash))
            .map(|c| (c.hash.clone(), c.data.clone()))
            .collect();
        let last = tampered[0].1.len() - 1;
        tampered[0].1[last] ^= 1;
        assert!(decode_fetched(&active_manifest, &wanted, tampered).is_err());

        let stranger = vec![("00".repeat(32), b"SBC1".to_vec())];
        assert!(decode_fetched(&active_manifest, &wanted, stranger).is_err());
    }
}
