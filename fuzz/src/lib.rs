//! `crvs-fuzz`: one function per decoder of untrusted bytes, for any
//! fuzzing engine (`fuzz/engine/`, libFuzzer) and for `cargo test`, which
//! replays the committed corpus and every past crasher
//! (`fuzz/tests/replay.rs`).
//!
//! | target | what the fuzzed bytes become |
//! |---|---|
//! | [`change_set`] | a signed change set: the frame as received, or a payload signed with the device key so the bytes reach zstd and bincode |
//! | [`sync_request`] | a sync request: the frame as received, or a body framed and signed with the device key |
//! | [`sync_response`] | a sync answer signed with the server key, opened and interpreted as the tablet does, its changes applied to a real record |
//! | [`record_chunk`] | one element of `RecordChanges::changes`, loaded and checked as the server does |
//! | [`server_ingest`] | that element inside a correctly signed change set inside a correctly signed request, handed to a real [`Server`] |
//! | [`json_inputs`] | JSON text: a birth registration, an enrolment request, workflow steps, any JSON value |
//!
//! **Panics.** The server catches a panic per record (automerge 0.12's
//! decoder panics on some malformed documents) and refuses the change set
//! as `malformed`. The targets mirror that, and no more: a panic raised in
//! automerge's own source (or `hexane`, its column codec) while a target
//! expects one is not a crash; any
//! other panic is, including one the server's `catch_unwind` would have
//! swallowed (a bug in our code must not hide behind that net). Set
//! `CRVS_FUZZ_STRICT_AUTOMERGE=1` to make automerge's panics crash too
//! (how `fuzz/regressions/*/automerge-*` inputs were found).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use automerge::{ActorId, AutoCommit, Automerge, ReadDoc};
use crvs_schema::Date;
use crvs_schema::birth::{self, BirthRegistration};
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::record::{self, RecordKind, ServerPart};
use crvs_schema::wire::{
    self, AckOutcome, ChangeSet, Hash, RecordChanges, SignedChangeSet, SyncRequest, SyncResponse,
};
use crvs_schema::workflow::{Action, Transition};
use crvs_server::{Server, admin};
use ed25519_dalek::SigningKey;

/// Every target, by name (the folder names under `fuzz/corpus/`).
pub const TARGETS: [&str; 6] = [
    "change_set",
    "sync_request",
    "sync_response",
    "record_chunk",
    "server_ingest",
    "json_inputs",
];

/// Runs the target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "change_set" => change_set(data),
        "sync_request" => sync_request(data),
        "sync_response" => sync_response(data),
        "record_chunk" => record_chunk(data),
        "server_ingest" => server_ingest(data),
        "json_inputs" => json_inputs(data),
        _ => return false,
    }
    true
}

/// The targets' fixed "now": 2026-12-01 00:00 UTC.
pub const NOW_MS: i64 = 1_796_083_200_000;
/// The office of the fuzzing device.
pub const OFFICE: &str = "171003";
/// The device id the offline targets sign change sets for.
pub const DEVICE_ID: [u8; 16] = [9; 16];
/// The record the server target stores at start-up (a UUIDv7).
pub const BASE_RECORD_ID: [u8; 16] = [
    0x01, 0x99, 0xa0, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0, 0, 0, 0, 0, 1,
];

/// The device key every target signs with.
pub fn device_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The server key of the offline [`sync_response`] target.
pub fn server_key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn today() -> Date {
    Date::today_in_cambodia(NOW_MS)
}

// ---------------------------------------------------------------- panics

thread_local! {
    /// A target runs code under `catch_unwind` that may see automerge panic.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where a panic outside automerge happened while catching.
    static FOREIGN_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// How many automerge panics were caught (and tolerated) in this process.
pub static AUTOMERGE_PANICS: AtomicU64 = AtomicU64::new(0);
/// The places in automerge's source that panicked, each reported once.
static AUTOMERGE_PANIC_SITES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Automerge's source, and `hexane`, its column encoding crate (its
/// decoder `unwrap`s, e.g. under `Change::from_bytes`).
fn is_automerge_source(file: &str) -> bool {
    ["automerge-0.", "hexane-"]
        .iter()
        .any(|c| file.contains(&format!("/{c}")) || file.contains(&format!("\\{c}")))
}

/// Chains a panic hook in front of the engine's (libFuzzer's aborts): a
/// panic in automerge's source while a target catches is silent and
/// counted; any other panic is remembered and goes to the engine's hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let strict = std::env::var_os("CRVS_FUZZ_STRICT_AUTOMERGE").is_some_and(|v| v == "1");
        let engine = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("?");
            if CATCHING.get() {
                let at = info
                    .location()
                    .map_or_else(|| "?".to_string(), |l| format!("{}:{}", l.file(), l.line()));
                if is_automerge_source(file) && !strict {
                    // Tolerated, as the server tolerates it; each place is
                    // reported once (no message: it could carry data).
                    AUTOMERGE_PANICS.fetch_add(1, Ordering::Relaxed);
                    let mut seen = AUTOMERGE_PANIC_SITES.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.insert(at.clone()) {
                        eprintln!("crvs-fuzz: automerge panicked at {at} (caught, as the server catches it)");
                    }
                    return;
                }
                FOREIGN_PANIC.with_borrow_mut(|p| {
                    p.get_or_insert(at);
                });
            }
            engine(info);
        }));
    });
}

/// Runs `f` the way the server runs a record: under `catch_unwind`.
/// `None` when automerge panicked; panics (outside `catch_unwind`, so the
/// engine sees a crash) when anything else did, even if a `catch_unwind`
/// inside `f` swallowed it.
fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    install_panic_hook();
    FOREIGN_PANIC.with_borrow_mut(|p| *p = None);
    CATCHING.set(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(false);
    if let Some(at) = FOREIGN_PANIC.with_borrow_mut(Option::take) {
        panic!("a panic outside automerge at {at}");
    }
    result.ok()
}

// ---------------------------------------------------------------- wire

/// A change set: byte 0 picks how the rest is used. 0: the signed frame
/// as received (header, signature, payload); 1 and 2: a payload signed as
/// version 1 (plain zstd) or 2 (zstd with the dictionary); 3: a bincode
/// body, compressed and signed, so the fuzzer works on bincode directly.
pub fn change_set(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = device_key();
    let bytes = match mode % 4 {
        0 => rest.to_vec(),
        1 => wire::fuzz_seal_change_set_payload(&key, 1, DEVICE_ID, 1, rest),
        2 => wire::fuzz_seal_change_set_payload(&key, 2, DEVICE_ID, 1, rest),
        _ => wire::fuzz_seal_change_set_payload(&key, 1, DEVICE_ID, 1, &zstd_1(rest)),
    };
    let Ok(cs) = SignedChangeSet::from_bytes(bytes) else {
        return;
    };
    let (device_id, seq, _) = (cs.device_id(), cs.seq(), cs.hash());
    let Ok(body) = cs.open(&key.verifying_key()) else {
        return;
    };
    // What decoded encodes again, and decodes to the same value.
    let encoded = bincode::encode_to_vec(&body, bincode::config::standard()).expect("a change set encodes");
    let again = wire::fuzz_seal_change_set_payload(&key, 1, device_id, seq, &zstd_1(&encoded));
    let reopened = SignedChangeSet::from_bytes(again)
        .and_then(|c| c.open(&key.verifying_key()))
        .expect("a re-encoded change set opens");
    assert_eq!(reopened, body, "a change set survives a round trip");
}

fn zstd_1(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 1).expect("zstd compresses any bytes")
}

/// A sync request: byte 0 even, the rest is the request as received; odd,
/// the rest is a body, framed and signed with the device key (so the
/// target keeps working when the frame's version byte changes).
pub fn sync_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = device_key();
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        wire::fuzz_seal_request_body(&key, rest)
    };
    let Ok(req) = SyncRequest::decode_unverified(&bytes) else {
        return;
    };
    let verified = SyncRequest::open(&bytes, &key.verifying_key()).is_ok();
    assert!(
        mode % 2 == 0 || verified,
        "a request signed with the key verifies"
    );
    for cs in &req.change_sets {
        if let Ok(cs) = SignedChangeSet::from_bytes(cs.clone()) {
            let _ = (cs.device_id(), cs.seq(), cs.hash());
        }
    }
    let again = req.seal(&key).expect("a request encodes");
    assert_eq!(
        SyncRequest::decode_unverified(&again).expect("a re-sealed request decodes"),
        req,
        "a request survives a round trip"
    );
}

/// The change sets the offline [`sync_response`] target pretends it sent.
const SENT: [(u64, Hash); 2] = [(4, [0x44; 32]), (5, [0x55; 32])];

/// A sync answer, as a tablet reads it: byte 0 picks how the rest is used
/// (0: the signed frame as received; 1: a compressed body signed with the
/// server key; 2: a bincode body, compressed and signed). An answer that
/// opens is interpreted against two change sets sent, and its changes are
/// applied to a real record, as the tablet's registrar does.
pub fn sync_response(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = server_key();
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => wire::fuzz_seal_response_body(&key, rest),
        _ => wire::fuzz_seal_response_body(&key, &zstd_1(rest)),
    };
    let Ok(resp) = SyncResponse::open(&bytes, &key.verifying_key()) else {
        return;
    };
    let again = resp.seal(&key).expect("an answer encodes");
    assert_eq!(
        SyncResponse::open(&again, &key.verifying_key()).expect("a re-sealed answer opens"),
        resp,
        "an answer survives a round trip"
    );
    let _ = crvs_core::sync::interpret(&SENT, 3, 6, &resp);
    // The registrar's `apply_update`, without the store. The tablet does
    // not catch panics here; automerge's are counted, not hidden, by
    // `CRVS_FUZZ_STRICT_AUTOMERGE=1`.
    caught(|| {
        for update in &resp.updates {
            let mut doc = base_record();
            let before = doc.get_heads();
            let Ok(changes) = update
                .changes
                .iter()
                .map(|c| automerge::Change::from_bytes(c.clone()))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            if doc.apply_changes(changes).is_err() || doc.get_heads() == before {
                continue;
            }
            let _ = doc.get_missing_deps(&[]);
            if let Ok(view) = record::read(&doc) {
                let _ = view.status();
                let _ = doc.save();
            }
        }
    });
}

// ---------------------------------------------------------------- records

/// A submitted birth of the fixture, written by the device [`DEVICE_ID`]:
/// the record the targets edit, and seed material.
pub fn new_base_record() -> AutoCommit {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("../../fixtures/birth-sok-dara.json")).expect("fixture");
    record::new_record(
        ActorId::from(DEVICE_ID),
        RecordKind::Birth,
        OFFICE,
        &data,
        &Transition {
            action: Action::Submit,
            by: "clerk".into(),
            at_ms: NOW_MS - 86_400_000,
            device: "tablet".into(),
            reason: None,
            notification: None,
            code: None,
        },
    )
    .expect("a record of the fixture")
}

/// The saved base record, made once.
fn base_record_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| new_base_record().save_nocompress())
}

/// A fresh copy of the base record.
fn base_record() -> AutoCommit {
    AutoCommit::load(base_record_bytes()).expect("the base record loads")
}

/// The server's actor in the offline targets.
fn server_actor() -> ActorId {
    ActorId::from([0x5e; 16])
}

/// One element of `RecordChanges::changes`, as the server's
/// `prepare_record` treats it: a document chunk as a new record (load, no
/// server actor, the tablet's rules, validation); any chunk through
/// `record::decode_changes`, applied to an empty document and to a real
/// stored record, and checked; then the server's own edit, and the bytes
/// the server would store, which must load again.
pub fn record_chunk(data: &[u8]) {
    // As the server: automerge never sees what the bounds refuse.
    if crvs_schema::bounds::check(data, &crvs_schema::bounds::Limits::RECORD).is_err() {
        return;
    }
    caught(|| {
        let today = today();
        if record::is_document_chunk(data)
            && let Ok(mut doc) = AutoCommit::load(data)
        {
            let _ = doc
                .document()
                .get_changes_meta(&[])
                .iter()
                .any(|m| *m.actor == server_actor());
            // Kept verbatim, as the server keeps it.
            check_and_edit(None, doc, data, today);
        }
        let Ok(changes) = record::decode_changes(data) else {
            return;
        };
        let fresh: Vec<u8> = changes
            .iter()
            .flat_map(|c| c.raw_bytes().iter().copied())
            .collect();
        for stored in [None, Some(base_record_bytes())] {
            let mut doc =
                stored.map_or_else(AutoCommit::new, |b| AutoCommit::load(b).expect("the base loads"));
            let before = stored.map(|_| doc.document().clone());
            if doc.apply_changes(changes.clone()).is_ok() && doc.get_missing_deps(&[]).is_empty() {
                check_and_edit(
                    stored.map(|b| (before.expect("a stored record"), b)),
                    doc,
                    &fresh,
                    today,
                );
            }
        }
    });
}

/// The server's check of a record, its edit of one that passes, and what
/// it stores (`server_edits_saved`): the stored bytes, the tablet's fresh
/// bytes and the server's change appended verbatim, or (for a record above
/// 64 KiB) the whole document saved, must load again with the same heads.
fn check_and_edit(stored: Option<(Automerge, &[u8])>, mut doc: AutoCommit, fresh: &[u8], today: Date) {
    let Ok(view) = record::check_tablet_changes(stored.as_ref().map(|s| &s.0), &doc) else {
        return;
    };
    let _ = view.status();
    if view.kind == RecordKind::Birth {
        // As ingest does: against the record's office, when it is a commune.
        match GazetteerCode::parse_level(&view.office, Level::Commune) {
            Ok(office) => {
                let _ = birth::validate_at_office(&view.data, today, &office);
            }
            Err(_) => {
                let _ = birth::validate(&view.data, today);
            }
        }
    }
    doc.set_actor(server_actor());
    if record::set_hold(&mut doc, "invalid_on_receipt").is_err() {
        return;
    }
    let server_change = doc
        .commit()
        .and_then(|_| doc.get_last_local_change())
        .map(|c| c.raw_bytes().to_vec());
    let mut blob = stored.as_ref().map_or_else(Vec::new, |s| s.1.to_vec());
    blob.extend_from_slice(fresh);
    blob.extend_from_slice(server_change.as_deref().unwrap_or_default());
    let mut again = AutoCommit::load(&blob).expect("a record as the server stores it loads again");
    assert_eq!(
        again.get_heads(),
        doc.get_heads(),
        "the stored record has the same heads"
    );
    let mut compacted =
        AutoCommit::load(&doc.save()).expect("a record as the server compacts it loads again");
    assert_eq!(
        compacted.get_heads(),
        doc.get_heads(),
        "the compacted record has the same heads"
    );
}

// ---------------------------------------------------------------- server

/// A real server on a temporary SQLite file with one enrolled device, made
/// once per process and reused.
struct Ingest {
    server: Server,
    device_id: [u8; 16],
    /// The device's next sequence number, last hash and pull cursor.
    chain: Mutex<(u64, Hash, u64)>,
    _dir: tempfile::TempDir,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Seals a sync request from the device. The one place a request is built.
fn request(device_id: [u8; 16], cursor: u64, change_sets: Vec<Vec<u8>>) -> Vec<u8> {
    // The server refuses a counter it has seen: one per request.
    let counter = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    SyncRequest {
        device_id,
        counter,
        cursor,
        device_clock_ms: NOW_MS,
        change_sets,
        evidence: Vec::new(),
        lineage: [0; 16],
        adopted: None,
        resume: None,
        report: None,
    }
    .seal(&device_key())
    .expect("a request seals")
}

fn ingest() -> &'static Ingest {
    static INGEST: OnceLock<Ingest> = OnceLock::new();
    INGEST.get_or_init(|| {
        // tmpfs where there is one: every request commits with fsync.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary folder");
        let server = Server::open_with_clock(dir.path(), Arc::new(|| NOW_MS)).expect("the server opens");
        let token = admin::create_token(&server, OFFICE, 3_600_000).expect("a token");
        let enrolled = admin::enroll(
            &server,
            &crvs_schema::enrol::enroll_request(
                &crvs_schema::enrol::EnrolmentToken::parse(&token.token).expect("a token"),
                &device_key().verifying_key().to_bytes(),
                Some(OFFICE),
                [7; 16],
            ),
        )
        .expect("the device enrols");
        let device_id = *uuid::Uuid::parse_str(&enrolled.device_id)
            .expect("a device id")
            .as_bytes();
        let ingest = Ingest {
            server,
            device_id,
            chain: Mutex::new((1, [0; 32], 0)),
            _dir: dir,
        };
        // The record that fuzzed changes can edit (seeds hold changes to it).
        let mut doc = new_base_record();
        let answer = ingest.sync(vec![RecordChanges {
            record_id: BASE_RECORD_ID,
            changes: vec![doc.save_nocompress()],
        }]);
        assert!(answer.refusal.is_none(), "the base record is accepted");
        ingest
    })
}

impl Ingest {
    /// Sends one correctly signed change set of `records` in a correctly
    /// signed request, and checks the answer's invariants: the request
    /// never fails and never panics, the answer opens with the server's
    /// key, is bound to the request, and either acknowledges the change set
    /// or refuses it.
    fn sync(&self, records: Vec<RecordChanges>) -> SyncResponse {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, prev_hash, cursor) = *chain;
        let body = ChangeSet {
            prev_hash,
            device_clock_ms: NOW_MS,
            records,
        };
        let cs =
            SignedChangeSet::seal(&device_key(), self.device_id, seq, &body).expect("a change set seals");
        let req = request(self.device_id, cursor, vec![cs.into_bytes()]);
        let answer = caught(|| self.server.handle_sync(&req))
            .expect("a panic escaped Server::handle_sync")
            .unwrap_or_else(|e| panic!("a correctly signed request of an enrolled device failed: {e}"));
        let resp = SyncResponse::open(&answer, &self.server.signing_key().verifying_key())
            .expect("the answer opens with the server's key");
        assert_eq!(
            resp.request_hash,
            wire::request_hash(&req),
            "the answer is bound to the request"
        );
        match (resp.acks.as_slice(), &resp.refusal) {
            ([ack], None) => {
                assert_eq!((ack.seq, ack.outcome), (seq, AckOutcome::Applied));
                *chain = (seq + 1, ack.hash, resp.cursor);
            }
            ([], Some(refusal)) => {
                assert_eq!(refusal.seq, seq, "the refusal names the change set");
                chain.2 = resp.cursor;
            }
            _ => panic!("the answer neither acknowledges nor refuses the change set"),
        }
        assert_eq!(resp.next_seq, chain.0, "the answer expects the next change set");
        resp
    }
}

/// One element of `RecordChanges::changes` sent to a real server: byte 0
/// picks the record (bit 0: a new record, or the stored base record) and
/// whether the base record's document chunk goes first (bit 1); the rest
/// is the element. It travels in a correctly signed change set (the
/// device's next in its hash chain) inside a correctly signed request,
/// through `Server::handle_sync`. State carries over between inputs: a
/// change set the server accepts advances the chain and may edit the base
/// record.
pub fn server_ingest(data: &[u8]) {
    server_ingest_answer(data);
}

/// [`server_ingest`], returning the server's answer (`None` for empty
/// input).
pub fn server_ingest_answer(data: &[u8]) -> Option<SyncResponse> {
    let (&mode, rest) = data.split_first()?;
    let ingest = ingest();
    let record_id = if mode & 1 == 0 {
        uuid::Uuid::now_v7().into_bytes()
    } else {
        BASE_RECORD_ID
    };
    let mut changes = Vec::with_capacity(2);
    if mode & 2 != 0 {
        changes.push(base_record_bytes().to_vec());
    }
    changes.push(rest.to_vec());
    Some(ingest.sync(vec![RecordChanges { record_id, changes }]))
}

// ---------------------------------------------------------------- JSON

/// JSON text, as the CLI, the enrolment endpoint and the record documents
/// read it: a birth registration (one that validates writes out and reads
/// back the same), any JSON value through the validator, an enrolment
/// request through the real server's enrolment (an unknown token is
/// refused), a workflow step, the server part of a record.
pub fn json_inputs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let today = today();
    match BirthRegistration::from_json_str(&text, today) {
        Ok(reg) => {
            let json = serde_json::to_string(&reg).expect("a registration writes out");
            let again =
                BirthRegistration::from_json_str(&json, today).expect("a valid registration reads back");
            assert_eq!(again, reg, "a registration survives a round trip");
        }
        Err(e) => assert!(!e.problems.is_empty(), "a refusal names a problem"),
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        let _ = birth::validate(&value, today);
        let _ = serde_json::to_string(&value);
    }
    if let Ok(req) = serde_json::from_str::<wire::EnrollRequest>(&text) {
        assert!(
            admin::enroll(&ingest().server, &req).is_err(),
            "no enrolment without a token"
        );
    }
    if let Ok(token) = crvs_schema::enrol::EnrolmentToken::parse(&text) {
        assert_eq!(
            crvs_schema::enrol::EnrolmentToken::parse(&token.to_text()).as_ref(),
            Ok(&token),
            "a token survives a round trip"
        );
    }
    let _ = serde_json::from_str::<Transition>(&text);
    let _ = serde_json::from_str::<ServerPart>(&text);
    let _ = serde_json::from_str::<wire::EnrollResponse>(&text);
}
