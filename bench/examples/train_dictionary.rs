//! Trains the zstd dictionary that change sets are compressed with
//! (`schema/dict/change-set-v2.zdict`, see `crvs_schema::wire`).
//!
//! ```text
//! cargo run --release -p crvs-bench --example train_dictionary
//! ```
//!
//! The samples are change-set bodies of one record each, built the way the
//! tablet builds them (the normalised registration, three workflow steps,
//! the document chunk), from births 3000 to 6999 of the *synthetic*
//! benchmark set; the wire benchmark measures births 0 to 999, so it never
//! sees its own training data. Never train on real registrations: the
//! dictionary ships inside every tablet and server binary, and fragments
//! of its samples are in it.
//!
//! Deterministic: the same data gives the same dictionary (ids and hashes
//! are derived from the sample's index, not drawn).

use automerge::ActorId;
use crvs_schema::record::{self, RecordKind};
use crvs_schema::wire::{ChangeSet, RecordChanges};
use crvs_schema::workflow::{Action, Transition};
use crvs_schema::{BirthRegistration, Date};
use sha2::{Digest, Sha256};

const DICTIONARY_BYTES: usize = 64 << 10;

fn derived<const N: usize>(label: &str, i: usize) -> [u8; N] {
    let d = Sha256::digest(format!("{label}/{i}"));
    d[..N].try_into().expect("N <= 32")
}

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("the synthetic benchmark set (../shared/bench)");
    let today = Date::new(2030, 1, 1).expect("date");
    let actor = ActorId::from(derived::<16>("actor", 0));
    let device = uuid::Uuid::from_bytes(derived::<16>("device", 0)).to_string();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate().skip(3000).take(4000) {
        let Ok(reg) = BirthRegistration::from_json_str(line, today) else {
            continue;
        };
        let at = 1_764_000_000_000 + (i as i64) * 397_000;
        let step = |action, by: &str, at_ms| Transition {
            action,
            by: by.into(),
            at_ms,
            device: device.clone(),
            reason: None,
            notification: None,
            code: None,
        };
        let mut doc = record::new_record(
            actor.clone(),
            RecordKind::Birth,
            "171003",
            &reg.to_json_value(),
            &step(Action::Submit, "clerk-01", at),
        )
        .expect("record");
        doc.commit();
        record::append_transition(&mut doc, &step(Action::Verify, "clerk-02", at + 61_000)).expect("verify");
        doc.commit();
        record::append_transition(&mut doc, &step(Action::Approve, "registrar-01", at + 125_000))
            .expect("approve");
        doc.commit();
        let mut record_id = derived::<16>("record", i);
        // UUIDv7: the first 48 bits are the time in ms.
        record_id[..6].copy_from_slice(&(at as u64).to_be_bytes()[2..]);
        let body = ChangeSet {
            prev_hash: derived::<32>("prev", i),
            device_clock_ms: at + 130_000,
            records: vec![RecordChanges {
                record_id,
                changes: vec![doc.save_nocompress()],
            }],
        };
        samples.push(bincode::encode_to_vec(&body, bincode::config::standard()).expect("encode"));
    }
    let dict = zstd::dict::from_samples(&samples, DICTIONARY_BYTES).expect("training");
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/dict/change-set-v2.zdict");
    std::fs::create_dir_all(std::path::Path::new(out).parent().expect("parent")).expect("dir");
    std::fs::write(out, &dict).expect("write");
    println!(
        "{}",
        serde_json::json!({"samples": samples.len(), "dictionary_bytes": dict.len(), "written": "schema/dict/change-set-v2.zdict"})
    );
}
