//! Wire bytes per new birth registration, batched 1, 10 and 100 records per
//! signed change set, beside the zstd-compressed JSON of the same records.
//!
//! The bytes are the real ones: a real tablet store (`Registrar`) syncs with
//! a real server (`crvs_server::Server`, SQLite in a temp dir) through a
//! transport that counts every byte of every sync request body. Each record
//! is registered, verified and approved before the sync, as on a
//! registration day.
//!
//! The JSON baselines, compressed in the same batches at the same zstd level
//! as change sets (19) and at zstd's default (3):
//! * `record_json`: what `crvs show` prints of the record at sync time (id,
//!   kind, office, status, data, transitions): the same information;
//! * `input_json`: the registration file alone (less information: no id, no
//!   workflow).
//!
//! `cargo bench -p crvs-bench --bench wire` prints one JSON object.

use std::cell::Cell;
use std::path::Path;

use crvs_core::crypto::KdfParams;
use crvs_core::{Registrar, Transport};
use crvs_schema::wire::{EnrollRequest, EnrollResponse};

struct Counting<'a> {
    server: &'a crvs_server::Server,
    request_bytes: Cell<usize>,
    change_set_bytes: Cell<usize>,
}

impl Transport for Counting<'_> {
    fn enroll(&self, request: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
        crvs_server::admin::enroll(self.server, request)
            .map_err(|e| crvs_core::Error::Protocol(e.to_string()))
    }

    fn sync(&self, sealed_request: &[u8]) -> crvs_core::Result<Vec<u8>> {
        self.request_bytes
            .set(self.request_bytes.get() + sealed_request.len());
        let req = crvs_schema::wire::SyncRequest::decode_unverified(sealed_request)
            .map_err(|e| crvs_core::Error::Protocol(e.to_string()))?;
        let cs: usize = req.change_sets.iter().map(Vec::len).sum();
        self.change_set_bytes.set(self.change_set_bytes.get() + cs);
        self.server
            .handle_sync(sealed_request)
            .map_err(|e| crvs_core::Error::Protocol(e.to_string()))
    }
}

fn zstd_len(chunks: &[Vec<u8>], level: i32) -> usize {
    zstd::bulk::compress(&chunks.concat(), level).expect("zstd").len()
}

fn run(dir: &Path, births: &[String], batch: usize) -> serde_json::Value {
    let server = crvs_server::Server::open(&dir.join(format!("server-{batch}"))).expect("server");
    let transport = Counting {
        server: &server,
        request_bytes: Cell::new(0),
        change_set_bytes: Cell::new(0),
    };
    let tablet = Registrar::init_with_kdf(
        dir.join(format!("tablet-{batch}")),
        &"a long passphrase the registrar chose".into(),
        "171003",
        KdfParams::INSECURE_FOR_TESTS,
    )
    .expect("store");
    let token = crvs_server::admin::create_token(&server, "171003", 3_600_000).expect("token");
    tablet
        .enroll_with(&transport, "http://in-process", &token.token)
        .expect("enrol");
    // Enrolment is not registration traffic.
    transport.request_bytes.set(0);
    let (mut record_json, mut input_json) = ([0usize; 2], [0usize; 2]);
    for chunk in births.chunks(batch) {
        let (mut records, mut inputs) = (Vec::new(), Vec::new());
        for line in chunk {
            let id = tablet.register_birth(line, "clerk-01").expect("register");
            tablet.verify(&id, "clerk-02").expect("verify");
            tablet.approve(&id, "registrar-01").expect("approve");
            let mut show: serde_json::Value =
                serde_json::from_str(&tablet.record_json(&id).expect("show")).expect("json");
            // What the tablet knows at sync time, nothing the server adds.
            if let Some(o) = show.as_object_mut() {
                for k in ["sync_state", "server", "conflicts", "updated_at", "created_at"] {
                    o.remove(k);
                }
            }
            records.push(serde_json::to_vec(&show).expect("json"));
            inputs.push(line.as_bytes().to_vec());
        }
        for (i, level) in [19, 3].into_iter().enumerate() {
            record_json[i] += zstd_len(&records, level);
            input_json[i] += zstd_len(&inputs, level);
        }
        let report = tablet.sync_with(&transport, &crvs_core::Quiet).expect("sync");
        assert_eq!(report.records_pushed as usize, chunk.len());
    }
    let n = births.len() as f64;
    let wire = transport.request_bytes.get() as f64 / n;
    serde_json::json!({
        "batch": batch,
        "records": births.len(),
        "wire_bytes_per_record": wire,
        "change_set_bytes_per_record": transport.change_set_bytes.get() as f64 / n,
        "record_json_zstd19_per_record": record_json[0] as f64 / n,
        "record_json_zstd3_per_record": record_json[1] as f64 / n,
        "input_json_zstd19_per_record": input_json[0] as f64 / n,
        "input_json_zstd3_per_record": input_json[1] as f64 / n,
        "wire_vs_record_json_zstd19": wire / (record_json[0] as f64 / n),
        "wire_vs_record_json_zstd3": wire / (record_json[1] as f64 / n),
    })
}

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let fallback = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/births-sample.jsonl");
    let text = std::fs::read_to_string(path)
        .or_else(|_| std::fs::read_to_string(fallback))
        .expect("bench data");
    // Births dated after today would be refused by the tablet's validation.
    let today = crvs_schema::Date::today_in_cambodia(crvs_core::registrar::now_ms());
    let births: Vec<String> = text
        .lines()
        .filter(|l| crvs_schema::BirthRegistration::from_json_str(l, today).is_ok())
        .take(1000)
        .map(String::from)
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let results: Vec<_> = [1, 10, 100]
        .into_iter()
        .map(|b| run(dir.path(), &births, b))
        .collect();
    println!("{}", serde_json::json!({"bench": "wire", "results": results}));
}
