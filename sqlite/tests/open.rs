//! `crvs_sqlite::open` on real files.

use std::path::Path;

use crvs_sqlite::{Migrate, Migration, OpenError, OpenOptions, migrate, open, open_read_only, user_version};
use rusqlite::Connection;

const V1: Migration = "CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT NOT NULL);";
const V2: Migration = "CREATE TABLE b (id INTEGER PRIMARY KEY, a INTEGER NOT NULL REFERENCES a(id));";
const V3: Migration = "ALTER TABLE a ADD COLUMN y TEXT; INSERT INTO a (x, y) VALUES ('m', 'n');";

fn create(migrations: &[Migration]) -> OpenOptions<'_> {
    OpenOptions {
        create: true,
        migrations,
        ..OpenOptions::default()
    }
}

fn existing(migrations: &[Migration]) -> OpenOptions<'_> {
    OpenOptions {
        migrations,
        ..OpenOptions::default()
    }
}

fn pragma<T: rusqlite::types::FromSql>(conn: &Connection, name: &str) -> T {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_fresh_file_is_created_migrated_and_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let conn = open(&path, &create(&[V1, V2])).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 2);
    assert_eq!(pragma::<String>(&conn, "journal_mode"), "wal");
    assert_eq!(pragma::<i64>(&conn, "synchronous"), 2, "FULL");
    assert_eq!(pragma::<i64>(&conn, "foreign_keys"), 1);
    assert_eq!(pragma::<i64>(&conn, "temp_store"), 2, "MEMORY");
    assert_eq!(pragma::<i64>(&conn, "trusted_schema"), 0);
    assert_eq!(pragma::<i64>(&conn, "busy_timeout"), 10_000);
    // Foreign keys are enforced.
    assert!(conn.execute("INSERT INTO b (a) VALUES (42)", []).is_err());
}

#[test]
fn a_missing_file_is_not_created_without_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    assert!(matches!(open(&path, &existing(&[V1])), Err(OpenError::Missing)));
    assert!(matches!(
        open_read_only(&path, Some(&[V1])),
        Err(OpenError::Missing)
    ));
    assert!(!path.exists());
}

#[test]
fn a_file_no_migration_touched_is_refused_without_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    assert!(matches!(
        open(&path, &existing(&[V1])),
        Err(OpenError::Uninitialized)
    ));
    assert!(matches!(
        open_read_only(&path, Some(&[V1])),
        Err(OpenError::Uninitialized)
    ));
}

#[test]
fn a_database_at_v1_is_migrated_to_the_last_version_keeping_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let conn = open(&path, &create(&[V1])).unwrap();
    conn.execute("INSERT INTO a (x) VALUES ('kept')", []).unwrap();
    drop(conn);
    let conn = open(&path, &existing(&[V1, V2, V3])).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 3);
    let rows: Vec<(String, Option<String>)> = conn
        .prepare("SELECT x, y FROM a ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [("kept".into(), None), ("m".into(), Some("n".into()))]);
    // Opening again applies nothing.
    drop(conn);
    let mut conn = open(&path, &existing(&[V1, V2, V3])).unwrap();
    assert_eq!(migrate(&mut conn, &[V1, V2, V3]).unwrap(), Vec::<u32>::new());
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 2);
}

#[test]
fn migrations_wait_when_told_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    drop(open(&path, &create(&[V1])).unwrap());
    let options = OpenOptions {
        migrate: Migrate::Later,
        ..existing(&[V1, V2])
    };
    let mut conn = open(&path, &options).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 1);
    assert_eq!(migrate(&mut conn, &[V1, V2]).unwrap(), [2]);
    assert_eq!(user_version(&conn).unwrap(), 2);
}

#[test]
fn a_database_newer_than_the_code_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    drop(open(&path, &create(&[V1, V2, V3])).unwrap());
    for options in [
        existing(&[V1, V2]),
        create(&[V1, V2]),
        OpenOptions {
            migrate: Migrate::Later,
            ..existing(&[V1, V2])
        },
    ] {
        let err = open(&path, &options).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::TooNew {
                    found: 3,
                    supported: 2
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("version 3") && message.contains("(2)"),
            "{message}"
        );
        assert!(message.contains("newer build"), "{message}");
    }
    assert!(matches!(
        open_read_only(&path, Some(&[V1, V2])),
        Err(OpenError::TooNew {
            found: 3,
            supported: 2
        })
    ));
    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 3);
}

#[test]
fn a_failed_migration_rolls_back_whole_and_keeps_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    drop(open(&path, &create(&[V1])).unwrap());
    // The step's first statement works, its second fails.
    let bad: Migration = "CREATE TABLE c (x); INSERT INTO nowhere VALUES (1);";
    let err = open(&path, &existing(&[V1, V2, bad])).unwrap_err();
    assert!(matches!(err, OpenError::Migration { version: 3, .. }), "{err:?}");
    let conn = Connection::open(&path).unwrap();
    // V2 committed on its own; the failed step left nothing.
    assert_eq!(user_version(&conn).unwrap(), 2);
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'c'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

#[cfg(unix)]
#[test]
fn a_created_database_and_its_wal_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let conn = open(&path, &create(&[V1])).unwrap();
    conn.execute("INSERT INTO a (x) VALUES ('v')", []).unwrap();
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("x.db-wal");
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);
    assert_eq!(mode(&dir.path().join("x.db-shm")), 0o600);
}

#[cfg(unix)]
#[test]
fn a_looser_mode_is_tightened_by_a_read_write_open_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let conn = open(&path, &create(&[V1])).unwrap();
    conn.execute("INSERT INTO a (x) VALUES ('v')", []).unwrap();
    let files = [
        path.clone(),
        dir.path().join("x.db-wal"),
        dir.path().join("x.db-shm"),
    ];
    for f in &files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let reader = open_read_only(&path, Some(&[V1])).unwrap();
    let count: i64 = reader
        .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(mode(&path), 0o644, "a read-only open changes nothing");
    drop(reader);
    drop(open(&path, &existing(&[V1])).unwrap());
    for f in &files {
        if f.exists() {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    }
    drop(conn);
}

#[test]
fn a_read_only_connection_reads_the_writers_commits_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let writer = open(&path, &create(&[V1])).unwrap();
    let reader = open_read_only(&path, Some(&[V1])).unwrap();
    writer.execute("INSERT INTO a (x) VALUES ('v')", []).unwrap();
    let count: i64 = reader
        .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
    assert!(reader.execute("INSERT INTO a (x) VALUES ('w')", []).is_err());
    assert_eq!(pragma::<i64>(&reader, "trusted_schema"), 0);
}

#[test]
fn a_read_only_open_refuses_a_database_not_yet_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    drop(open(&path, &create(&[V1])).unwrap());
    let err = open_read_only(&path, Some(&[V1, V2])).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::TooOld {
                found: 1,
                supported: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("read-write"), "{err}");
    // Without a version to expect (a file to copy), it opens.
    let conn = open_read_only(&path, None).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 1);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_as_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
    let options = OpenOptions {
        quick_check: true,
        ..existing(&[V1])
    };
    let err = open(&path, &options).unwrap_err();
    let OpenError::Sqlite(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::NotADatabase));
}

#[cfg(unix)]
#[test]
fn private_file_makes_a_missing_file_0600_and_tightens_one_without_touching_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made");
    crvs_sqlite::private_file(&made).unwrap();
    assert_eq!(mode(&made), 0o600);
    let loose = dir.path().join("loose");
    std::fs::write(&loose, b"kept").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    crvs_sqlite::private_file(&loose).unwrap();
    assert_eq!(mode(&loose), 0o600);
    assert_eq!(std::fs::read(&loose).unwrap(), b"kept");
}

/// The times SQLite prepared a cached statement again while it ran a
/// look-up by key and a page of a range, each with new values every time.
fn reprepares(conn: &Connection) -> i32 {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS d (kind TEXT NOT NULL, number TEXT NOT NULL, person INTEGER NOT NULL,
             PRIMARY KEY (kind, number));
         CREATE TABLE IF NOT EXISTS f (cursor INTEGER PRIMARY KEY, office TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS f_office ON f (office, cursor);",
    )
    .unwrap();
    let mut n = 0;
    for i in 0..50i64 {
        conn.execute(
            "INSERT OR IGNORE INTO d VALUES ('national_id', ?1, ?2)",
            rusqlite::params![format!("N{i}"), i],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO f (office) VALUES (?1)",
            [format!("{}", 171000 + i % 3)],
        )
        .unwrap();
    }
    for i in 0..50i64 {
        let mut st = conn
            .prepare_cached("SELECT person FROM d WHERE kind = ?1 AND number = ?2")
            .unwrap();
        let _: Option<i64> = st
            .query_row(rusqlite::params!["national_id", format!("N{i}")], |r| r.get(0))
            .ok();
        n += st.get_status(rusqlite::StatementStatus::RePrepare);
        let mut st = conn
            .prepare_cached("SELECT cursor FROM f WHERE office = ?1 AND cursor > ?2 ORDER BY cursor LIMIT ?3")
            .unwrap();
        let rows: Vec<i64> = st
            .query_map(
                rusqlite::params![format!("{}", 171000 + i % 3), i, 1 + i % 7],
                |r| r.get(0),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(rows.len() <= 1 + (i % 7) as usize);
        n += st.get_status(rusqlite::StatementStatus::RePrepare);
    }
    n
}

#[test]
fn a_cached_statement_keeps_its_plan_whatever_values_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let conn = open(&path, &create(&[V1])).unwrap();
    assert_eq!(reprepares(&conn), 0, "the writer prepares statements once");
    drop(conn);
    let reader = open_read_only(&path, Some(&[V1])).unwrap();
    let mut st = reader
        .prepare_cached("SELECT cursor FROM f WHERE office = ?1 AND cursor > ?2 ORDER BY cursor LIMIT ?3")
        .unwrap();
    for i in 0..20i64 {
        let _: Vec<i64> = st
            .query_map(rusqlite::params!["171001", i, 1 + i % 5], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    }
    assert_eq!(
        st.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "the reader prepares statements once"
    );
    // The control: a plain connection (without `stable_plans`) prepares
    // them again as values change, which is what this test guards against.
    let plain = Connection::open(dir.path().join("plain.db")).unwrap();
    assert!(
        reprepares(&plain) > 0,
        "SQLite no longer prepares statements again on new values"
    );
}
