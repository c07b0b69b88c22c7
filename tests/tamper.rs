//! A store that cannot be edited around its encryption (issue 8 §4).
//!
//! Someone holding the tablet's SQLite file but not its passphrase edits
//! the plaintext columns, the way it was measured from outside, with the
//! file opened by plain SQLite:
//! * with stand-ins for the store's SQL functions, the store's triggers
//!   run, find that the row's MAC does not match, and refuse the edit;
//! * with triggers switched off, the edit lands, and must be found: `sync`
//!   sends nothing, `list` and `show` refuse, and `crvs check` names the
//!   rows;
//! * with the triggers dropped, the store does not open.
//!
//! Real `crvs` and `crvs-server` processes, real files. Every test runs
//! with the server on SQLite and on PostgreSQL (`both_backends!`) but
//! `kidcs_swapped_between_rows_are_found`, SQLite only (it reads the
//! issued codes from `server.db`).

use std::path::Path;

use crvs_e2e::*;
use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::functions::FunctionFlags;

/// How the attacker gets past the store's triggers.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// Stand-in functions: `crvs_row_mac` gives zeros, `crvs_xor` works,
    /// `crvs_repairing` says no.
    StandIns,
    /// The same, with `crvs_repairing` saying yes (the triggers then write
    /// over rows whose MAC fails, with MACs that do not verify).
    StandInsRepairing,
    /// Triggers switched off for the connection (every `mac` left as it
    /// was).
    NoTriggers,
}

fn attacker(store: &Path, way: Way) -> Connection {
    let conn = Connection::open(store.join("crvs.db")).expect("open the store file");
    match way {
        Way::StandIns | Way::StandInsRepairing => {
            let f = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
            let repairing = matches!(way, Way::StandInsRepairing);
            conn.create_scalar_function("crvs_repairing", 0, f, move |_| Ok(repairing))
                .unwrap();
            conn.create_scalar_function("crvs_row_mac", -1, f, |_| Ok(vec![0u8; 32]))
                .unwrap();
            conn.create_scalar_function("crvs_xor", -1, f, |ctx| {
                let mut out = [0u8; 32];
                for i in 0..ctx.len() {
                    if let rusqlite::types::ValueRef::Blob(b) = ctx.get_raw(i) {
                        out.iter_mut().zip(b).for_each(|(o, x)| *o ^= x);
                    }
                }
                Ok(out.to_vec())
            })
            .unwrap();
        }
        Way::NoTriggers => {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
                .unwrap();
        }
    }
    conn
}

fn server_records(server_data: &Path) -> i64 {
    server_count(server_data, "SELECT COUNT(*) FROM records")
}

/// Runs `args`, expects `tampered`, and returns the message.
fn refused(t: &Tablet, args: &[&str]) -> String {
    let run = t.run(args);
    let message = run.json["message"].as_str().unwrap_or("").to_string();
    assert_eq!(run.expect_err(), "tampered", "{args:?}: {message}");
    message
}

struct Setup {
    _tmp: tempfile::TempDir,
    server: Server,
    tablet: Tablet,
    /// Approved and synced: each holds a KIdC.
    synced: Vec<String>,
    /// Approved, not yet sent.
    pending: Vec<String>,
}

/// A tablet with two births synced (with their codes) and three approved
/// births waiting to be sent.
fn setup(backend: Backend) -> Setup {
    setup_with(backend, false)
}

/// The same; with `outboxed`, the pending births are then put into the
/// outbox by a sync that cannot reach the server (it is stopped).
fn setup_with(backend: Backend, outboxed: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let tablet = Tablet::new(tmp.path().join("tablet"));
    tablet.init_and_enroll("171003", &server);
    let files = write_births(&tmp.path().join("births"), &bench_births()[..5]);
    let synced: Vec<String> = files[..2].iter().map(|f| tablet.register_approved(f)).collect();
    tablet.run(&["sync"]).expect_ok();
    let pending = files[2..].iter().map(|f| tablet.register_approved(f)).collect();
    assert_eq!(server_records(&server.data), 2);
    let mut server = server;
    if outboxed {
        server.terminate();
        assert_eq!(tablet.run(&["sync"]).expect_err(), "offline");
    }
    Setup {
        _tmp: tmp,
        server,
        tablet,
        synced,
        pending,
    }
}

fn blob_id(id: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(id).unwrap().as_bytes().to_vec()
}

/// Runs the attacker's edit every way: stand-ins are refused by the
/// store's own triggers and change nothing; dropped triggers stop the
/// store from opening; with triggers off, the edit lands (the caller then
/// checks that it is found). Returns the store with the edit landed.
fn edit(backend: Backend, sql: &str, outboxed: bool) -> Setup {
    // Stand-ins: the write is refused.
    let s = setup_with(backend, outboxed);
    let err = attacker(&s.tablet.dir, Way::StandIns)
        .execute_batch(sql)
        .expect_err("the store's triggers refuse an edit with stand-in functions");
    assert!(err.to_string().contains("crvs_tampered"), "{err}");
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
    // Stand-ins that turn the guard off: the edit lands with MACs that do
    // not verify.
    attacker(&s.tablet.dir, Way::StandInsRepairing)
        .execute_batch(sql)
        .unwrap();
    refused(&s.tablet, &["check"]);
    refused(&s.tablet, &["sync"]);
    assert_eq!(server_records(&s.server.data), 2);
    // Dropped triggers: the schema is not the store's any more.
    let conn = attacker(&s.tablet.dir, Way::NoTriggers);
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(triggers.len() >= 20, "{triggers:?}");
    for t in &triggers {
        conn.execute(&format!("DROP TRIGGER {t}"), []).unwrap();
    }
    conn.execute_batch(sql).unwrap();
    drop(conn);
    let message = refused(&s.tablet, &["sync"]);
    assert!(message.contains("(missing)"), "{message}");
    assert_eq!(server_records(&s.server.data), 2);
    // Triggers off: the edit lands.
    let s = setup_with(backend, outboxed);
    let conn = attacker(&s.tablet.dir, Way::NoTriggers);
    conn.execute_batch(sql).unwrap();
    assert!(conn.total_changes() >= 1, "the edit changed nothing: {sql}");
    s
}

/// After the edit: sync refuses and sends nothing, list refuses, and check
/// names `must_name`.
fn assert_found(s: &Setup, must_name: &[&str]) {
    refused(&s.tablet, &["sync"]);
    assert_eq!(
        server_records(&s.server.data),
        2,
        "a tampered store sent something"
    );
    refused(&s.tablet, &["list"]);
    let message = refused(&s.tablet, &["check"]);
    for name in must_name {
        assert!(message.contains(name), "check does not name {name}: {message}");
    }
}

/// `crvs repair` rebuilds what the sealed data vouches for; then the
/// store checks clean, and a sync brings the server to `expect` records,
/// every one of the tablet's records registered with its code.
fn repaired_then_synced(s: &Setup, expect: i64) -> Vec<String> {
    let report = s.tablet.run(&["repair", "--by", "support-1"]).expect_ok();
    assert_eq!(report["ok"], true, "{report}");
    let repaired: Vec<String> = serde_json::from_value(report["repaired"].clone()).unwrap();
    assert!(!repaired.is_empty(), "{report}");
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
    s.tablet.run(&["sync"]).expect_ok();
    assert_eq!(server_records(&s.server.data), expect);
    let list = s.tablet.run(&["list"]).expect_ok();
    let records = list["records"].as_array().unwrap();
    assert_eq!(records.len() as i64, expect);
    for r in records {
        assert_eq!(r["status"], "registered", "{r}");
        assert_eq!(r["sync_state"], "synced", "{r}");
    }
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
    // A second repair finds nothing to do.
    let again = s.tablet.run(&["repair", "--by", "support-1"]).expect_ok();
    assert_eq!(again["repaired"], serde_json::json!([]), "{again}");
    repaired
}

both_backends!(clearing_the_dirty_flag_is_found_and_nothing_is_hidden);
fn clearing_the_dirty_flag_is_found_and_nothing_is_hidden(backend: Backend) {
    let s = edit(backend, "UPDATE records SET dirty = 0", false);
    assert_found(&s, &["records", &s.pending[0], &s.pending[2]]);
    refused(&s.tablet, &["show", &s.pending[1]]);
    let repaired = repaired_then_synced(&s, 5);
    assert!(
        repaired.contains(&format!("records {}", s.pending[2])),
        "{repaired:?}"
    );
}

both_backends!(a_status_changed_in_the_file_is_found);
fn a_status_changed_in_the_file_is_found(backend: Backend) {
    // Every record is tried (the ids differ per setup): the first pending
    // one, by its position.
    let s = edit(
        backend,
        "UPDATE records SET status = 'rejected' WHERE id = (SELECT id FROM records ORDER BY id LIMIT 1 OFFSET 2)",
        false,
    );
    assert_found(&s, &[&s.pending[0]]);
    refused(&s.tablet, &["show", &s.pending[0]]);
    // The other records still show.
    s.tablet.show(&s.pending[1]);
    repaired_then_synced(&s, 5);
}

#[test]
fn kidcs_swapped_between_rows_are_found() {
    let s = edit(
        Backend::Sqlite,
        "CREATE TEMP TABLE k AS SELECT id, kidc_sealed FROM records ORDER BY id LIMIT 2;
         UPDATE records SET kidc_sealed = (SELECT kidc_sealed FROM temp.k WHERE k.id != records.id)
         WHERE id IN (SELECT id FROM temp.k);",
        false,
    );
    assert_found(&s, &[&s.synced[0], &s.synced[1]]);
    // The codes come back from the sealed documents, each to its record.
    let codes = |s: &Setup| -> Vec<String> {
        s.synced
            .iter()
            .map(|id| s.tablet.show(id)["kidc"].as_str().unwrap().to_string())
            .collect()
    };
    repaired_then_synced(&s, 5);
    let after = codes(&s);
    let on_server: Vec<String> = {
        let db = Connection::open_with_flags(
            s.server.data.join("server.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        s.synced
            .iter()
            .map(|id| {
                db.query_row("SELECT kidc FROM kidc_issuance WHERE record_id = ?1", [id], |r| {
                    r.get::<_, String>(0)
                })
                .unwrap()
            })
            .collect()
    };
    assert_eq!(after, on_server);
}

both_backends!(unacknowledged_change_sets_marked_acknowledged_are_found);
fn unacknowledged_change_sets_marked_acknowledged_are_found(backend: Backend) {
    let s = edit(
        backend,
        "UPDATE outbox SET acked_at = 1 WHERE acked_at IS NULL;
         UPDATE meta SET value = (SELECT MAX(seq) FROM outbox) WHERE key = 'acked_seq';",
        true,
    );
    refused(&s.tablet, &["list"]);
    let run = s.tablet.run(&["check"]);
    let rows: Vec<String> = serde_json::from_value(run.json["rows"].clone()).unwrap();
    assert!(rows.iter().any(|r| r == "outbox 2"), "{rows:?}");
    assert!(rows.iter().any(|r| r == "meta acked_seq"), "{rows:?}");
    let message = refused(&s.tablet, &["check"]);
    assert!(message.contains("outbox 2"), "{message}");
    assert!(message.contains("meta acked_seq"), "{message}");
    refused(&s.tablet, &["sync"]);
    let report = s.tablet.run(&["repair", "--by", "support-1"]).expect_ok();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
    // Every change set is waiting to be sent again.
    let list = s.tablet.run(&["list"]).expect_ok();
    let pending = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sync_state"] == "pending")
        .count();
    assert!(pending >= 3, "{list}");
    // The server comes back on its address: every change set is offered
    // again, the ones it has are acknowledged by hash, nothing twice.
    let mut s = s;
    let addr = s.server.addr.to_string();
    s.server = Server::start_on(&s.server.data, &addr);
    repaired_then_synced_after_repair(&s, 5);
}

/// The end of [`repaired_then_synced`], for a store already repaired.
fn repaired_then_synced_after_repair(s: &Setup, expect: i64) {
    s.tablet.run(&["sync"]).expect_ok();
    assert_eq!(server_records(&s.server.data), expect);
    let list = s.tablet.run(&["list"]).expect_ok();
    for r in list["records"].as_array().unwrap() {
        assert_eq!(r["status"], "registered", "{r}");
        assert_eq!(r["sync_state"], "synced", "{r}");
    }
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
}

both_backends!(a_deleted_record_or_a_row_put_back_from_an_older_copy_is_found);
fn a_deleted_record_or_a_row_put_back_from_an_older_copy_is_found(backend: Backend) {
    // Deleted: the row and its MAC are gone, so only the sum shows it.
    let s = setup(backend);
    attacker(&s.tablet.dir, Way::NoTriggers)
        .execute("DELETE FROM records WHERE id = ?1", [blob_id(&s.pending[0])])
        .unwrap();
    assert_found(&s, &["integrity"]);
    // The deleted record is gone from this tablet (its sealed document
    // went with it); the rest is repaired and sent.
    let repaired = repaired_then_synced(&s, 4);
    assert!(
        repaired.iter().any(|r| r.starts_with("integrity")),
        "{repaired:?}"
    );

    // Put back: a record's row as it was before it was sent and got its
    // code, MAC and all. The row authenticates; the sum does not.
    let s = setup(backend);
    let id = blob_id(&s.pending[0]);
    let read_row = |conn: &Connection| -> Vec<(String, rusqlite::types::Value)> {
        let mut stmt = conn.prepare("SELECT * FROM records WHERE id = ?1").unwrap();
        let names: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
        stmt.query_row([id.clone()], |r| {
            Ok(names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), r.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect())
        })
        .unwrap()
    };
    let old = read_row(&attacker(&s.tablet.dir, Way::NoTriggers));
    s.tablet.run(&["sync"]).expect_ok();
    assert_eq!(s.tablet.show(&s.pending[0])["status"], "registered");
    assert_ne!(read_row(&attacker(&s.tablet.dir, Way::NoTriggers)), old);
    let conn = attacker(&s.tablet.dir, Way::NoTriggers);
    let sets: Vec<String> = old.iter().map(|(n, _)| format!("{n} = ?")).collect();
    let mut values: Vec<rusqlite::types::Value> = old.iter().map(|(_, v)| v.clone()).collect();
    values.push(rusqlite::types::Value::Blob(id.clone()));
    let changed = conn
        .execute(
            &format!("UPDATE records SET {} WHERE id = ?", sets.join(", ")),
            rusqlite::params_from_iter(values),
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    refused(&s.tablet, &["list"]);
    refused(&s.tablet, &["sync"]);
    let message = refused(&s.tablet, &["check"]);
    assert!(message.contains("integrity"), "{message}");
    // Repair pulls the server's updates again: the record put back gets
    // its code back.
    repaired_then_synced(&s, 5);
}

both_backends!(a_redirected_server_and_a_set_aside_flag_are_found);
fn a_redirected_server_and_a_set_aside_flag_are_found(backend: Backend) {
    let s = edit(
        backend,
        "UPDATE meta SET value = 'http://127.0.0.1:9' WHERE key = 'server_url'",
        false,
    );
    assert_found(&s, &["meta server_url"]);
    // Only an enrolment sets the server's address: not repairable.
    let report = s.tablet.run(&["repair", "--by", "support-1"]).expect_ok();
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["unrecoverable"][0]
            .as_str()
            .unwrap()
            .starts_with("meta server_url"),
        "{report}"
    );
    refused(&s.tablet, &["check"]);
    let s = edit(
        backend,
        "UPDATE records SET set_aside_at = 1 WHERE id = (SELECT id FROM records ORDER BY id LIMIT 1 OFFSET 3)",
        false,
    );
    assert_found(&s, &[&s.pending[1]]);
    repaired_then_synced(&s, 5);
}

both_backends!(a_trigger_slipped_into_the_file_stops_the_store_from_opening);
fn a_trigger_slipped_into_the_file_stops_the_store_from_opening(backend: Backend) {
    let s = setup(backend);
    attacker(&s.tablet.dir, Way::NoTriggers)
        .execute_batch(
            "CREATE TRIGGER hide AFTER UPDATE ON records BEGIN
                 UPDATE records SET dirty = 0 WHERE id = NEW.id;
             END;",
        )
        .unwrap();
    let message = refused(&s.tablet, &["list"]);
    assert!(message.contains("schema trigger hide"), "{message}");
    refused(&s.tablet, &["sync"]);
    assert_eq!(server_records(&s.server.data), 2);
}

both_backends!(an_untouched_store_passes_and_syncs_everything);
fn an_untouched_store_passes_and_syncs_everything(backend: Backend) {
    let s = setup(backend);
    let check = s.tablet.run(&["check"]).expect_ok();
    assert_eq!(check["ok"], true);
    s.tablet.run(&["sync"]).expect_ok();
    assert_eq!(server_records(&s.server.data), 5);
    let list = s.tablet.run(&["list"]).expect_ok();
    for r in list["records"].as_array().unwrap() {
        assert_eq!(r["status"], "registered", "{r}");
    }
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
}

both_backends!(a_lost_dirty_flag_hides_nothing_work_is_found_from_the_sealed_records);
fn a_lost_dirty_flag_hides_nothing_work_is_found_from_the_sealed_records(backend: Backend) {
    // Not an attacker: a bug (or a store edited before it had row MACs)
    // clears the flags, with every MAC in order. Sync compares each sealed
    // document with what it already sent, and sends the three births.
    let s = setup(backend);
    let mut conn = Connection::open(s.tablet.dir.join("crvs.db")).unwrap();
    let wrapped = crvs_core::store::read_wrapped_key(&conn).unwrap();
    let key = crvs_core::crypto::DataKey::unwrap(
        &PASSPHRASE.into(),
        &wrapped,
        &crvs_core::crypto::aad("meta", b"", "wrapped_data_key"),
    )
    .unwrap();
    crvs_core::integrity::register(&conn, &key).unwrap();
    let tx = conn.transaction().unwrap();
    for id in &s.pending {
        let bytes: [u8; 16] = blob_id(id).try_into().unwrap();
        let mut row = crvs_core::store::get_record(&tx, &bytes).unwrap().unwrap();
        row.dirty = false;
        crvs_core::store::update_record(&tx, &row).unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let message = refused(&s.tablet, &["check"]);
    assert!(
        message.contains("unsent changes not marked for sending"),
        "{message}"
    );
    assert!(message.contains(&s.pending[2]), "{message}");
    s.tablet.run(&["sync"]).expect_ok();
    assert_eq!(server_records(&s.server.data), 5);
    for id in &s.pending {
        assert_eq!(s.tablet.show(id)["status"], "registered");
    }
    assert_eq!(s.tablet.run(&["check"]).expect_ok()["ok"], true);
}

/// The store of the previous version (schema 2; see
/// `tests/data/store-v2/README.md`), copied into `dir`.
fn previous_version_store(dir: &Path) -> Tablet {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        workspace().join("tests/data/store-v2/crvs.db"),
        dir.join("crvs.db"),
    )
    .unwrap();
    Tablet::new(dir.to_path_buf())
}

const V2_APPROVED: [&str; 2] = [
    "01a24202-6d01-7ee2-9248-29a59ee4690b",
    "01a24202-6d89-7a08-b169-531943a5abad",
];
const V2_SUBMITTED: &str = "01a24202-6e0e-78b4-951a-426e1cfbb528";

both_backends!(a_store_of_the_previous_version_upgrades_keeps_its_records_and_syncs);
fn a_store_of_the_previous_version_upgrades_keeps_its_records_and_syncs(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let t = previous_version_store(&tmp.path().join("tablet"));
    assert_eq!(t.run(&["check"]).expect_ok()["records"], 3);
    let version: i64 = Connection::open(t.dir.join("crvs.db"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4, "the store was upgraded to the current schema");
    let list = t.run(&["list"]).expect_ok();
    assert_eq!(list["records"].as_array().unwrap().len(), 3);
    // It works as any store: a step, an enrolment, a sync.
    t.run(&["verify", V2_SUBMITTED, "--by", "clerk-2"]).expect_ok();
    t.run(&["approve", V2_SUBMITTED, "--by", "registrar-1"])
        .expect_ok();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let tok = token(&server.data, "171003");
    t.run(&["enroll", "--server", &server.url(), "--token", &tok])
        .expect_ok();
    t.run(&["sync"]).expect_ok();
    assert_eq!(server_records(&server.data), 3);
    for id in V2_APPROVED.iter().chain([&V2_SUBMITTED]) {
        assert_eq!(t.show(id)["status"], "registered", "{id}");
    }
    assert_eq!(t.run(&["check"]).expect_ok()["ok"], true);
    // And it is protected now.
    attacker(&t.dir, Way::NoTriggers)
        .execute("UPDATE records SET status = 'rejected'", [])
        .unwrap();
    refused(&t, &["list"]);
}

both_backends!(an_edit_made_before_the_upgrade_is_named_by_check_and_hides_nothing);
fn an_edit_made_before_the_upgrade_is_named_by_check_and_hides_nothing(backend: Backend) {
    // Before row MACs, the file was edited: an approved birth marked
    // rejected and sent. The upgrade authenticates rows as they stand,
    // but check compares them with the sealed documents, and sync finds
    // the unsent work from the documents.
    let tmp = tempfile::tempdir().unwrap();
    let t = previous_version_store(&tmp.path().join("tablet"));
    let id = blob_id(V2_APPROVED[0]);
    Connection::open(t.dir.join("crvs.db"))
        .unwrap()
        .execute(
            "UPDATE records SET status = 'rejected', dirty = 0 WHERE id = ?1",
            [id],
        )
        .unwrap();
    let message = refused(&t, &["check"]);
    assert!(
        message.contains(&format!(
            "records {} (status differs from its document)",
            V2_APPROVED[0]
        )),
        "{message}"
    );
    assert!(
        message.contains("unsent changes not marked for sending"),
        "{message}"
    );
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let tok = token(&server.data, "171003");
    t.run(&["enroll", "--server", &server.url(), "--token", &tok])
        .expect_ok();
    t.run(&["sync"]).expect_ok();
    assert_eq!(server_records(&server.data), 3, "nothing was hidden");
}

both_backends!(a_stored_column_that_would_compute_macs_for_the_attacker_stops_the_store_from_opening);
fn a_stored_column_that_would_compute_macs_for_the_attacker_stops_the_store_from_opening(backend: Backend) {
    // A generated column is computed by whoever writes the row: with the
    // key registered, it would hand the attacker a valid MAC for a forged
    // row. The schema check refuses the store before the key is there.
    let s = setup(backend);
    attacker(&s.tablet.dir, Way::StandIns)
        .execute_batch(
            "ALTER TABLE records ADD COLUMN leak BLOB AS (crvs_row_mac('records', id, kind, status, \
             created_at, updated_at, doc_sealed, kidc_sealed, outboxed_heads, 0, last_outbox_seq, \
             server_updated_at, set_aside_at)) VIRTUAL;",
        )
        .unwrap();
    let message = refused(&s.tablet, &["list"]);
    assert!(message.contains("schema table records"), "{message}");
    refused(&s.tablet, &["sync"]);
    assert_eq!(server_records(&s.server.data), 2);
}
