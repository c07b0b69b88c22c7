//! Wire bytes per new birth registration, in both directions, batched 1, 10
//! and 100 records per sync, beside zstd-compressed JSON of the same
//! information with a dictionary trained the same way as ours.
//!
//! The bytes are the real ones: a real tablet store (`Registrar`) syncs with
//! a real server (`crvs_server::Server`, SQLite in a temp dir) through a
//! transport that counts every byte of every sync request body and every
//! answer body (the answers carry each record's KIdC, the server's
//! automerge change and its signed issuance proof). Each record is
//! registered, verified and approved before the sync, as on a registration
//! day.
//!
//! The JSON baselines, compressed per sync (one frame per request and one
//! per answer), at the level change sets use (19) and at zstd's default (3),
//! each with a 64 KiB dictionary trained the way `train_dictionary` trains
//! ours: on births 3000 to 6999 of the synthetic set, never on the births
//! measured (0 to 999):
//! * request, `record_json`: what `crvs show` prints of the record at sync
//!   time (id, kind, office, status, data, transitions): the same
//!   information a change set carries;
//! * answer, `answer_json`: per record its id, the server part `crvs show`
//!   prints after the sync (KIdC, registration time), and a 64-byte
//!   signature in base64 standing for the issuance proof; per sync the
//!   acknowledged sequence numbers.
//! * Each request and each answer also carries one 64-byte signature in
//!   base64 (ours are signed; a JSON API must authenticate both ends too).
//!   The stand-in signatures are SHA-256 outputs: as incompressible as real
//!   ones.
//!
//! `cargo bench -p crvs-bench --bench wire` prints one JSON object.

use std::cell::Cell;
use std::path::Path;

use crvs_core::crypto::KdfParams;
use crvs_core::{Registrar, Transport};
use crvs_schema::wire::{EnrollRequest, EnrollResponse};
use serde_json::{Value, json};

struct Counting<'a> {
    server: &'a crvs_server::Server,
    request_bytes: Cell<usize>,
    change_set_bytes: Cell<usize>,
    answer_bytes: Cell<usize>,
    change_sets: std::cell::RefCell<Vec<Vec<u8>>>,
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
        self.change_sets
            .borrow_mut()
            .extend(req.change_sets.iter().cloned());
        let answer = self
            .server
            .handle_sync(sealed_request)
            .map_err(|e| crvs_core::Error::Protocol(e.to_string()))?;
        self.answer_bytes.set(self.answer_bytes.get() + answer.len());
        Ok(answer)
    }
}

/// A tablet enrolled with a fresh in-process server, both in `dir`.
fn enrolled(dir: &Path, name: &str) -> (crvs_server::Server, Registrar) {
    let server = crvs_server::Server::open(&dir.join(format!("server-{name}"))).expect("server");
    let tablet = Registrar::init_with_kdf(
        dir.join(format!("tablet-{name}")),
        &"a long passphrase the registrar chose".into(),
        "171003",
        KdfParams::INSECURE_FOR_TESTS,
    )
    .expect("store");
    (server, tablet)
}

/// What the tablet knows of a record at sync time, as JSON: `crvs show`
/// without what the server adds.
fn request_json(tablet: &Registrar, id: &crvs_core::RecordId) -> Vec<u8> {
    let mut show: Value = serde_json::from_str(&tablet.record_json(id).expect("show")).expect("json");
    if let Some(o) = show.as_object_mut() {
        for k in ["sync_state", "server", "conflicts", "updated_at", "created_at"] {
            o.remove(k);
        }
    }
    serde_json::to_vec(&show).expect("json")
}

/// What a JSON API would answer about a registered record: its id, the
/// server part, and a signature (64 bytes, base64) for the proof.
fn answer_json(tablet: &Registrar, id: &crvs_core::RecordId, n: usize) -> Vec<u8> {
    let show: Value = serde_json::from_str(&tablet.record_json(id).expect("show")).expect("json");
    assert!(show["kidc"].is_string(), "the sync delivered the code");
    let b64 = base64_std(&signature(&format!("proof/{n}")));
    serde_json::to_vec(&json!({
        "record_id": show["record_id"],
        "server": show["server"],
        "proof": b64,
    }))
    .expect("json")
}

/// A stand-in signature: 64 bytes that no compressor can shrink (two
/// SHA-256 outputs), as a real ed25519 signature.
fn signature(label: &str) -> Vec<u8> {
    use sha2::Digest;
    let a = sha2::Sha256::digest(format!("{label}/a"));
    let b = sha2::Sha256::digest(format!("{label}/b"));
    [a.as_slice(), b.as_slice()].concat()
}

fn base64_std(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Registers, verifies and approves `births` on a fresh tablet and syncs
/// them `batch` at a time. Returns, per sync, the request JSON and answer
/// JSON of its records, and the counting transport's totals.
struct Run {
    requests: Vec<Vec<Vec<u8>>>,
    answers: Vec<Vec<u8>>,
    request_bytes: usize,
    change_set_bytes: usize,
    answer_bytes: usize,
    /// The signed change sets sent, as sent.
    change_sets: Vec<Vec<u8>>,
}

fn run(dir: &Path, name: &str, births: &[String], batch: usize) -> Run {
    let (server, tablet) = enrolled(dir, name);
    let transport = Counting {
        server: &server,
        request_bytes: Cell::new(0),
        change_set_bytes: Cell::new(0),
        answer_bytes: Cell::new(0),
        change_sets: Default::default(),
    };
    let token = crvs_server::admin::create_token(&server, "171003", 3_600_000).expect("token");
    tablet
        .enroll_with(&transport, "http://in-process", &token.token)
        .expect("enrol");
    // Enrolment is not registration traffic.
    transport.request_bytes.set(0);
    transport.answer_bytes.set(0);
    let mut out = Run {
        requests: Vec::new(),
        answers: Vec::new(),
        request_bytes: 0,
        change_set_bytes: 0,
        answer_bytes: 0,
        change_sets: Vec::new(),
    };
    let mut n = 0;
    for chunk in births.chunks(batch) {
        let mut ids = Vec::new();
        let mut requests = Vec::new();
        for line in chunk {
            let id = tablet.register_birth(line, "clerk-01").expect("register");
            tablet.verify(&id, "clerk-02").expect("verify");
            tablet.approve(&id, "registrar-01").expect("approve");
            requests.push(request_json(&tablet, &id));
            ids.push(id);
        }
        let report = tablet.sync_with(&transport, &crvs_core::Quiet).expect("sync");
        assert_eq!(report.records_pushed as usize, chunk.len());
        assert_eq!(
            report.kidcs_received as usize,
            chunk.len(),
            "every code delivered"
        );
        let mut answer = Vec::new();
        for id in &ids {
            answer.push(answer_json(&tablet, id, n));
            n += 1;
        }
        // The acknowledgements (one sequence number per change set) and
        // the answer's signature; the request carries a signature too (a
        // JSON API must authenticate both ends as ours does).
        let k = out.requests.len();
        let acks = json!({ "acked": [k + 1], "sig": base64_std(&signature(&format!("answer/{name}/{k}"))) });
        answer.push(serde_json::to_vec(&acks).expect("json"));
        let sig = json!({ "sig": base64_std(&signature(&format!("request/{name}/{k}"))) });
        requests.push(serde_json::to_vec(&sig).expect("json"));
        out.requests.push(requests);
        out.answers.push(answer.concat());
    }
    out.change_sets = transport.change_sets.take();
    out.request_bytes = transport.request_bytes.get();
    out.change_set_bytes = transport.change_set_bytes.get();
    out.answer_bytes = transport.answer_bytes.get();
    out
}

const DICTIONARY_BYTES: usize = 64 << 10;

/// Dictionaries for the JSON baselines, trained on births 3000 to 6999 as
/// ours is: one sample per record for requests, one per record for answers.
fn train(dir: &Path, births: &[String]) -> (Vec<u8>, Vec<u8>) {
    let r = run(dir, "training", births, 100);
    let request_samples: Vec<Vec<u8>> = r.requests.into_iter().flatten().collect();
    // Answers are split back into records at the `{"record_id"` that starts
    // each (the samples must be per record, like ours).
    let mut answer_samples = Vec::new();
    for a in &r.answers {
        let text = String::from_utf8(a.clone()).expect("utf-8");
        for part in text.split("{\"proof\"").filter(|p| !p.is_empty()) {
            answer_samples.push(format!("{{\"proof\"{part}").into_bytes());
        }
    }
    let req = zstd::dict::from_samples(&request_samples, DICTIONARY_BYTES).expect("train requests");
    let ans = zstd::dict::from_samples(&answer_samples, DICTIONARY_BYTES).expect("train answers");
    (req, ans)
}

fn zstd_dict_len(frame: &[u8], level: i32, dict: &[u8]) -> usize {
    zstd::bulk::Compressor::with_dictionary(level, dict)
        .expect("compressor")
        .compress(frame)
        .expect("zstd")
        .len()
}

/// The change sets of a 100-a-sync run compressed again at each zstd
/// level, with the change-set dictionary: bytes and microseconds per
/// record (what chose [`crvs_schema::wire::CHANGE_SET_ZSTD_LEVEL`]).
fn level_sweep(change_sets: &[Vec<u8>], records: usize) -> Value {
    use crvs_schema::wire::{CHANGE_SET_DICTIONARY, MAX_CHANGE_SET_DECODED};
    // A signed change set: version, device id, sequence number, signature,
    // then the compressed body.
    const BODY_AT: usize = 1 + 16 + 8 + 64;
    let mut d = zstd::bulk::Decompressor::with_dictionary(CHANGE_SET_DICTIONARY).expect("decompressor");
    let bodies: Vec<Vec<u8>> = change_sets
        .iter()
        .map(|c| {
            d.decompress(&c[BODY_AT..], MAX_CHANGE_SET_DECODED)
                .expect("a change set body")
        })
        .collect();
    let sent: usize = change_sets.iter().map(|c| c.len() - BODY_AT).sum();
    let n = records as f64;
    let mut rows = Vec::new();
    for level in [1, 3, 5, 7, 9, 11, 13, 15, 17, 19] {
        let mut c =
            zstd::bulk::Compressor::with_dictionary(level, CHANGE_SET_DICTIONARY).expect("compressor");
        let started = std::time::Instant::now();
        let bytes: usize = bodies.iter().map(|b| c.compress(b).expect("zstd").len()).sum();
        let us = started.elapsed().as_secs_f64() * 1e6;
        rows.push(json!({
            "level": level,
            "body_bytes_per_record": (bytes as f64 / n * 10.0).round() / 10.0,
            "microseconds_per_record": (us / n * 10.0).round() / 10.0,
        }));
    }
    json!({
        "level_used": crvs_schema::wire::CHANGE_SET_ZSTD_LEVEL,
        "body_bytes_per_record_sent": (sent as f64 / n * 10.0).round() / 10.0,
        "levels": rows,
    })
}

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("bench data (../shared/bench)");
    // Births dated after today would be refused by the tablet's validation.
    let today = crvs_schema::Date::today_in_cambodia(crvs_core::registrar::now_ms());
    let valid = |(i, l): (usize, &str)| {
        crvs_schema::BirthRegistration::from_json_str(l, today)
            .is_ok()
            .then(|| (i, l.to_string()))
    };
    let lines: Vec<(usize, String)> = text.lines().enumerate().filter_map(valid).collect();
    let measured: Vec<String> = lines
        .iter()
        .filter(|(i, _)| *i < 1000)
        .map(|(_, l)| l.clone())
        .collect();
    let training: Vec<String> = lines
        .iter()
        .filter(|(i, _)| (3000..7000).contains(i))
        .map(|(_, l)| l.clone())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let (request_dict, answer_dict) = train(dir.path(), &training);

    let mut results = Vec::new();
    let mut levels = Value::Null;
    for batch in [1, 10, 100] {
        let r = run(dir.path(), &format!("b{batch}"), &measured, batch);
        if batch == 100 {
            levels = level_sweep(&r.change_sets, measured.len());
        }
        let n = measured.len() as f64;
        let (mut req19, mut req3, mut ans19, mut ans3) = (0, 0, 0, 0);
        for (req, ans) in r.requests.iter().zip(&r.answers) {
            let frame = req.concat();
            req19 += zstd_dict_len(&frame, 19, &request_dict);
            req3 += zstd_dict_len(&frame, 3, &request_dict);
            ans19 += zstd_dict_len(ans, 19, &answer_dict);
            ans3 += zstd_dict_len(ans, 3, &answer_dict);
        }
        let per = |b: usize| (b as f64 / n * 10.0).round() / 10.0;
        let ratio = |a: usize, b: usize| (a as f64 / b as f64 * 100.0).round() / 100.0;
        results.push(json!({
            "batch": batch,
            "records": measured.len(),
            "request_bytes_per_record": per(r.request_bytes),
            "change_set_bytes_per_record": per(r.change_set_bytes),
            "answer_bytes_per_record": per(r.answer_bytes),
            "both_bytes_per_record": per(r.request_bytes + r.answer_bytes),
            "json_dict_zstd19": {
                "request_bytes_per_record": per(req19),
                "answer_bytes_per_record": per(ans19),
            },
            "json_dict_zstd3": {
                "request_bytes_per_record": per(req3),
                "answer_bytes_per_record": per(ans3),
            },
            "request_vs_json_dict_zstd19": ratio(r.request_bytes, req19),
            "answer_vs_json_dict_zstd19": ratio(r.answer_bytes, ans19),
            "both_vs_json_dict_zstd19": ratio(r.request_bytes + r.answer_bytes, req19 + ans19),
        }));
    }
    println!(
        "{}",
        json!({
            "bench": "wire",
            "training_records": training.len(),
            "json_dictionaries_bytes": [request_dict.len(), answer_dict.len()],
            "results": results,
            "change_set_levels": levels,
        })
    );
}
