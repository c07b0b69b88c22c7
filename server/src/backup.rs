//! Backup and restore of the embedded SQLite database.
//!
//! * [`backup`] copies the database with SQLite's online backup API while
//!   the server runs: one step, inside one read transaction, so the copy
//!   is a consistent snapshot and writers are never blocked (WAL mode).
//!   The copy is checked (`PRAGMA quick_check`) before it is renamed into
//!   place, and created 0600: it holds names and ID numbers.
//! * [`restore`] replaces the database of a stopped server with a backup.
//!   It refuses while a server holds the data folder ([`lock_data_dir`]).
//!   The database it replaces is moved aside, never deleted. It leaves the
//!   KIdC ledger ([`crate::ledger`]) alone, so every code issued after the
//!   backup stays reserved; it moves the pull feed's cursors above any the
//!   lost database handed out; it expires enrolment tokens that the
//!   backup shows unused (one may have been used since); and it applies
//!   again what the ledger keeps and the backup lacks: device enrolments
//!   and revocations, staff removals and API key revocations
//!   ([`crate::ledger::reconcile`]).
//!
//! After a restore the server takes a new automerge actor (it does at every
//! start, [`crate::Server::open`]); tablets resend what the server lost
//! (their chains are ahead of it: `sequence_gap` makes them rewind), with
//! their proofs of the codes they hold, and the server records those codes
//! again ([`crate::ingest`]). See ARCHITECTURE.md, "Recovery".

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OptionalExtension, params};

use crate::DB_FILE;
use crate::ledger::{KidcLedger, LEDGER_FILE};
use crate::storage::StorageError;
use crate::storage::sqlite::SqliteStorage;

/// The lock file a serving process holds in its data folder.
pub const LOCK_FILE: &str = "serve.lock";

/// A backup or restore failure. Messages name files and checks, never
/// personal data.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The data folder has no database.
    #[error("no server database in {0}")]
    NoDatabase(PathBuf),
    /// The output file exists already.
    #[error("{0} exists already; choose a new file name (a backup never overwrites one)")]
    Exists(PathBuf),
    /// A server is running on the data folder.
    #[error(
        "another crvs-server process is serving {0}; stop it first (one server per data folder, and none during a restore)"
    )]
    Running(PathBuf),
    /// The file is not a healthy crvs-server database.
    #[error("{0} is not a usable crvs-server backup: {1}")]
    NotABackup(PathBuf, String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for BackupError {
    fn from(e: rusqlite::Error) -> Self {
        BackupError::Storage(e.into())
    }
}

impl From<crvs_sqlite::OpenError> for BackupError {
    fn from(e: crvs_sqlite::OpenError) -> Self {
        BackupError::Storage(e.into())
    }
}

/// Takes the data folder's lock, exclusively, for as long as the returned
/// file lives. Fails with [`BackupError::Running`] when another process
/// holds it.
pub fn lock_data_dir(data: &Path) -> Result<File, BackupError> {
    crate::private_dir(data)?;
    let path = data.join(LOCK_FILE);
    crate::private_file(&path)?;
    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::Running(data.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    /// The backup file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Records in it.
    pub records: u64,
    /// Codes in its issuance log.
    pub issuances: u64,
    /// Devices in it.
    pub devices: u64,
    /// When it was taken, server ms.
    pub taken_at_ms: i64,
}

fn count(conn: &Connection, table: &str) -> Result<u64, BackupError> {
    let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    Ok(n as u64)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    let _ = dir;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Copies the database of `data` to `out` (which must not exist), online.
pub fn backup(data: &Path, out: &Path, now_ms: i64) -> Result<BackupReport, BackupError> {
    let db = data.join(DB_FILE);
    if !db.exists() {
        return Err(BackupError::NoDatabase(data.to_path_buf()));
    }
    if out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    crate::private_file(&partial)?;
    {
        let src = crvs_sqlite::open_read_only(&db, None)?;
        let mut dst = Connection::open(&partial)?;
        {
            let b = Backup::new(&src, &mut dst)?;
            // Every page in one step: one read transaction, so a consistent
            // snapshot that concurrent commits cannot restart.
            loop {
                match b.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More | StepResult::Busy | StepResult::Locked => {
                        std::thread::sleep(std::time::Duration::from_millis(50))
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        }
        // One self-contained file, whatever the journal mode of the source.
        let _: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        check(&dst, out)?;
        dst.execute(
            "INSERT INTO server_meta (key, value) VALUES ('backup_taken_at', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [now_ms.to_string()],
        )?;
    }
    File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, out)?;
    sync_dir(parent(out))?;
    let conn = crvs_sqlite::open_read_only(out, None)?;
    Ok(BackupReport {
        file: out.to_path_buf(),
        bytes: std::fs::metadata(out)?.len(),
        records: count(&conn, "records")?,
        issuances: count(&conn, "kidc_issuance")?,
        devices: count(&conn, "devices")?,
        taken_at_ms: now_ms,
    })
}

/// The integrity and shape checks of a backup.
fn check(conn: &Connection, name: &Path) -> Result<(), BackupError> {
    let bad = |why: &str| BackupError::NotABackup(name.to_path_buf(), why.to_string());
    let ok: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|_| bad("it is not an SQLite database"))?;
    if ok != "ok" {
        return Err(bad("it fails SQLite's integrity check"));
    }
    let tables: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
         AND name IN ('server_meta', 'devices', 'records', 'kidc_issuance', 'change_set_log', 'server_changes')",
        [],
        |r| r.get(0),
    )?;
    if tables != 6 {
        return Err(bad("it lacks the server's tables"));
    }
    Ok(())
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The backup restored.
    pub restored_from: PathBuf,
    /// When that backup was taken, if it says.
    pub backup_taken_at_ms: Option<i64>,
    /// Where the replaced database went, if there was one.
    pub replaced_moved_to: Option<PathBuf>,
    /// Codes in the restored issuance log.
    pub issuances: u64,
    /// Codes reserved in the ledger.
    pub reserved: u64,
    /// Codes reserved but not in the restored issuance log: issued after
    /// the backup. None of them is drawn again; each is recorded again
    /// when its tablet resends.
    pub codes_to_record_again: u64,
    /// The ledger was missing and was made from the backup alone.
    pub ledger_rebuilt: bool,
    /// The first pull-feed cursor after the restore.
    pub feed_floor: u64,
    /// Unused enrolment tokens expired (one may have been used after the
    /// backup: make new ones).
    pub tokens_expired: u64,
    /// Devices enrolled after the backup, put back from the ledger (they
    /// resend everything on their next sync).
    pub devices_restored: u64,
    /// Revocations made after the backup, kept from the ledger.
    pub revocations_kept: u64,
    /// Staff members removed after the backup, removed again from the
    /// ledger (someone added again since stays on the roster).
    pub staff_removals_kept: u64,
    /// API keys revoked after the backup, revoked again from the ledger.
    pub api_key_revocations_kept: u64,
}

/// How far every device's request counter jumps at a restore: requests
/// captured before it (counters the backup does not know) are refused, and
/// honest tablets continue above it by themselves (`replayed_request`
/// tells them the counter).
pub const COUNTER_JUMP: i64 = 1 << 32;

fn feed_head(conn: &Connection) -> Result<u64, BackupError> {
    let max: Option<i64> = conn.query_row("SELECT MAX(cursor) FROM server_changes", [], |r| r.get(0))?;
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'server_changes'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(max.unwrap_or(0).max(seq.unwrap_or(0)).max(0) as u64)
}

/// Replaces the database of `data` with the backup `from`. The server must
/// be stopped.
pub fn restore(data: &Path, from: &Path, now_ms: i64) -> Result<RestoreReport, BackupError> {
    let _lock = lock_data_dir(data)?;
    let db = data.join(DB_FILE);
    let staging = data.join(format!("{DB_FILE}.restoring"));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", staging.display()));
    }

    // The backup must be healthy before anything moves.
    let backup_head;
    let backup_taken_at_ms;
    {
        let src = crvs_sqlite::open_read_only(from, None)
            .map_err(|_| BackupError::NotABackup(from.to_path_buf(), "it does not open".into()))?;
        check(&src, from)?;
        backup_head = feed_head(&src)?;
        backup_taken_at_ms = src
            .query_row(
                "SELECT value FROM server_meta WHERE key = 'backup_taken_at'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok());
        crate::private_file(&staging)?;
        let mut dst = Connection::open(&staging)?;
        Backup::new(&src, &mut dst)?.step(-1)?;
    }
    // The cursors the database being replaced handed out, if it is still
    // readable; otherwise (the machine was lost) a random margin keeps
    // two restores of one backup apart.
    let current_head = if db.exists() {
        crvs_sqlite::open_read_only(&db, None)
            .ok()
            .and_then(|c| feed_head(&c).ok())
            .unwrap_or(0)
    } else {
        0
    };
    let margin = 1 + u64::from(rand::random::<u16>());
    let feed_floor = backup_head.max(current_head) + (margin << 32);

    // Migrate the copy to this build's schema, then adjust it.
    drop(SqliteStorage::open(&staging)?);
    let tokens_expired;
    let mut devices_restored = 0;
    let mut revocations_kept = 0;
    let ledger_devices = crate::ledger::read_devices(&data.join(LEDGER_FILE))?;
    {
        let conn = Connection::open(&staging)?;
        let tx = conn.unchecked_transaction()?;
        // Enrolments and revocations made after the backup.
        for d in &ledger_devices {
            let id = d.device_id.to_string();
            let known: i64 =
                tx.query_row("SELECT COUNT(*) FROM devices WHERE device_id = ?1", [&id], |r| {
                    r.get(0)
                })?;
            if known == 0 {
                tx.execute(
                    "INSERT INTO devices (device_id, office, public_key, enrolled_at, last_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        id,
                        d.office,
                        d.public_key,
                        d.enrolled_at_ms,
                        hex::encode([0u8; 32])
                    ],
                )?;
                if !d.token_hash.is_empty() {
                    tx.execute(
                        "UPDATE enrollment_tokens SET used_at = ?2, device_id = ?3, public_key = ?4
                         WHERE token_hash = ?1 AND used_at IS NULL",
                        params![d.token_hash, d.enrolled_at_ms, id, d.public_key],
                    )?;
                }
                devices_restored += 1;
            }
            if let Some(at) = d.revoked_at_ms {
                revocations_kept += tx.execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                    params![id, at],
                )? as u64;
            }
        }
        tx.execute(
            "UPDATE devices SET last_request_counter = last_request_counter + ?1",
            [COUNTER_JUMP],
        )?;
        let updated = tx.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'server_changes'",
            [feed_floor as i64],
        )?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('server_changes', ?1)",
                [feed_floor as i64],
            )?;
        }
        tokens_expired = tx.execute(
            "UPDATE enrollment_tokens SET expires_at = ?1 WHERE used_at IS NULL AND expires_at > ?1",
            [now_ms],
        )? as u64;
        for (k, v) in [
            ("restored_at", now_ms.to_string()),
            (
                "restored_from_backup_taken_at",
                backup_taken_at_ms.unwrap_or(0).to_string(),
            ),
        ] {
            tx.execute(
                "INSERT INTO server_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )?;
        }
        tx.execute("DELETE FROM server_meta WHERE key = 'backup_taken_at'", [])?;
        tx.commit()?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }

    // Move the replaced database aside (with its WAL: it may hold
    // committed transactions), then put the copy in place.
    let mut replaced_moved_to = None;
    if db.exists() {
        let aside = data.join(format!("replaced-{now_ms}"));
        crate::private_dir(&aside)?;
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", db.display()));
            if p.exists() {
                std::fs::rename(&p, aside.join(format!("{DB_FILE}{suffix}")))?;
            }
        }
        replaced_moved_to = Some(aside);
    }
    for suffix in ["-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", staging.display()));
        if p.exists() {
            std::fs::remove_file(p)?;
        }
    }
    File::open(&staging)?.sync_all()?;
    std::fs::rename(&staging, &db)?;
    sync_dir(data)?;

    // The ledger is kept as it is; a lost one is made from the backup.
    let storage = SqliteStorage::open(&db)?;
    let issued = crate::storage::Storage::issuances(&storage)?;
    let (ledger, opened) = KidcLedger::open(&data.join(LEDGER_FILE), &issued, now_ms)?;
    // Staff removed and API keys revoked after the backup: off the roster
    // and refused again (every start does the same).
    let reconciled = crate::ledger::reconcile(&ledger, &storage)?;
    let reserved = ledger.len()?;
    let issuances = issued.len() as u64;
    if opened.created {
        tracing::warn!(
            "the KIdC ledger was missing: codes issued after the backup are known only from the tablets' evidence"
        );
    }
    Ok(RestoreReport {
        restored_from: from.to_path_buf(),
        backup_taken_at_ms,
        replaced_moved_to,
        issuances,
        reserved,
        codes_to_record_again: reserved.saturating_sub(issuances),
        ledger_rebuilt: opened.created,
        feed_floor,
        tokens_expired,
        devices_restored,
        revocations_kept,
        staff_removals_kept: reconciled.staff_removed_again as u64,
        api_key_revocations_kept: reconciled.api_keys_revoked_again as u64,
    })
}
