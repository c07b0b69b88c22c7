//! The SQLite store: opening, migrations, and row access.
//!
//! [`open`] is the one way into a database: through [`crvs_sqlite::open`]
//! (a 0600 file, WAL, `synchronous=FULL`, `foreign_keys=ON`,
//! `temp_store=MEMORY`, `trusted_schema=OFF`, `PRAGMA quick_check`, a
//! store newer than the code refused), then the `magic` meta row; the
//! numbered migrations embedded from `migrations/`, tracked with
//! `PRAGMA user_version`, one step per transaction, run in [`migrate`].
//!
//! Functions here move rows, not meaning: sealing and unsealing happen in
//! the callers, which hold the data key. Functions that write take a
//! [`Transaction`]; functions that only read take a [`Connection`].
//!
//! **Architecture invariant:** no personal data reaches SQLite unencrypted.
//! Plaintext columns hold only opaque ids, kinds, workflow states,
//! timestamps and sync bookkeeping; columns named `*_sealed` hold
//! ciphertexts from [`crate::crypto`].
//!
//! On corruption, [`open`] fails with [`Error::Corrupt`] and changes
//! nothing: the registrar restores the folder from a backup.

use std::path::{Path, PathBuf};

use rusqlite::types::{FromSql, ToSql};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::{Error, Result};

/// The database file's name inside the store folder.
pub const DB_FILE: &str = "crvs.db";
/// The value of the `magic` meta row of every crvs tablet store.
pub const MAGIC: &str = "crvs-tablet-store";

/// The numbered migrations, in order. Index + 1 is the `user_version`
/// after the step.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/001_init.sql"),
    include_str!("../migrations/002_recovery.sql"),
    // Needs `crate::integrity::register` on the connection.
    include_str!("../migrations/003_integrity.sql"),
    include_str!("../migrations/004_waiting_index.sql"),
];

/// Keys of the `meta` table.
pub mod meta {
    /// `crvs-tablet-store`, written at creation.
    pub const MAGIC: &str = "magic";
    /// The store's random id (UUID text).
    pub const STORE_ID: &str = "store_id";
    /// The registration office (6-digit commune code).
    pub const OFFICE: &str = "office";
    /// Argon2id parameters, `argon2id;m=..;t=..;p=..`.
    pub const KDF_PARAMS: &str = "kdf_params";
    /// Argon2id salt.
    pub const KDF_SALT: &str = "kdf_salt";
    /// The data key sealed under the passphrase-derived key.
    pub const WRAPPED_KEY: &str = "wrapped_data_key";
    /// The automerge actor id of this store (16 bytes).
    pub const ACTOR: &str = "actor";
    /// The device id assigned at enrolment (UUID text).
    pub const DEVICE_ID: &str = "device_id";
    /// The server's base URL.
    pub const SERVER_URL: &str = "server_url";
    /// The CA certificate(s) (PEM) the operators handed over at enrolment,
    /// trusted for the server's TLS certificate besides the web roots.
    /// Absent when none was given. Not personal data: plaintext.
    pub const SERVER_CA: &str = "server_ca";
    /// The pinned server public key (32 bytes).
    pub const SERVER_KEY: &str = "server_public_key";
    /// The device's ed25519 signing key, sealed.
    pub const SIGNING_KEY: &str = "signing_key_sealed";
    /// The office's pending notifications, as the last sync answer listed
    /// them (sealed JSON: they hold names).
    pub const NOTIFICATIONS: &str = "pending_notifications_sealed";
    /// The office's roster and rejection codes as the server last sent
    /// them (sealed bincode of [`crvs_schema::staff::OfficeDirectory`]).
    pub const DIRECTORY: &str = "office_directory_sealed";
    /// Wrong PINs counted and PINs changed on this tablet, per staff
    /// member (sealed JSON; hashes and counts only).
    pub const PIN_STATE: &str = "staff_pin_state_sealed";
    /// The server feed position applied so far.
    pub const CURSOR: &str = "pull_cursor";
    /// The sequence number of the next change set.
    pub const NEXT_SEQ: &str = "next_seq";
    /// The hash of the last change set made (zeros before the first).
    pub const LAST_HASH: &str = "last_hash";
    /// Every change set up to this one is acknowledged by the server.
    pub const ACKED_SEQ: &str = "acked_seq";
    /// Server clock of the last sync answer, ms.
    pub const LAST_SERVER_TIME: &str = "last_server_time_ms";
    /// Device clock when the last sync completed, ms.
    pub const LAST_SYNC_AT: &str = "last_sync_at_ms";
    /// The counter of the last sync request this tablet signed. Stored
    /// before the request leaves: the server refuses any request whose
    /// counter is not above the last one it accepted.
    pub const REQUEST_COUNTER: &str = "request_counter";
    /// The highest change-set sequence number sent in a request (taken
    /// with its counter, before it leaves). Above `acked_seq` after a sync
    /// whose answer was lost: the next sync first asks the server which of
    /// those arrived (`SyncRequest::resume`) instead of sending them again.
    pub const SENT_UP_TO: &str = "sent_up_to";
    /// The store's lineage (16 random bytes), sent with every sync
    /// request; made anew when the store adopts the server's chain.
    pub const LINEAGE: &str = "lineage";
    /// The server chain position (seq, 8 bytes big-endian, then the
    /// 32-byte hash) this store adopted, until the server accepts a
    /// request of its new lineage. Empty: none.
    pub const ADOPTED: &str = "adopted_position";
    /// The device key made for an enrolment that has not completed yet,
    /// sealed: enrolling again with the same token reuses it, so the
    /// server recognises the same tablet.
    pub const PENDING_SIGNING_KEY: &str = "pending_signing_key_sealed";
}

/// The path of the database file in a store folder.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

/// Opens (or, with `create`, creates) the store database in `dir`, sets
/// the pragmas, checks its health and runs pending migrations.
pub fn open(dir: &Path, create: bool) -> Result<Connection> {
    let path = db_path(dir);
    let exists = path.exists();
    if create && exists {
        return Err(Error::AlreadyInitialized);
    }
    if !create && !exists {
        return Err(Error::NotInitialized);
    }
    if create {
        std::fs::create_dir_all(dir)?;
    }
    // Migrations wait until the registrar knows the passphrase is right.
    // The integrity check runs below, after the schema check: a generated
    // column slipped into the file must be named as such, not fail inside
    // `quick_check`.
    let options = crvs_sqlite::OpenOptions {
        create,
        migrations: MIGRATIONS,
        migrate: crvs_sqlite::Migrate::Later,
        quick_check: false,
        ..Default::default()
    };
    let conn = crvs_sqlite::open(&path, &options).map_err(open_error)?;
    if !create {
        // Before anything reads the tables: the schema must be exactly the
        // one the migrations make (see `integrity::check_schema`).
        let version = user_version(&conn)?;
        crate::integrity::check_schema(&conn, MIGRATIONS, version)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(Error::Corrupt("the database failed its integrity check".into()));
        }
    }
    // Every statement of this module is prepared once per connection.
    conn.set_prepared_statement_cache_capacity(64);
    if !create {
        let magic: Option<String> = get_meta(&conn, meta::MAGIC)?;
        if magic.as_deref() != Some(MAGIC) {
            return Err(Error::Corrupt("the database is not a crvs store".into()));
        }
    }
    Ok(conn)
}

/// The store's schema version.
pub(crate) fn user_version(conn: &Connection) -> Result<usize> {
    Ok(crvs_sqlite::user_version(conn).map_err(open_error)? as usize)
}

/// Runs every migration above the database's `user_version`, each in its
/// own transaction together with the version bump.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    crvs_sqlite::migrate(conn, MIGRATIONS).map_err(open_error)?;
    Ok(())
}

/// The store's errors for [`crvs_sqlite::OpenError`]s.
fn open_error(e: crvs_sqlite::OpenError) -> Error {
    use crvs_sqlite::OpenError;
    match e {
        OpenError::Missing => Error::NotInitialized,
        OpenError::Uninitialized => Error::Corrupt("the database is not a crvs store".into()),
        OpenError::Corrupt => Error::Corrupt("the database failed its integrity check".into()),
        OpenError::TooNew { found, .. } => Error::Corrupt(format!(
            "the store was written by a newer version of crvs (schema {found}); update the app"
        )),
        OpenError::NotWal(mode) => Error::Storage(format!("the database refused WAL mode ({mode})")),
        OpenError::Migration { source, .. } | OpenError::Sqlite(source) => source.into(),
        OpenError::Io(e) => e.into(),
        other => Error::Storage(other.to_string()),
    }
}

/// Runs `sql` with a statement prepared once per connection (a sync
/// updates thousands of rows with the same few statements).
fn exec<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// One row of `sql`, with a statement prepared once per connection.
fn query_row<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// Reads a meta value.
pub fn get_meta<T: FromSql>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(query_row(conn, "SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

/// Reads a meta value that must be present.
pub fn require_meta<T: FromSql>(conn: &Connection, key: &str) -> Result<T> {
    get_meta(conn, key)?.ok_or_else(|| Error::Corrupt(format!("the store lacks its '{key}' setting")))
}

/// Writes a meta value.
pub fn set_meta<T: ToSql>(tx: &Transaction<'_>, key: &str, value: T) -> Result<()> {
    exec(
        tx,
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The data key as wrapped in `meta`: its KDF parameters, salt and sealed
/// key.
pub fn read_wrapped_key(conn: &Connection) -> Result<crate::crypto::WrappedKey> {
    let params: String = require_meta(conn, meta::KDF_PARAMS)?;
    Ok(crate::crypto::WrappedKey {
        params: crate::crypto::KdfParams::decode(&params)?,
        salt: require_meta(conn, meta::KDF_SALT)?,
        sealed: require_meta(conn, meta::WRAPPED_KEY)?,
    })
}

/// Replaces the wrapped data key (parameters, salt and sealed key, all
/// three in `tx`) if the stored one is still `expected`; returns whether
/// it did. A store whose key was re-wrapped meanwhile by another process
/// (a passphrase change) is left alone.
pub fn replace_wrapped_key(
    tx: &Transaction<'_>,
    expected: &crate::crypto::WrappedKey,
    new: &crate::crypto::WrappedKey,
) -> Result<bool> {
    if read_wrapped_key(tx)? != *expected {
        return Ok(false);
    }
    set_meta(tx, meta::KDF_PARAMS, new.params.encode())?;
    set_meta(tx, meta::KDF_SALT, new.salt.clone())?;
    set_meta(tx, meta::WRAPPED_KEY, new.sealed.clone())?;
    Ok(true)
}

/// A row of `records`.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// UUIDv7 bytes.
    pub id: [u8; 16],
    /// Kind of event.
    pub kind: String,
    /// Workflow state.
    pub status: String,
    /// Device clock at creation, ms.
    pub created_at: i64,
    /// Device clock at the last change, ms.
    pub updated_at: i64,
    /// Sealed automerge document.
    pub doc_sealed: Vec<u8>,
    /// Sealed KIdC, once the server assigned one.
    pub kidc_sealed: Option<Vec<u8>>,
    /// Concatenated 32-byte automerge change hashes.
    pub outboxed_heads: Vec<u8>,
    /// Local changes not yet in a change set.
    pub dirty: bool,
    /// The last change set that carries this record.
    pub last_outbox_seq: Option<u64>,
    /// When server changes last arrived (device clock, ms).
    pub server_updated_at: Option<i64>,
    /// When the server set it aside (device clock, ms).
    pub set_aside_at: Option<i64>,
}

const RECORD_COLUMNS: &str = "id, kind, status, created_at, updated_at, doc_sealed, kidc_sealed, \
     outboxed_heads, dirty, last_outbox_seq, server_updated_at, set_aside_at";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    let id: Vec<u8> = r.get(0)?;
    let id: [u8; 16] = id
        .as_slice()
        .try_into()
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, id.len() as i64))?;
    Ok(RecordRow {
        id,
        kind: r.get(1)?,
        status: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        doc_sealed: r.get(5)?,
        kidc_sealed: r.get(6)?,
        outboxed_heads: r.get(7)?,
        dirty: r.get::<_, i64>(8)? != 0,
        last_outbox_seq: r.get::<_, Option<i64>>(9)?.map(|s| s as u64),
        server_updated_at: r.get(10)?,
        set_aside_at: r.get(11)?,
    })
}

/// Inserts a new record row.
pub fn insert_record(tx: &Transaction<'_>, row: &RecordRow) -> Result<()> {
    exec(
        tx,
        &format!(
            "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            row.id.as_slice(),
            row.kind,
            row.status,
            row.created_at,
            row.updated_at,
            row.doc_sealed,
            row.kidc_sealed,
            row.outboxed_heads,
            row.dirty as i64,
            row.last_outbox_seq.map(|s| s as i64),
            row.server_updated_at,
            row.set_aside_at,
        ],
    )?;
    Ok(())
}

/// Replaces every mutable column of an existing record row.
pub fn update_record(tx: &Transaction<'_>, row: &RecordRow) -> Result<()> {
    let n = exec(
        tx,
        "UPDATE records SET status = ?2, updated_at = ?3, doc_sealed = ?4, kidc_sealed = ?5,
             outboxed_heads = ?6, dirty = ?7, last_outbox_seq = ?8, server_updated_at = ?9, set_aside_at = ?10
         WHERE id = ?1",
        params![
            row.id.as_slice(),
            row.status,
            row.updated_at,
            row.doc_sealed,
            row.kidc_sealed,
            row.outboxed_heads,
            row.dirty as i64,
            row.last_outbox_seq.map(|s| s as i64),
            row.server_updated_at,
            row.set_aside_at,
        ],
    )?;
    if n == 1 { Ok(()) } else { Err(Error::NotFound) }
}

/// Reads one record row.
pub fn get_record(conn: &Connection, id: &[u8; 16]) -> Result<Option<RecordRow>> {
    Ok(query_row(
        conn,
        &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1"),
        [id.as_slice()],
        record_from_row,
    )
    .optional()?)
}

/// Every record row, oldest first (UUIDv7 ids sort by creation time).
pub fn all_records(conn: &Connection) -> Result<Vec<RecordRow>> {
    let mut stmt = conn.prepare(&format!("SELECT {RECORD_COLUMNS} FROM records ORDER BY id"))?;
    let rows = stmt.query_map([], record_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Records that may hold local changes not yet in any change set, oldest
/// first: every record the server has not set aside. The `dirty` flag is
/// not trusted to find them: the caller compares each sealed document with
/// the heads already put into change sets, so a lost flag hides nothing.
pub fn unsent_candidates(conn: &Connection) -> Result<Vec<RecordRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE set_aside_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt.query_map([], record_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A row of `outbox`.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Sequence number.
    pub seq: u64,
    /// SHA-256 of the signed bytes.
    pub hash: [u8; 32],
    /// The sealed signed change set.
    pub body_sealed: Vec<u8>,
    /// How many records it carries.
    pub record_count: u64,
    /// Length of the signed bytes.
    pub byte_len: u64,
    /// Device clock at creation.
    pub created_at: i64,
    /// Device clock at acknowledgement.
    pub acked_at: Option<i64>,
}

fn outbox_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    let hash: Vec<u8> = r.get(1)?;
    let hash: [u8; 32] = hash
        .as_slice()
        .try_into()
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, hash.len() as i64))?;
    Ok(OutboxRow {
        seq: r.get::<_, i64>(0)? as u64,
        hash,
        body_sealed: r.get(2)?,
        record_count: r.get::<_, i64>(3)? as u64,
        byte_len: r.get::<_, i64>(4)? as u64,
        created_at: r.get(5)?,
        acked_at: r.get(6)?,
    })
}

/// Appends a change set to the outbox.
pub fn insert_outbox(tx: &Transaction<'_>, row: &OutboxRow) -> Result<()> {
    exec(
        tx,
        "INSERT INTO outbox (seq, hash, body_sealed, record_count, byte_len, created_at, acked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            row.seq as i64,
            row.hash.as_slice(),
            row.body_sealed,
            row.record_count as i64,
            row.byte_len as i64,
            row.created_at,
            row.acked_at,
        ],
    )?;
    Ok(())
}

/// Outbox rows with `seq >= from`, in order, at most `limit`.
pub fn outbox_from(conn: &Connection, from: u64, limit: usize) -> Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare(
        "SELECT seq, hash, body_sealed, record_count, byte_len, created_at, acked_at
         FROM outbox WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![from as i64, limit as i64], outbox_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Sequence numbers and hashes of every outbox row, in order (for checks).
pub fn outbox_chain(conn: &Connection) -> Result<Vec<(u64, [u8; 32])>> {
    let mut stmt = conn.prepare(
        "SELECT seq, hash, body_sealed, record_count, byte_len, created_at, acked_at FROM outbox ORDER BY seq",
    )?;
    let rows = stmt.query_map([], outbox_from_row)?;
    Ok(rows
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|r| (r.seq, r.hash))
        .collect())
}

/// Number of outbox rows with `seq > after`.
pub fn count_outbox_after(conn: &Connection, after: u64) -> Result<u64> {
    let n: i64 = query_row(
        conn,
        "SELECT COUNT(*) FROM outbox WHERE seq > ?1",
        [after as i64],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Records with changes the server has not acknowledged (`acked`: the
/// highest acknowledged change set), set-aside ones not counted.
pub fn count_records_waiting(conn: &Connection, acked: u64) -> Result<u64> {
    let n: i64 = query_row(
        conn,
        "SELECT COUNT(*) FROM records WHERE set_aside_at IS NULL AND (dirty = 1 OR last_outbox_seq > ?1)",
        [acked as i64],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Marks one change set acknowledged (keeps the first acknowledgement
/// time).
pub fn mark_acked(tx: &Transaction<'_>, seq: u64, at: i64) -> Result<()> {
    exec(
        tx,
        "UPDATE outbox SET acked_at = COALESCE(acked_at, ?2) WHERE seq = ?1",
        params![seq as i64, at],
    )?;
    Ok(())
}

/// Forgets acknowledgements from `seq` on (the server lost them).
pub fn unack_from(tx: &Transaction<'_>, seq: u64) -> Result<()> {
    exec(
        tx,
        "UPDATE outbox SET acked_at = NULL WHERE seq >= ?1",
        [seq as i64],
    )?;
    Ok(())
}

/// Stores (or replaces) the sealed proof of a record's KIdC.
pub fn put_evidence(tx: &Transaction<'_>, record_id: &[u8; 16], proof_sealed: &[u8]) -> Result<()> {
    exec(
        tx,
        "INSERT INTO kidc_evidence (record_id, proof_sealed) VALUES (?1, ?2)
         ON CONFLICT (record_id) DO UPDATE SET proof_sealed = excluded.proof_sealed",
        params![record_id.as_slice(), proof_sealed],
    )?;
    Ok(())
}

/// The sealed proof of a record's KIdC, if the tablet holds one.
pub fn get_evidence(conn: &Connection, record_id: &[u8; 16]) -> Result<Option<Vec<u8>>> {
    Ok(query_row(
        conn,
        "SELECT proof_sealed FROM kidc_evidence WHERE record_id = ?1",
        [record_id.as_slice()],
        |r| r.get(0),
    )
    .optional()?)
}

/// How many records hold a proof of their KIdC.
pub fn count_evidence(conn: &Connection) -> Result<u64> {
    let n: i64 = query_row(conn, "SELECT COUNT(*) FROM kidc_evidence", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// Drops the change sets after `acked` (never applied as they are) and
/// marks the records they carried for sending again in full: the tablet
/// adopts the server's chain position. Returns how many records.
pub fn forget_unacknowledged(tx: &Transaction<'_>, acked: u64) -> Result<u64> {
    exec(tx, "DELETE FROM outbox WHERE seq > ?1", [acked as i64])?;
    let n = exec(
        tx,
        "UPDATE records SET dirty = 1, outboxed_heads = x'', last_outbox_seq = NULL WHERE last_outbox_seq > ?1",
        [acked as i64],
    )?;
    Ok(n as u64)
}

/// Records that the store adopted the server's chain position `seq`/`hash`.
pub fn record_adoption(tx: &Transaction<'_>, seq: u64, hash: &[u8; 32], at: i64) -> Result<()> {
    exec(
        tx,
        "INSERT INTO chain_adoptions (seq, hash, adopted_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, adopted_at = excluded.adopted_at",
        params![seq as i64, hash.as_slice(), at],
    )?;
    Ok(())
}

/// Every adoption of the server's chain position: `(seq, hash)`, in order.
pub fn adoptions(conn: &Connection) -> Result<Vec<(u64, [u8; 32])>> {
    let mut stmt = conn.prepare("SELECT seq, hash FROM chain_adoptions ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        let hash: Vec<u8> = r.get(1)?;
        Ok((r.get::<_, i64>(0)? as u64, hash))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, hash) = row?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| Error::Corrupt("a recorded chain adoption is malformed".into()))?;
        out.push((seq, hash));
    }
    Ok(out)
}

/// Marks records set aside by the server: nothing of them is sent again.
pub fn mark_set_aside(tx: &Transaction<'_>, ids: &[[u8; 16]], at: i64) -> Result<()> {
    for id in ids {
        exec(
            tx,
            "UPDATE records SET set_aside_at = COALESCE(set_aside_at, ?2), dirty = 0 WHERE id = ?1",
            params![id.as_slice(), at],
        )?;
    }
    Ok(())
}
