//! `crvs-sqlite`: the one way to open and migrate a crvs SQLite database.
//!
//! The tablet's store (`crvs-core`), the server's database and the
//! server's KIdC ledger (`crvs-server`) all open their files through
//! [`open`] (one read-write connection: the writer) or [`open_read_only`]
//! (readers and operator commands), so they share one set of conventions:
//!
//! * **The file is private.** A file made by [`open`] is created with mode
//!   0600 before SQLite touches it, so its `-wal` and `-shm` files (which
//!   SQLite creates with the database's mode) are 0600 too. A read-write
//!   open of an existing file with a looser mode tightens it, and its
//!   `-wal` and `-shm` files, to 0600: the owner who can open it read-write
//!   may, and a database holding names or keys must not stay readable by
//!   others. A read-only open changes nothing on disk, modes included.
//! * **The same pragmas** (see [`PRAGMAS`] for why each one).
//! * **Numbered migrations.** `migrations[i]` takes the database from
//!   `PRAGMA user_version` `i` to `i + 1`. Each runs in its own
//!   `BEGIN IMMEDIATE` transaction together with the version bump: the
//!   version is read *inside* the transaction, so a second process opening
//!   the same file at the same moment waits, then finds the step done; a
//!   step that fails rolls back whole and leaves the version where it was.
//! * **Never a newer database.** A database whose version is above the
//!   last migration was written by a newer build: it is refused
//!   ([`OpenError::TooNew`]) before anything is written, because an older
//!   build would misread what it does not know.
//! * **On corruption**, nothing is repaired: SQLite's `SQLITE_CORRUPT` or
//!   `SQLITE_NOTADB` comes back as [`OpenError::Sqlite`], a failed
//!   `PRAGMA quick_check` (when asked for) as [`OpenError::Corrupt`]. The
//!   callers' answer is a restore from a backup.
//!
//! Errors name versions, pragmas and SQLite's messages (which name SQL,
//! tables and columns), never stored values.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// How long a connection waits for another connection's lock (the
/// server's writer, a CLI command, a backup) before it reports
/// `SQLITE_BUSY`. Ten seconds: an operator command run while the server
/// is busy waits its turn instead of failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The pragmas every read-write connection gets, in order, and why.
///
/// * `journal_mode = WAL`: readers do not block the writer nor the writer
///   readers (the server's reader connection, operator commands, online
///   backups), and a commit is one append to the log. [`open`] checks that
///   SQLite agreed ([`OpenError::NotWal`]).
/// * `synchronous = FULL`: the log is synced at every commit, so a
///   committed transaction survives a power cut. A KIdC the tablet has seen
///   must never be issued again, and a tablet's acknowledged change set
///   must never be lost (`NORMAL` in WAL mode may lose the last commits).
/// * `foreign_keys = ON`: the schemas' `REFERENCES` clauses are enforced
///   (SQLite ignores them by default).
/// * `temp_store = MEMORY`: sorts and temporary tables stay in memory, so
///   nothing of a database leaves its folder through temporary files
///   (personal data on the server; on Android there is no usable temporary
///   directory at all).
/// * `trusted_schema = OFF`: triggers and views in the file may not call
///   functions with side effects. The file is data, not code: someone who
///   can edit a tablet's SQLite file must not make it run anything.
pub const PRAGMAS: &str = "PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;
PRAGMA temp_store = MEMORY;
PRAGMA trusted_schema = OFF;";

/// Fixes each statement's query plan when it is prepared
/// (`SQLITE_DBCONFIG_ENABLE_QPSG`, SQLite's query planner stability
/// guarantee), on every connection [`open`] and [`open_read_only`] give.
///
/// Without it SQLite (built with `SQLITE_ENABLE_STAT4`, as the bundled one
/// is) marks a statement whose plan could depend on a bound value (a
/// `LIMIT ?`, an equality on an indexed column) to be prepared again
/// whenever that value changes: every cached statement was parsed and
/// planned again at nearly every use. On the server's writer that was a
/// tenth of all CPU at ingest, most of it for the Population Registry's
/// look-up of a person by document. Our statements are equality look-ups
/// and ranges on keys, whose plans do not depend on values.
pub fn stable_plans(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// The pragmas of a read-only connection: those of [`PRAGMAS`] that mean
/// something to a reader (the journal mode and syncing belong to the
/// writer).
const READ_ONLY_PRAGMAS: &str = "PRAGMA foreign_keys = ON;
PRAGMA temp_store = MEMORY;
PRAGMA trusted_schema = OFF;
PRAGMA query_only = ON;";

/// A migration step: SQL that takes the database from version `i` to
/// `i + 1`, where `i` is its index in the list.
pub type Migration = &'static str;

/// When [`open`] runs the migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Migrate {
    /// While opening (the default).
    #[default]
    Now,
    /// Not yet: the caller runs [`migrate`] itself, for example once the
    /// tablet's passphrase is known to be right. [`open`] still refuses a
    /// database newer than the code.
    Later,
}

/// How to open a database read-write.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions<'a> {
    /// Make the file if it is missing, and accept a database at version 0
    /// (empty), which the migrations then build. Without it the file must
    /// exist ([`OpenError::Missing`]) and be at version 1 or above
    /// ([`OpenError::Uninitialized`]): a file that no migration of ours
    /// ever touched is not ours.
    pub create: bool,
    /// The numbered migrations, in order (see [`Migration`]).
    pub migrations: &'a [Migration],
    /// When to run them.
    pub migrate: Migrate,
    /// Run `PRAGMA quick_check` on an existing file before anything else
    /// (it reads the whole file: cheap for a tablet's store, not for a
    /// server's database).
    pub quick_check: bool,
    /// The page cache, in KiB (`PRAGMA cache_size = -N`); SQLite's default
    /// (2 MiB) when `None`.
    pub cache_size_kib: Option<u32>,
    /// How many prepared statements the connection keeps (rusqlite's
    /// default, 16, when `None`).
    pub statement_cache: Option<usize>,
}

/// Why a database did not open. Never carries a stored value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file does not exist and [`OpenOptions::create`] was not set.
    #[error("the database file does not exist")]
    Missing,
    /// The file exists but no migration ever ran on it (version 0).
    #[error("the file is not a database made by this program (its schema version is 0)")]
    Uninitialized,
    /// The database was written by a newer build.
    #[error(
        "the database has schema version {found}, newer than this build supports ({supported}): \
         run a newer build; an older one must not write it"
    )]
    TooNew {
        /// The version found in the file.
        found: u32,
        /// The last version this build knows.
        supported: u32,
    },
    /// A read-only open found a database an older build wrote, not yet
    /// migrated.
    #[error(
        "the database has schema version {found}, older than this build's ({supported}): \
         open it read-write once (start the program normally) to migrate it"
    )]
    TooOld {
        /// The version found in the file.
        found: u32,
        /// The version this build expects.
        supported: u32,
    },
    /// `PRAGMA quick_check` found damage, or the schema version is
    /// negative (no build of ours writes one).
    #[error("the database is damaged: it failed its integrity check or holds an impossible schema version")]
    Corrupt,
    /// SQLite would not put the database in WAL mode.
    #[error("the database refused WAL mode ({0})")]
    NotWal(String),
    /// A migration step failed; it was rolled back and the version left
    /// as it was.
    #[error("migration to schema version {version} failed: {source}")]
    Migration {
        /// The version the step would have reached.
        version: u32,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// SQLite reported an error (`SQLITE_NOTADB` and `SQLITE_CORRUPT`
    /// among them).
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The file or its mode could not be read or set.
    #[error("i/o error on the database file: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the database at `path` read-write (the one writer connection of
/// its program): makes it 0600 (see the crate documentation), sets
/// [`PRAGMAS`] and the busy timeout, checks its version against
/// `options.migrations`, and runs the pending ones unless told
/// [`Migrate::Later`].
pub fn open(path: &Path, options: &OpenOptions<'_>) -> Result<Connection, OpenError> {
    let existed = path.exists();
    if !existed && !options.create {
        return Err(OpenError::Missing);
    }
    private_database(path, options.create)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if existed && options.quick_check {
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(OpenError::Corrupt);
        }
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal(mode));
    }
    conn.execute_batch(PRAGMAS)?;
    stable_plans(&conn)?;
    if let Some(kib) = options.cache_size_kib {
        conn.execute_batch(&format!("PRAGMA cache_size = -{kib};"))?;
    }
    if let Some(n) = options.statement_cache {
        conn.set_prepared_statement_cache_capacity(n);
    }
    let version = user_version(&conn)?;
    let supported = supported(options.migrations);
    if version > supported {
        return Err(OpenError::TooNew {
            found: version,
            supported,
        });
    }
    if version == 0 && !options.create {
        return Err(OpenError::Uninitialized);
    }
    let mut conn = conn;
    if options.migrate == Migrate::Now {
        migrate(&mut conn, options.migrations)?;
    }
    Ok(conn)
}

/// Opens the database at `path` read-only, for a reader connection or an
/// operator command: `SQLITE_OPEN_READ_ONLY`, `query_only`, the busy
/// timeout and the pragmas of [`PRAGMAS`] that apply to a reader
/// (`trusted_schema = OFF` included: a backup file named on the command
/// line runs no code of its own). Changes nothing on disk.
///
/// With `Some(migrations)` the database must be exactly at their version:
/// older is [`OpenError::TooOld`] (the writer migrates), newer
/// [`OpenError::TooNew`], version 0 [`OpenError::Uninitialized`]. `None`
/// accepts any version, for a file that is only copied (an online backup,
/// a backup being restored, which is migrated once copied).
pub fn open_read_only(path: &Path, migrations: Option<&[Migration]>) -> Result<Connection, OpenError> {
    if !path.exists() {
        return Err(OpenError::Missing);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(READ_ONLY_PRAGMAS)?;
    stable_plans(&conn)?;
    let Some(migrations) = migrations else {
        return Ok(conn);
    };
    let found = user_version(&conn)?;
    let supported = supported(migrations);
    match found {
        0 => Err(OpenError::Uninitialized),
        v if v > supported => Err(OpenError::TooNew { found, supported }),
        v if v < supported => Err(OpenError::TooOld { found, supported }),
        _ => Ok(conn),
    }
}

/// Runs every migration above the database's `user_version`, each in its
/// own `BEGIN IMMEDIATE` transaction with the version bump. Refuses a
/// database newer than `migrations`. Returns the versions applied.
pub fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<Vec<u32>, OpenError> {
    let supported = supported(migrations);
    let mut applied = Vec::new();
    loop {
        // The version is read inside the transaction: a second process
        // migrating the same file waits for the lock, then sees the step
        // done.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = user_version(&tx)?;
        if current > supported {
            return Err(OpenError::TooNew {
                found: current,
                supported,
            });
        }
        let Some(sql) = migrations.get(current as usize) else {
            return Ok(applied);
        };
        let version = current + 1;
        let step = tx
            .execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version));
        if let Err(source) = step {
            // Dropping `tx` rolls the step back, version bump included.
            return Err(OpenError::Migration { version, source });
        }
        tx.commit()?;
        applied.push(version);
    }
}

/// The database's `PRAGMA user_version`.
pub fn user_version(conn: &Connection) -> Result<u32, OpenError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // SQLite stores a signed 32-bit value; a negative one is nobody's.
    u32::try_from(v).map_err(|_| OpenError::Corrupt)
}

fn supported(migrations: &[Migration]) -> u32 {
    u32::try_from(migrations.len()).expect("fewer than 2^32 migrations")
}

/// Creates `path` with mode 0600 if it is missing (when `create`), and
/// tightens an existing database file and its `-wal` and `-shm` files to
/// 0600 if they are looser.
fn private_database(path: &Path, create: bool) -> std::io::Result<()> {
    if create {
        // Made 0600 before SQLite opens it, so the -wal and -shm files
        // SQLite creates take the same mode.
        private_file(path)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match tighten(Path::new(&name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            other => other?,
        }
    }
    Ok(())
}

/// Creates `path` readable by its owner only (0600 on unix) if it is
/// missing, and tightens it to 0600 if it is looser; never truncates it.
/// For every file of a data folder: databases, backups, keys, a token's
/// QR code.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?;
    tighten(path)
}

/// Sets `path` to 0600 if its mode lets anyone but the owner in.
fn tighten(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    std::fs::metadata(path)?;
    Ok(())
}

/// Deferred syncing, for group commit on a server.
///
/// A connection switched to `synchronous = NORMAL` ([`defer_sync`]) commits
/// by appending to the write-ahead log without syncing it; [`sync_log`]
/// then makes every commit so far durable with one `fdatasync` of the log.
/// The caller may run it after releasing the writer, so that the next
/// transaction's work overlaps this one's wait for the disk, and must
/// report nothing committed as durable before it returns.
///
/// This is what `synchronous = NORMAL` already guarantees against
/// corruption (SQLite syncs the log before every checkpoint, and the
/// database file after it), plus durability: a commit whose
/// [`sync_log`] returned survives a power cut. The log is never deleted
/// while a connection is open, and its folder is synced once by
/// [`defer_sync`], so that the file itself survives too.
pub fn defer_sync(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    // The log exists since the connection went into WAL mode; its name,
    // in the folder, must survive a power cut too.
    sync_log(path).map_err(OpenError::Io)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(OpenError::Io)?;
    }
    Ok(())
}

/// Makes every commit so far on the database at `path` durable: one
/// `fdatasync` of its write-ahead log (see [`defer_sync`]). A missing log
/// means everything is in the database file, which SQLite synced when it
/// checkpointed.
pub fn sync_log(path: &Path) -> std::io::Result<()> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::File::open(&wal) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
