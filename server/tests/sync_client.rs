//! The tablet's sync client (`crvs_core::Registrar`) against the real
//! server (`crvs_server::Server`, SQLite in a temp dir), in process,
//! through a transport that can lose answers or tamper with them:
//! batching, acknowledgements, lost answers, a server restored from a
//! backup, a wrong acknowledgement, an impostor, cancellation, a failing
//! observer. The same client over HTTP against the server process is in
//! `tests/end_to_end.rs`.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crvs_core::crypto::KdfParams;
use crvs_core::{Error, Registrar, SyncPhase, SyncProgress, SyncState, Transport};
use crvs_schema::Kidc;
use crvs_schema::wire::{EnrollRequest, EnrollResponse, SyncResponse};
use crvs_schema::workflow::Status;
use crvs_server::{Server, admin};
use ed25519_dalek::SigningKey;

const COMMUNE: &str = "171003";

fn fixture(name: &str) -> String {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn sok_dara() -> String {
    fixture("birth-sok-dara.json")
}

fn no_given_name() -> String {
    fixture("birth-no-given-name.json")
}

/// The real server behind a transport with faults on demand.
struct Wire {
    dir: PathBuf,
    /// `None` only while a backup is being restored.
    server: RefCell<Option<Server>>,
    /// Answers to drop after the server committed them.
    lose_answers: Cell<u32>,
    /// Flip a bit of the first acknowledgement's hash, re-signed with the
    /// server's key (a buggy server).
    wrong_ack_hash: Cell<bool>,
    /// Re-sign answers with another key (an impostor).
    impostor: Cell<bool>,
    /// A machine in the middle of the enrolment: it forwards the request
    /// to the real server, then puts its own key in the answer and signs
    /// it with that key.
    swap_enrolment_key: Cell<bool>,
    /// Every request seen: the change sets it carried, and those it asked
    /// about (their answer was lost).
    seen: RefCell<Vec<Seen>>,
}

/// A request as the transport saw it: how many change sets it carried,
/// and the range it asked about.
type Seen = (usize, Option<(u64, u64)>);

impl Wire {
    fn open(dir: &Path) -> Wire {
        Wire {
            dir: dir.to_path_buf(),
            server: RefCell::new(Some(Server::open(dir).expect("server opens"))),
            lose_answers: Cell::new(0),
            wrong_ack_hash: Cell::new(false),
            impostor: Cell::new(false),
            swap_enrolment_key: Cell::new(false),
            seen: RefCell::new(Vec::new()),
        }
    }

    fn server(&self) -> std::cell::Ref<'_, Server> {
        std::cell::Ref::map(self.server.borrow(), |s| {
            s.as_ref().expect("the server is running")
        })
    }

    fn count(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.dir.join(crvs_server::DB_FILE)).expect("db");
        conn.query_row(sql, [], |r| r.get(0)).expect("count")
    }

    fn applied_change_sets(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM change_set_log")
    }

    /// A consistent copy of the server's database, as an operator's
    /// nightly backup would take.
    fn backup(&self) -> Vec<u8> {
        let copy = self.dir.join("backup.db");
        let _ = std::fs::remove_file(&copy);
        let conn = rusqlite::Connection::open(self.dir.join(crvs_server::DB_FILE)).expect("db");
        conn.execute("VACUUM INTO ?1", [copy.to_str().expect("utf-8 path")])
            .expect("backup");
        std::fs::read(&copy).expect("backup bytes")
    }

    /// Stops the server, puts `backup` in place of its database, and
    /// starts it again (same key, older data).
    fn restore(&self, backup: &[u8]) {
        let mut server = self.server.borrow_mut();
        // Close the old database before replacing its files.
        *server = None;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{}{suffix}", crvs_server::DB_FILE)));
        }
        std::fs::write(self.dir.join(crvs_server::DB_FILE), backup).expect("restore");
        *server = Some(Server::open(&self.dir).expect("server reopens"));
    }
}

impl Transport for Wire {
    fn enroll(&self, request: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
        let mut answer =
            admin::enroll(&self.server(), request).map_err(|e| Error::Protocol(e.to_string()))?;
        if self.swap_enrolment_key.get() {
            let mallory = SigningKey::from_bytes(&[6; 32]);
            answer.server_public_key = hex::encode(mallory.verifying_key().to_bytes());
            answer.sign(&mallory, &request.public_key, &request.nonce);
        }
        Ok(answer)
    }

    fn sync(&self, bytes: &[u8]) -> crvs_core::Result<Vec<u8>> {
        if let Ok(r) = crvs_schema::wire::SyncRequest::decode_unverified(bytes) {
            self.seen
                .borrow_mut()
                .push((r.change_sets.len(), r.resume.map(|r| (r.from, r.to))));
        }
        let server = self.server();
        let answer = server.handle_sync(bytes).map_err(|e| match e {
            crvs_server::ApiError::ReplayedRequest { last_counter } => Error::CounterBehind(last_counter),
            e => Error::Protocol(e.to_string()),
        })?;
        if self.lose_answers.get() > 0 {
            self.lose_answers.set(self.lose_answers.get() - 1);
            return Err(Error::Offline("connection reset while reading the answer".into()));
        }
        if self.wrong_ack_hash.get() || self.impostor.get() {
            let mut resp = SyncResponse::open(&answer, &server.signing_key().verifying_key()).expect("opens");
            if self.wrong_ack_hash.get()
                && let Some(ack) = resp.acks.first_mut()
            {
                ack.hash[0] ^= 1;
            }
            let key = if self.impostor.get() {
                SigningKey::from_bytes(&[6; 32])
            } else {
                server.signing_key().clone()
            };
            return Ok(resp.seal(&key).expect("seals"));
        }
        Ok(answer)
    }
}

/// A server and a tablet store, not enrolled yet.
fn unenrolled() -> (tempfile::TempDir, Registrar, Wire) {
    let dir = tempfile::tempdir().expect("temp dir");
    let wire = Wire::open(&dir.path().join("server"));
    let tablet = Registrar::init_with_kdf(
        dir.path().join("tablet"),
        &"correct horse battery staple".into(),
        COMMUNE,
        KdfParams::INSECURE_FOR_TESTS,
    )
    .expect("store");
    (dir, tablet, wire)
}

fn setup() -> (tempfile::TempDir, Registrar, Wire) {
    let (dir, tablet, wire) = unenrolled();
    let token = admin::create_token(&wire.server(), COMMUNE, 3_600_000).expect("token");
    tablet
        .enroll_with(&wire, "http://in-process", &token.token)
        .expect("enrols");
    (dir, tablet, wire)
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
    // The tablet's KIdCs are the ones in the server's issuance log.
    assert_eq!(server.count("SELECT COUNT(*) FROM kidc_issuance"), 2);
    for k in &kidcs {
        let n = server.count(&format!(
            "SELECT COUNT(*) FROM kidc_issuance WHERE kidc = '{}'",
            Kidc::parse(k).unwrap()
        ));
        assert_eq!(n, 1);
    }

    let again = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!((again.pushed, again.pulled, again.change_sets_created), (0, 0, 0));
    assert_eq!(server.applied_change_sets(), 1);
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
    // A later edit-free sync sends nothing: the server's change is not
    // echoed back (the server would refuse a change with its own actor).
    assert_eq!(r.sync_with(&server, &quiet()).unwrap().change_sets_created, 0);
    assert_eq!(r.record(&id).unwrap().view.status().unwrap(), Status::Registered);
    assert_eq!(server.applied_change_sets(), 2);
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
    assert_eq!(server.count("SELECT COUNT(*) FROM records"), 150);
    assert_eq!(server.applied_change_sets(), 2);
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
    assert_eq!(server.applied_change_sets(), 1);
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Pending);
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(
        (report.pushed, report.kidcs_received, report.change_sets_created),
        (1, 1, 0)
    );
    assert_eq!(server.applied_change_sets(), 1, "the resend was applied twice");
    assert_eq!(server.count("SELECT COUNT(*) FROM kidc_issuance"), 1);
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Synced);
    assert!(r.record(&id).unwrap().view.server.kidc.is_some());
}

#[test]
fn a_server_restored_from_a_backup_gets_the_missing_change_sets_again() {
    let (_dir, r, server) = setup();
    // The backup is taken after enrolment, before any registration.
    let backup = server.backup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    r.register_birth(&no_given_name(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(server.applied_change_sets(), 2);
    server.restore(&backup);
    assert_eq!(server.applied_change_sets(), 0);
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.resent_from, Some(1));
    assert_eq!(report.change_sets_created, 0);
    assert_eq!(report.pending, 0);
    assert_eq!(server.applied_change_sets(), 2);
    assert_eq!(server.count("SELECT COUNT(*) FROM records"), 2);
}

#[test]
fn a_new_change_set_after_the_server_lost_state_is_refused_by_gap_then_resent_in_order() {
    let (_dir, r, server) = setup();
    let backup = server.backup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    server.restore(&backup);
    r.register_birth(&no_given_name(), "clerk").unwrap();
    // The tablet sends seq 2; the server expects 1: it resends 1 then 2.
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.resent_from, Some(1));
    assert_eq!(report.pending, 0);
    assert_eq!(server.applied_change_sets(), 2);
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
    assert_eq!(server.applied_change_sets(), 1);
}

#[test]
fn an_answer_signed_by_another_key_is_refused() {
    let (_dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    server.impostor.set(true);
    assert!(matches!(r.sync_with(&server, &quiet()), Err(Error::Protocol(_))));
    server.impostor.set(false);
    assert_eq!(r.sync_with(&server, &quiet()).unwrap().pushed, 1);
}

#[test]
fn an_enrolment_answer_with_a_swapped_server_key_is_refused_and_the_token_still_enrols_the_tablet() {
    let (_dir, tablet, wire) = unenrolled();
    let token = admin::create_token(&wire.server(), COMMUNE, 3_600_000).expect("token");
    wire.swap_enrolment_key.set(true);
    match tablet.enroll_with(&wire, "http://in-process", &token.token) {
        Err(Error::Protocol(m)) => assert!(m.contains("does not match the enrolment token"), "{m}"),
        other => panic!("the swapped key must be refused, got {other:?}"),
    }
    assert!(matches!(
        tablet.sync_with(&wire, &quiet()),
        Err(Error::NotEnrolled)
    ));
    // Without the machine in the middle, the same token enrols the tablet,
    // as the device the server already made for its key.
    wire.swap_enrolment_key.set(false);
    let e = tablet
        .enroll_with(&wire, "http://in-process", &token.token)
        .expect("the token is still good");
    assert_eq!(wire.count("SELECT COUNT(*) FROM devices"), 1);
    let devices = admin::devices(wire.server().storage()).expect("devices");
    assert_eq!(devices[0].device_id, e.device_id);
    tablet.register_birth(&sok_dara(), "clerk").unwrap();
    assert_eq!(tablet.sync_with(&wire, &quiet()).unwrap().pushed, 1);
}

#[test]
fn a_mistyped_token_is_refused_on_the_tablet_before_anything_is_sent() {
    let (_dir, tablet, wire) = unenrolled();
    let token = admin::create_token(&wire.server(), COMMUNE, 3_600_000)
        .expect("token")
        .token;
    // One symbol changed.
    let mut typo: Vec<char> = token.chars().collect();
    typo[5] = if typo[5] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    match tablet.enroll_with(&wire, "http://in-process", &typo) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("mistyped"), "{m}"),
        other => panic!("expected a typo error, got {other:?}"),
    }
    assert_eq!(wire.count("SELECT COUNT(*) FROM devices"), 0);
    tablet
        .enroll_with(&wire, "http://in-process", &token)
        .expect("the real token enrols");
}

#[test]
fn a_tablet_store_restored_from_an_old_copy_continues_above_the_servers_request_counter() {
    let (dir, r, server) = setup();
    r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    // A copy of the tablet's store now (closed first), then more syncs.
    let store = dir.path().join("tablet");
    let copy = dir.path().join("tablet-copy");
    drop(r);
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&store).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let r = Registrar::open(&store, &"correct horse battery staple".into()).unwrap();
    for _ in 0..3 {
        r.sync_with(&server, &quiet()).unwrap();
    }
    drop(r);
    // The old copy comes back: its counter is behind the server's.
    let restored = Registrar::open(&copy, &"correct horse battery staple".into()).unwrap();
    let report = restored.sync_with(&server, &quiet()).expect("sync continues");
    assert!(report.requests >= 2, "one refused as behind, then one above it");
    restored
        .sync_with(&server, &quiet())
        .expect("and the next one too");
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
    assert_eq!(report.records_pending, 1, "the record waits in the outbox");
    assert_eq!(
        seen.borrow().as_slice(),
        [SyncPhase::Preparing, SyncPhase::Pushing]
    );
    assert_eq!(server.applied_change_sets(), 0);
    let progress = RefCell::new(Vec::new());
    let watch = |p: SyncProgress| {
        progress.borrow_mut().push(p);
        ControlFlow::Continue(())
    };
    let report = r.sync_with(&server, &watch).unwrap();
    assert!(!report.cancelled);
    assert_eq!((report.pushed, report.records_pending), (1, 0));
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
    assert_eq!(server.applied_change_sets(), 1);
    r.check().unwrap();
}

#[test]
fn a_device_blocked_for_good_is_unblocked_its_change_set_set_aside_and_the_next_ones_apply() {
    blocked_then_unblocked(false);
}

/// The answer that told the tablet its change set was set aside is lost:
/// the next sync asks what arrived, and learns it from the server's log.
#[test]
fn a_lost_set_aside_answer_is_learnt_by_asking_and_the_record_is_still_set_aside() {
    blocked_then_unblocked(true);
}

fn blocked_then_unblocked(lose_the_set_aside_answer: bool) {
    let (_dir, r, server) = setup();
    let first = r.register_birth(&sok_dara(), "clerk").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    // The device is moved to another commune on the server: the tablet's
    // next change set lies outside its office, a refusal no resend cures.
    let device_id = r.device_id().unwrap().expect("enrolled");
    {
        let conn = rusqlite::Connection::open(server.dir.join(crvs_server::DB_FILE)).unwrap();
        conn.execute(
            "UPDATE devices SET office = '171004' WHERE device_id = ?1",
            [&device_id],
        )
        .unwrap();
    }
    let stuck = r.register_birth(&sok_dara(), "clerk").unwrap();
    for _ in 0..2 {
        match r.sync_with(&server, &quiet()) {
            Err(Error::ServerRefused { code, .. }) => assert_eq!(code, "out_of_scope"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let devices = admin::devices(server.server().storage()).unwrap();
    assert_eq!(
        devices[0].blocked.as_ref().map(|b| b.code.as_str()),
        Some("out_of_scope")
    );

    // Unblocking needs an operator and a reason, and a blocked device.
    assert!(admin::unblock(&server.server(), &device_id, "", "x").is_err());
    let u = admin::unblock(
        &server.server(),
        &device_id,
        "op-1",
        "tablet moved; records re-entered",
    )
    .unwrap();
    assert_eq!((u.seq, u.code.as_str()), (2, "out_of_scope"));

    // Back in its commune. The stuck change set is set aside; the next
    // registration goes through.
    {
        let conn = rusqlite::Connection::open(server.dir.join(crvs_server::DB_FILE)).unwrap();
        conn.execute(
            "UPDATE devices SET office = '171003' WHERE device_id = ?1",
            [&device_id],
        )
        .unwrap();
    }
    if lose_the_set_aside_answer {
        server.lose_answers.set(1);
        assert!(matches!(r.sync_with(&server, &quiet()), Err(Error::Offline(_))));
        assert_eq!(
            server.count("SELECT COUNT(*) FROM set_aside"),
            1,
            "set aside, answer lost"
        );
    }
    let report = r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(report.pending, 0, "{report:?}");
    if lose_the_set_aside_answer {
        // It asked about change set 2 and sent nothing again.
        assert_eq!(server.seen.borrow().last(), Some(&(0, Some((2, 2)))));
    }
    let state = |id| {
        r.list()
            .unwrap()
            .into_iter()
            .find(|s| &s.id == id)
            .unwrap()
            .sync_state
    };
    assert_eq!(
        state(&stuck),
        SyncState::SetAside,
        "the tablet knows its record was set aside"
    );
    assert_eq!(state(&first), SyncState::Synced);
    assert_eq!(server.count("SELECT COUNT(*) FROM set_aside"), 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM set_aside_records"), 1);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM records"),
        1,
        "nothing of it applied"
    );
    assert!(
        admin::devices(server.server().storage()).unwrap()[0]
            .blocked
            .is_none()
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM unblocks"), 1, "audited");

    // Further edits of the set-aside record are never sent; new records are.
    r.verify(&stuck, "checker").unwrap();
    let next = r.register_birth(&sok_dara(), "clerk").unwrap();
    r.verify(&next, "checker").unwrap();
    r.approve(&next, "registrar").unwrap();
    r.sync_with(&server, &quiet()).unwrap();
    assert_eq!(state(&next), SyncState::Synced);
    assert_eq!(state(&stuck), SyncState::SetAside);
    assert_eq!(server.count("SELECT COUNT(*) FROM records"), 2);
    assert_eq!(server.count("SELECT COUNT(*) FROM kidc_issuance"), 1);
    r.check().unwrap();
}
