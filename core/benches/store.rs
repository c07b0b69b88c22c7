//! What the tablet store's tamper evidence costs a registrar: births
//! registered one by one (one transaction each, as the CLI does), then the
//! whole-store reads that verify every row's MAC and the keyed sum.
//!
//! ```text
//! cargo bench -p crvs-core --bench store          # 2,000 births
//! BENCH_RECORDS=10000 cargo bench -p crvs-core --bench store
//! ```
//! Prints one JSON object:
//! * `register_ms_per_record`: `register_birth`, including the triggers
//!   that MAC the new row and update the sum;
//! * `approve_ms_per_record`: `verify` then `approve` (each checks the
//!   row's MAC before the write and MACs it again);
//! * `verify_all_ms`: `integrity::tampered_rows` over the whole store
//!   (what `list` and `sync` add);
//! * `list_ms`, `check_ms`: the whole commands (`check` also decrypts and
//!   reads every document, as the sync's scan for unsent work does).
//!
//! Births are from `../shared/bench/births-10000.jsonl`, those dated
//! after today are skipped and counted (`skipped_future`), since the
//! store checks dates against the real clock.

use std::time::Instant;

use crvs_core::crypto::{DataKey, KdfParams, aad};
use crvs_core::{Registrar, integrity, store};
use serde_json::json;

fn main() {
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("the shared bench births");
    let dir = tempfile::tempdir().expect("temp dir");
    let pass = "correct horse battery staple".into();
    let r =
        Registrar::init_with_kdf(dir.path(), &pass, "171003", KdfParams::INSECURE_FOR_TESTS).expect("init");

    let mut ids = Vec::new();
    let mut skipped_future = 0;
    let start = Instant::now();
    for line in text.lines().cycle().take(n * 2) {
        if ids.len() == n {
            break;
        }
        match r.register_birth(line, "clerk-1") {
            Ok(id) => ids.push(id),
            Err(crvs_core::Error::InvalidRecord(_)) => skipped_future += 1,
            Err(e) => panic!("register: {e}"),
        }
    }
    let register = start.elapsed().as_secs_f64() * 1000.0 / ids.len() as f64;

    let start = Instant::now();
    for id in &ids {
        r.verify(id, "clerk-2").expect("verify");
        r.approve(id, "registrar-1").expect("approve");
    }
    let approve = start.elapsed().as_secs_f64() * 1000.0 / ids.len() as f64;

    let start = Instant::now();
    let listed = r.list().expect("list").len();
    let list_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(listed, ids.len());

    let start = Instant::now();
    r.check().expect("check");
    let check_ms = start.elapsed().as_secs_f64() * 1000.0;

    let conn = store::open(dir.path(), false).expect("open");
    let wrapped = store::read_wrapped_key(&conn).expect("wrapped key");
    let key = DataKey::unwrap(&pass, &wrapped, &aad("meta", b"", "wrapped_data_key")).expect("unwrap");
    integrity::register(&conn, &key).expect("register functions");
    let start = Instant::now();
    let bad = integrity::tampered_rows(&conn, integrity::Scope::All).expect("verify");
    let verify_all_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(bad.is_empty(), "{bad:?}");

    let db_bytes = std::fs::metadata(dir.path().join("crvs.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{}",
        json!({
            "bench": "tablet_store",
            "records": ids.len(),
            "skipped_future": skipped_future,
            "register_ms_per_record": (register * 1000.0).round() / 1000.0,
            "approve_ms_per_record": (approve * 1000.0).round() / 1000.0,
            "verify_all_ms": verify_all_ms.round(),
            "list_ms": list_ms.round(),
            "check_ms": check_ms.round(),
            "db_bytes": db_bytes,
        })
    );
}
