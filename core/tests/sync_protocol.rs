//! The sync client against a loopback implementation of the server's
//! protocol (built from `crvs-schema`'s wire types, in process): batching,
//! acknowledgements, lost answers, a server restored from a backup, a
//! wrong acknowledgement, cancellation. The real server is exercised by
//! the end-to-end tests in `tests/`.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::ControlFlow;

use automerge::{ActorId, AutoCommit, Change};
use common::*;
use crvs_core::{Error, Registrar, SyncPhase, SyncProgress, SyncState, Transport};
use crvs_schema::kidc::{Category, Kidc};
use crvs_schema::record;
use crvs_schema::wire::{
    self, Ack, AckOutcome, EnrollRequest, EnrollResponse, Hash, RecordUpdate, Refusal, RefusalCode,
    SignedChangeSet, SyncRequest, SyncResponse,
};
use crvs_schema::workflow::Status;
use ed25519_dalek::{SigningKey, VerifyingKey};

const SERVER_ACTOR: [u8; 16] = [0xee; 16];

#[derive(Default)]
struct State {
    next_seq: u64,
    last_hash: Hash,
    hashes: HashMap<u64, Hash>,
    docs: HashMap<[u8; 16], AutoCommit>,
    feed: Vec<RecordUpdate>,
    applied: u64,
}

struct Loopback {
    key: SigningKey,
    device_key: RefCell<Option<VerifyingKey>>,
    state: RefCell<State>,
    lose_answers: Cell<u32>,
    wrong_ack_hash: Cell<bool>,
}

impl Loopback {
    fn new() -> Loopback {
        Loopback {
            key: SigningKey::from_bytes(&[5; 32]),
            device_key: RefCell::new(None),
            state: RefCell::new(State {
                next_seq: 1,
                ..State::default()
            }),
            lose_answers: Cell::new(0),
            wrong_ack_hash: Cell::new(false),
        }
    }

    /// The server lost everything (restored from an empty backup).
    fn lose_state(&self) {
        *self.state.borrow_mut() = State {
            next_seq: 1,
            ..State::default()
        };
    }

    fn apply(&self, st: &mut State, cs: &SignedChangeSet, device: &VerifyingKey) {
        let body = cs.open(device).expect("signature");
        assert_eq!(body.prev_hash, st.last_hash, "hash chain");
        assert!(body.records.len() <= 100);
        for rc in body.records {
            let doc = st
                .docs
                .entry(rc.record_id)
                .or_insert_with(|| AutoCommit::new().with_actor(ActorId::from(SERVER_ACTOR)));
            let changes: Vec<Change> = rc
                .changes
                .iter()
                .flat_map(|c| record::decode_changes(c).unwrap())
                .collect();
            for c in &changes {
                assert_ne!(
                    c.actor_id(),
                    &ActorId::from(SERVER_ACTOR),
                    "the tablet sent the server's change back"
                );
            }
            doc.apply_changes(changes).unwrap();
            let view = record::read(doc).unwrap();
            if view.status().unwrap() == Status::Approved {
                let before = doc.get_heads();
                let kidc = Kidc::generate(Category::CITIZEN, &mut rand::rng());
                record::set_registration(doc, &kidc, 1).unwrap();
                let changes = doc
                    .get_changes(&before)
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect();
                st.feed.push(RecordUpdate {
                    record_id: rc.record_id,
                    changes,
                });
            }
        }
        st.applied += 1;
        st.hashes.insert(cs.seq(), cs.hash());
        st.last_hash = cs.hash();
        st.next_seq += 1;
    }
}

impl Transport for Loopback {
    fn enroll(&self, request: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
        let pk: [u8; 32] = hex::decode(&request.public_key).unwrap().try_into().unwrap();
        *self.device_key.borrow_mut() = Some(VerifyingKey::from_bytes(&pk).unwrap());
        Ok(EnrollResponse {
            device_id: uuid::Uuid::now_v7().to_string(),
            office: COMMUNE.into(),
            server_public_key: hex::encode(self.key.verifying_key().to_bytes()),
        })
    }

    fn sync(&self, bytes: &[u8]) -> crvs_core::Result<Vec<u8>> {
        let device = self.device_key.borrow().expect("enrolled");
        wire::verify_request(bytes, &device).expect("request signature");
        let req = SyncRequest::decode_unverified(bytes).unwrap();
        let mut st = self.state.borrow_mut();
        let mut acks = Vec::new();
        let mut refusal = None;
        for raw in req.change_sets {
            let cs = SignedChangeSet::from_bytes(raw).unwrap();
            let seq = cs.seq();
            if seq < st.next_seq {
                assert_eq!(st.hashes[&seq], cs.hash(), "a resend must be the same bytes");
                acks.push(Ack {
                    seq,
                    hash: cs.hash(),
                    outcome: AckOutcome::AlreadyApplied,
                });
                continue;
            }
            if seq > st.next_seq {
                refusal = Some(Refusal {
                    seq,
                    code: RefusalCode::SequenceGap,
                    expected_seq: Some(st.next_seq),
                    message: "sequence gap".into(),
                });
                break;
            }
            self.apply(&mut st, &cs, &device);
            let mut hash = cs.hash();
            if self.wrong_ack_hash.get() {
                hash[0] ^= 1;
            }
            acks.push(Ack {
                seq,
                hash,
                outcome: AckOutcome::Applied,
            });
        }
        let from = (req.cursor as usize).min(st.feed.len());
        let resp = SyncResponse {
            request_hash: wire::request_hash(bytes),
            server_time_ms: 1,
            acks,
            refusal,
            next_seq: st.next_seq,
            updates: st.feed[from..].to_vec(),
            cursor: st.feed.len() as u64,
            more: false,
        };
        let sealed = resp.seal(&self.key).unwrap();
        if self.lose_answers.get() > 0 {
            self.lose_answers.set(self.lose_answers.get() - 1);
            return Err(Error::Offline("connection reset while reading the answer".into()));
        }
        Ok(sealed)
    }
}

fn setup() -> (tempfile::TempDir, Registrar, Loopback) {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let server = Loopback::new();
    r.enroll_with(&server, "http://loopback", "token").unwrap();
    (dir, r, server)
}

fn quiet() -> impl Fn(SyncProgress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

#[test]
fn approved_births_come_back_with_a_kidc_and_a_second_sync_changes_nothing() {
    let (_dir, r, server) = setup();
    let ids: Vec<_> = (0..3)
        .map(|_| r.register_birth(&sok_dara(), "clerk").unwrap())
        .collect();
    for id in &ids[..2] {
        r.verify(id, "checker").unwrap();
        r.approve(id, "registrar").unwrap();
    }
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.change_sets_created, 1);
    assert_eq!((report.pushed, report.records_pushed), (1, 3));
    assert_eq!((report.pulled, report.kidcs_received, report.pending), (2, 2, 0));
    let list = r.list().unwrap();
    let kidcs: Vec<_> = list.iter().filter_map(|s| s.kidc.clone()).collect();
    assert_eq!(kidcs.len(), 2);
    assert_ne!(kidcs[0], kidcs[1]);
    assert!(kidcs.iter().all(|k| Kidc::parse(k).is_ok()));
    assert!(list.iter().all(|s| s.sync_state == SyncState::Synced));
    let shown: serde_json::Value = serde_json::from_str(&r.record_json(&ids[0]).unwrap()).unwrap();
    assert_eq!(shown["status"], "registered");
    assert_eq!(shown["kidc"], shown["server"]["kidc"]);
    assert!(shown["server_updated_at"].is_string());

    let again = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!((again.pushed, again.pulled, again.change_sets_created), (0, 0, 0));
    assert_eq!(server.state.borrow().applied, 1);
    r.check().unwrap();
}

#[test]
fn edits_after_a_sync_go_out_without_the_servers_changes() {
    let (_dir, r, server) = setup();
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Synced);
    r.verify(&id, "checker").unwrap();
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Pending);
    r.approve(&id, "registrar").unwrap();
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!((report.pushed, report.kidcs_received), (1, 1));
    // A later edit-free sync sends nothing (the server's KIdC change is not
    // echoed back: the loopback asserts it).
    assert_eq!(r.sync_with(&server, &quiet()).unwrap().change_sets_created, 0);
    assert_eq!(r.record(&id).unwrap().view.status().unwrap(), Status::Registered);
}

#[test]
fn a_hundred_and_fifty_records_travel_in_two_change_sets() {
    let (_dir, r, server) = setup();
    for _ in 0..150 {
        r.register_birth(&no_given_name(), "clerk").unwrap();
    }
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.change_sets_created, 2);
    assert_eq!((report.pushed, report.records_pushed), (2, 150));
    assert_eq!(server.state.borrow().docs.len(), 150);
    assert_eq!(server.state.borrow().next_seq, 3);
    r.check().unwrap();
}

#[test]
fn a_lost_answer_is_resent_acknowledged_again_and_applied_once() {
    let (_dir, r, server) = setup();
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    r.verify(&id, "checker").unwrap();
    r.approve(&id, "registrar").unwrap();
    server.lose_answers.set(1);
    assert!(matches!(r.sync_with(&server, &quiet()), Err(Error::Offline(_))));
    assert_eq!(server.state.borrow().applied, 1);
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Pending);
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(
        (report.pushed, report.kidcs_received, report.change_sets_created),
        (1, 1, 0)
    );
    assert_eq!(server.state.borrow().applied, 1, "the resend was applied twice");
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Synced);
    assert!(r.record(&id).unwrap().view.server.kidc.is_some());
}

#[test]
fn a_server_restored_from_a_backup_gets_the_missing_change_sets_again() {
    let (_dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    r.register_birth(&no_given_name(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(server.state.borrow().next_seq, 3);
    server.lose_state();
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.resent_from, Some(1));
    assert_eq!(report.change_sets_created, 0);
    assert_eq!(report.pending, 0);
    let st = server.state.borrow();
    assert_eq!((st.next_seq, st.applied, st.docs.len()), (3, 2, 2));
}

#[test]
fn a_new_change_set_after_the_server_lost_state_is_refused_by_gap_then_resent_in_order() {
    let (_dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    server.lose_state();
    r.register_birth(&no_given_name(), "clerk").unwrap();
    // The tablet sends seq 2; the server expects 1: it resends 1 then 2.
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.resent_from, Some(1));
    assert_eq!(server.state.borrow().next_seq, 3);
    assert_eq!(report.pending, 0);
}

#[test]
fn an_acknowledgement_with_a_wrong_hash_is_refused_and_nothing_is_marked() {
    let (_dir, r, server) = setup();
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    server.wrong_ack_hash.set(true);
    assert!(matches!(r.sync_with(&server, &quiet()), Err(Error::Protocol(_))));
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Pending);
    server.wrong_ack_hash.set(false);
    // The server applied it; the resend is acknowledged properly.
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.pushed, 1);
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Synced);
}

#[test]
fn an_answer_signed_by_another_key_is_refused() {
    let (_dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    struct Impostor<'a>(&'a Loopback);
    impl Transport for Impostor<'_> {
        fn enroll(&self, _: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
            unreachable!()
        }
        fn sync(&self, bytes: &[u8]) -> crvs_core::Result<Vec<u8>> {
            let answer = self.0.sync(bytes)?;
            let resp = SyncResponse::open(&answer, &self.0.key.verifying_key()).unwrap();
            Ok(resp.seal(&SigningKey::from_bytes(&[6; 32])).unwrap())
        }
    }
    assert!(matches!(
        r.sync_with(&Impostor(&server), &quiet()),
        Err(Error::Protocol(_))
    ));
    assert_eq!(r.sync_with(&server, &quiet()).unwrap().pushed, 1);
}

#[test]
fn a_cancelled_sync_stops_cleanly_and_the_next_one_completes() {
    let (_dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    let seen = RefCell::new(Vec::new());
    let cancel = |p: SyncProgress| {
        seen.borrow_mut().push(p.phase);
        if p.phase == SyncPhase::Pushing {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let report = r.sync_with(&server, &cancel).unwrap();
    assert!(report.cancelled);
    assert_eq!((report.pushed, report.pending), (0, 1));
    assert_eq!(
        seen.borrow().as_slice(),
        [SyncPhase::Preparing, SyncPhase::Pushing]
    );
    assert_eq!(server.state.borrow().applied, 0);
    let progress = RefCell::new(Vec::new());
    let watch = |p: SyncProgress| {
        progress.borrow_mut().push(p);
        ControlFlow::Continue(())
    };
    let report = r.sync_with(&server, &watch).unwrap();
    assert!(!report.cancelled);
    assert_eq!(report.pushed, 1);
    let last = *progress.borrow().last().unwrap();
    assert_eq!((last.phase, last.pushed, last.total), (SyncPhase::Done, 1, 1));
}

#[test]
fn a_panicking_observer_ends_the_sync_without_harm() {
    let (_dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    let boom = |p: SyncProgress| -> ControlFlow<()> {
        if p.phase == SyncPhase::Pulling {
            panic!("observer failure");
        }
        ControlFlow::Continue(())
    };
    let report = r.sync_with(&server, &boom).unwrap();
    assert!(report.cancelled);
    // The answer was stored before the observer ran.
    assert_eq!(report.pushed, 1);
    assert_eq!(r.sync_with(&server, &quiet()).unwrap().pushed, 0);
    r.check().unwrap();
}
