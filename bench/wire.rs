//! Wire bytes per new birth registration, batched 1, 10 and 100 records per
//! signed change set, beside the zstd-compressed JSON of the same records.
//!
//! `cargo bench -p crvs-bench --bench wire` prints one JSON object.

use automerge::ActorId;
use crvs_schema::Date;
use crvs_schema::birth::BirthRegistration;
use crvs_schema::record::{self, RecordKind};
use crvs_schema::wire::{self, ChangeSet, RecordChanges, SignedChangeSet};
use crvs_schema::workflow::{Action, Transition};
use ed25519_dalek::SigningKey;

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let lines: Vec<String> = std::fs::read_to_string(path)
        .expect("bench data")
        .lines()
        .map(String::from)
        .collect();
    // The data set runs to the end of 2026: validate as of the new year.
    let today = Date::parse("2027-01-01").unwrap();
    let key = SigningKey::generate(&mut rand::rng());
    let actor = ActorId::from([7u8; 16]);
    let t = |action, by: &str| Transition {
        action,
        by: by.into(),
        at_ms: 1_764_300_000_000,
        device: "0199d6f1-8b7e-7c3e-9d41-6a1e2b3c4d5e".into(),
        reason: None,
    };
    // Each record as the tablet sends it: created, verified, approved.
    let mut per_record: Vec<(Vec<Vec<u8>>, Vec<u8>)> = Vec::new();
    for l in &lines[..2000] {
        let reg = BirthRegistration::from_json_str(l, today).expect("valid");
        let json = reg.to_json_value();
        let mut doc = record::new_record(
            actor.clone(),
            RecordKind::Birth,
            "171003",
            &json,
            &t(Action::Submit, "clerk-01"),
        )
        .unwrap();
        doc.commit();
        record::append_transition(&mut doc, &t(Action::Verify, "clerk-02")).unwrap();
        doc.commit();
        record::append_transition(&mut doc, &t(Action::Approve, "registrar-01")).unwrap();
        doc.commit();
        let changes: Vec<Vec<u8>> = if std::env::var("DOC").is_ok() {
            vec![doc.save_nocompress()]
        } else {
            doc.get_changes(&[])
                .into_iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect()
        };
        let view = record::read(&doc).unwrap();
        let full = serde_json::json!({"record_id": uuid::Uuid::now_v7().to_string(), "kind": "birth", "office": "171003", "data": json, "transitions": view.transitions});
        per_record.push((
            changes,
            serde_json::to_vec(if std::env::var("FULL").is_ok() {
                &full
            } else {
                &json
            })
            .unwrap(),
        ));
    }
    let mut results = Vec::new();
    for batch in [1usize, 10, 100] {
        let mut wire_total = 0usize;
        let mut json_total = 0usize;
        let mut n = 0usize;
        for (seq, chunk) in per_record.chunks(batch).enumerate() {
            let cs = ChangeSet {
                prev_hash: [0; 32],
                device_clock_ms: 1_764_300_000_000,
                records: chunk
                    .iter()
                    .map(|(c, _)| RecordChanges {
                        record_id: *uuid::Uuid::now_v7().as_bytes(),
                        changes: c.clone(),
                    })
                    .collect(),
            };
            let signed = SignedChangeSet::seal(&key, [1; 16], seq as u64 + 1, &cs).unwrap();
            wire_total += signed.as_bytes().len();
            let mut joined = Vec::new();
            for (_, j) in chunk {
                joined.extend_from_slice(j);
                joined.push(b'\n');
            }
            json_total += zstd::bulk::compress(&joined, wire::CHANGE_SET_ZSTD_LEVEL)
                .unwrap()
                .len();
            n += chunk.len();
        }
        results.push(serde_json::json!({
            "batch": batch,
            "records": n,
            "wire_bytes_per_record": wire_total as f64 / n as f64,
            "zstd_json_bytes_per_record": json_total as f64 / n as f64,
            "ratio": wire_total as f64 / json_total as f64,
        }));
    }
    println!("{}", serde_json::json!({"bench": "wire", "results": results}));
}
