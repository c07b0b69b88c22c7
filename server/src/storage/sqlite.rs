//! The embedded SQLite backend (WAL mode), the default: one command starts
//! a working server with its data in one folder.
//!
//! [`SqliteStorage::open`] is the only way in. It opens the writer through
//! [`crvs_sqlite::open`] (a 0600 file; WAL, `synchronous=FULL` so that a
//! committed transaction survives a power cut, foreign keys, a busy
//! timeout so that CLI commands and the server share the file; a database
//! newer than the build refused) and runs the numbered migrations of
//! `server/migrations/`, tracked with `PRAGMA user_version`, one step per
//! transaction; the reader through [`crvs_sqlite::open_read_only`].
//!
//! There is exactly one writer connection, behind a mutex: a write
//! transaction holds it from `BEGIN IMMEDIATE` to `COMMIT`, so writers are
//! serialized inside this process, and `BEGIN IMMEDIATE` serializes them
//! against other processes (the CLI) too. A separate reader connection
//! serves read-only queries without waiting for the writer.
//!
//! On corruption SQLite reports `SQLITE_CORRUPT` and the failing request
//! gets a 500; nothing is repaired silently. Recovery is a restore from
//! backup: tablets keep their signed change sets after acknowledgement,
//! and a sequence gap makes the server ask them for the missing ones.

use crate::storage::StaffHistoryEntry;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crvs_schema::Kidc;
use crvs_schema::wire::Hash;
use crvs_schema::wire::TabletReport;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    ApiKeyRow, Device, DeviceRefusal, FeedHead, FeedTo, HoldRow, Issuance, LogEntry, NewDevice,
    RegistrationStat, ReleaseAudit, Savepoint, ServerChange, StaffEvent, StaffMember, StaffPut,
    StaffPutOutcome, StaffRemoval, Storage, StorageError, StoredNotification, StoredRecord, SyncSeen,
    TokenRow, UnblockAudit, WriteTx, plan_staff_put, staff_key,
};
use super::{
    RegistryDump, RegistryEntry, RegistryEventRow, RegistryMaritalEntry, RegistryMarriage, RegistryPerson,
    RegistryPersonEvent, RegistryRelative,
};
use crate::staff::Roles;

/// The numbered migrations, applied in order: the `n`th takes
/// `user_version` from `n - 1` to `n`.
const MIGRATIONS: &[crvs_sqlite::Migration] = &[
    include_str!("../../migrations/001_init.sql"),
    include_str!("../../migrations/002_device_refusal.sql"),
    include_str!("../../migrations/003_replay_and_enrolment.sql"),
    include_str!("../../migrations/004_recovery.sql"),
    include_str!("../../migrations/005_staff.sql"),
    include_str!("../../migrations/006_notifications.sql"),
    include_str!("../../migrations/007_registration_numbers.sql"),
    include_str!("../../migrations/008_office_records.sql"),
    include_str!("../../migrations/009_registry.sql"),
    include_str!("../../migrations/010_tablet_report.sql"),
];

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Database(e.to_string())
    }
}

/// SQLite storage: one writer connection and one reader connection on the
/// same WAL-mode file.
pub struct SqliteStorage {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    path: PathBuf,
    checkpointer: Checkpointer,
}

/// The write-ahead log grows to about this size before it is copied into
/// the database file (SQLite's own default is about 4 MB).
const CHECKPOINT_AT_BYTES: u64 = 8 << 20;

/// Checkpoints the write-ahead log on a thread and a connection of its
/// own, so that the writer never does.
///
/// SQLite checkpoints automatically in the commit that takes the log past
/// its limit: the writer then copies megabytes into the database file and
/// syncs both files (`synchronous = NORMAL` syncs the log before a
/// checkpoint and the database after it) while every request behind it
/// waits. The writer's connection has `wal_autocheckpoint = 0` instead, and
/// each durable sync of the log ([`Storage::sync_log`], a committed
/// [`WriteTx::commit`]) wakes this thread once the log passes
/// [`CHECKPOINT_AT_BYTES`]; it runs a `PASSIVE` checkpoint, which never
/// waits for the writer or a reader and copies only committed frames. The
/// next write transaction after a complete one starts the log again from
/// its beginning. Other processes (the operator commands) keep SQLite's
/// automatic checkpoints. Measured with `crvs-load` (ARCHITECTURE.md).
struct Checkpointer {
    wake: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // The thread ends at its next wake-up, after a checkpoint under way.
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StorageError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Ends when the storage (the sender) is dropped.
                while woken.recv().is_ok() {
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match done {
                        Ok((_, log, copied)) => tracing::debug!(log, copied, "write-ahead log checkpointed"),
                        Err(e) => tracing::warn!(error = %e, "checkpointing the write-ahead log failed; trying again after the next commit"),
                    }
                }
            })
            .map_err(|e| StorageError::Database(format!("start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake: Mutex::new(Some(wake)),
            thread: Some(thread),
        })
    }

    /// After a sync of the log at `path`: wakes the thread if the log is
    /// long (never waits; a wake-up already pending is enough).
    fn after_sync(&self, path: &Path) {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() >= CHECKPOINT_AT_BYTES)
            && let Some(wake) = &*self.wake.lock().unwrap_or_else(|p| p.into_inner())
        {
            let _ = wake.try_send(());
        }
    }
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`: pragmas,
    /// migrations, one writer and one reader connection.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let options = crvs_sqlite::OpenOptions {
            create: true,
            migrations: MIGRATIONS,
            migrate: crvs_sqlite::Migrate::Later,
            cache_size_kib: Some(32 * 1024),
            statement_cache: Some(64),
            ..Default::default()
        };
        let mut writer = crvs_sqlite::open(path, &options)?;
        for version in crvs_sqlite::migrate(&mut writer, MIGRATIONS)? {
            tracing::info!(version, "applied storage migration");
        }
        // Commits append to the log; `sync_log` (or `commit`) syncs it.
        crvs_sqlite::defer_sync(&writer, path)?;
        writer.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let checkpointer = Checkpointer::start(path)?;
        let reader = crvs_sqlite::open_read_only(path, Some(MIGRATIONS))?;
        reader.set_prepared_statement_cache_capacity(16);
        Ok(SqliteStorage {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            path: path.to_path_buf(),
            checkpointer,
        })
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the reader leaves nothing half-written.
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The last cursor of the pull feed: the highest entry, or the
/// AUTOINCREMENT's high-water mark if higher (entries are never deleted,
/// but a restore raises the mark).
pub fn feed_head(conn: &Connection) -> Result<u64, StorageError> {
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

impl Storage for SqliteStorage {
    fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StorageError> {
        // A panic while holding the writer rolled its transaction back
        // (`SqliteTx::drop`), so the connection is clean.
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Box::new(SqliteTx {
            conn,
            open: true,
            path: &self.path,
            checkpointer: &self.checkpointer,
        }))
    }

    fn list_devices(&self) -> Result<Vec<Device>, StorageError> {
        list_devices(&self.reader())
    }

    fn device(&self, device_id: Uuid) -> Result<Option<Device>, StorageError> {
        device(&self.reader(), device_id)
    }

    fn feed_waiting_since(&self, device_id: Uuid, cursor: u64) -> Result<Option<i64>, StorageError> {
        feed_waiting_since(&self.reader(), device_id, cursor)
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, StorageError> {
        token(&self.reader(), token_hash)
    }

    fn holds(&self) -> Result<Vec<HoldRow>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT record_id, office, reason, since FROM holds WHERE released_at IS NULL ORDER BY since, record_id",
        )?;
        let rows = st.query_map([], hold_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn sync_log(&self) -> Result<(), StorageError> {
        crvs_sqlite::sync_log(&self.path)?;
        self.checkpointer.after_sync(&self.path);
        Ok(())
    }

    fn issuance_count(&self) -> Result<u64, StorageError> {
        let n: i64 = self
            .reader()
            .query_row("SELECT COUNT(*) FROM kidc_issuance", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn registration_numbers(&self) -> Result<Vec<(String, Uuid, i64)>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare(
            "SELECT registration_number, record_id, registered_at FROM registry_events ORDER BY seq",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (number, id, at) = row?;
            let id =
                Uuid::parse_str(&id).map_err(|_| StorageError::Corrupt("a record id in registry_events"))?;
            out.push((number, id, at));
        }
        Ok(out)
    }

    fn registration_number_count(&self) -> Result<u64, StorageError> {
        let n: i64 = self
            .reader()
            .query_row("SELECT COUNT(*) FROM registry_events", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn roster(&self, office: &str) -> Result<Vec<StaffMember>, StorageError> {
        roster(&self.reader(), office)
    }

    fn staff_role_at(&self, office: &str, staff: &str, at_ms: i64) -> Result<Option<Roles>, StorageError> {
        staff_role_at(&self.reader(), office, staff, at_ms)
    }

    fn staff_history(&self, office: &str) -> Result<Vec<StaffHistoryEntry>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT staff_key, event, roles, at FROM staff_history WHERE office = ?1 ORDER BY at, id",
        )?;
        let rows = st.query_map(params![office], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (staff_key, event, roles, at_ms) = row?;
            out.push(StaffHistoryEntry {
                staff_key,
                event: StaffEvent::parse(&event)
                    .ok_or(StorageError::Corrupt("unknown staff history event"))?,
                roles: stored_roles(&roles)?,
                at_ms,
            });
        }
        Ok(out)
    }

    fn api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1"
        ))?;
        Ok(st.query_row(params![key_hash], api_key_row).optional()?)
    }

    fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], api_key_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn staff_removals(&self) -> Result<Vec<StaffRemoval>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(
            "SELECT office, staff_key, at, by_operator FROM staff_history WHERE event = 'removed'
             ORDER BY at, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(StaffRemoval {
                office: r.get(0)?,
                staff_key: r.get(1)?,
                removed_at_ms: r.get(2)?,
                by: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn pending_notifications(&self, commune: &str) -> Result<Vec<StoredNotification>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications
             WHERE commune = ?1 AND registered_record_id IS NULL
             ORDER BY received_at, notification_id"
        ))?;
        let rows = st.query_map(params![commune], notification_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn registered_notifications(&self, since_ms: i64) -> Result<Vec<StoredNotification>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications
             WHERE registered_at >= ?1 ORDER BY registered_at, notification_id"
        ))?;
        let rows = st.query_map(params![since_ms], notification_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn unregistered_notifications(
        &self,
        received_before_ms: Option<i64>,
    ) -> Result<Vec<StoredNotification>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications
             WHERE registered_record_id IS NULL AND received_at < ?1
             ORDER BY received_at, notification_id"
        ))?;
        let rows = st.query_map(params![received_before_ms.unwrap_or(i64::MAX)], notification_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn registration_stats(&self, year: Option<i32>) -> Result<Vec<RegistrationStat>, StorageError> {
        let conn = self.reader();
        // The year is the registration number's (office/year/sequence).
        let mut st = conn.prepare_cached(
            "SELECT office, kind, count(*), sum(late) FROM registry_events
             WHERE ?1 IS NULL OR substr(registration_number, 8, 4) = printf('%04d', ?1)
             GROUP BY office, kind ORDER BY office, kind",
        )?;
        let rows = st.query_map(params![year], |r| {
            Ok(RegistrationStat {
                office: r.get(0)?,
                kind: r.get(1)?,
                registered: to_u64(r.get(2)?)?,
                late: to_u64(r.get(3)?)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn registry_entry(&self, kidc: &Kidc) -> Result<Option<RegistryEntry>, StorageError> {
        let conn = self.reader();
        match person_where(&conn, "kidc", kidc.as_str())? {
            Some(p) => Ok(Some(registry_entry(&conn, p)?)),
            None => Ok(None),
        }
    }

    fn registry_dump(&self) -> Result<RegistryDump, StorageError> {
        registry_dump(&self.reader())
    }

    fn registry_snapshot(
        &self,
        each: &mut dyn FnMut(&[RegistryEventRow]) -> Result<(), StorageError>,
    ) -> Result<RegistryDump, StorageError> {
        let conn = self.reader();
        conn.execute_batch("BEGIN")?;
        let read = (|| {
            let dump = registry_dump(&conn)?;
            let mut after = 0;
            loop {
                let rows = registry_events_after(&conn, after, 1000)?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                each(&rows)?;
            }
            Ok(dump)
        })();
        conn.execute_batch("COMMIT")?;
        read
    }

    fn issuances(&self) -> Result<Vec<(Kidc, Uuid)>, StorageError> {
        let conn = self.reader();
        let mut st = conn.prepare("SELECT kidc, record_id FROM kidc_issuance")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, parse_uuid(&r.get::<_, String>(1)?)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (code, record) = row?;
            let kidc = Kidc::parse(&code).map_err(|_| StorageError::Corrupt("issued kidc does not parse"))?;
            out.push((kidc, record));
        }
        Ok(out)
    }
}

/// A write transaction on the writer connection.
struct SqliteTx<'a> {
    conn: MutexGuard<'a, Connection>,
    open: bool,
    /// The database file (its log is synced at commit).
    path: &'a Path,
    checkpointer: &'a Checkpointer,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rollback failed");
        }
    }
}

fn to_i64(v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::Corrupt("number out of range"))
}

fn to_u64(v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, e.into()))
}

fn parse_uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

fn parse_hex<const N: usize>(s: &str) -> rusqlite::Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))?;
    Ok(out)
}

const DEVICE_COLUMNS: &str = "device_id, office, public_key, enrolled_at, revoked_at, last_seq, last_hash, \
     last_sync_at, last_device_clock_ms, clock_skew_ms, clock_flagged_at, refused_seq, refused_code, refused_at, last_request_counter, \
     lineage, clone_refusals, clone_refused_at, adoptions, unblock_seq, \
     outbox_change_sets, outbox_records, app_version, feed_sent_cursor";

fn device_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: parse_uuid(&r.get::<_, String>(0)?)?,
        office: r.get(1)?,
        public_key: parse_hex(&r.get::<_, String>(2)?)?,
        enrolled_at_ms: r.get(3)?,
        revoked_at_ms: r.get(4)?,
        last_seq: to_u64(r.get(5)?)?,
        last_hash: parse_hex(&r.get::<_, String>(6)?)?,
        last_sync_at_ms: r.get(7)?,
        last_device_clock_ms: r.get(8)?,
        clock_skew_ms: r.get(9)?,
        clock_flagged_at_ms: r.get(10)?,
        refused: match (
            r.get::<_, Option<i64>>(11)?,
            r.get::<_, Option<String>>(12)?,
            r.get(13)?,
        ) {
            (Some(seq), Some(code), Some(at_ms)) => Some(DeviceRefusal {
                seq: to_u64(seq)?,
                code,
                at_ms,
            }),
            _ => None,
        },
        last_request_counter: to_u64(r.get(14)?)?,
        lineage: r
            .get::<_, Option<String>>(15)?
            .map(|h| parse_hex(&h))
            .transpose()?,
        clone_refusals: to_u64(r.get(16)?)?,
        clone_refused_at_ms: r.get(17)?,
        adoptions: to_u64(r.get(18)?)?,
        unblock_seq: r.get::<_, Option<i64>>(19)?.map(to_u64).transpose()?,
        report: match (
            r.get::<_, Option<i64>>(20)?,
            r.get::<_, Option<i64>>(21)?,
            r.get::<_, Option<String>>(22)?,
        ) {
            (Some(change_sets), Some(records), Some(app_version)) => Some(TabletReport {
                change_sets_waiting: to_u64(change_sets)?,
                records_waiting: to_u64(records)?,
                app_version,
            }),
            _ => None,
        },
        feed_sent_cursor: r.get::<_, Option<i64>>(23)?.map(to_u64).transpose()?,
    })
}

/// The first feed entry of `device_id` after `cursor`: when it was written.
fn feed_waiting_since(conn: &Connection, device_id: Uuid, cursor: u64) -> Result<Option<i64>, StorageError> {
    // The two ranges of `server_changes_since`, first entry only.
    let mut st = conn.prepare_cached(
        "SELECT created_at FROM (
             SELECT * FROM (SELECT cursor, created_at FROM server_changes
                            WHERE device_id = ?1 AND office IS NULL AND cursor > ?2
                            ORDER BY cursor LIMIT 1)
             UNION ALL
             SELECT * FROM (SELECT s.cursor, s.created_at
                            FROM devices d JOIN server_changes s ON s.office = d.office
                            WHERE d.device_id = ?1 AND s.cursor > MAX(?2, d.feed_floor)
                              AND (s.kind = 'server' OR s.device_id <> ?1)
                            ORDER BY s.cursor LIMIT 1))
         ORDER BY cursor LIMIT 1",
    )?;
    let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
    Ok(st
        .query_row(params![device_id.to_string(), cursor], |r| r.get(0))
        .optional()?)
}

fn device(conn: &Connection, device_id: Uuid) -> Result<Option<Device>, StorageError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"
    ))?;
    Ok(st
        .query_row(params![device_id.to_string()], device_row)
        .optional()?)
}

fn token(conn: &Connection, token_hash: &str) -> Result<Option<TokenRow>, StorageError> {
    let mut st = conn.prepare_cached(
        "SELECT office, created_at, expires_at, used_at, mac_key, device_id, public_key
         FROM enrollment_tokens WHERE token_hash = ?1",
    )?;
    Ok(st
        .query_row(params![token_hash], |r| {
            Ok(TokenRow {
                office: r.get(0)?,
                created_at_ms: r.get(1)?,
                expires_at_ms: r.get(2)?,
                used_at_ms: r.get(3)?,
                mac_key: r
                    .get::<_, Option<String>>(4)?
                    .map(|h| parse_hex(&h))
                    .transpose()?,
                used_by: match (r.get::<_, Option<String>>(5)?, r.get::<_, Option<String>>(6)?) {
                    (Some(d), Some(k)) => Some((parse_uuid(&d)?, parse_hex(&k)?)),
                    _ => None,
                },
            })
        })
        .optional()?)
}

fn hold_row(r: &Row<'_>) -> rusqlite::Result<HoldRow> {
    Ok(HoldRow {
        record_id: parse_uuid(&r.get::<_, String>(0)?)?,
        office: r.get(1)?,
        reason: r.get(2)?,
        since: r.get(3)?,
    })
}

const API_KEY_COLUMNS: &str = "id, name, scope, key_hash, created_at, revoked_at";

fn api_key_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        name: r.get(1)?,
        scope: r.get(2)?,
        key_hash: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
    })
}

const NOTIFICATION_COLUMNS: &str = "notification_id, kind, source_system, source_reference, commune, \
     payload, api_key_id, received_at, registered_record_id, registered_at";

fn notification_row(r: &Row<'_>) -> rusqlite::Result<StoredNotification> {
    Ok(StoredNotification {
        notification_id: parse_uuid(&r.get::<_, String>(0)?)?,
        kind: r.get(1)?,
        source_system: r.get(2)?,
        source_reference: r.get(3)?,
        commune: r.get(4)?,
        payload: r.get(5)?,
        api_key_id: parse_uuid(&r.get::<_, String>(6)?)?,
        received_at_ms: r.get(7)?,
        registered_record_id: r
            .get::<_, Option<String>>(8)?
            .map(|s| parse_uuid(&s))
            .transpose()?,
        registered_at_ms: r.get(9)?,
    })
}

fn list_devices(conn: &Connection) -> Result<Vec<Device>, StorageError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY enrolled_at, device_id"
    ))?;
    let rows = st.query_map([], device_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const STAFF_COLUMNS: &str = "office, staff_id, staff_key, roles, pin_hash, added_at, updated_at, removed_at";

fn stored_roles(text: &str) -> rusqlite::Result<Roles> {
    Roles::from_stored(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            "unknown role in the stored roster".into(),
        )
    })
}

fn staff_row(r: &Row<'_>) -> rusqlite::Result<StaffMember> {
    Ok(StaffMember {
        office: r.get(0)?,
        staff_id: r.get(1)?,
        staff_key: r.get(2)?,
        roles: stored_roles(&r.get::<_, String>(3)?)?,
        pin_hash: r.get(4)?,
        added_at_ms: r.get(5)?,
        updated_at_ms: r.get(6)?,
        removed_at_ms: r.get(7)?,
    })
}

fn staff(conn: &Connection, office: &str, staff: &str) -> Result<Option<StaffMember>, StorageError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {STAFF_COLUMNS} FROM staff WHERE office = ?1 AND staff_key = ?2"
    ))?;
    Ok(st
        .query_row(params![office, staff_key(staff)], staff_row)
        .optional()?)
}

fn roster(conn: &Connection, office: &str) -> Result<Vec<StaffMember>, StorageError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {STAFF_COLUMNS} FROM staff WHERE office = ?1 ORDER BY staff_key"
    ))?;
    let rows = st.query_map(params![office], staff_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn staff_role_at(
    conn: &Connection,
    office: &str,
    staff: &str,
    at_ms: i64,
) -> Result<Option<Roles>, StorageError> {
    // The person's last event at or before `at_ms`. Events of one person
    // never run backwards in time (`plan_staff_put`); `id` orders those of
    // one millisecond.
    let mut st = conn.prepare_cached(
        "SELECT event, roles FROM staff_history WHERE office = ?1 AND staff_key = ?2 AND at <= ?3
         ORDER BY at DESC, id DESC LIMIT 1",
    )?;
    let last: Option<(String, String)> = st
        .query_row(params![office, staff_key(staff), at_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((event, roles)) = last else {
        return Ok(None);
    };
    match StaffEvent::parse(&event) {
        Some(StaffEvent::Removed) => Ok(None),
        Some(_) => Ok(Some(stored_roles(&roles)?)),
        None => Err(StorageError::Corrupt("unknown staff history event")),
    }
}

fn append_staff_event(
    conn: &Connection,
    member: &StaffMember,
    event: StaffEvent,
    by: &str,
    at_ms: i64,
) -> Result<(), StorageError> {
    let mut st = conn.prepare_cached(
        "INSERT INTO staff_history (office, staff_key, staff_id, event, roles, at, by_operator)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    st.execute(params![
        member.office,
        member.staff_key,
        member.staff_id,
        event.as_str(),
        member.roles.to_stored(),
        at_ms,
        by
    ])?;
    Ok(())
}

impl WriteTx for SqliteTx<'_> {
    fn savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError> {
        self.conn.execute_batch(&format!("SAVEPOINT {}", sp.name()))?;
        Ok(())
    }

    fn release_savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError> {
        self.conn
            .execute_batch(&format!("RELEASE SAVEPOINT {}", sp.name()))?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError> {
        let name = sp.name();
        self.conn
            .execute_batch(&format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"))?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StorageError> {
        let (path, checkpointer) = (self.path, self.checkpointer);
        self.commit_unsynced()?;
        crvs_sqlite::sync_log(path)?;
        checkpointer.after_sync(path);
        Ok(())
    }

    fn commit_unsynced(mut self: Box<Self>) -> Result<(), StorageError> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StorageError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT value FROM server_meta WHERE key = ?1")?;
        Ok(st.query_row(params![key], |r| r.get(0)).optional()?)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO server_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?;
        st.execute(params![key, value])?;
        Ok(())
    }

    fn delete_meta(&mut self, key: &str) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("DELETE FROM server_meta WHERE key = ?1")?
            .execute(params![key])?;
        Ok(())
    }

    fn feed_heads(&mut self) -> Result<Vec<FeedHead>, StorageError> {
        Ok(vec![FeedHead {
            office: None,
            last: feed_head(&self.conn)?,
        }])
    }

    fn raise_feed_heads(&mut self, heads: &[FeedHead]) -> Result<(), StorageError> {
        // One feed: its cursor is `server_changes`' AUTOINCREMENT.
        let Some(last) = heads.iter().map(|h| h.last).max() else {
            return Ok(());
        };
        let last = i64::try_from(last).map_err(|_| StorageError::Corrupt("a feed cursor out of range"))?;
        let updated = self.conn.execute(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'server_changes'",
            [last],
        )?;
        if updated == 0 {
            self.conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('server_changes', ?1)",
                [last],
            )?;
        }
        Ok(())
    }

    fn jump_request_counters(&mut self, by: u64) -> Result<u64, StorageError> {
        let by = i64::try_from(by).map_err(|_| StorageError::Corrupt("a counter jump out of range"))?;
        Ok(self.conn.execute(
            "UPDATE devices SET last_request_counter = last_request_counter + ?1",
            [by],
        )? as u64)
    }

    fn expire_unused_tokens(&mut self, now_ms: i64) -> Result<u64, StorageError> {
        Ok(self.conn.execute(
            "UPDATE enrollment_tokens SET expires_at = ?1 WHERE used_at IS NULL AND expires_at > ?1",
            [now_ms],
        )? as u64)
    }

    fn insert_token(&mut self, token_hash: &str, row: &TokenRow) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO enrollment_tokens (token_hash, office, created_at, expires_at, mac_key)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        st.execute(params![
            token_hash,
            row.office,
            row.created_at_ms,
            row.expires_at_ms,
            row.mac_key.map(hex::encode),
        ])?;
        Ok(())
    }

    fn token(&mut self, token_hash: &str) -> Result<Option<TokenRow>, StorageError> {
        token(&self.conn, token_hash)
    }

    fn use_token(
        &mut self,
        token_hash: &str,
        device_id: Uuid,
        public_key: &[u8; 32],
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE enrollment_tokens SET used_at = ?2, device_id = ?3, public_key = ?4
             WHERE token_hash = ?1 AND used_at IS NULL",
        )?;
        Ok(st.execute(params![
            token_hash,
            at_ms,
            device_id.to_string(),
            hex::encode(public_key)
        ])? == 1)
    }

    fn insert_device(&mut self, d: &NewDevice) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO devices (device_id, office, public_key, enrolled_at, last_seq, last_hash)
             VALUES (?1, ?2, ?3, ?4, 0, ?5)",
        )?;
        st.execute(params![
            d.device_id.to_string(),
            d.office,
            hex::encode(d.public_key),
            d.enrolled_at_ms,
            hex::encode([0u8; 32]),
        ])?;
        Ok(())
    }

    fn device(&mut self, device_id: Uuid) -> Result<Option<Device>, StorageError> {
        device(&self.conn, device_id)
    }

    fn revoke_device(&mut self, device_id: Uuid, at_ms: i64) -> Result<bool, StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE device_id = ?1",
        )?;
        Ok(st.execute(params![device_id.to_string(), at_ms])? == 1)
    }

    fn record_sync(&mut self, device_id: Uuid, seen: &SyncSeen) -> Result<bool, StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE devices SET last_sync_at = ?2, last_device_clock_ms = ?3, clock_skew_ms = ?4,
                 clock_flagged_at = CASE WHEN ?5 THEN ?2 ELSE clock_flagged_at END,
                 last_request_counter = ?6,
                 outbox_change_sets = ?7, outbox_records = ?8, app_version = ?9
             WHERE device_id = ?1 AND last_request_counter < ?6",
        )?;
        let report = seen.report.as_ref();
        let n = st.execute(params![
            device_id.to_string(),
            seen.at_ms,
            seen.device_clock_ms,
            seen.skew_ms,
            seen.flagged,
            to_i64(seen.counter)?,
            report.map(|r| to_i64(r.change_sets_waiting)).transpose()?,
            report.map(|r| to_i64(r.records_waiting)).transpose()?,
            report.map(|r| r.app_version.as_str()),
        ])?;
        Ok(n == 1)
    }

    fn set_feed_sent(&mut self, device_id: Uuid, cursor: u64) -> Result<(), StorageError> {
        let mut st = self
            .conn
            .prepare_cached("UPDATE devices SET feed_sent_cursor = ?2 WHERE device_id = ?1")?;
        st.execute(params![device_id.to_string(), to_i64(cursor)?])?;
        Ok(())
    }

    fn advance_device(&mut self, device_id: Uuid, seq: u64, hash: &Hash) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE devices SET last_seq = ?2, last_hash = ?3,
                     refused_seq = NULL, refused_code = NULL, refused_at = NULL
                 WHERE device_id = ?1",
        )?;
        st.execute(params![device_id.to_string(), to_i64(seq)?, hex::encode(hash)])?;
        Ok(())
    }

    fn set_lineage(
        &mut self,
        device_id: Uuid,
        lineage: &[u8; 16],
        adopted: bool,
    ) -> Result<(), StorageError> {
        self.conn.execute(
            "UPDATE devices SET lineage = ?2, adoptions = adoptions + ?3 WHERE device_id = ?1",
            params![device_id.to_string(), hex::encode(lineage), i64::from(adopted)],
        )?;
        Ok(())
    }

    fn record_clone_refusal(&mut self, device_id: Uuid, at_ms: i64) -> Result<(), StorageError> {
        self.conn.execute(
            "UPDATE devices SET clone_refusals = clone_refusals + 1, clone_refused_at = ?2 WHERE device_id = ?1",
            params![device_id.to_string(), at_ms],
        )?;
        Ok(())
    }

    fn record_refusal(&mut self, device_id: Uuid, refusal: &DeviceRefusal) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE devices SET refused_seq = ?2, refused_code = ?3, refused_at = ?4 WHERE device_id = ?1",
        )?;
        st.execute(params![
            device_id.to_string(),
            to_i64(refusal.seq)?,
            refusal.code,
            refusal.at_ms
        ])?;
        Ok(())
    }

    fn logged_hash(&mut self, device_id: Uuid, seq: u64) -> Result<Option<Hash>, StorageError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT hash FROM change_set_log WHERE device_id = ?1 AND seq = ?2")?;
        Ok(st
            .query_row(params![device_id.to_string(), to_i64(seq)?], |r| {
                parse_hex(&r.get::<_, String>(0)?)
            })
            .optional()?)
    }

    fn append_change_set(&mut self, e: &LogEntry<'_>) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO change_set_log (device_id, seq, hash, signed, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        st.execute(params![
            e.device_id.to_string(),
            to_i64(e.seq)?,
            hex::encode(e.hash),
            e.signed,
            e.received_at_ms
        ])?;
        Ok(())
    }

    fn load_record(&mut self, record_id: Uuid) -> Result<Option<StoredRecord>, StorageError> {
        let mut st = self.conn.prepare_cached(
            "SELECT office, origin_device, kind, status, doc, updated_at FROM records WHERE record_id = ?1",
        )?;
        Ok(st
            .query_row(params![record_id.to_string()], |r| {
                Ok(StoredRecord {
                    record_id,
                    office: r.get(0)?,
                    origin_device: parse_uuid(&r.get::<_, String>(1)?)?,
                    kind: r.get(2)?,
                    status: r.get(3)?,
                    doc: r.get(4)?,
                    updated_at_ms: r.get(5)?,
                })
            })
            .optional()?)
    }

    fn insert_record(&mut self, rec: &StoredRecord) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO records (record_id, office, origin_device, kind, status, doc, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )?;
        st.execute(params![
            rec.record_id.to_string(),
            rec.office,
            rec.origin_device.to_string(),
            rec.kind,
            rec.status,
            rec.doc,
            rec.updated_at_ms
        ])?;
        Ok(())
    }

    fn update_record(&mut self, rec: &StoredRecord) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE records SET status = ?2, doc = ?3, updated_at = ?4 WHERE record_id = ?1",
        )?;
        let n = st.execute(params![
            rec.record_id.to_string(),
            rec.status,
            rec.doc,
            rec.updated_at_ms
        ])?;
        if n != 1 {
            return Err(StorageError::Corrupt("updated record does not exist"));
        }
        Ok(())
    }

    fn issued_kidc(&mut self, record_id: Uuid) -> Result<Option<Kidc>, StorageError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT kidc FROM kidc_issuance WHERE record_id = ?1")?;
        let code: Option<String> = st
            .query_row(params![record_id.to_string()], |r| r.get(0))
            .optional()?;
        code.map(|c| Kidc::parse(&c).map_err(|_| StorageError::Corrupt("issued kidc does not parse")))
            .transpose()
    }

    fn insert_issuance(&mut self, i: &Issuance<'_>) -> Result<bool, StorageError> {
        // `ON CONFLICT DO NOTHING` (SQLite and PostgreSQL alike) covers both
        // unique keys: the code and the record.
        let mut st = self.conn.prepare_cached(
            "INSERT INTO kidc_issuance (kidc, record_id, category, issued_at, device_id, seq, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?;
        let n = st.execute(params![
            i.kidc.as_str(),
            i.record_id.to_string(),
            i.category,
            i.issued_at_ms,
            i.device_id.to_string(),
            to_i64(i.seq)?,
            i.reason
        ])?;
        Ok(n == 1)
    }

    fn append_feed(
        &mut self,
        to: FeedTo<'_>,
        record_id: Uuid,
        change: &[u8],
        at_ms: i64,
    ) -> Result<(), StorageError> {
        // Each a read, then a one-row `INSERT … VALUES`: an `INSERT …
        // SELECT` may write several rows, so SQLite gives it a statement
        // journal, and releasing one inside the writer's savepoints walks
        // the whole in-memory sub-journal (a list of 1 KiB chunks) from its
        // start: a cost that grew with every page the transaction had
        // touched, paid twice per record (ARCHITECTURE.md, "Ingest").
        let (device, kind) = match to {
            // `device_id` is the record's own device (the column is NOT NULL).
            FeedTo::Office(_) => {
                let mut st = self
                    .conn
                    .prepare_cached("SELECT origin_device FROM records WHERE record_id = ?1")?;
                let origin: Option<String> =
                    st.query_row([record_id.to_string()], |r| r.get(0)).optional()?;
                let Some(origin) = origin else {
                    return Err(StorageError::Corrupt("a feed row for a record not stored"));
                };
                (origin, "server")
            }
            // Only when another device of the office could read it: a
            // device enrolled later starts from a snapshot that holds it.
            FeedTo::OfficeExcept { office, from } => {
                let from = from.to_string();
                let mut st = self.conn.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE office = ?1 AND device_id <> ?2 AND revoked_at IS NULL)",
                )?;
                let others: bool = st.query_row(params![office, from], |r| r.get(0))?;
                if !others {
                    return Ok(());
                }
                (from, "tablet")
            }
        };
        let office = match to {
            FeedTo::Office(office) | FeedTo::OfficeExcept { office, .. } => office,
        };
        let mut st = self.conn.prepare_cached(
            "INSERT INTO server_changes (device_id, record_id, change, created_at, office, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        st.execute(params![
            device,
            record_id.to_string(),
            change,
            at_ms,
            office,
            kind
        ])?;
        Ok(())
    }

    fn seed_office_feed(&mut self, device_id: Uuid, office: &str, at_ms: i64) -> Result<u64, StorageError> {
        let device = device_id.to_string();
        self.conn.execute(
            "UPDATE devices SET feed_floor = (SELECT COALESCE(MAX(cursor), 0) FROM server_changes)
             WHERE device_id = ?1",
            [&device],
        )?;
        let n = self.conn.execute(
            "INSERT INTO server_changes (device_id, record_id, change, created_at, kind)
             SELECT ?1, record_id, doc, ?3, 'snapshot' FROM records WHERE office = ?2
             ORDER BY created_at, record_id",
            params![device, office, at_ms],
        )?;
        Ok(n as u64)
    }

    fn server_changes_since(
        &mut self,
        device_id: Uuid,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<ServerChange>, StorageError> {
        // Two indexed ranges, each bounded: the rows addressed to the
        // device, and its office's rows after its enrolment but for its
        // own tablet changes.
        let mut st = self.conn.prepare_cached(
            "SELECT cursor, record_id, change FROM (
                 SELECT * FROM (SELECT cursor, record_id, change FROM server_changes
                                WHERE device_id = ?1 AND office IS NULL AND cursor > ?2
                                ORDER BY cursor LIMIT ?3)
                 UNION ALL
                 SELECT * FROM (SELECT s.cursor, s.record_id, s.change
                                FROM devices d JOIN server_changes s ON s.office = d.office
                                WHERE d.device_id = ?1 AND s.cursor > MAX(?2, d.feed_floor)
                                  AND (s.kind = 'server' OR s.device_id <> ?1)
                                ORDER BY s.cursor LIMIT ?3))
             ORDER BY cursor LIMIT ?3",
        )?;
        // A cursor beyond i64 cannot exist: clamp, the feed after it is empty.
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![device_id.to_string(), cursor, limit], |r| {
            Ok(ServerChange {
                cursor: to_u64(r.get(0)?)?,
                record_id: parse_uuid(&r.get::<_, String>(1)?)?,
                change: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn list_devices(&mut self) -> Result<Vec<Device>, StorageError> {
        list_devices(&self.conn)
    }

    fn insert_hold(
        &mut self,
        record_id: Uuid,
        office: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO holds (record_id, office, reason, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (record_id) DO UPDATE SET reason = excluded.reason, since = excluded.since, released_at = NULL",
            params![record_id.to_string(), office, reason, at_ms],
        )?;
        Ok(())
    }

    fn register_notification(
        &mut self,
        notification_id: Uuid,
        record_id: Uuid,
        office: &str,
        kind: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE notifications SET registered_record_id = ?2, registered_at = ?5
             WHERE notification_id = ?1 AND commune = ?3 AND kind = ?4 AND registered_record_id IS NULL",
        )?;
        let n = st.execute(params![
            notification_id.to_string(),
            record_id.to_string(),
            office,
            kind,
            at_ms
        ])?;
        Ok(n == 1)
    }

    fn next_registration_seq(&mut self, office: &str, year: i32, above: u64) -> Result<u64, StorageError> {
        let above = i64::try_from(above).map_err(|_| StorageError::Corrupt("registration counter"))?;
        // A read and a one-row write, not `… RETURNING`: SQLite gives a
        // statement with RETURNING a statement journal (see `append_feed`).
        let mut st = self
            .conn
            .prepare_cached("SELECT last FROM registration_counters WHERE office = ?1 AND year = ?2")?;
        let last: Option<i64> = st.query_row(params![office, year], |r| r.get(0)).optional()?;
        let next = last.unwrap_or(0).max(above) + 1;
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registration_counters (office, year, last) VALUES (?1, ?2, ?3)
             ON CONFLICT (office, year) DO UPDATE SET last = excluded.last",
        )?;
        st.execute(params![office, year, next])?;
        u64::try_from(next).map_err(|_| StorageError::Corrupt("registration counter"))
    }

    fn raise_registration_counter(&mut self, office: &str, year: i32, seq: u64) -> Result<(), StorageError> {
        let seq = i64::try_from(seq).map_err(|_| StorageError::Corrupt("registration counter"))?;
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registration_counters (office, year, last) VALUES (?1, ?2, ?3)
             ON CONFLICT (office, year) DO UPDATE SET last = MAX(last, excluded.last)",
        )?;
        st.execute(params![office, year, seq])?;
        Ok(())
    }

    fn hold(&mut self, record_id: Uuid) -> Result<Option<HoldRow>, StorageError> {
        let mut st = self.conn.prepare_cached(
            "SELECT record_id, office, reason, since FROM holds WHERE record_id = ?1 AND released_at IS NULL",
        )?;
        Ok(st.query_row([record_id.to_string()], hold_row).optional()?)
    }

    fn audit_release(&mut self, a: &ReleaseAudit<'_>) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO hold_releases (record_id, hold_reason, by_operator, why, at, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                a.record_id.to_string(),
                a.hold_reason,
                a.by,
                a.why,
                a.at_ms,
                a.outcome
            ],
        )?;
        if a.outcome == "released" {
            self.conn.execute(
                "UPDATE holds SET released_at = ?2 WHERE record_id = ?1",
                params![a.record_id.to_string(), a.at_ms],
            )?;
        }
        Ok(())
    }

    fn request_unblock(&mut self, a: &UnblockAudit<'_>) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO unblocks (device_id, seq, code, by_operator, why, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![a.device_id.to_string(), to_i64(a.seq)?, a.code, a.by, a.why, a.at_ms],
        )?;
        self.conn.execute(
            "UPDATE devices SET unblock_seq = ?2 WHERE device_id = ?1",
            params![a.device_id.to_string(), to_i64(a.seq)?],
        )?;
        Ok(())
    }

    fn set_aside(&mut self, e: &LogEntry<'_>, records: &[Uuid]) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO set_aside (device_id, seq, hash, signed, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                e.device_id.to_string(),
                to_i64(e.seq)?,
                hex::encode(e.hash),
                e.signed,
                e.received_at_ms
            ],
        )?;
        for r in records {
            self.conn.execute(
                "INSERT INTO set_aside_records (record_id, device_id, seq) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![r.to_string(), e.device_id.to_string(), to_i64(e.seq)?],
            )?;
        }
        self.conn.execute(
            "UPDATE devices SET last_seq = ?2, last_hash = ?3, unblock_seq = NULL,
                 refused_seq = NULL, refused_code = NULL, refused_at = NULL
             WHERE device_id = ?1",
            params![e.device_id.to_string(), to_i64(e.seq)?, hex::encode(e.hash)],
        )?;
        Ok(())
    }

    fn set_aside_hash(&mut self, device_id: Uuid, seq: u64) -> Result<Option<Hash>, StorageError> {
        let h: Option<String> = self
            .conn
            .query_row(
                "SELECT hash FROM set_aside WHERE device_id = ?1 AND seq = ?2",
                params![device_id.to_string(), to_i64(seq)?],
                |r| r.get(0),
            )
            .optional()?;
        Ok(h.map(|h| parse_hex(&h)).transpose()?)
    }

    fn is_set_aside(&mut self, record_id: Uuid) -> Result<bool, StorageError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM set_aside_records WHERE record_id = ?1")?;
        Ok(st.exists([record_id.to_string()])?)
    }

    fn staff(&mut self, office: &str, staff_id: &str) -> Result<Option<StaffMember>, StorageError> {
        staff(&self.conn, office, staff_id)
    }

    fn put_staff(&mut self, put: &StaffPut<'_>) -> Result<StaffPutOutcome, StorageError> {
        let existing = staff(&self.conn, put.office, put.staff_id)?;
        let Some((member, events)) = plan_staff_put(existing.as_ref(), put) else {
            return Ok(StaffPutOutcome::PinNeeded);
        };
        if events.is_empty() {
            return Ok(StaffPutOutcome::Done { member, events });
        }
        let mut st = self.conn.prepare_cached(
            "INSERT INTO staff (office, staff_key, staff_id, roles, pin_hash, added_at, updated_at, removed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (office, staff_key) DO UPDATE SET staff_id = excluded.staff_id,
                 roles = excluded.roles, pin_hash = excluded.pin_hash, added_at = excluded.added_at,
                 updated_at = excluded.updated_at, removed_at = excluded.removed_at",
        )?;
        st.execute(params![
            member.office,
            member.staff_key,
            member.staff_id,
            member.roles.to_stored(),
            member.pin_hash,
            member.added_at_ms,
            member.updated_at_ms,
            member.removed_at_ms
        ])?;
        for event in &events {
            append_staff_event(&self.conn, &member, *event, put.by, member.updated_at_ms)?;
        }
        Ok(StaffPutOutcome::Done { member, events })
    }

    fn remove_staff(
        &mut self,
        office: &str,
        staff_id: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<Option<StaffMember>, StorageError> {
        let Some(mut member) = staff(&self.conn, office, staff_id)?.filter(StaffMember::is_active) else {
            return Ok(None);
        };
        let at = at_ms.max(member.updated_at_ms);
        self.conn.execute(
            "UPDATE staff SET roles = '', pin_hash = NULL, updated_at = ?3, removed_at = ?3
             WHERE office = ?1 AND staff_key = ?2",
            params![office, member.staff_key, at],
        )?;
        member.roles = Roles::NONE;
        member.pin_hash = None;
        member.updated_at_ms = at;
        member.removed_at_ms = Some(at);
        append_staff_event(&self.conn, &member, StaffEvent::Removed, by, at)?;
        Ok(Some(member))
    }

    fn roster(&mut self, office: &str) -> Result<Vec<StaffMember>, StorageError> {
        roster(&self.conn, office)
    }

    fn staff_role_at(
        &mut self,
        office: &str,
        staff_id: &str,
        at_ms: i64,
    ) -> Result<Option<Roles>, StorageError> {
        staff_role_at(&self.conn, office, staff_id, at_ms)
    }

    fn insert_api_key(&mut self, k: &ApiKeyRow) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO api_keys (id, name, scope, key_hash, created_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                k.id.to_string(),
                k.name,
                k.scope,
                k.key_hash,
                k.created_at_ms,
                k.revoked_at_ms
            ],
        )?;
        Ok(())
    }

    fn revoke_api_key(&mut self, id: Uuid, at_ms: i64) -> Result<bool, StorageError> {
        Ok(self.conn.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id.to_string(), at_ms],
        )? == 1)
    }

    fn insert_notification(&mut self, n: &StoredNotification) -> Result<bool, StorageError> {
        // `ON CONFLICT DO NOTHING` (SQLite and PostgreSQL alike): a second
        // notification with the same (source_system, source_reference)
        // writes nothing, however the requests raced.
        let mut st = self.conn.prepare_cached(
            "INSERT INTO notifications (notification_id, kind, source_system, source_reference, commune,
                 payload, api_key_id, received_at, registered_record_id, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        )?;
        Ok(st.execute(params![
            n.notification_id.to_string(),
            n.kind,
            n.source_system,
            n.source_reference,
            n.commune,
            n.payload,
            n.api_key_id.to_string(),
            n.received_at_ms,
            n.registered_record_id.map(|r| r.to_string()),
            n.registered_at_ms
        ])? == 1)
    }

    fn notification_by_source(
        &mut self,
        system: &str,
        reference: &str,
    ) -> Result<Option<StoredNotification>, StorageError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications
             WHERE source_system = ?1 AND source_reference = ?2"
        ))?;
        Ok(st
            .query_row(params![system, reference], notification_row)
            .optional()?)
    }

    fn add_server_actor(&mut self, actor_hex: &str, at_ms: i64) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO server_actors (actor_id, first_used) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![actor_hex, at_ms],
        )?;
        Ok(())
    }

    fn server_actors(&mut self) -> Result<Vec<String>, StorageError> {
        let mut st = self.conn.prepare("SELECT actor_id FROM server_actors")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn registry_append_event(&mut self, e: &RegistryEventRow) -> Result<Option<u64>, StorageError> {
        // A read and a one-row write, not `… RETURNING`: SQLite gives a
        // statement with RETURNING a statement journal (see `append_feed`).
        let seq: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM registry_events")?
            .query_row([], |r| r.get(0))?;
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_events (seq, record_id, kind, registration_number, registered_at, office,
                 event, kidc, amends_record_id, amends_kidc, late)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (record_id) DO NOTHING",
        )?;
        let inserted = st.execute(params![
            seq,
            e.record_id.to_string(),
            e.kind,
            e.registration_number,
            e.registered_at_ms,
            e.office,
            e.event,
            e.kidc.as_ref().map(Kidc::as_str),
            e.amends_record_id.map(|u| u.to_string()),
            e.amends_kidc.as_ref().map(Kidc::as_str),
            e.late
        ])?;
        if inserted == 1 {
            Ok(Some(to_u64(seq)?))
        } else {
            Ok(None)
        }
    }

    fn registry_events_after(
        &mut self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<RegistryEventRow>, StorageError> {
        registry_events_after(&self.conn, seq, limit)
    }

    fn registry_person(&mut self, person_id: Uuid) -> Result<Option<RegistryPerson>, StorageError> {
        person_where(&self.conn, "person_id", &person_id.to_string())
    }

    fn registry_person_by_kidc(&mut self, kidc: &Kidc) -> Result<Option<RegistryPerson>, StorageError> {
        person_where(&self.conn, "kidc", kidc.as_str())
    }

    fn registry_person_by_document(
        &mut self,
        kind: &str,
        number: &str,
    ) -> Result<Option<RegistryPerson>, StorageError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {PERSON_COLUMNS} FROM registry_documents d JOIN registry_persons p USING (person_id)
             WHERE d.kind = ?1 AND d.number = ?2"
        ))?;
        Ok(st.query_row(params![kind, number], person_row).optional()?)
    }

    fn registry_put_person(&mut self, p: &RegistryPerson) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_persons (person_id, kidc, family_name, given_name, family_name_latin,
                 given_name_latin, sex, date_of_birth, place_of_birth_kind, place_of_birth_facility,
                 place_of_birth_village, nationality, citizenship, marital_status, residence_village_code,
                 date_of_death, death_record_id, first_seq, last_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
             ON CONFLICT (person_id) DO UPDATE SET kidc = excluded.kidc, family_name = excluded.family_name,
                 given_name = excluded.given_name, family_name_latin = excluded.family_name_latin,
                 given_name_latin = excluded.given_name_latin, sex = excluded.sex,
                 date_of_birth = excluded.date_of_birth, place_of_birth_kind = excluded.place_of_birth_kind,
                 place_of_birth_facility = excluded.place_of_birth_facility,
                 place_of_birth_village = excluded.place_of_birth_village, nationality = excluded.nationality,
                 citizenship = excluded.citizenship, marital_status = excluded.marital_status,
                 residence_village_code = excluded.residence_village_code,
                 date_of_death = excluded.date_of_death, death_record_id = excluded.death_record_id,
                 first_seq = excluded.first_seq, last_seq = excluded.last_seq",
        )?;
        st.execute(params![
            p.person_id.to_string(),
            p.kidc.as_ref().map(Kidc::as_str),
            p.family_name,
            p.given_name,
            p.family_name_latin,
            p.given_name_latin,
            p.sex,
            p.date_of_birth,
            p.place_of_birth_kind,
            p.place_of_birth_facility,
            p.place_of_birth_village,
            p.nationality,
            p.citizenship,
            p.marital_status,
            p.residence_village_code,
            p.date_of_death,
            p.death_record_id.map(|u| u.to_string()),
            to_i64(p.first_seq)?,
            to_i64(p.last_seq)?
        ])?;
        Ok(())
    }

    fn registry_add_document(
        &mut self,
        person_id: Uuid,
        kind: &str,
        number: &str,
        seq: u64,
    ) -> Result<bool, StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_documents (kind, number, person_id, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?;
        Ok(st.execute(params![kind, number, person_id.to_string(), to_i64(seq)?])? == 1)
    }

    fn registry_add_parent(
        &mut self,
        child_id: Uuid,
        parent_id: Uuid,
        relation: &str,
        seq: u64,
    ) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_parents (child_id, parent_id, relation, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?;
        st.execute(params![
            child_id.to_string(),
            parent_id.to_string(),
            relation,
            to_i64(seq)?
        ])?;
        Ok(())
    }

    fn registry_add_marital(
        &mut self,
        person_id: Uuid,
        seq: u64,
        status: &str,
        since: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_marital_history (person_id, seq, status, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (person_id, seq) DO UPDATE SET status = excluded.status, since = excluded.since",
        )?;
        st.execute(params![person_id.to_string(), to_i64(seq)?, status, since])?;
        Ok(())
    }

    fn registry_link_event(&mut self, person_id: Uuid, seq: u64, role: &str) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_person_events (person_id, seq, role) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        st.execute(params![person_id.to_string(), to_i64(seq)?, role])?;
        Ok(())
    }

    fn registry_put_marriage(&mut self, m: &RegistryMarriage) -> Result<(), StorageError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO registry_marriages (marriage_id, spouse_a, spouse_b, date_of_marriage, place_village,
                 ended_on, ended_by, end_record_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (marriage_id) DO UPDATE SET spouse_a = excluded.spouse_a, spouse_b = excluded.spouse_b,
                 date_of_marriage = excluded.date_of_marriage, place_village = excluded.place_village,
                 ended_on = excluded.ended_on, ended_by = excluded.ended_by,
                 end_record_id = excluded.end_record_id",
        )?;
        st.execute(params![
            m.marriage_id.to_string(),
            m.spouse_a.to_string(),
            m.spouse_b.to_string(),
            m.date_of_marriage,
            m.place_village,
            m.ended_on,
            m.ended_by,
            m.end_record_id.map(|u| u.to_string())
        ])?;
        Ok(())
    }

    fn registry_current_marriage(
        &mut self,
        person_id: Uuid,
    ) -> Result<Option<RegistryMarriage>, StorageError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {MARRIAGE_COLUMNS} FROM registry_marriages
             WHERE spouse_a = ?1 AND ended_on IS NULL
             UNION ALL
             SELECT {MARRIAGE_COLUMNS} FROM registry_marriages
             WHERE spouse_b = ?1 AND ended_on IS NULL
             ORDER BY date_of_marriage DESC, marriage_id LIMIT 1"
        ))?;
        Ok(st
            .query_row(params![person_id.to_string()], marriage_row)
            .optional()?)
    }

    fn registry_clear(&mut self) -> Result<(), StorageError> {
        self.conn.execute_batch(
            "DELETE FROM registry_person_events; DELETE FROM registry_marital_history;
             DELETE FROM registry_marriages; DELETE FROM registry_parents;
             DELETE FROM registry_documents; DELETE FROM registry_persons;",
        )?;
        Ok(())
    }

    fn registry_dump(&mut self) -> Result<RegistryDump, StorageError> {
        registry_dump(&self.conn)
    }
}

fn opt_kidc(code: Option<String>) -> rusqlite::Result<Option<Kidc>> {
    code.map(|c| {
        Kidc::parse(&c)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
    })
    .transpose()
}

const PERSON_COLUMNS: &str = "p.person_id, p.kidc, p.family_name, p.given_name, p.family_name_latin, \
     p.given_name_latin, p.sex, p.date_of_birth, p.place_of_birth_kind, p.place_of_birth_facility, \
     p.place_of_birth_village, p.nationality, p.citizenship, p.marital_status, p.residence_village_code, \
     p.date_of_death, p.death_record_id, p.first_seq, p.last_seq";

fn person_row(r: &Row<'_>) -> rusqlite::Result<RegistryPerson> {
    Ok(RegistryPerson {
        person_id: parse_uuid(&r.get::<_, String>(0)?)?,
        kidc: opt_kidc(r.get(1)?)?,
        family_name: r.get(2)?,
        given_name: r.get(3)?,
        family_name_latin: r.get(4)?,
        given_name_latin: r.get(5)?,
        sex: r.get(6)?,
        date_of_birth: r.get(7)?,
        place_of_birth_kind: r.get(8)?,
        place_of_birth_facility: r.get(9)?,
        place_of_birth_village: r.get(10)?,
        nationality: r.get(11)?,
        citizenship: r.get(12)?,
        marital_status: r.get(13)?,
        residence_village_code: r.get(14)?,
        date_of_death: r.get(15)?,
        death_record_id: r
            .get::<_, Option<String>>(16)?
            .map(|s| parse_uuid(&s))
            .transpose()?,
        first_seq: to_u64(r.get(17)?)?,
        last_seq: to_u64(r.get(18)?)?,
    })
}

/// A person by a unique column (`person_id` or `kidc`).
fn person_where(
    conn: &Connection,
    column: &str,
    value: &str,
) -> Result<Option<RegistryPerson>, StorageError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {PERSON_COLUMNS} FROM registry_persons p WHERE p.{column} = ?1"
    ))?;
    Ok(st.query_row(params![value], person_row).optional()?)
}

const MARRIAGE_COLUMNS: &str =
    "marriage_id, spouse_a, spouse_b, date_of_marriage, place_village, ended_on, ended_by, end_record_id";

fn marriage_row(r: &Row<'_>) -> rusqlite::Result<RegistryMarriage> {
    Ok(RegistryMarriage {
        marriage_id: parse_uuid(&r.get::<_, String>(0)?)?,
        spouse_a: parse_uuid(&r.get::<_, String>(1)?)?,
        spouse_b: parse_uuid(&r.get::<_, String>(2)?)?,
        date_of_marriage: r.get(3)?,
        place_village: r.get(4)?,
        ended_on: r.get(5)?,
        ended_by: r.get(6)?,
        end_record_id: r
            .get::<_, Option<String>>(7)?
            .map(|s| parse_uuid(&s))
            .transpose()?,
    })
}

/// Everything the registry holds about `person`.
fn registry_entry(conn: &Connection, person: RegistryPerson) -> Result<RegistryEntry, StorageError> {
    let id = person.person_id.to_string();
    let mut st = conn.prepare_cached(
        "SELECT kind, number FROM registry_documents WHERE person_id = ?1 ORDER BY seq, kind, number",
    )?;
    let documents = st
        .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let relatives = |sql: &str| -> Result<Vec<RegistryRelative>, StorageError> {
        let mut st = conn.prepare_cached(sql)?;
        let rows = st.query_map(params![id], |r| {
            Ok(RegistryRelative {
                person: person_row(r)?,
                relation: r.get(19)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    };
    let parents = relatives(&format!(
        "SELECT {PERSON_COLUMNS}, l.relation FROM registry_parents l
         JOIN registry_persons p ON p.person_id = l.parent_id
         WHERE l.child_id = ?1 ORDER BY l.seq, l.rowid"
    ))?;
    let children = relatives(&format!(
        "SELECT {PERSON_COLUMNS}, l.relation FROM registry_parents l
         JOIN registry_persons p ON p.person_id = l.child_id
         WHERE l.parent_id = ?1 ORDER BY l.seq, l.rowid"
    ))?;
    let mut st = conn.prepare_cached(&format!(
        "SELECT {MARRIAGE_COLUMNS} FROM registry_marriages WHERE spouse_a = ?1 OR spouse_b = ?1
         ORDER BY date_of_marriage, marriage_id"
    ))?;
    let marriages = st
        .query_map(params![id], marriage_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut spouses = Vec::with_capacity(marriages.len());
    for m in &marriages {
        let other = if m.spouse_a == person.person_id {
            m.spouse_b
        } else {
            m.spouse_a
        };
        spouses.push(
            person_where(conn, "person_id", &other.to_string())?.ok_or(StorageError::Corrupt(
                "a spouse of a registry marriage is missing",
            ))?,
        );
    }
    let mut st = conn.prepare_cached(
        "SELECT seq, status, since FROM registry_marital_history WHERE person_id = ?1 ORDER BY seq",
    )?;
    let marital_history = st
        .query_map(params![id], |r| {
            Ok(RegistryMaritalEntry {
                seq: to_u64(r.get(0)?)?,
                status: r.get(1)?,
                since: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut st = conn.prepare_cached(
        "SELECT e.seq, e.record_id, e.kind, e.registration_number, e.registered_at, l.role
         FROM registry_person_events l JOIN registry_events e ON e.seq = l.seq
         WHERE l.person_id = ?1 ORDER BY l.seq, l.role",
    )?;
    let events = st
        .query_map(params![id], |r| {
            Ok(RegistryPersonEvent {
                seq: to_u64(r.get(0)?)?,
                record_id: parse_uuid(&r.get::<_, String>(1)?)?,
                kind: r.get(2)?,
                registration_number: r.get(3)?,
                registered_at_ms: r.get(4)?,
                role: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RegistryEntry {
        person,
        documents,
        parents,
        children,
        marriages,
        spouses,
        marital_history,
        events,
    })
}

/// One row as canonical text: a JSON array of its values.
fn canonical_row(r: &Row<'_>, columns: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i)? {
            ValueRef::Null => serde_json::Value::Null,
            ValueRef::Integer(n) => serde_json::Value::from(n),
            ValueRef::Real(f) => serde_json::Value::from(f),
            ValueRef::Text(t) => serde_json::Value::from(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => serde_json::Value::from(hex::encode(b)),
        });
    }
    Ok(serde_json::Value::Array(values).to_string())
}

/// The registry's tables in canonical form (see [`RegistryDump`]): every
/// row of each state table, in primary-key order, filed under each person
/// it concerns.
fn registry_dump(conn: &Connection) -> Result<RegistryDump, StorageError> {
    let mut persons_hash: std::collections::BTreeMap<String, Sha256> = std::collections::BTreeMap::new();
    for (table, columns, persons, order) in super::REGISTRY_DUMP_TABLES {
        let n = columns.split(',').count();
        let mut st = conn.prepare(&format!("SELECT {columns} FROM {table} ORDER BY {order}"))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let line = format!("{table} {}\n", canonical_row(r, n)?);
            for &i in *persons {
                let id: String = r.get(i)?;
                persons_hash.entry(id).or_default().update(line.as_bytes());
            }
        }
    }
    let mut dump = RegistryDump {
        persons: persons_hash
            .into_iter()
            .map(|(id, h)| (id, h.finalize().into()))
            .collect(),
        ..RegistryDump::default()
    };
    let mut st = conn.prepare(
        "SELECT seq, record_id, kind, registration_number, registered_at, office, event, kidc,
             amends_record_id, amends_kidc, late FROM registry_events ORDER BY seq",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let row = canonical_row(r, 11)?;
        dump.events
            .insert(to_u64(r.get(0)?)?, Sha256::digest(row.as_bytes()).into());
    }
    Ok(dump)
}

fn registry_events_after(
    conn: &Connection,
    seq: u64,
    limit: usize,
) -> Result<Vec<RegistryEventRow>, StorageError> {
    let mut st = conn.prepare_cached(
        "SELECT seq, record_id, kind, registration_number, registered_at, office, event, kidc,
             amends_record_id, amends_kidc, late
         FROM registry_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![to_i64(seq)?, limit], |r| {
        Ok(RegistryEventRow {
            seq: to_u64(r.get(0)?)?,
            record_id: parse_uuid(&r.get::<_, String>(1)?)?,
            kind: r.get(2)?,
            registration_number: r.get(3)?,
            registered_at_ms: r.get(4)?,
            office: r.get(5)?,
            event: r.get(6)?,
            kidc: opt_kidc(r.get(7)?)?,
            amends_record_id: r
                .get::<_, Option<String>>(8)?
                .map(|s| parse_uuid(&s))
                .transpose()?,
            amends_kidc: opt_kidc(r.get(9)?)?,
            late: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer never checkpoints; the log's pages still reach the
    /// database file, copied by the checkpoint thread once the log is
    /// long, and the log then starts again instead of growing.
    #[test]
    fn the_log_is_checkpointed_off_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("server.db");
        let storage = SqliteStorage::open(&path).expect("open");
        let mode: i64 = storage
            .writer
            .lock()
            .unwrap()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 0, "the writer does not checkpoint");
        let before = std::fs::metadata(&path).unwrap().len();
        let device = Uuid::now_v7();
        let mut tx = storage.begin().unwrap();
        tx.insert_device(&crate::storage::NewDevice {
            device_id: device,
            office: "171003".into(),
            public_key: [1; 32],
            enrolled_at_ms: 1,
        })
        .unwrap();
        tx.commit().unwrap();
        // Twice the threshold, in commits of 256 KiB.
        let doc = vec![7u8; 256 << 10];
        let wal = dir.path().join("server.db-wal");
        let mut longest = 0;
        for _ in 0..(2 * CHECKPOINT_AT_BYTES / (256 << 10)) {
            let mut tx = storage.begin().unwrap();
            tx.insert_record(&StoredRecord {
                record_id: Uuid::now_v7(),
                office: "171003".into(),
                origin_device: device,
                kind: "birth".into(),
                status: "submitted".into(),
                doc: doc.clone(),
                updated_at_ms: 2,
            })
            .unwrap();
            tx.commit().unwrap();
            longest = longest.max(std::fs::metadata(&wal).unwrap().len());
            // As between requests: the thread gets its turn.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + CHECKPOINT_AT_BYTES / 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing reached the database file"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            longest < 2 * CHECKPOINT_AT_BYTES,
            "the log started again instead of holding every commit: {longest} bytes"
        );
    }

    /// A server upgraded to migration 008 (records of the office) gives
    /// each enrolled tablet the records the office's other tablets made
    /// before: a snapshot in its feed, and none of its own or of another
    /// office's.
    #[test]
    fn the_office_migration_gives_each_tablet_its_offices_other_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("server.db");
        let options = crvs_sqlite::OpenOptions {
            create: true,
            migrations: &MIGRATIONS[..7],
            ..Default::default()
        };
        let conn = crvs_sqlite::open(&path, &options).expect("open at version 7");
        let [a, b, c] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        for (id, office) in [(a, "171003"), (b, "171003"), (c, "171004")] {
            conn.execute(
                "INSERT INTO devices (device_id, office, public_key, enrolled_at, last_hash) VALUES (?1, ?2, '', 0, '')",
                params![id.to_string(), office],
            )
            .expect("device");
        }
        let [r1, r2, r3] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        for (id, office, origin) in [(r1, "171003", a), (r2, "171003", a), (r3, "171004", c)] {
            conn.execute(
                "INSERT INTO records (record_id, office, origin_device, kind, status, doc, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'birth', 'registered', x'00', 1, 1)",
                params![id.to_string(), office, origin.to_string()],
            )
            .expect("record");
        }
        // a's own feed before the migration: the server's change to r1.
        conn.execute(
            "INSERT INTO server_changes (device_id, record_id, change, created_at) VALUES (?1, ?2, x'01', 1)",
            params![a.to_string(), r1.to_string()],
        )
        .expect("feed");
        drop(conn);

        let storage = SqliteStorage::open(&path).expect("migrates");
        let mut tx = storage.begin().expect("tx");
        let mut feed = |device: Uuid| -> Vec<(Uuid, Vec<u8>)> {
            tx.server_changes_since(device, 0, 100)
                .expect("feed")
                .into_iter()
                .map(|c| (c.record_id, c.change))
                .collect()
        };
        assert_eq!(
            feed(b),
            [(r1, vec![0]), (r2, vec![0])],
            "b receives a's records, whole"
        );
        assert_eq!(
            feed(a),
            [(r1, vec![1])],
            "a keeps its own feed, no snapshot of its own records"
        );
        assert!(feed(c).is_empty(), "c's office has no other device's record");
    }
}
