//! Backup and restore of the embedded SQLite database; [`postgres`] does
//! the same for a PostgreSQL one, and both end with the same steps
//! ([`adjust`], [`finish`]).
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
use rusqlite::{Connection, OptionalExtension};

pub mod postgres;

use crate::DB_FILE;
use crate::ledger::{KidcLedger, LEDGER_FILE};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{FeedHead, NewDevice, Storage, StorageError};

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
    /// A server is serving the PostgreSQL database.
    #[error(
        "a crvs-server process is serving this database; stop every server that uses it first (none may run during a restore)"
    )]
    Serving,
    /// A PostgreSQL program is missing.
    #[error(
        "{0} was found neither on PATH nor in /usr/lib/postgresql/*/bin: install the PostgreSQL client programs (apt-get install postgresql-client), of the server's major version or newer"
    )]
    NoProgram(&'static str),
    /// `pg_dump` or `pg_restore` failed, or the database is not a server's.
    #[error("{0}")]
    Program(String),
    /// The marker of an unfinished PostgreSQL restore names a schema this
    /// program would not have made (edited by hand, or forged): what is
    /// being replaced is unknown, so nothing is guessed.
    #[error(
        "the marker of the unfinished restore (public.crvs_restore_pending) does not name a schema crvs-server made; nothing was changed: find the schema crvs_replaced_* that holds the data being replaced, and put its name in the marker (or restore by hand)"
    )]
    BadRestoreMarker,
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

/// Whether the file at `path` begins with `magic` (false when it cannot
/// be read).
fn file_starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == magic)
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
    /// Where the replaced database went, if there was one: a folder of
    /// the data folder (SQLite), or a schema of the database
    /// (PostgreSQL, `crvs_replaced_<ms>`).
    pub replaced_moved_to: Option<String>,
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
    let backup_taken_at_ms;
    {
        if file_starts_with(from, b"PGDMP") {
            return Err(BackupError::NotABackup(
                from.to_path_buf(),
                "it is a backup of a PostgreSQL server; restore it with --database URL (or CRVS_DATABASE_URL)".into(),
            ));
        }
        let src = crvs_sqlite::open_read_only(from, None)
            .map_err(|_| BackupError::NotABackup(from.to_path_buf(), "it does not open".into()))?;
        check(&src, from)?;
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
    // readable; otherwise (the machine was lost) the random margin of
    // [`adjust`] keeps two restores of one backup apart.
    let replaced_heads = if db.exists() {
        crvs_sqlite::open_read_only(&db, None)
            .ok()
            .and_then(|c| crate::storage::sqlite::feed_head(&c).ok())
            .map(|last| vec![FeedHead { office: None, last }])
            .unwrap_or_default()
    } else {
        Vec::new()
    };

    // Migrate the copy to this build's schema, then adjust it.
    let adjusted = {
        let staging_storage = SqliteStorage::open(&staging)?;
        let adjusted = adjust(
            &staging_storage,
            data,
            &replaced_heads,
            now_ms,
            backup_taken_at_ms,
        )?;
        drop(staging_storage);
        let conn = Connection::open(&staging)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        adjusted
    };

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
        replaced_moved_to = Some(aside.display().to_string());
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
    finish(
        data,
        &storage,
        from,
        backup_taken_at_ms,
        replaced_moved_to,
        adjusted,
        now_ms,
    )
}

/// What [`adjust`] did to a restored database.
#[derive(Debug, Clone, Copy)]
struct Adjusted {
    feed_floor: u64,
    tokens_expired: u64,
    devices_restored: u64,
    revocations_kept: u64,
}

/// The changes every restore makes to the restored database (migrated to
/// this build's schema), whatever its backend, in one transaction:
/// enrolments and revocations the ledger of `data` holds and the backup
/// lacks; every device's request counter jumped by [`COUNTER_JUMP`]; every
/// pull feed's cursor raised above anything the backup or the replaced
/// database (`replaced_heads`, its [`FeedHead`]s if it was readable) handed
/// out, by a random multiple of 2^32; unused enrolment tokens expired;
/// `restored_at` and `restored_from_backup_taken_at` noted.
fn adjust(
    storage: &dyn Storage,
    data: &Path,
    replaced_heads: &[FeedHead],
    now_ms: i64,
    backup_taken_at_ms: Option<i64>,
) -> Result<Adjusted, BackupError> {
    let ledger_devices = crate::ledger::read_devices(&data.join(LEDGER_FILE))?;
    let mut devices_restored = 0;
    let mut revocations_kept = 0;
    let mut tx = storage.begin()?;
    // Enrolments and revocations made after the backup.
    for d in &ledger_devices {
        let revoked = match tx.device(d.device_id)? {
            Some(known) => known.revoked_at_ms.is_some(),
            None => {
                let mut public_key = [0u8; 32];
                hex::decode_to_slice(&d.public_key, &mut public_key)
                    .map_err(|_| StorageError::Corrupt("a device key in the KIdC ledger"))?;
                tx.insert_device(&NewDevice {
                    device_id: d.device_id,
                    office: d.office.clone(),
                    public_key,
                    enrolled_at_ms: d.enrolled_at_ms,
                })?;
                if !d.token_hash.is_empty() {
                    tx.use_token(&d.token_hash, d.device_id, &public_key, d.enrolled_at_ms)?;
                }
                devices_restored += 1;
                false
            }
        };
        if let Some(at) = d.revoked_at_ms
            && !revoked
        {
            tx.revoke_device(d.device_id, at)?;
            revocations_kept += 1;
        }
    }
    tx.jump_request_counters(COUNTER_JUMP as u64)?;
    // Every feed (every office's, on PostgreSQL: the devices just put back
    // have one now) jumps above the higher of the backup's and the
    // replaced database's last cursor.
    let margin = (1 + u64::from(rand::random::<u16>())) << 32;
    let mut heads: std::collections::BTreeMap<Option<String>, u64> = Default::default();
    for h in tx.feed_heads()?.into_iter().chain(replaced_heads.iter().cloned()) {
        let last = heads.entry(h.office).or_default();
        *last = (*last).max(h.last);
    }
    let raised: Vec<FeedHead> = heads
        .into_iter()
        .map(|(office, last)| FeedHead {
            office,
            last: last + margin,
        })
        .collect();
    tx.raise_feed_heads(&raised)?;
    let feed_floor = raised.iter().map(|h| h.last).min().unwrap_or(margin);
    let tokens_expired = tx.expire_unused_tokens(now_ms)?;
    tx.delete_meta("backup_taken_at")?;
    tx.set_meta("restored_at", &now_ms.to_string())?;
    tx.set_meta(
        "restored_from_backup_taken_at",
        &backup_taken_at_ms.unwrap_or(0).to_string(),
    )?;
    tx.commit()?;
    Ok(Adjusted {
        feed_floor,
        tokens_expired,
        devices_restored,
        revocations_kept,
    })
}

/// The end of every restore, once the restored database is in place: the
/// KIdC ledger of `data` is kept as it is (a lost one is made from the
/// backup), then staff removed and API keys revoked after the backup are
/// off the roster and refused again ([`crate::ledger::reconcile`]).
fn finish(
    data: &Path,
    storage: &dyn Storage,
    from: &Path,
    backup_taken_at_ms: Option<i64>,
    replaced_moved_to: Option<String>,
    adjusted: Adjusted,
    now_ms: i64,
) -> Result<RestoreReport, BackupError> {
    let issued = storage.issuances()?;
    let (ledger, opened) = KidcLedger::open(&data.join(LEDGER_FILE), &issued, now_ms)?;
    let reconciled = crate::ledger::reconcile(&ledger, storage)?;
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
        feed_floor: adjusted.feed_floor,
        tokens_expired: adjusted.tokens_expired,
        devices_restored: adjusted.devices_restored,
        revocations_kept: adjusted.revocations_kept,
        staff_removals_kept: reconciled.staff_removed_again as u64,
        api_key_revocations_kept: reconciled.api_keys_revoked_again as u64,
    })
}
