//! The registrar's workflow and store, through the public API, on real
//! SQLite files in temporary folders.

mod common;

use common::*;
use crvs_core::{Error, RecordId, Registrar, Status, SyncState};

#[test]
fn an_invalid_registration_names_every_bad_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let err = r
        .register_birth(&fixture("birth-invalid.json"), "clerk")
        .unwrap_err();
    let Error::InvalidRecord(problems) = err else {
        panic!("expected InvalidRecord, got {err:?}");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for expected in [
        "child.family_name",
        "child.sex",
        "child.date_of_birth",
        "child.place_of_birth.village_code",
        "mother",
        "informant",
        "residence_village_code",
    ] {
        assert!(
            fields.contains(&expected),
            "{expected} is not named in {fields:?}"
        );
    }
    assert!(r.list().unwrap().is_empty());
    assert_eq!(r.list_json().unwrap(), r#"{"records":[]}"#);
}

#[test]
fn malformed_json_is_an_invalid_record_too() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    assert!(matches!(
        r.register_birth("{ not json", "clerk"),
        Err(Error::InvalidRecord(_))
    ));
    assert!(r.list().unwrap().is_empty());
}

#[test]
fn a_registered_birth_reads_back_submitted_and_pending() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    let rec = r.record(&id).unwrap();
    assert_eq!(rec.view.status().unwrap(), Status::Submitted);
    assert_eq!(rec.view.office, COMMUNE);
    assert_eq!(rec.view.clerk(), Some("clerk"));
    assert_eq!(rec.sync_state, SyncState::Pending);
    let shown: serde_json::Value = serde_json::from_str(&r.record_json(&id).unwrap()).unwrap();
    assert_eq!(shown["record_id"], id.to_string());
    assert_eq!(shown["status"], "submitted");
    assert_eq!(shown["sync_state"], "pending");
    assert_eq!(shown["data"]["child"]["given_name_latin"], "DARA");
    assert!(shown.get("kidc").is_none());
    let list: serde_json::Value = serde_json::from_str(&r.list_json().unwrap()).unwrap();
    let line = &list["records"][0];
    assert_eq!(line["record_id"], id.to_string());
    assert_eq!(line["status"], "submitted");
    assert!(line.get("data").is_none(), "the list carries no personal data");
}

#[test]
fn the_clerk_cannot_verify_their_own_record_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let id = r.register_birth(&sok_dara(), "clerk-7").unwrap();
    let before = r.record_json(&id).unwrap();
    let err = r.verify(&id, "clerk-7").unwrap_err();
    assert!(matches!(err, Error::NotAllowed(_)), "{err:?}");
    assert!(matches!(r.verify(&id, " clerk-7 "), Err(Error::NotAllowed(_))));
    assert_eq!(r.record_json(&id).unwrap(), before);
    assert_eq!(r.record(&id).unwrap().view.transitions.len(), 1);
    assert_eq!(r.verify(&id, "checker").unwrap(), Status::Verified);
}

#[test]
fn approving_an_unverified_record_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    let before = r.record_json(&id).unwrap();
    assert!(matches!(r.approve(&id, "registrar"), Err(Error::NotAllowed(_))));
    assert_eq!(r.record_json(&id).unwrap(), before);
    r.verify(&id, "checker").unwrap();
    assert_eq!(r.approve(&id, "registrar").unwrap(), Status::Approved);
    assert!(matches!(r.approve(&id, "registrar"), Err(Error::NotAllowed(_))));
}

#[test]
fn a_rejection_needs_a_reason_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let id = r.register_birth(&no_given_name(), "clerk").unwrap();
    assert!(matches!(
        r.reject(&id, "registrar", "  "),
        Err(Error::NotAllowed(_))
    ));
    assert_eq!(r.record(&id).unwrap().view.transitions.len(), 1);
    assert_eq!(
        r.reject(&id, "registrar", "informant not present").unwrap(),
        Status::Rejected
    );
    let rec = r.record(&id).unwrap();
    assert_eq!(
        rec.view.transitions[1].reason.as_deref(),
        Some("informant not present")
    );
    assert!(matches!(r.verify(&id, "checker"), Err(Error::NotAllowed(_))));
}

#[test]
fn every_transition_records_who_when_and_on_which_device() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    r.verify(&id, "checker").unwrap();
    enroll_offline(&r);
    r.approve(&id, "registrar").unwrap();
    let ts = r.record(&id).unwrap().view.transitions;
    assert_eq!(
        ts.iter().map(|t| t.by.as_str()).collect::<Vec<_>>(),
        ["clerk", "checker", "registrar"]
    );
    assert!(ts.iter().all(|t| t.at_ms > 1_700_000_000_000));
    // Before enrolment the store's actor id names the device, after it the
    // device id.
    assert_eq!(ts[0].device, ts[1].device);
    assert_eq!(Some(ts[2].device.clone()), r.device_id().unwrap());
}

#[test]
fn an_unknown_record_id_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    assert!(matches!(r.record(&RecordId::new()), Err(Error::NotFound)));
    assert!(matches!(r.verify(&RecordId::new(), "x"), Err(Error::NotFound)));
    assert!(matches!(
        RecordId::parse("not-a-uuid"),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = new_store(dir.path());
        r.register_birth(&sok_dara(), "clerk").unwrap();
    }
    let db = dir.path().join("crvs.db");
    let before = std::fs::read(&db).unwrap();
    assert!(matches!(
        Registrar::open(dir.path(), &"wrong".into()),
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(
        Registrar::open(dir.path(), &"".into()),
        Err(Error::WrongPassphrase)
    ));
    assert_eq!(std::fs::read(&db).unwrap(), before, "the database file changed");
    let r = Registrar::open(dir.path(), &PASSPHRASE.into()).unwrap();
    assert_eq!(r.list().unwrap().len(), 1);
}

#[test]
fn init_refuses_an_existing_store_and_a_bad_commune() {
    let dir = tempfile::tempdir().unwrap();
    new_store(dir.path());
    assert!(matches!(
        Registrar::init_with_kdf(
            dir.path(),
            &PASSPHRASE.into(),
            COMMUNE,
            crvs_core::crypto::KdfParams::INSECURE_FOR_TESTS
        ),
        Err(Error::AlreadyInitialized)
    ));
    let other = tempfile::tempdir().unwrap();
    for bad in ["1710", "17100301", "991003", "abcdef"] {
        assert!(
            matches!(
                Registrar::init(other.path(), &PASSPHRASE.into(), bad),
                Err(Error::InvalidInput(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        Registrar::open(other.path(), &"p".into()),
        Err(Error::NotInitialized)
    ));
}

#[test]
fn a_file_that_is_not_a_store_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crvs.db"), vec![0x55u8; 8192]).unwrap();
    let err = Registrar::open(dir.path(), &"p".into()).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    let other = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(other.path().join("crvs.db")).unwrap();
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    assert!(matches!(
        Registrar::open(other.path(), &"p".into()),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn enrolment_with_a_token_for_another_office_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let t = EnrollOnly {
        office: "120101".into(),
        server_key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
    };
    assert!(matches!(
        r.enroll_with(&t, "http://127.0.0.1:9", &t.token()),
        Err(Error::NotAllowed(_))
    ));
    assert_eq!(r.device_id().unwrap(), None);
    assert!(matches!(r.sync(&crvs_core::Quiet), Err(Error::NotEnrolled)));
    enroll_offline(&r);
    assert!(r.device_id().unwrap().is_some());
    assert!(matches!(
        r.enroll_with(&t, "http://127.0.0.1:9", &t.token()),
        Err(Error::NotAllowed(_))
    ));
}

#[test]
fn sync_against_an_unreachable_server_is_offline_and_keeps_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    enroll_offline(&r);
    let id = r.register_birth(&sok_dara(), "clerk").unwrap();
    assert!(matches!(r.sync(&crvs_core::Quiet), Err(Error::Offline(_))));
    assert_eq!(r.record(&id).unwrap().sync_state, SyncState::Pending);
    assert_eq!(r.check().unwrap(), 1);
    // A second attempt makes no second change set for the same changes.
    assert!(matches!(r.sync(&crvs_core::Quiet), Err(Error::Offline(_))));
    let conn = rusqlite::Connection::open(dir.path().join("crvs.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn lookup_hashes_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    drop(new_store(dir.path()));
    let a = Registrar::open(dir.path(), &PASSPHRASE.into()).unwrap();
    let b = Registrar::open(dir.path(), &PASSPHRASE.into()).unwrap();
    assert_eq!(a.lookup_hash("sok"), b.lookup_hash("sok"));
    assert_ne!(a.lookup_hash("sok"), a.lookup_hash("dara"));
}

#[test]
fn a_residence_outside_the_office_commune_is_refused_unless_registered_away() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let mut doc: serde_json::Value = serde_json::from_str(&sok_dara()).unwrap();
    doc["residence_village_code"] = "12010101".into();
    let err = r.register_birth(&doc.to_string(), "clerk").unwrap_err();
    let Error::InvalidRecord(problems) = err else {
        panic!("expected InvalidRecord, got {err:?}");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["residence_village_code"]);
    assert!(r.list().unwrap().is_empty());

    doc["registered_away_from_residence"] = true.into();
    let id = r.register_birth(&doc.to_string(), "clerk").unwrap();
    let shown: serde_json::Value = serde_json::from_str(&r.record_json(&id).unwrap()).unwrap();
    assert_eq!(shown["data"]["registered_away_from_residence"], true);
    assert_eq!(shown["data"]["residence_village_code"], "12010101");
}

#[test]
fn a_name_with_a_right_to_left_override_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let mut doc: serde_json::Value = serde_json::from_str(&sok_dara()).unwrap();
    doc["child"]["given_name_latin"] = "DARA\u{202E}".into();
    let err = r.register_birth(&doc.to_string(), "clerk").unwrap_err();
    let Error::InvalidRecord(problems) = err else {
        panic!("expected InvalidRecord, got {err:?}");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "child.given_name_latin");
    assert!(problems[0].problem.contains("bidirectional"));
    assert!(r.list().unwrap().is_empty());
}

#[test]
fn malformed_staff_ids_are_refused_and_a_disguised_clerk_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let long = "c".repeat(10_000);
    for by in [long.as_str(), "clerk\nregistrar", "clerk 01"] {
        let err = r.register_birth(&sok_dara(), by).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(err.to_string().contains("staff id"), "{err}");
    }
    assert!(r.list().unwrap().is_empty());
    let id = r.register_birth(&sok_dara(), "clerk-01").unwrap();
    assert!(matches!(r.verify(&id, "CLERK-01"), Err(Error::NotAllowed(_))));
    assert!(matches!(
        r.verify(&id, "clerk-01\u{200B}"),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(r.record(&id).unwrap().view.transitions.len(), 1);
    assert_eq!(r.verify(&id, "clerk-02").unwrap(), Status::Verified);
}

#[test]
fn a_clock_before_2025_is_an_error_not_a_panic() {
    use crvs_core::registrar::{EARLIEST_CLOCK_MS, check_clock};
    use std::time::{Duration, UNIX_EPOCH};
    let before_1970 = UNIX_EPOCH - Duration::from_secs(86_400);
    for t in [
        before_1970,
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(946_684_800), // 2000-01-01
        UNIX_EPOCH + Duration::from_millis(EARLIEST_CLOCK_MS as u64 - 1),
    ] {
        let err = check_clock(t).unwrap_err();
        assert!(matches!(err, Error::Clock), "{err:?}");
        assert_eq!(err.code(), "clock");
    }
    let set = UNIX_EPOCH + Duration::from_millis(EARLIEST_CLOCK_MS as u64);
    assert_eq!(check_clock(set).unwrap(), EARLIEST_CLOCK_MS);
    // An id for an instant before the epoch is minted, not a panic.
    let id = RecordId::at(-86_400_000);
    assert_eq!(RecordId::parse(&id.to_string()).unwrap(), id);
}
