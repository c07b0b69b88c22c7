//! The first sync of a new tablet in a commune that already holds 5,000
//! records (issue 9): the time and the bytes until it holds every record
//! of the office, with its history and its KIdC.
//!
//! Real parts: a real server (`crvs_server::Server`, SQLite in a temporary
//! folder) and real tablet stores (`Registrar`), through a transport that
//! counts every byte of every request and answer body (in process: HTTP
//! and TLS framing are not counted). Setup, not timed: a first tablet
//! registers, verifies and approves the commune's births (the synthetic
//! births dated up to today, as many as it takes to reach 5,000) and syncs
//! them, so every record is registered with a KIdC and a registration
//! number. Timed: a second tablet of the commune enrols and syncs once.
//!
//! `cargo bench -p crvs-bench --bench first_sync` prints one JSON object;
//! `BENCH_RECORDS=N` changes the number of records.

use std::cell::Cell;
use std::time::Instant;

use crvs_core::crypto::KdfParams;
use crvs_core::{Registrar, Transport};
use crvs_schema::wire::{EnrollRequest, EnrollResponse};
use serde_json::json;

struct Counting<'a> {
    server: &'a crvs_server::Server,
    request_bytes: Cell<usize>,
    answer_bytes: Cell<usize>,
    requests: Cell<usize>,
}

impl Transport for Counting<'_> {
    fn enroll(&self, request: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
        crvs_server::admin::enroll(self.server, request)
            .map_err(|e| crvs_core::Error::Protocol(e.to_string()))
    }

    fn sync(&self, sealed_request: &[u8]) -> crvs_core::Result<Vec<u8>> {
        self.requests.set(self.requests.get() + 1);
        self.request_bytes
            .set(self.request_bytes.get() + sealed_request.len());
        let answer = self
            .server
            .handle_sync(sealed_request)
            .map_err(|e| crvs_core::Error::Protocol(e.to_string()))?;
        self.answer_bytes.set(self.answer_bytes.get() + answer.len());
        Ok(answer)
    }
}

fn tablet(dir: &std::path::Path, name: &str) -> Registrar {
    Registrar::init_with_kdf(
        dir.join(name),
        &"a long passphrase the registrar chose".into(),
        "171003",
        KdfParams::INSECURE_FOR_TESTS,
    )
    .expect("store")
}

fn main() {
    let wanted: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("bench data (../shared/bench)");
    // Births dated after today would be refused by the tablet's validation:
    // they are counted apart, and more births are taken instead.
    let today = crvs_schema::Date::today_in_cambodia(crvs_core::registrar::now_ms());
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| crvs_schema::BirthRegistration::from_json_str(l, today).is_ok())
        .take(wanted)
        .collect();
    assert_eq!(lines.len(), wanted, "not enough births dated up to today");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = crvs_server::Server::open(&dir.path().join("server")).expect("server");
    let transport = Counting {
        server: &server,
        request_bytes: Cell::new(0),
        answer_bytes: Cell::new(0),
        requests: Cell::new(0),
    };
    let token = |s: &crvs_server::Server| {
        crvs_server::admin::create_token(s, "171003", 3_600_000)
            .expect("token")
            .token
    };

    // Setup: the commune's first tablet registers everything.
    let setup = Instant::now();
    let first = tablet(dir.path(), "first");
    first
        .enroll_with(&transport, "http://in-process", &token(&server))
        .expect("enrol");
    for chunk in lines.chunks(500) {
        for line in chunk {
            let id = first.register_birth(line, "clerk-01").expect("register");
            first.verify(&id, "clerk-02").expect("verify");
            first.approve(&id, "registrar-01").expect("approve");
        }
        let report = first.sync_with(&transport, &crvs_core::Quiet).expect("sync");
        assert_eq!(
            report.kidcs_received as usize,
            chunk.len(),
            "every code delivered"
        );
    }
    let setup_s = setup.elapsed().as_secs_f64();

    // Timed: a new tablet of the commune enrols and syncs once.
    let second = tablet(dir.path(), "second");
    second
        .enroll_with(&transport, "http://in-process", &token(&server))
        .expect("enrol");
    transport.request_bytes.set(0);
    transport.answer_bytes.set(0);
    transport.requests.set(0);
    let started = Instant::now();
    let report = second.sync_with(&transport, &crvs_core::Quiet).expect("sync");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        report.records_received as usize, wanted,
        "every record of the office arrived"
    );
    assert_eq!(report.kidcs_received as usize, wanted, "with its KIdC");
    let listed = second.list().expect("list");
    assert_eq!(listed.len(), wanted);
    assert!(
        listed
            .iter()
            .all(|r| r.status == "registered" && r.kidc.is_some())
    );
    let store_bytes: u64 = std::fs::read_dir(dir.path().join("second"))
        .expect("store")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{}",
        json!({
            "bench": "first_sync",
            "records": wanted,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "records_per_second": (wanted as f64 / seconds).round(),
            "requests": transport.requests.get(),
            "request_bytes": transport.request_bytes.get(),
            "answer_bytes": transport.answer_bytes.get(),
            "answer_bytes_per_record": transport.answer_bytes.get() / wanted,
            "store_bytes_after": store_bytes,
            "setup_seconds": (setup_s * 10.0).round() / 10.0,
        })
    );
}
