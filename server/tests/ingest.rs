//! The sync ingest, driven through `Server::handle_sync` on a real SQLite
//! file: every check of a change set, KIdC issuance, races.

mod support;

use std::path::Path;

use automerge::{AutoCommit, ObjType, ReadDoc, transaction::Transactable};
use crvs_schema::Kidc;
use crvs_schema::record;
use crvs_schema::wire::{AckOutcome, RefusalCode};
use crvs_schema::workflow::Action;
use crvs_server::{ApiError, Server, admin};
use support::{OFFICE, Tablet, birth, enroll_request, new_record_id, open_response, record_changes};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::open(dir.path()).expect("server opens");
    (dir, server)
}

/// Sends `change_sets` from `tablet` in one request, and opens the answer.
fn sync(server: &Server, tablet: &Tablet, change_sets: Vec<Vec<u8>>) -> crvs_schema::wire::SyncResponse {
    send(server, &tablet.request(change_sets))
}

/// Sends a sealed request, and opens the answer.
fn send(server: &Server, request: &[u8]) -> crvs_schema::wire::SyncResponse {
    open_response(server, &server.handle_sync(request).expect("sync"))
}

fn count(dir: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

fn kidcs(dir: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    let mut st = conn
        .prepare("SELECT record_id, kidc FROM kidc_issuance ORDER BY record_id")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// An approved birth's change set for `tablet`.
fn approved_birth(tablet: &mut Tablet) -> ([u8; 16], Vec<u8>) {
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    (id, cs)
}

/// The KIdC written into a record by the server's changes in an answer.
fn kidc_in_updates(
    resp: &crvs_schema::wire::SyncResponse,
    record_id: [u8; 16],
    doc: &mut AutoCommit,
) -> Option<Kidc> {
    support::apply_updates(resp, record_id, doc).kidc
}

#[test]
fn approved_births_get_valid_distinct_kidcs_that_reach_the_tablet() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let mut docs = Vec::new();
    let mut records = Vec::new();
    for _ in 0..20 {
        let id = new_record_id();
        let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
        records.push(record_changes(id, Tablet::all_changes(&mut doc)));
        docs.push((id, doc));
    }
    let cs = tablet.seal(records);
    let resp = sync(&server, &tablet, vec![cs]);
    assert!(resp.refusal.is_none());
    assert_eq!(resp.acks.len(), 1);
    assert_eq!(resp.acks[0].outcome, AckOutcome::Applied);
    assert_eq!(resp.next_seq, 2);
    let mut seen = std::collections::HashSet::new();
    for (id, doc) in &mut docs {
        let kidc = kidc_in_updates(&resp, *id, doc).expect("every approved birth has a KIdC");
        assert!(Kidc::parse(kidc.as_str()).is_ok());
        assert_eq!(kidc.category(), crvs_schema::kidc::Category::CITIZEN);
        assert!(seen.insert(kidc.to_string()), "KIdCs are distinct");
        let view = record::read(doc).expect("reads");
        assert_eq!(
            view.status().expect("status"),
            crvs_schema::workflow::Status::Registered
        );
        assert!(view.server.registered_at_ms.is_some());
    }
    assert_eq!(kidcs(dir.path()).len(), 20);
}

#[test]
fn a_new_record_sent_as_one_document_chunk_is_registered_like_its_changes() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::document_chunk(&mut doc))]);
    let resp = sync(&server, &tablet, vec![cs]);
    assert!(resp.refusal.is_none(), "{:?}", resp.refusal);
    assert!(kidc_in_updates(&resp, id, &mut doc).is_some());
    assert_eq!(kidcs(dir.path()).len(), 1);
    // A corrupted document chunk is refused as malformed, nothing stored.
    let mut bad = Tablet::document_chunk(&mut tablet.new_doc(OFFICE, &birth(), &[]));
    let last = bad[0].len() - 1;
    bad[0][last] ^= 0xff;
    let cs = tablet.seal(vec![record_changes(new_record_id(), bad)]);
    let resp = sync(&server, &tablet, vec![cs]);
    assert_eq!(
        resp.refusal.map(|r| r.code),
        Some(crvs_schema::wire::RefusalCode::Malformed)
    );
    assert_eq!(kidcs(dir.path()).len(), 1);
}

#[test]
fn a_birth_is_registered_only_once_it_is_approved() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[]);
    let cs1 = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let heads = doc.get_heads();
    record::append_transition(&mut doc, &support::step(Action::Verify, "checker")).expect("verify");
    let cs2 = tablet.seal(vec![record_changes(id, Tablet::changes_since(&mut doc, &heads))]);
    let r = sync(&server, &tablet, vec![cs1, cs2]);
    assert_eq!(r.acks.len(), 2);
    assert_eq!(kidcs(dir.path()).len(), 0, "no KIdC before approval");
    tablet.cursor = r.cursor;
    // The tablet merges the server's changes, then approves.
    for u in &r.updates {
        let changes = u
            .changes
            .iter()
            .map(|c| automerge::Change::from_bytes(c.clone()).expect("decodes"));
        doc.apply_changes(changes).expect("applies");
    }
    let heads = doc.get_heads();
    record::append_transition(&mut doc, &support::step(Action::Approve, "registrar")).expect("approve");
    let cs3 = tablet.seal(vec![record_changes(id, Tablet::changes_since(&mut doc, &heads))]);
    let r = sync(&server, &tablet, vec![cs3]);
    assert!(r.refusal.is_none(), "{:?}", r.refusal);
    assert!(kidc_in_updates(&r, id, &mut doc).is_some());
    assert_eq!(kidcs(dir.path()).len(), 1);
}

#[test]
fn resent_change_set_is_acknowledged_again_and_applied_once() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    let first = sync(&server, &tablet, vec![cs.clone()]);
    assert_eq!(first.acks[0].outcome, AckOutcome::Applied);
    for _ in 0..3 {
        let again = sync(&server, &tablet, vec![cs.clone()]);
        assert!(again.refusal.is_none());
        assert_eq!(again.acks[0].outcome, AckOutcome::AlreadyApplied);
        assert_eq!(again.acks[0].hash, first.acks[0].hash);
        assert_eq!(again.next_seq, 2);
    }
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 1);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 1);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"), 1);
}

#[test]
fn a_request_asking_what_arrived_is_acknowledged_from_the_log_up_to_the_first_change_set_missing() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, one) = approved_birth(&mut tablet);
    let (_, two) = approved_birth(&mut tablet);
    let (_, _never_sent) = approved_birth(&mut tablet);
    let applied = sync(&server, &tablet, vec![one, two]);
    let asked = send(&server, &tablet.asking(1, 3));
    assert!(asked.refusal.is_none());
    let acks: Vec<_> = asked.acks.iter().map(|a| (a.seq, a.hash, a.outcome)).collect();
    assert_eq!(
        acks,
        vec![
            (1, applied.acks[0].hash, AckOutcome::AlreadyApplied),
            (2, applied.acks[1].hash, AckOutcome::AlreadyApplied),
        ],
        "up to the first change set the server does not hold"
    );
    assert_eq!(asked.next_seq, 3);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 2);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"), 2);
    // Another tablet of the office asking about the same numbers learns
    // nothing of the first one's chain.
    let other = Tablet::enroll(&server, OFFICE);
    let asked = send(&server, &other.asking(1, 2));
    assert!(asked.acks.is_empty());
    assert_eq!(asked.next_seq, 1);
}

#[test]
fn a_different_change_set_under_an_applied_sequence_number_is_refused() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    server.handle_sync(&tablet.request(vec![cs])).expect("sync");
    tablet.next_seq = 1;
    tablet.last_hash = [0; 32];
    let (_, other) = approved_birth(&mut tablet);
    let r = sync(&server, &tablet, vec![other]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::HashChainMismatch);
}

#[test]
fn a_sequence_gap_is_refused_with_the_expected_number() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs1) = approved_birth(&mut tablet);
    let (_, _cs2) = approved_birth(&mut tablet);
    let (_, cs3) = approved_birth(&mut tablet);
    let r = sync(&server, &tablet, vec![cs1, cs3]);
    assert_eq!(r.acks.len(), 1, "the change set before the gap stands");
    let refusal = r.refusal.expect("refused");
    assert_eq!(refusal.code, RefusalCode::SequenceGap);
    assert_eq!(refusal.seq, 3);
    assert_eq!(refusal.expected_seq, Some(2));
    assert_eq!(r.next_seq, 2);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 1);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 1);
}

#[test]
fn a_change_set_with_a_bad_signature_is_refused_and_stores_nothing() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, mut cs) = approved_birth(&mut tablet);
    cs[40] ^= 0x01; // inside the signature
    let r = sync(&server, &tablet, vec![cs]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::BadSignature);
    assert!(r.acks.is_empty());
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 0);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0);
}

#[test]
fn a_change_set_signed_by_another_key_is_refused() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let real = tablet.key.clone();
    tablet.key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let (_, cs) = approved_birth(&mut tablet);
    tablet.key = real;
    let r = sync(&server, &tablet, vec![cs]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::BadSignature);
}

#[test]
fn a_request_signed_by_another_key_is_unauthorized() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    tablet.key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let err = server
        .handle_sync(&tablet.request(vec![cs]))
        .expect_err("refused");
    assert!(matches!(err, ApiError::BadRequestSignature));
}

#[test]
fn a_change_set_writing_a_record_of_another_commune_is_refused() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc("120101", &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let r = sync(&server, &tablet, vec![cs]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::OutOfScope);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"), 0);
}

/// Operators watching 1,633 devices see which ones are stuck behind a
/// change set that no resend can fix, and which refusal it was; a
/// sequence gap (fixed by the tablet's own resend) is not shown.
#[test]
fn a_device_stuck_behind_a_refused_change_set_shows_as_blocked_until_it_syncs_past_it() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let blocked = |server: &Server| {
        admin::devices(server.storage()).expect("devices")[0]
            .blocked
            .as_ref()
            .map(|b| (b.seq, b.code.clone()))
    };
    // A gap first: not blocked.
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[]);
    tablet.next_seq = 2;
    let gap = tablet.seal(vec![record_changes(
        new_record_id(),
        Tablet::document_chunk(&mut doc),
    )]);
    let r = sync(&server, &tablet, vec![gap]);
    assert_eq!(r.refusal.map(|r| r.code), Some(RefusalCode::SequenceGap));
    assert_eq!(blocked(&server), None);
    // A record of another commune: blocked at seq 1.
    tablet.next_seq = 1;
    tablet.last_hash = [0; 32];
    let mut other = tablet.new_doc("120101", &birth(), &[]);
    let cs = tablet.seal(vec![record_changes(
        new_record_id(),
        Tablet::document_chunk(&mut other),
    )]);
    for _ in 0..2 {
        let r = sync(&server, &tablet, vec![cs.clone()]);
        assert_eq!(r.refusal.map(|r| r.code), Some(RefusalCode::OutOfScope));
        assert_eq!(blocked(&server), Some((1, "out_of_scope".to_string())));
    }
    let listed = serde_json::to_value(admin::devices(server.storage()).expect("devices")).expect("json");
    assert_eq!(listed[0]["blocked"]["code"], "out_of_scope");
    // A tablet that replaces it (say, rebuilt from its records) syncs past it.
    tablet.next_seq = 1;
    tablet.last_hash = [0; 32];
    let fixed = tablet.seal(vec![record_changes(
        new_record_id(),
        Tablet::document_chunk(&mut doc),
    )]);
    let r = sync(&server, &tablet, vec![fixed]);
    assert!(r.refusal.is_none(), "{:?}", r.refusal);
    assert_eq!(blocked(&server), None);
}

/// A record belongs to its office: another tablet of the office continues
/// it (and the first receives its changes), a tablet of another office is
/// refused.
#[test]
fn a_record_is_continued_by_any_tablet_of_its_office_and_no_other() {
    let (_dir, server) = server();
    let mut a = Tablet::enroll(&server, OFFICE);
    let mut b = Tablet::enroll(&server, OFFICE);
    let mut stranger = Tablet::enroll(&server, "171004");
    let id = new_record_id();
    let mut doc = a.new_doc(OFFICE, &birth(), &[]);
    let cs = a.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    server.handle_sync(&a.request(vec![cs])).expect("sync");
    let heads = doc.get_heads();
    record::append_transition(&mut doc, &support::step(Action::Verify, "checker")).expect("verify");
    let step = Tablet::changes_since(&mut doc, &heads);
    let cs = stranger.seal(vec![record_changes(id, step.clone())]);
    let r = sync(&server, &stranger, vec![cs]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::OutOfScope);
    assert!(
        r.updates.is_empty(),
        "another office's tablet receives nothing of it"
    );
    let cs = b.seal(vec![record_changes(id, step)]);
    let r = sync(&server, &b, vec![cs]);
    assert!(r.refusal.is_none(), "{:?}", r.refusal);
    // The first tablet receives the second's step.
    let r = sync(&server, &a, vec![]);
    let update = r
        .updates
        .iter()
        .find(|u| u.record_id == id)
        .expect("the record's update");
    let mut mine = doc.fork_at(&heads).expect("a's copy before the step");
    assert_eq!(record::read(&mine).unwrap().transitions.len(), 1);
    for c in &update.changes {
        mine.load_incremental(c).expect("loads");
    }
    assert_eq!(record::read(&mine).unwrap().transitions.len(), 2);
}

/// A new record goes out either as its change chunks or as one document
/// chunk; the server takes different paths for the two, so forgeries are
/// tried in both forms.
type Encode = fn(&mut automerge::AutoCommit) -> Vec<Vec<u8>>;
const FORMS: [(&str, Encode); 2] = [
    ("change chunks", Tablet::all_changes),
    ("document chunk", Tablet::document_chunk),
];

#[test]
fn a_change_set_setting_a_kidc_itself_is_refused() {
    for (form, encode) in FORMS {
        let (dir, server) = server();
        let mut tablet = Tablet::enroll(&server, OFFICE);
        let id = new_record_id();
        let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
        let s = doc
            .put_object(automerge::ROOT, record::SERVER, ObjType::Map)
            .expect("map");
        doc.put(&s, "kidc", "1000000019").expect("put");
        let cs = tablet.seal(vec![record_changes(id, encode(&mut doc))]);
        let r = sync(&server, &tablet, vec![cs]);
        assert_eq!(
            r.refusal.expect("refused").code,
            RefusalCode::ServerOwnedField,
            "{form}"
        );
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0, "{form}");
        assert_eq!(
            count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"),
            0,
            "{form}"
        );
    }
}

#[test]
fn a_change_made_with_the_servers_actor_id_is_refused() {
    for (form, encode) in FORMS {
        let (dir, server) = server();
        let mut tablet = Tablet::enroll(&server, OFFICE);
        let id = new_record_id();
        let mut doc = record::new_record(
            server.actor().clone(),
            record::RecordKind::Birth,
            OFFICE,
            &birth(),
            &support::step(Action::Submit, "clerk"),
        )
        .expect("record");
        let cs = tablet.seal(vec![record_changes(id, encode(&mut doc))]);
        let r = sync(&server, &tablet, vec![cs]);
        assert_eq!(
            r.refusal.expect("refused").code,
            RefusalCode::ServerOwnedField,
            "{form}"
        );
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0, "{form}");
    }
}

#[test]
fn the_same_record_resent_or_reapproved_never_gets_a_second_kidc() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let all = Tablet::all_changes(&mut doc);
    let cs1 = tablet.seal(vec![record_changes(id, all.clone())]);
    // The same changes again in a new change set: nothing new for the record.
    let cs2 = tablet.seal(vec![record_changes(id, all)]);
    // A second approval is a workflow error: a content problem, so the
    // record is held for an operator (the change set applies).
    let heads = doc.get_heads();
    record::append_transition(&mut doc, &support::step(Action::Approve, "registrar")).expect("append");
    let cs3 = tablet.seal(vec![record_changes(id, Tablet::changes_since(&mut doc, &heads))]);
    let r = sync(&server, &tablet, vec![cs1, cs2, cs3]);
    assert_eq!(r.acks.len(), 3);
    assert!(r.refusal.is_none());
    assert_eq!(kidcs(dir.path()).len(), 1, "never a second code");
    let holds = admin::holds(server.storage()).expect("holds");
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].reason, "invalid_workflow");
}

#[test]
fn a_birth_invalid_by_the_servers_date_is_held_without_a_kidc() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let mut data = birth();
    data["child"]["date_of_birth"] = serde_json::json!("2099-01-01");
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &data, &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let r = sync(&server, &tablet, vec![cs]);
    assert!(r.refusal.is_none(), "held, not refused");
    assert_eq!(r.acks[0].outcome, AckOutcome::Applied);
    assert!(kidc_in_updates(&r, id, &mut doc).is_none());
    let view = record::read(&doc).expect("reads");
    assert_eq!(view.server.hold.as_deref(), Some("invalid_on_receipt"));
    assert_eq!(kidcs(dir.path()).len(), 0);
}

#[test]
fn a_birth_living_outside_the_commune_forged_past_the_tablet_is_held_without_a_kidc() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    // A village of commune 120101 (Phnom Penh), sent by a 171003 tablet.
    let mut data = birth();
    data["residence_village_code"] = serde_json::json!("12010101");
    let held = new_record_id();
    let mut held_doc = tablet.new_doc(OFFICE, &data, &[Action::Verify, Action::Approve]);
    // The same, said to be registered away from home: issued.
    data["registered_away_from_residence"] = serde_json::json!(true);
    let away = new_record_id();
    let mut away_doc = tablet.new_doc(OFFICE, &data, &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![
        record_changes(held, Tablet::all_changes(&mut held_doc)),
        record_changes(away, Tablet::all_changes(&mut away_doc)),
    ]);
    let r = sync(&server, &tablet, vec![cs]);
    assert!(r.refusal.is_none(), "held, not refused");
    assert_eq!(r.acks[0].outcome, AckOutcome::Applied);
    assert!(kidc_in_updates(&r, held, &mut held_doc).is_none());
    let view = record::read(&held_doc).expect("reads");
    assert_eq!(view.server.hold.as_deref(), Some("invalid_on_receipt"));
    assert!(kidc_in_updates(&r, away, &mut away_doc).is_some());
    assert_eq!(record::read(&away_doc).expect("reads").server.hold, None);
    assert_eq!(kidcs(dir.path()).len(), 1);
}

#[test]
fn a_step_with_a_forged_staff_id_holds_its_record_without_a_kidc() {
    // A verifier of 10,000 characters, one with a line break, and the
    // clerk again in capitals behind a zero-width space: a content problem,
    // so the record is held (the rest of its change set would apply).
    for by in [
        "v".repeat(10_000),
        "checker\nregistrar".to_owned(),
        "CLERK\u{200B}".to_owned(),
    ] {
        let (dir, server) = server();
        let mut tablet = Tablet::enroll(&server, OFFICE);
        let id = new_record_id();
        let mut doc = tablet.new_doc(OFFICE, &birth(), &[]);
        record::append_transition(&mut doc, &support::step(Action::Verify, &by)).expect("append");
        record::append_transition(&mut doc, &support::step(Action::Approve, "registrar")).expect("append");
        let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
        let r = sync(&server, &tablet, vec![cs]);
        assert!(r.refusal.is_none());
        assert!(kidc_in_updates(&r, id, &mut doc).is_none(), "no code");
        assert_eq!(
            record::read(&doc).expect("reads").server.hold.as_deref(),
            Some("invalid_workflow")
        );
        assert_eq!(kidcs(dir.path()).len(), 0);
        assert_eq!(admin::holds(server.storage()).expect("holds").len(), 1);
    }
}

#[test]
fn a_foreign_residents_child_gets_the_foreign_resident_category() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let mut data = birth();
    data["mother"]["nationality"] = serde_json::json!("THA");
    data["father"]["nationality"] = serde_json::json!("VNM");
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &data, &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let r = sync(&server, &tablet, vec![cs]);
    let kidc = kidc_in_updates(&r, id, &mut doc).expect("kidc");
    assert_eq!(kidc.category(), crvs_schema::kidc::Category::FOREIGN_RESIDENT);
}

#[test]
fn two_racing_requests_apply_once_and_issue_one_kidc() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    // Four requests of the same tablet carrying the same change set.
    let requests: Vec<Vec<u8>> = (0..4).map(|_| tablet.request(vec![cs.clone()])).collect();
    let outcomes: Vec<Option<AckOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|req| {
                s.spawn(|| match server.handle_sync(req) {
                    Ok(answer) => Some(open_response(&server, &answer).acks[0].outcome),
                    // A lower counter that came after a higher one.
                    Err(ApiError::ReplayedRequest { .. }) => None,
                    Err(e) => panic!("unexpected error {e}"),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Some(AckOutcome::Applied))
            .count(),
        1
    );
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 1);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"), 1);
}

#[test]
fn a_replayed_or_reordered_request_is_refused_changes_nothing_and_leaks_no_feed() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let device_id = uuid::Uuid::from_bytes(tablet.device_id);
    // Captured early: an empty request, before any KIdC exists.
    let captured = tablet.request(vec![]);
    let (_, cs) = approved_birth(&mut tablet);
    let later = tablet.request(vec![cs]);
    let r = open_response(&server, &server.handle_sync(&later).expect("sync"));
    assert_eq!(r.updates.len(), 1, "the KIdC went to the tablet");
    let before = server.storage().device(device_id).expect("read").expect("device");
    // The captured (earlier) request now: reordered, so refused.
    match server.handle_sync(&captured) {
        Err(ApiError::ReplayedRequest { last_counter }) => assert_eq!(last_counter, 2),
        other => panic!("expected replayed_request, got {other:?}"),
    }
    // And the accepted one again: a replay.
    assert!(matches!(
        server.handle_sync(&later),
        Err(ApiError::ReplayedRequest { .. })
    ));
    let after = server.storage().device(device_id).expect("read").expect("device");
    assert_eq!(after, before, "not even last_sync or the clock skew moved");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 1);
    // The tablet's next request goes through.
    server.handle_sync(&tablet.request(vec![])).expect("next request");
}

#[test]
fn the_pull_feed_pages_and_resumes_from_the_cursor() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    let r = sync(&server, &tablet, vec![cs]);
    assert_eq!(r.updates.len(), 1);
    assert!(r.cursor > 0);
    assert!(!r.more);
    tablet.cursor = r.cursor;
    let again = sync(&server, &tablet, vec![]);
    assert!(again.updates.is_empty(), "nothing new after the cursor");
    assert_eq!(again.cursor, r.cursor);
}

#[test]
fn a_revoked_device_is_refused_from_its_next_request() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs1) = approved_birth(&mut tablet);
    server.handle_sync(&tablet.request(vec![cs1])).expect("sync");
    admin::revoke(&server, &uuid::Uuid::from_bytes(tablet.device_id).to_string()).expect("revoke");
    let (_, cs2) = approved_birth(&mut tablet);
    let err = server
        .handle_sync(&tablet.request(vec![cs2]))
        .expect_err("refused");
    assert!(matches!(err, ApiError::DeviceRevoked));
    assert_eq!(err.status().as_u16(), 403);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 1);
}

#[test]
fn an_unknown_device_is_unauthorized() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    tablet.device_id = new_record_id();
    let err = server.handle_sync(&tablet.request(vec![])).expect_err("refused");
    assert_eq!(err.status().as_u16(), 401);
}

fn new_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::generate(&mut rand::rng())
}

#[test]
fn an_enrolment_token_works_once() {
    let (_dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    let ok =
        admin::enroll(&server, &enroll_request(&token.token, &new_key(), None)).expect("first enrolment");
    assert_eq!(ok.office, OFFICE);
    assert!(matches!(
        admin::enroll(&server, &enroll_request(&token.token, &new_key(), None)),
        Err(ApiError::TokenUsed)
    ));
    // A well-formed token this server never made.
    let stranger =
        crvs_schema::enrol::EnrolmentToken::generate(&server.signing_key().verifying_key(), &mut rand::rng());
    assert!(matches!(
        admin::enroll(&server, &enroll_request(&stranger.to_text(), &new_key(), None)),
        Err(ApiError::UnknownToken)
    ));
    let expired = admin::create_token(&server, OFFICE, 1).expect("token");
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(matches!(
        admin::enroll(&server, &enroll_request(&expired.token, &new_key(), None)),
        Err(ApiError::TokenExpired)
    ));
    assert!(
        admin::create_token(&server, "1710", 1000).is_err(),
        "a province is not a commune"
    );
}

#[test]
fn the_enrolment_answer_is_signed_by_the_key_the_token_names_and_bound_to_the_request() {
    let (_dir, server) = server();
    let text = admin::create_token(&server, OFFICE, 3_600_000)
        .expect("token")
        .token;
    let token = crvs_schema::enrol::EnrolmentToken::parse(&text).expect("parses");
    let req = enroll_request(&text, &new_key(), Some(OFFICE));
    let answer = admin::enroll(&server, &req).expect("enrols");
    let key = answer.verify(&req.public_key, &req.nonce).expect("signed");
    assert_eq!(key, server.signing_key().verifying_key());
    assert!(token.is_for_server(&key));
    // Not an answer to any other request.
    let other = enroll_request(&text, &new_key(), Some(OFFICE));
    assert!(answer.verify(&other.public_key, &req.nonce).is_err());
    assert!(answer.verify(&req.public_key, &other.nonce).is_err());
}

#[test]
fn the_same_tablet_may_enrol_again_with_its_token_and_gets_the_same_device() {
    let (dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    let key = new_key();
    let first = admin::enroll(&server, &enroll_request(&token.token, &key, Some(OFFICE))).expect("enrols");
    // The answer was lost (or spoiled on the way): the tablet asks again.
    let again = admin::enroll(&server, &enroll_request(&token.token, &key, Some(OFFICE))).expect("again");
    assert_eq!(first.device_id, again.device_id);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM devices"), 1);
    // Replaying the exact request changes nothing and answers the same.
    let req = enroll_request(&token.token, &key, Some(OFFICE));
    let a = admin::enroll(&server, &req).expect("a");
    let b = admin::enroll(&server, &req).expect("b");
    assert_eq!(a, b);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM devices"), 1);
}

#[test]
fn someone_who_saw_the_request_cannot_enrol_another_key_with_its_token() {
    let (dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    let seen = enroll_request(&token.token, &new_key(), Some(OFFICE));
    // The eavesdropper keeps the token id and the MAC, and puts in its key.
    let mut forged = seen.clone();
    forged.public_key = hex::encode(new_key().verifying_key().to_bytes());
    assert!(matches!(
        admin::enroll(&server, &forged),
        Err(ApiError::UnknownToken)
    ));
    // ... or another office, or another nonce.
    let mut forged = seen.clone();
    forged.office = Some("120101".into());
    assert!(admin::enroll(&server, &forged).is_err());
    let mut forged = seen.clone();
    forged.nonce = hex::encode([7u8; 16]);
    assert!(matches!(
        admin::enroll(&server, &forged),
        Err(ApiError::UnknownToken)
    ));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM devices"), 0);
    // The token is still good for the tablet it was made for.
    admin::enroll(&server, &seen).expect("the real tablet enrols");
}

#[test]
fn weak_device_keys_are_refused_without_using_up_the_token() {
    let (dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    let parsed = crvs_schema::enrol::EnrolmentToken::parse(&token.token).expect("token");
    // The all-zero encoding and the identity point: both small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for weak in [[0u8; 32], identity] {
        let req = crvs_schema::enrol::enroll_request(&parsed, &weak, Some(OFFICE), [3; 16]);
        match admin::enroll(&server, &req) {
            Err(ApiError::Invalid(m)) => assert!(m.contains("weak") || m.contains("valid"), "{m}"),
            other => panic!("a weak key must be refused, got {other:?}"),
        }
    }
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM devices"), 0);
    admin::enroll(&server, &enroll_request(&token.token, &new_key(), Some(OFFICE)))
        .expect("token still good");
}

#[test]
fn an_enrolment_of_the_old_version_is_told_to_update() {
    let (_dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    let mut req = enroll_request(&token.token, &new_key(), Some(OFFICE));
    req.version = 1;
    let err = admin::enroll(&server, &req).expect_err("refused");
    assert_eq!(err.code(), "upgrade_required");
    assert_eq!(err.status().as_u16(), 426);
}

#[test]
fn a_token_for_another_office_is_refused_and_stays_valid_for_its_own() {
    let (dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    match admin::enroll(&server, &enroll_request(&token.token, &new_key(), Some("120101"))) {
        Err(e @ ApiError::WrongOffice { .. }) => {
            assert_eq!(e.code(), "wrong_office");
            assert!(e.to_string().contains("120101") && e.to_string().contains(OFFICE));
        }
        other => panic!("expected wrong_office, got {other:?}"),
    }
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM devices"), 0);
    // The token was not used up: the right tablet enrols with it.
    let ok = admin::enroll(&server, &enroll_request(&token.token, &new_key(), Some(OFFICE))).expect("enrols");
    assert_eq!(ok.office, OFFICE);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM devices"), 1);
}

#[test]
fn racing_enrolments_with_one_token_enrol_one_device() {
    let (_dir, server) = server();
    let token = admin::create_token(&server, OFFICE, 3_600_000).expect("token");
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| admin::enroll(&server, &enroll_request(&token.token, &new_key(), None)).is_ok())
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1);
    assert_eq!(admin::devices(server.storage()).expect("devices").len(), 1);
}

#[test]
fn the_issuance_log_and_the_change_set_log_refuse_update_and_delete() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    server.handle_sync(&tablet.request(vec![cs])).expect("sync");
    let conn = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE)).expect("db");
    for sql in [
        "UPDATE kidc_issuance SET kidc = '1000000019'",
        "DELETE FROM kidc_issuance",
        "UPDATE change_set_log SET seq = 9",
        "DELETE FROM change_set_log",
    ] {
        let err = conn.execute(sql, []).expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"), 1);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 1);
}

#[test]
fn a_device_clock_off_by_more_than_a_day_is_flagged() {
    let dir = tempfile::tempdir().expect("dir");
    let clock: crvs_server::Clock = std::sync::Arc::new(|| support::now_ms() + 3 * 24 * 3600 * 1000);
    let server = Server::open_with_clock(dir.path(), clock).expect("open");
    let tablet = Tablet::enroll(&server, OFFICE);
    server.handle_sync(&tablet.request(vec![])).expect("sync");
    let devices = admin::devices(server.storage()).expect("devices");
    assert!(devices[0].clock_flagged);
    assert!(devices[0].last_sync.is_some());
}

#[test]
fn random_and_truncated_bodies_are_malformed_and_store_nothing() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    let req = tablet.request(vec![cs]);
    let mut random = vec![0u8; 4096];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut random);
    random[0] = 0xee; // version 1 is told to update instead
    for body in [random.as_slice(), &req[..req.len() / 2], &req[..10], &[]] {
        let err = server.handle_sync(body).expect_err("refused");
        assert_eq!(err.status().as_u16(), 400, "{err}");
    }
    let mut oversized = req.clone();
    oversized.resize(crvs_schema::wire::MAX_SYNC_REQUEST_BYTES + 1, 0);
    assert_eq!(
        server
            .handle_sync(&oversized)
            .expect_err("refused")
            .status()
            .as_u16(),
        413
    );
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 0);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0);
}

#[test]
fn a_reopened_server_keeps_its_key_and_data_and_takes_a_new_actor() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    server
        .handle_sync(&tablet.request(vec![cs.clone()]))
        .expect("sync");
    let key = server.signing_key().verifying_key();
    let actor = server.actor().clone();
    drop(server);
    let server = Server::open(dir.path()).expect("reopen");
    assert_eq!(server.signing_key().verifying_key(), key);
    assert_ne!(server.actor(), &actor, "a new actor at every start");
    assert!(
        server.is_server_actor(&actor),
        "the old actor is still the server's"
    );
    let r = sync(&server, &tablet, vec![cs]);
    assert_eq!(r.acks[0].outcome, AckOutcome::AlreadyApplied);
}

#[test]
fn a_stored_record_document_loads_with_automerge() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (id, cs) = approved_birth(&mut tablet);
    server.handle_sync(&tablet.request(vec![cs])).expect("sync");
    let conn = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE)).expect("db");
    let doc: Vec<u8> = conn
        .query_row(
            "SELECT doc FROM records WHERE record_id = ?1",
            [uuid::Uuid::from_bytes(id).to_string()],
            |r| r.get(0),
        )
        .expect("row");
    let doc = automerge::Automerge::load(&doc).expect("loads");
    let view = record::read(&doc).expect("reads");
    assert!(view.server.kidc.is_some());
    assert_eq!(
        view.data.get("child").and_then(|c| c.get("sex")),
        birth().get("child").and_then(|c| c.get("sex"))
    );
    let _ = doc.get(automerge::ROOT, record::SERVER).expect("server part");
}

/// A server whose records were restored from an older backup than its
/// issuance log: a record the log already holds gets its logged code back
/// (the server redoes its edits with it), never a second one.
#[test]
fn a_record_already_in_the_issuance_log_gets_its_logged_code_back() {
    for (form, encode) in FORMS {
        let (dir, server) = server();
        let mut tablet = Tablet::enroll(&server, OFFICE);
        let id = new_record_id();
        let logged = Kidc::generate(crvs_schema::kidc::Category::CITIZEN, &mut rand::rng());
        {
            let conn = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE)).expect("db");
            conn.execute(
                "INSERT INTO kidc_issuance (kidc, record_id, category, issued_at, device_id, seq, reason)
                 VALUES (?1, ?2, 1, 0, 'restored', 0, 'birth_approved')",
                rusqlite::params![logged.as_str(), uuid::Uuid::from_bytes(id).to_string()],
            )
            .expect("insert");
        }
        let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
        let cs = tablet.seal(vec![record_changes(id, encode(&mut doc))]);
        let resp = sync(&server, &tablet, vec![cs]);
        assert!(resp.refusal.is_none(), "{form}: {:?}", resp.refusal);
        assert_eq!(kidc_in_updates(&resp, id, &mut doc), Some(logged), "{form}");
        assert_eq!(kidcs(dir.path()).len(), 1, "{form}");
        // The stored document holds the logged code, and only the tablet's
        // changes and one server change.
        let conn = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE)).expect("db");
        let blob: Vec<u8> = conn
            .query_row("SELECT doc FROM records", [], |r| r.get(0))
            .expect("stored");
        let mut stored = AutoCommit::load(&blob).expect("stored document loads");
        let view = record::read(&stored).expect("reads");
        assert_eq!(view.server.kidc, Some(logged), "{form}");
        let server_changes = stored
            .get_changes(&[])
            .iter()
            .filter(|c| c.actor_id() == server.actor())
            .count();
        assert_eq!(server_changes, 1, "{form}");
    }
}

/// New records are prepared before the writer is taken, on the guess that
/// a record sent as one document chunk is new. A document chunk for a
/// record the server already has (in the same request, or an earlier
/// one) must take the path of an existing record instead: merged, checked
/// against what the server has, one KIdC.
#[test]
fn a_document_chunk_for_a_record_the_server_has_is_merged_not_recreated() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify]);
    let cs1 = tablet.seal(vec![record_changes(id, Tablet::document_chunk(&mut doc))]);
    record::append_transition(&mut doc, &support::step(Action::Approve, "registrar")).expect("approve");
    // The whole document again, in the same request.
    let cs2 = tablet.seal(vec![record_changes(id, Tablet::document_chunk(&mut doc))]);
    let r = sync(&server, &tablet, vec![cs1, cs2]);
    assert!(r.refusal.is_none(), "{:?}", r.refusal);
    assert_eq!(r.acks.len(), 2);
    let kidc = kidc_in_updates(&r, id, &mut doc).expect("registered");
    assert_eq!(kidcs(dir.path()).len(), 1);
    // And in a later request, with a rewritten first step: refused, as it
    // would be as change chunks.
    tablet.cursor = r.cursor;
    let mut forged = doc.fork();
    let list = forged
        .get(automerge::ROOT, record::TRANSITIONS)
        .expect("get")
        .expect("list")
        .1;
    let step = serde_json::to_string(&support::step(Action::Submit, "someone-else")).expect("json");
    forged.put(&list, 0, step).expect("put");
    let cs3 = tablet.seal(vec![record_changes(id, Tablet::document_chunk(&mut forged))]);
    let r = sync(&server, &tablet, vec![cs3]);
    assert_eq!(r.refusal.map(|r| r.code), Some(RefusalCode::InvalidRecord));
    assert_eq!(
        kidcs(dir.path()),
        vec![(uuid::Uuid::from_bytes(id).to_string(), kidc.to_string())]
    );
}

/// Rebuilds an automerge document chunk around `data` with a valid
/// checksum (what a hostile tablet would do).
fn document_chunk_around(data: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut len = Vec::new();
    let mut v = data.len() as u64;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            len.push(b);
            break;
        }
        len.push(b | 0x80);
    }
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(&len);
    h.update(data);
    let sum = h.finalize();
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83];
    out.extend_from_slice(&sum[..4]);
    out.push(0);
    out.extend_from_slice(&len);
    out.extend_from_slice(data);
    out
}

/// Automerge 0.12's decoder panics on some malformed documents with a
/// valid checksum. Such a document is refused as malformed (the tablet is
/// told, the device shows as blocked); the server goes on serving.
#[test]
fn a_document_that_makes_the_automerge_decoder_panic_is_refused_as_malformed() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let chunk = Tablet::document_chunk(&mut tablet.new_doc(OFFICE, &birth(), &[])).remove(0);
    let header = 4 + 4 + 1 + if chunk.len() - 11 < 16384 { 2 } else { 3 };
    let data = &chunk[header..];
    assert_eq!(
        document_chunk_around(data),
        chunk,
        "the header is rebuilt as automerge writes it"
    );
    // Find a one-byte change that makes the decoder panic.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let poison = (0..data.len())
        .flat_map(|i| [0x01u8, 0x80, 0xff].map(move |x| (i, x)))
        .map(|(i, x)| {
            let mut d = data.to_vec();
            d[i] ^= x;
            document_chunk_around(&d)
        })
        .find(|bytes| std::panic::catch_unwind(|| AutoCommit::load(bytes).is_ok()).is_err());
    std::panic::set_hook(previous);
    let poison = poison.expect(
        "no one-byte change panics automerge's decoder any more: \
         the catch_unwind in ingest::prepare_record may no longer be needed",
    );
    let cs = tablet.seal(vec![record_changes(new_record_id(), vec![poison])]);
    let r = open_response(
        &server,
        &server
            .handle_sync(&tablet.request(vec![cs]))
            .expect("sync answers"),
    );
    assert_eq!(r.refusal.map(|r| r.code), Some(RefusalCode::Malformed));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0);
    let blocked = admin::devices(server.storage()).expect("devices")[0]
        .blocked
        .clone();
    assert_eq!(blocked.map(|b| b.code), Some("malformed".to_string()));
    // The server still serves: another tablet registers a birth.
    let mut other = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut other);
    let r = sync(&server, &other, vec![cs]);
    assert!(r.refusal.is_none(), "{:?}", r.refusal);
    assert_eq!(kidcs(dir.path()).len(), 1);
}

#[test]
fn history_hidden_under_a_deleted_key_is_refused() {
    for (form, encode) in FORMS {
        let (dir, server) = server();
        let mut tablet = Tablet::enroll(&server, OFFICE);
        let id = new_record_id();
        let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
        // 200 KB under a key outside the layout, deleted again: the
        // visible document is a perfect record.
        doc.put(automerge::ROOT, "junk", "x".repeat(200_000))
            .expect("put");
        doc.delete(automerge::ROOT, "junk").expect("delete");
        assert!(
            record::read(&doc).is_ok(),
            "{form}: the visible document reads as a record"
        );
        let cs = tablet.seal(vec![record_changes(id, encode(&mut doc))]);
        let r = sync(&server, &tablet, vec![cs]);
        let refusal = r.refusal.expect("refused");
        assert!(
            matches!(refusal.code, RefusalCode::InvalidRecord | RefusalCode::TooLarge),
            "{form}: {refusal:?}"
        );
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0, "{form}");
    }
}

#[test]
fn an_overwritten_or_deleted_workflow_step_is_refused_even_when_the_list_looks_right() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify]);
    let list = match doc.get(automerge::ROOT, record::TRANSITIONS).expect("get") {
        Some((automerge::Value::Object(ObjType::List), l)) => l,
        other => panic!("no list: {other:?}"),
    };
    // Insert a junk step and delete it again: the list reads as before.
    doc.insert(&list, 2, "x".repeat(1000)).expect("insert");
    doc.delete(&list, 2).expect("delete");
    let cs = tablet.seal(vec![record_changes(id, Tablet::document_chunk(&mut doc))]);
    let r = sync(&server, &tablet, vec![cs]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::InvalidRecord);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0);
}

#[test]
fn a_huge_automerge_document_is_refused_before_it_is_loaded() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let list = match doc.get(automerge::ROOT, record::TRANSITIONS).expect("get") {
        Some((automerge::Value::Object(ObjType::List), l)) => l,
        other => panic!("no list: {other:?}"),
    };
    // 12,000 appended steps, more than a record's 10,000 operations:
    // each one a few bytes once encoded. (Built in one transaction: a
    // debug build of automerge is slow at this.)
    let steps: Vec<automerge::ScalarValue> = (0..12_000).map(|_| "s".into()).collect();
    doc.splice(&list, 3, 0, steps).expect("splice");
    let chunk = doc.save_nocompress();
    assert!(
        chunk.len() < 256 * 1024,
        "{} bytes: small on the wire",
        chunk.len()
    );
    let cs = tablet.seal(vec![record_changes(id, vec![chunk])]);
    let r = sync(&server, &tablet, vec![cs]);
    let refusal = r.refusal.expect("refused");
    assert_eq!(refusal.code, RefusalCode::TooLarge, "{refusal:?}");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM records"), 0);
    // A deflated document (automerge's `save()`) is refused as well.
    let (_dir2, server2) = crate::server();
    let mut tablet = Tablet::enroll(&server2, OFFICE);
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[]);
    let list = match doc.get(automerge::ROOT, record::TRANSITIONS).expect("get") {
        Some((automerge::Value::Object(ObjType::List), l)) => l,
        other => panic!("no list: {other:?}"),
    };
    for i in 0..400 {
        doc.insert(&list, 1 + i, "s").expect("insert");
    }
    let cs = tablet.seal(vec![record_changes(new_record_id(), vec![doc.save()])]);
    let r = sync(&server2, &tablet, vec![cs]);
    assert_eq!(r.refusal.expect("refused").code, RefusalCode::Malformed);
}

#[test]
fn an_honest_new_record_has_exactly_one_operation_per_visible_value() {
    // The server's fast check of a new record relies on this: kind,
    // office, data, the list, and one insert per step; nothing else.
    let tablet = Tablet::enroll(&server().1, OFFICE);
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let loaded = automerge::Automerge::load(&doc.save_nocompress()).expect("loads");
    assert_eq!(automerge::ReadDoc::stats(&loaded).num_ops, 4 + 3);
}

// ---- recovery: KIdC proofs, and tablets of sync version 2

/// [`approved_birth`], with the tablet's document.
fn approved_birth_with_doc(tablet: &mut Tablet) -> ([u8; 16], Vec<u8>, AutoCommit) {
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    (id, cs, doc)
}

fn issuance_reasons(dir: &Path) -> Vec<(String, String, String)> {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    let mut st = conn
        .prepare("SELECT record_id, kidc, reason FROM kidc_issuance ORDER BY record_id")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn every_answer_carries_the_servers_proof_of_each_code_it_delivers() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (id, cs, mut doc) = approved_birth_with_doc(&mut tablet);
    let resp = sync(&server, &tablet, vec![cs]);
    let proof = resp
        .issuances
        .iter()
        .find(|p| p.record_id == id)
        .expect("a proof for the approved record");
    let code = proof
        .verify(&server.signing_key().verifying_key())
        .expect("signed by the server");
    assert_eq!(
        kidc_in_updates(&resp, id, &mut doc),
        Some(code),
        "the proof names the code delivered"
    );
}

#[test]
fn a_proven_code_is_recorded_again_instead_of_a_new_draw() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (id, cs, mut doc) = approved_birth_with_doc(&mut tablet);
    // As if this server had issued the code before a restore lost it.
    let code = Kidc::parse("1000000001").unwrap();
    let proof = crvs_schema::evidence::IssuanceProof::sign(server.signing_key(), id, &code);
    let resp = open_response(
        &server,
        &server
            .handle_sync(&tablet.request_with_evidence(vec![cs], vec![proof]))
            .expect("sync"),
    );
    assert_eq!(resp.acks[0].outcome, AckOutcome::Applied);
    assert_eq!(kidc_in_updates(&resp, id, &mut doc), Some(code));
    let log = issuance_reasons(dir.path());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, "1000000001");
    assert_eq!(log[0].2, "birth_approved_recorded_again");
}

#[test]
fn a_proof_this_server_did_not_sign_is_ignored() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (id, cs, mut doc) = approved_birth_with_doc(&mut tablet);
    let forged = crvs_schema::evidence::IssuanceProof::sign(
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        id,
        &Kidc::parse("1000000001").unwrap(),
    );
    let resp = open_response(
        &server,
        &server
            .handle_sync(&tablet.request_with_evidence(vec![cs], vec![forged]))
            .expect("sync"),
    );
    let got = kidc_in_updates(&resp, id, &mut doc).expect("a code");
    assert_ne!(got.as_str(), "1000000001", "the forged code was not taken");
    assert_eq!(issuance_reasons(dir.path())[0].2, "birth_approved");
}

#[test]
fn a_proven_code_that_another_record_holds_holds_the_record_and_issues_nothing() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (first, cs, mut doc) = approved_birth_with_doc(&mut tablet);
    let resp = sync(&server, &tablet, vec![cs]);
    let taken = kidc_in_updates(&resp, first, &mut doc).expect("a code");
    // A validly signed proof that names the first record's code for a
    // second record: recording it would give one code to two people.
    let (second, cs, mut doc2) = approved_birth_with_doc(&mut tablet);
    let proof = crvs_schema::evidence::IssuanceProof::sign(server.signing_key(), second, &taken);
    let resp = open_response(
        &server,
        &server
            .handle_sync(&tablet.request_with_evidence(vec![cs], vec![proof]))
            .expect("sync"),
    );
    assert_eq!(resp.acks[0].outcome, AckOutcome::Applied, "held, not refused");
    assert_eq!(
        kidc_in_updates(&resp, second, &mut doc2),
        None,
        "no code for the second record"
    );
    assert_eq!(kidcs(dir.path()).len(), 1, "nothing issued");
    let status: String = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE))
        .unwrap()
        .query_row(
            "SELECT status FROM records WHERE record_id = ?1",
            [uuid::Uuid::from_bytes(second).to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "held");
}

#[test]
fn a_version_2_tablet_still_syncs_and_reads_its_answer_in_version_2() {
    let (dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (id, cs, mut doc) = approved_birth_with_doc(&mut tablet);
    let request = crvs_schema::wire::SyncRequest {
        device_id: tablet.device_id,
        counter: 1,
        cursor: 0,
        device_clock_ms: support::now_ms(),
        change_sets: vec![cs],
        evidence: Vec::new(),
        lineage: [0; 16],
        adopted: None,
        resume: None,
        report: None,
    }
    .seal_version_2(&tablet.key)
    .unwrap();
    let answer = server.handle_sync(&request).expect("sync");
    assert_eq!(answer[0], 2, "answered in the request's version");
    let resp = open_response(&server, &answer);
    assert_eq!(resp.acks[0].outcome, AckOutcome::Applied);
    assert!(kidc_in_updates(&resp, id, &mut doc).is_some());
    assert_eq!(kidcs(dir.path()).len(), 1);
}

#[test]
fn a_version_5_tablet_is_served_and_reports_nothing_while_a_version_6_one_reports_its_outbox() {
    let (_dir, server) = server();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let (_, cs) = approved_birth(&mut tablet);
    let mut request = crvs_schema::wire::SyncRequest {
        device_id: tablet.device_id,
        counter: 1,
        cursor: 0,
        device_clock_ms: support::now_ms(),
        change_sets: vec![cs],
        evidence: Vec::new(),
        lineage: tablet.lineage,
        adopted: None,
        resume: None,
        report: Some(crvs_schema::wire::TabletReport {
            change_sets_waiting: 1,
            records_waiting: 1,
            app_version: "0.1.0".into(),
        }),
    };
    let answer = server
        .handle_sync(&request.seal_version_5(&tablet.key).unwrap())
        .expect("sync");
    assert_eq!(answer[0], 5, "answered in the request's version");
    assert_eq!(
        open_response(&server, &answer).acks[0].outcome,
        AckOutcome::Applied
    );
    let reported = |server: &Server| {
        crvs_server::admin::devices(server.storage()).unwrap()[0]
            .reported
            .clone()
    };
    assert_eq!(reported(&server), None, "a version-5 request carries no report");
    request.counter = 2;
    request.change_sets.clear();
    let report = request.report.clone();
    let answer = server
        .handle_sync(&request.seal(&tablet.key).unwrap())
        .expect("sync");
    assert_eq!(answer[0], crvs_schema::wire::SYNC_VERSION);
    assert_eq!(reported(&server), report);
    // A malformed app version: the request is served, the report dropped.
    for (counter, version) in [(3, "0.1 beta"), (4, "\u{202e}1.0"), (5, "")] {
        request.counter = counter;
        request.report.as_mut().unwrap().app_version = version.into();
        let answer = server
            .handle_sync(&request.seal(&tablet.key).unwrap())
            .expect("served");
        assert!(open_response(&server, &answer).refusal.is_none());
        assert_eq!(reported(&server), None, "{version:?}");
    }
}

/// Group commit: requests that reach the writer together run in one
/// transaction, each under its own savepoint. The test holds the writer
/// so that every request queues; then they run as one group, in which
/// each duplicate of a request is refused as a replay under the writer
/// (both copies passed the check before it), and nothing of it undoes
/// the others.
#[test]
fn a_commit_group_keeps_each_request_apart() {
    let (dir, server) = server();
    let mut requests = Vec::new();
    let mut records = Vec::new();
    for i in 0..12 {
        let mut tablet = Tablet::enroll(&server, OFFICE);
        let (id, cs) = approved_birth(&mut tablet);
        let req = tablet.request(vec![cs]);
        if i % 3 == 0 {
            // The same bytes twice (a replay racing its original).
            requests.push((i, req.clone()));
        }
        requests.push((i, req));
        records.push(id);
    }
    let before = server.commit_groups();
    let held = server.storage().begin().expect("the test holds the writer");
    let results: Vec<(usize, Result<Vec<u8>, ApiError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|(i, req)| {
                let server = &server;
                s.spawn(move || (*i, server.handle_sync(req)))
            })
            .collect();
        // The first request leads a group that waits for the writer; the
        // others queue behind it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while {
            let g = server.commit_groups();
            g.queued + g.running < requests.len()
        } {
            assert!(std::time::Instant::now() < deadline, "the requests never queued");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(held);
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let after = server.commit_groups();
    assert_eq!(after.requests - before.requests, requests.len() as u64);
    assert!(
        after.groups - before.groups <= 2,
        "{} requests ran in {} groups",
        requests.len(),
        after.groups - before.groups
    );
    for (i, &own) in records.iter().enumerate() {
        let outcomes: Vec<&Result<Vec<u8>, ApiError>> =
            results.iter().filter(|(j, _)| *j == i).map(|(_, r)| r).collect();
        let ok: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1, "request {i}: exactly one copy is answered");
        let resp = open_response(&server, ok[0]);
        assert!(resp.refusal.is_none());
        assert_eq!(resp.acks.len(), 1);
        assert_eq!(resp.acks[0].outcome, AckOutcome::Applied);
        // Its own code's proof (and those of the office's records
        // registered before, which every tablet of the office receives).
        assert!(
            resp.issuances.iter().any(|p| p.record_id == own),
            "request {i}: its KIdC proof"
        );
        for r in outcomes.iter().filter(|r| r.is_err()) {
            assert!(
                matches!(r, Err(ApiError::ReplayedRequest { .. })),
                "request {i}: the copy is a replay: {r:?}"
            );
        }
    }
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM records WHERE status = 'registered'"
        ),
        12
    );
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM kidc_issuance"), 12);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM change_set_log"), 12);
    let issued = kidcs(dir.path());
    for id in &records {
        let id = uuid::Uuid::from_bytes(*id).to_string();
        assert_eq!(issued.iter().filter(|(r, _)| *r == id).count(), 1);
    }
    assert_eq!(server.ledger().len().expect("ledger"), 12, "every code reserved");
}
