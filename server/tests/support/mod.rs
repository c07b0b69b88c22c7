//! A scripted tablet for the server's tests and benchmark: it enrols
//! through the library, builds records with `crvs-schema` and seals change
//! sets and sync requests exactly as the wire format says.
#![allow(dead_code)]

use automerge::{ActorId, AutoCommit};
use crvs_schema::evidence::IssuanceProof;
use crvs_schema::record::{self, RecordKind};
use crvs_schema::wire::{self, ChangeSet, Hash, RecordChanges, SignedChangeSet, SyncRequest, SyncResponse};
use crvs_schema::workflow::{Action, Transition};
use crvs_server::{Server, admin};
use ed25519_dalek::SigningKey;
use serde_json::Value;

/// The commune most tests use.
pub const OFFICE: &str = "171003";

/// The fixture `birth-sok-dara.json`.
pub fn birth() -> Value {
    serde_json::from_str(include_str!("../../../fixtures/birth-sok-dara.json")).expect("fixture parses")
}

/// The first `n` births of the benchmark data set.
pub fn bench_births(n: usize) -> Vec<Value> {
    // The full data set where it exists (benchmarks), else the committed
    // sample (tests on a clean clone).
    let full = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/births-sample.jsonl");
    let text = std::fs::read_to_string(full)
        .or_else(|_| std::fs::read_to_string(sample))
        .expect("bench data");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| serde_json::from_str(l).expect("bench line parses"))
        .collect()
}

/// A transition by `by` at a fixed time.
pub fn step(action: Action, by: &str) -> Transition {
    Transition {
        action,
        by: by.into(),
        at_ms: 1_764_300_000_000,
        device: "tablet".into(),
        reason: if action == Action::Reject {
            Some("documents missing".into())
        } else {
            None
        },
        notification: None,
        code: None,
    }
}

/// A tablet: its key, its device id, its hash chain.
pub struct Tablet {
    pub key: SigningKey,
    pub device_id: [u8; 16],
    pub office: String,
    pub next_seq: u64,
    pub last_hash: Hash,
    pub cursor: u64,
    /// The last request counter used.
    pub counter: std::cell::Cell<u64>,
    /// The store's lineage (sync format 3).
    pub lineage: [u8; 16],
}

/// The enrolment request of a tablet with `key`, for the printed `token`.
pub fn enroll_request(token: &str, key: &SigningKey, office: Option<&str>) -> wire::EnrollRequest {
    let token = crvs_schema::enrol::EnrolmentToken::parse(token).expect("a token");
    let mut nonce = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
    crvs_schema::enrol::enroll_request(&token, &key.verifying_key().to_bytes(), office, nonce)
}

impl Tablet {
    /// Enrols a new tablet for `office` through the library.
    pub fn enroll(server: &Server, office: &str) -> Tablet {
        let token = admin::create_token(server, office, 3_600_000).expect("token");
        let key = SigningKey::generate(&mut rand::rng());
        let resp = admin::enroll(server, &enroll_request(&token.token, &key, Some(office))).expect("enrol");
        Tablet::from_enrolment(key, &resp.device_id, &resp.office)
    }

    /// A tablet from an enrolment answer.
    pub fn from_enrolment(key: SigningKey, device_id: &str, office: &str) -> Tablet {
        Tablet {
            key,
            device_id: *uuid::Uuid::parse_str(device_id).expect("uuid").as_bytes(),
            office: office.into(),
            next_seq: 1,
            last_hash: [0; 32],
            cursor: 0,
            counter: std::cell::Cell::new(0),
            lineage: rand::random(),
        }
    }

    /// The automerge actor of this tablet.
    pub fn actor(&self) -> ActorId {
        ActorId::from(self.device_id)
    }

    /// A new birth record document in `office`, submitted by "clerk", then
    /// taken through `more` steps (verify by "checker", approve by
    /// "registrar", ...).
    pub fn new_doc(&self, office: &str, data: &Value, more: &[Action]) -> AutoCommit {
        let mut doc = record::new_record(
            self.actor(),
            RecordKind::Birth,
            office,
            data,
            &step(Action::Submit, "clerk"),
        )
        .expect("new record");
        for a in more {
            let by = match a {
                Action::Verify => "checker",
                _ => "registrar",
            };
            record::append_transition(&mut doc, &step(*a, by)).expect("transition");
        }
        doc
    }

    /// Every change of a document, raw.
    pub fn all_changes(doc: &mut AutoCommit) -> Vec<Vec<u8>> {
        doc.get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// A new record as a real tablet first sends it: one document chunk.
    pub fn document_chunk(doc: &mut AutoCommit) -> Vec<Vec<u8>> {
        vec![doc.save_nocompress()]
    }

    /// The changes made since `heads`, raw.
    pub fn changes_since(doc: &mut AutoCommit, heads: &[automerge::ChangeHash]) -> Vec<Vec<u8>> {
        doc.get_changes(heads)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// Seals the next change set of this tablet and advances its chain.
    pub fn seal(&mut self, records: Vec<RecordChanges>) -> Vec<u8> {
        let body = ChangeSet {
            prev_hash: self.last_hash,
            device_clock_ms: now_ms(),
            records,
        };
        let cs = SignedChangeSet::seal(&self.key, self.device_id, self.next_seq, &body).expect("seal");
        self.next_seq += 1;
        self.last_hash = cs.hash();
        cs.into_bytes()
    }

    /// Seals a sync request carrying `change_sets`, with the next request
    /// counter.
    pub fn request(&self, change_sets: Vec<Vec<u8>>) -> Vec<u8> {
        self.request_with_evidence(change_sets, Vec::new())
    }

    /// A request that sends nothing and asks which of change sets
    /// `from..=to` arrived (their answer was lost).
    pub fn asking(&self, from: u64, to: u64) -> Vec<u8> {
        self.seal_request(Vec::new(), Vec::new(), Some(wire::SeqRange { from, to }))
    }

    /// [`Tablet::request`] with KIdC proofs.
    pub fn request_with_evidence(&self, change_sets: Vec<Vec<u8>>, evidence: Vec<IssuanceProof>) -> Vec<u8> {
        self.seal_request(change_sets, evidence, None)
    }

    /// Seals a sync request with the next request counter.
    fn seal_request(
        &self,
        change_sets: Vec<Vec<u8>>,
        evidence: Vec<IssuanceProof>,
        resume: Option<wire::SeqRange>,
    ) -> Vec<u8> {
        self.counter.set(self.counter.get() + 1);
        SyncRequest {
            device_id: self.device_id,
            counter: self.counter.get(),
            cursor: self.cursor,
            device_clock_ms: now_ms(),
            change_sets,
            evidence,
            lineage: self.lineage,
            adopted: None,
            resume,
            report: None,
        }
        .seal(&self.key)
        .expect("seal request")
    }
}

/// The changes of one record, for a change set.
pub fn record_changes(record_id: [u8; 16], changes: Vec<Vec<u8>>) -> RecordChanges {
    RecordChanges { record_id, changes }
}

/// Now, by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh record id.
pub fn new_record_id() -> [u8; 16] {
    uuid::Uuid::now_v7().into_bytes()
}

/// Opens a sealed answer with the server's key.
pub fn open_response(server: &Server, bytes: &[u8]) -> SyncResponse {
    SyncResponse::open(bytes, &server.signing_key().verifying_key()).expect("answer opens")
}

/// Applies the server's changes to record `record_id` in answer `resp` to
/// the tablet's copy `doc`, and reads the record's server part.
pub fn apply_updates(resp: &SyncResponse, record_id: [u8; 16], doc: &mut AutoCommit) -> record::ServerPart {
    for u in resp.updates.iter().filter(|u| u.record_id == record_id) {
        let changes = u
            .changes
            .iter()
            .map(|c| automerge::Change::from_bytes(c.clone()).expect("server change decodes"));
        doc.apply_changes(changes).expect("server changes apply");
    }
    record::read(doc).expect("record reads").server
}
