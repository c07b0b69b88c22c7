//! A restore from backup, in process: what the ledger keeps outside the
//! database (enrolments, revocations, staff removals, API key revocations)
//! comes back, and requests captured before the restore cannot be
//! replayed after it.

mod support;

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
