//! A restore from backup, in process: what the ledger keeps outside the
//! database (enrolments, revocations, staff removals, API key revocations,
//! registration numbers) comes back, and requests captured before the
//! restore cannot be replayed after it.

mod support;

use automerge::AutoCommit;
use crvs_schema::wire::SyncResponse;
use crvs_schema::workflow::Action;
use crvs_server::{ApiError, Server, admin, api_keys, backup, ledger, staff};
use support::{OFFICE, Tablet, open_response};

#[test]
fn enrolments_and_revocations_after_the_backup_survive_a_restore_and_old_requests_do_not_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let file = dir.path().join("backup.db");
    let server = Server::open(&data).unwrap();
    let honest = Tablet::enroll(&server, OFFICE);
    let stolen = Tablet::enroll(&server, OFFICE);
    open_response(&server, &server.handle_sync(&honest.request(vec![])).unwrap());
    let taken = backup::backup(&data, &file, server.now_ms()).unwrap();
    assert_eq!(taken.devices, 2);

    // After the backup: a request someone captures, a stolen tablet
    // revoked, a new tablet enrolled.
    let captured = honest.request(vec![]);
    open_response(&server, &server.handle_sync(&captured).unwrap());
    admin::revoke(&server, &uuid::Uuid::from_bytes(stolen.device_id).to_string()).unwrap();
    let late = Tablet::enroll(&server, OFFICE);
    open_response(&server, &server.handle_sync(&late.request(vec![])).unwrap());
    drop(server);

    let report = backup::restore(&data, &file, support::now_ms()).unwrap();
    assert_eq!(report.devices_restored, 1, "{report:?}");
    assert_eq!(report.revocations_kept, 1, "{report:?}");
    let server = Server::open(&data).unwrap();

    match server.handle_sync(&captured) {
        Err(ApiError::ReplayedRequest { last_counter }) => {
            assert!(last_counter >= backup::COUNTER_JUMP as u64, "{last_counter}")
        }
        other => panic!("a request captured before the restore replayed: {other:?}"),
    }
    assert!(
        matches!(
            server.handle_sync(&stolen.request(vec![])),
            Err(ApiError::DeviceRevoked)
        ),
        "a revocation made after the backup still holds"
    );
    // The tablet enrolled after the backup is known again. Its counter is
    // behind the jump: it is told the last one and continues above it.
    let last = match server.handle_sync(&late.request(vec![])) {
        Err(ApiError::ReplayedRequest { last_counter }) => last_counter,
        other => panic!("expected the counter to be told, got {other:?}"),
    };
    late.counter.set(last);
    open_response(&server, &server.handle_sync(&late.request(vec![])).unwrap());
    honest
        .counter
        .set(last.max(honest.counter.get()) + backup::COUNTER_JUMP as u64);
    open_response(&server, &server.handle_sync(&honest.request(vec![])).unwrap());
}

/// Rows of a table of the server's database.
fn rows(data: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(data.join(crvs_server::DB_FILE)).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// The API keys' revocation times, by id.
fn revocations(data: &std::path::Path) -> Vec<(String, Option<i64>)> {
    let conn = rusqlite::Connection::open(data.join(crvs_server::DB_FILE)).unwrap();
    let mut st = conn
        .prepare("SELECT id, revoked_at FROM api_keys ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn add(server: &Server, id: &str) {
    let pin = staff::Pin::new("480172".into());
    let a = staff::prepare_add(OFFICE, id, "clerk,verifier", Some(&pin), Some("ops-1")).unwrap();
    staff::add(server, &a).unwrap();
}

fn on_roster(server: &Server, id: &str) -> bool {
    server
        .storage()
        .roster(OFFICE)
        .unwrap()
        .iter()
        .any(|m| m.staff_id == id && m.is_active())
}

/// Staff removed and API keys revoked after the backup stay removed and
/// revoked after a restore; someone removed and added again stays; and a
/// plain start afterwards writes nothing to the roster or the keys.
fn removals_and_revocations_survive(by_copying_files: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let file = dir.path().join("backup.db");
    let server = Server::open(&data).unwrap();
    add(&server, "clerk-a");
    add(&server, "clerk-b");
    add(&server, "clerk-d");
    // C is removed and added again before the backup: the ledger knows the
    // removal, the backup the later addition.
    add(&server, "clerk-c");
    staff::remove(&server, OFFICE, "clerk-c", Some("ops-2")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    add(&server, "clerk-c");
    let kept = api_keys::create(&server, "hospital kept", "notify").unwrap();
    let stolen = api_keys::create(&server, "hospital stolen", "notify").unwrap();
    backup::backup(&data, &file, server.now_ms()).unwrap();

    // After the backup: A removed, D removed and added again (that
    // addition is lost with the rest of the database: D's roster row in
    // the backup predates the removal), K revoked.
    let removed = staff::remove(&server, OFFICE, "CLERK-A", Some("ops-2")).unwrap();
    let removed_at = removed.staff.removed_at.unwrap();
    staff::remove(&server, OFFICE, "clerk-d", Some("ops-2")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    add(&server, "clerk-d");
    api_keys::revoke(&server, &stolen.id).unwrap();
    drop(server);

    if by_copying_files {
        // A restore the operator made by hand: only the start mends it.
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(data.join(format!("{}{suffix}", crvs_server::DB_FILE)));
        }
        std::fs::copy(&file, data.join(crvs_server::DB_FILE)).unwrap();
    } else {
        let report = backup::restore(&data, &file, support::now_ms()).unwrap();
        assert_eq!(report.staff_removals_kept, 2, "A and D: {report:?}");
        assert_eq!(report.api_key_revocations_kept, 1, "{report:?}");
    }
    let server = Server::open(&data).unwrap();
    assert!(
        !on_roster(&server, "clerk-a"),
        "a removed person stays off the roster"
    );
    assert_eq!(
        server
            .storage()
            .staff_role_at(OFFICE, "clerk-a", removed_at)
            .unwrap(),
        None
    );
    assert_eq!(
        server
            .storage()
            .staff_role_at(OFFICE, "clerk-a", removed_at - 1)
            .unwrap(),
        Some(staff::Roles::of(&[staff::Role::Clerk, staff::Role::Verifier])),
        "the history before the removal is kept"
    );
    assert!(on_roster(&server, "clerk-b"), "nobody else is removed");
    assert!(
        on_roster(&server, "clerk-c"),
        "added again after the removal: stays"
    );
    assert!(
        !on_roster(&server, "clerk-d"),
        "added again after the backup: that addition is lost, the removal is not"
    );
    let history: Vec<(String, String, String, i64)> = {
        let conn = rusqlite::Connection::open(data.join(crvs_server::DB_FILE)).unwrap();
        let mut st = conn
            .prepare("SELECT staff_key, event, by_operator, at FROM staff_history WHERE event = 'removed' ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        history.contains(&("clerk-a".into(), "removed".into(), "ops-2".into(), removed_at)),
        "removed again, by the operator who removed them, at that time: {history:?}"
    );
    let key = |k: &api_keys::NewApiKey| api_keys::parse_key(&k.key).unwrap();
    assert!(matches!(
        api_keys::authenticate(&server, &key(&stolen), api_keys::Scope::Notify),
        Err(ApiError::Unauthenticated)
    ));
    api_keys::authenticate(&server, &key(&kept), api_keys::Scope::Notify).expect("the other key works");
    drop(server);

    // A plain restart finds nothing lacking and writes nothing.
    let history = rows(&data, "staff_history");
    let keys = revocations(&data);
    let ledger_before = std::fs::read(data.join(ledger::LEDGER_FILE)).unwrap();
    let server = Server::open(&data).unwrap();
    drop(server);
    assert_eq!(rows(&data, "staff_history"), history);
    assert_eq!(revocations(&data), keys);
    assert_eq!(
        std::fs::read(data.join(ledger::LEDGER_FILE)).unwrap(),
        ledger_before
    );
}

#[test]
fn staff_removed_and_api_keys_revoked_after_the_backup_stay_so_after_a_restore() {
    removals_and_revocations_survive(false);
}

#[test]
fn a_database_put_back_by_copying_files_is_mended_at_the_next_start() {
    removals_and_revocations_survive(true);
}

/// The registration number an answer gives `record_id`: its server
/// changes applied to the tablet's `doc`, as the tablet does.
fn number_in(
    resp: &crvs_schema::wire::SyncResponse,
    record_id: [u8; 16],
    doc: &mut AutoCommit,
) -> Option<String> {
    support::apply_updates(resp, record_id, doc).registration_number
}

/// A sync of `change_sets`; a tablet whose request counter a restore left
/// behind is told the last one and sends again above it, as a real tablet
/// does.
fn sync_after_restore(server: &Server, tablet: &Tablet, change_sets: Vec<Vec<u8>>) -> SyncResponse {
    match server.handle_sync(&tablet.request(change_sets.clone())) {
        Ok(bytes) => open_response(server, &bytes),
        Err(ApiError::ReplayedRequest { last_counter }) => {
            tablet.counter.set(last_counter);
            open_response(server, &server.handle_sync(&tablet.request(change_sets)).unwrap())
        }
        Err(e) => panic!("sync failed: {e:?}"),
    }
}

/// One approved birth of `tablet`, sealed as its next change set: the
/// record id, the change set's bytes (kept to be sent again) and the
/// tablet's document.
fn approved_birth(tablet: &mut Tablet) -> ([u8; 16], Vec<u8>, AutoCommit) {
    let id = support::new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &support::birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![support::record_changes(
        id,
        Tablet::document_chunk(&mut doc),
    )]);
    (id, cs, doc)
}

/// Every registration number the server's registry holds, by record.
fn registry_numbers(data: &std::path::Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(data.join(crvs_server::DB_FILE)).unwrap();
    let mut st = conn
        .prepare("SELECT record_id, registration_number FROM registry_events ORDER BY seq")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Events registered, a backup, more registered (numbers N+1 ...), the
/// backup restored: a new event gets a number none had before the
/// restore, and each record registered after the backup, sent again by
/// its tablet, gets its own number back. No number goes to two records.
fn registration_numbers_survive(by_copying_files: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let file = dir.path().join("backup.db");
    let server = Server::open(&data).unwrap();
    let mut first = Tablet::enroll(&server, OFFICE);
    let mut second = Tablet::enroll(&server, OFFICE);
    // Registers nothing before the restore: its chain is where the backup
    // has it, so its first record after the restore is registered before
    // the others send theirs again.
    let mut third = Tablet::enroll(&server, OFFICE);

    // Issued by record id, in order.
    let mut issued: Vec<([u8; 16], String)> = Vec::new();
    for _ in 0..3 {
        let (id, cs, mut doc) = approved_birth(&mut first);
        let resp = open_response(&server, &server.handle_sync(&first.request(vec![cs])).unwrap());
        assert!(resp.refusal.is_none(), "{:?}", resp.refusal);
        issued.push((id, number_in(&resp, id, &mut doc).expect("registered")));
    }
    backup::backup(&data, &file, server.now_ms()).unwrap();
    let before_backup = issued.len();

    // After the backup: two records of one tablet in one request, one of
    // another tablet.
    let (id4, cs4, mut doc4) = approved_birth(&mut first);
    let (id5, cs5, mut doc5) = approved_birth(&mut first);
    let resp = open_response(
        &server,
        &server
            .handle_sync(&first.request(vec![cs4.clone(), cs5.clone()]))
            .unwrap(),
    );
    assert!(resp.refusal.is_none(), "{:?}", resp.refusal);
    issued.push((id4, number_in(&resp, id4, &mut doc4).expect("registered")));
    issued.push((id5, number_in(&resp, id5, &mut doc5).expect("registered")));
    let (id6, cs6, mut doc6) = approved_birth(&mut second);
    let resp = open_response(
        &server,
        &server.handle_sync(&second.request(vec![cs6.clone()])).unwrap(),
    );
    issued.push((id6, number_in(&resp, id6, &mut doc6).expect("registered")));
    drop(server);
    let numbers: Vec<&String> = issued.iter().map(|(_, n)| n).collect();
    let distinct: std::collections::HashSet<&String> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), numbers.len(), "{numbers:?}");
    let ledger_before = std::fs::read(data.join(ledger::LEDGER_FILE)).unwrap();

    if by_copying_files {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(data.join(format!("{}{suffix}", crvs_server::DB_FILE)));
        }
        std::fs::copy(&file, data.join(crvs_server::DB_FILE)).unwrap();
    } else {
        backup::restore(&data, &file, support::now_ms()).unwrap();
    }
    let server = Server::open(&data).unwrap();
    assert_eq!(
        registry_numbers(&data).len(),
        before_backup,
        "the restored database holds only what the backup held"
    );
    assert_eq!(
        std::fs::read(data.join(ledger::LEDGER_FILE)).unwrap(),
        ledger_before,
        "neither the restore nor the start changes the ledger"
    );

    // A new event, before anyone sends anything again: a number no record
    // had before the restore.
    let (id7, cs7, mut doc7) = approved_birth(&mut third);
    let resp = sync_after_restore(&server, &third, vec![cs7]);
    assert!(resp.refusal.is_none(), "{:?}", resp.refusal);
    let new = number_in(&resp, id7, &mut doc7).expect("registered");
    assert!(
        !issued.iter().any(|(_, n)| *n == new),
        "a number issued before the restore was issued again: {new} (before: {numbers:?})"
    );

    // The records registered after the backup come again (their tablets
    // rewind and send them again, the same bytes): each gets its number.
    let resp = sync_after_restore(&server, &first, vec![cs4, cs5]);
    assert!(resp.refusal.is_none(), "{:?}", resp.refusal);
    assert_eq!(resp.acks.len(), 2);
    let mut again = vec![
        (id4, number_in(&resp, id4, &mut doc4).expect("registered again")),
        (id5, number_in(&resp, id5, &mut doc5).expect("registered again")),
    ];
    let resp = sync_after_restore(&server, &second, vec![cs6]);
    assert!(resp.refusal.is_none(), "{:?}", resp.refusal);
    again.push((id6, number_in(&resp, id6, &mut doc6).expect("registered again")));
    assert_eq!(
        again,
        issued[before_backup..],
        "each record registered after the backup has its number back"
    );

    // And the next new event follows them all.
    let (id8, cs8, mut doc8) = approved_birth(&mut third);
    let resp = sync_after_restore(&server, &third, vec![cs8]);
    let next = number_in(&resp, id8, &mut doc8).expect("registered");
    drop(server);

    let mut all: Vec<String> = issued.iter().map(|(_, n)| n.clone()).collect();
    all.push(new.clone());
    all.push(next.clone());
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "one number, one record: {all:?}");
    // The registry, as the server holds it now: every record once, every
    // number once, each record with the number its tablet was given.
    let held = registry_numbers(&data);
    assert_eq!(held.len(), 8, "{held:?}");
    let distinct: std::collections::HashSet<&String> = held.iter().map(|(_, n)| n).collect();
    assert_eq!(distinct.len(), held.len(), "{held:?}");
    for (id, n) in issued.iter().chain([(id7, new), (id8, next)].iter()) {
        let id = uuid::Uuid::from_bytes(*id).to_string();
        assert!(
            held.contains(&(id, n.clone())),
            "{n} not held for its record: {held:?}"
        );
    }
}

#[test]
fn registration_numbers_issued_after_the_backup_are_never_issued_again_after_a_restore() {
    registration_numbers_survive(false);
}

#[test]
fn registration_numbers_survive_a_database_put_back_by_copying_files() {
    registration_numbers_survive(true);
}

/// A ledger that lacks the database's registration numbers (made before
/// it kept them, or lost and made again) takes them at the next start, so
/// a later restore does not count to them again either.
#[test]
fn registration_numbers_the_ledger_lacks_are_taken_from_the_database_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let file = dir.path().join("backup.db");
    let server = Server::open(&data).unwrap();
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let mut later = Tablet::enroll(&server, OFFICE);
    let mut issued = Vec::new();
    for i in 0..4 {
        if i == 2 {
            backup::backup(&data, &file, server.now_ms()).unwrap();
        }
        let (id, cs, mut doc) = approved_birth(&mut tablet);
        let resp = open_response(&server, &server.handle_sync(&tablet.request(vec![cs])).unwrap());
        issued.push(number_in(&resp, id, &mut doc).expect("registered"));
    }
    drop(server);
    std::fs::remove_file(data.join(ledger::LEDGER_FILE)).unwrap();
    let server = Server::open(&data).unwrap();
    drop(server);
    let conn = rusqlite::Connection::open(data.join(ledger::LEDGER_FILE)).unwrap();
    let held: i64 = conn
        .query_row("SELECT COUNT(*) FROM registration_numbers", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    assert_eq!(held, 4, "every number of the registry is in the ledger");
    let ledger_before = std::fs::read(data.join(ledger::LEDGER_FILE)).unwrap();
    let server = Server::open(&data).unwrap();
    drop(server);
    assert_eq!(
        std::fs::read(data.join(ledger::LEDGER_FILE)).unwrap(),
        ledger_before,
        "a plain start writes nothing"
    );

    backup::restore(&data, &file, support::now_ms()).unwrap();
    let server = Server::open(&data).unwrap();
    let (id, cs, mut doc) = approved_birth(&mut later);
    let resp = sync_after_restore(&server, &later, vec![cs]);
    let new = number_in(&resp, id, &mut doc).expect("registered");
    assert!(!issued.contains(&new), "{new} was issued before: {issued:?}");
}
