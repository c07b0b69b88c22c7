//! The real attacks of issue 7 §4 against a real `crvs-server` process:
//! many small decompression bombs in one request, a huge automerge
//! document, deep JSON, and 50 parallel 32 MiB uploads (authenticated and
//! not). Throughout, a monitor samples the server's resident memory and
//! `GET /v1/health`, and an honest tablet (the real `crvs` CLI) syncs.
//! Figures are printed: `cargo test -p crvs-e2e --test attacks -- --nocapture`.
//!
//! The bombs run on SQLite and on PostgreSQL (`both_backends!`). SQLite
//! only: `a_tablet_rewriting_a_registered_birth_without_an_amendment_is_refused`
//! (reads the change-set log and the stored document from `server.db`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crvs_e2e::{
    Backend, Server, ServerOptions, Tablet, both_backends, fixture, health_latency, rss_kib, server_data,
    token,
};
use crvs_schema::wire::{self, ChangeSet, RecordChanges, SignedChangeSet, SyncRequest};
use ed25519_dalek::SigningKey;

const COMMUNE: &str = "171003";
const MIB: usize = 1 << 20;

/// A device enrolled over HTTP with a key the test holds: the attacker
/// is an enrolled tablet (a stolen one, or a hostile insider).
struct Attacker {
    key: SigningKey,
    device_id: [u8; 16],
    counter: AtomicU64,
}

impl Attacker {
    fn enroll(server: &Server) -> Attacker {
        let key = SigningKey::generate(&mut rand::rng());
        let text = token(&server.data, COMMUNE);
        let t = crvs_schema::enrol::EnrolmentToken::parse(&text).expect("token");
        let req =
            crvs_schema::enrol::enroll_request(&t, &key.verifying_key().to_bytes(), Some(COMMUNE), [5; 16]);
        let (status, body) = post(
            server.addr,
            "/v1/enroll",
            "application/json",
            &serde_json::to_vec(&req).unwrap(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: wire::EnrollResponse = serde_json::from_slice(&body).expect("answer");
        Attacker {
            key,
            device_id: *uuid::Uuid::parse_str(&answer.device_id).expect("uuid").as_bytes(),
            counter: AtomicU64::new(0),
        }
    }

    fn request(&self, change_sets: Vec<Vec<u8>>) -> Vec<u8> {
        SyncRequest {
            device_id: self.device_id,
            counter: self.counter.fetch_add(1, Ordering::SeqCst) + 1,
            cursor: 0,
            device_clock_ms: 0,
            change_sets,
            evidence: Vec::new(),
            lineage: [0; 16],
            adopted: None,
            resume: None,
            report: None,
        }
        .seal(&self.key)
        .expect("seal")
    }

    fn change_set(&self, seq: u64, records: Vec<RecordChanges>) -> Vec<u8> {
        self.change_set_after(seq, [0; 32], records).into_bytes()
    }

    /// A change set linked to the one whose hash is `prev_hash`.
    fn change_set_after(
        &self,
        seq: u64,
        prev_hash: wire::Hash,
        records: Vec<RecordChanges>,
    ) -> SignedChangeSet {
        let body = ChangeSet {
            prev_hash,
            device_clock_ms: 0,
            records,
        };
        SignedChangeSet::seal(&self.key, self.device_id, seq, &body).expect("seal")
    }
}

/// One HTTP/1.1 POST on a fresh connection; the status and the body.
fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n\
         {}: {}\r\nContent-Length: {}\r\n\r\n",
        wire::PROTOCOL_HEADER,
        wire::FORMAT_VERSION,
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    // The server may answer and close before the body is all sent.
    let _ = s.write_all(body);
    read_answer(&mut s)
}

fn read_answer(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let status = buf
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| buf[at + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

/// Sends `len` bytes after `prefix` as fast as the server takes them,
/// with or without a Content-Length, and returns the status (0 when the
/// server cut the connection without an answer: also a refusal).
fn upload(addr: SocketAddr, prefix: &[u8], len: usize, chunked: bool) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(20)) else {
        return 0;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let head = format!(
        "POST /v1/sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}: {}\r\n{framing}\r\n\r\n",
        wire::PROTOCOL_HEADER,
        wire::FORMAT_VERSION
    );
    if s.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let block = vec![0x5au8; MIB];
    let mut sent = 0;
    let mut first = true;
    while sent < len {
        let part: &[u8] = if first {
            prefix
        } else {
            &block[..MIB.min(len - sent)]
        };
        first = false;
        let ok = if chunked {
            s.write_all(format!("{:x}\r\n", part.len()).as_bytes()).is_ok()
                && s.write_all(part).is_ok()
                && s.write_all(b"\r\n").is_ok()
        } else {
            s.write_all(part).is_ok()
        };
        if !ok {
            break;
        }
        sent += part.len();
    }
    if chunked {
        let _ = s.write_all(b"0\r\n\r\n");
    }
    read_answer(&mut s).0
}

/// Samples the server's memory and health until stopped.
struct Monitor {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Duration, usize, usize)>,
}

impl Monitor {
    fn start(server: &Server) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = server.pid();
        let addr = server.addr;
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut max_rss, mut max_health, mut samples, mut misses) = (0u64, Duration::ZERO, 0, 0);
            while !flag.load(Ordering::SeqCst) {
                max_rss = max_rss.max(rss_kib(pid).unwrap_or(0));
                match health_latency(addr, Duration::from_secs(1)) {
                    Some(t) => max_health = max_health.max(t),
                    None => misses += 1,
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            (max_rss, max_health, samples, misses)
        });
        Monitor { stop, handle }
    }

    fn finish(self) -> (u64, Duration, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("monitor")
    }
}

/// An automerge change chunk of 40 bytes whose one column claims a run of
/// a billion operations.
fn rle_bomb() -> Vec<u8> {
    let mut body = vec![0u8, 1, 0xaa, 1, 1, 0, 0, 0];
    let run = [0x80, 0x94, 0xeb, 0xdc, 0x03, 5]; // 10^9, then the value 5
    body.extend([1, 0x42, run.len() as u8]);
    body.extend(run);
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, body.len() as u8];
    chunk.extend(body);
    chunk
}

both_backends!(bombs_huge_documents_deep_json_and_parallel_uploads_leave_the_server_bounded_and_serving);
fn bombs_huge_documents_deep_json_and_parallel_uploads_leave_the_server_bounded_and_serving(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("server.log");
    let server = Server::start_with(
        &server_data(backend, &dir.path().join("server")),
        &ServerOptions {
            log_file: Some(log.clone()),
            log_level: Some("info".into()),
            ..ServerOptions::default()
        },
    );
    let honest = Tablet::new(dir.path().join("honest"));
    honest.init_and_enroll(COMMUNE, &server);
    let attacker = Arc::new(Attacker::enroll(&server));
    let monitor = Monitor::start(&server);
    let rss_before = server.rss_kib();

    // 1. Many small bombs in one request: 16 change sets (the most a
    // request may carry), each a few hundred bytes that decompress to
    // 3 MiB: 48 MiB claimed, over the request's 32 MiB budget.
    let started = Instant::now();
    for round in 0..5 {
        let change_sets: Vec<Vec<u8>> = (1..=wire::MAX_CHANGE_SETS_PER_REQUEST as u64)
            .map(|seq| {
                attacker.change_set(
                    seq,
                    vec![RecordChanges {
                        record_id: uuid::Uuid::now_v7().into_bytes(),
                        changes: vec![vec![0; 3 * MIB]],
                    }],
                )
            })
            .collect();
        let req = attacker.request(change_sets);
        assert!(req.len() < 64 * 1024, "{} bytes on the wire", req.len());
        let (status, body) = post(server.addr, "/v1/sync", "application/octet-stream", &req);
        assert_eq!(status, 200, "round {round}: {}", String::from_utf8_lossy(&body));
    }
    eprintln!("bombs: 5 requests of 16 x 3 MiB bombs in {:?}", started.elapsed());

    // 2. A huge automerge document: a 40-byte chunk claiming 10^9
    // operations, in a correctly signed change set.
    let cs = attacker.change_set(
        1,
        vec![RecordChanges {
            record_id: uuid::Uuid::now_v7().into_bytes(),
            changes: vec![rle_bomb()],
        }],
    );
    let (status, body) = post(
        server.addr,
        "/v1/sync",
        "application/octet-stream",
        &attacker.request(vec![cs]),
    );
    assert_eq!(status, 200);
    let answer = wire::SyncResponse::open(&body, &server_key(&server)).expect("signed answer");
    let refusal = answer.refusal.expect("refused");
    assert_eq!(refusal.code, wire::RefusalCode::TooLarge, "{refusal:?}");

    // 3. Deep JSON at enrolment: within the size limit it is refused by
    // depth, beyond it by size; never a crash.
    for depth in [5_000, 100_000] {
        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let (status, _) = post(server.addr, "/v1/enroll", "application/json", json.as_bytes());
        assert!(status == 400 || status == 413, "depth {depth}: {status}");
    }

    // 4. 50 parallel 32 MiB uploads: strangers with and without a
    // Content-Length, and the enrolled attacker with valid headers.
    let started = Instant::now();
    let uploads: Vec<std::thread::JoinHandle<u16>> = (0..50)
        .map(|i| {
            let addr = server.addr;
            let attacker = attacker.clone();
            std::thread::spawn(move || match i % 3 {
                0 => upload(addr, &[0x02; 129], 32 * MIB, false),
                1 => upload(addr, &[0x02; 129], 32 * MIB, true),
                _ => {
                    // A valid header whose signed body length is the most
                    // a request may have; then 32 MiB of junk.
                    let req = attacker.request(vec![vec![0; 7 * MIB]]);
                    upload(addr, &req[..wire::REQUEST_HEADER_LEN], 32 * MIB, true)
                }
            })
        })
        .collect();
    // Meanwhile an honest tablet registers a birth and syncs.
    let id = honest.register_approved(&fixture("birth-sok-dara.json"));
    let synced = honest.run(&["sync"]);
    let statuses: Vec<u16> = uploads.into_iter().map(|h| h.join().expect("upload")).collect();
    eprintln!(
        "uploads: 50 x 32 MiB answered in {:?}: {statuses:?}",
        started.elapsed()
    );
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, 0 | 400 | 401 | 408 | 409 | 413 | 429 | 503)),
        "every upload refused: {statuses:?}"
    );
    assert!(
        statuses.contains(&413),
        "an oversized Content-Length is refused at once"
    );

    let (max_rss, max_health, samples, misses) = monitor.finish();
    eprintln!(
        "server RSS: {rss_before} KiB before, {max_rss} KiB at most; health: {samples} samples, slowest {max_health:?}, {misses} missed the 1 s limit"
    );
    let v = synced.expect_ok();
    assert_eq!(
        v["kidcs_received"], 1,
        "the honest tablet's sync went through: {v}"
    );
    assert!(honest.show(&id)["kidc"].as_str().is_some());
    assert!(
        max_rss < 512 * 1024,
        "resident memory stayed under 512 MiB: {max_rss} KiB"
    );
    assert_eq!(misses, 0, "health answered within a second every time");
    assert!(samples >= 5);
    assert!(
        server.health_latency(Duration::from_secs(1)).is_some(),
        "still serving"
    );
}

fn server_key(server: &Server) -> ed25519_dalek::VerifyingKey {
    let text = std::fs::read_to_string(server.data.join("server.key")).expect("key");
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).expect("hex");
    SigningKey::from_bytes(&bytes).verifying_key()
}

/// A tablet that rewrites the data of a registered birth in an automerge
/// change of its own (not through an amendment) is refused: the change
/// set is not applied, and the registration stands as it was.
#[test]
fn a_tablet_rewriting_a_registered_birth_without_an_amendment_is_refused() {
    use crvs_schema::record;
    use crvs_schema::workflow::{Action, Transition};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let attacker = Attacker::enroll(&server);
    let key = server_key(&server);
    let step = |action, by: &str| Transition {
        action,
        by: by.into(),
        at_ms: 1,
        device: "forged".into(),
        reason: None,
        notification: None,
        code: None,
    };
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("birth-sok-dara.json")).unwrap()).unwrap();
    let mut doc = record::new_record(
        automerge::ActorId::from([7u8; 16]),
        record::RecordKind::Birth,
        COMMUNE,
        &data,
        &step(Action::Submit, "clerk-1"),
    )
    .unwrap();
    record::append_transition(&mut doc, &step(Action::Verify, "clerk-2")).unwrap();
    record::append_transition(&mut doc, &step(Action::Approve, "registrar-1")).unwrap();
    let record_id = uuid::Uuid::now_v7().into_bytes();
    let first = attacker.change_set_after(
        1,
        [0; 32],
        vec![RecordChanges {
            record_id,
            changes: vec![doc.save_nocompress()],
        }],
    );
    let (status, body) = post(
        server.addr,
        "/v1/sync",
        "application/octet-stream",
        &attacker.request(vec![first.as_bytes().to_vec()]),
    );
    assert_eq!(status, 200);
    let answer = wire::SyncResponse::open(&body, &key).expect("signed answer");
    assert!(answer.refusal.is_none(), "{:?}", answer.refusal);
    assert_eq!(answer.issuances.len(), 1, "the birth is registered with its KIdC");

    // The same device rewrites the child's name in the registered record.
    let heads = doc.get_heads();
    let mut forged = data.clone();
    forged["child"]["given_name_latin"] = serde_json::Value::from("SOMEONE");
    automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, record::DATA, forged.to_string())
        .unwrap();
    doc.commit();
    let change: Vec<u8> = doc
        .get_changes(&heads)
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect();
    let second = attacker.change_set_after(
        2,
        first.hash(),
        vec![RecordChanges {
            record_id,
            changes: vec![change],
        }],
    );
    let (status, body) = post(
        server.addr,
        "/v1/sync",
        "application/octet-stream",
        &attacker.request(vec![second.into_bytes()]),
    );
    assert_eq!(status, 200);
    let answer = wire::SyncResponse::open(&body, &key).expect("signed answer");
    let refusal = answer.refusal.expect("the rewrite is refused");
    assert_eq!(refusal.code, wire::RefusalCode::InvalidRecord, "{refusal:?}");
    assert!(refusal.message.contains("amendment"), "{}", refusal.message);
    assert_eq!(refusal.seq, 2);
    // Nothing of it was kept: one change set logged, the record's data as registered.
    let db = crvs_e2e::server_db(&server.data);
    let logged: i64 = db
        .query_row("SELECT count(*) FROM change_set_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logged, 1);
    let stored: Vec<u8> = db
        .query_row(
            "SELECT doc FROM records WHERE record_id = ?1",
            [uuid::Uuid::from_bytes(record_id).to_string()],
            |r| r.get(0),
        )
        .unwrap();
    let view = record::read(&automerge::AutoCommit::load(&stored).unwrap()).unwrap();
    assert_eq!(view.data, data);
    assert!(view.server.registration_number.is_some());
}
