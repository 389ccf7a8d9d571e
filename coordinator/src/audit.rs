//! The hash-chained audit trail (invariant 8): building the record that goes into the same
//! transaction as the change it describes, and verifying a chain read back from etcd.

use switchboard_proto::{AuditHead, AuditRecord, AuditVerification, time::now_ms};

use crate::error::{CoordinatorError, Result};

/// The next record of a chain whose last record is `head`.
pub fn next_record(
    head: &AuditHead,
    namespace: &str,
    actor: &str,
    action: &str,
    reason: &str,
    detail: serde_json::Value,
) -> Result<AuditRecord> {
    let seq = head
        .seq
        .checked_add(1)
        .ok_or_else(|| CoordinatorError::CorruptRecord {
            key: format!("{namespace}/audit-head"),
            reason: "its seq cannot grow any further".into(),
        })?;
    let mut record = AuditRecord {
        seq,
        at_ms: now_ms(),
        namespace: namespace.to_string(),
        actor: actor.to_string(),
        action: action.to_string(),
        reason: reason.to_string(),
        detail,
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    record.hash = record.compute_hash();
    Ok(record)
}

/// Checks a chain given as (key, raw value) pairs in key order, against the head record.
/// Returns the records that parse and the verdict, naming the first record that does not match.
pub fn verify_chain(
    raw: &[(String, Vec<u8>)],
    head: Option<&AuditHead>,
) -> (Vec<AuditRecord>, AuditVerification) {
    let mut records = Vec::new();
    let mut problem: Option<(u64, String)> = None;
    let mut previous_hash = String::new();
    for (index, (key, value)) in raw.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        let record = match serde_json::from_slice::<AuditRecord>(value) {
            Ok(record) => record,
            Err(error) => {
                problem.get_or_insert((expected_seq, format!("{key} does not parse: {error}")));
                continue;
            }
        };
        if problem.is_none() {
            if record.seq != expected_seq {
                problem = Some((expected_seq, format!("{key} carries seq {}", record.seq)));
            } else if record.prev_hash != previous_hash {
                problem = Some((
                    record.seq,
                    "its prev_hash does not match the record before it".into(),
                ));
            } else if record.compute_hash() != record.hash {
                problem = Some((record.seq, "its content does not match its hash".into()));
            }
        }
        previous_hash = record.hash.clone();
        records.push(record);
    }
    if problem.is_none() && head.is_none() && !raw.is_empty() {
        problem = Some((1, "the audit head is missing while records exist".into()));
    }
    if problem.is_none()
        && let Some(head) = head
        && (head.seq != raw.len() as u64 || head.hash != previous_hash)
    {
        problem = Some((
            head.seq.min(raw.len() as u64 + 1),
            format!(
                "the chain holds {} records but its head names record {} (records were removed or replaced)",
                raw.len(),
                head.seq
            ),
        ));
    }
    let verification = AuditVerification {
        intact: problem.is_none(),
        first_bad_seq: problem.as_ref().map(|(seq, _)| *seq),
        problem: problem.map(|(_, p)| p),
    };
    (records, verification)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: usize) -> (Vec<(String, Vec<u8>)>, AuditHead) {
        let mut head = AuditHead::default();
        let mut raw = Vec::new();
        for i in 0..n {
            let record =
                next_record(&head, "ns", "alice", "flip", "why", json!({"i": i})).expect("record");
            head = AuditHead {
                seq: record.seq,
                hash: record.hash.clone(),
            };
            raw.push((
                format!("audit/{}", record.seq),
                serde_json::to_vec(&record).expect("json"),
            ));
        }
        (raw, head)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (raw, head) = chain(5);
        let (records, verdict) = verify_chain(&raw, Some(&head));
        assert_eq!(records.len(), 5);
        assert!(verdict.intact, "{verdict:?}");
    }

    #[test]
    fn one_changed_byte_names_its_record() {
        let (mut raw, head) = chain(5);
        let text = String::from_utf8(raw[2].1.clone())
            .expect("utf8")
            .replace("alice", "alicf");
        raw[2].1 = text.into_bytes();
        let (_, verdict) = verify_chain(&raw, Some(&head));
        assert!(!verdict.intact);
        assert_eq!(verdict.first_bad_seq, Some(3));
    }

    /// A forger who rewrites a record and computes its hash again is caught by the record
    /// after it, whose `prev_hash` still names the original.
    #[test]
    fn a_rewritten_record_with_its_hash_recomputed_is_caught_by_the_next() {
        let (mut raw, head) = chain(4);
        let mut record: AuditRecord = serde_json::from_slice(&raw[1].1).expect("record");
        record.actor = "mallory".into();
        record.hash = record.compute_hash();
        raw[1].1 = serde_json::to_vec(&record).expect("json");
        let (_, verdict) = verify_chain(&raw, Some(&head));
        assert_eq!(verdict.first_bad_seq, Some(3), "{verdict:?}");
    }

    /// A record removed from the middle is named by its number: the record in its place
    /// carries the next one.
    #[test]
    fn a_removed_record_is_named_by_its_number() {
        let (mut raw, head) = chain(4);
        raw.remove(1);
        let (_, verdict) = verify_chain(&raw, Some(&head));
        assert_eq!(verdict.first_bad_seq, Some(2), "{verdict:?}");
    }

    #[test]
    fn a_missing_head_is_caught() {
        let (raw, _) = chain(2);
        let (_, verdict) = verify_chain(&raw, None);
        assert!(!verdict.intact);
    }

    #[test]
    fn a_removed_last_record_is_caught_by_the_head() {
        let (mut raw, head) = chain(4);
        raw.pop();
        let (_, verdict) = verify_chain(&raw, Some(&head));
        assert!(!verdict.intact);
    }
}
