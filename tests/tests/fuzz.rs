//! Fuzz targets (issue 5): every reader of untrusted bytes is fed mutated valid inputs and
//! random bytes, and must answer with an error, never a panic. Each target is a property test
//! that runs rounds of 256 cases: one round in `make test`, and rounds until
//! `SWITCHBOARD_FUZZ_SECONDS` have passed when that is set (`make fuzz` gives each target 600 s
//! and prints how many cases each ran).
//!
//! Mutations keep the integrity hashes right where a format has them (a disk copy's trailer,
//! a snapshot's trailer, a chunk's name), so that the parsing behind the hash is what gets
//! exercised, not only the hash check in front of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sha2::{Digest, Sha256};
use switchboard_proto::set::{SetVerifier, decode_chunk, sha256_hex};
use switchboard_proto::{
    Approval, AuditHead, AuditRecord, HealthRecord, HistoryEntry, ItemSet, Manifest, ManifestHead,
    Policy, Rollout, Routing, Slot, SlotRef, SlotVersion,
};

const CASES_PER_ROUND: u32 = 256;

/// Runs `test` on values of `strategy`: one round, or rounds until `SWITCHBOARD_FUZZ_SECONDS`
/// are over. A panic inside `test` fails the target with the input that caused it.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds: u64 = std::env::var("SWITCHBOARD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let config = Config {
        cases: CASES_PER_ROUND,
        failure_persistence: None,
        ..Config::default()
    };
    let started = Instant::now();
    let mut rounds = 0u64;
    loop {
        // A fresh runner per round, with a fresh random seed: a runner that has passed its
        // cases once runs none the next time.
        let mut runner = TestRunner::new(config.clone());
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("fuzz target {name} failed: {failure}");
        }
        rounds += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    println!(
        "fuzz target {name}: {} cases in {:.1?}, no panic",
        rounds * u64::from(CASES_PER_ROUND),
        started.elapsed()
    );
}

/// What is done to a valid input: bytes overwritten, a range removed, bytes inserted, and a cut.
#[derive(Clone, Debug)]
struct Mutation {
    writes: Vec<(usize, u8)>,
    removal: Option<(usize, usize)>,
    insertion: Option<(usize, Vec<u8>)>,
    cut: Option<usize>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        proptest::option::of((any::<usize>(), 0usize..64)),
        proptest::option::of((
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16),
        )),
        proptest::option::weighted(0.2, any::<usize>()),
    )
        .prop_map(|(writes, removal, insertion, cut)| Mutation {
            writes,
            removal,
            insertion,
            cut,
        })
}

impl Mutation {
    fn apply(&self, valid: &[u8]) -> Vec<u8> {
        let mut data = valid.to_vec();
        if data.is_empty() {
            return data;
        }
        for (at, byte) in &self.writes {
            let at = at % data.len();
            data[at] = *byte;
        }
        if let Some((at, len)) = self.removal
            && !data.is_empty()
        {
            let at = at % data.len();
            let end = (at + len).min(data.len());
            data.drain(at..end);
        }
        if let Some((at, bytes)) = &self.insertion {
            let at = at % (data.len() + 1);
            data.splice(at..at, bytes.iter().copied());
        }
        if let Some(cut) = self.cut {
            data.truncate(cut % (data.len() + 1));
        }
        data
    }
}

/// A mutation of a valid input, or random bytes.
fn input(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => mutation().prop_map(move |m| m.apply(&valid)),
        1 => proptest::collection::vec(any::<u8>(), 0..2048),
    ]
}

fn sample_set(items: usize) -> ItemSet {
    let mut set = ItemSet::new();
    for i in 0..items {
        let value = serde_json::json!({"id": i, "name": format!("table {i}"), "tags": ["a", "b"], "pad": "x".repeat(i % 300)});
        if set
            .insert_value(&format!("tables/t{i:05}"), &value)
            .is_err()
        {
            unreachable!("the sample keys and values are valid");
        }
    }
    set
}

#[test]
fn fuzz_manifest_json() {
    let (manifest, _) = sample_set(1500).to_chunks();
    let valid = manifest.to_canonical_json();
    fuzz("manifest", input(valid), |data| {
        if let Ok(manifest) = Manifest::from_json(&data) {
            // Whatever parses is usable: its hash and its chunk sizes can be taken.
            let _ = manifest.hash();
            let _: u64 = manifest.chunks.iter().map(|c| c.stored_len()).sum();
        }
        Ok(())
    });
}

#[test]
fn fuzz_manifest_head_and_pages() {
    let (manifest, chunks) = sample_set(1500).to_chunks();
    let (head, pages) = manifest.to_pages();
    fuzz("manifest head", input(head.to_canonical_json()), |data| {
        if let Ok(parsed) = ManifestHead::from_json(&data) {
            let _ = parsed.hash();
            // A head is trusted through two guards: its pages must assemble (they pin the
            // chunk list and the counts), and the chunks must verify against the result (the
            // set's checksum, which no page pins). Only the true head passes both; a head that
            // differs only in its checksum assembles, and the verification catches it.
            if let Ok(assembled) = parsed.assemble(pages.iter().map(|p| p.data.as_slice())) {
                prop_assert_eq!(&assembled.chunks, &manifest.chunks);
                let mut verifier = SetVerifier::verify_only(&assembled);
                let verified = chunks
                    .iter()
                    .try_for_each(|chunk| verifier.add_chunk(&chunk.data))
                    .and_then(|()| verifier.finish());
                if verified.is_ok() {
                    prop_assert_eq!(&parsed, &head);
                }
            }
        }
        Ok(())
    });
    fuzz("manifest page", input(pages[0].data.clone()), |data| {
        let mut all: Vec<&[u8]> = pages.iter().map(|p| p.data.as_slice()).collect();
        all[0] = &data;
        if let Ok(assembled) = head.assemble(all) {
            prop_assert_eq!(&assembled, &manifest);
        }
        Ok(())
    });
}

#[test]
fn fuzz_chunks_and_set_verification() {
    let (manifest, chunks) = sample_set(400).to_chunks();
    let valid = chunks[0].data.clone();
    fuzz("chunk", input(valid), |data| {
        // Named by its own hash, so that the decoder behind the hash check runs.
        let _ = decode_chunk(&sha256_hex(&data), &data);
        let mut verifier = SetVerifier::verify_only(&manifest);
        if verifier.add_chunk(&data).is_ok() {
            prop_assert_eq!(data, chunks[0].data.clone());
        }
        Ok(())
    });
}

#[test]
fn fuzz_records_read_from_etcd() {
    let slot_version = SlotVersion {
        slot: Slot::Blue,
        version: "abcdef0123456789".into(),
        manifest: "ab".repeat(32),
    };
    let routing = Routing {
        epoch: 7,
        active: slot_version.clone(),
        canary: None,
        previous: Some(slot_version),
        bake_until_ms: Some(1),
        prepare: None,
        activate_at_ms: None,
        acknowledge_within_ms: Some(5_000),
        action: "flip".into(),
        by: "alice".into(),
        reason: "because".into(),
        at_ms: 1,
    };
    let policy = Policy {
        gates: serde_json::from_value(serde_json::json!([
            {"name": "m", "kind": "etcd", "key": "/a", "op": "==", "value": "done"},
            {"name": "s", "kind": "item", "key": "schema/v", "pointer": "/v", "op": ">=", "value": 192},
            {"name": "h", "kind": "http", "url": "http://x/ready"}
        ]))
        .unwrap_or_default(),
        ..Policy::default()
    };
    let record = AuditRecord {
        seq: 1,
        at_ms: 1,
        namespace: "catalog".into(),
        actor: "alice".into(),
        action: "flip".into(),
        reason: "r".into(),
        detail: serde_json::json!({"epoch": 1}),
        prev_hash: String::new(),
        hash: String::new(),
    };
    let record = AuditRecord {
        hash: record.compute_hash(),
        ..record
    };
    let samples: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&routing).unwrap_or_default(),
        serde_json::to_vec(&policy).unwrap_or_default(),
        serde_json::to_vec(&record).unwrap_or_default(),
    ];
    let strategy = (0..samples.len()).prop_flat_map(move |i| input(samples[i].clone()));
    fuzz("etcd records", strategy, |data| {
        let _ = serde_json::from_slice::<Routing>(&data);
        let _ = serde_json::from_slice::<SlotRef>(&data);
        let _ = serde_json::from_slice::<HealthRecord>(&data);
        let _ = serde_json::from_slice::<Rollout>(&data);
        let _ = serde_json::from_slice::<Approval>(&data);
        let _ = serde_json::from_slice::<HistoryEntry>(&data);
        let _ = serde_json::from_slice::<AuditHead>(&data);
        if let Ok(policy) = serde_json::from_slice::<Policy>(&data) {
            let _ = policy.validate();
            let _ = switchboard_proto::gate::validate_gates(&policy.gates, "/switchboard");
            for gate in &policy.gates {
                let _ = (gate.wanted(), gate.target());
            }
        }
        // An audit trail of one record, as the coordinator verifies it.
        let raw = vec![(
            "/p/ns/catalog/audit/00000000000000000001".to_string(),
            data.clone(),
        )];
        let head = AuditHead {
            seq: 1,
            hash: "00".repeat(32),
        };
        let _ = switchboard_coordinator::audit::verify_chain(&raw, Some(&head));
        Ok(())
    });
}

#[test]
fn fuzz_sidecar_disk_copy() {
    let set = sample_set(600);
    let (manifest, _) = set.to_chunks();
    let loaded = Arc::new(switchboard_sidecar::snapshot::LoadedSet {
        manifest_hash: manifest.hash(),
        version: manifest.version.clone(),
        checksum: manifest.checksum.clone(),
        items: set,
    });
    let snapshot = switchboard_sidecar::snapshot::Snapshot {
        routing: Routing {
            epoch: 3,
            active: SlotVersion {
                slot: Slot::Green,
                version: manifest.version.clone(),
                manifest: manifest.hash(),
            },
            canary: None,
            previous: None,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: "flip".into(),
            by: "alice".into(),
            reason: String::new(),
            at_ms: 1,
        },
        active: loaded,
        canary: None,
        previous: None,
    };
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir");
    };
    let cache = switchboard_sidecar::cache::DiskCache::new(dir.path().to_path_buf());
    if let Err(error) = cache.write("catalog", &snapshot) {
        panic!("cannot write the sample disk copy: {error}");
    }
    let Ok(valid) = std::fs::read(cache.path("catalog")) else {
        panic!("cannot read the sample disk copy back");
    };
    assert!(switchboard_sidecar::cache::decode("catalog", &valid).is_ok());
    fuzz("sidecar disk copy", input(valid), |data| {
        // With its trailer made right again, so that the structure behind it is parsed.
        let mut rehashed = data.clone();
        if rehashed.len() > 32 {
            let body = rehashed.len() - 32;
            let digest = Sha256::digest(&rehashed[..body]);
            rehashed[body..].copy_from_slice(&digest);
        }
        let _ = switchboard_sidecar::cache::decode("catalog", &data);
        let _ = switchboard_sidecar::cache::decode("catalog", &rehashed);
        Ok(())
    });
}

#[test]
fn fuzz_snapshot_files() {
    let set = sample_set(1200);
    let (manifest, chunks) = set.to_chunks();
    let header = sbctl::snapshot::SnapshotHeader::of("catalog", &manifest, 0);
    let written = sbctl::snapshot::SnapshotWriter::new(Vec::new(), &header, &manifest).and_then(
        |mut writer| {
            for chunk in &chunks {
                writer.add_chunk(&chunk.hash, &chunk.data)?;
            }
            writer.finish()
        },
    );
    let Ok((valid, _, _)) = written else {
        panic!("cannot write the sample snapshot");
    };
    assert!(sbctl::snapshot::parse(&valid).is_ok());
    fuzz("snapshot file", input(valid), |data| {
        let _ = sbctl::snapshot::parse(&data);
        // With the trailer made right again.
        if let Some(at) = data
            .strip_suffix(b"\n")
            .and_then(|d| d.iter().rposition(|b| *b == b'\n'))
        {
            let mut rehashed = data[..=at].to_vec();
            rehashed.extend(format!("sha256 {}\n", sha256_hex(&rehashed)).as_bytes());
            let _ = sbctl::snapshot::parse(&rehashed);
        }
        Ok(())
    });
}

#[test]
fn fuzz_auth_files_and_source_documents() {
    let auth = format!(
        "users:\n  - {{name: \"alice\", roles: [operator, approver], token_sha256: \"{}\"}}\n  - name: bob\n    roles: viewer\n    token_sha256: {}\n",
        "ab".repeat(32),
        "cd".repeat(32)
    );
    let document = "name: orders\ncolumns:\n  - {name: id, type: int64}\n  - name: total\n    type: decimal\n    tags: [pii, \"${region}\"]\nowner: &o team-a\nreviewer: *o\n";
    let samples = [auth.into_bytes(), document.as_bytes().to_vec()];
    let strategy = (0..samples.len()).prop_flat_map(move |i| input(samples[i].clone()));
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir");
    };
    let yaml = dir.path().join("item.yaml");
    let json = dir.path().join("item.json");
    fuzz("auth files and source documents", strategy, |data| {
        let text = String::from_utf8_lossy(&data);
        let _ = switchboard_coordinator::auth::Users::parse(&text);
        for path in [&yaml, &json] {
            std::fs::write(path, &data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = sbctl::source::read_document(dir.path(), path);
        }
        Ok(())
    });
}
