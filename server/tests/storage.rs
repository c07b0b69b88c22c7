//! The `Storage` trait's contract, checked on every backend (SQLite and
//! PostgreSQL, `both_backends!`): devices, the append-only change-set and
//! issuance logs, one code per record, the pull feed, the staff roster and
//! its history, holds, notifications by source, registration counters.
//! The registry's part is in `registry.rs`.

mod backend;

use backend::{Backend, both_backends};
use crvs_schema::Kidc;
use crvs_schema::wire::TabletReport;
use crvs_server::staff::{Role, Roles};
use crvs_server::storage::{
    ApiKeyRow, DeviceRefusal, FeedTo, Issuance, LogEntry, NewDevice, ReleaseAudit, Savepoint, StaffEvent,
    StaffPut, StaffPutOutcome, StoredNotification, StoredRecord, SyncSeen, WriteTx,
};
use uuid::Uuid;

const OFFICE: &str = "171003";

fn kidc(n: u32) -> Kidc {
    (n..)
        .find_map(|m| {
            let body = format!("1{m:08}");
            (0..10)
                .map(|c| format!("{body}{c}"))
                .find_map(|s| Kidc::parse(&s).ok())
        })
        .unwrap()
}

/// A birth's issuance of `code` to `record`, by `device`.
fn issuance(code: &Kidc, record: Uuid, device: Uuid) -> Issuance<'_> {
    Issuance {
        kidc: code,
        record_id: record,
        category: 1,
        issued_at_ms: 3_000,
        device_id: device,
        seq: 1,
        reason: "birth_approved",
    }
}

fn new_device(tx: &mut dyn WriteTx, n: u128, office: &str) -> Uuid {
    let device_id = Uuid::from_u128(0xd000 + n);
    tx.insert_device(&NewDevice {
        device_id,
        office: office.into(),
        public_key: [n as u8; 32],
        enrolled_at_ms: 1_000 + n as i64,
    })
    .unwrap();
    device_id
}

fn new_record(tx: &mut dyn WriteTx, n: u128, office: &str, device: Uuid) -> Uuid {
    let record_id = Uuid::from_u128(0xe000 + n);
    tx.insert_record(&StoredRecord {
        record_id,
        office: office.into(),
        origin_device: device,
        kind: "birth".into(),
        status: "submitted".into(),
        doc: vec![n as u8; 8],
        updated_at_ms: 2_000,
    })
    .unwrap();
    record_id
}

both_backends!(a_device_is_inserted_advanced_refused_and_revoked_once);
fn a_device_is_inserted_advanced_refused_and_revoked_once(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let id = new_device(&mut *tx, 1, OFFICE);
    let d = tx.device(id).unwrap().expect("the device");
    assert_eq!((d.office.as_str(), d.public_key), (OFFICE, [1; 32]));
    assert_eq!((d.last_seq, d.last_hash), (0, [0; 32]));
    assert_eq!((d.revoked_at_ms, d.refused.clone()), (None, None));
    assert_eq!(d.enrolled_at_ms, 1_001);
    tx.commit().unwrap();
    assert_eq!(db.storage.device(id).unwrap().unwrap().device_id, id);

    let mut tx = db.storage.begin().unwrap();
    let seen = SyncSeen {
        at_ms: 5_000,
        device_clock_ms: 5_100,
        skew_ms: 100,
        flagged: false,
        counter: 3,
        report: Some(TabletReport {
            change_sets_waiting: 4,
            records_waiting: 310,
            app_version: "0.1.0".into(),
        }),
    };
    assert!(tx.record_sync(id, &seen).unwrap());
    assert!(!tx.record_sync(id, &seen).unwrap(), "a replayed counter");
    assert_eq!(
        tx.device(id).unwrap().unwrap().report,
        seen.report,
        "what the tablet reported"
    );
    tx.advance_device(id, 1, &[7; 32]).unwrap();
    let refusal = DeviceRefusal {
        seq: 2,
        code: "invalid_record".into(),
        at_ms: 5_200,
    };
    tx.record_refusal(id, &refusal).unwrap();
    assert_eq!(tx.device(id).unwrap().unwrap().refused, Some(refusal));
    tx.advance_device(id, 2, &[8; 32]).unwrap();
    let d = tx.device(id).unwrap().unwrap();
    assert_eq!((d.last_seq, d.last_hash, d.refused), (2, [8; 32], None));
    assert_eq!((d.last_request_counter, d.last_sync_at_ms), (3, Some(5_000)));
    // An older tablet reports nothing: its report is unknown again.
    let older = SyncSeen {
        counter: 4,
        report: None,
        ..seen.clone()
    };
    assert!(tx.record_sync(id, &older).unwrap());
    assert_eq!(tx.device(id).unwrap().unwrap().report, None);
    assert!(tx.revoke_device(id, 6_000).unwrap());
    assert!(tx.revoke_device(id, 7_000).unwrap());
    assert!(!tx.revoke_device(Uuid::from_u128(99), 6_000).unwrap());
    tx.commit().unwrap();
    let d = db.storage.device(id).unwrap().unwrap();
    assert_eq!(d.revoked_at_ms, Some(6_000), "the first revocation stands");
    assert_eq!(db.storage.list_devices().unwrap().len(), 1);

    // Dropped without a commit: nothing was written.
    let mut tx = db.storage.begin().unwrap();
    let other = new_device(&mut *tx, 2, OFFICE);
    drop(tx);
    assert_eq!(db.storage.device(other).unwrap(), None);
}

both_backends!(the_change_set_log_and_the_issuance_log_are_append_only_in_the_database);
fn the_change_set_log_and_the_issuance_log_are_append_only_in_the_database(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let device = new_device(&mut *tx, 1, OFFICE);
    let record = new_record(&mut *tx, 1, OFFICE, device);
    tx.append_change_set(&LogEntry {
        device_id: device,
        seq: 1,
        hash: &[9; 32],
        signed: b"signed bytes",
        received_at_ms: 3_000,
    })
    .unwrap();
    assert_eq!(tx.logged_hash(device, 1).unwrap(), Some([9; 32]));
    assert_eq!(tx.logged_hash(device, 2).unwrap(), None);
    assert!(tx.insert_issuance(&issuance(&kidc(1), record, device)).unwrap());
    tx.commit().unwrap();

    for sql in [
        "UPDATE change_set_log SET received_at = 0",
        "UPDATE change_set_log SET hash = 'x'",
        "DELETE FROM change_set_log",
        "UPDATE kidc_issuance SET reason = 'x'",
        "UPDATE kidc_issuance SET record_id = 'x'",
        "DELETE FROM kidc_issuance",
    ] {
        assert!(db.execute(sql).is_err(), "{sql} must be refused");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM change_set_log"), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM kidc_issuance"), 1);
    assert_eq!(db.text("SELECT reason FROM kidc_issuance"), "birth_approved");
}

both_backends!(a_code_is_issued_once_and_a_record_gets_one_code);
fn a_code_is_issued_once_and_a_record_gets_one_code(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let device = new_device(&mut *tx, 1, OFFICE);
    let first = new_record(&mut *tx, 1, OFFICE, device);
    let second = new_record(&mut *tx, 2, OFFICE, device);
    let issue = |tx: &mut dyn WriteTx, code: &Kidc, record: Uuid| {
        tx.insert_issuance(&issuance(code, record, device)).unwrap()
    };
    assert_ne!(kidc(10), kidc(20));
    assert!(issue(&mut *tx, &kidc(10), first));
    assert!(!issue(&mut *tx, &kidc(10), second), "the code is taken");
    assert!(!issue(&mut *tx, &kidc(20), first), "the record has a code");
    assert_eq!(tx.issued_kidc(first).unwrap(), Some(kidc(10)));
    assert_eq!(tx.issued_kidc(second).unwrap(), None);
    assert!(issue(&mut *tx, &kidc(20), second));
    tx.commit().unwrap();
    assert_eq!(db.storage.issuance_count().unwrap(), 2);
    let mut issued = db.storage.issuances().unwrap();
    issued.sort_by_key(|(_, r)| *r);
    assert_eq!(issued, [(kidc(10), first), (kidc(20), second)]);
}

both_backends!(the_feed_hands_out_every_entry_in_cursor_order_and_skips_none);
fn the_feed_hands_out_every_entry_in_cursor_order_and_skips_none(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let a = new_device(&mut *tx, 1, OFFICE);
    let b = new_device(&mut *tx, 2, OFFICE);
    for d in [a, b] {
        assert_eq!(tx.seed_office_feed(d, OFFICE, 1_500).unwrap(), 0);
    }
    let alone = new_device(&mut *tx, 3, "171004");
    assert_eq!(tx.seed_office_feed(alone, "171004", 1_500).unwrap(), 0);
    tx.commit().unwrap();

    // 30 entries over three transactions: the server's, and tablet A's.
    let mut expected_b = Vec::new();
    let mut expected_a = Vec::new();
    for batch in 0..3u8 {
        let mut tx = db.storage.begin().unwrap();
        for i in 0..10u8 {
            let n = batch * 10 + i;
            let record = new_record(&mut *tx, n.into(), OFFICE, a);
            let change = vec![n; 3];
            if n % 3 == 0 {
                tx.append_feed(
                    FeedTo::OfficeExcept {
                        office: OFFICE,
                        from: a,
                    },
                    record,
                    &change,
                    4_000,
                )
                .unwrap();
            } else {
                tx.append_feed(FeedTo::Office(OFFICE), record, &change, 4_000)
                    .unwrap();
                expected_a.push((record, change.clone()));
            }
            expected_b.push((record, change));
        }
        tx.commit().unwrap();
    }
    // A tablet's change with no other device of its office is not kept.
    let mut tx = db.storage.begin().unwrap();
    let r = new_record(&mut *tx, 100, "171004", alone);
    tx.append_feed(
        FeedTo::OfficeExcept {
            office: "171004",
            from: alone,
        },
        r,
        b"x",
        4_000,
    )
    .unwrap();
    assert!(tx.server_changes_since(alone, 0, 100).unwrap().is_empty());

    let pull = |tx: &mut dyn WriteTx, device: Uuid, limit: usize| {
        let mut cursor = 0;
        let mut got = Vec::new();
        loop {
            let page = tx.server_changes_since(device, cursor, limit).unwrap();
            assert!(page.len() <= limit);
            if page.is_empty() {
                return got;
            }
            for c in page {
                assert!(c.cursor > cursor, "cursors increase");
                cursor = c.cursor;
                got.push((c.record_id, c.change));
            }
        }
    };
    for limit in [1, 4, 7, 100] {
        assert_eq!(pull(&mut *tx, b, limit), expected_b, "limit {limit}");
        assert_eq!(
            pull(&mut *tx, a, limit),
            expected_a,
            "limit {limit}: not its own changes"
        );
    }
    let all = tx.server_changes_since(b, 0, 100).unwrap();
    let last = all.last().unwrap().cursor;
    assert!(tx.server_changes_since(b, last, 100).unwrap().is_empty());
    assert!(tx.server_changes_since(b, u64::MAX, 100).unwrap().is_empty());
    tx.set_feed_sent(b, all[0].cursor).unwrap();
    tx.commit().unwrap();
    // The feed's lag: when the first entry not sent yet was written.
    assert_eq!(
        db.storage.device(b).unwrap().unwrap().feed_sent_cursor,
        Some(all[0].cursor)
    );
    assert_eq!(
        db.storage.feed_waiting_since(b, all[0].cursor).unwrap(),
        Some(4_000)
    );
    assert_eq!(
        db.storage
            .feed_waiting_since(b, all[all.len() - 2].cursor)
            .unwrap(),
        Some(4_000)
    );
    assert_eq!(
        db.storage.feed_waiting_since(b, last).unwrap(),
        None,
        "up to date"
    );
    assert_eq!(db.storage.feed_waiting_since(b, u64::MAX).unwrap(), None);
    assert_eq!(
        db.storage.feed_waiting_since(alone, 0).unwrap(),
        None,
        "nothing for it"
    );
    assert_eq!(
        db.storage.device(a).unwrap().unwrap().feed_sent_cursor,
        None,
        "never answered"
    );
}

both_backends!(a_device_enrolled_later_starts_from_a_snapshot_of_its_office);
fn a_device_enrolled_later_starts_from_a_snapshot_of_its_office(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let a = new_device(&mut *tx, 1, OFFICE);
    tx.seed_office_feed(a, OFFICE, 1_500).unwrap();
    let r1 = new_record(&mut *tx, 1, OFFICE, a);
    let r2 = new_record(&mut *tx, 2, OFFICE, a);
    tx.append_feed(FeedTo::Office(OFFICE), r1, b"before", 3_000)
        .unwrap();
    let later = new_device(&mut *tx, 2, OFFICE);
    assert_eq!(tx.seed_office_feed(later, OFFICE, 3_500).unwrap(), 2);
    tx.append_feed(FeedTo::Office(OFFICE), r2, b"after", 4_000)
        .unwrap();
    tx.commit().unwrap();
    let mut tx = db.storage.begin().unwrap();
    let feed = tx.server_changes_since(later, 0, 100).unwrap();
    let got: Vec<(Uuid, Vec<u8>)> = feed.into_iter().map(|c| (c.record_id, c.change)).collect();
    assert_eq!(
        got,
        [(r1, vec![1; 8]), (r2, vec![2; 8]), (r2, b"after".to_vec())],
        "the snapshot of each record, then what came after, not what came before"
    );
}

fn put<'a>(staff_id: &'a str, roles: Roles, pin_hash: Option<&'a str>, at_ms: i64) -> StaffPut<'a> {
    StaffPut {
        office: OFFICE,
        staff_id,
        roles,
        pin_hash,
        by: "operator-1",
        at_ms,
    }
}

both_backends!(the_roster_keeps_every_change_in_its_history);
fn the_roster_keeps_every_change_in_its_history(backend: Backend) {
    let db = backend::open(backend);
    let clerk = Roles::of(&[Role::Clerk]);
    let both = Roles::of(&[Role::Clerk, Role::Verifier]);
    let mut tx = db.storage.begin().unwrap();
    assert_eq!(
        tx.put_staff(&put("Clerk-01", clerk, None, 1_000)).unwrap(),
        StaffPutOutcome::PinNeeded
    );
    let StaffPutOutcome::Done { member, events } = tx
        .put_staff(&put("Clerk-01", clerk, Some("$hash1"), 1_000))
        .unwrap()
    else {
        panic!("a PIN was given")
    };
    assert_eq!(events, [StaffEvent::Added, StaffEvent::PinSet]);
    assert_eq!(member.staff_key, "clerk-01");
    // The same person, however the id is written; nothing changed.
    let StaffPutOutcome::Done { events, .. } = tx.put_staff(&put("CLERK-01", clerk, None, 1_500)).unwrap()
    else {
        panic!("on the roster")
    };
    assert!(events.is_empty());
    let StaffPutOutcome::Done { member, events } = tx.put_staff(&put("clerk-01", both, None, 2_000)).unwrap()
    else {
        panic!("on the roster")
    };
    assert_eq!(events, [StaffEvent::RolesChanged]);
    assert_eq!(member.pin_hash.as_deref(), Some("$hash1"));
    tx.commit().unwrap();

    let mut tx = db.storage.begin().unwrap();
    let removed = tx
        .remove_staff(OFFICE, "CLERK-01", "operator-2", 3_000)
        .unwrap()
        .expect("on the roster");
    assert_eq!((removed.removed_at_ms, removed.pin_hash), (Some(3_000), None));
    assert_eq!(
        tx.remove_staff(OFFICE, "clerk-01", "operator-2", 3_100).unwrap(),
        None
    );
    let row = tx.staff(OFFICE, "clerk-01").unwrap().expect("removed rows stay");
    assert!(!row.is_active());
    tx.commit().unwrap();

    let roster = db.storage.roster(OFFICE).unwrap();
    assert_eq!(roster.len(), 1);
    assert_eq!(roster[0].staff_id, "Clerk-01");
    let history: Vec<(StaffEvent, Roles, i64)> = db
        .storage
        .staff_history(OFFICE)
        .unwrap()
        .into_iter()
        .map(|e| (e.event, e.roles, e.at_ms))
        .collect();
    assert_eq!(
        history,
        [
            (StaffEvent::Added, clerk, 1_000),
            (StaffEvent::PinSet, clerk, 1_000),
            (StaffEvent::RolesChanged, both, 2_000),
            (StaffEvent::Removed, Roles::NONE, 3_000),
        ]
    );
    let at = |ms| db.storage.staff_role_at(OFFICE, "clerk-01", ms).unwrap();
    assert_eq!(at(999), None);
    assert_eq!(at(1_000), Some(clerk));
    assert_eq!(at(2_500), Some(both));
    assert_eq!(at(3_000), None, "off the roster at the instant of removal");
    let removals = db.storage.staff_removals().unwrap();
    assert_eq!(removals.len(), 1);
    assert_eq!(
        (
            removals[0].staff_key.as_str(),
            removals[0].removed_at_ms,
            removals[0].by.as_str()
        ),
        ("clerk-01", 3_000, "operator-2")
    );
    assert!(db.execute("DELETE FROM staff_history").is_err(), "append-only");

    // Put back: added again, with a PIN.
    let mut tx = db.storage.begin().unwrap();
    let StaffPutOutcome::Done { member, events } = tx
        .put_staff(&put("clerk-01", clerk, Some("$hash2"), 4_000))
        .unwrap()
    else {
        panic!("a PIN was given")
    };
    assert_eq!(events, [StaffEvent::Added, StaffEvent::PinSet]);
    assert!(member.is_active());
    tx.commit().unwrap();
    assert_eq!(db.storage.staff_history(OFFICE).unwrap().len(), 6);
    assert!(db.storage.roster("171004").unwrap().is_empty());
}

both_backends!(a_hold_is_listed_until_a_release_and_can_come_back);
fn a_hold_is_listed_until_a_release_and_can_come_back(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let device = new_device(&mut *tx, 1, OFFICE);
    let record = new_record(&mut *tx, 1, OFFICE, device);
    let other = new_record(&mut *tx, 2, OFFICE, device);
    tx.insert_hold(record, OFFICE, "date_in_future", 1_000).unwrap();
    tx.insert_hold(other, OFFICE, "already_married", 2_000).unwrap();
    assert_eq!(tx.hold(record).unwrap().unwrap().reason, "date_in_future");
    tx.commit().unwrap();
    let held: Vec<Uuid> = db
        .storage
        .holds()
        .unwrap()
        .into_iter()
        .map(|h| h.record_id)
        .collect();
    assert_eq!(held, [record, other], "oldest first");

    let audit = |outcome| ReleaseAudit {
        record_id: record,
        hold_reason: "date_in_future",
        by: "operator-1",
        why: "checked",
        at_ms: 3_000,
        outcome,
    };
    let mut tx = db.storage.begin().unwrap();
    tx.audit_release(&audit("still_held")).unwrap();
    assert!(tx.hold(record).unwrap().is_some());
    tx.audit_release(&audit("released")).unwrap();
    assert_eq!(tx.hold(record).unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(db.storage.holds().unwrap().len(), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM hold_releases"), 2);

    let mut tx = db.storage.begin().unwrap();
    tx.insert_hold(record, OFFICE, "unknown_kidc", 4_000).unwrap();
    let again = tx.hold(record).unwrap().expect("held again");
    assert_eq!((again.reason.as_str(), again.since), ("unknown_kidc", 4_000));
    tx.commit().unwrap();
    assert_eq!(db.storage.holds().unwrap().len(), 2);
}

fn notification(n: u128, reference: &str, api_key_id: Uuid) -> StoredNotification {
    StoredNotification {
        notification_id: Uuid::from_u128(0xf000 + n),
        kind: "birth".into(),
        source_system: "HMIS".into(),
        source_reference: reference.into(),
        commune: OFFICE.into(),
        payload: "{}".into(),
        api_key_id,
        received_at_ms: 1_000 + n as i64,
        registered_record_id: None,
        registered_at_ms: None,
    }
}

both_backends!(a_notification_is_stored_once_per_source_and_registered_once);
fn a_notification_is_stored_once_per_source_and_registered_once(backend: Backend) {
    let db = backend::open(backend);
    let key = ApiKeyRow {
        id: Uuid::from_u128(0xa1),
        name: "HMIS".into(),
        scope: "notify".into(),
        key_hash: "ab".repeat(32),
        created_at_ms: 500,
        revoked_at_ms: None,
    };
    let mut tx = db.storage.begin().unwrap();
    tx.insert_api_key(&key).unwrap();
    let first = notification(1, "ref-1", key.id);
    assert!(tx.insert_notification(&first).unwrap());
    assert!(
        !tx.insert_notification(&notification(2, "ref-1", key.id)).unwrap(),
        "same source and reference"
    );
    assert!(tx.insert_notification(&notification(3, "ref-3", key.id)).unwrap());
    assert_eq!(
        tx.notification_by_source("HMIS", "ref-1").unwrap(),
        Some(first.clone())
    );
    assert_eq!(tx.notification_by_source("HMIS", "ref-2").unwrap(), None);
    assert_eq!(tx.notification_by_source("other", "ref-1").unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(db.storage.pending_notifications(OFFICE).unwrap().len(), 2);
    assert_eq!(
        db.storage.unregistered_notifications(Some(1_002)).unwrap(),
        std::slice::from_ref(&first)
    );

    let record = Uuid::from_u128(0xe1);
    let mut tx = db.storage.begin().unwrap();
    let id = first.notification_id;
    assert!(
        !tx.register_notification(id, record, "171004", "birth", 5_000)
            .unwrap()
    );
    assert!(
        !tx.register_notification(id, record, OFFICE, "death", 5_000)
            .unwrap()
    );
    assert!(
        tx.register_notification(id, record, OFFICE, "birth", 5_000)
            .unwrap()
    );
    assert!(
        !tx.register_notification(id, Uuid::from_u128(0xe2), OFFICE, "birth", 5_100)
            .unwrap()
    );
    tx.commit().unwrap();
    let pending = db.storage.pending_notifications(OFFICE).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].source_reference, "ref-3");
    let registered = db.storage.registered_notifications(4_000).unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(
        (registered[0].registered_record_id, registered[0].registered_at_ms),
        (Some(record), Some(5_000))
    );
    assert!(db.storage.registered_notifications(6_000).unwrap().is_empty());
}

both_backends!(registration_numbers_count_up_per_office_and_year_and_never_go_back);
fn registration_numbers_count_up_per_office_and_year_and_never_go_back(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 1);
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 2);
    assert_eq!(tx.next_registration_seq(OFFICE, 2027, 0).unwrap(), 1);
    assert_eq!(tx.next_registration_seq("171004", 2026, 0).unwrap(), 1);
    assert_eq!(
        tx.next_registration_seq(OFFICE, 2026, 10).unwrap(),
        11,
        "above the ledger's"
    );
    tx.raise_registration_counter(OFFICE, 2026, 20).unwrap();
    tx.raise_registration_counter(OFFICE, 2026, 5).unwrap();
    tx.raise_registration_counter("171005", 2026, 7).unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 21);
    assert_eq!(tx.next_registration_seq("171005", 2026, 0).unwrap(), 8);
    tx.commit().unwrap();

    // A rolled-back transaction gives its number back.
    let mut tx = db.storage.begin().unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 22);
    drop(tx);
    let mut tx = db.storage.begin().unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 22);
}

/// The record `new_record(_, n, ..)` made, with another document.
fn same_record_again(n: u128, device: Uuid) -> StoredRecord {
    StoredRecord {
        record_id: Uuid::from_u128(0xe000 + n),
        office: OFFICE.into(),
        origin_device: device,
        kind: "birth".into(),
        status: "registered".into(),
        doc: vec![0xff; 8],
        updated_at_ms: 9_000,
    }
}

// A commit group runs each request in a savepoint, and each change set in
// one inside it (`ingest::write`). PostgreSQL sends the writes whose answer
// is not read with the next statement that needs one; a write that fails
// must still fail its own request (at the latest when its savepoint is
// released) and be undone with it, and never cost the requests around it.
both_backends!(a_failed_write_fails_its_own_request_and_the_others_of_the_group_commit);
fn a_failed_write_fails_its_own_request_and_the_others_of_the_group_commit(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let device = new_device(&mut *tx, 1, OFFICE);
    let first = new_record(&mut *tx, 1, OFFICE, device);
    tx.commit().unwrap();

    let mut tx = db.storage.begin().unwrap();
    // Request 1: advances the chain, then inserts a record that exists.
    tx.savepoint(Savepoint::Request).unwrap();
    let one = (|| {
        tx.advance_device(device, 5, &[5; 32])?;
        tx.insert_record(&same_record_again(1, device))?;
        tx.release_savepoint(Savepoint::Request)
    })();
    assert!(one.is_err(), "a record inserted twice is refused, by its request");
    tx.rollback_to_savepoint(Savepoint::Request).unwrap();

    // Request 2: a new record, and a change set inside it that fails and
    // is undone alone (what came before it in the request stands).
    tx.savepoint(Savepoint::Request).unwrap();
    let second = new_record(&mut *tx, 2, OFFICE, device);
    tx.set_lineage(device, &[7; 16], false).unwrap();
    tx.savepoint(Savepoint::ChangeSet).unwrap();
    tx.advance_device(device, 6, &[6; 32]).unwrap();
    let refused = tx
        .insert_record(&same_record_again(1, device))
        .and_then(|()| tx.load_record(first).map(|_| ()));
    assert!(
        refused.is_err(),
        "the failure shows by the next read at the latest"
    );
    tx.rollback_to_savepoint(Savepoint::ChangeSet).unwrap();
    tx.release_savepoint(Savepoint::Request).unwrap();

    // Request 3: nothing but a read after request 2's writes.
    tx.savepoint(Savepoint::Request).unwrap();
    assert!(tx.load_record(second).unwrap().is_some(), "a write is read back");
    tx.release_savepoint(Savepoint::Request).unwrap();
    tx.commit().unwrap();

    let d = db.storage.device(device).unwrap().unwrap();
    assert_eq!(
        (d.last_seq, d.last_hash),
        (0, [0; 32]),
        "request 1 and the refused change set were undone"
    );
    assert_eq!(d.lineage, Some([7; 16]), "request 2 stands");
    let mut tx = db.storage.begin().unwrap();
    let kept = tx.load_record(first).unwrap().expect("the first record");
    assert_eq!((kept.doc, kept.status.as_str()), (vec![1; 8], "submitted"));
    assert!(tx.load_record(second).unwrap().is_some(), "request 2's record");
}

both_backends!(a_change_set_set_aside_marks_its_records_and_moves_the_chain_past_it);
fn a_change_set_set_aside_marks_its_records_and_moves_the_chain_past_it(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let device = new_device(&mut *tx, 1, OFFICE);
    let (a, b, other) = (
        Uuid::from_u128(0xa1),
        Uuid::from_u128(0xa2),
        Uuid::from_u128(0xa3),
    );
    tx.set_aside(
        &LogEntry {
            device_id: device,
            seq: 1,
            hash: &[4; 32],
            signed: b"signed bytes",
            received_at_ms: 3_000,
        },
        &[a, b],
    )
    .unwrap();
    assert!(tx.is_set_aside(a).unwrap() && tx.is_set_aside(b).unwrap());
    assert!(!tx.is_set_aside(other).unwrap());
    assert_eq!(
        tx.set_aside_among(&[other, b, a]).unwrap(),
        [a, b].into_iter().collect(),
        "asked together, the same answer"
    );
    assert!(tx.set_aside_among(&[]).unwrap().is_empty());
    assert_eq!(tx.set_aside_hash(device, 1).unwrap(), Some([4; 32]));
    assert_eq!(tx.set_aside_hash(device, 2).unwrap(), None);
    tx.commit().unwrap();
    let d = db.storage.device(device).unwrap().unwrap();
    assert_eq!((d.last_seq, d.last_hash), (1, [4; 32]));
}

// A registration number is never handed out twice in one transaction,
// however many records of an office it registers, and a rolled-back
// request's numbers are taken again by the next.
both_backends!(registration_numbers_in_one_transaction_follow_its_savepoints);
fn registration_numbers_in_one_transaction_follow_its_savepoints(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    tx.savepoint(Savepoint::Request).unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 1);
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 2);
    tx.release_savepoint(Savepoint::Request).unwrap();
    tx.savepoint(Savepoint::Request).unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 3);
    assert_eq!(
        tx.next_registration_seq(OFFICE, 2026, 7).unwrap(),
        8,
        "above the ledger's"
    );
    tx.rollback_to_savepoint(Savepoint::Request).unwrap();
    assert_eq!(
        tx.next_registration_seq(OFFICE, 2026, 0).unwrap(),
        3,
        "given back"
    );
    tx.raise_registration_counter(OFFICE, 2026, 40).unwrap();
    assert_eq!(tx.next_registration_seq(OFFICE, 2026, 0).unwrap(), 41);
    tx.commit().unwrap();
    let mut tx = db.storage.begin().unwrap();
    assert_eq!(
        tx.next_registration_seq(OFFICE, 2026, 0).unwrap(),
        42,
        "as committed"
    );
}

// What the check of a change set's records found (set aside, stored, with
// a code; PostgreSQL remembers it for the records' next steps) stays true
// through the transaction's own writes and its rolled-back savepoints.
both_backends!(what_the_check_of_a_change_set_found_follows_the_transactions_writes);
fn what_the_check_of_a_change_set_found_follows_the_transactions_writes(backend: Backend) {
    let db = backend::open(backend);
    let mut tx = db.storage.begin().unwrap();
    let device = new_device(&mut *tx, 1, OFFICE);
    let (code_old, code_fresh) = (kidc(30), kidc(40));
    let old = new_record(&mut *tx, 1, OFFICE, device);
    assert!(tx.insert_issuance(&issuance(&code_old, old, device)).unwrap());
    tx.commit().unwrap();

    let mut tx = db.storage.begin().unwrap();
    let fresh = Uuid::from_u128(0xe000 + 2);
    tx.savepoint(Savepoint::Request).unwrap();
    assert!(tx.set_aside_among(&[old, fresh]).unwrap().is_empty());
    assert!(tx.load_record(old).unwrap().is_some());
    assert!(tx.load_record(fresh).unwrap().is_none());
    assert_eq!(tx.issued_kidc(old).unwrap(), Some(kidc(30)));
    assert_eq!(tx.issued_kidc(fresh).unwrap(), None);
    new_record(&mut *tx, 2, OFFICE, device);
    assert!(tx.load_record(fresh).unwrap().is_some(), "stored now");
    assert!(tx.insert_issuance(&issuance(&code_fresh, fresh, device)).unwrap());
    assert_eq!(tx.issued_kidc(fresh).unwrap(), Some(kidc(40)), "a code now");
    tx.rollback_to_savepoint(Savepoint::Request).unwrap();
    assert!(tx.load_record(fresh).unwrap().is_none(), "rolled back");
    assert_eq!(tx.issued_kidc(fresh).unwrap(), None, "rolled back");

    tx.savepoint(Savepoint::Request).unwrap();
    assert!(tx.set_aside_among(&[fresh]).unwrap().is_empty());
    new_record(&mut *tx, 2, OFFICE, device);
    assert!(
        !tx.insert_issuance(&issuance(&code_old, fresh, device)).unwrap(),
        "the code is taken"
    );
    assert_eq!(tx.issued_kidc(fresh).unwrap(), None);
    tx.release_savepoint(Savepoint::Request).unwrap();
    tx.commit().unwrap();
    let mut tx = db.storage.begin().unwrap();
    assert!(tx.load_record(fresh).unwrap().is_some());
    assert_eq!(tx.issued_kidc(fresh).unwrap(), None);
}
