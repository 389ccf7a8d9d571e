//! The unit tests of `set`.

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// [`sample`] with the first item's name changed, its length kept.
fn sample_with_the_first_item_changed(n: usize) -> ItemSet {
    let mut set = sample(n);
    let value = json!({"id": 0, "name": "table-X", "pad": "x".repeat(900)});
    set.insert_value("tables/t00000", &value)
        .expect("valid item");
    set
}

fn sample(n: usize) -> ItemSet {
    let mut set = ItemSet::new();
    for i in 0..n {
        let value = json!({"id": i, "name": format!("table-{i}"), "pad": "x".repeat(900)});
        set.insert_value(&format!("tables/t{i:05}"), &value)
            .expect("valid item");
    }
    set
}

#[test]
fn canonical_json_sorts_keys_at_every_depth() {
    let value = json!({"b": 1, "a": {"z": [true, null], "y": "s"}});
    assert_eq!(
        canonical_json(&value),
        br#"{"a":{"y":"s","z":[true,null]},"b":1}"#
    );
}

/// The canonical bytes are what versions and checksums are made of: they must never change.
#[test]
fn canonical_json_bytes_are_pinned_for_escapes_and_numbers() {
    let value = json!({
        "quote\"and\\slash": "line\nbreak \u{1} é 😀",
        "numbers": [0, -1, 1.5, 1e300, 18446744073709551615u64, -9223372036854775808i64],
        "empty": {}, "nothing": [], "flag": false
    });
    assert_eq!(
        String::from_utf8(canonical_json(&value)).expect("utf-8"),
        r#"{"empty":{},"flag":false,"nothing":[],"numbers":[0,-1,1.5,1e+300,18446744073709551615,-9223372036854775808],"quote\"and\\slash":"line\nbreak \u0001 é 😀"}"#
    );
}

#[test]
fn keys_follow_the_contract() {
    assert!(validate_key("tables/sales/orders").is_ok());
    assert!(validate_key("a.b_c-D/9").is_ok());
    for bad in ["", "a b", "a//b", "/a", "a/", "a/../b", "ä", "a:b"] {
        assert!(validate_key(bad).is_err(), "{bad:?} accepted");
    }
    assert!(validate_key(&"k".repeat(513)).is_err());
    assert!(validate_key(&"k".repeat(512)).is_ok());
}

#[test]
fn oversized_items_are_refused() {
    let mut set = ItemSet::new();
    let big = json!("x".repeat(MAX_ITEM_BYTES));
    let err = set.insert_value("big", &big).expect_err("over the limit");
    assert!(matches!(err, ContractError::ItemTooLarge { .. }), "{err}");
}

#[test]
fn chunks_round_trip_and_verify() {
    let set = sample(1_000);
    let (manifest, chunks) = set.to_chunks();
    assert!(
        chunks.len() > 4,
        "1 MB should give several chunks, got {}",
        chunks.len()
    );
    assert_eq!(manifest.item_count, 1_000);
    let back =
        assemble_verified(&manifest, chunks.iter().map(|c| c.data.as_slice())).expect("verifies");
    assert_eq!(back, set);
    let parsed = Manifest::from_json(&manifest.to_canonical_json()).expect("parses");
    assert_eq!(parsed, manifest);
}

#[test]
fn same_content_gives_same_version_and_manifest() {
    let (a, _) = sample(300).to_chunks();
    let (b, _) = sample(300).to_chunks();
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.version, b.version);
}

#[test]
fn a_small_change_touches_few_chunks() {
    let before = sample(2_000);
    let mut after = before.clone();
    after
        .insert_value("tables/t01000", &json!({"changed": true}))
        .expect("valid");
    after
        .insert_value("tables/t01000a", &json!({"new": true}))
        .expect("valid");
    let (m1, _) = before.to_chunks();
    let (m2, _) = after.to_chunks();
    let old: std::collections::HashSet<_> = m1.chunks.iter().map(|c| &c.hash).collect();
    let new_chunks = m2.chunks.iter().filter(|c| !old.contains(&c.hash)).count();
    assert!(new_chunks <= 2, "{new_chunks} chunks changed for one item");
}

#[test]
fn tampering_is_detected() {
    let (manifest, chunks) = sample(200).to_chunks();
    let mut data: Vec<Vec<u8>> = chunks.iter().map(|c| c.data.clone()).collect();
    let last = data[0].len() - 2;
    data[0][last] ^= 1;
    let err = assemble_verified(&manifest, data.iter().map(Vec::as_slice)).expect_err("bad");
    assert!(matches!(err, ContractError::CorruptChunk { .. }), "{err}");

    let mut wrong = manifest.clone();
    wrong.item_count += 1;
    let chunks_iter = chunks.iter().map(|c| c.data.as_slice());
    assert!(assemble_verified(&wrong, chunks_iter).is_err());

    let truncated = &chunks[..chunks.len() - 1];
    assert!(assemble_verified(&manifest, truncated.iter().map(|c| c.data.as_slice())).is_err());
}

/// A chunk is checked against the hash its manifest names: another chunk that decodes as
/// well (same framing, same number of items) is refused under that hash.
#[test]
fn a_chunk_is_checked_against_its_hash() {
    let (_, ours) = sample(3).to_chunks();
    let (_, theirs) = sample_with_the_first_item_changed(3).to_chunks();
    assert_ne!(ours[0].hash, theirs[0].hash);
    assert!(decode_chunk(&ours[0].hash, &ours[0].data).is_ok());
    assert!(decode_chunk(&theirs[0].hash, &theirs[0].data).is_ok());
    let error = decode_chunk(&ours[0].hash, &theirs[0].data).expect_err("another chunk");
    assert!(
        matches!(error, ContractError::CorruptChunk { .. }),
        "{error}"
    );
}

/// The set's checksum is checked over the whole set: a manifest that lists one set's chunks
/// under another set's checksum (and so its version) is refused, though every chunk and
/// every count verifies.
#[test]
fn chunks_under_another_sets_checksum_are_refused() {
    let (manifest, chunks) = sample(200).to_chunks();
    let (other_manifest, _) = sample_with_the_first_item_changed(200).to_chunks();
    assert_ne!(other_manifest.checksum, manifest.checksum);
    let claimed = Manifest {
        checksum: other_manifest.checksum.clone(),
        version: other_manifest.version.clone(),
        ..manifest.clone()
    };
    let data = chunks.iter().map(|c| c.data.as_slice());
    let error = assemble_verified(&claimed, data).expect_err("another set's checksum");
    assert!(error.to_string().contains("checksum"), "{error}");
}

#[test]
fn read_batches_respect_both_limits() {
    assert!(read_batches(&[]).is_empty());
    let small = vec![1_000; 250];
    assert_eq!(read_batches(&small), vec![0..100, 100..200, 200..250]);
    let mib = 1024 * 1024;
    assert_eq!(read_batches(&[mib, mib, mib, mib]), vec![0..3, 3..4]);
    // An oversized chunk is read on its own rather than never.
    assert_eq!(
        read_batches(&[5 * mib, 10, u64::MAX]),
        vec![0..1, 1..2, 2..3]
    );
}

#[test]
fn manifests_with_impossible_numbers_are_refused() {
    let (manifest, _) = sample(50).to_chunks();
    let mut huge = manifest.clone();
    huge.chunks[0].items = u64::MAX / 2 + 1;
    huge.item_count = huge
        .chunks
        .iter()
        .fold(0u64, |a, c| a.wrapping_add(c.items));
    assert!(Manifest::from_json(&huge.to_canonical_json()).is_err());
    let mut lying = manifest.clone();
    lying.chunks[0].bytes = u64::MAX;
    assert!(Manifest::from_json(&lying.to_canonical_json()).is_err());
    let mut off_by_one = manifest;
    off_by_one.bytes += 1;
    assert!(Manifest::from_json(&off_by_one.to_canonical_json()).is_err());
}

#[test]
fn non_json_values_do_not_verify() {
    let mut builder = ChunkBuilder::default();
    builder.push("a", b"{not json");
    let chunk = builder.finish();
    let set_checksum = hex::encode(Sha256::digest(&chunk.data[CHUNK_MAGIC.len()..]));
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        version: version_from_checksum(&set_checksum),
        item_count: 1,
        bytes: chunk.item_bytes,
        checksum: set_checksum,
        chunks: vec![chunk.to_ref()],
    };
    let err = assemble_verified(&manifest, [chunk.data.as_slice()]).expect_err("not JSON");
    assert!(err.to_string().contains("not valid JSON"), "{err}");
}

#[test]
fn verify_only_checks_without_keeping_items() {
    let (manifest, chunks) = sample(300).to_chunks();
    let mut verifier = SetVerifier::verify_only(&manifest);
    for chunk in &chunks {
        verifier.add_chunk(&chunk.data).expect("verifies");
    }
    assert!(verifier.finish().expect("verifies").is_empty());
}

proptest! {
    #[test]
    fn manifests_with_arbitrary_numbers_never_panic(items in any::<u64>(), bytes in any::<u64>(), count in any::<u64>(), total in any::<u64>()) {
        let (mut manifest, _) = sample(3).to_chunks();
        manifest.chunks[0].items = items;
        manifest.chunks[0].bytes = bytes;
        manifest.item_count = count;
        manifest.bytes = total;
        if let Ok(parsed) = Manifest::from_json(&manifest.to_canonical_json()) {
            let _ = parsed.chunks.iter().map(ChunkRef::stored_len).sum::<u64>();
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let hash = sha256_hex(&data);
        let _ = decode_chunk(&hash, &data);
        let mut framed = CHUNK_MAGIC.to_vec();
        framed.extend_from_slice(&data);
        let _ = decode_chunk(&sha256_hex(&framed), &framed);
        let _ = Manifest::from_json(&data);
    }
}
