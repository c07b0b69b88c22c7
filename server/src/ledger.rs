//! The KIdC ledger: every code this server ever reserved, kept outside its
//! database.
//!
//! KIdCs are drawn at random (DESIGN.md), so no high-water mark can say
//! which codes were used. A database restored from a backup forgets the
//! codes issued after the backup was taken; drawing again could hand one
//! of them to a second child. So every code is first *reserved* here, in a
//! small SQLite file of its own (`kidc-ledger.db` in the data folder),
//! durably, before the database transaction that issues it commits:
//!
//! 1. draw a code that neither the issuance log nor the ledger holds;
//! 2. insert it into the issuance log (in the request's transaction);
//! 3. before that transaction commits, reserve every code it issued in the
//!    ledger (one ledger transaction, one fsync);
//! 4. commit.
//!
//! A crash between 3 and 4 leaves a reservation without an issuance: the
//! record gets the same code when its change set comes again
//! ([`KidcLedger::code_for`]). `crvs-server restore` never touches the
//! ledger, so after a restore every code issued since the backup is still
//! reserved: it is never drawn again, and the record it went to gets it
//! back. The ledger is append-only (triggers).
//!
//! If the whole machine is lost, the ledger goes with the database (keep
//! the data folder on a volume that is itself replicated, or copy the
//! ledger off the machine often: it holds codes and record ids only). The
//! tablets' [`crvs_schema::evidence::IssuanceProof`]s then rebuild what
//! they hold; see ARCHITECTURE.md, "Recovery".

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crvs_schema::Kidc;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::storage::StorageError;

/// The ledger's file name inside the data folder.
pub const LEDGER_FILE: &str = "kidc-ledger.db";

/// The ledger's numbered migrations (see [`crvs_sqlite`]). The first keeps
/// its `IF NOT EXISTS`: ledgers made before the ledger had numbered
/// migrations hold its tables at `user_version` 0, and take it as is.
const MIGRATIONS: &[crvs_sqlite::Migration] = &[SCHEMA_1];

const SCHEMA_1: &str = "
CREATE TABLE IF NOT EXISTS reserved (
    kidc        TEXT PRIMARY KEY,
    record_id   TEXT NOT NULL UNIQUE,
    reserved_at BIGINT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS reserved_no_update BEFORE UPDATE ON reserved
BEGIN
    SELECT RAISE(ABORT, 'the KIdC ledger is append-only');
END;
CREATE TRIGGER IF NOT EXISTS reserved_no_delete BEFORE DELETE ON reserved
BEGIN
    SELECT RAISE(ABORT, 'the KIdC ledger is append-only');
END;
CREATE TABLE IF NOT EXISTS devices (
    device_id   TEXT PRIMARY KEY,
    office      TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    token_hash  TEXT NOT NULL,
    revoked_at  BIGINT
);
CREATE TRIGGER IF NOT EXISTS devices_no_delete BEFORE DELETE ON devices
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER IF NOT EXISTS devices_no_unrevoke BEFORE UPDATE ON devices
    WHEN OLD.revoked_at IS NOT NULL OR NEW.device_id IS NOT OLD.device_id
      OR NEW.public_key IS NOT OLD.public_key OR NEW.office IS NOT OLD.office
BEGIN
    SELECT RAISE(ABORT, 'the ledger only records a revocation once');
END;
";

/// An enrolment, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerDevice {
    /// The device id.
    pub device_id: Uuid,
    /// Its office.
    pub office: String,
    /// Its public key (hex).
    pub public_key: String,
    /// When it enrolled.
    pub enrolled_at_ms: i64,
    /// The lookup hash of the token it used (empty when unknown).
    pub token_hash: String,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// The enrolments a ledger file holds (none when it does not exist).
pub fn read_devices(path: &Path) -> Result<Vec<LedgerDevice>, StorageError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open(path)?;
    let mut st = conn.prepare(
        "SELECT device_id, office, public_key, enrolled_at, token_hash, revoked_at FROM devices ORDER BY enrolled_at",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, office, public_key, enrolled_at_ms, token_hash, revoked_at_ms) = row?;
        out.push(LedgerDevice {
            device_id: Uuid::parse_str(&id)
                .map_err(|_| StorageError::Corrupt("a device id in the ledger"))?,
            office,
            public_key,
            enrolled_at_ms,
            token_hash,
            revoked_at_ms,
        });
    }
    Ok(out)
}

/// Opens (creating if needed) the ledger file and runs its migrations,
/// with the conventions of every crvs database ([`crvs_sqlite::open`]).
fn open(path: &Path) -> Result<Connection, StorageError> {
    let options = crvs_sqlite::OpenOptions {
        create: true,
        migrations: MIGRATIONS,
        ..Default::default()
    };
    Ok(crvs_sqlite::open(path, &options)?)
}

/// The ledger of reserved codes (see the module documentation).
pub struct KidcLedger {
    conn: Mutex<Connection>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for KidcLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KidcLedger").finish_non_exhaustive()
    }
}

/// What opening the ledger found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerOpened {
    /// The file did not exist and was made now.
    pub created: bool,
    /// Codes of the issuance log that the ledger lacked and now holds.
    pub imported: usize,
}

impl KidcLedger {
    /// Opens (creating if needed) the ledger at `path`, and reserves every
    /// code of `issued` it lacks (the issuance log of the database: a
    /// ledger made after codes were issued, or lost and made again, starts
    /// from it).
    pub fn open(
        path: &Path,
        issued: &[(Kidc, Uuid)],
        now_ms: i64,
    ) -> Result<(KidcLedger, LedgerOpened), StorageError> {
        Self::open_lazy(path, issued.len() as u64, &|| Ok(issued.to_vec()), now_ms)
    }

    /// [`KidcLedger::open`] with the issuance log read only when the
    /// ledger holds fewer codes than its `issued_count`, or was just made:
    /// a start of a server with a million codes, whose ledger holds them
    /// all, reads two counts, not a million rows.
    pub fn open_lazy(
        path: &Path,
        issued_count: u64,
        load_issued: &dyn Fn() -> Result<Vec<(Kidc, Uuid)>, StorageError>,
        now_ms: i64,
    ) -> Result<(KidcLedger, LedgerOpened), StorageError> {
        let created = !path.exists();
        let mut conn = open(path)?;
        let held: i64 = conn.query_row("SELECT COUNT(*) FROM reserved", [], |r| r.get(0))?;
        let mut imported = 0;
        if (held as u64) < issued_count || created {
            let issued = load_issued()?;
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT OR IGNORE INTO reserved (kidc, record_id, reserved_at) VALUES (?1, ?2, ?3)",
                )?;
                for (kidc, record) in &issued {
                    imported += stmt.execute(params![kidc.as_str(), record.to_string(), now_ms])?;
                }
            }
            tx.commit()?;
        }
        // Every write below syncs the log itself, except those of
        // `reserve_unsynced` (group commit syncs them, off the writer).
        crvs_sqlite::defer_sync(&conn, path)?;
        if imported > 0 {
            tracing::info!(imported, "codes of the issuance log reserved in the KIdC ledger");
        }
        Ok((
            KidcLedger {
                conn: Mutex::new(conn),
                path: path.to_path_buf(),
            },
            LedgerOpened { created, imported },
        ))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The code reserved for `record_id`, if any.
    pub fn code_for(&self, record_id: Uuid) -> Result<Option<Kidc>, StorageError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT kidc FROM reserved WHERE record_id = ?1")?;
        let code: Option<String> = st.query_row([record_id.to_string()], |r| r.get(0)).optional()?;
        code.map(|c| Kidc::parse(&c).map_err(|_| StorageError::Corrupt("a code in the KIdC ledger")))
            .transpose()
    }

    /// The record `kidc` is reserved for, if it is.
    pub fn holder_of(&self, kidc: &Kidc) -> Result<Option<Uuid>, StorageError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT record_id FROM reserved WHERE kidc = ?1")?;
        let id: Option<String> = st.query_row([kidc.as_str()], |r| r.get(0)).optional()?;
        id.map(|s| Uuid::parse_str(&s).map_err(|_| StorageError::Corrupt("a record id in the KIdC ledger")))
            .transpose()
    }

    /// Reserves codes, durably, in one transaction. A code already
    /// reserved for the same record is kept; one reserved for another
    /// record fails the whole call (the caller checked with
    /// [`KidcLedger::holder_of`] under the single writer, so that means
    /// the ledger was changed behind the server's back).
    pub fn reserve(&self, entries: &[(Kidc, Uuid)], now_ms: i64) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.reserve_unsynced(entries, now_ms)?;
        self.sync()
    }

    /// [`KidcLedger::reserve`], durable only once [`KidcLedger::sync`]
    /// returns. Group commit calls it under the writer, before the
    /// database's commit, and syncs after; nothing is answered before both
    /// are synced.
    pub fn reserve_unsynced(&self, entries: &[(Kidc, Uuid)], now_ms: i64) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut find = tx.prepare_cached("SELECT record_id FROM reserved WHERE kidc = ?1")?;
            let mut insert =
                tx.prepare_cached("INSERT INTO reserved (kidc, record_id, reserved_at) VALUES (?1, ?2, ?3)")?;
            for (kidc, record) in entries {
                let holder: Option<String> = find.query_row([kidc.as_str()], |r| r.get(0)).optional()?;
                match holder {
                    Some(h) if h == record.to_string() => {}
                    Some(_) => return Err(StorageError::Corrupt("a KIdC is reserved for another record")),
                    None => {
                        insert.execute(params![kidc.as_str(), record.to_string(), now_ms])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Makes every write so far durable (one sync of the ledger's log).
    pub fn sync(&self) -> Result<(), StorageError> {
        Ok(crvs_sqlite::sync_log(&self.path)?)
    }

    /// Records an enrolment, durably (before the database commits it): a
    /// restore from a backup older than the enrolment puts the device back.
    pub fn record_enrolment(&self, d: &LedgerDevice) -> Result<(), StorageError> {
        self.import_devices(std::slice::from_ref(d))?;
        Ok(())
    }

    /// Imports enrolments the ledger lacks (a ledger made after devices
    /// enrolled), with revocations it lacks, in one transaction; returns
    /// how many devices it wrote. When the ledger holds them all (every
    /// start of a server whose ledger was never lost), it reads one table
    /// and writes nothing.
    pub fn import_devices(&self, devices: &[LedgerDevice]) -> Result<usize, StorageError> {
        let mut conn = self.conn();
        // Each device the ledger holds, and whether it knows it revoked.
        let held: std::collections::HashMap<String, bool> = conn
            .prepare("SELECT device_id, revoked_at IS NOT NULL FROM devices")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let missing: Vec<&LedgerDevice> = devices
            .iter()
            .filter(|d| match held.get(&d.device_id.to_string()) {
                None => true,
                Some(&revoked) => !revoked && d.revoked_at_ms.is_some(),
            })
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let tx = conn.transaction()?;
        for d in &missing {
            tx.execute(
                "INSERT INTO devices (device_id, office, public_key, enrolled_at, token_hash, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (device_id) DO NOTHING",
                params![
                    d.device_id.to_string(),
                    d.office,
                    d.public_key,
                    d.enrolled_at_ms,
                    d.token_hash,
                    d.revoked_at_ms
                ],
            )?;
            if let Some(at) = d.revoked_at_ms {
                tx.execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                    params![d.device_id.to_string(), at],
                )?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.sync()?;
        Ok(missing.len())
    }

    /// Records a revocation, durably: a restore never brings a revoked
    /// device back.
    pub fn record_revocation(&self, device_id: Uuid, at_ms: i64) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
            params![device_id.to_string(), at_ms],
        )?;
        self.sync()
    }

    /// How many codes are reserved.
    pub fn len(&self) -> Result<u64, StorageError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM reserved", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// No code is reserved.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> Kidc {
        Kidc::parse(s).expect("valid")
    }

    #[test]
    fn reservations_survive_reopening_and_cannot_move_to_another_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let r1 = Uuid::now_v7();
        let r2 = Uuid::now_v7();
        let (ledger, opened) = KidcLedger::open(&path, &[(code("1000000001"), r1)], 1).unwrap();
        assert_eq!(
            opened,
            LedgerOpened {
                created: true,
                imported: 1
            }
        );
        ledger.reserve(&[(code("1000000028"), r2)], 2).unwrap();
        ledger
            .reserve(&[(code("1000000028"), r2)], 3)
            .expect("the same reservation again is fine");
        assert!(ledger.reserve(&[(code("1000000028"), r1)], 4).is_err());
        drop(ledger);

        let (ledger, opened) = KidcLedger::open(&path, &[(code("1000000001"), r1)], 5).unwrap();
        assert_eq!(
            opened,
            LedgerOpened {
                created: false,
                imported: 0
            }
        );
        assert_eq!(ledger.code_for(r2).unwrap(), Some(code("1000000028")));
        assert_eq!(ledger.holder_of(&code("1000000001")).unwrap(), Some(r1));
        assert_eq!(ledger.len().unwrap(), 2);

        let conn = Connection::open(&path).unwrap();
        assert!(conn.execute("DELETE FROM reserved", []).is_err(), "append-only");
        assert!(
            conn.execute("UPDATE reserved SET record_id = 'x'", []).is_err(),
            "append-only"
        );
    }

    fn device(revoked_at_ms: Option<i64>) -> LedgerDevice {
        LedgerDevice {
            device_id: Uuid::from_u128(7),
            office: "171003".into(),
            public_key: "ab".repeat(32),
            enrolled_at_ms: 1,
            token_hash: String::new(),
            revoked_at_ms,
        }
    }

    #[test]
    fn importing_devices_writes_only_what_the_ledger_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let (ledger, _) = KidcLedger::open(&path, &[], 1).unwrap();
        assert_eq!(ledger.import_devices(&[device(None)]).unwrap(), 1);
        assert_eq!(ledger.import_devices(&[device(None)]).unwrap(), 0, "held already");
        assert_eq!(
            ledger.import_devices(&[device(Some(5))]).unwrap(),
            1,
            "a revocation it lacked"
        );
        assert_eq!(ledger.import_devices(&[device(Some(5))]).unwrap(), 0);
        assert_eq!(
            ledger.import_devices(&[device(None)]).unwrap(),
            0,
            "never un-revoked"
        );
        drop(ledger);
        assert_eq!(read_devices(&path).unwrap(), [device(Some(5))]);
    }

    #[test]
    fn a_ledger_made_before_numbered_migrations_opens_and_keeps_its_codes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let r1 = Uuid::now_v7();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_1).unwrap();
        conn.execute(
            "INSERT INTO reserved (kidc, record_id, reserved_at) VALUES ('1000000001', ?1, 1)",
            [r1.to_string()],
        )
        .unwrap();
        drop(conn);
        let (ledger, opened) = KidcLedger::open(&path, &[], 2).unwrap();
        assert!(!opened.created);
        assert_eq!(ledger.code_for(r1).unwrap(), Some(code("1000000001")));
        assert_eq!(crvs_sqlite::user_version(&ledger.conn()).unwrap(), 1);
    }
}
