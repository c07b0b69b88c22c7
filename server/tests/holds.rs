//! Holds: content problems hold one record and the rest of the change set
//! applies; a day of clock difference is no problem; operators list holds
//! and release them, audited. Driven through `Server::handle_sync` on a
//! real SQLite file, with the server's clock under the test's control.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use automerge::AutoCommit;
use crvs_schema::record;
use crvs_schema::wire::AckOutcome;
use crvs_schema::workflow::Action;
use crvs_schema::{Date, Kidc};
use crvs_server::{Server, admin};
use serde_json::Value;
use support::{OFFICE, Tablet, birth, new_record_id, now_ms, open_response, record_changes, step};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A server whose clock the test moves.
fn server_at(dir: &Path, clock: &Arc<AtomicI64>) -> Server {
    let c = clock.clone();
    Server::open_with_clock(dir, Arc::new(move || c.load(Ordering::SeqCst))).expect("server")
}

fn birth_on(date: Date) -> Value {
    let mut b = birth();
    b["child"]["date_of_birth"] = Value::String(date.to_string());
    b
}

fn approved(tablet: &Tablet, data: &Value) -> ([u8; 16], AutoCommit) {
    (
        new_record_id(),
        tablet.new_doc(OFFICE, data, &[Action::Verify, Action::Approve]),
    )
}

/// The server's view of a record after the answer's changes.
fn after(resp: &crvs_schema::wire::SyncResponse, id: [u8; 16], doc: &mut AutoCommit) -> record::RecordView {
    for u in resp.updates.iter().filter(|u| u.record_id == id) {
        let changes = u
            .changes
            .iter()
            .map(|c| automerge::Change::from_bytes(c.clone()).expect("decodes"));
        doc.apply_changes(changes).expect("applies");
    }
    record::read(doc).expect("reads")
}

fn audit(dir: &Path) -> Vec<(String, String, String, String)> {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    let mut st = conn
        .prepare("SELECT record_id, by_operator, why, outcome FROM hold_releases ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_content_problem_holds_only_its_record_and_the_rest_of_the_change_set_applies() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicI64::new(now_ms()));
    let server = server_at(dir.path(), &clock);
    let mut tablet = Tablet::enroll(&server, OFFICE);
    // A verifier who is the clerk: a workflow the rules forbid.
    let bad_id = new_record_id();
    let mut bad = record::new_record(
        tablet.actor(),
        record::RecordKind::Birth,
        OFFICE,
        &birth(),
        &step(Action::Submit, "clerk"),
    )
    .unwrap();
    record::append_transition(&mut bad, &step(Action::Verify, "clerk")).unwrap();
    record::append_transition(&mut bad, &step(Action::Approve, "registrar")).unwrap();
    // Born three days after the server's today: held for its data.
    let today = Date::today_in_cambodia(clock.load(Ordering::SeqCst));
    let (future_id, mut future) = approved(&tablet, &birth_on(today.add_days(3).unwrap()));
    // Born "tomorrow" by the server's clock: a tablet a few hours ahead.
    let (tomorrow_id, mut tomorrow) = approved(&tablet, &birth_on(today.add_days(1).unwrap()));
    let (good_id, mut good) = approved(&tablet, &birth());
    let cs = tablet.seal(vec![
        record_changes(bad_id, Tablet::all_changes(&mut bad)),
        record_changes(future_id, Tablet::all_changes(&mut future)),
        record_changes(tomorrow_id, Tablet::all_changes(&mut tomorrow)),
        record_changes(good_id, Tablet::all_changes(&mut good)),
    ]);
    let resp = open_response(&server, &server.handle_sync(&tablet.request(vec![cs])).unwrap());
    assert_eq!(resp.acks.len(), 1);
    assert_eq!(
        resp.acks[0].outcome,
        AckOutcome::Applied,
        "the change set applies"
    );
    assert!(resp.refusal.is_none());

    let v = after(&resp, bad_id, &mut bad);
    assert_eq!(v.server.hold.as_deref(), Some("invalid_workflow"));
    assert!(v.server.kidc.is_none());
    let v = after(&resp, future_id, &mut future);
    assert_eq!(v.server.hold.as_deref(), Some("invalid_on_receipt"));
    assert!(v.server.kidc.is_none());
    let v = after(&resp, tomorrow_id, &mut tomorrow);
    assert!(v.server.hold.is_none(), "a day of clock difference is no problem");
    assert!(v.server.kidc.is_some());
    let v = after(&resp, good_id, &mut good);
    assert!(v.server.kidc.is_some(), "the good record is registered");

    let holds = admin::holds(server.storage()).unwrap();
    let mut held: Vec<(String, String)> = holds
        .iter()
        .map(|h| (h.record_id.clone(), h.reason.clone()))
        .collect();
    held.sort();
    let mut expected = vec![
        (
            uuid::Uuid::from_bytes(bad_id).to_string(),
            "invalid_workflow".to_string(),
        ),
        (
            uuid::Uuid::from_bytes(future_id).to_string(),
            "invalid_on_receipt".to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(held, expected);
    assert!(holds.iter().all(|h| h.office == OFFICE));
}

#[test]
fn a_release_rechecks_the_record_issues_its_kidc_once_it_passes_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicI64::new(now_ms()));
    let server = server_at(dir.path(), &clock);
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let today = Date::today_in_cambodia(clock.load(Ordering::SeqCst));
    let (id, mut doc) = approved(&tablet, &birth_on(today.add_days(3).unwrap()));
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let resp = open_response(&server, &server.handle_sync(&tablet.request(vec![cs])).unwrap());
    tablet.cursor = resp.cursor;
    assert_eq!(
        after(&resp, id, &mut doc).server.hold.as_deref(),
        Some("invalid_on_receipt")
    );
    let record = uuid::Uuid::from_bytes(id).to_string();

    // Too early: the date is still in the future. Nothing changes, but the
    // attempt is audited.
    let r = admin::release(&server, &record, "op-7", "the facility confirmed the date").unwrap();
    assert!(!r.released);
    assert_eq!(r.status, "held");
    assert!(
        r.problems.iter().any(|p| p.starts_with("child.date_of_birth")),
        "{:?}",
        r.problems
    );
    assert_eq!(admin::holds(server.storage()).unwrap().len(), 1);

    // Refused input: an operator id with a newline, an empty reason, a
    // record that is not held.
    assert!(admin::release(&server, &record, "op\n7", "x").is_err());
    assert!(admin::release(&server, &record, "op-7", "  ").is_err());
    assert!(admin::release(&server, &uuid::Uuid::now_v7().to_string(), "op-7", "x").is_err());

    // Four days later the date is in the past: the release passes.
    clock.fetch_add(4 * DAY_MS, Ordering::SeqCst);
    let r = admin::release(&server, &record, "op-7", "date confirmed").unwrap();
    assert!(r.released, "{:?}", r.problems);
    assert_eq!(r.status, "registered");
    let kidc = Kidc::parse(r.kidc.as_deref().expect("a code")).unwrap();
    assert!(admin::holds(server.storage()).unwrap().is_empty());
    // A second release finds no hold.
    assert!(admin::release(&server, &record, "op-7", "again").is_err());

    // The tablet learns it on its next sync.
    let resp = open_response(&server, &server.handle_sync(&tablet.request(vec![])).unwrap());
    let v = after(&resp, id, &mut doc);
    assert!(v.server.hold.is_none(), "the hold is lifted on the tablet");
    assert_eq!(v.server.kidc, Some(kidc));
    assert_eq!(v.status().unwrap().as_str(), "registered");
    assert!(
        resp.issuances.iter().any(|p| p.record_id == id),
        "with the proof of its code"
    );

    let a = audit(dir.path());
    assert_eq!(a.len(), 2, "both attempts audited, the refused inputs not");
    assert_eq!(
        a[0],
        (
            record.clone(),
            "op-7".into(),
            "the facility confirmed the date".into(),
            "still_held".into()
        )
    );
    assert_eq!(
        a[1],
        (record, "op-7".into(), "date confirmed".into(), "released".into())
    );
    let conn = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE)).unwrap();
    assert!(
        conn.execute("DELETE FROM hold_releases", []).is_err(),
        "the audit is append-only"
    );
}
