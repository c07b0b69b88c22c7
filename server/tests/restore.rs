//! A restore from backup, in process: what the ledger keeps outside the
//! database (enrolments, revocations) comes back, and requests captured
//! before the restore cannot be replayed after it.

mod support;

use crvs_server::{ApiError, Server, admin, backup};
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
